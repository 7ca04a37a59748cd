"""Simulators that are not JAX code, run in a pool of worker processes with timeouts and retries.

L2L ran every individual as a process exchanging files; an exception there hung the run and
left workers behind (REFERENCE §1). Here each individual is one call of
``simulate(individual, seed) -> fitness`` in a persistent worker process. A call that raises,
kills its worker or runs past ``timeout`` is retried up to ``retries`` times and then scores NaN,
which optimizers never select (``Evaluation``); the run goes on and a warning names the failure.
A worker that hangs or dies is replaced. Workers are daemon processes of the run: they end with
it, and one whose run was killed outright exits within a second.

``simulate`` must be importable by the workers (a module-level function, not a lambda): they
start with ``spawn``, a fresh interpreter that never inherits the parent's JAX state (each
imports l2ljax once, ≈ 1–2 s, then serves calls for the whole run). Each call
gets a seed derived from the generation's seed and the individual's row, so results do not
depend on which worker, or MPI rank, ran what. Under MPI (``l2ljax.parallel.MPI``) each rank runs
its own pool on its rows; workers do not inherit the launcher's rank variables, so a simulator
that initialises MPI itself starts as a singleton, not as a second copy of its rank.

Example::

    def simulate(params, seed):          # in an importable module
        return run_my_nest_network(params["rate"], params["weight"], seed)

    problem = worker_pool_optimizee(simulate, {"rate": 0.0, "weight": 0.0}, lower=0.0, upper=10.0,
                                    n_workers=8, timeout=120.0, retries=1)
    l2ljax.run(l2ljax.CrossEntropy(problem, pop_size=32), problem, key, 50, directory="runs/nest")
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import pickle
import threading
import time
import traceback
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from typing import Any

import jax
import numpy as np

from l2ljax.core import Optimizee
from l2ljax.parallel import local_rank_count

PyTree = Any
STARTUP_SECONDS = 300  # a worker's interpreter start and imports (a slow shared file system can take minutes)


# Variables by which MPI launchers tell a process that it is a rank: a worker that inherited them
# and then initialised MPI (mpi4py imported by the main script, an MPI build of NEST) would try to
# join the job as that rank and fail.
_LAUNCHER_PREFIXES = ("PMI_", "PMIX_", "OMPI_COMM_WORLD", "HYDRA_", "HYDI_", "MPI_LOCALRANKID", "MPI_LOCALNRANKS")


def _worker_main(simulate: Callable[[PyTree, int], Any], connection: Connection, parent: int) -> None:
    """Runs in a worker: answer each (call, task, individual, seed) with (call, task, ok, fitness or message)."""
    threading.Thread(target=_exit_when_orphaned, args=(parent,), daemon=True).start()
    connection.send("ready")  # started and imported: timeouts count from here, not from the spawn
    while True:
        try:
            message = connection.recv()
        except EOFError:  # the run ended
            return
        if message is None:
            return
        call, task, individual, seed = message
        try:
            reply = (call, task, True, np.asarray(simulate(individual, seed), dtype=np.float64))
        except Exception:  # reported to the run, which retries or scores NaN
            reply = (call, task, False, traceback.format_exc(limit=5))
        connection.send(reply)


def _exit_when_orphaned(parent: int) -> None:
    """End this worker once the run's process is gone, even if it was killed (SIGKILL runs no cleanup)."""
    while os.getppid() == parent:
        time.sleep(1.0)
    os._exit(1)


@dataclass
class _Worker:
    process: Any
    connection: Connection
    task: int | None = None
    started: float = 0.0


