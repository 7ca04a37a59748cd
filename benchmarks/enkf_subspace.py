"""How much does the ensemble subspace limit MNIST accuracy? A gradient-based upper bound.

Plain EKI keeps every member in ū₀ + span(E₀), the (J − 1)-dimensional affine span of the initial
ensemble (``docs/kalman.md``). The best any span-preserving EKI variant can reach is the best
network in that span. This diagnostic finds it with gradients (Adam on the J coefficients w of
``u = ū₀ + E₀ᵀ w``; the EnKF itself never uses gradients) and compares with Adam on all 18,050
weights, the same initial ensemble draw (N(0, 0.1²)) and steps, so the gap is the price of the
subspace (Li et al. 2018, *Measuring the intrinsic dimension of objective landscapes*, ICLR).

    PYTHONPATH=. python benchmarks/enkf_subspace.py --members 100 500 2000 --steps 1500
"""

from __future__ import annotations

import argparse
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from common import machine_info

from l2ljax.data import load_mnist
from l2ljax.optimizees.mnist import build_model


def train(loss_of, theta0, images, labels, steps, batch, lr, seed):
    opt = optax.adam(lr)

    @jax.jit
    def step(theta, state, idx):
        x = images[idx].astype(jnp.float32)[..., None] / 255.0
        loss, grad = jax.value_and_grad(loss_of)(theta, x, labels[idx])
        updates, state = opt.update(grad, state)
        return optax.apply_updates(theta, updates), state, loss

    theta, state = theta0, opt.init(theta0)
    key = jax.random.key(seed)
    for n in range(steps):
        idx = jax.random.randint(jax.random.fold_in(key, n), (batch,), 0, images.shape[0])
        theta, state, _ = step(theta, state, idx)
    return theta


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--members", type=int, nargs="+", default=[100, 500, 2000])
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--data-dir", default=os.environ.get("L2LJAX_MNIST_DIR"))
    parser.add_argument("--json", default="benchmarks/results_enkf_subspace.json")
    args = parser.parse_args()

    data = load_mnist(args.data_dir)
    images, labels = jnp.asarray(data.train_images), jnp.asarray(data.train_labels.astype(np.int32))
    test_x = jnp.asarray(data.test_images, jnp.float32)[..., None] / 255.0
    test_y = jnp.asarray(data.test_labels)
    model = build_model("lod_cnn")[0]
    forward = model.forward_one

    def xent(flat, x, y):
        return optax.softmax_cross_entropy_with_integer_labels(forward(flat, x), y).mean()

    def accuracy(flat):
        return float(jnp.mean(jnp.argmax(jax.jit(forward)(flat, test_x), -1) == test_y))

    rows = {}
    start = time.perf_counter()
    full0 = 0.1 * jax.random.normal(jax.random.key(0), (model.n_params,))
    rows["full (18,050 weights)"] = accuracy(train(xent, full0, images, labels, args.steps, args.batch, args.lr, 1))
    print(rows, flush=True)
    for J in args.members:
        U = 0.1 * jax.random.normal(jax.random.key(0), (J, model.n_params))
        mean, E = U.mean(0), U - U.mean(0)  # the span of the initial ensemble's anomalies

        def sub_loss(w, x, y, mean=mean, E=E):
            return xent(mean + w @ E, x, y)

        w = train(sub_loss, jnp.zeros(J), images, labels, args.steps, args.batch, args.lr, 1)
        rows[f"span of J = {J} members"] = accuracy(mean + w @ E)
        print(rows, flush=True)
    report = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), **machine_info(), "steps": args.steps,
              "batch": args.batch, "lr": args.lr, "test_accuracy": rows, "seconds": time.perf_counter() - start}
    with open(args.json, "w") as f:
        json.dump(report, f, indent=2)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
