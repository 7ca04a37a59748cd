"""Where one main-job EnKF iteration goes, and what the two cost cuts of issue #11 save, side by side.

    PYTHONPATH=. python benchmarks/enkf_iteration_parts.py --members 500 --out benchmarks/results_enkf_parts.json

LOD CNN (P = 18,050), batch 64 (M = 640), sample-sequential update. Best of ``--repeats`` after a
compile, in one process, alternating the variants of each pair:

- the composed sequential update with its low-rank product in each order: ``U + (L S) U`` (a
  J × J transform, chosen when cheaper) against ``U + L (S U)`` (the order before);
- the J × P additive-noise normals from threefry against the counter-based hash;
- the whole generation step (``make_step``, what ``run`` executes) for LOD's setting and the main
  job's defaults with either generator.
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
from common import machine_info, write_report

import l2ljax.kalman.eki as eki
from l2ljax import kalman
from l2ljax.optimizees.mnist import mnist_optimizee
from l2ljax.optimizers.enkf import EnsembleKalmanFilter
from l2ljax.rows import everything
from l2ljax.run import make_step


def best(fn, *args, repeats: int) -> float:
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return min(times)


def update_orders(J: int, P: int, B: int, repeats: int) -> dict:
    U = 0.1 * jax.random.normal(jax.random.key(0), (J, P))
    G = jax.random.normal(jax.random.key(1), (J, B, 10))
    y = jax.nn.one_hot(jnp.arange(B) % 10, 10)
    chosen = eki._member_space_cheaper
    out = {"member_space_chosen": bool(chosen(everything(J), J, B * 10, P))}
    for name, rule in (("member_space_order_s", lambda *a: True), ("data_space_order_s", lambda *a: False)):
        eki._member_space_cheaper = rule
        jax.clear_caches()  # retrace with the forced order
        try:
            out[name] = best(lambda U: kalman.eki_update_sequential(jax.random.key(2), U, G, y, 0.1,
                                                                    form="observation"), U, repeats=repeats)
        finally:
            eki._member_space_cheaper = chosen
    jax.clear_caches()
    return out


def generators(J: int, P: int, repeats: int) -> dict:
    U = jnp.zeros((J, P))
    out = {}
    for generator in ("threefry", "hash"):
        fn = jax.jit(lambda k, U, g=generator: kalman.additive_inflation(k, U, 0.06, std=1.0, generator=g))
        out[f"additive_noise_{generator}_s"] = best(fn, jax.random.key(3), U, repeats=repeats)
    return out


def steps(J: int, B: int, repeats: int, data_dir: str | None) -> dict:
    from l2ljax.data import load_mnist

    data = load_mnist(data_dir)
    variants = {"lod_setting": dict(repetitions=8, gamma=0.01, additive=0.0, average=0.0, generator="threefry"),
                "defaults_threefry": dict(repetitions=1, gamma=0.2, additive=0.08, average=0.9, generator="threefry"),
                "defaults_hash": dict(repetitions=1, gamma=0.2, additive=0.08, average=0.9, generator="hash"),
                # the defaults without their noise, and LOD's setting with each batch once: what is left
                "defaults_without_noise": dict(repetitions=1, gamma=0.2, additive=0.0, average=0.9, generator="hash"),
                "lod_setting_each_batch_once": dict(repetitions=1, gamma=0.01, additive=0.0, average=0.0,
                                                    generator="threefry")}
    out = {}
    compiled = {}
    for name, v in variants.items():
        problem = mnist_optimizee(data.train_images, data.train_labels, batch_size=B, repetitions=v["repetitions"])
        opt = EnsembleKalmanFilter(problem, pop_size=J, sequential=True, outputs_per_sample=10,
                                   additive_cov="ensemble", additive_generator=v["generator"])
        params = opt.default_params.replace(gamma=v["gamma"], additive_inflation=v["additive"],
                                            average_decay=v["average"])
        state = opt.init(jax.random.key(0), params)
        compiled[name] = (jax.jit(make_step(opt, problem, keep_population=False, summary=True)), state)
    for _ in range(repeats):  # alternate the variants so that drifting load hits them alike
        for name, (step, state) in compiled.items():
            seconds = best(lambda s, step=step: step(s, jax.random.key(1))[0], state, repeats=1)
            out[f"step_{name}_s"] = min(out.get(f"step_{name}_s", float("inf")), seconds)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--members", type=int, default=500)
    parser.add_argument("--params", type=int, default=18050)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--data-dir")
    parser.add_argument("--out")
    args = parser.parse_args()
    report = {**machine_info(), "members": args.members, "params": args.params, "batch": args.batch}
    report.update(update_orders(args.members, args.params, args.batch, args.repeats))
    report.update(generators(args.members, args.params, args.repeats))
    report.update(steps(args.members, args.batch, args.repeats, args.data_dir))
    write_report(report, args.out)


if __name__ == "__main__":
    main()
