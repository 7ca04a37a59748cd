"""Running the two loops: one generation is a pure ``step``; ``run`` repeats it.

``run`` advances the optimization in chunks: each chunk is one jitted ``lax.scan`` of
``step``; between chunks the host writes the trajectory, the checkpoint and calls callbacks.
``chunk_size=n_generations`` is the fully-jitted path; ``chunk_size=1`` is the host loop.
Both call the same ``step`` with the same keys (generation g uses ``fold_in(run_key, g)``),
so they produce the same numbers, and a resumed run continues exactly where it stopped.
``run_many`` runs a batch of independent runs (one per key, same keys as ``run``) as one
jitted ``vmap`` and returns their final states: for comparisons over seeds.

Example::

    problem = l2ljax.functions.optimizee("rosenbrock", dim=2)
    opt = l2ljax.CrossEntropy(problem, pop_size=64)
    result = l2ljax.run(opt, problem, jax.random.key(0), n_generations=100)
    result.best, result.best_fitness
"""

from __future__ import annotations

import functools
import math
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from l2ljax import trajectory as traj
from l2ljax.core import Evaluation, Optimizee, Optimizer, OptState, as_key, check_positive_int
from l2ljax.parallel import Parallel

Record = dict[str, Any]
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


def generation_keys(run_key: jax.Array, generation: jax.Array) -> tuple[jax.Array, jax.Array]:
    """The (ask, evaluate) keys of one generation: a pure function of the run key and its index."""
    k_ask, k_eval = jax.random.split(jax.random.fold_in(run_key, generation))
    return k_ask, k_eval


def record_level(keep_population: bool, summary: bool) -> str:
    """'summary' (per-generation statistics only), 'individuals' (+ every fitness, best_x), 'population'."""
    return "summary" if summary else ("population" if keep_population else "individuals")


def _record(optimizer: Optimizer, state: OptState, population: jax.Array, evaluation: Evaluation,
            generation: jax.Array, level: str) -> Record:
    record = {"generation": generation, "best_score": state.best_score}
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
              parallel: Parallel | None = None) -> Callable[[OptState, jax.Array], tuple[OptState, Record]]:
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
        evaluation = optimizee.evaluate_flat(k_eval, population, state.generation, parallel)
        new_state = optimizer.tell_flat(state, population, evaluation)
        return new_state, _record(optimizer, new_state, population, evaluation, state.generation, level)

    return step


@functools.lru_cache(maxsize=32)
def _scan_chunk(optimizer: Optimizer, optimizee: Optimizee, level: str, stops: bool,
                parallel: Parallel | None = None) -> Callable:
    """Jitted ``lax.scan`` over ``length`` generations of which the first ``n_steps`` run; with
    ``stops``, generations after ``best_score >= threshold`` are skipped too.

    Cached per configuration so repeated runs (sweeps, tests, resumes) compile once; the
    threshold and ``n_steps`` are arguments, so other stop criteria and a shorter last chunk
    reuse the program.
    """
    step = make_step(optimizer, optimizee, keep_population=level == "population", summary=level == "summary",
                     parallel=parallel)

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
                reached = new_state.best_score >= threshold
                stopped = stopped | (reached if parallel is None else parallel.any_traced(reached))
            return (new_state, stopped), (record, active)

        (state, _), (records, active) = jax.lax.scan(body, (state, jnp.array(False)), jnp.arange(length))
        return state, records, active

    return jax.jit(chunk, static_argnums=4)


