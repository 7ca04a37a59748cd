"""Why one vmapped generation of nested EnKF runs is slower than a loop on CPU: compile vs run,
wasted (masked) work, batch-size scaling, batched LAPACK, and the bucketed ``chunk=1`` scheme.

Population: ``--pop`` settings drawn uniformly from L2L's ranges (γ log-uniform in [0.009, 1],
J in [9, 30], repetitions in [1, 3]; fixed seed), each ``--inner-seeds`` inner runs of
``--batches`` minibatches, as in ``benchmarks/l2l_nested.py``. Every path is compiled first
(timed apart: ``jit(...).lower(...).compile()``), then run ``--repeats`` times (median).

    PYTHONPATH=. python benchmarks/l2l_nested_profile.py --out benchmarks/results_l2l_nested_profile.json
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.common import machine_info, write_report
from l2ljax import data
from l2ljax.models import Mlp
from l2ljax.optimizees.inner import NestedEnKF

BUCKETS = (12, 18, 24, 30)


def timed(fn: Callable, *args, repeats: int) -> tuple[float, float, np.ndarray]:
    """(compile seconds, median run seconds, result) of ``jit(fn)(*args)``."""
    start = time.perf_counter()
    compiled = jax.jit(fn).lower(*args).compile()
    compile_s = time.perf_counter() - start
    runs, out = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        out = jax.block_until_ready(compiled(*args))
        runs.append(time.perf_counter() - start)
    return compile_s, float(np.median(runs)), np.asarray(out)


def population(nested: NestedEnKF, n: int, seed: int = 0) -> tuple[dict, list[tuple[float, int, int]]]:
    rng = np.random.default_rng(seed)
    settings = [(float(10 ** rng.uniform(np.log10(0.009), 0.0)), int(rng.integers(9, 31)), int(rng.integers(1, 4)))
                for _ in range(n)]
    pop = jax.tree_util.tree_map(lambda *a: jnp.stack(a), *[nested.individual(*s) for s in settings])
    return pop, settings


def lapack_microbench(batch: int, j: int = 30, m: int = 320, repeats: int = 20) -> dict:
    """Cholesky + solve of the (J, J) ensemble-space system, batched (one call) vs one at a time."""
    a = jax.random.normal(jax.random.key(0), (batch, j, m))
    systems = jnp.eye(j) + a @ jnp.swapaxes(a, 1, 2) / m
    rhs = a[:, :, :10]

    def solve(s: jax.Array, b: jax.Array) -> jax.Array:
        return jax.scipy.linalg.cho_solve(jax.scipy.linalg.cho_factor(s), b)

    _, batched_s, _ = timed(jax.vmap(solve), systems, rhs, repeats=repeats)
    _, single_s, _ = timed(solve, systems[0], rhs[0], repeats=repeats)
    return {"batch": batch, "batched_call_s": batched_s, "single_call_s": single_s,
            "batched_per_system_over_single": batched_s / batch / single_s}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--data-dir")
    p.add_argument("--batches", type=int, default=50)
    p.add_argument("--pop", type=int, default=8)
    p.add_argument("--inner-seeds", type=int, default=3)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--out")
    args = p.parse_args()

    flat = data.flat_splits(data.load_mnist(args.data_dir))
    common = dict(train=flat["train"], validation=flat["validation"], n_batches=args.batches, batch_size=32,
                  init_std=0.1, n_seeds=args.inner_seeds)
    nested = NestedEnKF(Mlp(hidden=(10,)), **common)
    bucketed = NestedEnKF(Mlp(hidden=(10,)), ensemble_buckets=BUCKETS, **common)
    pop, settings = population(nested, args.pop)
    key = jax.random.fold_in(jax.random.key(0), 0)

    def rows(problem_chunk: int | None, model: NestedEnKF) -> Callable:
        problem = model.optimizee(jax.random.key(0), chunk=problem_chunk)
        return lambda population: problem.evaluate(jax.random.key(1), population, 0).fitness[:, 0]

    report: dict = {"machine": machine_info(), "settings": settings,
                    "inner": f"EKI of MLP 784-10-10, {args.batches} batches of 32, {args.inner_seeds} inner runs",
                    "paths": {}}
    # the Python loop of single jitted runs: one compilation, then pop runs one after another
    one = jax.jit(nested.fitness)
    ind0 = jax.tree_util.tree_map(lambda a: a[0], pop)
    start = time.perf_counter()
    one.lower(ind0, key).compile()
    loop_compile = time.perf_counter() - start
    loop_runs, loop_fit = [], None
    for _ in range(args.repeats):
        start = time.perf_counter()
        loop_fit = np.array([float(one(jax.tree_util.tree_map(lambda a, i=i: a[i], pop), key))
                             for i in range(args.pop)])
        loop_runs.append(time.perf_counter() - start)
    report["paths"]["python loop of single runs"] = {"compile_s": loop_compile, "run_s": float(np.median(loop_runs))}
    fitness = {"python loop of single runs": loop_fit}
    # the same loop at the work of the first (scan + where) version: every run 30 members x 3 updates
    full = [nested.individual(g, 30, 3) for g, _, _ in settings]
    full_runs = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        jax.block_until_ready([one(ind, key) for ind in full])
        full_runs.append(time.perf_counter() - start)
    report["paths"]["python loop, every run at 30 members x 3 repetitions"] = {
        "compile_s": 0.0, "run_s": float(np.median(full_runs))}
    fitness["python loop, every run at 30 members x 3 repetitions"] = loop_fit  # timing only (other settings)
    for name, fn in (("vmapped (one program)", rows(None, nested)), ("chunks of 2", rows(2, nested)),
                     ("chunk=1 (lax.map)", rows(1, nested)),
                     (f"chunk=1, buckets {BUCKETS}, exact repetitions", rows(1, bucketed))):
        c, r, out = timed(fn, pop, repeats=args.repeats)
        report["paths"][name] = {"compile_s": c, "run_s": r}
        fitness[name] = out
    loop_s = report["paths"]["python loop of single runs"]["run_s"]
    for name, entry in report["paths"].items():
        entry["loop_over"] = loop_s / entry["run_s"]
        if "30 members x 3" not in name:
            entry["max_abs_fitness_diff_vs_loop"] = float(np.nanmax(np.abs(fitness[name] - loop_fit)))
    # wasted work: every masked run pays J_max members x repetitions_max updates
    useful = sum(j * r for _, j, r in settings)
    report["useful_work_fraction"] = useful / (len(settings) * 30 * 3)
    bucket_of = [min(b for b in BUCKETS if b >= j) for _, j, _ in settings]
    report["bucketed_work_fraction"] = sum(b * r for b, (_, _, r) in zip(bucket_of, settings, strict=True)) / (
        len(settings) * 30 * 3)
    # batch-size scaling: B copies of the largest setting (30 members, 3 repetitions) in one vmap
    big = nested.individual(0.01, 30, 3)
    scaling = {}
    for b in (2, 4, 8):
        stack = jax.tree_util.tree_map(lambda a, b=b: jnp.stack([a] * b), big)
        c, r, _ = timed(jax.vmap(nested.fitness, in_axes=(0, None)), stack, key, repeats=args.repeats)
        scaling[b] = {"compile_s": c, "run_s": r, "per_individual_s": r / b}
    c, r, _ = timed(nested.fitness, big, key, repeats=args.repeats)
    scaling[1] = {"compile_s": c, "run_s": r, "per_individual_s": r}
    report["batch_scaling_largest_setting"] = dict(sorted(scaling.items()))
    report["lapack_cholesky_solve"] = lapack_microbench(args.pop * args.inner_seeds)
    write_report(report, args.out)


if __name__ == "__main__":
    main()
