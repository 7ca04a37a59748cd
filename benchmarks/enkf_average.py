"""Iterate averaging of the EnKF ensemble mean on MNIST: one trajectory, several averages tested.

    PYTHONPATH=. python benchmarks/enkf_average.py SEED VARIANT [VARIANT ...]

VARIANT as in ``enkf_strategies.py`` (e.g. ``g1=repetitions:1,gamma:0.1,additive:0.06,additive_cov:ensemble``).
Averaging never steers the ensemble, so one run serves every decay: after each iteration the
ensemble mean ū_n updates exponential moving averages (β = 0.9, 0.95, 0.98, debiased as
``EnsembleKalmanFilter.averaged_mean_flat`` does) and a uniform tail average from iteration 201
(Polyak & Juditsky 1992). Every 25 iterations the test accuracy of each is printed; the curves
go to ``benchmarks/results_enkf_average_seed{SEED}.json``.
"""

import json
import os
import sys

import enkf_strategies as strategies
import jax
import jax.numpy as jnp

from l2ljax.data import load_mnist
from l2ljax.optimizees.mnist import build_model

BETAS = (0.9, 0.95, 0.98)
TAIL_FROM = 200


def main() -> None:
    seed, specs = int(sys.argv[1]), sys.argv[2:]
    args = type("Args", (), {"members": 500, "batch": 64, "seed": seed})()
    data = load_mnist(os.environ.get("L2LJAX_MNIST_DIR"))
    forward = jax.jit(build_model("lod_cnn")[0].forward_one)
    mean_of = jax.jit(lambda ensemble: jnp.mean(ensemble, 0))
    ema_step = jax.jit(lambda average, mean, beta: beta * average + (1 - beta) * mean)
    curves = {}
    for spec in specs:
        variant = strategies.Variant(*strategies.parse_variant(spec), data, args)
        emas = {beta: jnp.zeros(variant.state.inner.ensemble.shape[1]) for beta in BETAS}
        tail, tail_count, rows = None, 0, []
        for iteration in range(1, 401):
            variant.advance(1)
            mean = mean_of(variant.state.inner.ensemble)
            emas = {beta: ema_step(average, mean, beta) for beta, average in emas.items()}
            if iteration > TAIL_FROM:
                tail_count += 1
                tail = mean if tail is None else tail + (mean - tail) / tail_count
            if iteration % 25 == 0:
                def test(flat):
                    return strategies.accuracy(forward, flat, data.test_images, data.test_labels)
                row = {"iteration": iteration, "seconds": variant.seconds, "latest": test(mean)}
                row.update({f"ema{beta}": test(average / (1 - beta ** iteration)) for beta, average in emas.items()})
                if tail is not None:
                    row[f"tail{TAIL_FROM}"] = test(tail)
                rows.append(row)
                print(variant.name, seed, "  ".join(f"{k} {v:.4f}" for k, v in row.items()), flush=True)
        curves[spec] = rows
    with open(f"benchmarks/results_enkf_average_seed{seed}.json", "w") as f:
        json.dump({**strategies.machine_info(), "members": 500, "batch": 64, "curves": curves}, f, indent=1)


if __name__ == "__main__":
    main()
