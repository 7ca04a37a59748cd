"""One process of a ``parallel.Distributed`` (jax.distributed) job: runs l2ljax split over the
job's processes and writes what it saw to ``OUT/rank<r>.json`` (and the numbers to
``OUT/rank<r>.npz``) for ``test_parallel.py`` to judge against runs in one process.

    L2LJAX_COORDINATOR=127.0.0.1:PORT L2LJAX_NUM_PROCESSES=N L2LJAX_PROCESS_ID=i python distributed_worker.py OUT
    mpirun -n 2 python distributed_worker.py OUT --mpirun   # the coordinator's address comes through mpi4py

Always: one jitted evaluation of a population, and ranks called with other keys. ``--ce`` adds
the CE run (through a directory), ``--enkf`` the EnKF run, ``--host`` the host simulator's (rows
per process, a crash on the last process, a stop asked by rank 0), ``--sharded`` the runs whose
population-sized state is split over the processes (30 rows: EnKF ensemble, GA offspring).

Without ``--mpirun``, mpi4py and mpi4jax are made unimportable first: the engine must not need MPI.
Small problems and few compiled programs (each process compiles every program it runs): the
problems are those of :func:`runs`, which the test also runs in one process.
"""

import json
import sys
import time
from pathlib import Path

if __name__ == "__main__" and "--mpirun" not in sys.argv:
    sys.modules["mpi4py"] = sys.modules["mpi4jax"] = None  # import fails: no MPI at all

import jax
import jax.numpy as jnp
import numpy as np
from helpers import linear_inverse_problem

import l2ljax
from l2ljax import parallel


def failure(run) -> str | None:
    """The error ``run()`` raised on this rank, as ``"Type: message"`` (None: it returned)."""
    try:
        run()
    except Exception as error:  # noqa: BLE001 (the test reads which error each rank got)
        return f"{type(error).__name__}: {error}"
    return None


class Problems:
    """The runs compared with one process: ragged populations (35 CE rows: 18 + 17 or
    12 + 12 + 11; 31 EnKF members; 7 host rows: 4 + 3 or 3 + 3 + 1) and evaluation noise, so
    keys drawn after the split, a wrong gather or a wrong padding would show."""

    def __init__(self) -> None:
        self.noisy = l2ljax.function_optimizee("rastrigin", dim=4, noise_std=0.1)
        self.ce = l2ljax.CrossEntropy(self.noisy, pop_size=35)
        self.kalman = linear_inverse_problem()
        self.enkf = l2ljax.EnsembleKalmanFilter(self.kalman, pop_size=31)
        self.rows_seen: list[int] = []
        self.crash_on_this_rank = False
        self.host = l2ljax.Optimizee.create(self.host_sphere, jnp.zeros(3), lower=-5.0, upper=5.0, jittable=False)
        self.host_ce = l2ljax.CrossEntropy(self.host, pop_size=7)

    def host_sphere(self, population, seed):
        self.rows_seen.append(len(population))
        if self.crash_on_this_rank:
            raise ValueError("simulator crashed")
        return np.sum(np.square(population), axis=1)

    def evaluated(self, parallel=None) -> np.ndarray:
        """One jitted evaluation of 35 rows (no run: the least there is to compile)."""
        population = jax.random.uniform(jax.random.key(7), (35, 4), minval=-5.0, maxval=5.0)
        evaluate = jax.jit(lambda rows: self.noisy.evaluate_flat(jax.random.key(8), rows, 0, parallel).fitness)
        return np.asarray(evaluate(population))

    def ce_run(self, parallel=None, **options) -> l2ljax.RunResult:
        return l2ljax.run(self.ce, self.noisy, jax.random.key(0), 10, parallel=parallel, chunk_size=10, **options)

    def enkf_run(self, parallel=None) -> l2ljax.RunResult:
        return l2ljax.run(self.enkf, self.kalman, jax.random.key(1), 6, parallel=parallel)

    def host_run(self, parallel=None, n_generations=3, **options) -> l2ljax.RunResult:
        return l2ljax.run(self.host_ce, self.host, jax.random.key(2), n_generations, parallel=parallel, **options)

    def sharded_runs(self, parallel=None, n_generations=6, directory=None, **options) -> dict[str, l2ljax.RunResult]:
        """30 rows, which 2 and 3 processes divide: the state itself is split (stochastic EKI with
        additive inflation and an averaged mean; the GA's offspring and hall of fame)."""
        enkf = l2ljax.EnsembleKalmanFilter(self.kalman, pop_size=30, stochastic=True, form="observation")
        params = enkf.default_params.replace(additive_inflation=0.1, average_decay=0.5)
        ga = l2ljax.GeneticAlgorithm(self.noisy, pop_size=30, hall_of_fame_size=5)
        where = {} if directory is None else {"enkf30": {"directory": directory / "enkf"},
                                              "ga30": {"directory": directory / "ga"}}
        return {"enkf30": l2ljax.run(enkf, self.kalman, jax.random.key(3), n_generations, params=params,
                                     parallel=parallel, chunk_size=2, **where.get("enkf30", {}), **options),
                "ga30": l2ljax.run(ga, self.noisy, jax.random.key(4), n_generations, parallel=parallel, chunk_size=2,
                                   **where.get("ga30", {}), **options)}