@functools.lru_cache(maxsize=32)
def _host_step(optimizer: Optimizer, optimizee: Optimizee, level: str, parallel: Parallel | None = None
               ) -> Callable:
    """One generation for optimizees that are not JAX code: ask/tell jitted, evaluation on the host."""
    ask = jax.jit(optimizer.ask_flat)
    tell = jax.jit(optimizer.tell_flat)
    record = jax.jit(lambda s, p, e, g: _record(optimizer, s, p, e, g, level))

    def chunk(state: OptState, run_key: jax.Array, threshold: jax.Array, n_steps: int, length: int):
        assert n_steps == length == 1  # the stop criterion is checked on the host after every generation
        k_ask, k_eval = generation_keys(run_key, state.generation)
        population = ask(k_ask, state)
        evaluation = optimizee.evaluate_host(k_eval, population, int(state.generation), parallel)
        new_state = tell(state, population, evaluation)
        rec = record(new_state, population, evaluation, state.generation)
        return new_state, jax.tree_util.tree_map(lambda x: x[None], rec), jnp.ones(1, bool)

    return chunk


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
    parallel: Parallel | None = None,
) -> RunResult:
    """Optimise ``optimizee`` with ``optimizer`` for up to ``n_generations`` generations.

    key:            the run's key; ``init`` and every generation derive their keys from it.
    params, x0:     passed to ``optimizer.init`` (ignored when ``state`` is given).
    directory:      write ``meta.json``, the trajectory and a checkpoint after every chunk.
    resume:         continue from the checkpoint in ``directory`` (same numbers as an
                    uninterrupted run); without it, a non-empty ``directory`` is an error.
    chunk_size:     generations per jitted scan between host interactions. Default: the
                    whole run, or 1 when callbacks are given, or ~1% of the run when writing
                    to a directory or showing progress. An interruption loses at most the
                    chunk in flight.
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
                    or MPI ranks (``l2ljax.parallel.MPI()``; every rank calls ``run`` alike, rank 0
                    writes ``directory`` and shows progress, all return the same result), or
                    ``l2ljax.parallel.auto()``. Same numbers as without, to float tolerance (for host
                    simulators that use their seed, see ``l2ljax.parallel``).
    """
    n_generations = check_positive_int(n_generations, "n_generations")
    if stop_criterion is not None:
        if math.isnan(float(stop_criterion)):
            raise ValueError("stop_criterion is NaN")
        stop_criterion = float(np.float32(stop_criterion))  # scores are float32: compare as float32 everywhere
    if resume and directory is None:
        raise ValueError("resume=True needs the directory of the run to resume")
    if callable(callbacks):
        callbacks = [callbacks]
    k_init, run_key = jax.random.split(as_key(key))
    if state is None:
        state = optimizer.init(k_init, params, x0)
    explicit_params = state.params if params is not None else None  # as init normalised them
    if chunk_size is None:
        if callbacks or not optimizee.jittable:
            chunk_size = 1
        elif directory is not None or progress:
            chunk_size = max(1, n_generations // 100)
        else:
            chunk_size = n_generations
    chunk_size = check_positive_int(chunk_size, "chunk_size")
    level = record_level(keep_population, summary)
    writer = parallel is None or parallel.is_writer
    callbacks = [*callbacks, ProgressBar(n_generations)] if progress and writer else list(callbacks)

    history: list[Record] = []
    generation = int(state.generation)
    if directory is not None:
        directory = Path(directory)
        meta = {**_run_meta(optimizer, optimizee, n_generations, level, state.params),
                "parallel": str(parallel or "one device")}
        state, run_key, generation, history = _open_run_directory(directory, meta, state, run_key, resume,
                                                                  explicit_params, parallel)
        if generation > n_generations:
            raise ValueError(f"{directory} already holds {generation} generations, more than the "
                             f"n_generations={n_generations} asked for")

    if optimizee.jittable:
        chunk = _scan_chunk(optimizer, optimizee, level, stop_criterion is not None, parallel)
    else:
        chunk, chunk_size = _host_step(optimizer, optimizee, level, parallel), 1
    if parallel is not None:
        state = parallel.place(state)

    threshold = jnp.float32(np.inf if stop_criterion is None else stop_criterion)

    def criterion_met() -> bool:
        return stop_criterion is not None and np.float32(state.best_score) >= np.float32(stop_criterion)

    stopped = criterion_met() and generation > 0
    scan_length = min(chunk_size, n_generations - generation)  # one program, a shorter last chunk included
    while generation < n_generations and not stopped:
        length = min(scan_length, n_generations - generation)
        state, records, active = chunk(state, run_key, threshold, length, scan_length)
        n_active = int(np.sum(active))
        records = {name: np.asarray(value)[:n_active] for name, value in records.items()}
        stopped = n_active < length or criterion_met()
        try:
            if directory is not None and writer:
                traj.write_chunk(directory, generation, records)
                traj.save_checkpoint(directory, state, run_key, generation + n_active)
            history.append(records)
            generation += n_active
            for i in range(n_active):
                one = {name: value[i] for name, value in records.items()}
                if any([bool(cb(one, state)) for cb in callbacks]):
                    stopped = True
        except Exception as failure:
            if parallel is None:
                raise
            error = failure
        else:
            error = None
        if parallel is not None:  # a failed write or callback raises, and a callback's stop holds, on every rank
            stopped = parallel.settle(stopped, error)
    for cb in callbacks:
        if hasattr(cb, "close"):
            cb.close()

    trajectory = {name: np.concatenate([h[name] for h in history]) for name in history[0]} if history else {}
    best_fitness = np.full(optimizee.n_objectives, np.nan)
    if "score" in trajectory and np.isfinite(trajectory["score"]).any():
        g, j = np.unravel_index(np.argmax(trajectory["score"]), trajectory["score"].shape)
        if np.float32(trajectory["score"][g, j]) == np.float32(state.best_score):  # else the best predates it
            best_fitness = trajectory["fitness"][g, j]
    return RunResult(state, trajectory, optimizer.best(state), float(state.best_score), best_fitness,
                     generation, bool(stopped and generation < n_generations))


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


@functools.lru_cache(maxsize=32)
def _many_program(optimizer: Optimizer, optimizee: Optimizee, n_generations: int) -> Callable:
    """Jitted vmap over keys of ``init`` and a ``lax.scan`` of ``step``; cached like ``_scan_chunk``."""
    step = make_step(optimizer, optimizee, keep_population=False)

    def one(key: jax.Array, params: Any, x0: Any) -> OptState:
        k_init, run_key = jax.random.split(key)
        state = optimizer.init(k_init, params, x0)
        state, _ = jax.lax.scan(lambda s, _: (step(s, run_key)[0], None), state, None, length=n_generations)
        return state

    return jax.jit(jax.vmap(one, in_axes=(0, None, None)))


def _run_meta(optimizer: Optimizer, optimizee: Optimizee, n_generations: int, level: str, params: Any) -> dict:
    from l2ljax import __version__

    return {
        "l2ljax_version": __version__,
        "jax_version": jax.__version__,
        "optimizer": optimizer.config(),
        "optimizee": {"name": optimizee.name, "dim": optimizee.space.dim, "weights": optimizee.weights,
                      "noise_std": optimizee.noise_std, **_bounds_summary(optimizee), **optimizee.info},
        "n_generations": n_generations,
        "record": level,
        "params": {jax.tree_util.keystr(path): np.asarray(leaf) for path, leaf in
                   jax.tree_util.tree_flatten_with_path(params)[0]},
    }


def _bounds_summary(optimizee: Optimizee, max_listed: int = 64) -> dict:
    """Bounds per coordinate for small spaces; their range for large ones (network weights)."""
    lower, upper = optimizee.space.lower, optimizee.space.upper
    if lower.size <= max_listed:
        return {"lower": lower, "upper": upper}
    return {"lower_min": float(lower.min()), "upper_max": float(upper.max())}


def _open_run_directory(directory: Path, meta: dict, state: OptState, run_key: jax.Array, resume: bool,
                        explicit_params: Any, parallel: Parallel | None):
    """``_open_directory`` on the writer; the other ranks learn its outcome and read its checkpoint.

    Only the writer touches the directory: a second rank checking it while the first writes
    ``meta.json`` would see a run that is not there. If the writer fails, every rank raises.
    """
    if parallel is None:
        return _open_directory(directory, meta, state, run_key, resume, explicit_params)
    opened, error = None, None
    if parallel.is_writer:
        try:
            opened = _open_directory(directory, meta, state, run_key, resume, explicit_params)
        except Exception as failure:  # re-raised below, on every rank
            error = failure
    parallel.raise_together(error)
    resumed_at = parallel.agree(None if opened is None else opened[2])
    if opened is None:
        opened = (state, run_key, resumed_at, [])
        try:
            if resumed_at != int(state.generation):
                opened = _read_resumed(directory, state, resumed_at)
        except Exception as failure:
            error = failure
    parallel.raise_together(error)
    return opened


def _read_resumed(directory: Path, state: OptState, resumed_at: int):
    """What a rank other than the writer needs to continue the run the writer resumed."""
    state, run_key, generation = traj.load_checkpoint(directory, state)
    if generation != resumed_at:
        raise RuntimeError(f"{directory}: rank 0 resumed at generation {resumed_at}, this rank read "
                           f"{generation}; is the directory on a file system every rank shares?")
    history = [traj.load_trajectory(directory)] if traj.chunk_files(directory) else []
    return state, run_key, generation, history


def _open_directory(directory: Path, meta: dict, state: OptState, run_key: jax.Array, resume: bool,
                    explicit_params: Any):
    """Start a fresh run directory or resume the one there; refuse to overwrite results."""
    if traj.has_checkpoint(directory):
        if not resume:
            raise FileExistsError(f"{directory} already holds a run: pass resume=True to continue it, "
                                  "or choose another directory")
        stored = traj.read_meta(directory)
        for field in ("optimizer", "optimizee", "record"):
            if _normalise(stored.get(field)) != _normalise(meta[field]):
                raise ValueError(f"cannot resume {directory}: its {field} differs from this run's "
                                 f"({stored.get(field)} vs {meta[field]})")
        state, run_key, generation = traj.load_checkpoint(directory, state)
        if explicit_params is not None and not _same_leaves(explicit_params, state.params):
            raise ValueError(f"cannot resume {directory} with other hyperparameters than it was run with "
                             f"({stored.get('params')}); omit params to continue with those")
        traj.drop_chunks_from(directory, generation)
        history = [traj.load_trajectory(directory)] if traj.chunk_files(directory) else []
        traj.write_meta(directory, {**meta, "params": stored.get("params", meta["params"])})
        return state, run_key, generation, history
    if directory.exists() and any(directory.iterdir()):
        ours = {traj.META, traj.CHUNK_DIR}
        if not (resume and all(p.name in ours or p.name.endswith(".tmp") for p in directory.iterdir())):
            raise FileExistsError(f"{directory} is not empty and holds no checkpoint: choose an empty directory")
        traj.drop_chunks_from(directory, 0)  # interrupted before its first checkpoint: start afresh
    traj.write_meta(directory, meta)
    return state, run_key, int(state.generation), []


def _same_leaves(a: Any, b: Any) -> bool:
    leaves_a, leaves_b = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
    if len(leaves_a) != len(leaves_b):
        return False
    return all(np.array_equal(np.asarray(x, np.float64), np.asarray(y, np.float64))
               for x, y in zip(leaves_a, leaves_b, strict=True))


def _normalise(x: Any) -> Any:
    return traj.plain_json(x)


class ProgressBar:
    """A one-line progress display on stderr: generation, best score, speed."""

    def __init__(self, total: int, stream: Any = None, every_seconds: float = 0.5):
        self.total, self.stream, self.every = total, stream or sys.stderr, every_seconds
        self.start = self.last = time.perf_counter()
        self.first: int | None = None  # first generation seen: a resumed run's rate counts only its own

    def __call__(self, record: Record, state: OptState) -> None:
        now = time.perf_counter()
        done = int(record["generation"]) + 1
        if self.first is None:
            self.first = done - 1
        if now - self.last < self.every and done < self.total:
            return
        self.last = now
        rate = (done - self.first) / max(now - self.start, 1e-9)
        width = 30
        filled = int(width * done / self.total)
        self.stream.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{self.total} "
                          f"best score {float(record['best_score']):.6g}  {rate:.1f} gen/s")
        self.stream.flush()

    def close(self) -> None:
        self.stream.write("\n")
        self.stream.flush()
