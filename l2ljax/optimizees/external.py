"""Simulators that are not JAX code, run in a pool of worker processes with timeouts and retries.

L2L ran every individual as a process exchanging files; an exception there hung the run and
left workers behind (REFERENCE §1). Here each individual is one call of
``simulate(individual, seed) -> fitness`` in a persistent worker process. A call that raises,
kills its worker or runs past ``timeout`` is retried up to ``retries`` times and then scores NaN,
which optimizers never select (``Evaluation``); so does a return that is no fitness (None, text,
the wrong number of values), without retries. The run goes on; every failure is logged with the
individual's row and values. A worker that hangs or dies is killed together with every program
it started (it leads its own process group and, on Linux, adopts its orphaned descendants) and
replaced; a started spare takes its calls meanwhile. Workers can be recycled after ``max_calls``
calls or above ``max_memory_mb``. Workers are daemon processes of the run: they end with it, and
one whose run was killed outright ends itself and its programs within a second.

``simulate`` must be importable by the workers (a module-level function, not a lambda): they
start with ``spawn``, a fresh interpreter that never inherits the parent's JAX state (each
imports l2ljax once, ≈ 1–2 s, then serves calls for the whole run); a driver script needs
``if __name__ == "__main__":``, as the workers re-import it. Each call
gets a seed derived from the generation's seed and the individual's row, so results do not
depend on which worker, or MPI rank, ran what. Under MPI (``l2ljax.parallel.MPI``) each rank runs
its own pool on its rows; workers do not inherit the launcher's rank variables, so a simulator
that initialises MPI itself starts as a singleton, not as a second copy of its rank (and a NEST
built without MPI, which exits when it sees a launcher, runs).

Example::

    def simulate(params, seed):          # in an importable module
        return run_my_nest_network(params["rate"], params["weight"], seed)

    problem = worker_pool_optimizee(simulate, {"rate": 0.0, "weight": 0.0}, lower=0.0, upper=10.0,
                                    n_workers=8, timeout=120.0, retries=1)
    l2ljax.run(l2ljax.CrossEntropy(problem, pop_size=32), problem, key, 50, directory="runs/nest")
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import pickle
import signal
import threading
import time
import traceback
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from typing import Any

import jax
import numpy as np

from l2ljax.core import Optimizee
from l2ljax.parallel import local_rank_count

PyTree = Any
Results = tuple[list[np.ndarray | None], dict[int, str]]  # fitness per row (None: failed), why rows failed
STARTUP_SECONDS = 300  # a worker's interpreter start and imports (a slow shared file system can take minutes)
logger = logging.getLogger(__name__)


# Variables by which MPI launchers tell a process that it is a rank: a worker that inherited them
# and then initialised MPI (mpi4py imported by the main script, an MPI build of NEST) would try to
# join the job as that rank and fail.
_LAUNCHER_PREFIXES = ("PMI_", "PMIX_", "OMPI_COMM_WORLD", "HYDRA_", "HYDI_", "MPI_LOCALRANKID", "MPI_LOCALNRANKS")


def _worker_main(simulate: Callable[[PyTree, int], Any], connection: Connection, parent: int) -> None:
    """Runs in a worker: answer each (call, task, individual, seed, measure) with (call, task, ok, value,
    memory in MB of the worker and its descendants if ``measure``, else 0).

    The worker leads a process group of its own and (on Linux) adopts the orphans among its
    descendants, so that the run can kill everything ``simulate`` started.
    """
    os.setpgid(0, 0)
    _become_subreaper()
    threading.Thread(target=_exit_when_orphaned, args=(parent,), daemon=True).start()
    connection.send("ready")  # started and imported: timeouts count from here, not from the spawn
    while True:
        try:
            message = connection.recv()
        except EOFError:  # the run ended
            return
        if message is None:
            return
        call, task, individual, seed, measure = message
        try:
            ok, value = _as_fitness(simulate(individual, seed))
        except Exception:  # reported to the run, which retries or scores NaN
            ok, value = False, "simulate raised:\n" + traceback.format_exc(limit=5)
        connection.send((call, task, ok, value, _tree_memory_mb(os.getpid()) if measure else 0.0))


def _as_fitness(value: Any) -> tuple[bool | None, Any]:
    """(True, float64 array), or (None, why) for a return that is no fitness (None, text, ragged)."""
    if value is None:
        return None, "simulate returned None"
    try:
        array = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as error:
        return None, f"simulate returned {type(value).__name__} {str(value)[:80]!r}, not numbers ({error})"
    return True, array


def _exit_when_orphaned(parent: int) -> None:
    """End this worker and what it started once the run's process is gone, even if it was killed (SIGKILL
    runs no cleanup in the run)."""
    while os.getppid() == parent:
        time.sleep(1.0)
    for pid in _descendants(os.getpid()):
        _signal(pid, signal.SIGKILL)
    os.killpg(0, signal.SIGKILL)  # the rest of the group, this worker last


def _become_subreaper() -> None:
    """Linux: orphaned descendants are re-parented to this worker instead of init, so they stay findable."""
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER


def _children_table() -> dict[int, list[int]]:
    """parent pid -> child pids, from /proc (empty where there is no /proc)."""
    table: dict[int, list[int]] = {}
    with contextlib.suppress(OSError):
        for entry in os.scandir("/proc"):
            if entry.name.isdigit():
                try:
                    with open(f"/proc/{entry.name}/stat") as f:
                        ppid = int(f.read().rsplit(")", 1)[1].split()[1])
                except (OSError, IndexError, ValueError):
                    continue
                table.setdefault(ppid, []).append(int(entry.name))
    return table


def _descendants(pid: int) -> list[int]:
    table, found, todo = _children_table(), [], [pid]
    while todo:
        children = table.get(todo.pop(), [])
        found += children
        todo += children
    return found


def _tree_memory_mb(pid: int) -> float:
    """Resident memory of a process and its descendants (Linux /proc; else the process's peak)."""
    total = 0
    for member in [pid, *_descendants(pid)]:
        with contextlib.suppress(OSError, ValueError, IndexError):
            with open(f"/proc/{member}/statm") as f:
                total += int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    if total == 0:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux (bytes on macOS)
    return total / 2**20


def _signal(pid: int, signum: int) -> None:
    with contextlib.suppress(OSError):
        os.kill(pid, signum)


def _kill_tree(pid: int) -> None:
    """SIGKILL a worker, its process group and all its descendants, frozen first so none can start more.

    Programs that left the worker's process group (``start_new_session``) are found as descendants
    while the worker lives; after it died, only its process group can still be reached.
    """
    with contextlib.suppress(OSError):
        os.killpg(pid, signal.SIGSTOP)
    family = _descendants(pid)
    for member in family:
        _signal(member, signal.SIGSTOP)
    family = list(dict.fromkeys(family + _descendants(pid)))
    with contextlib.suppress(OSError):
        os.killpg(pid, signal.SIGKILL)
    for member in [pid, *family]:
        _signal(member, signal.SIGKILL)


@dataclass
class _Worker:
    process: Any
    connection: Connection
    spawned: float = field(default_factory=time.monotonic)
    ready: bool = False
    task: int | None = None
    started: float = 0.0
    calls: int = 0
    memory_mb: float = 0.0


class WorkerPool:
    """Persistent worker processes that evaluate ``simulate`` one individual at a time.

    n_workers:     calls at once (default: the CPUs this process may use, shared among the MPI
                   ranks a launcher put on this node).
    timeout:       seconds one call may take before its worker is killed and replaced (None: no limit).
    retries:       further attempts for a call that failed (raised, crashed or timed out).
    spares:        started, idle workers kept beyond ``n_workers``: a crashed or recycled worker's
                   calls go to a spare at once while its replacement starts in the background.
    max_calls:     recycle a worker after this many calls (a simulator that leaks).
    max_memory_mb: recycle a worker whose resident memory, with its children's, passed this after a call.

    A worker leads its own process group; on a timeout, a crash, a recycle and ``close`` the pool
    kills the worker with everything it started (``subprocess`` programs included). A return that
    is no fitness (None, text, the wrong number of values) scores NaN like a failure, without
    retries (it would repeat). ``simulate`` may not start ``multiprocessing`` children (workers are
    daemons).
    """

    def __init__(self, simulate: Callable[[PyTree, int], Any], n_workers: int | None = None,
                 timeout: float | None = None, retries: int = 0, *, spares: int = 1,
                 max_calls: int | None = None, max_memory_mb: float | None = None, n_values: int | None = None):
        try:
            pickle.dumps(simulate)
        except Exception as error:
            raise TypeError(f"simulate must be picklable to reach the worker processes (a function defined at "
                            f"module level, not a lambda or closure): {error}") from error
        if n_workers is None:
            cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
            n_workers = max(1, cpus // (local_rank_count() or 1))
        n_workers = _count(n_workers, "n_workers", 1)
        if timeout is not None and not (isinstance(timeout, (int, float)) and timeout > 0):
            raise ValueError(f"timeout must be positive seconds or None, got {timeout!r}")
        if max_memory_mb is not None and not (isinstance(max_memory_mb, (int, float)) and max_memory_mb > 0):
            raise ValueError(f"max_memory_mb must be positive or None, got {max_memory_mb!r}")
        self.simulate, self.n_workers, self.timeout = simulate, n_workers, timeout
        self.retries, self.spares = _count(retries, "retries", 0), _count(spares, "spares", 0)
        self.max_calls = None if max_calls is None else _count(max_calls, "max_calls", 1)
        self.max_memory_mb, self.n_values = max_memory_mb, None if n_values is None else _count(n_values, "n_values", 1)
        self.recycled = 0  # workers retired by max_calls / max_memory_mb
        self._context = multiprocessing.get_context("spawn")
        self._workers: list[_Worker] = []
        self._call = 0  # tags each map's messages, so a reply from an abandoned call is never taken for a new one

    def _spawn(self) -> _Worker:
        """A new worker, starting in the background (``ready`` once it has imported ``simulate``)."""
        ours, theirs = self._context.Pipe()
        with _without_launcher_variables():
            process = self._context.Process(target=_worker_main, args=(self.simulate, theirs, os.getpid()),
                                            daemon=True, name="l2ljax-worker")
            process.start()
        theirs.close()
        worker = _Worker(process, ours)
        self._workers.append(worker)
        return worker

    def _retire(self, worker: _Worker) -> None:
        """Kill a worker with its process tree; a replacement starts (a spare may serve meanwhile)."""
        _stop(worker)
        self._workers.remove(worker)
        self._spawn()

    def _check_starting(self, ready: list[Any]) -> None:
        """Mark workers that reported ready; a worker that died or stalled before that is an error."""
        for worker in [w for w in self._workers if not w.ready]:
            if worker.connection in ready or worker.process.sentinel in ready:
                try:
                    worker.ready = worker.connection.recv() == "ready"
                except (EOFError, OSError):
                    worker.ready = False
                if worker.ready:
                    continue
            elif time.monotonic() - worker.spawned < STARTUP_SECONDS:
                continue
            exit_code = worker.process.exitcode
            self.close()
            raise RuntimeError(f"a worker process did not start (exit code {exit_code}; waited up to "
                               f"{STARTUP_SECONDS} s): its traceback is above. Can a fresh interpreter import "
                               "simulate's module?")

    def map(self, individuals: Sequence[PyTree], seeds: Sequence[int]) -> Results:
        """Fitness per individual (None where every attempt failed) and, by row, why rows failed."""
        for worker in [w for w in self._workers if not w.process.is_alive()]:  # died while idle
            _stop(worker)
            self._workers.remove(worker)
        for _ in range(min(self.n_workers, len(individuals)) + self.spares - len(self._workers)):
            self._spawn()
        self._call += 1
        try:
            return self._map(individuals, seeds)
        except BaseException:  # interrupted (Ctrl-C, a worker that would not start): leave no call in flight
            for worker in [w for w in self._workers if w.task is not None]:
                _stop(worker)
            self._workers = [w for w in self._workers if w.task is None]
            raise

    def _map(self, individuals: Sequence[PyTree], seeds: Sequence[int]) -> Results:
        pending = list(range(len(individuals)))[::-1]  # popped from the end: row 0 first
        attempts = [0] * len(individuals)
        results: list[np.ndarray | None] = [None] * len(individuals)
        failures: dict[int, str] = {}

        def failed(task: int, why: str, retry: bool = True) -> None:
            attempts[task] += 1
            if retry and attempts[task] <= self.retries:
                pending.append(task)
            else:
                failures[task] = why

        while True:
            for worker in self._workers:
                busy = sum(w.task is not None for w in self._workers)
                if pending and busy < self.n_workers and worker.ready and worker.task is None:
                    task = pending.pop()
                    try:
                        worker.connection.send((self._call, task, individuals[task], int(seeds[task]),
                                                self.max_memory_mb is not None))
                    except OSError:  # it died while idle (killed from outside): replace it, no attempt spent
                        pending.append(task)
                        self._retire(worker)
                        break
                    worker.task, worker.started = task, time.monotonic()
            busy = [w for w in self._workers if w.task is not None]
            if not busy and not pending:
                return results, failures
            starting = [w for w in self._workers if not w.ready]
            watched = busy + starting
            ready = wait([w.connection for w in watched] + [w.process.sentinel for w in watched],
                         timeout=self._time_left(busy, starting))
            self._check_starting(ready)
            for worker in busy:
                task = worker.task
                if worker.connection in ready or worker.process.sentinel in ready:
                    try:
                        call, answered, ok, value, memory_mb = worker.connection.recv()
                    except (EOFError, OSError):  # the worker died mid-call (segfault, os._exit, OOM kill)
                        worker.process.join(5.0)  # its pipe can close before its exit is seen
                        exit_code = worker.process.exitcode
                        self._retire(worker)
                        failed(task, f"its worker process died (exit code {exit_code})")
                        continue
                    if (call, answered) != (self._call, task):
                        continue  # cannot happen after map's cleanup; never mistake another call's answer
                    worker.task, worker.calls, worker.memory_mb = None, worker.calls + 1, memory_mb
                    if ok and self.n_values is not None and value.size != self.n_values:
                        ok, value = None, (f"simulate returned {value.size} values for {self.n_values} fitness "
                                           f"weights: {np.array2string(value.ravel()[:8], precision=4)}")
                    if ok:
                        results[task] = value
                    else:
                        failed(task, value, retry=ok is not None)  # a malformed return would repeat
                    if (self.max_calls is not None and worker.calls >= self.max_calls) or (
                            self.max_memory_mb is not None and memory_mb > self.max_memory_mb):
                        self.recycled += 1
                        self._retire(worker)
                elif self.timeout is not None and time.monotonic() - worker.started > self.timeout:
                    self._retire(worker)
                    failed(task, f"timed out after {self.timeout:g} s")

    def _time_left(self, busy: list[_Worker], starting: list[_Worker]) -> float | None:
        now = time.monotonic()
        limits = [STARTUP_SECONDS - (now - w.spawned) for w in starting]
        if self.timeout is not None:
            limits += [self.timeout - (now - w.started) for w in busy]
        return max(0.0, min(limits)) + 0.01 if limits else None

    def pids(self) -> list[int]:
        """Process ids of the workers (started or starting)."""
        return [w.process.pid for w in self._workers]

    def close(self) -> None:
        """Kill every worker with what it started (also done when the run's process exits: they are daemons
        that watch their parent)."""
        for worker in self._workers:
            _stop(worker)
        self._workers = []

    def __enter__(self) -> WorkerPool:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _count(value: Any, name: str, least: int) -> int:
    """An int (numpy ints too) of at least ``least``, or a named error."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < least:
        raise ValueError(f"{name} must be an int >= {least}, got {value!r}")
    return int(value)


def _stop(worker: _Worker) -> None:
    """Kill a worker with its process tree and release its pipe."""
    if worker.process.exitcode is None:
        _kill_tree(worker.process.pid)
    else:  # already dead: what it started may still run in its process group
        with contextlib.suppress(OSError):
            os.killpg(worker.process.pid, signal.SIGKILL)
    worker.process.join()
    worker.connection.close()


@contextlib.contextmanager
def _without_launcher_variables():
    """Hide the MPI launcher's rank variables from workers started inside (they inherit os.environ)."""
    hidden = {k: v for k, v in os.environ.items() if k.startswith(_LAUNCHER_PREFIXES)}
    for name in hidden:
        del os.environ[name]
    try:
        yield
    finally:
        os.environ.update(hidden)


def _individual_seeds(seed: int, first_row: int, n: int) -> list[int]:
    """One seed per row from the generation's seed and the row's index in the whole population:
    the same whichever worker, or MPI rank, runs the row."""
    return [int(np.random.SeedSequence([seed, first_row + i]).generate_state(1)[0] >> 1) for i in range(n)]


def describe(individual: PyTree) -> str:
    """An individual's values by name, short enough for a log line."""
    parts = []
    for path, leaf in jax.tree_util.tree_flatten_with_path(individual)[0]:
        values = np.asarray(leaf).ravel()
        text = np.array2string(values[:6], precision=5, separator=", ") if values.size != 1 else f"{values[0]:.6g}"
        name = ".".join(str(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k)))) for k in path) or "x"
        parts.append(f"{name}={text}{' ...' if values.size > 6 else ''}")
    return "{" + ", ".join(parts) + "}"


