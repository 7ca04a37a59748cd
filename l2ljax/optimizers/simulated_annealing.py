"""Simulated annealing: ``n_parallel_runs`` independent Metropolis chains on a cooling schedule.

Kirkpatrick, Gelatt & Vecchi, *Optimization by simulated annealing*, Science 220 (1983);
L2L ``SimulatedAnnealingOptimizer``. Chain i holds a point x_i with score f_i (maximised).
Generation k (k = 0, 1, ...) of every chain:

1. propose   x'_i = clip(x_i + noisy_step · T(k) · z_i),  z_i ~ N(0, I);
2. accept    x_i ← x'_i  if  f'_i ≥ f_i  or  u_i < exp((f'_i − f_i) / T(k+1)),  u_i ~ U(0, 1);

a non-finite f'_i is never accepted. Scores start at −inf, so the first proposals (around
the initial points) are always accepted. As in L2L, the temperature is cooled before the
acceptance test and the new proposals use that cooled temperature.

Cooling schedules (:func:`temperature`, step k, start T0, end Tn, decay α, horizon n). The
multiplicative ones are Kirkpatrick et al. (1983), the additive ones B. T. Luke, *Simulated
annealing cooling schedules* (2005), as documented in L2L's ``optimizers/simulatedannealing``:

======================== ====================================================== ============
name                     T(k)                                                   parameters
======================== ====================================================== ============
default                  T0 · α^k      (L2L: T ← T·temp_decay each generation)  T0, α
logarithmic              T0 / (1 + α ln(1 + k))                                 T0, α
exponential              T0 · α^k                                               T0, α
linear_multiplicative    T0 / (1 + α k)                                         T0, α
quadratic_multiplicative T0 / (1 + α k²)                                        T0, α
linear_additive          Tn + (T0 − Tn) (n − k)/n                               T0, Tn, n
quadratic_additive       Tn + (T0 − Tn) ((n − k)/n)²                            T0, Tn, n
exponential_additive     Tn + (T0 − Tn) / (1 + exp(2 ln(T0 − Tn)/n · (k − n/2))) T0, Tn, n
trigonometric_additive   Tn + (T0 − Tn) (1 + cos(kπ/n)) / 2                     T0, Tn, n
======================== ====================================================== ============

L2L spells the additive ones ``*_ADDAPTIVE``; both spellings (any case) are accepted.
Differences from L2L's code, each deliberate:

* α is the decay parameter in every multiplicative schedule, as L2L documents it. L2L's SA
  code ignores ``temp_decay`` there and hard-codes α = 1 (logarithmic, linear, quadratic)
  and α = 0.85 (exponential); pass those values to reproduce it. Its ParallelTempering
  uses the decay parameter (except in the logarithmic schedule).
* The additive schedules use T0 − Tn as documented; L2L's code writes T0 − T(k−1) in three
  of them, which with its fixed T0 = 1 collapses the temperature to 0 at the first step.
  Tn and T0 are parameters here (L2L fixes T0 = 1 and Tn = 0), with 0 < Tn ≤ T0.
* After k = n the additive schedules stay at T(n) (= Tn, except for the exponential one,
  whose sigmoid ends above Tn); L2L stops at n, and continuing the formulas would heat up
  again or go negative. The trigonometric one uses π, not 3.1415.
* The exponential additive formula cools only when T0 − Tn > 1 (for T0 − Tn < 1 its
  ln(T0 − Tn) is negative and the temperature rises): other values are rejected.
* The first proposals use T(0) (= T0 except for ``exponential_additive``), not L2L's fixed 1
  with its doubled ``noisy_step`` factor.

L2L parameter names: ``n_parallel_runs`` (= pop_size), ``noisy_step``, ``temp_decay`` (α),
``n_iteration`` (n of the additive schedules; the run's length is an argument of
:func:`l2ljax.run`), ``cooling_schedule``; ``stop_criterion`` and ``seed`` are arguments of
:func:`l2ljax.run` and the key. Chain 0 starts at ``x0`` (default: a draw of the space's
sampler), the others at independent draws of the sampler (L2L: ``create_individual`` per run).

Example::

    problem = l2ljax.function_optimizee("rastrigin", 2)
    opt = SimulatedAnnealing(problem, n_parallel_runs=32, cooling_schedule="linear_additive", n_iteration=150)
    params = opt.default_params.replace(noisy_step=0.3, T0=5.0, Tn=0.01)
    result = l2ljax.run(opt, problem, jax.random.key(0), n_generations=150, params=params)
    result.trajectory["diag/acceptance_rate"]
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from l2ljax.core import Evaluation, Optimizee, Optimizer, Space, check_positive_int, is_concrete

Array = jax.Array


# --------------------------------------------------------------------------- cooling schedules


def _geometric(k: Array, T0: Array, Tn: Array, decay: Array, n: float) -> Array:
    return T0 * decay**k


def _logarithmic(k: Array, T0: Array, Tn: Array, decay: Array, n: float) -> Array:
    return T0 / (1.0 + decay * jnp.log1p(k))


def _linear_multiplicative(k: Array, T0: Array, Tn: Array, decay: Array, n: float) -> Array:
    return T0 / (1.0 + decay * k)


def _quadratic_multiplicative(k: Array, T0: Array, Tn: Array, decay: Array, n: float) -> Array:
    return T0 / (1.0 + decay * k**2)


def _linear_additive(k: Array, T0: Array, Tn: Array, decay: Array, n: float) -> Array:
    return Tn + (T0 - Tn) * ((n - k) / n)


def _quadratic_additive(k: Array, T0: Array, Tn: Array, decay: Array, n: float) -> Array:
    return Tn + (T0 - Tn) * ((n - k) / n) ** 2


def _exponential_additive(k: Array, T0: Array, Tn: Array, decay: Array, n: float) -> Array:
    return Tn + (T0 - Tn) / (1.0 + jnp.exp(2.0 * jnp.log(T0 - Tn) / n * (k - n / 2.0)))


def _trigonometric_additive(k: Array, T0: Array, Tn: Array, decay: Array, n: float) -> Array:
    return Tn + (T0 - Tn) * (1.0 + jnp.cos(k * jnp.pi / n)) / 2.0


_SCHEDULES: dict[str, Callable[..., Array]] = {
    "default": _geometric,
    "logarithmic": _logarithmic,
    "exponential": _geometric,
    "linear_multiplicative": _linear_multiplicative,
    "quadratic_multiplicative": _quadratic_multiplicative,
    "linear_additive": _linear_additive,
    "quadratic_additive": _quadratic_additive,
    "exponential_additive": _exponential_additive,
    "trigonometric_additive": _trigonometric_additive,
}

COOLING_SCHEDULES: tuple[str, ...] = tuple(_SCHEDULES)
"""Canonical names of the nine cooling schedules of L2L."""

ADDITIVE_SCHEDULES: tuple[str, ...] = tuple(name for name in COOLING_SCHEDULES if name.endswith("_additive"))
"""The schedules that cool from T0 to Tn over ``n_iteration`` steps."""


def cooling_schedule_name(schedule: Any) -> str:
    """The canonical name of a schedule given by name (any case, L2L's ``ADDAPTIVE`` spelling
    accepted) or as a member of L2L's ``AvailableCoolingSchedules`` enum."""
    name = getattr(schedule, "name", schedule)
    if isinstance(name, str):
        canonical = name.strip().lower().replace("addaptive", "additive")
        if canonical in _SCHEDULES:
            return canonical
    raise ValueError(f"unknown cooling schedule {schedule!r}: choose one of {', '.join(COOLING_SCHEDULES)} "
                     "(any case; L2L's *_ADDAPTIVE spelling is accepted)")


