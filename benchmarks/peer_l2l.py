#!/usr/bin/env python3
"""Peer benchmark: the original L2L (PyPI ``l2lforhpc`` 2.0.0b0, package ``l2l``).

Runs ONE optimizer of the original L2L on one of its benchmark functions in
L2L's local mode (one worker process per individual, file-based exchange)
and prints ONE JSON line to stdout::

    {"peer": "l2lforhpc", "version": ..., "optimizer": ..., "function": ...,
     "pop_size": ..., "generations": ..., "seconds_total": ...,
     "seconds_startup": ..., "seconds_per_generation": ...,
     "evaluations_per_second": ..., "best_fitness": ..., ...}

This script does NOT import l2ljax.  It needs a Python that has ``l2l``
installed, e.g. the separate venv::

    python3 -m venv /work/envs/l2l && /work/envs/l2l/bin/pip install l2lforhpc
    /work/envs/l2l/bin/python benchmarks/peer_l2l.py --optimizer crossentropy

If started with a Python that lacks ``l2l`` it re-runs the experiment under
``--python`` (default: ``/work/envs/l2l/bin/python`` when that exists).

How it works / why it looks like this
-------------------------------------
* The experiment runs in a child process started in its own session (process
  group).  L2L's ``Runner`` starts ``max_workers`` worker processes with
  ``subprocess.Popen`` that inherit that process group; L2L never stops idle
  workers (``close_workers`` only terminates *running* ones), so they would
  otherwise poll their input file forever after the experiment ends.  The
  parent kills the whole group when the child finishes, on ``--timeout`` and
  on SIGINT/SIGTERM.
* Runner parameters are ``{'srun': '', 'exec': sys.executable,
  'max_workers': pop}``: with the default ``exec`` ('python3 ...') a worker may
  start a Python without ``l2l`` and the master then waits forever.
* All results/logs go to a temporary directory that is deleted afterwards
  (``--keep`` keeps it and reports its path on stderr).
* Timing: the child records wall-clock timestamps (``time.time()``, shared
  with the parent) by wrapping ``Runner.__init__``/``Runner.run`` and the
  optimizer's ``post_process`` -- this only observes, it does not change L2L's
  behaviour.  ``seconds_startup`` = child spawn -> start of generation 0
  (interpreter start, imports, ``prepare_experiment``, optimizer
  construction, worker launch).  A generation = ``Runner.run`` (dispatch,
  5 s polling, result collection) + ``post_process``; ``seconds_per_generation``
  is their mean.  ``seconds_total`` = spawn -> ``end_experiment`` returned.
* Fitness: the optimizee returns the raw function value; we pass
  ``optimizee_fitness_weights=(-1,)`` (minimise) and report the smallest raw
  value evaluated over the run as ``best_fitness``.
"""
import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

