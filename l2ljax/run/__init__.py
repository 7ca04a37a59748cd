"""Running the two loops: ``run`` repeats one generation (ask → evaluate → tell → record).

``run`` composes three parts, each testable alone: a compiled :class:`~l2ljax.run.program.Program`
(chunks of generations as one jitted ``lax.scan`` of ``make_step``, from immutable optimizer and
optimizee), a :class:`~l2ljax.run.directory.RunDirectory` (open, validate, resume, write) and a
coordinator (:class:`l2ljax.parallel.Coordinator`: one process, devices or MPI ranks; it owns the
writer rank and agreeing on errors and stops). Between chunks the host writes the trajectory and
checkpoint and calls callbacks. ``chunk_size=n_generations`` is the fully-jitted path;
``chunk_size=1`` is the host loop. Both call the same ``step`` with the same keys (generation g
uses ``fold_in(run_key, g)``), so they produce the same numbers, and a resumed run continues
exactly where it stopped. ``run_many`` runs a batch of independent runs (one per key, same keys
as ``run``) as one jitted ``vmap`` and returns their final states: for comparisons over seeds.

Example::

    >>> import jax, l2ljax
    >>> problem = l2ljax.function_optimizee("rosenbrock", dim=2)
    >>> opt = l2ljax.CrossEntropy(problem, pop_size=64, distribution=l2ljax.NoisyGaussian())
    >>> result = l2ljax.run(opt, problem, jax.random.key(0), n_generations=100)
    >>> bool(result.best_fitness[0] < 1e-3), result.best.round(1).tolist()   # the minimum: f(1, 1) = 0
    (True, [1.0, 1.0])
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from l2ljax.core import Optimizee, Optimizer, OptState, as_key, check_positive_int
from l2ljax.parallel import Coordinator, coordinator
from l2ljax.run.directory import RunDirectory, run_meta
from l2ljax.run.pacing import Pace, deferred_interrupts
from l2ljax.run.program import (
    Program,
    Record,
    check_stop_criterion,
    generation_keys,
    make_record,
    make_step,
    record_level,
)
from l2ljax.run.watchdog import watching

__all__ = ["Callback", "ProgressBar", "Program", "RunDirectory", "RunResult", "generation_keys", "make_record",
           "make_step", "record_level", "run", "run_many"]

Callback = Callable[[Record, OptState], Any]


class RunResult(NamedTuple):
    """What ``run`` returns. ``trajectory`` holds every generation run so far (resumed ones too).

    ``best_fitness`` is the raw fitness of the best individual; NaN with ``summary=True``, where
    individual fitness is not recorded (``best_score`` still is).
    """

    state: OptState
    trajectory: dict[str, np.ndarray]
    best: Any
    best_score: float
    best_fitness: np.ndarray
    generations: int
    stopped_early: bool


def run(
    optimizer: Optimizer,
    optimizee: Optimizee,
    key: jax.Array,
    n_generations: int,
    *,
    params: Any = None,
    x0: Any = None,
    state: OptState | None = None,
    directory: str | Path | None = None,
    resume: bool = False,
    chunk_size: int | None = None,
    callbacks: Sequence[Callback] = (),
    stop_criterion: float | None = None,
    progress: bool = False,
    keep_population: bool = True,
    summary: bool = False,
    parallel: Coordinator | None = None,
    chunk_seconds: float = 1.0,
) -> RunResult:
    """Optimise ``optimizee`` with ``optimizer`` for up to ``n_generations`` generations.

    key:            the run's key; ``init`` and every generation derive their keys from it.
    params, x0:     passed to ``optimizer.init`` (ignored when ``state`` is given).
    directory:      write ``meta.json``, the trajectory and a checkpoint after every chunk.
    resume:         continue from the checkpoint in ``directory`` (same numbers as an
                    uninterrupted run); without it, a non-empty ``directory`` is an error.
    chunk_size:     generations between saves (trajectory chunk + checkpoint) and the length of
                    the compiled scan. Default: the whole run, or 1 when callbacks are given,
                    or ~1% of the run when writing to a directory or showing progress.
    chunk_seconds:  with a directory or progress, the scan runs in sub-chunks of about this
                    many seconds (same numbers), so that progress, callbacks and Ctrl-C are
                    served that often: Ctrl-C or SIGTERM saves every completed generation and
                    raises ``KeyboardInterrupt``; a second one exits at once (status 130). A
                    kill loses at most the generations since the last save.
    callbacks:      ``cb(record, state)`` per generation (numpy record), called after each chunk
                    with the state at the end of that chunk; returning True stops the run at
                    the end of the chunk (at once with ``chunk_size=1``, the default with callbacks).
    stop_criterion: stop once ``best_score >= stop_criterion`` (score = fitness · weights, so
                    with weight -1, ``-1e-3`` means "stop when f <= 1e-3"). L2L's parameter.
    progress:       a progress line on stderr.
    keep_population: record the whole population each generation (J × dim floats).
    summary:        record only per-generation statistics (best, max/mean/min score, failures,
                    diagnostics), not every individual's fitness nor best_x: for large
                    populations of large individuals (e.g. EnKF on network weights).
    parallel:       split each generation's evaluation over devices (``l2ljax.parallel.Devices()``)
                    or ranks (``l2ljax.parallel.MPI()`` or ``Distributed()``; every rank calls ``run`` alike, rank 0
                    writes ``directory`` and shows progress, all return the same result), or
                    ``l2ljax.parallel.auto()``. Same numbers as without, to float tolerance (for host
                    simulators that use their seed, see ``l2ljax.parallel``).
    """
    n_generations, stop_criterion = check_positive_int(n_generations, "n_generations"), check_stop_criterion(
        stop_criterion)
    if resume and directory is None:
        raise ValueError("resume=True needs the directory of the run to resume")
    callbacks, level, parallel = _as_list(callbacks), record_level(keep_population, summary), coordinator(parallel)
    if not optimizee.jittable and hasattr(parallel, "without_state_sharding"):
        parallel = parallel.without_state_sharding()  # a host simulator's rows go through numpy: keep them whole
    k_init, run_key = jax.random.split(as_key(key))
    mine = parallel.shard(optimizer)  # the optimizer this process runs (its rows of a sharded population)
    state = mine.init(k_init, params, x0) if state is None else parallel.own_rows(optimizer, state)
    whole = parallel.whole_template(optimizer, state)  # the shapes of the whole state, as checkpoints hold it
    meta = run_meta(optimizer, optimizee, n_generations, level, state.params, parallel)
    parallel.check_same(fingerprint(meta, run_key, whole))
    rundir = RunDirectory.open(directory, meta, whole, run_key, resume=resume, n_generations=n_generations,
                               explicit_params=state.params if params is not None else None, parallel=parallel)
    try:
        program = Program.build(mine, optimizee, level, min(_chunk_size(chunk_size, n_generations, directory,
                                progress, callbacks, optimizee), n_generations - rundir.generation) or 1,
                                stop_criterion, parallel)
        callbacks += [ProgressBar(n_generations)] if progress and parallel.is_writer else []
        resumed = rundir.state is not whole
        state = parallel.place(parallel.own_rows(optimizer, rundir.state) if resumed else
                               parallel.own_rows(optimizer, state) if hasattr(parallel, "program_optimizer") else state)
        run_key = rundir.run_key
        program.check_traces(state, run_key)
        stopped = program.criterion_met(state) and rundir.generation > 0
        hosted = directory is not None or progress
        pace = Pace(chunk_seconds if hosted and program.chunk_size > 1 else None)
        with deferred_interrupts(enabled=hosted) as interrupts:
            state, stopped = _loop(program, rundir, state, run_key, n_generations, callbacks, parallel, pace,
                                   interrupts, stopped, optimizer)
        _close(callbacks)
        state = parallel.whole_state(optimizer, state, everywhere=True)
    finally:
        rundir.close()
    return _result(optimizer, optimizee, state, rundir, stopped, n_generations)


def _loop(program: Program, rundir: RunDirectory, state: OptState, run_key: jax.Array, n_generations: int,
          callbacks: list[Callback], parallel: Coordinator, pace: Pace, interrupts: Any, stopped: bool,
          optimizer: Optimizer) -> tuple[OptState, bool]:
    """ask → evaluate → tell (compiled, in paced sub-chunks) → record, until done or stopped."""
    # checkpoints hold the whole state: a sharded one is gathered to the writer when it is saved
    unsaved = _Unsaved(lambda s: s if rundir.path is None else parallel.whole_state(optimizer, s))
    watch, compiles = watching(parallel), True  # a rank that hangs ends the job
    while rundir.generation + unsaved.count < n_generations and not stopped:
        started, generation = time.perf_counter(), rundir.generation + unsaved.count
        with watch("chunk", f"the chunk from generation {generation}", setup=compiles):
            state, records, stopped = program.advance(state, run_key, generation, n_generations,
                                                      pace.steps(program.chunk_size - unsaved.count))
        compiles = False
        pace.observe(len(records["generation"]), time.perf_counter() - started)
        unsaved.add(records)
        interrupted = parallel.settle(interrupts.requested, None)  # every rank stops at the same generation
        try:  # record: on disk (every chunk_size generations), in the history, to the callbacks
            with watch("record", "writing the run directory and calling the callbacks"):
                if interrupted or stopped or unsaved.count >= program.chunk_size or \
                        rundir.generation + unsaved.count >= n_generations:
                    unsaved.write_to(rundir, state, run_key)
                stopped = _notify(callbacks, records, state) or stopped
        except Exception as failure:  # raised on every rank, not only this one
            stopped = parallel.settle(stopped, failure)
        else:  # a callback's stop holds on every rank
            stopped = parallel.settle(stopped, None)
        if interrupted:
            _close(callbacks)
            raise KeyboardInterrupt(f"interrupted after generation {rundir.generation}; saved")
    unsaved.write_to(rundir, state, run_key)  # a callback stopped between saves
    return state, stopped


class _Unsaved:
    """Sub-chunks run since the last save."""

    def __init__(self, whole: Callable[[OptState], OptState]) -> None:
        self.records: list[Record] = []
        self.count = 0
        self.whole = whole

    def add(self, records: Record) -> None:
        self.records.append(records)
        self.count += len(records["generation"])

    def write_to(self, rundir: RunDirectory, state: OptState, run_key: jax.Array) -> None:
        if self.count:
            joined = {name: np.concatenate([r[name] for r in self.records]) for name in self.records[0]}
            rundir.write(joined, self.whole(state), run_key, self.count)
        self.records, self.count = [], 0


def _close(callbacks: Sequence[Callback]) -> None:
    for cb in callbacks:
        getattr(cb, "close", lambda: None)()


def fingerprint(meta: dict, run_key: jax.Array, state: OptState) -> dict[str, str]:
    """Digests of what every MPI rank must share: key, optimizer, optimizee, hyperparameters,
    record level, versions, and the initial state (data-dependent initial ensembles included)."""
    import hashlib
    import json

    from l2ljax import trajectory as traj

    def digest(value: Any) -> str:
        return hashlib.sha256(json.dumps(traj.plain_json(value), sort_keys=True).encode()).hexdigest()[:16]

    leaves = [np.asarray(jax.random.key_data(x) if traj.is_key(x) else x) for x in jax.tree_util.tree_leaves(state)]
    fields = {name: digest(meta.get(name)) for name in ("optimizer", "optimizee", "params", "record", "n_generations")}
    return {**fields, "key": digest(np.asarray(jax.random.key_data(run_key))),
            "versions": digest([meta.get("l2ljax_version"), meta.get("jax_version")]),
            "initial state": traj.checksum({str(i): leaf for i, leaf in enumerate(leaves)})[:16]}


def _as_list(callbacks: Sequence[Callback] | Callback) -> list[Callback]:
    return [callbacks] if callable(callbacks) else list(callbacks)


def _chunk_size(chunk_size: int | None, n_generations: int, directory: Any, progress: bool,
                callbacks: Sequence[Callback], optimizee: Optimizee) -> int:
    """The default chunk: the whole run; 1 with callbacks or a host simulator; ~1% when writing or
    showing progress."""
    if chunk_size is not None:
        return check_positive_int(chunk_size, "chunk_size")
    if callbacks or not optimizee.jittable:
        return 1
    if directory is not None or progress:
        return max(1, n_generations // 100)
    return n_generations


def _notify(callbacks: Sequence[Callback], records: Record, state: OptState) -> bool:
    """Every callback on every generation of the chunk; whether any asked to stop."""
    stop = False
    for i in range(len(records["generation"])):
        one = {name: value[i] for name, value in records.items()}
        stop = any([bool(cb(one, state)) for cb in callbacks]) or stop
    return stop


def _result(optimizer: Optimizer, optimizee: Optimizee, state: OptState, rundir: RunDirectory, stopped: bool,
            n_generations: int) -> RunResult:
    """The result, with the best individual's raw fitness looked up in the trajectory."""
    trajectory = rundir.trajectory()
    best_fitness = np.full(optimizee.n_objectives, np.nan)
    if "score" in trajectory and np.isfinite(trajectory["score"]).any():
        g, j = np.unravel_index(np.argmax(trajectory["score"]), trajectory["score"].shape)
        if np.float32(trajectory["score"][g, j]) == np.float32(state.best_score):  # else the best predates it
            best_fitness = trajectory["fitness"][g, j]
    return RunResult(state, trajectory, optimizer.best(state), float(state.best_score), best_fitness,
                     rundir.generation, bool(stopped and rundir.generation < n_generations))


