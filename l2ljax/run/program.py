"""The compiled program of a run: one generation as a pure ``step``, chunks of them as one scan.

``make_step`` is the whole two-loop data flow in one place: ask → evaluate → tell → record.
``Program`` holds an immutable run configuration (optimizer, optimizee, what is recorded, the
stop criterion, the coordinator) and advances a state by a chunk of generations: a jitted
``lax.scan`` of ``step`` for JAX optimizees, or one generation with the evaluation on the host
for simulators. Compiled chunks are cached on the optimizee they evaluate, so a dropped
optimizee takes its programs (and any arrays they captured, e.g. a dataset) with it.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from l2ljax.core import Evaluation, Optimizee, Optimizer, OptState, check_positive_int
from l2ljax.parallel import Coordinator, coordinator

Record = dict[str, Any]
Chunk = Callable[[OptState, jax.Array, jax.Array, Any, int], tuple[OptState, Record, jax.Array]]
LEVELS = ("summary", "individuals", "population")
_CACHE_ATTRIBUTE = "_compiled_programs"
_CACHE_SIZE = 16


def generation_keys(run_key: jax.Array, generation: jax.Array) -> tuple[jax.Array, jax.Array]:
    """The (ask, evaluate) keys of one generation: a pure function of the run key and its index."""
    k_ask, k_eval = jax.random.split(jax.random.fold_in(run_key, generation))
    return k_ask, k_eval


def record_level(keep_population: bool, summary: bool) -> str:
    """'summary' (per-generation statistics only), 'individuals' (+ every fitness, best_x), 'population'."""
    return "summary" if summary else ("population" if keep_population else "individuals")


def make_record(optimizer: Optimizer, state: OptState, population: jax.Array, evaluation: Evaluation,
                generation: jax.Array, level: str) -> Record:
    """What the trajectory stores of one generation at a record ``level`` (see :data:`LEVELS`)."""
    record = {"generation": generation, "best_score": state.best_score}
    rows = optimizer.rows
    if rows is not None:  # a shard's rows: the record is the whole population's (J numbers, gathered)
        evaluation = evaluation._replace(fitness=rows.gather(evaluation.fitness), score=rows.gather(evaluation.score))
        if level == "population":  # the user asked for every member every generation
            population = rows.gather(population)
    if level == "summary":  # O(1) per generation: for large populations of large individuals
        finite = jnp.isfinite(evaluation.score)
        masked = jnp.where(finite, evaluation.score, jnp.nan)
        record.update(score_max=jnp.nanmax(masked), score_mean=jnp.nanmean(masked), score_min=jnp.nanmin(masked),
                      n_failed=jnp.sum(~finite))
    else:
        record.update(fitness=evaluation.fitness, score=evaluation.score, best_x=state.best_x)
    if level == "population":
        record["population"] = population
    for name, value in optimizer.diagnostics(state).items():
        record[f"diag/{name}"] = jnp.asarray(value)
    return record


def make_step(optimizer: Optimizer, optimizee: Optimizee, *, keep_population: bool = True, summary: bool = False,
              parallel: Coordinator | None = None) -> Callable[[OptState, jax.Array], tuple[OptState, Record]]:
    """One generation as a pure function ``step(state, run_key) -> (state, record)``.

    The record holds what ``run`` stores per generation (see ``run``'s ``keep_population`` and
    ``summary``); under ``jit`` whatever the caller drops is never computed. ``parallel`` splits
    the evaluation over devices or MPI ranks (``l2ljax.parallel``); give the jitted step a state
    from ``parallel.place(state)``, which replicates it over a ``Devices`` mesh.
    """
    level = record_level(keep_population, summary)
    if not optimizee.jittable:
        raise ValueError(f"{optimizee.name} is not jittable: use run(...), which evaluates it on the host")

    def step(state: OptState, run_key: jax.Array) -> tuple[OptState, Record]:
        k_ask, k_eval = generation_keys(run_key, state.generation)
        population = optimizer.ask_flat(k_ask, state)
        evaluation = optimizee.evaluate_flat(k_eval, population, state.generation, parallel, rows=optimizer.rows)
        new_state = optimizer.tell_flat(state, population, evaluation)
        return new_state, make_record(optimizer, new_state, population, evaluation, state.generation, level)

    return step


def scan_chunk(optimizer: Optimizer, optimizee: Optimizee, level: str, stops: bool, parallel: Coordinator) -> Chunk:
    """Jitted ``lax.scan`` over ``length`` generations of which the first ``n_steps`` run; with
    ``stops``, generations after ``best_score >= threshold`` are skipped too. The threshold and
    ``n_steps`` are arguments, so other stop criteria and a shorter last chunk reuse the program."""
    # A mesh that splits the population-sized state runs the whole chunk as one shard_map, each
    # device on its rows (parallel.Devices / Distributed); elsewhere these are the identity.
    program_optimizer = getattr(parallel, "program_optimizer", lambda opt: opt)(optimizer)
    sharded = program_optimizer is not optimizer
    any_shard = parallel.any_within if sharded else parallel.any_traced
    step = make_step(program_optimizer, optimizee, keep_population=level == "population",
                     summary=level == "summary", parallel=parallel)

    def chunk(state: OptState, run_key: jax.Array, threshold: jax.Array, n_steps: jax.Array, length: int
              ) -> tuple[OptState, Record, jax.Array]:
        blank = jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype),
                                       jax.eval_shape(step, state, run_key)[1])

        def body(carry: tuple[OptState, jax.Array], index: jax.Array):
            state, stopped = carry
            stopped = stopped | (index >= n_steps)
            new_state, record = jax.lax.cond(stopped, lambda s: (s, blank), lambda s: step(s, run_key), state)
            active = ~stopped
            if stops:
                stopped = stopped | any_shard(new_state.best_score >= threshold)
            return (new_state, stopped), (record, active)

        (state, _), (records, active) = jax.lax.scan(body, (state, jnp.array(False)), jnp.arange(length))
        return state, records, active

    return jax.jit(parallel.wrap_chunk(optimizer, chunk) if sharded else chunk, static_argnums=4)


def host_chunk(optimizer: Optimizer, optimizee: Optimizee, level: str, stops: bool, parallel: Coordinator) -> Chunk:
    """One generation for optimizees that are not JAX code: ask/tell jitted, evaluation on the host
    (the stop criterion is checked on the host after every generation)."""
    ask = jax.jit(optimizer.ask_flat)
    tell = jax.jit(optimizer.tell_flat)
    record = jax.jit(lambda s, p, e, g: make_record(optimizer, s, p, e, g, level))

    def chunk(state: OptState, run_key: jax.Array, threshold: jax.Array, n_steps: Any, length: int):
        k_ask, k_eval = generation_keys(run_key, state.generation)
        population = ask(k_ask, state)
        evaluation = optimizee.evaluate_host(k_eval, population, int(state.generation), parallel)
        new_state = tell(state, population, evaluation)
        rec = record(new_state, population, evaluation, state.generation)
        return new_state, jax.tree_util.tree_map(lambda x: x[None], rec), jnp.ones(1, bool)

    return chunk


def compiled_chunk(optimizer: Optimizer, optimizee: Optimizee, level: str, stops: bool,
                   parallel: Coordinator | None = None) -> Chunk:
    """The chunk program of a configuration, compiled once and cached on ``optimizee``.

    Optimizers and optimizees are immutable, so a configuration is its objects' identities; the
    cache lives and dies with the optimizee (a small LRU), never in a module-global table that
    would keep datasets alive.
    """
    parallel = coordinator(parallel)
    cache: dict = optimizee.__dict__.setdefault(_CACHE_ATTRIBUTE, {})
    key = (optimizer, level, stops, parallel)
    if key not in cache:
        if len(cache) >= _CACHE_SIZE:
            cache.pop(next(iter(cache)))
        build = scan_chunk if optimizee.jittable else host_chunk
        cache[key] = build(optimizer, optimizee, level, stops, parallel)
    cache[key] = cache.pop(key)  # most recently used last
    return cache[key]


def check_stop_criterion(stop_criterion: float | None) -> float | None:
    """The criterion as float32 (the scores' precision, on every path); NaN is an error."""
    if stop_criterion is None:
        return None
    if math.isnan(float(stop_criterion)):
        raise ValueError("stop_criterion is NaN")
    return float(np.float32(stop_criterion))


@dataclasses.dataclass(frozen=True)
class Program:
    """An immutable run configuration and the compiled chunks that advance it.

    chunk_size:     generations per compiled chunk (1 for host-evaluated optimizees); a shorter
                    last chunk runs the same program.
    stop_criterion: stop once ``best_score >= stop_criterion`` (float32, as the scores), or None.
    """

    optimizer: Optimizer
    optimizee: Optimizee
    level: str
    chunk_size: int
    stop_criterion: float | None
    parallel: Coordinator

    @staticmethod
    def build(optimizer: Optimizer, optimizee: Optimizee, level: str, chunk_size: int,
              stop_criterion: float | None, parallel: Coordinator | None) -> Program:
        if level not in LEVELS:
            raise ValueError(f"record level must be one of {LEVELS}, got {level!r}")
        stop_criterion = check_stop_criterion(stop_criterion)
        chunk_size = check_positive_int(chunk_size, "chunk_size") if optimizee.jittable else 1
        return Program(optimizer, optimizee, level, chunk_size, stop_criterion, coordinator(parallel))

    def criterion_met(self, state: OptState) -> bool:
        return self.stop_criterion is not None and np.float32(state.best_score) >= np.float32(self.stop_criterion)

    def check_traces(self, state: OptState, run_key: jax.Array) -> None:
        """Trace the chunk on every rank and raise on every rank if any failed, before any rank
        runs it: a trace-time error on one rank would leave the others waiting in its collectives."""
        if self.parallel.n_shards == 1 or not self.optimizee.jittable:
            return
        chunk = compiled_chunk(self.optimizer, self.optimizee, self.level, self.stop_criterion is not None,
                               self.parallel)
        error = None
        try:
            jax.eval_shape(lambda s, k, t, n: chunk(s, k, t, n, self.chunk_size), state, run_key,
                           jnp.float32(0.0), 1)
        except Exception as failure:  # raised below on every rank
            error = failure
        self.parallel.raise_together(error)

    def advance(self, state: OptState, run_key: jax.Array, generation: int, n_generations: int,
                steps: int | None = None) -> tuple[OptState, Record, bool]:
        """Up to one chunk of generations from ``generation`` (at most ``steps`` of them; the same
        compiled program runs any number up to ``chunk_size``): the new state, the records (numpy,
        one row per generation run) and whether the run stopped early (the criterion was met)."""
        chunk = compiled_chunk(self.optimizer, self.optimizee, self.level, self.stop_criterion is not None,
                               self.parallel)
        length = min(self.chunk_size, n_generations - generation, self.chunk_size if steps is None else steps)
        threshold = jnp.float32(np.inf if self.stop_criterion is None else self.stop_criterion)
        state, records, active = chunk(state, run_key, threshold, length, self.chunk_size)
        n_active = int(np.sum(active))
        # Slice before copying: a numpy view of the rows run would keep the whole chunk_size-row
        # buffer alive (with keep_population, chunk_size populations per paced sub-chunk).
        records = {name: np.asarray(value if n_active == self.chunk_size else value[:n_active])
                   for name, value in records.items()}
        return state, records, n_active < length or self.criterion_met(state)