class WorkerPool:
    """Persistent worker processes that evaluate ``simulate`` one individual at a time.

    n_workers: processes (default: the CPUs this process may use, shared among the MPI ranks a
               launcher put on this node).
    timeout:   seconds one call may take before its worker is killed and replaced (None: no limit).
    retries:   further attempts for a call that failed (raised, crashed or timed out).

    Workers are daemon processes: ``simulate`` may start programs (``subprocess``) but not
    ``multiprocessing`` children of its own.
    """

    def __init__(self, simulate: Callable[[PyTree, int], Any], n_workers: int | None = None,
                 timeout: float | None = None, retries: int = 0):
        try:
            pickle.dumps(simulate)
        except Exception as error:
            raise TypeError(f"simulate must be picklable to reach the worker processes (a function defined at "
                            f"module level, not a lambda or closure): {error}") from error
        if n_workers is None:
            cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
            n_workers = max(1, cpus // (local_rank_count() or 1))
        if not isinstance(n_workers, int) or n_workers < 1:
            raise ValueError(f"n_workers must be a positive int, got {n_workers!r}")
        if timeout is not None and not timeout > 0:
            raise ValueError(f"timeout must be positive seconds or None, got {timeout!r}")
        if not isinstance(retries, int) or retries < 0:
            raise ValueError(f"retries must be an int >= 0, got {retries!r}")
        self.simulate, self.n_workers, self.timeout, self.retries = simulate, n_workers, timeout, retries
        self._context = multiprocessing.get_context("spawn")
        self._workers: list[_Worker] = []
        self._call = 0  # tags each map's messages, so a reply from an abandoned call is never taken for a new one

    def _start_workers(self, n: int) -> list[_Worker]:
        """``n`` new workers, started together and returned once each has said it is ready."""
        workers = []
        with _without_launcher_variables():
            for _ in range(n):
                ours, theirs = self._context.Pipe()
                process = self._context.Process(target=_worker_main, args=(self.simulate, theirs, os.getpid()),
                                                daemon=True, name="l2ljax-worker")
                process.start()
                theirs.close()
                workers.append(_Worker(process, ours))
        try:
            for worker in workers:
                try:
                    ready = worker.connection.poll(STARTUP_SECONDS) and worker.connection.recv() == "ready"
                except (EOFError, OSError):
                    ready = False
                if not ready:
                    raise RuntimeError(f"a worker process did not start (exit code {worker.process.exitcode}; "
                                       f"waited up to {STARTUP_SECONDS} s): its traceback is above. Can a fresh "
                                       "interpreter import simulate's module?")
        except BaseException:
            for worker in workers:
                _stop(worker)
            raise
        return workers

    def _replace(self, worker: _Worker) -> None:
        _stop(worker)
        self._workers[self._workers.index(worker)] = self._start_workers(1)[0]

    def map(self, individuals: Sequence[PyTree], seeds: Sequence[int]) -> tuple[list[np.ndarray | None], list[str]]:
        """Fitness per individual (None where every attempt failed) and the failure messages."""
        self._workers = [w for w in self._workers if w.process.is_alive() or _stop(w)]
        self._workers += self._start_workers(max(0, min(self.n_workers, len(individuals)) - len(self._workers)))
        self._call += 1
        try:
            return self._map(individuals, seeds)
        except BaseException:  # interrupted (Ctrl-C, a worker that would not start): leave no call in flight
            for worker in [w for w in self._workers if w.task is not None]:
                _stop(worker)
            self._workers = [w for w in self._workers if w.task is None]
            raise

    def _map(self, individuals: Sequence[PyTree], seeds: Sequence[int]) -> tuple[list[np.ndarray | None], list[str]]:
        pending = list(range(len(individuals)))[::-1]  # popped from the end: row 0 first
        attempts = [0] * len(individuals)
        results: list[np.ndarray | None] = [None] * len(individuals)
        failures: list[str] = []

        def failed(task: int, why: str) -> None:
            attempts[task] += 1
            if attempts[task] <= self.retries:
                pending.append(task)
            else:
                failures.append(f"individual {task}: {why}")

        while True:
            for worker in self._workers:
                if worker.task is None and pending:
                    task = pending.pop()
                    try:
                        worker.connection.send((self._call, task, individuals[task], int(seeds[task])))
                    except OSError:  # it died while idle (killed from outside): replace it, no attempt spent
                        pending.append(task)
                        self._replace(worker)
                        continue
                    worker.task, worker.started = task, time.monotonic()
            busy = [w for w in self._workers if w.task is not None]
            if not busy:
                if pending:
                    continue
                return results, failures
            ready = wait([w.connection for w in busy] + [w.process.sentinel for w in busy],
                         timeout=self._time_left(busy))
            for worker in busy:
                task = worker.task
                if worker.connection in ready or worker.process.sentinel in ready:
                    try:
                        call, answered, ok, value = worker.connection.recv()
                    except (EOFError, OSError):  # the worker died mid-call (segfault, os._exit, OOM kill)
                        exit_code = worker.process.exitcode
                        self._replace(worker)
                        failed(task, f"its worker process died (exit code {exit_code})")
                        continue
                    if (call, answered) != (self._call, task):
                        continue  # cannot happen after map's cleanup; never mistake another call's answer
                    worker.task = None
                    if ok:
                        results[task] = value
                    else:
                        failed(task, f"simulate raised:\n{value}")
                elif self.timeout is not None and time.monotonic() - worker.started > self.timeout:
                    self._replace(worker)
                    failed(task, f"timed out after {self.timeout:g} s")

    def _time_left(self, busy: list[_Worker]) -> float | None:
        if self.timeout is None:
            return None
        now = time.monotonic()
        return max(0.0, min(self.timeout - (now - w.started) for w in busy)) + 0.01

    def close(self) -> None:
        """Stop every worker (also done when the run's process exits: they are daemons)."""
        for worker in self._workers:
            try:
                worker.connection.send(None)
            except OSError:
                pass
        for worker in self._workers:
            worker.process.join(timeout=5)
            _stop(worker)
        self._workers = []

    def __enter__(self) -> WorkerPool:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _stop(worker: _Worker) -> bool:
    """Kill a worker and release its pipe; False, for use in filters."""
    if worker.process.is_alive():
        worker.process.kill()
    worker.process.join()
    worker.connection.close()
    return False


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
    name: str = "simulator",
    sample: Callable[[jax.Array], PyTree] | None = None,
) -> Optimizee:
    """An optimizee whose individuals are each scored by ``simulate(individual, seed)`` in a worker.

    ``individual`` is a pytree of numpy arrays shaped like ``template``; ``simulate`` returns one
    fitness per weight. The pool is ``problem.fn.pool``; ``problem.fn.pool.close()`` stops its
    workers before the process ends.
    """
    pool = WorkerPool(simulate, n_workers, timeout, retries)
    n_objectives = len(weights)

    def evaluate_population(population: PyTree, seed: int, first_row: int) -> np.ndarray:  # per-row seeds
        leaves, treedef = jax.tree_util.tree_flatten(population)
        n = leaves[0].shape[0]
        individuals = [jax.tree_util.tree_unflatten(treedef, [leaf[i] for leaf in leaves]) for i in range(n)]
        results, failures = pool.map(individuals, _individual_seeds(seed, first_row, n))
        if failures:
            warnings.warn(f"{name}: {len(failures)} of {n} individuals failed and score NaN; first: {failures[0]}",
                          RuntimeWarning, stacklevel=2)
        fitness = np.full((n, n_objectives), np.nan)
        for i, value in enumerate(results):
            if value is not None:
                if value.size != n_objectives:
                    raise ValueError(f"{name}: simulate returned {value.size} values for {n_objectives} fitness "
                                     f"weights (individual {i})")
                fitness[i] = value.reshape(-1)
        return fitness

    evaluate_population.pool = pool
    return Optimizee.create(evaluate_population, template, lower=lower, upper=upper, sample=sample,
                            weights=weights, name=name, jittable=False,
                            info={"n_workers": pool.n_workers, "timeout": timeout, "retries": retries})