def run_many(optimizer: Optimizer, optimizee: Optimizee, keys: jax.Array, n_generations: int, *,
             params: Any = None, x0: Any = None) -> OptState:
    """Independent runs, one per key of the batch ``keys``, as one jitted program; their final states.

    keys:       a batch of keys, e.g. ``jax.random.split(key, n)`` or ``jax.vmap(jax.random.key)(seeds)``.
    params, x0: passed to ``optimizer.init``; shared by every run (not batched).

    Each run derives its keys from its own key as ``run`` does, so ``run_many(...)`` indexed at
    ``i`` is the final state of ``run(optimizer, optimizee, keys[i], n_generations, ...)``: the same
    random numbers, though XLA may round batched matrix products and reductions differently, so
    states can differ in the last float32 bits. Nothing is recorded on the way. The returned
    ``OptState`` has a leading axis of ``len(keys)``.

    Example::

        states = l2ljax.run_many(opt, problem, jax.random.split(jax.random.key(0), 8), 100)
        best_fitness = -states.best_score  # (8,) for a minimised problem
    """
    n_generations = check_positive_int(n_generations, "n_generations")
    keys = _as_key_batch(keys)
    params = optimizer.default_params if params is None else params
    optimizer.check_params(params)  # here, on concrete values: under jit, init sees only their shapes
    if x0 is not None and not all(np.all(np.isfinite(np.asarray(x))) for x in jax.tree_util.tree_leaves(x0)):
        raise ValueError("x0 contains NaN or inf")
    return _many_program(optimizer, optimizee, n_generations)(keys, params, x0)


