"""EnKF, SA and PT runs with their population sharded over MPI ranks, judged against one process.

    mpirun -n 3 python sharded_worker.py compare OUT      # OUT/rank<r>.json: differences per variant
    mpirun -n 2 python sharded_worker.py start DIR OUT    # 4 generations into DIR
    mpirun -n 3 python sharded_worker.py resume DIR OUT   # resumed to 8 on another rank count

Every rank also runs the variant unsharded (plain jit, the whole ensemble) as the reference.
"""

import json
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from helpers import max_difference

import l2ljax
from l2ljax import kalman, parallel

J = 31  # uneven over 2 and 3 ranks


def inverse_problem(failing: bool = False, P: int = 6, M: int = 12) -> l2ljax.Optimizee:
    """y = A u + a mild nonlinearity; with ``failing``, members with u[0] > 1.2 return NaN outputs."""
    rng = np.random.default_rng(0)
    A = jnp.asarray(rng.normal(size=(M, P)), jnp.float32)
    y = A @ jnp.asarray(rng.normal(size=P), jnp.float32)

    def fn(u, key, inputs):
        out = A @ u + 0.1 * jnp.sin(u).sum()
        if failing:
            out = jnp.where(u[0] > 1.2, jnp.nan, out)
        return -jnp.mean(jnp.square(out - y)), out

    return l2ljax.Optimizee.create(fn, jnp.zeros(P), weights=(1.0,), data=lambda g: (jnp.zeros(()), y),
                                   sample=lambda k: jax.random.normal(k, (P,)))


def sequential_problem(B: int = 4, K: int = 3, P: int = 5) -> l2ljax.Optimizee:
    """B samples of K outputs each, sample-major: the LOD sample-sequential layout."""
    rng = np.random.default_rng(1)
    W = jnp.asarray(rng.normal(size=(B, K, P)), jnp.float32)
    y = jnp.einsum("bkp,p->bk", W, jnp.asarray(rng.normal(size=P), jnp.float32)).ravel()

    def fn(u, key, inputs):
        out = jnp.tanh(jnp.einsum("bkp,p->bk", W, u)).ravel() * 3
        return -jnp.mean(jnp.square(out - y)), out

    return l2ljax.Optimizee.create(fn, jnp.zeros(P), weights=(1.0,), data=lambda g: (jnp.zeros(()), y),
                                   sample=lambda k: jax.random.normal(k, (P,)))


def variants() -> dict:
    """Three runs that between them take every sharded code path of the update."""
    return {
        "stochastic+additive+controller+nesterov": (lambda p: l2ljax.EnsembleKalmanFilter(
            p, pop_size=J, stochastic=True, additive_cov="ensemble",
            scheduler=kalman.DataMisfitController(terminate_at=100.0), accelerator=kalman.NesterovAccelerator()),
            inverse_problem()),
        "failing members+SECNice": (lambda p: l2ljax.EnsembleKalmanFilter(p, pop_size=J, init_std=1.0,
                                                                          localizer=kalman.SECNice()),
                                    inverse_problem(failing=True)),
        "sequential (LOD)": (lambda p: l2ljax.EnsembleKalmanFilter(p, pop_size=J, sequential=True,
                                                                   outputs_per_sample=3), sequential_problem()),
    }


def params_for(name: str, opt):
    if name.startswith("stochastic"):
        return opt.default_params.replace(additive_inflation=0.05)
    return None


def compare(scheme: parallel.MPI, out: Path) -> None:
    report = {"rank": scheme.rank, "ranks": scheme.n_shards}
    for name, (make, problem) in variants().items():
        opt = make(problem)
        params = params_for(name, opt)
        one = l2ljax.run(opt, problem, jax.random.key(3), 6, params=params, x0=jnp.zeros(problem.space.dim)
                         if opt.init_std else None)
        held: list[int] = []

        def note_rows(record, state, held=held):
            held.append(int(state.inner.ensemble.shape[0]))

        split = l2ljax.run(opt, problem, jax.random.key(3), 6, params=params, parallel=scheme, chunk_size=2,
                           x0=jnp.zeros(problem.space.dim) if opt.init_std else None,
                           callbacks=[note_rows])
        report[name] = {
            "ensemble": max_difference(split.state.inner.ensemble, one.state.inner.ensemble),
            "score": max_difference(split.trajectory["score"], one.trajectory["score"]),
            "misfit": max_difference(split.trajectory["diag/misfit"], one.trajectory["diag/misfit"]),
            "spread": max_difference(split.trajectory["diag/spread"], one.trajectory["diag/spread"]),
            "best": [split.best_score, one.best_score],
            "n_failed_first": int(np.sum(~np.isfinite(one.trajectory["score"][0]))),
            "rows_held": sorted(set(held)),
            "whole_after": int(split.state.inner.ensemble.shape[0]),
        }
    report["chains"] = compare_chains(scheme)
    (out / f"rank{scheme.rank}.json").write_text(json.dumps(report))


