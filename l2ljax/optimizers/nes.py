"""Separable natural evolution strategies (SNES).

Wierstra, Schaul, Glasmachers, Sun, Peters & Schmidhuber, "Natural Evolution Strategies",
JMLR 15 (2014) 949–980 (Algorithm 6, separable NES); Schaul, Glasmachers & Schmidhuber,
"High dimensions and heavy tails for natural evolution strategies", GECCO 2011. L2L
``NaturalEvolutionStrategiesOptimizer``. The search distribution is N(μ, diag(σ²)); each generation

    s_i ~ N(0, I),  z_i = μ + σ ⊙ s_i                                 (i = 1..n, n = pop_size)
    μ ← μ + η_μ σ ⊙ Σ_i u_i s_i
    σ ← σ ⊙ exp(η_σ/2 Σ_i u_i (s_i² − 1))

with utilities u_i (``fitness_shaping=True``, L2L's and the paper's choice) by descending rank
k_i of the score:

    u_i = max(0, ln(n/2 + 1) − ln k_i) / Σ_k max(0, ln(n/2 + 1) − ln k) − 1/n

or the raw score (``fitness_shaping=False``). ``mirrored_sampling`` evaluates pairs ±s_i.

L2L parameter names: ``learning_rate_mu`` (None → 1), ``learning_rate_sigma`` (None →
(3 + ln d)/(5√d)), ``pop_size`` (None → 4 + ⌊3 ln d⌋), ``mu`` (the initial individual:
``x0`` of ``init``), ``sigma`` (constructor argument; default 0.3·(upper − lower) per
coordinate when bounded, else 1), ``mirrored_sampling_enabled`` / ``fitness_shaping_enabled``
(here ``mirrored_sampling`` / ``fitness_shaping``). ``n_iteration``, ``stop_criterion`` and
``seed`` are arguments of :func:`l2ljax.run` and its key.

Differences from L2L, on purpose: ``pop_size`` counts every evaluated sample, so with
mirrored sampling it must be even (L2L draws ``pop_size`` and evaluates their mirrors too,
2·pop_size samples); L2L drops one real sample's fitness as if it were a "current individual"
that NES never evaluates: here every sample counts. As in :mod:`evolution_strategies`, s_i are
recovered from the evaluated (bound-clipped) population, s_i = (z_i − μ)/σ, and μ is clipped
to the bounds.

Non-finite scores rank last (the lowest utility, −1/n) with shaping and get utility 0 without
it. An update that would make μ or σ non-finite (or σ zero) is not applied.

Example::

    opt = NaturalEvolutionStrategies(problem, sigma=0.5)               # L2L defaults for the rest
    params = opt.default_params.replace(learning_rate_sigma=0.1)
    result = l2ljax.run(opt, problem, jax.random.key(0), 200, params=params)
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from l2ljax.core import Evaluation, Optimizee, Optimizer, Space, check_range, descending_ranks
from l2ljax.optimizers._common import initial_sigma, keep_finite


def nes_utilities(n: int) -> np.ndarray:
    """NES rank utilities for ranks 1..n (best first): they sum to 0 (Wierstra et al. 2014, eq. 15)."""
    raw = np.maximum(0.0, math.log(n / 2 + 1) - np.log(np.arange(1, n + 1)))
    return raw / raw.sum() - 1.0 / n


@struct.dataclass
class NaturalEvolutionStrategiesParams:
    """``None`` means the dimension-dependent default of L2L (and the paper)."""

    learning_rate_mu: float | None = None
    learning_rate_sigma: float | None = None


class NaturalEvolutionStrategiesState(NamedTuple):
    mu: jax.Array  # (dim,) mean of the search distribution
    sigma: jax.Array  # (dim,) per-coordinate standard deviation


class NaturalEvolutionStrategies(Optimizer):
    name = "NaturalEvolutionStrategies"
    Params = NaturalEvolutionStrategiesParams

    def __init__(self, space: Space | Optimizee, pop_size: int | None = None, *, sigma: Any = None,
                 mirrored_sampling: bool = True, fitness_shaping: bool = True):
        space = space.space if isinstance(space, Optimizee) else space
        if not isinstance(space, Space):
            raise TypeError(f"expected a Space or an Optimizee, got {type(space).__name__}")
        d = space.dim
        if pop_size is None:
            pop_size = 4 + math.floor(3 * math.log(d))
            pop_size += int(mirrored_sampling and pop_size % 2)
        super().__init__(space, pop_size)
        if self.pop_size < 2:
            raise ValueError(f"{self.name}: pop_size must be at least 2, got {pop_size}")
        if mirrored_sampling and self.pop_size % 2:
            raise ValueError(f"{self.name}: mirrored sampling needs an even pop_size, got {pop_size}")
        self.sigma0 = initial_sigma(self.space, sigma, self.name)
        self.mirrored_sampling = bool(mirrored_sampling)
        self.fitness_shaping = bool(fitness_shaping)
        self.utilities = nes_utilities(self.pop_size)
        self.default_learning_rate_sigma = (3 + math.log(d)) / (5 * math.sqrt(d))

    @property
    def default_params(self) -> NaturalEvolutionStrategiesParams:
        return self.Params(learning_rate_mu=1.0, learning_rate_sigma=self.default_learning_rate_sigma)

    def resolve(self, params: NaturalEvolutionStrategiesParams) -> NaturalEvolutionStrategiesParams:
        """Replace ``None`` learning rates by their defaults."""
        defaults = self.default_params
        return params.replace(**{name: getattr(defaults, name) for name in ("learning_rate_mu", "learning_rate_sigma")
                                 if getattr(params, name) is None})

    def _check_params(self, params: NaturalEvolutionStrategiesParams) -> None:
        params = self.resolve(params)
        check_range(params, "learning_rate_mu", 0.0, float("inf"), lo_open=True, owner=self.name)
        check_range(params, "learning_rate_sigma", 0.0, float("inf"), owner=self.name)

    def _init(self, key: jax.Array, x0: jax.Array, params: Any) -> NaturalEvolutionStrategiesState:
        return NaturalEvolutionStrategiesState(x0, jnp.asarray(self.sigma0, x0.dtype))

    def _ask(self, key: jax.Array, inner: NaturalEvolutionStrategiesState, params: Any) -> jax.Array:
        mu = inner.mu
        if self.mirrored_sampling:
            half = jax.random.normal(key, (self.pop_size // 2, mu.shape[0]), mu.dtype)
            s = jnp.concatenate([half, -half])
        else:
            s = jax.random.normal(key, (self.pop_size, mu.shape[0]), mu.dtype)
        return mu + inner.sigma * s

    def _tell(self, inner: NaturalEvolutionStrategiesState, population: jax.Array, evaluation: Evaluation,
              params: NaturalEvolutionStrategiesParams) -> NaturalEvolutionStrategiesState:
        score = evaluation.score  # params are complete: init resolved them
        if self.fitness_shaping:
            utility = jnp.asarray(self.utilities, population.dtype)[descending_ranks(score)]
        else:
            utility = jnp.where(jnp.isfinite(score), score, 0.0).astype(population.dtype)
        s = (population - inner.mu) / inner.sigma
        mu = self.space.clip(inner.mu + params.learning_rate_mu * inner.sigma * (utility @ s))
        sigma = inner.sigma * jnp.exp(0.5 * params.learning_rate_sigma * (utility @ (jnp.square(s) - 1.0)))
        return keep_finite(NaturalEvolutionStrategiesState(mu, sigma), inner, jnp.all(sigma > 0))

    def diagnostics(self, state: Any) -> dict[str, jax.Array]:
        sigma = state.inner.sigma
        return {"sigma_mean": jnp.mean(sigma), "sigma_min": jnp.min(sigma), "sigma_max": jnp.max(sigma)}

    def config(self) -> dict[str, Any]:
        return {**super().config(), "sigma": self.sigma0.tolist(), "mirrored_sampling": self.mirrored_sampling,
                "fitness_shaping": self.fitness_shaping}

