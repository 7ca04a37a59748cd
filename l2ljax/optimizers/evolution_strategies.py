"""OpenAI evolution strategies (Salimans, Ho, Chen, Sidor & Sutskever 2017, arXiv:1703.03864).

Perturbations ε_i = σ·s_i, s_i ~ N(0, I) (``mirrored_sampling``: pairs ±s_i), scores F_i
(``fitness_shaping``: centred-rank utilities in [−0.5, 0.5]), then gradient ascent

    θ ← θ + α/(n σ²) Σ_i F_i ε_i          (n perturbations, α = learning_rate, σ = noise_std)

As in L2L, the current θ is evaluated too, as the population's last row (so J = pop_size + 1
and best-so-far includes θ itself); ``evaluate_mean=False`` drops that row.
L2L parameter names: ``learning_rate, noise_std, mirrored_sampling_enabled,
fitness_shaping_enabled, pop_size`` (here ``mirrored_sampling``, ``fitness_shaping``).

Perturbations are recovered from the population that was evaluated (after clipping to the
bounds), so the estimate is of the function actually seen. Non-finite scores get utility 0
without shaping and the lowest rank with shaping: they never enter θ as NaN.

Example::

    opt = EvolutionStrategies(problem.space, pop_size=40)
    params = opt.default_params.replace(learning_rate=0.05, noise_std=0.1)
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from flax import struct

from l2ljax.core import Evaluation, Optimizee, Optimizer, Space, centered_ranks, check_range


@struct.dataclass
class EvolutionStrategiesParams:
    learning_rate: float = 0.1
    noise_std: float = 0.1


class EvolutionStrategiesState(NamedTuple):
    theta: jax.Array  # (dim,)


class EvolutionStrategies(Optimizer):
    name = "EvolutionStrategies"
    Params = EvolutionStrategiesParams

    def __init__(self, space: Space | Optimizee, pop_size: int = 20, *, mirrored_sampling: bool = True,
                 fitness_shaping: bool = True, evaluate_mean: bool = True):
        super().__init__(space, pop_size)
        if mirrored_sampling and pop_size % 2:
            raise ValueError(f"mirrored sampling needs an even pop_size, got {pop_size}")
        self.n_perturbations = pop_size
        self.mirrored_sampling = mirrored_sampling
        self.fitness_shaping = fitness_shaping
        self.evaluate_mean = evaluate_mean
        self.pop_size = pop_size + int(evaluate_mean)

    def _check_params(self, params: EvolutionStrategiesParams) -> None:
        check_range(params, "learning_rate", 0.0, float("inf"), lo_open=True, owner=self.name)
        check_range(params, "noise_std", 0.0, float("inf"), lo_open=True, owner=self.name)

    def _init(self, key: jax.Array, x0: jax.Array, params: Any) -> EvolutionStrategiesState:
        return EvolutionStrategiesState(x0)

    def _ask(self, key: jax.Array, inner: EvolutionStrategiesState, params: EvolutionStrategiesParams
             ) -> jax.Array:
        theta = inner.theta
        n = self.n_perturbations
        if self.mirrored_sampling:
            half = jax.random.normal(key, (n // 2, theta.shape[0]), theta.dtype)
            s = jnp.concatenate([half, -half])
        else:
            s = jax.random.normal(key, (n, theta.shape[0]), theta.dtype)
        population = theta + params.noise_std * s
        if self.evaluate_mean:
            population = jnp.concatenate([population, theta[None]])
        return population

    def _tell(self, inner: EvolutionStrategiesState, population: jax.Array, evaluation: Evaluation,
              params: EvolutionStrategiesParams) -> EvolutionStrategiesState:
        n = self.n_perturbations
        score = evaluation.score[:n]
        eps = population[:n] - inner.theta
        if self.fitness_shaping:
            utility = centered_ranks(score)
        else:
            utility = jnp.where(jnp.isfinite(score), score, 0.0)
        step = params.learning_rate / (n * jnp.square(params.noise_std)) * (utility @ eps)
        return EvolutionStrategiesState(self.space.clip(inner.theta + step))

    def diagnostics(self, state: Any) -> dict[str, jax.Array]:
        return {"theta_norm": jnp.linalg.norm(state.inner.theta)}

    def config(self) -> dict[str, Any]:
        return {**super().config(), "n_perturbations": self.n_perturbations,
                "mirrored_sampling": self.mirrored_sampling, "fitness_shaping": self.fitness_shaping,
                "evaluate_mean": self.evaluate_mean}
