"""MNIST models as pure functions of a flat parameter matrix, for ensemble optimizers.

An ensemble optimizer (EnKF, ES, GA, ...) holds a population as a flat matrix
``U`` of shape ``(J, P)``: one row per member, ``P`` parameters each. This module
converts a flax model into that view once, with
``jax.flatten_util.ravel_pytree``, and returns pure functions of ``U``::

    G = forward_ensemble(U, images)     # (J, B, 10) = vmap_j forward_one(U[j], images)

The images are shared by all members; nothing here takes gradients.

Models
------
``LodCNN``
    The CNN of Yegenoglu, Krajsek, Diaz Pier & Herty, *Ensemble Kalman Filter
    Optimizing Deep Neural Networks: An Alternative Approach to Non-performing
    Gradient Descent*, LOD 2020, LNCS 12565: conv 1->10 (5x5, no bias, VALID) -> sigmoid ->
    max-pool 2x2 -> conv 10->20 (5x5, no bias, VALID) -> sigmoid -> flatten
    (8*8*20 = 1280) -> dense 1280->10 (no bias). 10*25 + 20*10*25 + 1280*10 =
    18,050 parameters. Input (N, 28, 28, 1) float32 in [0, 1], channel last, so
    the flatten order is (h, w, c), not PyTorch's (c, h, w).
``Mlp``
    The MNIST optimizee of the original L2L (``l2l.optimizees.mnist``): input 784
    -> sigmoid hidden layers -> 10 linear logits, without biases unless
    ``use_bias=True``. ``hidden=(10,)`` has 784*10 + 10*10 = 7,940 parameters.

Two faster forwards for ``LodCNN`` give the same logits as the vmapped one. Both
run the first convolution once for all members (J*10 output channels on the
shared batch). ``forward_ensemble_grouped`` then runs the second convolution as
one grouped convolution (``feature_group_count=J``) and the dense layer as one
einsum (for GPUs); ``forward_ensemble_mapped`` takes the members in small chunks
and runs conv2 and dense member by member with ``jax.lax.map``: on XLA:CPU
grouped convolutions are slow and large activations fall out of cache.

Example::

    ens = make_ensemble(LodCNN(), jnp.zeros((1, 28, 28, 1)))
    U = ens.init_ensemble(jax.random.key(0), 100, 0.1)       # (100, 18050)
    G = jax.jit(forward_ensemble_mapped)(U, images)           # (100, B, 10)
    acc = accuracy(ens.forward_one(U.mean(0), images), labels)
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

Array = jax.Array

_POOL = (2, 2)


class LodCNN(nn.Module):
    """The LOD 2020 MNIST CNN (18,050 parameters); logits of shape (N, 10)."""

    @nn.compact
    def __call__(self, images: Array) -> Array:
        x = nn.Conv(10, (5, 5), padding="VALID", use_bias=False, name="conv1")(images)
        x = nn.max_pool(nn.sigmoid(x), _POOL, strides=_POOL)
        x = nn.Conv(20, (5, 5), padding="VALID", use_bias=False, name="conv2")(x)
        x = nn.sigmoid(x).reshape(x.shape[0], -1)
        return nn.Dense(10, use_bias=False, name="dense")(x)


class Mlp(nn.Module):
    """L2L's MNIST network: flattened input -> sigmoid ``hidden`` layers -> 10 logits."""

    hidden: Sequence[int] = (10,)
    use_bias: bool = False
    n_classes: int = 10

    @nn.compact
    def __call__(self, images: Array) -> Array:
        x = images.reshape(images.shape[0], -1)
        for width in self.hidden:
            x = nn.sigmoid(nn.Dense(width, use_bias=self.use_bias)(x))
        return nn.Dense(self.n_classes, use_bias=self.use_bias)(x)


class EnsembleModel(NamedTuple):
    """A model seen as pure functions of flat parameter vectors.

    Attributes:
        n_params: P, the length of one member's flat parameter vector.
        unravel: flat (P,) -> the flax ``params`` pytree.
        forward_one: ``(flat (P,), images (B, ...)) -> logits (B, K)``.
        forward_ensemble: ``(flat (J, P), images (B, ...)) -> logits (J, B, K)``,
            ``jax.vmap`` of ``forward_one`` over members with the images shared.
        init_ensemble: ``(key, J, std) -> (J, P)`` with i.i.d. N(0, std^2) entries.
    """

    n_params: int
    unravel: Callable[[Array], Any]
    forward_one: Callable[[Array, Array], Array]
    forward_ensemble: Callable[[Array, Array], Array]
    init_ensemble: Callable[[Array, int, float], Array]