def numbers(evaluated: np.ndarray, ce: l2ljax.RunResult | None, enkf: l2ljax.RunResult | None,
            host: l2ljax.RunResult | None, sharded: dict | None = None) -> dict:
    """What is compared with one process."""
    out = {"evaluated": evaluated}
    if sharded is not None:
        out.update(enkf30_ensemble=np.asarray(sharded["enkf30"].state.inner.ensemble),
                   enkf30_average=np.asarray(sharded["enkf30"].state.inner.average),
                   enkf30_misfit=sharded["enkf30"].trajectory["diag/misfit"],
                   ga30_offspring=np.asarray(sharded["ga30"].state.inner.offspring),
                   ga30_hof=np.asarray(sharded["ga30"].state.inner.hof_weighted),
                   ga30_score=sharded["ga30"].trajectory["score"])
    if ce is not None:
        out.update(ce_score=ce.trajectory["score"], ce_best=np.float32(ce.best_score))
    if enkf is not None:
        out["enkf_ensemble"] = np.asarray(enkf.state.inner.ensemble)
    if host is not None:
        out["host_score"] = host.trajectory["score"]
    return out


def resume_stage(scheme: parallel.Distributed, problems: "Problems", out: Path, stage: str, run_dir: Path) -> None:
    """``--resume-start DIR``: 4 generations of the sharded runs into DIR; ``--resume-finish DIR``
    (on another number of processes): continue them to 8."""
    generations = 4 if stage == "--resume-start" else 8
    runs = problems.sharded_runs(scheme, n_generations=generations, directory=run_dir,
                                 resume=stage == "--resume-finish")
    np.savez(out / f"{stage[2:]}{scheme.rank}.npz",
             **{k: v for k, v in numbers(np.zeros(1), None, None, None, runs).items() if k != "evaluated"})
    (out / f"{stage[2:]}{scheme.rank}.json").write_text(json.dumps(
        {"generations": [runs["enkf30"].generations, runs["ga30"].generations]}))


def main(out: Path, checks: list[str]) -> None:
    started = time.perf_counter()
    scheme = parallel.Distributed()
    rank, problems = scheme.rank, Problems()
    if checks and checks[0] in ("--resume-start", "--resume-finish"):
        resume_stage(scheme, problems, out, checks[0], Path(checks[1]))
        return
    cpu = {"start": time.process_time()}
    report: dict = {"rank": rank, "processes": scheme.n_ranks, "shards": scheme.n_shards, "writer": scheme.is_writer,
                    "reused": parallel.Distributed() == scheme, "repr": repr(scheme), "auto": parallel.auto_choice()}

    evaluated = problems.evaluated(scheme)
    # Ranks called with other keys are named before any collective.
    report["other_key"] = failure(lambda: l2ljax.run(problems.ce, problems.noisy, jax.random.key(rank), 10,
                                                     parallel=scheme))
    cpu["evaluated"] = time.process_time()
    ce = enkf = host = None
    if "--ce" in checks:  # each rank names its own directory: only rank 0's may appear
        ce = problems.ce_run(scheme, directory=out / f"run{rank}")
        report["ce_generations"] = ce.generations
        report["wrote"] = sorted(p.name for p in out.glob("run*"))
        # The writer refuses a directory that holds a run: every rank raises, none waits.
        report["refused"] = failure(lambda: problems.ce_run(scheme, directory=out / f"run{rank}"))
        cpu["ce"] = time.process_time()
    if "--enkf" in checks:
        enkf = problems.enkf_run(scheme)
        cpu["enkf"] = time.process_time()
    if "--host" in checks:
        problems.rows_seen.clear()
        host = problems.host_run(scheme)
        report["host_rows_seen"] = problems.rows_seen
        cpu["host"] = time.process_time()
        # The simulator crashes on the last process only: every process raises instead of waiting.
        problems.crash_on_this_rank = rank == scheme.n_ranks - 1
        report["crashed"] = failure(lambda: problems.host_run(scheme))
        problems.crash_on_this_rank = False
        # A stop only rank 0's callback asks for holds on every process.
        report["stopped_after"] = problems.host_run(scheme, 6, callbacks=[
            lambda record, state: rank == 0 and int(record["generation"]) == 1]).generations
    sharded = None
    if "--sharded" in checks:  # each device holds its rows between chunks, as callbacks see them
        held: list[int] = []

        def rows_here(record, state):
            fields = state.inner.ensemble if hasattr(state.inner, "ensemble") else state.inner.offspring
            held.append(sum(shard.data.shape[0] for shard in fields.addressable_shards))

        sharded = problems.sharded_runs(scheme, callbacks=[rows_here])
        report["sharded_rows_held"] = sorted(set(held))
        report["sharded_whole_after"] = [int(sharded["enkf30"].state.inner.ensemble.shape[0]),
                                         int(sharded["ga30"].state.inner.offspring.shape[0])]
        cpu["sharded"] = time.process_time()
    np.savez(out / f"rank{rank}.npz", **numbers(evaluated, ce, enkf, host, sharded))
    cpu["rest"] = time.process_time()
    report["seconds"] = time.perf_counter() - started
    report["cpu_seconds"] = cpu
    (out / f"rank{rank}.json").write_text(json.dumps(report))


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2:])