def _as_key_batch(keys: Any) -> jax.Array:
    """A 1-D batch of typed keys, from typed keys or a (n, 2) batch of legacy uint32 keys."""
    keys = jnp.asarray(keys) if not isinstance(keys, jax.Array) else keys
    if not jnp.issubdtype(keys.dtype, jax.dtypes.prng_key) and keys.dtype == jnp.uint32 and keys.ndim == 2:
        keys = jax.random.wrap_key_data(keys)
    if not jnp.issubdtype(keys.dtype, jax.dtypes.prng_key) or keys.ndim != 1 or keys.shape[0] == 0:
        raise TypeError(f"expected a non-empty 1-D batch of JAX PRNG keys (jax.random.split(key, n)), got an "
                        f"array of dtype {keys.dtype} and shape {keys.shape}")
    return keys


def _many_program(optimizer: Optimizer, optimizee: Optimizee, n_generations: int) -> Callable:
    """Jitted vmap over keys of ``init`` and a ``lax.scan`` of ``step``, cached on the optimizee like
    the chunks of ``run``."""
    cache: dict = optimizee.__dict__.setdefault("_many_programs", {})
    if (optimizer, n_generations) not in cache:
        cache.clear()  # one at a time: a sweep over n_generations must not pile up programs
        cache[optimizer, n_generations] = _build_many(optimizer, optimizee, n_generations)
    return cache[optimizer, n_generations]