DEFAULT_L2L_PYTHON = "/work/envs/l2l/bin/python"
OPTIMIZERS = ("crossentropy", "ga", "sa", "gd")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--optimizer", choices=OPTIMIZERS, default="crossentropy")
    p.add_argument("--function", default="rastrigin",
                   help="L2L benchmark function family: rastrigin, rosenbrock, "
                        "ackley, easom (combined with --dim, e.g. Rastrigin2d) or an "
                        "exact L2L BenchmarkedFunctions name such as 'Rastrigin2d'")
    p.add_argument("--dim", type=int, default=2,
                   help="dimension; L2L ships 2d and 10d variants (default 2)")
    p.add_argument("--pop-size", type=int, default=32)
    p.add_argument("--generations", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--timeout", type=float, default=600.0,
                   help="overall wall-clock limit in seconds; the whole process "
                        "group is killed when it is exceeded (default 600)")
    p.add_argument("--python", default=None,
                   help="Python interpreter with l2l installed (default: this "
                        "one if it can import l2l, else %s)" % DEFAULT_L2L_PYTHON)
    p.add_argument("--keep", action="store_true",
                   help="keep the temporary results directory")
    p.add_argument("--verbose", action="store_true",
                   help="echo the child's (L2L's) log output to stderr")
    # internal: run the experiment in this process
    p.add_argument("--_child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--_workdir", default=None, help=argparse.SUPPRESS)
    p.add_argument("--_t_spawn", type=float, default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


# --------------------------------------------------------------------------
# child: the actual L2L experiment
# --------------------------------------------------------------------------

def _function_name(function, dim):
    """Map (family, dim) to a name in l2l's BenchmarkedFunctions."""
    families = {"rastrigin": "Rastrigin", "rosenbrock": "Rosenbrock",
                "ackley": "Ackley", "easom": "Easom"}
    key = function.lower()
    if key in families:
        return "%s%dd" % (families[key], dim)
    return function  # assume an exact L2L name, e.g. 'Rastrigin2d', 'Chasm'


def _make_optimizer(name, traj, optimizee, pop, gens, seed):
    """Build the L2L optimizer; parameters follow L2L's bin/l2l-fun-*.py examples
    except pop size / iterations / seed, and stop_criterion=inf (never stop
    early: L2L's Environment always runs n_iteration generations)."""
    import numpy as np
    inf = np.inf
    weights = (-1.0,)  # minimise the raw function value
    if name == "crossentropy":
        from l2l.optimizers.crossentropy import CrossEntropyOptimizer, CrossEntropyParameters
        from l2l.optimizers.crossentropy.distribution import NoisyGaussian
        params = CrossEntropyParameters(
            pop_size=pop, rho=0.9, smoothing=0.0, temp_decay=0, n_iteration=gens,
            distribution=NoisyGaussian(noise_magnitude=1.0, noise_decay=0.99),
            stop_criterion=inf, seed=seed)
        opt = CrossEntropyOptimizer(
            traj, optimizee_create_individual=optimizee.create_individual,
            optimizee_fitness_weights=weights, parameters=params,
            optimizee_bounding_func=optimizee.bounding_func)
    elif name == "ga":
        from l2l.optimizers.evolution import GeneticAlgorithmOptimizer, GeneticAlgorithmParameters
        params = GeneticAlgorithmParameters(
            seed=seed, pop_size=pop, cx_prob=0.5, mut_prob=0.3, n_iteration=gens,
            ind_prob=0.02, tourn_size=15, mate_par=0.5, mut_par=1)
        opt = GeneticAlgorithmOptimizer(
            traj, optimizee_create_individual=optimizee.create_individual,
            optimizee_fitness_weights=weights, parameters=params,
            optimizee_bounding_func=optimizee.bounding_func)
    elif name == "sa":
        from l2l.optimizers.simulatedannealing.optimizer import (
            AvailableCoolingSchedules,
            SimulatedAnnealingOptimizer,
            SimulatedAnnealingParameters,
        )
        params = SimulatedAnnealingParameters(
            n_parallel_runs=pop, noisy_step=0.03, temp_decay=0.99,
            n_iteration=gens, stop_criterion=inf, seed=seed,
            cooling_schedule=AvailableCoolingSchedules.QUADRATIC_ADDAPTIVE)
        opt = SimulatedAnnealingOptimizer(
            traj, optimizee_create_individual=optimizee.create_individual,
            optimizee_fitness_weights=weights, parameters=params,
            optimizee_bounding_func=optimizee.bounding_func)
    elif name == "gd":
        from l2l.optimizers.gradientdescent.optimizer import ClassicGDParameters, GradientDescentOptimizer
        # one generation = current point + n_random_steps perturbations
        params = ClassicGDParameters(
            learning_rate=0.01, exploration_step_size=0.01,
            n_random_steps=max(pop - 1, 1), n_iteration=gens,
            stop_criterion=inf, seed=seed)
        opt = GradientDescentOptimizer(
            traj, optimizee_create_individual=optimizee.create_individual,
            optimizee_fitness_weights=weights, parameters=params,
            optimizee_bounding_func=optimizee.bounding_func)
    else:
        raise ValueError(name)
    return opt, params


def _jsonable(v):
    """Parameter value -> strict-JSON value (no Infinity/NaN, objects described)."""
    import math
    if hasattr(v, "get_params"):  # CE distributions
        return {k: _jsonable(x) for k, x in v.get_params().items()}
    if hasattr(v, "name") and hasattr(v, "value") and not isinstance(v, (int, float)):
        return str(v)  # enums, e.g. AvailableCoolingSchedules
    if hasattr(v, "item") and not hasattr(v, "__len__"):
        v = v.item()  # numpy scalar
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    if isinstance(v, (int, float, str, bool, type(None))):
        return v
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    return repr(v)


def run_child(args):
    t_spawn = args._t_spawn if args._t_spawn is not None else time.time()
    marks = {"t_spawn": t_spawn, "t_child_start": time.time()}

    from importlib import metadata

    import l2l.utils.runner as l2l_runner
    import numpy as np
    from l2l.optimizees.functions.benchmarked_functions import BenchmarkedFunctions
    from l2l.optimizees.functions.optimizee import FunctionGeneratorOptimizee
    from l2l.utils.experiment import Experiment
    marks["t_imported"] = time.time()

    # ---- observe (not alter) the runner: worker launch and per-generation time
    gen_times = []  # [gen, t_run_start, t_run_end, t_post_end, n_evals]
    orig_init, orig_run = l2l_runner.Runner.__init__, l2l_runner.Runner.run

    def init_wrapper(self, *a, **kw):
        marks["t_runner_init_start"] = time.time()
        orig_init(self, *a, **kw)
        marks["t_runner_init_end"] = time.time()

    def run_wrapper(self, trajectory, generation):
        t0 = time.time()
        res = orig_run(self, trajectory, generation)
        gen_times.append([generation, t0, time.time(), None, len(res)])
        return res

    l2l_runner.Runner.__init__ = init_wrapper
    l2l_runner.Runner.run = run_wrapper

    # L2L's GA stores its `seed` but never seeds Python's `random`, which DEAP's
    # selection/crossover/mutation use: seed it here so runs are repeatable.
    import random
    random.seed(args.seed)
    np.random.seed(args.seed)

    fn_name = _function_name(args.function, args.dim)
    pop, gens = args.pop_size, args.generations
    experiment = Experiment(root_dir_path=os.path.join(args._workdir, "results"))
    traj, _ = experiment.prepare_experiment(
        name="peer-l2l-%s" % args.optimizer, log_stdout=False,
        runner_params={"srun": "", "exec": sys.executable, "max_workers": pop})
    (_, fg), _ = BenchmarkedFunctions().get_function_by_name(fn_name, noise=False)
    optimizee = FunctionGeneratorOptimizee(traj, fg, seed=args.seed + 100)
    optimizer, params = _make_optimizer(args.optimizer, traj, optimizee, pop,
                                        gens, args.seed)
    marks["t_prepared"] = time.time()

    raw_fitness = []  # raw function values, per generation
    orig_post = optimizer.post_process

    def post_wrapper(traj_, fitnesses_results):
        raw_fitness.append([float(np.ravel(f)[0]) for _, f in fitnesses_results])
        out = orig_post(traj_, fitnesses_results)
        if gen_times:
            gen_times[-1][3] = time.time()
        return out

    optimizer.post_process = post_wrapper  # bound before add_postprocessing
    experiment.run_experiment(optimizer=optimizer, optimizee=optimizee,
                              optimizer_parameters=params)
    marks["t_run_end"] = time.time()
    experiment.end_experiment(optimizer)
    marks["t_end"] = time.time()

    per_gen = [(g[3] or g[2]) - g[1] for g in gen_times]
    n_evals = sum(g[4] for g in gen_times)
    gen_seconds = sum(per_gen)
    all_f = [f for gen in raw_fitness for f in gen]
    result = {
        "peer": "l2lforhpc",
        "version": metadata.version("l2lforhpc"),
        "optimizer": args.optimizer,
        "function": fn_name,
        "dim": int(fg.dims),
        "pop_size": pop,
        "generations": len(gen_times),
        "evaluations": n_evals,
        "seconds_total": marks["t_end"] - t_spawn,
        "seconds_startup": (gen_times[0][1] if gen_times else marks["t_run_end"]) - t_spawn,
        "seconds_per_generation": gen_seconds / max(len(per_gen), 1),
        "seconds_per_generation_list": per_gen,
        "evaluations_per_second": n_evals / gen_seconds if gen_seconds > 0 else None,
        "best_fitness": min(all_f) if all_f else None,
        "best_fitness_per_generation": [min(g) for g in raw_fitness],
        "fitness_sense": "minimize (raw function value; weights=(-1,))",
        "optimizer_parameters": {k: _jsonable(v) for k, v in params._asdict().items()},
        "runner_params": {"srun": "", "exec": sys.executable, "max_workers": pop},
        "startup_breakdown": {
            "interpreter_and_imports": marks["t_imported"] - t_spawn,
            "prepare_experiment_and_optimizer": marks["t_prepared"] - marks["t_imported"],
            "worker_launch": (marks.get("t_runner_init_end", 0)
                              - marks.get("t_runner_init_start", 0)),
        },
        "python": sys.version.split()[0],
        "numpy": np.__version__,
    }
    with open(os.path.join(args._workdir, "result.json"), "w") as f:
        json.dump(result, f)
    return 0


# --------------------------------------------------------------------------
# parent: spawn, time out, clean up
# --------------------------------------------------------------------------

def _python_has_l2l(python):
    try:
        r = subprocess.run([python, "-c", "import l2l"], capture_output=True,
                           timeout=60)
        return r.returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def _kill_group(pgid):
    """SIGTERM, then SIGKILL, the child's process group (master + all workers)."""
    for sig, wait in ((signal.SIGTERM, 2.0), (signal.SIGKILL, 0.0)):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            return
        deadline = time.time() + wait
        while time.time() < deadline:
            try:
                os.killpg(pgid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.1)


def run_parent(args, argv):
    python = args.python
    if python is None:
        python = sys.executable if _python_has_l2l(sys.executable) else DEFAULT_L2L_PYTHON
    workdir = tempfile.mkdtemp(prefix="peer_l2l_")
    log_path = os.path.join(workdir, "child.log")
    cmd = [python, os.path.abspath(__file__)] + list(argv) + [
        "--_child", "--_workdir", workdir]
    result, error = None, None
    t_spawn = time.time()
    cmd += ["--_t_spawn", repr(t_spawn)]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, cwd=workdir,
                                start_new_session=True)
    pgid = proc.pid  # new session => pgid == pid

    def on_signal(signum, _frame):
        _kill_group(pgid)
        raise SystemExit(128 + signum)

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        try:
            rc = proc.wait(timeout=args.timeout)
            if rc != 0:
                error = "child exited with code %d" % rc
        except subprocess.TimeoutExpired:
            error = "timeout after %.0f s" % args.timeout
    finally:
        _kill_group(pgid)  # idle L2L workers survive the master: always kill
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        for s, h in old.items():
            signal.signal(s, h)
        res_path = os.path.join(workdir, "result.json")
        if os.path.exists(res_path):
            with open(res_path) as f:
                result = json.load(f)
        tail = ""
        if (error or args.verbose) and os.path.exists(log_path):
            with open(log_path, "rb") as f:
                data = f.read()
            tail = data.decode("utf-8", "replace")
            if not args.verbose:
                tail = tail[-4000:]
            sys.stderr.write(tail + "\n")
        if args.keep:
            sys.stderr.write("kept results in %s\n" % workdir)
        else:
            shutil.rmtree(workdir, ignore_errors=True)

    if result is None:
        result = {"peer": "l2lforhpc", "optimizer": args.optimizer,
                  "function": _function_name(args.function, args.dim),
                  "pop_size": args.pop_size, "generations": args.generations,
                  "error": error or "no result"}
    elif error:
        result["error"] = error
    result["seconds_wall_including_cleanup"] = time.time() - t_spawn
    print(json.dumps(result))
    return 0 if "error" not in result else 1


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args._child:
        return run_child(args)
    return run_parent(args, argv)


if __name__ == "__main__":
    sys.exit(main())
