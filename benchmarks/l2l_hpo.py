"""Tune SGD's learning rate, momentum and init scale of an MNIST MLP by CMA-ES over whole trainings.

Each individual is a 300-step training (one ``lax.scan``); a generation is one vmapped program.
Validation: the last 10,000 training images (never trained on); test: the 10,000 t10k images.

    PYTHONPATH=. python benchmarks/l2l_hpo.py --out benchmarks/results_l2l_hpo.json
"""

from __future__ import annotations

import argparse
import time

import jax
import numpy as np
import optax

import l2ljax
from benchmarks.common import machine_info, write_report
from benchmarks.l2l_timing import generation_times
from l2ljax import data
from l2ljax.models import Mlp
from l2ljax.optimizees.inner import Hyperparameter, InnerTraining

BASELINE = {"learning_rate": 0.01, "momentum": 0.0, "init_scale": 1.0}  # plain SGD at a textbook step


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--data-dir", help="MNIST IDX files (default: $L2LJAX_MNIST_DIR, else ~/.cache/l2ljax/mnist)")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--pop", type=int, default=12)
    p.add_argument("--generations", type=int, default=8)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--out")
    args = p.parse_args()

    flat = data.flat_splits(data.load_mnist(args.data_dir))
    x_test, y_test = flat["test"]
    splits = {"train": flat["train"], "validation": flat["validation"], "n_steps": args.steps,
              "batch_size": 64}
    model = Mlp(hidden=(64,), use_bias=True)
    hpo = InnerTraining(model, lambda h: optax.sgd(h["learning_rate"], momentum=h["momentum"]),
                        {"learning_rate": Hyperparameter(1e-3, 3.0, log=True), "momentum": Hyperparameter(0.0, 0.99),
                         "init_scale": Hyperparameter(0.1, 3.0, log=True)}, **splits)
    # optax's best-known default: Adam at Kingma & Ba's 1e-3, flax's init (init_scale fixed at 1)
    adam = InnerTraining(model, lambda h: optax.adam(1e-3), {"init_scale": Hyperparameter(0.1, 3.0, log=True)},
                         **splits)
    problem = hpo.optimizee(jax.random.key(0))
    opt = l2ljax.CMAES(problem, pop_size=args.pop)
    start = time.perf_counter()
    result = l2ljax.run(opt, problem, jax.random.key(1), args.generations)
    search_s = time.perf_counter() - start
    tuned = hpo.values(result.best)

    def test_accuracy(inner: InnerTraining, values: dict) -> list[float]:
        fit, ind = jax.jit(inner.fit), inner.individual(values)
        out = []
        for s in range(args.seeds):
            params, loss = fit(ind, jax.random.key(1000 + s))
            out.append(float(inner.score(params, loss, x_test, y_test)))
        return out

    acc_tuned, acc_base = test_accuracy(hpo, tuned), test_accuracy(hpo, BASELINE)
    acc_adam = test_accuracy(adam, {"init_scale": 1.0})
    population = opt.ask_flat(jax.random.key(5), result.state)
    speed = generation_times({"vmapped": problem, "chunks of 2": hpo.optimizee(jax.random.key(0), chunk=2),
                              "chunks of 1": hpo.optimizee(jax.random.key(0), chunk=1)},
                             population, generation=args.generations)
    report = {"machine": machine_info(), "model": "MLP 784-64-10 (sigmoid, biases)", "steps": args.steps,
              "batch": 64, "outer": f"CMA-ES pop {args.pop} x {args.generations} generations",
              "search_seconds": search_s, "tuned": tuned, "baseline": BASELINE,
              "validation_best": float(result.best_fitness[0]),
              "test_accuracy_tuned": acc_tuned, "test_accuracy_baseline": acc_base,
              "test_accuracy_adam_default": acc_adam,
              "margin_points": 100 * (np.mean(acc_tuned) - np.mean(acc_base)),
              "margin_over_adam_points": 100 * (np.mean(acc_tuned) - np.mean(acc_adam)), "generation_speed": speed}
    write_report(report, args.out)


if __name__ == "__main__":
    main()
