"""PyTorch reference of the LOD 2020 EnKF training loop, timed per iteration.

The independent peer for l2ljax's speed benchmarks (it does not import l2ljax). It
does what Yegenoglu, Krajsek, Diaz Pier & Herty, "Ensemble Kalman Filter Optimizing
Deep Neural Networks", LOD 2020, LNCS 12565, did, following Iglesias, Law & Stuart
2013 (Inverse Problems 29:045001):

* ensemble U (J, P) of LodCNN weight vectors, P = 18,050, drawn N(0, 0.1^2);
* forward: each member in turn, in a Python loop (conv 1->10 5x5 -> sigmoid ->
  max-pool 2 -> conv 10->20 5x5 -> sigmoid -> flatten 1280 -> linear 1280->10,
  no biases), giving G (J, B, 10);
* update: the B samples one at a time, each with its stale G_b = G[:, b] (J, 10)
  and the current U:
      A_g = G_b - mean_j G_b,  A_u = U - mean_j U,
      C_pp = A_g^T A_g / J (10x10),  C_up = A_u^T A_g / J (P x 10),
      X = lstsq(C_pp + gamma I, (y_b - G_b)^T) (10 x J),  U <- U + (C_up X)^T.

Images are uniform random of MNIST shape and targets random one-hot (fixed seed):
the timings do not depend on the data.

    /work/envs/torch/bin/python benchmarks/lod_reference_torch.py --members 100

prints one JSON object with seconds per iteration, split into forward and update.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
import torch.nn.functional as F

# LodCNN parameter layout in torch's (out, in, kh, kw) convention; P = 18,050.
SHAPES = {"conv1": (10, 1, 5, 5), "conv2": (20, 10, 5, 5), "dense": (10, 1280)}
N_PARAMS = sum(torch.Size(s).numel() for s in SHAPES.values())


def unflatten(u: torch.Tensor) -> dict[str, torch.Tensor]:
    """Views of one member's flat (P,) vector as the LodCNN weight tensors."""
    out, start = {}, 0
    for name, shape in SHAPES.items():
        size = torch.Size(shape).numel()
        out[name] = u[start : start + size].view(shape)
        start += size
    return out


def forward_one(u: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    """LodCNN logits (B, 10) of one member; images (B, 1, 28, 28)."""
    w = unflatten(u)
    x = F.max_pool2d(torch.sigmoid(F.conv2d(images, w["conv1"])), 2)
    x = torch.sigmoid(F.conv2d(x, w["conv2"]))
    return F.linear(x.flatten(1), w["dense"])


def forward_loop(ensemble: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    """G (J, B, 10): the members one at a time, as the LOD code did."""
    return torch.stack([forward_one(u, images) for u in ensemble])


def enkf_update_sequential(
    ensemble: torch.Tensor, outputs: torch.Tensor, targets: torch.Tensor, gamma: float
) -> torch.Tensor:
    """LOD's sample-sequential EnKF update; outputs (J, B, K) are stale, targets (B, K)."""
    n_members, _, n_classes = outputs.shape
    eye = torch.eye(n_classes, dtype=outputs.dtype, device=outputs.device)
    for b in range(outputs.shape[1]):
        g = outputs[:, b]  # (J, K)
        a_g = g - g.mean(0)
        a_u = ensemble - ensemble.mean(0)
        c_pp = a_g.T @ a_g / n_members
        c_up = a_u.T @ a_g / n_members
        x = torch.linalg.lstsq(c_pp + gamma * eye, (targets[b] - g).T).solution  # (K, J)
        ensemble = ensemble + (c_up @ x).T
    return ensemble


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--members", type=int, default=100, help="ensemble size J")
    parser.add_argument("--batch", type=int, default=64, help="minibatch size B")
    parser.add_argument("--iterations", type=int, default=3, help="timed iterations (after 1 warm-up)")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op CPU threads")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--gamma", type=float, default=0.01, help="observation noise, Gamma = gamma I")
    parser.add_argument("--init-std", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    generator = torch.Generator().manual_seed(args.seed)
    n_iter = args.iterations + 1
    images = torch.rand((n_iter, args.batch, 1, 28, 28), generator=generator).to(device)
    labels = torch.randint(0, 10, (n_iter, args.batch), generator=generator)
    targets = F.one_hot(labels, 10).float().to(device)
    ensemble = (args.init_std * torch.randn((args.members, N_PARAMS), generator=generator)).to(device)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    forward_s, update_s = [], []
    with torch.inference_mode():
        for it in range(n_iter):
            sync()
            t0 = time.perf_counter()
            outputs = forward_loop(ensemble, images[it])
            sync()
            t1 = time.perf_counter()
            ensemble = enkf_update_sequential(ensemble, outputs, targets[it], args.gamma)
            sync()
            t2 = time.perf_counter()
            if it > 0:  # iteration 0 is the warm-up
                forward_s.append(t1 - t0)
                update_s.append(t2 - t1)

    result = {
        "benchmark": "lod_reference_torch",
        "members": args.members,
        "batch": args.batch,
        "n_params": N_PARAMS,
        "iterations": args.iterations,
        "threads": args.threads,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "forward_s": statistics.mean(forward_s),
        "update_s": statistics.mean(update_s),
        "total_s": statistics.mean(forward_s) + statistics.mean(update_s),
        "min_total_s": min(f + u for f, u in zip(forward_s, update_s, strict=True)),
        "ensemble_finite": bool(torch.isfinite(ensemble).all()),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
