#!/usr/bin/env python3
"""The real-size run: SA, GD and CE tune the NEST structural-plasticity network at a size beyond CI's.

Runs ``examples/nest_structural_plasticity.py``'s ``tune`` (same optimizers and settings as the
tests) on a larger network and writes ``benchmarks/results_nest_structural_plasticity.json``
(score of the initial guess, best score per generation, simulations, seconds)::

    PYTHONPATH=. python benchmarks/nest_structural_plasticity.py                 # 800 E + 200 I, 20 s simulated
    PYTHONPATH=. python benchmarks/nest_structural_plasticity.py --paper-scale   # 200 s simulated (a cluster node)
"""
import argparse
import json
import os
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "examples"))

from nest_structural_plasticity import tune  # noqa: E402

from l2ljax.optimizees import nest as sp  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--paper-scale", action="store_true")
    p.add_argument("--network", default='{"t_sim_ms": 20000, "measure_ms": 4000, "record_ms": 1000}',
                   help="JSON of changes to Network.paper_scale() (default: 20 s instead of 200 s)")
    p.add_argument("--generations", type=int, default=4)
    p.add_argument("--workers", type=int, default=None)
    p.add_argument("--out", default=str(HERE / "results_nest_structural_plasticity.json"))
    args = p.parse_args()
    network = sp.Network.paper_scale(**({} if args.paper_scale else json.loads(args.network)))
    with tempfile.TemporaryDirectory() as runs:
        report = tune(network, args.generations, args.workers, Path(runs))
    report["machine"] = {"cpus": os.cpu_count(), "nest-simulator": metadata.version("nest-simulator"),
                         "load_average_after": os.getloadavg(),
                         "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    Path(args.out).write_text(json.dumps(report, indent=1))
    print(json.dumps({k: v["best_score"] for k, v in report["runs"].items()} | {"initial": report["initial_score"]}))


if __name__ == "__main__":  # the workers start with spawn and re-import this module
    main()
