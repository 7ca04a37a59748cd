"""Simulators that are not JAX code, run in a pool of worker processes with timeouts and retries.

L2L ran every individual as a process exchanging files; an exception there hung the run and
left workers behind (REFERENCE §1). Here each individual is one call of
``simulate(individual, seed) -> fitness`` in a persistent worker process. A call that raises,
kills its worker or runs past ``timeout`` is retried up to ``retries`` times and then scores NaN,
which optimizers never select (``Evaluation``); the run goes on and a warning names the failure.
A worker that hangs or dies is replaced. Workers are daemon processes of the run: they end with
it, never outliving it.

``simulate`` must be importable by the workers (a module-level function, not a lambda): they
start with ``spawn``, a fresh interpreter that never inherits the parent's JAX state (each
imports l2ljax once, ≈ 1–2 s, then serves calls for the whole run). Each call
gets a seed derived from the generation's seed and the individual's row, so results do not
depend on which worker ran what. Under MPI (``l2ljax.parallel.MPI``) each rank runs its own pool
on its rows.

Example::

    def simulate(params, seed):          # in an importable module
        return run_my_nest_network(params["rate"], params["weight"], seed)

    problem = worker_pool_optimizee(simulate, {"rate": 0.0, "weight": 0.0}, lower=0.0, upper=10.0,
                                    n_workers=8, timeout=120.0, retries=1)
    l2ljax.run(l2ljax.CrossEntropy(problem, pop_size=32), problem, key, 50, directory="runs/nest")
"""

from __future__ import annotations

import multiprocessing
import os
import pickle
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

PyTree = Any
STARTUP_SECONDS = 300  # a worker's interpreter start and imports (a slow shared file system can take minutes)


def _worker_main(simulate: Callable[[PyTree, int], Any], connection: Connection) -> None:
    """Runs in a worker: answer each (task, individual, seed) with (task, ok, fitness or message)."""
    connection.send("ready")  # started and imported: timeouts count from here, not from the spawn
    while True:
        try:
            message = connection.recv()
        except EOFError:  # the run ended
            return
        if message is None:
            return
        task, individual, seed = message
        try:
            reply = (task, True, np.asarray(simulate(individual, seed), dtype=np.float64))
        except Exception:  # reported to the run, which retries or scores NaN
            reply = (task, False, traceback.format_exc(limit=5))
        connection.send(reply)


@dataclass
class _Worker:
    process: Any
    connection: Connection
    task: int | None = None
    started: float = 0.0


class WorkerPool:
    """Persistent worker processes that evaluate ``simulate`` one individual at a time.

    n_workers: processes (default: the CPUs this process may use).
    timeout:   seconds one call may take before its worker is killed and replaced (None: no limit).
    retries:   further attempts for a call that failed (raised, crashed or timed out).
    """

    def __init__(self, simulate: Callable[[PyTree, int], Any], n_workers: int | None = None,
                 timeout: float | None = None, retries: int = 0):
        try:
            pickle.dumps(simulate)
        except Exception as error:
            raise TypeError(f"simulate must be picklable to reach the worker processes (a function defined at "
                            f"module level, not a lambda or closure): {error}") from error
        if n_workers is None:
            n_workers = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        if not isinstance(n_workers, int) or n_workers < 1:
            raise ValueError(f"n_workers must be a positive int, got {n_workers!r}")
        if timeout is not None and not timeout > 0:
            raise ValueError(f"timeout must be positive seconds or None, got {timeout!r}")
        if not isinstance(retries, int) or retries < 0:
            raise ValueError(f"retries must be an int >= 0, got {retries!r}")
        self.simulate, self.n_workers, self.timeout, self.retries = simulate, n_workers, timeout, retries
        self._context = multiprocessing.get_context("spawn")
        self._workers: list[_Worker] = []

    def _start_workers(self, n: int) -> list[_Worker]:
        """``n`` new workers, started together and returned once each has said it is ready."""
        workers = []
        for _ in range(n):
            ours, theirs = self._context.Pipe()
            process = self._context.Process(target=_worker_main, args=(self.simulate, theirs), daemon=True,
                                            name="l2ljax-worker")
            process.start()
            theirs.close()
            workers.append(_Worker(process, ours))
        for worker in workers:
            try:
                if not worker.connection.poll(STARTUP_SECONDS) or worker.connection.recv() != "ready":
                    raise RuntimeError(f"a worker process did not start within {STARTUP_SECONDS} s")
            except (EOFError, OSError) as error:
                raise RuntimeError(f"a worker process failed to start (exit code {worker.process.exitcode}); "
                                   "is simulate importable from a fresh interpreter?") from error
        return workers

    def _replace(self, worker: _Worker) -> None:
        worker.process.kill()
        worker.process.join()
        worker.connection.close()
        self._workers[self._workers.index(worker)] = self._start_workers(1)[0]

    def map(self, individuals: Sequence[PyTree], seeds: Sequence[int]) -> tuple[list[np.ndarray | None], list[str]]:
        """Fitness per individual (None where every attempt failed) and the failure messages."""
        self._workers += self._start_workers(max(0, min(self.n_workers, len(individuals)) - len(self._workers)))
        pending = list(range(len(individuals)))[::-1]  # popped from the end: row 0 first
        attempts = [0] * len(individuals)
        results: list[np.ndarray | None] = [None] * len(individuals)
        failures: list[str] = []
        running = 0

        def failed(task: int, why: str) -> None:
            attempts[task] += 1
            if attempts[task] <= self.retries:
                pending.append(task)
            else:
                failures.append(f"individual {task}: {why}")

        while pending or running:
            for worker in self._workers:
                if worker.task is None and pending:
                    task = pending.pop()
                    worker.connection.send((task, individuals[task], int(seeds[task])))
                    worker.task, worker.started = task, time.monotonic()
                    running += 1
            busy = [w for w in self._workers if w.task is not None]
            ready = wait([w.connection for w in busy] + [w.process.sentinel for w in busy],
                         timeout=self._time_left(busy))
            for worker in busy:
                task = worker.task
                if worker.connection in ready or worker.process.sentinel in ready:
                    try:
                        _, ok, value = worker.connection.recv()
                    except (EOFError, OSError):  # the worker died mid-call (segfault, os._exit, OOM kill)
                        self._replace(worker)
                        running -= 1
                        failed(task, f"its worker process died (exit code {worker.process.exitcode})")
                        continue
                    worker.task, running = None, running - 1
                    if ok:
                        results[task] = value
                    else:
                        failed(task, f"simulate raised:\n{value}")
                elif self.timeout is not None and time.monotonic() - worker.started > self.timeout:
                    self._replace(worker)
                    running -= 1
                    failed(task, f"timed out after {self.timeout:g} s")
        return results, failures

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
            except (BrokenPipeError, OSError):
                pass
        for worker in self._workers:
            worker.process.join(timeout=5)
            if worker.process.is_alive():
                worker.process.kill()
                worker.process.join()
            worker.connection.close()
        self._workers = []

    def __enter__(self) -> WorkerPool:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _individual_seeds(seed: int, n: int) -> list[int]:
    """One seed per row from the generation's seed: the same whichever worker runs the row."""
    return [int(s) for s in np.random.SeedSequence(seed).generate_state(n) >> 1]


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

    def evaluate_population(population: PyTree, seed: int) -> np.ndarray:
        leaves, treedef = jax.tree_util.tree_flatten(population)
        n = leaves[0].shape[0]
        individuals = [jax.tree_util.tree_unflatten(treedef, [leaf[i] for leaf in leaves]) for i in range(n)]
        results, failures = pool.map(individuals, _individual_seeds(seed, n))
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
