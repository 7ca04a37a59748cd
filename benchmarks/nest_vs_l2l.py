#!/usr/bin/env python3
"""l2ljax against the original L2L on the same NEST structural-plasticity optimizee, side by side.

Both run cross-entropy (pop 8, 3 generations, rho 0.25) on ``l2ljax.optimizees.nest``'s network
with the same worker count, each in a fresh process, interleaved ``--repeats`` times so that the
load of a shared machine hits both alike. Measured per run: wall time from process start to the
end (``seconds_total``) and evaluations per second over the generations once the workers run
(``seconds_generations``: L2L's ``Runner.run`` calls; l2ljax's ``run`` after one warm-up map).
Writes ``benchmarks/results_nest_vs_l2l.json``::

    PYTHONPATH=. python benchmarks/nest_vs_l2l.py [--workers 2] [--repeats 2] [--network '{"t_sim_ms": 5000}']
"""
import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def ours(args) -> dict:
    """One l2ljax run in this process (started fresh by ``main``)."""
    import jax
    import numpy as np

    import l2ljax
    from l2ljax.optimizees import nest as sp

    network = sp.Network(**json.loads(args.network))
    problem = sp.structural_plasticity_optimizee(network, n_workers=args.workers, spares=0)
    x0 = {name: np.asarray([value] * args.workers, np.float32) for name, value in problem.info["x0"].items()}
    problem.evaluate(jax.random.key(99), x0)  # warm-up: workers started, NEST imported (L2L's Runner does it first)
    opt = l2ljax.CrossEntropy(problem, pop_size=args.pop_size)
    params = opt.default_params.replace(rho=0.25)
    start = time.time()
    result = l2ljax.run(opt, problem, jax.random.key(args.seed), args.generations, params=params)
    seconds = time.time() - start
    problem.fn.pool.close()
    evaluations = args.pop_size * args.generations
    return {"peer": "l2ljax", "workers": args.workers, "pop_size": args.pop_size, "generations": args.generations,
            "evaluations": evaluations, "network": json.loads(args.network),
            "seconds_total": time.time() - args.t_spawn, "seconds_generations": seconds,
            "evaluations_per_second": evaluations / seconds, "best_score": float(result.best_score)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--pop-size", type=int, default=8)
    p.add_argument("--generations", type=int, default=3)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--network", default="{}")
    p.add_argument("--ours", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--t-spawn", type=float, help=argparse.SUPPRESS)
    p.add_argument("--out", default=str(HERE / "results_nest_vs_l2l.json"))
    args = p.parse_args()
    if args.ours:
        print(json.dumps(ours(args)))
        return
    common = ["--workers", str(args.workers), "--pop-size", str(args.pop_size), "--generations",
              str(args.generations), "--seed", str(args.seed), "--network", args.network]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(HERE.parent), os.environ.get("PYTHONPATH", "")]),
               JAX_PLATFORMS="cpu")
    runs = []
    for repeat in range(args.repeats):
        for who in ("l2ljax", "l2lforhpc"):
            if who == "l2ljax":
                command = [sys.executable, __file__, "--ours", "--t-spawn", repr(time.time()), *common]
            else:
                command = [sys.executable, str(HERE / "peer_l2l_nest.py"), *common]
            done = subprocess.run(command, env=env, capture_output=True, text=True)
            lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
            if done.returncode or not lines:
                raise RuntimeError(f"{who} failed:\n{done.stderr[-3000:]}")
            record = json.loads(lines[-1]) | {"repeat": repeat}
            runs.append(record)
            print(json.dumps(record), flush=True)

    def median(who, key):
        return statistics.median(r[key] for r in runs if r["peer"] == who)

    summary = {key: {"l2ljax": median("l2ljax", key), "l2lforhpc": median("l2lforhpc", key)}
               for key in ("seconds_total", "seconds_generations", "evaluations_per_second")}
    summary["speedup_evaluations_per_second"] = (summary["evaluations_per_second"]["l2ljax"]
                                                 / summary["evaluations_per_second"]["l2lforhpc"])
    summary["speedup_wall"] = summary["seconds_total"]["l2lforhpc"] / summary["seconds_total"]["l2ljax"]
    from importlib import metadata

    machine = {"cpus": os.cpu_count(), "processor": platform.processor() or platform.machine(),
               "python": platform.python_version(), "nest-simulator": metadata.version("nest-simulator"),
               "load_average_after": os.getloadavg(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    Path(args.out).write_text(json.dumps({"machine": machine, "summary": summary, "runs": runs}, indent=1))
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