def _build_many(optimizer: Optimizer, optimizee: Optimizee, n_generations: int) -> Callable:
    step = make_step(optimizer, optimizee, keep_population=False)

    def one(key: jax.Array, params: Any, x0: Any) -> OptState:
        k_init, run_key = jax.random.split(key)
        state = optimizer.init(k_init, params, x0)
        state, _ = jax.lax.scan(lambda s, _: (step(s, run_key)[0], None), state, None, length=n_generations)
        return state

    return jax.jit(jax.vmap(one, in_axes=(0, None, None)))


class ProgressBar:
    """A one-line progress display on stderr: generations done, rate, time left, and what matters.

    ``describe(record, state) -> str`` adds the run's own figures (default: the best score so
    far); the line is redrawn at most every ``every_seconds``. It says when it is compiling.
    """

    def __init__(self, total: int, stream: Any = None, every_seconds: float = 0.5,
                 describe: Callable[[Record, OptState], str] | None = None):
        self.total, self.stream, self.every = total, stream or sys.stderr, every_seconds
        self.describe = describe or (lambda record, state: f"best score {float(record['best_score']):.6g}")
        self.start = self.last = time.perf_counter()
        self.first: int | None = None  # first generation seen: a resumed run's rate counts only its own
        self.first_at = self.start
        self.stream.write("compiling the run's program; progress follows the first generation\n")
        self.stream.flush()

    def __call__(self, record: Record, state: OptState) -> None:
        now = time.perf_counter()
        done = int(record["generation"]) + 1
        if self.first is None:  # the rate leaves out the first generation, which includes compilation
            self.first, self.first_at = done, now
        if now - self.last < self.every and done < self.total:
            return
        self.last = now
        rate = (done - self.first) / (now - self.first_at) if now > self.first_at and done > self.first else None
        speed = "" if rate is None else f"  {_rate(rate)}  {_clock((self.total - done) / rate)} left"
        width = 24
        filled = int(width * done / self.total)
        self.stream.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{self.total}  "
                          f"{self.describe(record, state)}{speed}  ({_clock(now - self.start)})\033[K")
        self.stream.flush()

    def close(self) -> None:
        self.stream.write("\n")
        self.stream.flush()


def _rate(per_second: float) -> str:
    return f"{per_second:.1f} gen/s" if per_second >= 1 else f"{1 / per_second:.2f} s/gen"


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}" if seconds >= 3600 else \
        f"{seconds // 60}:{seconds % 60:02d}"