def temperature(schedule: str, t: Array | int, T0: Array | float, Tn: Array | float, decay: Array | float,
                n_iteration: int | None = None) -> Array:
    """Temperature of ``schedule`` after ``t`` cooling steps (a pure, jittable function).

    ``T0``: start temperature; ``Tn``: end temperature (additive schedules); ``decay``: α of the
    multiplicative schedules; ``n_iteration``: horizon n of the additive schedules (required for
    them; t is clipped to [0, n], so they stay at T(n) after n). Arguments broadcast (e.g. one
    value per chain); the result is float32 (float64 under ``jax_enable_x64``).
    """
    name = cooling_schedule_name(schedule)
    dtype = jax.dtypes.canonicalize_dtype(jnp.float64)
    k = jnp.asarray(t, dtype)
    n = 0.0
    if name in ADDITIVE_SCHEDULES:
        if n_iteration is None:
            raise ValueError(f"cooling schedule {name!r} needs n_iteration (the number of generations "
                             "over which it cools from T0 to Tn)")
        n = float(check_positive_int(n_iteration, "n_iteration"))
        k = jnp.clip(k, 0.0, n)
    T0, Tn, decay = (jnp.asarray(v, dtype) for v in (T0, Tn, decay))
    return _SCHEDULES[name](k, T0, Tn, decay, n)