def make_ensemble(model: nn.Module, example_input: Array) -> EnsembleModel:
    """Flatten ``model``'s parameters and build its single-member and ensemble forwards.

    Args:
        model: a flax linen module whose only collection is ``params``.
        example_input: an input batch of the right shape and dtype (values unused);
            only shapes are traced, nothing is computed.

    Returns:
        An ``EnsembleModel``. Its functions are pure and not jitted: jit them (or the
        loop that calls them) yourself.
    """
    shapes = jax.eval_shape(model.init, jax.random.key(0), example_input)["params"]
    zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
    flat0, unravel = ravel_pytree(zeros)
    n_params, dtype = flat0.size, flat0.dtype

    def forward_one(flat: Array, images: Array) -> Array:
        return model.apply({"params": unravel(flat)}, images)

    def init_ensemble(key: Array, n_members: int, std: float) -> Array:
        return std * jax.random.normal(key, (n_members, n_params), dtype)

    return EnsembleModel(
        n_params=n_params,
        unravel=unravel,
        forward_one=forward_one,
        forward_ensemble=jax.vmap(forward_one, in_axes=(0, None)),
        init_ensemble=init_ensemble,
    )


def accuracy(logits: Array, labels: Array) -> Array:
    """Fraction of correct argmax predictions.

    ``logits`` (..., B, K); ``labels`` (B,) integer classes or (B, K) one-hot.
    Leading axes of ``logits`` (e.g. members) are kept: (J, B, K) -> (J,).
    """
    if labels.ndim == 2:
        labels = jnp.argmax(labels, axis=-1)
    return jnp.mean(jnp.argmax(logits, axis=-1) == labels, axis=-1)


@functools.cache
def _lod_cnn_unravel() -> Callable[[Array], Any]:
    return make_ensemble(LodCNN(), jnp.zeros((1, 28, 28, 1), jnp.float32)).unravel


def _conv(x: Array, kernel: Array, groups: int = 1) -> Array:
    return jax.lax.conv_general_dilated(
        x,
        kernel,
        (1, 1),
        "VALID",
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
        feature_group_count=groups,
    )


def _lod_cnn_conv1_shared(flat: Array, images: Array) -> tuple[Array, Array, Array]:
    """Unravel (J, P) into LodCNN kernels and run conv1 -> sigmoid -> pool for all members.

    Returns the pooled features (B, 12, 12, J, 10), the conv2 kernels (J, 5, 5, 10, 20)
    and the dense kernels (J, 1280, 10).
    """
    params = jax.vmap(_lod_cnn_unravel())(flat)
    n_members = flat.shape[0]
    # One convolution with member-major output channels (j*10 + c) on the shared batch.
    k1 = jnp.moveaxis(params["conv1"]["kernel"], 0, 3).reshape(5, 5, 1, n_members * 10)
    # sigmoid is increasing, so pooling first gives the same values with 4x fewer sigmoids.
    x = nn.sigmoid(nn.max_pool(_conv(images, k1), _POOL, strides=_POOL))
    x = x.reshape(*x.shape[:3], n_members, 10)
    return x, params["conv2"]["kernel"], params["dense"]["kernel"]


def forward_ensemble_grouped(flat: Array, images: Array) -> Array:
    """``LodCNN`` logits (J, B, 10) of all members, equal to the vmapped forward.

    conv1 is one convolution with J*10 output channels on the shared batch, conv2 one
    grouped convolution (``feature_group_count=J``), dense one einsum. Meant for GPUs:
    XLA:CPU runs grouped convolutions slowly, prefer ``forward_ensemble_mapped`` there.
    """
    x, k2, w = _lod_cnn_conv1_shared(flat, images)
    n_members = flat.shape[0]
    x = x.reshape(*x.shape[:3], n_members * 10)
    k2 = jnp.moveaxis(k2, 0, 3).reshape(5, 5, 10, n_members * 20)  # groups member-major
    x = nn.sigmoid(_conv(x, k2, groups=n_members)).reshape(-1, 8, 8, n_members, 20)
    # LodCNN flattens each member's (8, 8, 20) block in (h, w, c) order.
    return jnp.einsum("bhwjc,jhwck->jbk", x, w.reshape(n_members, 8, 8, 20, 10))


def forward_ensemble_mapped(flat: Array, images: Array, *, chunk: int = 10) -> Array:
    """``LodCNN`` logits (J, B, 10), equal to the vmapped forward; the fastest on CPU.

    Members go through in chunks of ``chunk`` (``jax.lax.map``; J is zero-padded to a
    multiple): per chunk, conv1 is one convolution with chunk*10 output channels, then
    conv2 and dense run member by member as plain, ungrouped convolutions. Small chunks
    keep the activations in cache. ``chunk`` is static: ``jax.jit(f, static_argnames="chunk")``.
    """
    n_members = flat.shape[0]
    chunk = min(chunk, n_members)
    n_chunks = -(-n_members // chunk)
    padded = jnp.pad(flat, ((0, n_chunks * chunk - n_members), (0, 0)))
    logits = jax.lax.map(lambda part: _mapped_chunk(part, images), padded.reshape(n_chunks, chunk, -1))
    return logits.reshape(n_chunks * chunk, *logits.shape[2:])[:n_members]


def _mapped_chunk(flat: Array, images: Array) -> Array:
    x, k2, w = _lod_cnn_conv1_shared(flat, images)

    def rest(args: tuple[Array, Array, Array]) -> Array:
        features, kernel, dense = args
        y = nn.sigmoid(_conv(features, kernel))
        return y.reshape(y.shape[0], -1) @ dense

    return jax.lax.map(rest, (jnp.moveaxis(x, 3, 0), k2, w))
