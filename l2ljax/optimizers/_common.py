"""Mechanics shared by several optimizers, written once (private: optimizers import from here,
never from each other).

- Gaussian search distributions: the jittered Cholesky factor, the decaying sampling noise of
  the noisy variants (L2L's ``NoisyGaussian``), the initial distribution.
- Cross-entropy selection (elite + SA-style acceptance, Rubinstein & Kroese 2004) and the
  smoothed refit, shared by CE and FACE.
- ``initial_sigma``: the initial step size of NES and CMA-ES (Hansen 2016's 0.3·range).
- ``keep_finite``: the non-finite guard, i.e. keep the old state when an update is not finite.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from l2ljax.core import Space, check_range


def keep_finite(new: Any, old: Any, ok: jax.Array | bool = True) -> Any:
    """``new`` where ``ok`` holds and every floating-point leaf of ``new`` is finite, else ``old``:
    one failed update (a NaN from a degenerate sample) never poisons an optimizer's state."""
    floats = [leaf for leaf in jax.tree_util.tree_leaves(new) if jnp.issubdtype(leaf.dtype, jnp.floating)]
    ok = ok & jnp.all(jnp.stack([jnp.all(jnp.isfinite(leaf)) for leaf in floats]))
    return jax.tree_util.tree_map(lambda a, b: jnp.where(ok, a, b), new, old)


def check_noise(noise_magnitude: float, coordinate_scale: Any, noise_decay: float, owner: str
                ) -> tuple[float, float | tuple[float, ...], float]:
    """Validated ``(noise_magnitude, coordinate_scale, noise_decay)`` of a noisy distribution."""
    if not (noise_magnitude >= 0 and 0 <= noise_decay <= 1):
        raise ValueError(f"{owner} needs noise_magnitude >= 0 and noise_decay in [0, 1], "
                         f"got {noise_magnitude}, {noise_decay}")
    scale = 1.0 if coordinate_scale is None else tuple(map(float, jnp.ravel(jnp.asarray(coordinate_scale))))
    return float(noise_magnitude), scale, float(noise_decay)


def draw_noise(key: jax.Array, magnitude: jax.Array, coordinate_scale: float | tuple[float, ...],
               shape: tuple[int, ...], dtype: Any) -> jax.Array:
    """Sampling variances |N(0, (magnitude·coordinate_scale_i)²)| of the given shape (last axis = dim)."""
    scale = jnp.broadcast_to(jnp.asarray(coordinate_scale, dtype), shape[-1:])
    return jnp.abs(magnitude * scale * jax.random.normal(key, shape, dtype))


def jittered_cholesky(cov: jax.Array) -> jax.Array:
    """Cholesky factor of ``cov`` plus a jitter, so a collapsed elite stays samplable.

    The jitter is ten machine epsilons of the trace: above the rounding error of forming and
    factorising ``cov`` (about dim·eps·‖cov‖), so a covariance whose smallest eigenvalue is lost
    to float32 rounding still factorises, and too small to change the distribution measurably.
    """
    dim = cov.shape[0]
    jitter = 10 * jnp.finfo(cov.dtype).eps * jnp.trace(cov) + jnp.finfo(cov.dtype).tiny
    return jnp.linalg.cholesky(cov + jitter * jnp.eye(dim, dtype=cov.dtype))


def initial_distribution(distribution: Any, space: Space, k_sample: jax.Array, k_fit: jax.Array, x0: jax.Array,
                         n: int, init_std: float | None) -> Any:
    """N(x0, init_std²·I) when ``init_std`` is given, else the fit to ``n`` draws of ``space.sample``."""
    if init_std is not None:
        return distribution.from_moments(x0, jnp.asarray(init_std, x0.dtype))
    samples = space.clip(jax.vmap(space.sample)(jax.random.split(k_sample, n)))
    start = distribution.from_moments(x0, jnp.ones_like(x0))
    return distribution.fit(k_fit, start, samples.astype(x0.dtype), jnp.ones(n, x0.dtype), jnp.asarray(0.0, x0.dtype))