def schedule_problem(schedule: str, T0: float, Tn: float, decay: float) -> str | None:
    """Why these (concrete) parameters do not give a positive, non-increasing schedule; None if they do."""
    name = cooling_schedule_name(schedule)
    if not (np.isfinite(T0) and T0 > 0):
        return f"T0 must be finite and > 0, got {T0}"
    if name in ("default", "exponential"):
        if not 0 < decay <= 1:
            return f"the decay of the {name!r} schedule must lie in (0, 1], got {decay}"
    elif name not in ADDITIVE_SCHEDULES:
        if not decay >= 0:
            return f"the decay of the {name!r} schedule must be >= 0, got {decay}"
    elif not 0 < Tn <= T0:
        return f"the {name!r} schedule needs 0 < Tn <= T0, got T0 = {T0}, Tn = {Tn}"
    elif name == "exponential_additive" and not T0 - Tn > 1:
        return (f"the 'exponential_additive' schedule cools only when T0 - Tn > 1 (its exponent has "
                f"ln(T0 - Tn)), got T0 = {T0}, Tn = {Tn}")
    return None


def check_n_iteration(schedules: Sequence[str], n_iteration: int | None, owner: str) -> int | None:
    """``n_iteration`` is required (a positive int) when any schedule is additive."""
    if n_iteration is not None:
        return check_positive_int(n_iteration, "n_iteration")
    additive = sorted({s for s in schedules if s in ADDITIVE_SCHEDULES})
    if additive:
        raise ValueError(f"{owner}: cooling schedule {', '.join(additive)} needs n_iteration "
                         "(the number of generations over which it cools from T0 to Tn)")
    return None


# --------------------------------------------------------------------------- the chains


class AnnealingState(NamedTuple):
    """Chains of simulated annealing (also the chains of parallel tempering).

    x:               (n, dim) current point of every chain.
    score:           (n,) its score (−inf until a finite one is accepted).
    step:            () number of cooling steps so far (= number of ``tell`` calls).
    key:             PRNG key for the acceptance draws.
    acceptance_rate: () fraction of the last generation's proposals that were accepted.
    """

    x: Array
    score: Array
    step: Array
    key: Array
    acceptance_rate: Array


def init_chains(space: Space, key: Array, x0: Array, n: int) -> AnnealingState:
    """Chain 0 at ``x0``, chains 1..n−1 at independent draws of ``space.sample``; scores −inf."""
    k_points, k_state = jax.random.split(key)
    others = jax.vmap(space.sample)(jax.random.split(k_points, n - 1)).astype(x0.dtype)
    x = space.clip(jnp.concatenate([x0[None], others]))
    return AnnealingState(x, jnp.full(n, -jnp.inf, x0.dtype), jnp.array(0, jnp.int32), k_state,
                          jnp.array(0.0, x0.dtype))


def propose(key: Array, x: Array, noisy_step: Array, temperatures: Array) -> Array:
    """x + N(0, I) · noisy_step · T, with one temperature per chain (``(n,)`` or scalar)."""
    z = jax.random.normal(key, x.shape, x.dtype)
    scale = (noisy_step * jnp.broadcast_to(temperatures, x.shape[:1]))[:, None]
    return x + (z * scale).astype(x.dtype)


