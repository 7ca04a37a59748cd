"""EnKF strategies on MNIST, side by side: test accuracy per iteration (= per forward pass) and per second.

    PYTHONPATH=. python benchmarks/enkf_strategies.py --iterations 400 --variants today best ...

Every variant trains the LOD CNN with J members (same initial ensemble, same data order) through
the real optimizer (``EnsembleKalmanFilter`` + ``mnist_optimizee``, the step ``l2ljax.run``
executes). Variants advance in turns of ``--chunk`` iterations (round robin), so a shared
machine's load hits all of them alike; each variant's clock counts only its own chunks. After
every chunk the ensemble mean's accuracy on the test images is recorded (outside the clock): the
averaged mean (``EnsembleKalmanFilter.averaged_mean_flat``) for variants with ``average`` > 0.
One iteration is one ensemble forward pass on a batch for every variant (J·B member-image
evaluations), so equal iterations are equal forward passes. ``--wall-budget NAME`` stops
every other variant once its own clock passes NAME's total (the "no more wall time" rule).

Variant specs: ``name`` of PRESETS, or ``name=key:value,key:value`` with keys of
``PRESETS['today']``. Writes JSON, CSV and one PNG (test error vs iteration, all variants).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from common import machine_info

from l2ljax import kalman
from l2ljax.data import load_mnist
from l2ljax.optimizees.mnist import build_model, mnist_optimizee
from l2ljax.optimizers.enkf import EnsembleKalmanFilter
from l2ljax.run import make_step

TODAY = {"repetitions": 8, "mode": "sequential", "gamma": 0.01, "step": 1.0, "localizer": "none",
         "additive": 0.0, "additive_cov": "prior", "accelerator": "none", "scheduler": "fixed",
         "process": "eki", "stochastic": 0, "inflation": 1.0, "batch": 0, "average": 0.0,
         "antithetic": 0, "generator": "threefry", "anneal": 1.0}
PRESETS = {
    "today": {},
    "rep1": {"repetitions": 1},
    "rep1_batch": {"repetitions": 1, "mode": "batch"},
    "rep1_additive": {"repetitions": 1, "additive": 0.02, "additive_cov": "ensemble"},
    "rep1_additive_prior": {"repetitions": 1, "additive": 0.002},
    "rep1_secnice": {"repetitions": 1, "mode": "batch", "localizer": "secnice"},
    "rep1_sec": {"repetitions": 1, "mode": "batch", "localizer": "sec"},
    "rep1_nesterov": {"repetitions": 1, "accelerator": "nesterov"},
    "rep1_stochastic": {"repetitions": 1, "mode": "batch", "stochastic": 1},
    "rep1_etki": {"repetitions": 1, "mode": "batch", "process": "etki"},
    "rep1_teki": {"repetitions": 1, "mode": "batch", "process": "teki"},
    "rep1_dmc": {"repetitions": 1, "mode": "batch", "scheduler": "dmc"},
    # l2ljax mnist-enkf's defaults: a weaker fit per batch, more additive noise (hashed normals),
    # the averaged ensemble mean tested
    "default": {"repetitions": 1, "gamma": 0.2, "additive": 0.08, "additive_cov": "ensemble", "average": 0.9,
                "generator": "hash"},
    # the main job's defaults of 2026-12-03 (γ 0.1, s 0.06)
    "default_g01": {"repetitions": 1, "gamma": 0.1, "additive": 0.06, "additive_cov": "ensemble", "average": 0.9,
                    "generator": "hash"},
    # the same with jax.random's threefry normals (the default until the hash generator)
    "default_threefry": {"repetitions": 1, "gamma": 0.1, "additive": 0.06, "additive_cov": "ensemble",
                         "average": 0.9},
}
LOCALIZERS = {"none": None, "secnice": kalman.SECNice(), "sec": kalman.SEC(), "secfisher": kalman.SECFisher(),
              "dropout": kalman.BernoulliDropout()}
ACCELERATORS = {"none": None, "nesterov": kalman.NesterovAccelerator(),
                "first-order": kalman.FirstOrderNesterovAccelerator(),
                "constant": kalman.ConstantNesterovAccelerator()}


def parse_variant(spec: str) -> tuple[str, dict]:
    name, _, rest = spec.partition("=")
    config = {**TODAY, **PRESETS.get(name, {})}
    if rest:
        for item in rest.split(","):
            key, value = item.split(":")
            if key not in TODAY:
                raise SystemExit(f"unknown variant key {key!r}; known: {sorted(TODAY)}")
            config[key] = type(TODAY[key])(value) if not isinstance(TODAY[key], str) else value
    elif name not in PRESETS:
        raise SystemExit(f"unknown variant {name!r}; presets: {sorted(PRESETS)}")
    return name, config


class Variant:
    def __init__(self, name: str, config: dict, data, args):
        self.name, self.config = name, config
        problem = mnist_optimizee(data.train_images, data.train_labels, batch_size=config["batch"] or args.batch,
                                  repetitions=config["repetitions"], seed=args.seed)
        processes = {"eki": kalman.Inversion(), "etki": kalman.TransformInversion(),
                     "teki": kalman.TikhonovInversion(prior_std=0.1, prior_mean=0.0)}
        scheduler = kalman.DataMisfitController(terminate_at=1e6) if config["scheduler"] == "dmc" else None
        self.opt = EnsembleKalmanFilter(
            problem, pop_size=args.members, sequential=config["mode"] == "sequential", outputs_per_sample=10,
            stochastic=bool(config["stochastic"]), process=processes[config["process"]], scheduler=scheduler,
            accelerator=ACCELERATORS[config["accelerator"]], localizer=LOCALIZERS[config["localizer"]],
            additive_cov=config["additive_cov"],
            additive_noise="antithetic" if config["antithetic"] else "independent",
            additive_generator=config["generator"],
            # anneal < 1: the additive noise follows a cosine from s to anneal·s over the run
            additive_schedule=(None if config["anneal"] == 1.0 else
                               optax.cosine_decay_schedule(1.0, args.iterations, alpha=config["anneal"])))
        params = self.opt.default_params.replace(gamma=config["gamma"], step_size=config["step"],
                                                 additive_inflation=config["additive"],
                                                 inflation=config["inflation"], average_decay=config["average"])
        self.state = self.opt.init(jax.random.key(args.seed), params)
        self.step = jax.jit(make_step(self.opt, problem, keep_population=False, summary=True))
        self.run_key = jax.random.key(args.seed + 1)
        self.seconds, self.iterations, self.curve = 0.0, 0, []

    def advance(self, n: int) -> None:
        start = time.perf_counter()
        state = self.state
        for _ in range(n):
            state, _ = self.step(state, self.run_key)
        jax.block_until_ready(state)
        self.state = state
        self.seconds += time.perf_counter() - start
        self.iterations += n


def accuracy(forward, flat, images, labels) -> float:
    correct = 0
    for start in range(0, len(images), 2500):
        x = jnp.asarray(images[start:start + 2500], jnp.float32)[..., None] / 255.0
        correct += int(jnp.sum(jnp.argmax(forward(flat, x), -1) == jnp.asarray(labels[start:start + 2500])))
    return correct / len(images)


def plot(variants: list[Variant], path: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for v in variants:
        it = [c[0] for c in v.curve]
        ax.plot(it, [100 * (1 - c[1]) for c in v.curve], marker="o", markersize=3, label=v.name)
    ax.set_xlabel("iteration (one ensemble forward pass each)")
    ax.set_ylabel("test error of the ensemble mean (%)")
    ax.set_yscale("log")
    ax.set_title(title, fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", nargs="+", default=["today", "rep1"])
    parser.add_argument("--iterations", type=int, default=400)
    parser.add_argument("--members", type=int, default=500)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--chunk", type=int, default=25)
    parser.add_argument("--test-subset", type=int, default=0, help="0: all 10,000 test images")
    parser.add_argument("--wall-budget", help="stop the others when their clock passes this variant's total")
    parser.add_argument("--data-dir", default=os.environ.get("L2LJAX_MNIST_DIR"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="benchmarks/results_enkf_strategies")
    args = parser.parse_args()

    data = load_mnist(args.data_dir)
    test_images, test_labels = data.test_images, data.test_labels
    if args.test_subset:
        test_images, test_labels = test_images[:args.test_subset], test_labels[:args.test_subset]
    forward = jax.jit(build_model("lod_cnn")[0].forward_one)
    variants = [Variant(*parse_variant(spec), data, args) for spec in args.variants]
    names = [v.name for v in variants]
    budget = variants[names.index(args.wall_budget)] if args.wall_budget else None
    load = [os.getloadavg()[0]]
    while any(v.iterations < args.iterations for v in variants):
        for v in variants:
            over_budget = (budget is not None and v is not budget and budget.iterations >= args.iterations
                           and v.seconds >= budget.seconds)
            if v.iterations >= args.iterations or over_budget:
                if over_budget:
                    v.iterations = args.iterations  # stopped by the wall-time rule
                continue
            v.advance(min(args.chunk, args.iterations - v.iterations))
            acc = accuracy(forward, v.opt.averaged_mean_flat(v.state), test_images, test_labels)
            v.curve.append([int(v.state.generation), acc, v.seconds])
            print(f"{v.name:>16} it {int(v.state.generation):4d}  test {100 * acc:6.2f} %  {v.seconds:7.1f} s  "
                  f"spread {float(kalman.ensemble_spread(v.state.inner.ensemble)):.4g}  "
                  f"load {os.getloadavg()[0]:.1f}", flush=True)
            load.append(os.getloadavg()[0])

    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    report = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), **machine_info(),
              "load_average_during": [float(min(load)), float(np.mean(load)), float(max(load))],
              "members": args.members, "batch": args.batch, "iterations": args.iterations,
              "test_images": len(test_images),
              "variants": {v.name: {"config": v.config, "curve": v.curve, "seconds": v.seconds} for v in variants}}
    with open(args.out + ".json", "w") as f:
        json.dump(report, f, indent=2)
    with open(args.out + ".csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["variant", "iteration", "test_accuracy", "seconds"])
        for v in variants:
            writer.writerows([[v.name, *c] for c in v.curve])
    plot(variants, args.out + ".png", f"LOD CNN on MNIST, J = {args.members}, batch {args.batch}: EnKF strategies")
    print(f"wrote {args.out}.json/.csv/.png")


if __name__ == "__main__":
    main()
