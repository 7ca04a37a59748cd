"""MNIST classification as an optimizee: an individual is the flat weight vector of a network.

Each generation scores the population on one minibatch: the fitness of a member is its
accuracy on that batch (maximised, weight +1) and its outputs are the logits (B·10, sample
major), the targets the one-hot labels, so Kalman methods can match outputs to observations.
The data schedule follows LOD (Yegenoglu et al. 2020): the training set is shuffled once per
epoch (a key derived from ``seed`` and the epoch), cut into batches of ``batch_size``, and
every batch is used for ``repetitions`` consecutive generations. The images stay on the
device as uint8; batch selection is jittable, so a whole training run is one ``lax.scan``.

Example::

    data = l2ljax.data.load_mnist()
    problem = mnist_optimizee(data.train_images, data.train_labels, model="lod_cnn")
    opt = l2ljax.EnsembleKalmanFilter(problem, pop_size=500, init_std=None)
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from l2ljax import models
from l2ljax.core import Optimizee
from l2ljax.kalman.minibatch import RandomMinibatcher

N_CLASSES = 10
PRECISIONS = ("default", "highest", "bfloat16")


def build_model(name: str, hidden: tuple[int, ...] = (100,)) -> tuple[models.EnsembleModel, Any]:
    """``(EnsembleModel, fast ensemble forward or None)`` for 'lod_cnn' or 'mlp'."""
    example = jnp.zeros((1, 28, 28, 1), jnp.float32)
    if name == "lod_cnn":
        ensemble = models.make_ensemble(models.LodCNN(), example)
        # Grouped convolutions suit GPUs; on XLA:CPU the member-chunked forward is faster.
        fast = models.forward_ensemble_grouped if jax.default_backend() == "gpu" else models.forward_ensemble_mapped
        return ensemble, fast
    if name == "mlp":
        return models.make_ensemble(models.Mlp(hidden=tuple(hidden)), example), None
    raise ValueError(f"unknown model {name!r}: choose 'lod_cnn' or 'mlp'")


def batch_indices(generation: jax.Array, n_examples: int, batch_size: int, repetitions: int,
                  seed: int) -> jax.Array:
    """Indices of the minibatch used at ``generation`` (pure; shuffled anew every epoch).

    The :class:`l2ljax.kalman.RandomMinibatcher` schedule; the last ``n_examples mod batch_size``
    examples of each epoch's permutation are skipped.
    """
    return RandomMinibatcher(n_examples, batch_size, repetitions=repetitions, seed=seed,
                             remainder="drop").indices(generation)


def mnist_optimizee(images: np.ndarray, labels: np.ndarray, *, model: str = "lod_cnn",
                    hidden: tuple[int, ...] = (100,), batch_size: int = 64, repetitions: int = 8,
                    init_std: float = 0.1, seed: int = 0, fast_forward: bool = True,
                    precision: str = "default") -> Optimizee:
    """Train-set minibatch classification with ``model``; individuals start as N(0, init_std²).

    images: (N, 28, 28) uint8; labels: (N,) integers in [0, 10).
    fast_forward: use the hand-batched ensemble forward of :mod:`l2ljax.models` (same numbers
    as the vmap of the single-member forward, much faster); False uses plain vmap.
    precision: of the ensemble forward (the memory-bound part of an EnKF iteration):
    'default' (float32 storage, the platform's default matmul/conv precision: TF32 on recent
    NVIDIA GPUs), 'highest' (strict float32 products), 'bfloat16' (weights and images cast to
    bfloat16 for the forward, logits returned in float32; the Kalman update stays float32).
    Measured on CPU: bfloat16 logits within 0.035 of float32, same argmax for 99.4 % of images.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    images = np.asarray(images)
    labels = np.asarray(labels)
    if images.ndim != 3 or images.shape[1:] != (28, 28) or images.dtype != np.uint8:
        raise ValueError(f"images must be uint8 of shape (N, 28, 28), got {images.dtype} {images.shape}")
    if images.shape[0] == 0:
        raise ValueError("images are empty")
    if labels.dtype.kind not in "iu":
        raise ValueError(f"labels must be integers, got {labels.dtype}")
    if labels.shape != (images.shape[0],) or labels.min() < 0 or labels.max() >= N_CLASSES:
        raise ValueError(f"labels must be (N,) integers in [0, 10) matching the images, got {labels.shape}")
    if not 0 < batch_size <= images.shape[0]:
        raise ValueError(f"batch_size must be in [1, {images.shape[0]}], got {batch_size}")
    if repetitions < 1:
        raise ValueError(f"repetitions must be >= 1, got {repetitions}")
    if not init_std > 0:
        raise ValueError(f"init_std must be positive, got {init_std}")
    ensemble, fast = build_model(model, hidden)
    device_images = jnp.asarray(images)
    device_labels = jnp.asarray(labels.astype(np.int32))
    n_examples = images.shape[0]

    def data(generation: jax.Array) -> tuple[jax.Array, jax.Array]:
        idx = batch_indices(generation, n_examples, batch_size, repetitions, seed)
        inputs = device_images[idx].astype(jnp.float32)[..., None] / 255.0
        return inputs, jax.nn.one_hot(device_labels[idx], N_CLASSES)

    forward = fast if (fast_forward and fast is not None) else ensemble.forward_ensemble

    def population(flat: jax.Array, keys: jax.Array, inputs: tuple[jax.Array, jax.Array]):
        images_b, targets = inputs
        if precision == "bfloat16":
            logits = forward(flat.astype(jnp.bfloat16), images_b.astype(jnp.bfloat16)).astype(jnp.float32)
        else:
            with jax.default_matmul_precision("highest" if precision == "highest" else None):
                logits = forward(flat, images_b)
        return models.accuracy(logits, targets), logits

    def one(flat: jax.Array, key: jax.Array, inputs: tuple[jax.Array, jax.Array]):
        images_b, targets = inputs
        logits = ensemble.forward_one(flat, images_b)
        return models.accuracy(logits, targets), logits

    def data_with_targets(generation: jax.Array):
        # The labels travel with the inputs (members report batch accuracy) and as targets.
        inputs, targets = data(generation)
        return (inputs, targets), targets

    def sample(key: jax.Array) -> jax.Array:
        return init_std * jax.random.normal(key, (ensemble.n_params,), jnp.float32)

    return Optimizee.create(
        one, jnp.zeros(ensemble.n_params, jnp.float32), sample=sample, weights=(1.0,),
        name=f"mnist-{model}", data=data_with_targets, population_fn=population,
        info={"model": model, "n_params": ensemble.n_params, "batch_size": batch_size,
              "repetitions": repetitions, "init_std": init_std, "seed": seed, "n_train": n_examples,
              "precision": precision},
    )


def dataset_accuracy(ensemble: models.EnsembleModel, flat: jax.Array, images: np.ndarray, labels: np.ndarray,
                  chunk: int = 2000) -> float:
    """Accuracy of one flat weight vector on a labelled set, in chunks to bound memory."""
    forward = jax.jit(ensemble.forward_one)
    correct = 0
    for start in range(0, len(images), chunk):
        x = jnp.asarray(images[start:start + chunk], jnp.float32)[..., None] / 255.0
        correct += int(jnp.sum(jnp.argmax(forward(flat, x), -1) == jnp.asarray(labels[start:start + chunk])))
    return correct / len(images)
