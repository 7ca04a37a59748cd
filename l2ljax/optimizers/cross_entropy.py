"""Cross-entropy method with a simulated-annealing acceptance of non-elite samples.

Rubinstein & Kroese, *The Cross-Entropy Method* (2004); L2L ``CrossEntropyOptimizer``.
Each generation:

1. sample ``pop_size`` individuals x_i ~ p_θ;
2. sort by score; γ = score of the ⌊rho·pop_size⌋-th best; the elite are the top ⌊rho·pop_size⌋;
3. when ``temp_decay > 0``, a non-elite x_i is also kept with probability min(1, e^{(f_i−γ)/T});
4. refit: θ ← smoothing·θ + (1 − smoothing)·θ_fit(kept samples); T ← T·temp_decay.

L2L parameter names: ``pop_size, rho, smoothing, temp_decay, distribution`` (``n_iteration``,
``stop_criterion`` and ``seed`` are arguments of :func:`l2ljax.run` and the key). The initial
distribution is fitted to ``pop_size`` draws of the space's sampler (L2L: the individuals
created by the optimizee), or is N(x0, init_std²·I) when ``init_std`` is given.

Non-finite fitness: such samples score -inf and are never kept; with fewer than two usable
samples the distribution is left unchanged.

Example::

    opt = CrossEntropy(problem.space, pop_size=50, distribution=Gaussian())
    params = opt.default_params.replace(rho=0.2, smoothing=0.1)
    state = opt.init(key, params)
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from l2ljax.core import Evaluation, Frozen, Optimizee, Optimizer, Space, check_range, is_concrete
from l2ljax.optimizers._common import (
    check_annealing_params,
    check_noise,
    cool,
    draw_noise,
    initial_distribution,
    jittered_cholesky,
    refit,
    select_samples,
)


class GaussianState(NamedTuple):
    mean: jax.Array  # (dim,)
    cov: jax.Array  # (dim, dim), or (dim,) variances when diagonal


class Gaussian(Frozen):
    """Multivariate normal; ``diagonal=True`` keeps only variances (for large dim)."""

    name = "Gaussian"

    def __init__(self, diagonal: bool = False):
        self.diagonal = diagonal

    def from_moments(self, mean: jax.Array, std: jax.Array) -> GaussianState:
        var = jnp.broadcast_to(jnp.square(std), mean.shape).astype(mean.dtype)
        return GaussianState(mean, var if self.diagonal else jnp.diag(var))

    def sample(self, key: jax.Array, state: GaussianState, n: int) -> jax.Array:
        z = jax.random.normal(key, (n, state.mean.shape[0]), state.mean.dtype)
        if self.diagonal:
            return state.mean + z * jnp.sqrt(state.cov)
        return state.mean + z @ jittered_cholesky(state.cov).T

    def fit(self, key: jax.Array, state: GaussianState, samples: jax.Array, weights: jax.Array,
            smoothing: jax.Array) -> GaussianState:
        """Weighted maximum-likelihood fit (unbiased), blended with the current state."""
        total = jnp.sum(weights)
        mean = weights @ samples / total
        centred = (samples - mean) * jnp.sqrt(weights)[:, None]
        denom = jnp.maximum(total - 1.0, 1.0)
        cov = jnp.sum(jnp.square(centred), 0) / denom if self.diagonal else centred.T @ centred / denom
        return jax.tree_util.tree_map(lambda old, new: smoothing * old + (1 - smoothing) * new,
                                      state, GaussianState(mean, cov))

    def spread(self, state: GaussianState) -> jax.Array:
        return jnp.sqrt(state.cov if self.diagonal else jnp.diag(state.cov))

    def config(self) -> dict[str, Any]:
        return {"name": self.name, "diagonal": self.diagonal}


class NoisyGaussianState(NamedTuple):
    mean: jax.Array
    cov: jax.Array  # fitted covariance, without noise
    noise: jax.Array  # (dim,) variance added to the diagonal when sampling
    magnitude: jax.Array  # current noise magnitude, decays by noise_decay per fit


class NoisyGaussian(Gaussian):
    """Gaussian whose sampling covariance gets extra diagonal variance that decays over time.

    After each fit, noise_i = |N(0, (magnitude·coordinate_scale_i)²)| is added to the i-th
    variance used for sampling (not to the fitted covariance), then magnitude ← magnitude ·
    noise_decay. Keeps CE from collapsing early (L2L ``NoisyGaussian`` parameters
    ``noise_magnitude=1, coordinate_scale=None (=1), noise_decay=0.95``).
    """

    name = "NoisyGaussian"

    def __init__(self, noise_magnitude: float = 1.0, coordinate_scale: Any = None, noise_decay: float = 0.95,
                 diagonal: bool = False):
        super().__init__(diagonal)
        self.noise_magnitude, self.coordinate_scale, self.noise_decay = check_noise(
            noise_magnitude, coordinate_scale, noise_decay, self.name)

    def from_moments(self, mean: jax.Array, std: jax.Array) -> NoisyGaussianState:
        base = super().from_moments(mean, std)
        return NoisyGaussianState(base.mean, base.cov, jnp.zeros_like(mean),
                                  jnp.asarray(self.noise_magnitude, mean.dtype))

    def _noisy(self, state: NoisyGaussianState) -> GaussianState:
        cov = state.cov + state.noise if self.diagonal else state.cov + jnp.diag(state.noise)
        return GaussianState(state.mean, cov)

    def sample(self, key: jax.Array, state: NoisyGaussianState, n: int) -> jax.Array:
        return super().sample(key, self._noisy(state), n)

    def fit(self, key: jax.Array, state: NoisyGaussianState, samples: jax.Array, weights: jax.Array,
            smoothing: jax.Array) -> NoisyGaussianState:
        base = super().fit(key, GaussianState(state.mean, state.cov), samples, weights, smoothing)
        noise = draw_noise(key, state.magnitude, self.coordinate_scale, state.mean.shape, samples.dtype)
        return NoisyGaussianState(base.mean, base.cov, noise, state.magnitude * self.noise_decay)

    def spread(self, state: NoisyGaussianState) -> jax.Array:
        return super().spread(self._noisy(state))

    def config(self) -> dict[str, Any]:
        return {**super().config(), "noise_magnitude": self.noise_magnitude,
                "coordinate_scale": self.coordinate_scale, "noise_decay": self.noise_decay}


@struct.dataclass
class CrossEntropyParams:
    rho: float = 0.2
    smoothing: float = 0.0
    temp_decay: float = 0.0
    temperature: float = 1.0


class CrossEntropyState(NamedTuple):
    dist: Any
    gamma: jax.Array  # elite threshold score of the last generation
    temperature: jax.Array
    key: jax.Array  # for the acceptance draws in tell


class CrossEntropy(Optimizer):
    name = "CrossEntropy"
    Params = CrossEntropyParams

    def __init__(self, space: Space | Optimizee, pop_size: int = 30, distribution: Any = None,
                 init_std: float | None = None):
        super().__init__(space, pop_size)
        self.distribution = Gaussian() if distribution is None else distribution
        if init_std is not None and not (np.isfinite(init_std) and init_std > 0):
            raise ValueError(f"init_std must be finite and positive, got {init_std}")
        self.init_std = init_std

    def _check_params(self, params: CrossEntropyParams) -> None:
        check_range(params, "rho", 0.0, 1.0, lo_open=True, owner=self.name)
        check_annealing_params(params, self.name)
        rho = params.rho
        if is_concrete(rho) and int(float(np.max(np.asarray(rho))) * self.pop_size) < 1:
            raise ValueError(f"{self.name}: rho * pop_size must be at least 1, got {rho} * {self.pop_size}")

    def _init(self, key: jax.Array, x0: jax.Array, params: CrossEntropyParams) -> CrossEntropyState:
        k_dist, k_state = jax.random.split(key)
        dist = initial_distribution(self.distribution, self.space, k_dist, k_state, x0, self.pop_size, self.init_std)
        return CrossEntropyState(dist, jnp.array(-jnp.inf, x0.dtype), jnp.asarray(params.temperature, x0.dtype),
                                 k_state)

    def _ask(self, key: jax.Array, inner: CrossEntropyState, params: CrossEntropyParams) -> jax.Array:
        return self.distribution.sample(key, inner.dist, self.pop_size)

    def _tell(self, inner: CrossEntropyState, population: jax.Array, evaluation: Evaluation,
              params: CrossEntropyParams) -> CrossEntropyState:
        n_elite = jnp.maximum(jnp.floor(params.rho * self.pop_size).astype(jnp.int32), 1)
        key, k_accept, k_fit = jax.random.split(inner.key, 3)
        kept, gamma = select_samples(k_accept, evaluation.score, n_elite, inner.temperature, params.temp_decay)
        dist, usable = refit(self.distribution, k_fit, inner.dist, population, kept, params.smoothing)
        return CrossEntropyState(dist, jnp.where(usable, gamma, inner.gamma),
                                 cool(inner.temperature, params.temp_decay), key)

    def diagnostics(self, state: Any) -> dict[str, jax.Array]:
        inner = state.inner
        spread = self.distribution.spread(inner.dist)
        return {"gamma": inner.gamma, "temperature": inner.temperature, "mean_spread": jnp.mean(spread)}

    def config(self) -> dict[str, Any]:
        return {**super().config(), "distribution": self.distribution.config(), "init_std": self.init_std}