def worker_pool_optimizee(
    simulate: Callable[[PyTree, int], Any],
    template: PyTree,
    *,
    lower: PyTree | float | None = None,
    upper: PyTree | float | None = None,
    weights: Sequence[float] = (-1.0,),
    n_workers: int | None = None,
    timeout: float | None = None,
    retries: int = 0,
    spares: int = 1,
    max_calls: int | None = None,
    max_memory_mb: float | None = None,
    name: str = "simulator",
    sample: Callable[[jax.Array], PyTree] | None = None,
) -> Optimizee:
    """An optimizee whose individuals are each scored by ``simulate(individual, seed)`` in a worker.

    ``individual`` is a pytree of numpy arrays shaped like ``template``; ``simulate`` returns one
    fitness per weight. Pool options as in :class:`WorkerPool`. Every failed individual scores NaN
    and is logged (logger ``l2ljax.optimizees.external``) with its row and values; one
    ``RuntimeWarning`` per generation counts them. The pool is ``problem.fn.pool``;
    ``problem.fn.pool.close()`` stops its workers before the process ends.
    """
    pool = WorkerPool(simulate, n_workers, timeout, retries, spares=spares, max_calls=max_calls,
                      max_memory_mb=max_memory_mb, n_values=len(weights))

    def evaluate_population(population: PyTree, seed: int, first_row: int) -> np.ndarray:  # per-row seeds
        leaves, treedef = jax.tree_util.tree_flatten(population)
        n = leaves[0].shape[0]
        individuals = [jax.tree_util.tree_unflatten(treedef, [leaf[i] for leaf in leaves]) for i in range(n)]
        results, failures = pool.map(individuals, _individual_seeds(seed, first_row, n))
        messages = [f"individual {first_row + i} {describe(individuals[i])}: {why}"
                    for i, why in sorted(failures.items())]
        for message in messages:
            logger.warning("%s: %s", name, message)
        if messages:
            warnings.warn(f"{name}: {len(messages)} of {n} individuals failed and score NaN; first: {messages[0]}",
                          RuntimeWarning, stacklevel=2)
        fitness = np.full((n, len(weights)), np.nan)
        for i, value in enumerate(results):
            if value is not None:
                fitness[i] = value.reshape(-1)
        return fitness

    evaluate_population.pool = pool
    return Optimizee.create(evaluate_population, template, lower=lower, upper=upper, sample=sample,
                            weights=weights, name=name, jittable=False,
                            info={"n_workers": pool.n_workers, "timeout": timeout, "retries": retries})
