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

from typing import Any

import jax
import numpy as np
from flax import struct

from l2ljax.core import Evaluation, Optimizee, Optimizer, Space, check_positive_int, is_concrete
from l2ljax.optimizers._annealing import (  # the schedules are part of SA's documented API
    ADDITIVE_SCHEDULES,
    COOLING_SCHEDULES,
    AnnealingState,
    check_n_iteration,
    cooling_schedule_name,
    init_chains,
    metropolis,
    propose,
    schedule_problem,
    temperature,
)
from l2ljax.rows import Rows, everything

__all__ = ["ADDITIVE_SCHEDULES", "COOLING_SCHEDULES", "SimulatedAnnealing", "SimulatedAnnealingParams",
           "cooling_schedule_name", "temperature"]

Array = jax.Array


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
    sharded_fields = ("x", "score")  # independent chains: a shard keeps its own (parallel.MPI())

    def __init__(self, space: Space | Optimizee, n_parallel_runs: int = 10, cooling_schedule: Any = "default",
                 n_iteration: int | None = None, rows: Rows | None = None):
        n_parallel_runs = check_positive_int(n_parallel_runs, "n_parallel_runs")
        super().__init__(space, n_parallel_runs)
        if rows is not None and (rows.total_rows != n_parallel_runs or rows.count < 1):
            raise ValueError(f"rows {rows.start}..{rows.start + rows.count} of {rows.total_rows} do not shard "
                             f"{n_parallel_runs} chains")
        self.rows = None if rows is None or rows.whole else rows
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
        return init_chains(self.space, key, x0, self.pop_size, self._rows)

    @property
    def _rows(self) -> Rows:
        return everything(self.pop_size) if self.rows is None else self.rows

    def _ask(self, key: Array, inner: AnnealingState, params: SimulatedAnnealingParams) -> Array:
        return propose(key, inner.x, params.noisy_step, self.temperature(params, inner.step), self._rows)

    def _tell(self, inner: AnnealingState, population: Array, evaluation: Evaluation,
              params: SimulatedAnnealingParams) -> AnnealingState:
        return metropolis(inner, population, evaluation.score, self.temperature(params, inner.step + 1), self.rows)

    def diagnostics(self, state: Any) -> dict[str, Array]:
        """``temperature``: of the last acceptance test (= of the next proposals)."""
        return {"temperature": self.temperature(state.params, state.inner.step),
                "acceptance_rate": state.inner.acceptance_rate}

    def config(self) -> dict[str, Any]:
        return {**super().config(), "n_parallel_runs": self.n_parallel_runs,
                "cooling_schedule": self.cooling_schedule, "n_iteration": self.n_iteration}
