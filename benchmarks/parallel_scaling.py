"""One process against the same work split over MPI ranks or local devices, side by side.

    python benchmarks/parallel_scaling.py [--ranks 2] [--rounds 3] [--output results_parallel_cpu.json]

Two workloads, each timed per generation (median over generations, after a warm-up):

- ``enkf``: one EnKF iteration (ensemble forward + LOD sequential update) of the LOD CNN on MNIST
  at J = ``--members``, the jitted l2ljax step.
- ``host``: CE over a simulator that is not JAX code (numpy, a leaky integrate-and-fire network per
  individual, as L2L users run NEST): the case L2L's process-per-individual design was built for.

Each variant runs in its own process(es), and the rounds interleave the variants so that they
share the machine's state:

- ``one``: one process on every core (XLA's thread pool uses them all);
- ``one_pinned``: one process on one core (``taskset``): the per-shard baseline, as each rank of a
  cluster job gets its own GPU or node;
- ``mpi``: R ranks, each bound to a core (``mpirun -bind-to core``);
- ``mpi_unbound``: R ranks left unbound: their XLA thread pools compete for the same cores;
- ``devices`` (only with ``--cpu-devices``): one process with R CPU devices;
- ``pool`` (host workload): one process and R worker processes (``worker_pool_optimizee``). Launched by the
driver; ``--variant`` runs one measurement and prints it as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent


def lif_population_rate(weights: np.ndarray, seed: int, steps: int = 400, neurons: int = 60) -> np.ndarray:
    """Firing rate of a fixed random LIF network per individual; individuals are (input gain, recurrent
    gain). A stand-in for an external simulator: a Python loop over time steps with small numpy
    arrays. Deterministic (``seed`` unused), so every split must give the same result.
    """
    rng = np.random.default_rng(0)
    connectivity = rng.normal(0, 1 / np.sqrt(neurons), (neurons, neurons))
    drive = rng.uniform(0.5, 1.5, neurons)
    rates = []
    for gain_in, gain_rec in weights:
        v, spikes, count = np.zeros(neurons), np.zeros(neurons), 0.0
        for _ in range(steps):
            v += 0.1 * (-v + gain_in * drive + gain_rec * connectivity @ spikes)
            spikes = (v > 1.0).astype(float)
            v[spikes > 0] = 0.0
            count += spikes.sum()
        rates.append(count / (steps * neurons))
    return np.square(np.asarray(rates) - 0.05)  # distance to a 5 % target rate


def lif_individual(weights: np.ndarray, seed: int) -> float:
    """One individual of ``lif_population_rate``: what a worker-pool simulator is called with."""
    return float(lif_population_rate(weights[None], seed)[0])


def measure(workload: str, variant: str, generations: int, members: int, mnist_dir: str) -> dict:
    import jax
    import jax.numpy as jnp

    import l2ljax
    from l2ljax import parallel

    scheme = {"devices": parallel.Devices, "mpi": parallel.MPI}.get(variant)
    scheme = scheme() if scheme else None
    if workload == "enkf":
        from l2ljax.data import load_mnist
        from l2ljax.optimizees.mnist import mnist_optimizee

        data = load_mnist(mnist_dir)
        problem = mnist_optimizee(data.train_images, data.train_labels)
        opt = l2ljax.EnsembleKalmanFilter(problem, pop_size=members, sequential=True, outputs_per_sample=10)
        step = jax.jit(l2ljax.make_step(opt, problem, summary=True, parallel=scheme))
        state = opt.init(jax.random.key(0))
        state = scheme.place(state) if scheme else state
        run_key = jax.random.key(1)
        state = jax.block_until_ready(step(state, run_key)[0])  # compile
        times = []
        for _ in range(generations):
            start = time.perf_counter()
            state = jax.block_until_ready(step(state, run_key)[0])
            times.append(time.perf_counter() - start)
        check = float(jnp.mean(state.inner.ensemble))
    else:
        if variant == "pool":
            from l2ljax.optimizees.external import worker_pool_optimizee

            problem = worker_pool_optimizee(lif_individual, jnp.zeros(2), lower=0.0, upper=3.0,
                                            n_workers=int(os.environ["POOL_WORKERS"]))
        else:
            problem = l2ljax.Optimizee.create(lambda population, seed: lif_population_rate(population, seed),
                                              jnp.zeros(2), lower=0.0, upper=3.0, jittable=False)
        opt = l2ljax.CrossEntropy(problem, pop_size=members)
        times = []
        l2ljax.run(opt, problem, jax.random.key(0), 1, parallel=scheme)  # compile ask/tell
        last = time.perf_counter()
        result = l2ljax.run(opt, problem, jax.random.key(0), generations, parallel=scheme,
                            callbacks=[lambda record, state: times.append(time.perf_counter())])
        times = list(np.diff([last, *times]))
        check = result.best_score
    shards = int(os.environ["POOL_WORKERS"]) if variant == "pool" else getattr(scheme, "n_shards", 1)
    return {"workload": workload, "variant": variant, "shards": shards,
            "seconds_per_generation": statistics.median(times), "check": check}


def launch(workload: str, variant: str, ranks: int, args: argparse.Namespace) -> dict:
    scheme = {"one_pinned": "one", "mpi_unbound": "mpi"}.get(variant, variant)
    command = [sys.executable, str(Path(__file__)), "--variant", scheme, "--workload", workload,
               "--generations", str(args.generations), "--members", str(args.members[workload]),
               "--mnist-dir", args.mnist_dir]
    env = dict(os.environ, PYTHONPATH=str(REPO))
    mpirun = [str(Path(sys.executable).parent / "mpirun"), "-n", str(ranks)]
    if variant == "mpi":
        command = [*mpirun, "-bind-to", "core", *command]
    elif variant == "mpi_unbound":
        command = [*mpirun, *command]
    elif variant == "one_pinned":
        command = ["taskset", "-c", "0", *command]
    elif variant == "devices":
        env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={ranks}"
    elif variant == "pool":
        env["POOL_WORKERS"] = str(ranks)
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=True, timeout=1800)
    return json.loads([line for line in done.stdout.splitlines() if line.startswith("{")][0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--generations", type=int, default=5)
    parser.add_argument("--enkf-members", type=int, default=500)
    parser.add_argument("--host-members", type=int, default=32)
    parser.add_argument("--mnist-dir",
                        default=os.environ.get("L2LJAX_MNIST_DIR", str(REPO.parent / "shared" / "data" / "mnist")))
    parser.add_argument("--output")
    parser.add_argument("--cpu-devices", action="store_true",
                        help="also time R CPU devices in one process (can deadlock in jaxlib: see parallel.Devices)")
    parser.add_argument("--variant", choices=["one", "devices", "mpi", "pool"], help=argparse.SUPPRESS)
    parser.add_argument("--workload", choices=["enkf", "host"], help=argparse.SUPPRESS)
    parser.add_argument("--members", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.variant:
        report = measure(args.workload, args.variant, args.generations, args.members, args.mnist_dir)
        if args.variant != "mpi" or int(os.environ.get("PMI_RANK", os.environ.get("OMPI_COMM_WORLD_RANK", "0"))) == 0:
            print(json.dumps(report), flush=True)
        return

    sys.path.insert(0, str(HERE))
    from common import machine_info, write_report

    args.members = {"enkf": args.enkf_members, "host": args.host_members}
    variants = {"host": ["one", "one_pinned", "mpi", "pool"],
                "enkf": ["one", "one_pinned", "mpi", "mpi_unbound", *(["devices"] if args.cpu_devices else [])]}
    samples: dict = {}
    for _ in range(args.rounds):
        for workload, names in variants.items():
            for variant in names:
                result = {**launch(workload, variant, args.ranks, args), "variant": variant}
                samples.setdefault((workload, variant), []).append(result)
                print(json.dumps(result), file=sys.stderr, flush=True)

    def median_seconds(workload: str, variant: str) -> float:
        return statistics.median(r["seconds_per_generation"] for r in samples[(workload, variant)])

    rows = []
    for (workload, variant), results in samples.items():
        seconds = median_seconds(workload, variant)
        reference = samples[(workload, "one")][0]["check"]
        rows.append({"workload": workload, "variant": variant, "shards": results[0]["shards"],
                     "members": args.members[workload], "seconds_per_generation": seconds,
                     "speedup_vs_one_process": median_seconds(workload, "one") / seconds,
                     "speedup_vs_one_core": median_seconds(workload, "one_pinned") / seconds,
                     "same_result_as_one_process": all(
                         abs(r["check"] - reference) <= 1e-5 * (1 + abs(reference)) for r in results)})
    write_report({"benchmark": "parallel_scaling", **machine_info(), "ranks": args.ranks, "rounds": args.rounds,
                  "generations": args.generations, "rows": rows}, args.output)


if __name__ == "__main__":
    main()