def select_samples(key: jax.Array, score: jax.Array, n_elite: jax.Array, temperature: jax.Array,
                   temp_decay: jax.Array) -> tuple[jax.Array, jax.Array]:
    """The samples CE refits to: ``(kept (J,) bool, γ)``.

    Elite = the ``n_elite`` best finite scores (fewer when fewer are finite); γ = the worst
    elite score (``-inf`` when none is finite). When ``temp_decay > 0`` a non-elite finite
    sample is also kept with probability min(1, e^{(score−γ)/T}).
    """
    valid = jnp.isfinite(score)
    order = jnp.argsort(-score)  # -inf last
    rank = jnp.empty_like(order).at[order].set(jnp.arange(score.shape[0]))
    n_elite = jnp.minimum(n_elite, jnp.sum(valid))
    gamma = score[order[jnp.maximum(n_elite - 1, 0)]]
    elite = (rank < n_elite) & valid
    accept_prob = jnp.exp(jnp.minimum((score - gamma) / temperature, 0.0))
    accepted = (jax.random.uniform(key, score.shape) < accept_prob) & valid & (temp_decay > 0)
    return elite | accepted, gamma


def refit(distribution: Any, key: jax.Array, dist: Any, population: jax.Array, kept: jax.Array,
          smoothing: jax.Array) -> tuple[Any, jax.Array]:
    """``(θ', usable)``: θ refitted to the kept rows and smoothed, or θ unchanged with fewer than two."""
    weights = kept.astype(population.dtype)
    new = distribution.fit(key, dist, population, weights, jnp.asarray(smoothing, population.dtype))
    usable = jnp.sum(weights) >= 2
    return jax.tree_util.tree_map(lambda a, b: jnp.where(usable, a, b), new, dist), usable


def cool(temperature: jax.Array, temp_decay: jax.Array) -> jax.Array:
    """T ← T·temp_decay; ``temp_decay = 0`` switches annealing off and leaves T as it is."""
    return temperature * jnp.where(temp_decay > 0, temp_decay, 1.0)


def check_annealing_params(params: Any, owner: str) -> None:
    """Ranges of the ``smoothing``, ``temp_decay`` and ``temperature`` hyperparameters."""
    check_range(params, "smoothing", 0.0, 1.0, hi_open=True, owner=owner)
    check_range(params, "temp_decay", 0.0, 1.0, owner=owner)
    check_range(params, "temperature", 0.0, float("inf"), lo_open=True, owner=owner)


def initial_sigma(space: Space, sigma: Any, owner: str) -> np.ndarray:
    """The initial per-coordinate standard deviation as a (dim,) float64 array.

    ``sigma``: a positive scalar or one value per coordinate; ``None`` → 0.3·(upper − lower)
    on a bounded space (Hansen's advice for CMA-ES), 1 otherwise.
    """
    if sigma is None:
        return 0.3 * (space.upper - space.lower) if space.bounded else np.ones(space.dim)
    value = np.asarray(sigma, dtype=np.float64)
    if value.ndim > 1 or value.size not in (1, space.dim):
        raise ValueError(f"{owner}: sigma must be a scalar or have {space.dim} entries, got shape {value.shape}")
    if not np.all(np.isfinite(value)) or np.any(value <= 0):
        raise ValueError(f"{owner}: sigma must be finite and positive, got {sigma}")
    largest = float(np.sqrt(np.finfo(space.dtype).max / space.dim))
    if np.any(value > largest):
        raise ValueError(f"{owner}: sigma {sigma} is so large that the covariance overflows "
                         f"{np.dtype(space.dtype).name} (largest usable: {largest:.3g}); on a bounded space leave "
                         "sigma=None")
    return np.broadcast_to(value.ravel(), (space.dim,)).copy()
