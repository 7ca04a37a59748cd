"""Parallel tempering (replica exchange): simulated-annealing chains that trade states.

Swendsen & Wang, *Replica Monte Carlo simulation of spin glasses*, PRL 57 (1986); Earl & Deem,
*Parallel tempering: theory, applications, and new perspectives*, PCCP 7 (2005);
L2L ``ParallelTemperingOptimizer``. Chain i runs simulated annealing (see
:mod:`l2ljax.optimizers.simulated_annealing`) on its own cooling schedule with its own
T0_i, Tn_i and decay α_i. After the Metropolis step of generation k, with T_i = T_i(k+1):

1. sort the chains by temperature (coldest first) and pair neighbours in that order:
   positions (0,1), (2,3), ... when k is even, (1,2), (3,4), ... when k is odd, so every
   neighbouring pair gets its chance every other generation;
2. swap the STATES (point and score) of a pair (i, j) with probability

       min(1, exp((E_i − E_j) (1/T_i − 1/T_j))),   E = −score (scores are maximised),

   the detailed-balance condition of the joint distribution ∏ exp(−E/T). A cold chain
   holding a worse state than its hotter neighbour always takes the better one. Pairs whose
   exponent is undefined (both scores −inf, or equal temperatures with one −inf) do not swap.

Temperatures stay with the chains (chain i always follows its own schedule); states move.
This differs from L2L in two deliberate ways: L2L uses exp(−|(E₁−E₂)(1/(5T₁) − 1/(5T₂))|),
which never accepts a swap with certainty and is symmetric in which chain is colder, and its
partner search swaps every chain with itself (``compare_indices.append(i)``), so no state
ever moved. Both are fixed here.

L2L parameter names: ``n_parallel_runs`` (= pop_size, at least 2), ``noisy_step``,
``cooling_schedules`` (one per chain, or one for all), ``temperature_bounds`` ((n, 2):
[T0, T_end] per chain, 0 < T_end ≤ T0), ``decay_parameters`` (α per chain, or one for all),
``n_iteration`` (n of the additive schedules). ``temperature_bounds``, ``decay_parameters``
and ``noisy_step`` are hyperparameters (vmappable); the constructor arguments set their
defaults. Default ladder: T0_i geometric from 1 to 10, T_end = T0/100.

Example::

    ladder = np.geomspace(0.5, 10.0, 16)
    opt = ParallelTempering(problem, n_parallel_runs=16, cooling_schedules="linear_additive",
                            temperature_bounds=np.stack([ladder, ladder / 100], axis=1), noisy_step=0.3,
                            n_iteration=300)
    result = l2ljax.run(opt, problem, jax.random.key(0), n_generations=300)
    result.trajectory["diag/swap_rate"], result.trajectory["diag/temperatures"]
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from l2ljax.core import Evaluation, Optimizee, Optimizer, Space, check_positive_int, is_concrete
from l2ljax.optimizers._annealing import (
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

Array = jax.Array


def swap_probability(score_i: Array, score_j: Array, T_i: Array, T_j: Array) -> Array:
    """Replica-exchange acceptance min(1, exp((E_i − E_j)(1/T_i − 1/T_j))) with E = −score.

    0 where the exponent is undefined (NaN, e.g. both scores −inf).
    """
    log_p = (score_j - score_i) * (1.0 / T_i - 1.0 / T_j)
    return jnp.where(jnp.isnan(log_p), 0.0, jnp.exp(jnp.minimum(log_p, 0.0)))


class Exchange(NamedTuple):
    """Result of one round of neighbour swaps.

    x, score:    (n, dim), (n,) the chains' states after the swaps.
    source:      (n,) chain c now holds the state chain ``source[c]`` held before (c if it kept its own).
    probability: (n − 1,) swap probability of the neighbour pairs (positions j, j+1 in temperature order).
    attempted:   (n − 1,) whether that pair was offered a swap this round (its parity).
    swapped:     (n − 1,) whether it swapped.
    """

    x: Array
    score: Array
    source: Array
    probability: Array
    attempted: Array
    swapped: Array


def replica_exchange(key: Array, x: Array, score: Array, temperatures: Array, parity: Array | int,
                     rows: Rows | None = None) -> Exchange:
    """Swap the states of neighbouring chains in temperature order (pairs starting at ``parity``).

    ``rows``: ``x`` and ``score`` are a shard's chains (:mod:`l2ljax.rows`). Every shard decides the
    same swaps from all n scores (n numbers, gathered) and fetches the states its chains receive."""
    sharded = rows is not None and not rows.whole
    every_score = rows.gather(score) if sharded else score
    n = every_score.shape[0]
    order = jnp.argsort(temperatures)  # position -> chain, coldest first (stable for ties)
    cold, hot = order[:-1], order[1:]
    probability = swap_probability(every_score[cold], every_score[hot], temperatures[cold], temperatures[hot])
    attempted = jnp.arange(n - 1) % 2 == jnp.asarray(parity) % 2
    swapped = attempted & (jax.random.uniform(key, (n - 1,)) < probability)
    position = jnp.arange(n)
    take_from = jnp.where(jnp.append(swapped, False), position + 1, position)  # lower member of a pair
    take_from = jnp.where(jnp.concatenate([jnp.zeros(1, bool), swapped]), position - 1, take_from)
    source = order[take_from[jnp.argsort(order)]]
    if not sharded:
        return Exchange(x[source], score[source], source, probability, attempted, swapped)
    mine = rows.own(source)
    return Exchange(rows.take(x, mine), every_score[mine], source, probability, attempted, swapped)


@struct.dataclass
class ParallelTemperingParams:
    noisy_step: Any = 0.03
    temperature_bounds: Any = None  # (n, 2): [T0, T_end] per chain
    decay_parameters: Any = None  # (n,): α per chain


class ParallelTemperingState(NamedTuple):
    """chains: the annealing chains; swap_rate: fraction of the pairs offered a swap in the last
    generation that swapped (0 when none was offered: odd generations with two chains);
    source: (n,) which chain each chain's state came from in that exchange."""

    chains: AnnealingState
    swap_rate: Array
    source: Array


