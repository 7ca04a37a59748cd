"""Runs l2ljax split over devices or MPI ranks, and the same runs on one device, and writes what
each rank saw to ``OUT/rank<r>.json`` for ``test_parallel.py`` to judge.

    python parallel_worker.py devices OUT        # with XLA_FLAGS=--xla_force_host_platform_device_count=2
    mpirun -n 2 python parallel_worker.py mpi OUT
"""

import json
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import simulators
from helpers import linear_inverse_problem, max_difference

import l2ljax
from l2ljax import parallel

try:  # as many MPI scripts do: the worker pool's spawned workers re-import this module
    from mpi4py import MPI  # noqa: F401
except ImportError:
    pass


def main(mode: str, out: Path) -> None:
    scheme = parallel.MPI() if mode == "mpi" else parallel.Devices()
    rank = getattr(scheme, "rank", 0)
    report: dict = {"rank": rank, "shards": scheme.n_shards, "writer": scheme.is_writer}

    # A ragged population (33 rows on 2 shards), with evaluation noise: keys must not depend on the split.
    # Few generations: CE's elite selection amplifies float32 rounding differences over a long run.
    noisy = l2ljax.function_optimizee("rastrigin", dim=5, noise_std=0.1)
    ce = l2ljax.CrossEntropy(noisy, pop_size=33)
    one = l2ljax.run(ce, noisy, jax.random.key(0), 15)
    split = l2ljax.run(ce, noisy, jax.random.key(0), 15, parallel=scheme)
    report["ce_score"] = max_difference(one.trajectory["score"], split.trajectory["score"])
    report["ce_best"] = [one.best_score, split.best_score]

    # Kalman: the model outputs are gathered too.
    kalman = linear_inverse_problem()
    enkf = l2ljax.EnsembleKalmanFilter(kalman, pop_size=30)
    one = l2ljax.run(enkf, kalman, jax.random.key(1), 8)
    split = l2ljax.run(enkf, kalman, jax.random.key(1), 8, parallel=scheme)
    report["enkf_ensemble"] = max_difference(one.state.inner.ensemble, split.state.inner.ensemble)

    if mode == "devices":  # the state itself split over the devices (30 rows: 15 each), as callbacks see it
        rastrigin = l2ljax.function_optimizee("rastrigin", dim=3)
        report["state_split"] = {}
        for name, opt, of in (
                ("EnKF", l2ljax.EnsembleKalmanFilter(kalman, pop_size=30, stochastic=True, form="observation"),
                 lambda s: s.ensemble),
                ("GA", l2ljax.GeneticAlgorithm(rastrigin, pop_size=30, hall_of_fame_size=5), lambda s: s.offspring),
                ("SA", l2ljax.SimulatedAnnealing(rastrigin, n_parallel_runs=30), lambda s: s.x),
                ("PT", l2ljax.ParallelTempering(rastrigin, n_parallel_runs=30), lambda s: s.chains.x),
                ("GA31", l2ljax.GeneticAlgorithm(rastrigin, pop_size=31), lambda s: s.offspring),
                # batch EKI with form="auto" might pick the ensemble form, which a split cannot run
                ("EnKFauto", l2ljax.EnsembleKalmanFilter(kalman, pop_size=30), lambda s: s.ensemble)):
            problem = kalman if name.startswith("EnKF") else rastrigin
            one = l2ljax.run(opt, problem, jax.random.key(6), 8)
            held: list = []
            split = l2ljax.run(opt, problem, jax.random.key(6), 8, parallel=scheme, chunk_size=4,
                               callbacks=[lambda r, state, of=of, held=held: held.append(
                                   sorted({shard.data.shape[0] for shard in of(state.inner).addressable_shards}))])
            report["state_split"][name] = {
                "state": max(max_difference(a, b) for a, b in zip(jax.tree_util.tree_leaves(split.state.inner),
                                                                   jax.tree_util.tree_leaves(one.state.inner),
                                                                   strict=True)
                             if not jax.dtypes.issubdtype(a.dtype, jax.dtypes.prng_key)),
                "score": max_difference(split.trajectory["score"], one.trajectory["score"]),
                "rows_per_device": held[0], "whole_after": int(of(split.state.inner).shape[0])}

    # A host simulator: each rank scores only its rows.
    rows_seen = []

    def host_sphere(population, seed):
        rows_seen.append(len(population))
        return np.sum(np.square(population), axis=1)

    host = l2ljax.Optimizee.create(host_sphere, jnp.zeros(3), lower=-5.0, upper=5.0, jittable=False)
    host_ce = l2ljax.CrossEntropy(host, pop_size=7)
    one = l2ljax.run(host_ce, host, jax.random.key(2), 4)
    rows_seen.clear()
    split = l2ljax.run(host_ce, host, jax.random.key(2), 4, parallel=scheme)
    report["host_score"] = max_difference(one.trajectory["score"], split.trajectory["score"])
    report["host_rows_seen"] = rows_seen

    # A simulator that crashes on the last rank only: every rank raises instead of waiting.
    last_rank = scheme.n_shards - 1 if mode == "mpi" else 0

    def crashes_on_last_rank(population, seed):
        if rank == last_rank:
            raise ValueError("simulator crashed")
        return np.sum(np.square(population), axis=1)

    crashing = l2ljax.Optimizee.create(crashes_on_last_rank, jnp.zeros(3), jittable=False)
    try:
        l2ljax.run(l2ljax.CrossEntropy(crashing, pop_size=7), crashing, jax.random.key(2), 2, parallel=scheme)
        report["crashed"] = None
    except Exception as error:  # noqa: BLE001 (the test reads which error each rank got)
        report["crashed"] = f"{type(error).__name__}: {error}"

    # A worker pool per rank: the same seeds, so the same fitness, as one pool for the whole population.
    pooled = l2ljax.worker_pool_optimizee(simulators.seed_of, jnp.zeros(2), n_workers=2)
    try:
        evaluation = pooled.evaluate_host(jax.random.key(5), jnp.zeros((7, 2)), 0, scheme)
    finally:
        pooled.fn.pool.close()
    report["pool_fitness"] = np.asarray(evaluation.fitness).ravel().tolist()

    # A callback that fails on rank 0 only (as a full disk would) fails every rank.
    def disk_full(record, state):
        if rank == 0:
            raise OSError("disk full")

    try:
        l2ljax.run(ce, noisy, jax.random.key(4), 3, parallel=scheme, callbacks=[disk_full])
        report["callback_failed"] = None
    except Exception as error:  # noqa: BLE001 (the test reads which error each rank got)
        report["callback_failed"] = f"{type(error).__name__}: {error}"

    # Interrupted and resumed through a directory only rank 0 writes.
    directory = out / "run"
    l2ljax.run(ce, noisy, jax.random.key(3), 8, directory=directory, chunk_size=4, parallel=scheme)
    resumed = l2ljax.run(ce, noisy, jax.random.key(3), 16, directory=directory, resume=True, chunk_size=4,
                         parallel=scheme)
    whole = l2ljax.run(ce, noisy, jax.random.key(3), 16)
    report["resume_score"] = max_difference(whole.trajectory["score"], resumed.trajectory["score"])
    report["resume_generations"] = resumed.generations

    # A run the writer refuses fails on every rank instead of leaving the others waiting.
    try:
        l2ljax.run(ce, noisy, jax.random.key(3), 16, directory=directory, parallel=scheme)
        report["refused"] = None
    except Exception as error:  # noqa: BLE001 (the test reads which error each rank got)
        report["refused"] = f"{type(error).__name__}: {error}"

    # A stop only rank 0's callback asks for holds on every rank.
    stop_on_writer = l2ljax.run(ce, noisy, jax.random.key(4), 20, parallel=scheme,
                                callbacks=[lambda record, state: rank == 0 and int(record["generation"]) == 5])
    report["stopped_after"] = stop_on_writer.generations

    # A fitness function that fails while tracing on the last rank only: every rank raises, none hangs.
    def fails_to_trace_on_last_rank(x, key):
        if rank == last_rank:
            raise ValueError("bad model on this rank")
        return jnp.sum(x ** 2)

    tracing = l2ljax.Optimizee.create(fails_to_trace_on_last_rank, jnp.zeros(3), lower=-1.0, upper=1.0)
    try:
        l2ljax.run(l2ljax.CrossEntropy(tracing, pop_size=8), tracing, jax.random.key(2), 2, parallel=scheme)
        report["trace_failed"] = None
    except Exception as error:  # noqa: BLE001 (the test reads which error each rank got)
        report["trace_failed"] = f"{type(error).__name__}: {error}"

    # Ranks called differently (another key; another population size) are named before any collective.
    for name, (key, pop) in {"other_key": (rank, 33), "other_pop_size": (0, 33 + rank)}.items():
        try:
            l2ljax.run(l2ljax.CrossEntropy(noisy, pop_size=pop), noisy, jax.random.key(key), 2, parallel=scheme)
            report[name] = None
        except ValueError as error:
            report[name] = str(error)

    (out / f"rank{rank}.json").write_text(json.dumps(report))


if __name__ == "__main__":
    main(sys.argv[1], Path(sys.argv[2]))
