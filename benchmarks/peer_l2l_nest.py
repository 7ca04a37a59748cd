#!/usr/bin/env python3
"""Peer benchmark: the original L2L (PyPI ``l2lforhpc``) tuning l2ljax's NEST structural-plasticity network.

Runs L2L's CrossEntropy on the same network code as l2ljax (``l2ljax/optimizees/nest.py``, loaded
by path: it needs only numpy and NEST) in L2L's local mode, and prints ONE JSON line::

    {"peer": "l2lforhpc", "workers": ..., "pop_size": ..., "generations": ..., "evaluations": ...,
     "seconds_total": ..., "seconds_generations": ..., "evaluations_per_second": ..., "best_score": ...}

Needs a Python with ``l2l`` and ``nest`` (``python3 -m venv /work/peers/l2l &&
/work/peers/l2l/bin/pip install l2lforhpc nest-simulator``); started with another Python it
re-runs itself under ``--python``. The experiment runs in a child process in its own session;
L2L leaves its idle workers polling after the run, so the parent kills the whole process group
when the child ends, on ``--timeout`` and on SIGINT/SIGTERM (``peer_l2l._kill_group``).

L2L's workers are persistent processes that poll an input file every 5 s and unpickle the
optimizee and the generation's trajectory per individual; ``max_workers`` is the worker count.
"""
import argparse
import importlib.util
import json
import os
import signal
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
NETWORK_FILE = os.path.join(HERE, os.pardir, "l2ljax", "optimizees", "nest.py")
DEFAULT_PYTHON = "/work/peers/l2l/bin/python"

try:  # only the child (L2L's Python) needs L2L; the workers unpickle this module's optimizee
    from l2l.optimizees.optimizee import Optimizee as _L2LOptimizee
except ImportError:
    _L2LOptimizee = object


def load_network():
    """l2ljax's network module, loaded by path (this Python has no JAX and no l2ljax)."""
    if "l2ljax_nest_network" not in sys.modules:
        spec = importlib.util.spec_from_file_location("l2ljax_nest_network", NETWORK_FILE)
        module = importlib.util.module_from_spec(spec)
        sys.modules["l2ljax_nest_network"] = module
        spec.loader.exec_module(module)
    return sys.modules["l2ljax_nest_network"]


class StructuralPlasticityOptimizee(_L2LOptimizee):
    """L2L's optimizee interface around ``simulate_fitness``: the same individuals, bounds and objectives."""

    def __init__(self, traj, seed, network_changes):
        super().__init__(traj)
        self.seed, self.network_changes = seed, network_changes
        self.random_state = __import__("numpy").random.RandomState(seed)

    def _network(self):
        return load_network().Network(**self.network_changes)

    def create_individual(self):
        net = load_network()
        return {name: float(self.random_state.uniform(net.PARAMETERS[name].lower, net.PARAMETERS[name].upper))
                for name in net.TUNED}

    def bounding_func(self, individual):
        net = load_network()
        return {name: float(min(max(value, net.PARAMETERS[name].lower), net.PARAMETERS[name].upper))
                for name, value in individual.items()}

    def simulate(self, traj):
        net = load_network()
        individual = traj.individual
        params = {name: float(getattr(individual, name)) for name in net.TUNED}
        seed = (self.seed * 1_000_003 + traj.individual.generation * 1009 + individual.ind_idx) % (2**31 - 1)
        return tuple(float(v) for v in net.simulate_fitness(params, seed, self._network()))


