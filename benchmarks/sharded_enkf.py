"""A sharded ensemble against a replicated one, and one process, side by side (issue #14).

    python benchmarks/sharded_enkf.py [--members 2000] [--generations 6] [--output results_sharded_enkf.json]

EnKF on MNIST (the LOD CNN, P = 18,050; whole-batch update, batch 64, M = 640) timed per
iteration (median after the first, which compiles), and each process's peak resident memory:

- ``one``: one process, J members;
- ``replicated``: 2 MPI ranks, every rank holds the whole ensemble and runs the whole update, the
  evaluation split (``MPI(shard_state=False)``, the scheme before issue #14);
- ``sharded``: 2 MPI ranks, each holds J/2 members and its part of the update (``MPI()``);
- ``weak``: 2 ranks sharded at 2J members (the same members per rank as ``one``);
- ``dist_replicated`` / ``dist_sharded``: the same two schemes with 2 ``jax.distributed``
  processes (``parallel.Distributed(shard_state=False)`` / ``Distributed()``: the ensemble a
  row-sharded global array, the chunk one ``shard_map``), launched by mpirun (the coordinator's
  address comes through mpi4py; no MPI in the computation).

An ES run on Rastrigin-100 (pop 4096; small replicated state, evaluation split) gives the
population optimizer's strong scaling. Each variant runs in its own process(es); ``--variant``
runs one and prints JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))  # run from a checkout, like the other benchmarks


def measure(variant: str, members: int, generations: int) -> dict:
    import jax

    import l2ljax
    from l2ljax import parallel

    scheme = None
    if variant in ("replicated", "sharded", "weak", "es_mpi"):
        scheme = parallel.MPI(shard_state=variant != "replicated")
    if variant.startswith("dist_"):
        scheme = parallel.Distributed(shard_state=variant == "dist_sharded")
    if variant.startswith("es"):
        problem = l2ljax.function_optimizee("rastrigin", dim=100)
        opt = l2ljax.EvolutionStrategies(problem, pop_size=4096)
    else:
        from l2ljax.data import load_mnist
        from l2ljax.optimizees.mnist import mnist_optimizee

        data = load_mnist()
        problem = mnist_optimizee(data.train_images, data.train_labels, batch_size=64, seed=0)
        # J > M: the observation form, which "auto" picks too; named so that mesh engines split it
        opt = l2ljax.EnsembleKalmanFilter(problem, pop_size=2 * members if variant == "weak" else members,
                                          form="observation")
    stamps: list[float] = []
    l2ljax.run(opt, problem, jax.random.key(0), generations, parallel=scheme, summary=True, chunk_size=1,
               callbacks=[lambda record, state: stamps.append(time.perf_counter())])
    steps = [b - a for a, b in zip(stamps, stamps[1:], strict=False)]
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"variant": variant, "rank": getattr(scheme, "rank", 0), "ranks": getattr(scheme, "n_shards", 1),
            "members": opt.pop_size, "ms_per_generation": 1000 * statistics.median(steps), "peak_rss_mb": peak_mb}


def launch(variant: str, members: int, generations: int) -> list[dict]:
    ranks = 1 if variant in ("one", "es_one") else 2
    env = dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS="cpu")
    command = [sys.executable, __file__, "--variant", variant, "--members", str(members),
               "--generations", str(generations)]
    if ranks > 1:
        command = [str(Path(sys.executable).parent / "mpirun"), "-n", str(ranks)] + command
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=3600)
    if done.returncode:
        raise RuntimeError(done.stderr[-3000:])
    return [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--members", type=int, default=2000)
    parser.add_argument("--generations", type=int, default=6)
    parser.add_argument("--variant")
    parser.add_argument("--variants", nargs="+", default=["one", "replicated", "sharded", "weak", "dist_replicated",
                                                          "dist_sharded", "es_one", "es_mpi"])
    parser.add_argument("--output", default=str(HERE / "results_sharded_enkf.json"))
    args = parser.parse_args()
    if args.variant:
        print(json.dumps(measure(args.variant, args.members, args.generations)), flush=True)
        return
    from common import machine_info

    results = {**machine_info(), "load_average_before": os.getloadavg(), "members": args.members, "variants": {}}
    for variant in args.variants:
        results["variants"][variant] = launch(variant, args.members, args.generations)
        print(variant, results["variants"][variant], flush=True)
    results["load_average_after"] = os.getloadavg()
    Path(args.output).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
