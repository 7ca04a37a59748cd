"""Structural plasticity in real NEST networks tuned by simulated annealing, gradient descent and cross-entropy.

The second example of L2L's HPC poster: the growth curves of an E/I network with homeostatic
structural plasticity (``l2ljax.optimizees.nest``) are tuned so that after the simulated time the
network fires at the target rates with the target number of synapses per neuron. Every
individual is one NEST simulation in a worker process; each optimizer starts from NEST's example
setting (no synapse grows in time) and writes its trajectory and checkpoint under ``--out``.
Then the best individual is simulated again and the figure shows the score per generation and
that network's rates and synapse counts over simulated time::

    python examples/nest_structural_plasticity.py                   # CI size: ≈ 2 min on 2 cores
    python examples/nest_structural_plasticity.py --paper-scale     # 800 E + 200 I neurons, 200 s each
"""

import argparse
import json
import time
from pathlib import Path

import jax
import numpy as np
import optax

import l2ljax
from l2ljax.cli import new_run_dir
from l2ljax.optimizees import nest as sp


def optimizers(problem, scale: int):
    """The poster's three, with the test suite's settings (``scale`` multiplies the population)."""
    sa = l2ljax.SimulatedAnnealing(problem, n_parallel_runs=4 * scale)
    gd = l2ljax.GradientDescent(problem, n_random_steps=3 * scale, optimizer=optax.sgd(2.0))
    ce = l2ljax.CrossEntropy(problem, pop_size=8 * scale, init_std=2.0)
    return {"SimulatedAnnealing": (sa, sa.default_params.replace(noisy_step=1.0, T0=0.3, temp_decay=0.9)),
            "GradientDescent": (gd, gd.default_params.replace(exploration_step_size=0.5)),
            "CrossEntropy": (ce, ce.default_params)}


def tune(network: sp.Network, generations: int, workers: int, out: Path, scale: int = 1,
         resume: bool = False) -> dict:
    problem = sp.structural_plasticity_optimizee(network, n_workers=workers, timeout=None)
    x0 = {name: np.float32(value) for name, value in problem.info["x0"].items()}
    report = {"network": problem.info["network"], "x0": problem.info["x0"], "runs": {}}
    try:
        start = time.time()
        initial = problem.evaluate(jax.random.key(0), jax.tree.map(lambda v: np.asarray([v]), x0))
        report["seconds_per_simulation"] = time.time() - start  # includes starting the workers
        report["initial_score"] = float(initial.score[0])
        for name, (opt, params) in optimizers(problem, scale).items():
            start = time.time()
            result = l2ljax.run(opt, problem, jax.random.key(1), generations, x0=x0, params=params,
                                directory=out / name, resume=resume)
            report["runs"][name] = {
                "seconds": time.time() - start, "simulations": int(result.trajectory["fitness"].shape[0]
                                                                   * result.trajectory["fitness"].shape[1]),
                "best_score_per_generation": result.trajectory["best_score"].tolist(),
                "best": {k: float(v) for k, v in result.best.items()}, "best_score": float(result.best_score)}
            print(f"{name}: score {report['initial_score']:.3f} -> {result.best_score:.3f} "
                  f"in {report['runs'][name]['simulations']} simulations", flush=True)
    finally:
        problem.fn.pool.close()
    return report


def plot(report: dict, network: sp.Network, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    best_name = max(report["runs"], key=lambda n: report["runs"][n]["best_score"])
    best = report["runs"][best_name]["best"]
    series = {"best": sp.simulate_network(best, 1, network), "initial": sp.simulate_network(report["x0"], 1, network)}
    # (in this process: the figure is not drawn under an MPI launcher, where NEST without MPI exits)
    fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(11, 4))
    for name, run in report["runs"].items():
        ax0.plot(np.arange(1, len(run["best_score_per_generation"]) + 1), run["best_score_per_generation"],
                 marker="o", label=name)
    ax0.axhline(report["initial_score"], color="grey", ls=":", label="initial guess (NEST example)")
    ax0.set(xlabel="generation", ylabel="best score  (−Σ weighted relative errors)", title="optimization")
    ax0.legend(fontsize=8)
    t = series["best"]["time_s"]
    for key, color in (("rate_e", "tab:blue"), ("rate_i", "tab:red")):
        ax1.plot(t, series["best"][key], color=color, label=f"{key} (best: {best_name})")
        ax1.plot(t, series["initial"][key], color=color, ls=":", alpha=0.6, label=f"{key} (initial)")
    ax1.axhline(network.target_rate_e_hz, color="tab:blue", lw=4, alpha=0.2)
    ax1.axhline(network.target_rate_i_hz, color="tab:red", lw=4, alpha=0.2)
    ax1.set_ylim(0, 1.4 * max(network.target_rate_i_hz, np.max(series["best"]["rate_i"])))
    ax1.set(xlabel="simulated time (s)", ylabel="firing rate (Hz)",
            title="best individual in NEST (new seed); bands: targets")
    twin = ax1.twinx()
    n = network.n_excitatory + network.n_inhibitory
    synapses = (series["best"]["synapses_e"] + series["best"]["synapses_i"]) / n
    twin.plot(t, synapses, "k--", label="synapses / neuron (best)")
    twin.axhline(network.target_synapses, color="k", lw=4, alpha=0.12)
    twin.set_ylim(0, 2.5 * max(network.target_synapses, np.max(synapses)))
    twin.set_ylabel("recurrent synapses per neuron")
    ax1.legend(fontsize=7, loc="upper left")
    twin.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--paper-scale", action="store_true", help="800 E + 200 I neurons, 200 s simulated")
    p.add_argument("--network", default="{}", help='JSON of Network fields to change, e.g. {"t_sim_ms": 20000}')
    p.add_argument("--generations", type=int, default=10)
    p.add_argument("--scale", type=int, default=1, help="multiplies every optimizer's population")
    p.add_argument("--workers", type=int, default=None, help="default: the CPUs")
    p.add_argument("--out", type=Path, default=None,
                   help="run folder (default: a new runs/nest-structural-plasticity-<UTC time>)")
    p.add_argument("--resume", action="store_true", help="continue the runs in --out")
    p.add_argument("--figure", type=Path, default=None, help="default: OUT/structural_plasticity.png")
    args = p.parse_args()
    changes = json.loads(args.network)
    network = sp.Network.paper_scale(**changes) if args.paper_scale else sp.Network(**changes)
    if args.resume and args.out is None:
        p.error("--resume needs --out DIR (the folder of the runs to continue)")
    args.out = args.out or new_run_dir("nest-structural-plasticity")
    args.out.mkdir(parents=True, exist_ok=True)
    print(f"results in {args.out}", flush=True)
    report = tune(network, args.generations, args.workers, args.out, args.scale, args.resume)
    (args.out / "report.json").write_text(json.dumps(report, indent=1))
    plot(report, network, args.figure or args.out / "structural_plasticity.png")


if __name__ == "__main__":  # the workers start with spawn and re-import this module
    main()