def metropolis(chains: AnnealingState, proposals: Array, proposal_score: Array, temperatures: Array
               ) -> AnnealingState:
    """Accept each proposal if it scores at least as well, else with prob exp((f' − f)/T).

    Non-finite proposal scores are never accepted. Advances ``step`` and the key.
    """
    key, k_accept = jax.random.split(chains.key)
    u = jax.random.uniform(k_accept, chains.score.shape)
    finite = jnp.isfinite(proposal_score)
    gain = jnp.where(finite, proposal_score - chains.score, -jnp.inf)  # +inf when the chain has no score yet
    accept = finite & ((gain >= 0) | (u < jnp.exp(jnp.minimum(gain / temperatures, 0.0))))
    return AnnealingState(
        x=jnp.where(accept[:, None], proposals, chains.x),
        score=jnp.where(accept, proposal_score, chains.score).astype(chains.score.dtype),
        step=chains.step + 1,
        key=key,
        acceptance_rate=jnp.mean(accept.astype(chains.acceptance_rate.dtype)),
    )


# --------------------------------------------------------------------------- the optimizer


@struct.dataclass
class SimulatedAnnealingParams:
    noisy_step: float = 0.03  # L2L example value
    temp_decay: float = 0.99  # α of the multiplicative schedules
    T0: float = 1.0  # start temperature (fixed to 1 in L2L)
    Tn: float = 0.01  # end temperature of the additive schedules (fixed to 0 in L2L, see above)


class SimulatedAnnealing(Optimizer):
    name = "SimulatedAnnealing"
    Params = SimulatedAnnealingParams

    def __init__(self, space: Space | Optimizee, n_parallel_runs: int = 10, cooling_schedule: Any = "default",
                 n_iteration: int | None = None):
        n_parallel_runs = check_positive_int(n_parallel_runs, "n_parallel_runs")
        super().__init__(space, n_parallel_runs)
        self.n_parallel_runs = n_parallel_runs
        self.cooling_schedule = cooling_schedule_name(cooling_schedule)
        self.n_iteration = check_n_iteration([self.cooling_schedule], n_iteration, self.name)

    def _check_params(self, params: SimulatedAnnealingParams) -> None:
        if is_concrete(params.noisy_step) and not np.all(np.asarray(params.noisy_step) > 0):
            raise ValueError(f"{self.name}: noisy_step must be > 0, got {params.noisy_step}")
        values = (params.T0, params.Tn, params.temp_decay)
        if not is_concrete(*values):
            return
        for T0, Tn, decay in np.broadcast(*(np.asarray(v, np.float64) for v in values)):
            problem = schedule_problem(self.cooling_schedule, T0, Tn, decay)
            if problem is not None:
                raise ValueError(f"{self.name}: {problem} (params T0, Tn, temp_decay)")

    def temperature(self, params: SimulatedAnnealingParams, step: Array | int) -> Array:
        """The temperature after ``step`` cooling steps."""
        return temperature(self.cooling_schedule, step, params.T0, params.Tn, params.temp_decay, self.n_iteration)

    def _init(self, key: Array, x0: Array, params: SimulatedAnnealingParams) -> AnnealingState:
        return init_chains(self.space, key, x0, self.pop_size)

    def _ask(self, key: Array, inner: AnnealingState, params: SimulatedAnnealingParams) -> Array:
        return propose(key, inner.x, params.noisy_step, self.temperature(params, inner.step))

    def _tell(self, inner: AnnealingState, population: Array, evaluation: Evaluation,
              params: SimulatedAnnealingParams) -> AnnealingState:
        return metropolis(inner, population, evaluation.score, self.temperature(params, inner.step + 1))

    def diagnostics(self, state: Any) -> dict[str, Array]:
        """``temperature``: of the last acceptance test (= of the next proposals)."""
        return {"temperature": self.temperature(state.params, state.inner.step),
                "acceptance_rate": state.inner.acceptance_rate}

    def config(self) -> dict[str, Any]:
        return {**super().config(), "n_parallel_runs": self.n_parallel_runs,
                "cooling_schedule": self.cooling_schedule, "n_iteration": self.n_iteration}