def run_child(args):
    t_spawn = args.t_spawn
    import l2l.utils.runner as l2l_runner
    import numpy as np
    import peer_l2l_nest  # this module by name, so that L2L's workers can unpickle the optimizee
    from l2l.optimizers.crossentropy import CrossEntropyOptimizer, CrossEntropyParameters
    from l2l.optimizers.crossentropy.distribution import Gaussian
    from l2l.utils.experiment import Experiment

    generations = []  # (start, end, n_results) of each Runner.run
    original_run = l2l_runner.Runner.run

    def timed_run(self, trajectory, generation):
        start = time.time()
        results = original_run(self, trajectory, generation)
        generations.append((start, time.time(), len(results)))
        return results

    l2l_runner.Runner.run = timed_run
    np.random.seed(args.seed)
    experiment = Experiment(root_dir_path=os.path.join(args.workdir, "results"))
    traj, _ = experiment.prepare_experiment(
        name="peer-l2l-nest", log_stdout=False,
        runner_params={"srun": "", "exec": sys.executable, "max_workers": args.workers})
    network = json.loads(args.network)
    optimizee = peer_l2l_nest.StructuralPlasticityOptimizee(traj, args.seed, network)
    weights = tuple(load_network().WEIGHTS)
    params = CrossEntropyParameters(pop_size=args.pop_size, rho=0.25, smoothing=0.0, temp_decay=0,
                                    n_iteration=args.generations, distribution=Gaussian(),
                                    stop_criterion=np.inf, seed=args.seed)
    optimizer = CrossEntropyOptimizer(traj, optimizee_create_individual=optimizee.create_individual,
                                      optimizee_fitness_weights=weights, parameters=params,
                                      optimizee_bounding_func=optimizee.bounding_func)
    scores = []
    original_post = optimizer.post_process

    def post_process(traj_, fitnesses_results):
        scores.extend(float(np.dot(f, weights)) for _, f in fitnesses_results)
        return original_post(traj_, fitnesses_results)

    optimizer.post_process = post_process
    experiment.run_experiment(optimizer=optimizer, optimizee=optimizee, optimizer_parameters=params)
    experiment.end_experiment(optimizer)
    seconds_generations = sum(end - start for start, end, _ in generations)
    evaluations = sum(n for _, _, n in generations)
    finite = [s for s in scores if np.isfinite(s)]
    result = {"peer": "l2lforhpc", "workers": args.workers, "pop_size": args.pop_size,
              "generations": len(generations), "evaluations": evaluations, "network": network,
              "seconds_total": time.time() - t_spawn, "seconds_generations": seconds_generations,
              "seconds_per_generation": [end - start for start, end, _ in generations],
              "evaluations_per_second": evaluations / seconds_generations,
              "best_score": max(finite) if finite else None}
    with open(os.path.join(args.workdir, "result.json"), "w") as f:
        json.dump(result, f)


def run_parent(args, argv):
    from peer_l2l import _kill_group

    workdir = tempfile.mkdtemp(prefix="peer_l2l_nest_")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([HERE, os.environ.get("PYTHONPATH", "")]), PYNEST_QUIET="1")
    command = [args.python or DEFAULT_PYTHON, os.path.abspath(__file__), *argv, "--child", "--workdir", workdir,
               "--t-spawn", repr(time.time())]
    with open(os.path.join(workdir, "child.log"), "wb") as log:
        child = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                 cwd=workdir, env=env, start_new_session=True)

    def on_signal(signum, frame):
        _kill_group(child.pid)
        raise SystemExit(128 + signum)

    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, on_signal)
    error = None
    try:
        if child.wait(timeout=args.timeout) != 0:
            error = f"child exited with code {child.returncode}"
    except subprocess.TimeoutExpired:
        error = f"timeout after {args.timeout:.0f} s"
    finally:
        _kill_group(child.pid)  # L2L's idle workers outlive its master
    path = os.path.join(workdir, "result.json")
    result = json.load(open(path)) if os.path.exists(path) else {"peer": "l2lforhpc"}
    if error:
        result["error"] = error
        sys.stderr.write(open(os.path.join(workdir, "child.log"), errors="replace").read()[-4000:])
    print(json.dumps(result))
    return 1 if error else 0


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--pop-size", type=int, default=8)
    p.add_argument("--generations", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--network", default="{}", help="JSON of Network fields to change (default: the CI size)")
    p.add_argument("--timeout", type=float, default=1800.0)
    p.add_argument("--python", default=None, help=f"a Python with l2l and nest (default {DEFAULT_PYTHON})")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--workdir", help=argparse.SUPPRESS)
    p.add_argument("--t-spawn", type=float, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        return run_child(args)
    sys.path.insert(0, HERE)
    return run_parent(args, argv)


if __name__ == "__main__":
    sys.exit(main())
