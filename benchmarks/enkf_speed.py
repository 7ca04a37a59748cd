"""One EnKF iteration (ensemble forward + update) on the LOD CNN, side by side with the PyTorch
reference of the LOD algorithm (``lod_reference_torch.py``: members looped one at a time, 64
sequential lstsq updates), on the same machine in the same run.

    python benchmarks/enkf_speed.py --members 500 [--torch-python /work/envs/torch/bin/python]

Times (best of ``--repeats`` after a warm-up compile): forward with each formulation (vmap of the
single-member forward, member-chunked, grouped convolution), the whole-batch update (M = B·10)
and the LOD sample-sequential update, and the full l2ljax generation step (what ``run`` executes).
Precision: float32 with XLA's default matmul/conv precision on the platform; the first
formulation is also timed in bfloat16 (weights and images cast), with its logit error.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import time

import jax
import jax.numpy as jnp
import numpy as np
from common import machine_info, write_report

from l2ljax import kalman, models
from l2ljax.core import as_key
from l2ljax.optimizees.mnist import mnist_optimizee
from l2ljax.optimizers.enkf import EnsembleKalmanFilter
from l2ljax.run import make_step

HERE = os.path.dirname(os.path.abspath(__file__))


def best_time(fn, *args, repeats: int) -> float:
    jax.block_until_ready(fn(*args))
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        best = min(best, time.perf_counter() - start)
    return best


def jax_side(members: int, batch: int, repeats: int, formulations: list[str]) -> dict:
    key = jax.random.key(0)
    ens = models.make_ensemble(models.LodCNN(), jnp.zeros((1, 28, 28, 1)))
    U = ens.init_ensemble(key, members, 0.1)
    images = jax.random.uniform(jax.random.key(1), (batch, 28, 28, 1))
    y = jax.nn.one_hot(jax.random.randint(jax.random.key(2), (batch,), 0, 10), 10)
    out: dict = {}
    forwards = {"vmap": jax.jit(ens.forward_ensemble), "mapped": jax.jit(models.forward_ensemble_mapped),
                "grouped": jax.jit(models.forward_ensemble_grouped)}
    reference = None
    for name in formulations:
        seconds = best_time(forwards[name], U, images, repeats=repeats)
        logits = forwards[name](U, images)
        reference = logits if reference is None else reference
        out[f"forward_{name}_s"] = seconds
        out[f"forward_{name}_max_abs_diff"] = float(jnp.max(jnp.abs(logits - reference)))
        print(json.dumps({name: seconds}), flush=True)
    best = forwards[formulations[0]]
    out[f"forward_{formulations[0]}_bf16_s"] = best_time(best, U.astype(jnp.bfloat16), images.astype(jnp.bfloat16),
                                                         repeats=repeats)
    bf16 = best(U.astype(jnp.bfloat16), images.astype(jnp.bfloat16)).astype(jnp.float32)
    out["bf16_max_abs_logit_diff"] = float(jnp.max(jnp.abs(bf16 - reference)))
    out["bf16_argmax_agreement"] = float(jnp.mean(jnp.argmax(bf16, -1) == jnp.argmax(reference, -1)))
    print(json.dumps({k: v for k, v in out.items() if "bf16" in k}), flush=True)
    G = forwards[formulations[0]](U, images)
    batch_update = jax.jit(lambda k, U, G: kalman.eki_update(k, U, G.reshape(members, -1), y.ravel(), 0.01))
    seq_update = jax.jit(lambda k, U, G: kalman.eki_update_sequential(k, U, G, y, 0.01))
    out["update_batch_s"] = best_time(batch_update, key, U, G, repeats=repeats)
    out["update_sequential_s"] = best_time(seq_update, key, U, G, repeats=repeats)
    print(json.dumps({k: v for k, v in out.items() if k.startswith("update")}), flush=True)

    # The real generation step of l2ljax.run (data selection + fast forward + update + bookkeeping).
    rng = np.random.default_rng(0)
    fake_images = rng.integers(0, 256, (6400, 28, 28), dtype=np.uint8)
    fake_labels = rng.integers(0, 10, 6400)
    problem = mnist_optimizee(fake_images, fake_labels, batch_size=batch)
    for mode in ("sequential", "batch"):
        opt = EnsembleKalmanFilter(problem, pop_size=members, sequential=mode == "sequential",
                                   outputs_per_sample=10)
        state = opt.init(as_key(key))
        step = jax.jit(make_step(opt, problem, keep_population=False))
        out[f"step_{mode}_s"] = best_time(lambda s, step=step: step(s, key)[0], state, repeats=repeats)
        print(json.dumps({f"step_{mode}_s": out[f"step_{mode}_s"]}), flush=True)
    return out


def torch_side(python: str, members: int, batch: int, iterations: int, threads: int, device: str) -> dict:
    cmd = [python, os.path.join(HERE, "lod_reference_torch.py"), "--members", str(members), "--batch",
           str(batch), "--iterations", str(iterations), "--threads", str(threads), "--device", device]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=3600, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--members", type=int, default=500)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--formulations", nargs="*", default=None)
    parser.add_argument("--torch-python", default="/work/envs/torch/bin/python")
    parser.add_argument("--torch-iterations", type=int, default=2)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--torch-device", default="cuda" if jax.default_backend() == "gpu" else "cpu")
    parser.add_argument("--skip-torch", action="store_true")
    parser.add_argument("--json")
    args = parser.parse_args()
    gpu = jax.default_backend() == "gpu"
    formulations = args.formulations or (["grouped", "vmap", "mapped"] if gpu else ["mapped", "vmap", "grouped"])
    report = {**machine_info(), "members": args.members, "batch": args.batch,
              "l2ljax": jax_side(args.members, args.batch, args.repeats, formulations)}
    if not args.skip_torch:
        report["torch_reference"] = torch_side(args.torch_python, args.members, args.batch,
                                               args.torch_iterations, args.threads, args.torch_device)
        ref = report["torch_reference"]["min_total_s"]  # best iteration of the reference, as ours is best-of
        report["speedup_vs_reference_sequential"] = ref / report["l2ljax"]["step_sequential_s"]
        report["speedup_vs_reference_batch"] = ref / report["l2ljax"]["step_batch_s"]
    write_report(report, args.json)


if __name__ == "__main__":
    main()