class ParallelTempering(Optimizer):
    name = "ParallelTempering"
    Params = ParallelTemperingParams
    sharded_fields = ("chains.x", "chains.score")  # a shard keeps its chains' states (parallel.MPI())

    def __init__(self, space: Space | Optimizee, n_parallel_runs: int = 8, cooling_schedules: Any = "default",
                 temperature_bounds: Any = None, decay_parameters: Any = 0.99, noisy_step: float = 0.03,
                 n_iteration: int | None = None, rows: Rows | None = None):
        n = check_positive_int(n_parallel_runs, "n_parallel_runs")
        if n < 2:
            raise ValueError(f"n_parallel_runs must be at least 2 for parallel tempering (swaps need a pair), got {n}")
        super().__init__(space, n)
        if rows is not None and (rows.total_rows != n or rows.count < 1):
            raise ValueError(f"rows {rows.start}..{rows.start + rows.count} of {rows.total_rows} do not shard "
                             f"{n} chains")
        self.rows = None if rows is None or rows.whole else rows
        self.n_parallel_runs = n
        if isinstance(cooling_schedules, str) or not isinstance(cooling_schedules, Sequence | np.ndarray):
            cooling_schedules = [cooling_schedules] * n
        if len(cooling_schedules) != n:
            raise ValueError(f"cooling_schedules has {len(cooling_schedules)} entries for {n} parallel runs: "
                             "give one per chain or a single one for all")
        self.cooling_schedules = tuple(cooling_schedule_name(s) for s in cooling_schedules)
        self.n_iteration = check_n_iteration(self.cooling_schedules, n_iteration, self.name)
        if temperature_bounds is None:
            t0 = np.geomspace(1.0, 10.0, n)
            temperature_bounds = np.stack([t0, t0 / 100], axis=1)
        self._defaults = ParallelTemperingParams(
            noisy_step=float(noisy_step),
            temperature_bounds=jnp.asarray(temperature_bounds, self.space.dtype),
            decay_parameters=jnp.broadcast_to(jnp.asarray(decay_parameters, self.space.dtype), (n,))
            if np.ndim(decay_parameters) == 0 else jnp.asarray(decay_parameters, self.space.dtype),
        )
        self.check_params(self._defaults)

    @property
    def default_params(self) -> ParallelTemperingParams:
        return self._defaults

    def _check_params(self, params: ParallelTemperingParams) -> None:
        n = self.n_parallel_runs
        if params.temperature_bounds is None or params.decay_parameters is None:
            raise ValueError(f"{self.name}: temperature_bounds and decay_parameters are required "
                             "(start from opt.default_params)")
        bounds, decay = params.temperature_bounds, params.decay_parameters
        if np.shape(bounds)[-2:] != (n, 2):
            raise ValueError(f"{self.name}: temperature_bounds must have shape ({n}, 2) (one [T0, T_end] per "
                             f"chain), got {np.shape(bounds)}")
        if np.shape(decay)[-1:] != (n,):
            raise ValueError(f"{self.name}: decay_parameters must have one entry per chain ({n}), "
                             f"got shape {np.shape(decay)}")
        if is_concrete(params.noisy_step) and not np.all(np.asarray(params.noisy_step) > 0):
            raise ValueError(f"{self.name}: noisy_step must be > 0, got {params.noisy_step}")
        if not is_concrete(bounds, decay):
            return
        bounds = np.asarray(bounds, np.float64).reshape(-1, n, 2)
        decay = np.broadcast_to(np.asarray(decay, np.float64).reshape(-1, n), bounds.shape[:2])
        for (T0, T_end), d, schedule, i in zip(bounds.reshape(-1, 2), decay.ravel(),
                                               self.cooling_schedules * len(bounds), np.tile(np.arange(n), len(bounds)),
                                               strict=True):
            if not 0 < T_end <= T0:
                raise ValueError(f"{self.name}: temperature_bounds[{i}] = [T0, T_end] = [{T0}, {T_end}] "
                                 "needs 0 < T_end <= T0")
            problem = schedule_problem(schedule, T0, T_end, d)
            if problem is not None:
                raise ValueError(f"{self.name}: chain {i}: {problem} (temperature_bounds[{i}], "
                                 f"decay_parameters[{i}])")

    def temperatures(self, params: ParallelTemperingParams, step: Array | int) -> Array:
        """(n,) temperature of every chain after ``step`` cooling steps."""
        T0, T_end = params.temperature_bounds[..., 0], params.temperature_bounds[..., 1]
        out = None
        for name in dict.fromkeys(self.cooling_schedules):  # each distinct schedule once, for all chains
            t = temperature(name, step, T0, T_end, params.decay_parameters, self.n_iteration)
            mask = jnp.asarray([s == name for s in self.cooling_schedules])
            out = t if out is None else jnp.where(mask, t, out)
        return out

    @property
    def _rows(self) -> Rows:
        return everything(self.pop_size) if self.rows is None else self.rows

    def _init(self, key: Array, x0: Array, params: ParallelTemperingParams) -> ParallelTemperingState:
        n = self.n_parallel_runs
        return ParallelTemperingState(init_chains(self.space, key, x0, n, self.rows), jnp.array(0.0, x0.dtype),
                                      jnp.arange(n, dtype=jnp.int32))

    def _ask(self, key: Array, inner: ParallelTemperingState, params: ParallelTemperingParams) -> Array:
        chains = inner.chains
        temps = self._rows.own(self.temperatures(params, chains.step))
        return propose(key, chains.x, params.noisy_step, temps, self._rows)

    def _tell(self, inner: ParallelTemperingState, population: Array, evaluation: Evaluation,
              params: ParallelTemperingParams) -> ParallelTemperingState:
        step = inner.chains.step
        temps = self.temperatures(params, step + 1)
        chains = metropolis(inner.chains, population, evaluation.score, self._rows.own(temps), self.rows)
        key, k_swap = jax.random.split(chains.key)
        ex = replica_exchange(k_swap, chains.x, chains.score, temps, step % 2, self.rows)
        swap_rate = jnp.sum(ex.swapped) / jnp.maximum(jnp.sum(ex.attempted), 1)
        return ParallelTemperingState(chains._replace(x=ex.x, score=ex.score, key=key),
                                      swap_rate.astype(population.dtype), ex.source.astype(jnp.int32))

    def diagnostics(self, state: Any) -> dict[str, Array]:
        """Temperatures of the last acceptance test and exchange (= of the next proposals)."""
        temps = self.temperatures(state.params, state.inner.chains.step)
        return {"acceptance_rate": state.inner.chains.acceptance_rate, "swap_rate": state.inner.swap_rate,
                "temperature_mean": jnp.mean(temps), "temperature_min": jnp.min(temps),
                "temperature_max": jnp.max(temps), "temperatures": temps}

    def config(self) -> dict[str, Any]:
        return {**super().config(), "n_parallel_runs": self.n_parallel_runs,
                "cooling_schedules": self.cooling_schedules, "n_iteration": self.n_iteration}
