"""Nested L2L: an outer GA tunes the inner EnKF's γ, ensemble size and repetitions on MNIST.

L2L's nested example (outer GA; γ ∈ [0.009, 1] and J ∈ [9, 30] as in L2L's optimizee; repetitions
∈ [1, 3] here, where L2L's optimizee at 1fd9aa9 allows 1 to 10). All inner EnKF runs of a generation
are one vmapped program (30-member ensembles with validity masks). The reference setting is L2L's
own (see REFERENCE).
Validation: the last 10,000 training images; test: t10k.

    PYTHONPATH=. python benchmarks/l2l_nested.py --out benchmarks/results_l2l_nested.json
"""

from __future__ import annotations

import argparse
import time

import jax
import numpy as np

import l2ljax
from benchmarks.common import machine_info, write_report
from benchmarks.l2l_timing import generation_times
from l2ljax import data
from l2ljax.models import Mlp
from l2ljax.optimizees.inner import NestedEnKF

# L2L's own setting of its nested example (Meta-optimization/L2L, l2l/optimizees/snn/optimizee_enkf.py at
# 1fd9aa924e934aa076e206c280034663bad53cf0: the optimizee starts from gamma = 0.01 and repetitions = 3;
# the example script bin/l2l-enkf_optimizee.py, WASAB95/L2L_LO at 538be4a83b7b83eaac893e12e3ed90b9e6610349,
# passes ensemble_size = 10). Their inner learner is a NEST reservoir on digits 0-2, ours an MLP on all ten.
REFERENCE = (0.01, 10, 3)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--data-dir", help="MNIST IDX files (default: $L2LJAX_MNIST_DIR, else ~/.cache/l2ljax/mnist)")
    p.add_argument("--batches", type=int, default=50)
    p.add_argument("--pop", type=int, default=8)
    p.add_argument("--generations", type=int, default=6)
    p.add_argument("--inner-seeds", type=int, default=3)
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--skip-speed", action="store_true", help="skip the generation timing (see l2l_nested_profile.py)")
    p.add_argument("--out")
    args = p.parse_args()

    flat = data.flat_splits(data.load_mnist(args.data_dir))
    x_test, y_test = flat["test"]
    nested = NestedEnKF(Mlp(hidden=(10,)), train=flat["train"], validation=flat["validation"],
                        n_batches=args.batches, batch_size=32, init_std=0.1, n_seeds=args.inner_seeds)
    problem = nested.optimizee(jax.random.key(0))
    opt = l2ljax.GeneticAlgorithm(problem, pop_size=args.pop)
    params = opt.default_params.replace(ind_prob=0.5, mut_par=0.5)
    start = time.perf_counter()
    result = l2ljax.run(opt, problem, jax.random.key(1), args.generations, params=params)
    search_s = time.perf_counter() - start
    gamma, size, reps = (np.asarray(v).item() for v in nested.settings(result.best))

    fit = jax.jit(nested.fit)

    def test_accuracy(setting: tuple) -> list[float]:
        ind = nested.individual(*setting)
        return [float(nested.accuracy(fit(ind, jax.random.key(1000 + s))[0], x_test, y_test))
                for s in range(args.seeds)]

    acc_tuned, acc_ref = test_accuracy((gamma, size, reps)), test_accuracy(REFERENCE)
    speed = None
    if not args.skip_speed:
        population = opt.ask_flat(jax.random.key(5), result.state)
        speed = generation_times({"vmapped": problem, "chunks of 2": nested.optimizee(jax.random.key(0), chunk=2),
                                  "chunks of 1": nested.optimizee(jax.random.key(0), chunk=1)},
                                 population, generation=args.generations)
    report = {"machine": machine_info(), "model": "L2L MNIST MLP 784-10-10 sigmoid, no biases (7,940 weights)",
              "inner": f"EKI, {args.batches} batches of 32, init N(0, 0.1²), J_max 30 masked, repetitions_max 3, "
                       f"fitness = mean of {args.inner_seeds} inner runs",
              "outer": f"GA pop {args.pop} x {args.generations} generations", "search_seconds": search_s,
              "tuned": {"gamma": gamma, "ensemble_size": size, "repetitions": reps},
              "reference": dict(zip(("gamma", "ensemble_size", "repetitions"), REFERENCE, strict=True)),
              "reference_source": "L2L nested example: Meta-optimization/L2L optimizee_enkf.py @1fd9aa9 "
                                  "(gamma 0.01, repetitions 3), WASAB95/L2L_LO bin/l2l-enkf_optimizee.py "
                                  "@538be4a (ensemble_size 10)",
              "validation_best": float(result.best_fitness[0]),
              "test_accuracy_tuned": acc_tuned, "test_accuracy_reference": acc_ref,
              "margin_points": 100 * (np.mean(acc_tuned) - np.mean(acc_ref)), "generation_speed": speed}
    write_report(report, args.out)


if __name__ == "__main__":
    main()
