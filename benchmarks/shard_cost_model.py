"""The cost model of a sharded EnKF update against a replicated one (l2ljax.kalman.eki, "Sharded ensembles").

    python benchmarks/shard_cost_model.py [--flops 5e13] [--bandwidth 2.5e10] [--output -]

Per iteration and per rank, whole-batch observation form, float32, J members over R ranks
(J_r = J/R), P weights, M outputs (batch × classes):

    replicated (evaluation split, outputs gathered):
        update flops  4·J·M·P + 2·J·M² + M³/3               (every rank runs the whole update)
        bytes moved   4·J·M·(R−1)/R                          (all-gather of the outputs)
        ensemble      4·J·P bytes per rank
    sharded (each rank its rows):
        update flops  4·J_r·M·P + 2·J_r·M² + M³/3
        bytes moved   2·4·(M·P + M² + P + M)·(R−1)/R         (ring all-reduce of C_up, C_pp, means)
        ensemble      4·J_r·P bytes per rank

Time = flops / F + bytes / BW (no overlap assumed; the forward pass, J_r members either way, is
left out since it is the same in both). F: sustained float32 matmul rate of one GPU (default 50
TFLOP/s, an H100 without TF32); BW: per-node network bandwidth (default 25 GB/s, one HDR-200
InfiniBand link; NVLink inside a node is ~10x more). Assumptions, not measurements.
"""

from __future__ import annotations

import argparse
import json
import sys

P, M = 18_050, 640


def costs(J: int, R: int, flops: float, bandwidth: float) -> dict:
    share = (R - 1) / R
    rep_flops = 4 * J * M * P + 2 * J * M * M + M**3 / 3
    shard_flops = 4 * (J / R) * M * P + 2 * (J / R) * M * M + M**3 / 3
    rep_bytes = 4 * J * M * share
    shard_bytes = 2 * 4 * (M * P + M * M + P + M) * share
    rep_ms = 1e3 * (rep_flops / flops + rep_bytes / bandwidth)
    shard_ms = 1e3 * (shard_flops / flops + shard_bytes / bandwidth)
    return {"J": J, "ranks": R, "replicated_ms": rep_ms, "sharded_ms": shard_ms, "speedup": rep_ms / shard_ms,
            "replicated_MB_moved": rep_bytes / 1e6, "sharded_MB_moved": shard_bytes / 1e6,
            "replicated_ensemble_GB": 4 * J * P / 1e9, "sharded_ensemble_GB": 4 * J * P / R / 1e9}


def break_even_members(R: int, flops: float, bandwidth: float) -> float:
    """The J above which the sharded update is faster: 4JMP(1−1/R)/F > (8(MP+M²+P+M) − 4JM)(R−1)/R / BW."""
    share = (R - 1) / R
    numerator = 8 * (M * P + M * M + P + M) * share / bandwidth
    per_member = (4 * M * P + 2 * M * M) * share / flops + 4 * M * share / bandwidth
    return numerator / per_member


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--flops", type=float, default=5e13)
    parser.add_argument("--bandwidth", type=float, default=2.5e10)
    parser.add_argument("--output", default="-")
    args = parser.parse_args()
    table = [costs(J, R, args.flops, args.bandwidth) for J in (5_000, 20_000, 100_000) for R in (1, 2, 8, 64)]
    report = {"assumptions": {"flops": args.flops, "bandwidth": args.bandwidth, "P": P, "M": M},
              "break_even_members": {R: break_even_members(R, args.flops, args.bandwidth) for R in (2, 8, 64)},
              "table": table}
    text = json.dumps(report, indent=1)
    if args.output == "-":
        print("   J  ranks  replicated ms  sharded ms  speedup  MB moved rep/shard  ensemble GB rep/shard")
        for row in table:
            print(f"{row['J']:>7} {row['ranks']:>4} {row['replicated_ms']:>12.2f} {row['sharded_ms']:>11.2f} "
                  f"{row['speedup']:>7.2f}  {row['replicated_MB_moved']:>8.1f}/{row['sharded_MB_moved']:<8.1f} "
                  f"{row['replicated_ensemble_GB']:>6.2f}/{row['sharded_ensemble_GB']:.3f}")
        print("break-even J:", {R: round(v) for R, v in report["break_even_members"].items()})
    else:
        with open(args.output, "w") if args.output != "-" else sys.stdout as f:
            f.write(text)


if __name__ == "__main__":
    main()