def compare_chains(scheme: parallel.MPI) -> dict:
    """Simulated annealing and parallel tempering with J chains split over the ranks. The PT ladder is
    shuffled, so neighbours in temperature sit on any rank and swapped states cross shards."""
    problem = l2ljax.function_optimizee("rastrigin", dim=3)
    ladder = np.geomspace(0.5, 20.0, J)[np.random.default_rng(2).permutation(J)]
    chains = {
        "SA": (l2ljax.SimulatedAnnealing(problem, n_parallel_runs=J), lambda state: state.inner),
        "PT": (l2ljax.ParallelTempering(problem, n_parallel_runs=J,
                                        temperature_bounds=np.stack([ladder, ladder / 10], 1)),
               lambda state: state.inner.chains),
    }
    report = {}
    for name, (opt, chains_of) in chains.items():
        one = l2ljax.run(opt, problem, jax.random.key(4), 12)
        held: list[int] = []

        def note_rows(record, state, held=held, of=chains_of):
            held.append(int(of(state).x.shape[0]))

        split = l2ljax.run(opt, problem, jax.random.key(4), 12, parallel=scheme, chunk_size=3, callbacks=[note_rows])
        report[name] = {"x": max_difference(chains_of(split.state).x, chains_of(one.state).x),
                        "score": max_difference(split.trajectory["score"], one.trajectory["score"]),
                        "best": max_difference(split.best_score, one.best_score),
                        "rows_held": sorted(set(held)), "whole_after": int(chains_of(split.state).x.shape[0])}
        if name == "PT":
            report[name]["swap_rate"] = max_difference(split.trajectory["diag/swap_rate"],
                                                       one.trajectory["diag/swap_rate"])
            report[name]["swaps"] = float(np.sum(one.trajectory["diag/swap_rate"]))
    report.update(compare_genetic(scheme))
    return report


def compare_genetic(scheme: parallel.MPI) -> dict:
    """The GA with its offspring split over the ranks: parents and mates fetched across shards,
    duplicates found across shards, the hall of fame merged from every shard's best (k = 5 below
    a shard's 10 rows, and k = 16 above)."""
    problem = l2ljax.function_optimizee("rastrigin", dim=3)
    report = {}
    for k in (5, 16):
        opt = l2ljax.GeneticAlgorithm(problem, pop_size=J, hall_of_fame_size=k)
        one = l2ljax.run(opt, problem, jax.random.key(6), 12)
        held: list[int] = []

        def note_rows(record, state, held=held):
            held.append(int(state.inner.offspring.shape[0]))

        split = l2ljax.run(opt, problem, jax.random.key(6), 12, parallel=scheme, chunk_size=3, callbacks=[note_rows])
        report[f"GA-hof{k}"] = {
            "x": max_difference(split.state.inner.offspring, one.state.inner.offspring),
            "score": max_difference(split.trajectory["score"], one.trajectory["score"]),
            "best": max_difference(split.best_score, one.best_score),
            "hof": max(max_difference(split.state.inner.hof_x, one.state.inner.hof_x),
                       max_difference(split.state.inner.hof_weighted, one.state.inner.hof_weighted)),
            "duplicates": max_difference(split.trajectory["diag/n_duplicates"], one.trajectory["diag/n_duplicates"]),
            "n_duplicates": float(np.sum(one.trajectory["diag/n_duplicates"])),
            "rows_held": sorted(set(held)), "whole_after": int(split.state.inner.offspring.shape[0])}
    return report


def checkpointed(scheme: parallel.MPI, directory: Path, out: Path, generations: int, stage: str) -> None:
    name = next(iter(variants()))
    make, problem = variants()[name]
    opt = make(problem)
    params = params_for(name, opt)
    split = l2ljax.run(opt, problem, jax.random.key(5), generations, params=params, parallel=scheme,
                       directory=directory, resume=stage == "resume", chunk_size=2)
    one = l2ljax.run(opt, problem, jax.random.key(5), generations, params=params)
    report = {"rank": scheme.rank, "generations": split.generations,
              "ensemble": max_difference(split.state.inner.ensemble, one.state.inner.ensemble),
              "score": max_difference(split.trajectory["score"], one.trajectory["score"])}
    (out / f"{stage}{scheme.rank}.json").write_text(json.dumps(report))


if __name__ == "__main__":
    scheme = parallel.MPI()
    if sys.argv[1] == "compare":
        compare(scheme, Path(sys.argv[2]))
    else:
        checkpointed(scheme, Path(sys.argv[2]), Path(sys.argv[3]), 4 if sys.argv[1] == "start" else 8, sys.argv[1])
