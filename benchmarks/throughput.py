"""Generation-step throughput of l2ljax, and the same optimization side by side with original L2L.

Part 1: evaluations per second and per-generation overhead of the jitted ``lax.scan`` path
(CrossEntropy on Rastrigin-10d) for populations 32 ... 65,536. Overhead = time per generation
at the smallest population (evaluation cost is negligible there).

Part 2: CrossEntropy on Rastrigin-2d, pop 32, the same number of generations, in l2ljax and in
the original L2L (``benchmarks/peer_l2l.py`` in its own environment, one worker process per
individual). Both wall times include start-up; the ratio is reported per generation.

    python benchmarks/throughput.py [--l2l-python /work/envs/l2l/bin/python] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import time

import jax
from common import machine_info, write_report

import l2ljax

HERE = os.path.dirname(os.path.abspath(__file__))


def time_run(opt, problem, generations: int, repeats: int = 3) -> float:
    """Best wall time of a whole jitted run (compiled once beforehand)."""
    l2ljax.run(opt, problem, jax.random.key(0), generations, keep_population=False)
    best = float("inf")
    for r in range(repeats):
        start = time.perf_counter()
        result = l2ljax.run(opt, problem, jax.random.key(r + 1), generations, keep_population=False)
        jax.block_until_ready(result.state)
        best = min(best, time.perf_counter() - start)
    return best


def throughput(generations: int) -> list[dict]:
    problem = l2ljax.function_optimizee("rastrigin", 10)
    rows = []
    for pop in [32, 256, 2048, 16384, 65536]:
        opt = l2ljax.CrossEntropy(problem, pop_size=pop, distribution=l2ljax.Gaussian())
        gens = max(10, generations * 32 // pop) if pop > 2048 else generations
        seconds = time_run(opt, problem, gens)
        rows.append({"pop_size": pop, "generations": gens, "seconds": seconds,
                     "ms_per_generation": 1e3 * seconds / gens,
                     "evaluations_per_second": pop * gens / seconds})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def versus_l2l(l2l_python: str, generations: int) -> dict:
    problem = l2ljax.function_optimizee("rastrigin", 2)
    opt = l2ljax.CrossEntropy(problem, pop_size=32)
    start = time.perf_counter()  # cold: includes compilation, like L2L's start-up
    result = l2ljax.run(opt, problem, jax.random.key(0), generations)
    cold = time.perf_counter() - start
    warm = time_run(opt, problem, generations)
    ours = {"seconds_total_cold": cold, "seconds_per_generation_warm": warm / generations,
            "best_fitness": float(result.best_fitness[0])}
    print(json.dumps({"l2ljax": ours}), flush=True)
    cmd = [l2l_python, os.path.join(HERE, "peer_l2l.py"), "--optimizer", "crossentropy", "--function",
           "rastrigin", "--dim", "2", "--pop-size", "32", "--generations", str(generations)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=1200)
    peer = json.loads(out.stdout.strip().splitlines()[-1])
    print(json.dumps({"l2l": peer}), flush=True)
    return {"l2ljax": ours, "l2l": peer,
            "ratio_per_generation": peer["seconds_per_generation"] / ours["seconds_per_generation_warm"],
            "ratio_total_cold": peer["seconds_total"] / cold}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--generations", type=int, default=200)
    parser.add_argument("--l2l-python", default="/work/envs/l2l/bin/python")
    parser.add_argument("--l2l-generations", type=int, default=3)
    parser.add_argument("--skip-l2l", action="store_true")
    parser.add_argument("--json", help="write all results to this file")
    args = parser.parse_args()
    report = {**machine_info(), "throughput_rastrigin10d_cross_entropy": throughput(args.generations)}
    if not args.skip_l2l:
        report["versus_l2l_cross_entropy_rastrigin2d_pop32"] = versus_l2l(args.l2l_python, args.l2l_generations)
    write_report(report, args.json)


if __name__ == "__main__":
    main()
