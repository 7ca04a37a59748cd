#!/usr/bin/env python3
"""Peer benchmark: evosax (JAX evolution strategies), whole run as one jitted scan.

Runs one evosax strategy on a test function (minimisation), the whole
optimisation ``init -> lax.scan(ask -> evaluate -> tell)`` compiled as ONE
``jax.jit`` function, times it after a warm-up compile (``block_until_ready``)
and prints ONE JSON line to stdout::

    {"peer": "evosax", "version": ..., "strategy": ..., "function": ...,
     "dim": ..., "pop_size": ..., "generations": ..., "seconds": ...,
     "generations_per_second": ..., "final_best_fitness": ...,
     "jax_version": ..., ...}

This script does NOT import l2ljax.  It needs a Python with evosax, e.g. the
separate venv::

    python3 -m venv /work/envs/evosax && /work/envs/evosax/bin/pip install evosax
    /work/envs/evosax/bin/python benchmarks/peer_evosax.py --strategy cma_es

Written against evosax 0.3.x (``evosax.algorithms``: ``Open_ES``, ``SNES``,
``CMA_ES``, ``SimpleGA``, ``SimulatedAnnealing``; constructor
``(population_size, solution)``; distribution-based ``init(key, mean, params)``,
population-based ``init(key, population, fitness, params)``;
``ask(key, state, params) -> (population, state)``;
``tell(key, population, fitness, state, params) -> (state, metrics)``; fitness
is minimised; ``state.best_fitness`` is the best raw fitness so far).
Older evosax (<= 0.1.x: ``evosax.OpenES``/``evosax.Strategies``,
``tell(x, fitness, state, params)``) is not supported.

Hyper-parameters: evosax's own defaults (``algo.default_params`` and the
constructor defaults, e.g. Open_ES ``optax.sgd(1e-3)``, std 1.0; SNES/CMA-ES
``std_init`` 1.0; SimpleGA ``crossover_rate`` 0.0, mutation std 1.0, elite
ratio 0.5; SA temperature 1.0 -> 0.1, decay 0.999, std 1.0).  What this
script sets is recorded in the JSON under ``"set_by_benchmark"``: the initial
mean (distribution-based) or initial population (population-based) is drawn
uniformly from the function's search box (L2L's bounds: rastrigin/sphere
[-5, 5], rosenbrock [-2, 2]), and optionally ``--std-init`` / ``--lr``.
No clipping to bounds is applied during the run.

Timing: ``seconds`` = best of ``--repeats`` timed calls of the compiled
function (same key each time, so identical work), each ended by
``block_until_ready``; ``compile_seconds`` = the first (warm-up) call.  One
generation = ``pop_size`` evaluations; population-based strategies evaluate
one extra population at init.
"""
import argparse
import json
import math
import sys
import time

STRATEGIES = {
    "open_es": "Open_ES",
    "snes": "SNES",
    "cma_es": "CMA_ES",
    "simple_ga": "SimpleGA",
    "sa": "SimulatedAnnealing",
}
POPULATION_BASED = {"simple_ga"}
BOUNDS = {"rastrigin": (-5.0, 5.0), "sphere": (-5.0, 5.0), "rosenbrock": (-2.0, 2.0)}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--strategy", choices=sorted(STRATEGIES), default="open_es")
    p.add_argument("--function", choices=sorted(BOUNDS), default="rastrigin")
    p.add_argument("--dim", type=int, default=10)
    p.add_argument("--pop-size", type=int, default=64)
    p.add_argument("--generations", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--std-init", type=float, default=None,
                   help="override the initial std (std_init param or std_schedule); "
                        "default: evosax's default")
    p.add_argument("--lr", type=float, default=None,
                   help="override Open_ES/SNES optax.sgd learning rate; default: evosax's")
    return p.parse_args(argv)


def make_function(name):
    import jax.numpy as jnp

    def rastrigin(x):
        # == 10 d + sum(x^2 - 10 cos(2 pi x)), written as sum(x^2 + 20 sin^2(pi x))
        # (10 - 10 cos t = 20 sin^2(t/2)) so float32 does not cancel 100 - 100 and
        # round values near the optimum to exactly 0.
        return jnp.sum(x ** 2 + 20.0 * jnp.sin(jnp.pi * x) ** 2, axis=-1)

    def rosenbrock(x):
        return jnp.sum(100.0 * (x[..., 1:] - x[..., :-1] ** 2) ** 2
                       + (1.0 - x[..., :-1]) ** 2, axis=-1)

    def sphere(x):
        return jnp.sum(x ** 2, axis=-1)

    return {"rastrigin": rastrigin, "rosenbrock": rosenbrock, "sphere": sphere}[name]


def _to_json(v):
    """Small pytree leaf -> JSON-able (floats, short lists)."""
    try:
        import numpy as np
        a = np.asarray(v)
        if a.dtype.kind in "fiub":
            if a.ndim == 0:
                x = a.item()
                return x if not (isinstance(x, float) and not math.isfinite(x)) else str(x)
            if a.size <= 16:
                return a.tolist()
            return "array%s" % (list(a.shape),)
    except Exception:  # noqa: BLE001
        pass
    return repr(v)


def build(args):
    import evosax.algorithms as algos
    import jax
    import jax.numpy as jnp
    import optax

    cls = getattr(algos, STRATEGIES[args.strategy])
    solution = jnp.zeros((args.dim,), dtype=jnp.float32)
    set_by_benchmark = {}
    kwargs = {}
    if args.std_init is not None and args.strategy in ("open_es", "simple_ga", "sa"):
        kwargs["std_schedule"] = optax.constant_schedule(args.std_init)
        set_by_benchmark["std_schedule"] = "constant(%g)" % args.std_init
    if args.lr is not None and args.strategy in ("open_es", "snes"):
        kwargs["optimizer"] = optax.sgd(learning_rate=args.lr)
        set_by_benchmark["optimizer"] = "optax.sgd(%g)" % args.lr
    algo = cls(population_size=args.pop_size, solution=solution, **kwargs)
    params = algo.default_params
    if args.std_init is not None and hasattr(params, "std_init"):
        params = params.replace(std_init=jnp.asarray(args.std_init, jnp.float32))
        set_by_benchmark["std_init"] = args.std_init

    f = make_function(args.function)
    lo, hi = BOUNDS[args.function]
    pop_based = args.strategy in POPULATION_BASED
    set_by_benchmark["initial_%s" % ("population" if pop_based else "mean")] = (
        "uniform[%g, %g]^dim" % (lo, hi))
    gens = args.generations

    def run(key):
        k_init_x, k_init, k_scan = jax.random.split(key, 3)
        if pop_based:
            pop0 = jax.random.uniform(k_init_x, (args.pop_size, args.dim),
                                      minval=lo, maxval=hi)
            state = algo.init(k_init, pop0, f(pop0), params)
        else:
            mean0 = jax.random.uniform(k_init_x, (args.dim,), minval=lo, maxval=hi)
            state = algo.init(k_init, mean0, params)

        def step(state, key):
            k_ask, k_tell = jax.random.split(key)
            population, state = algo.ask(k_ask, state, params)
            fitness = f(population)
            state, _metrics = algo.tell(k_tell, population, fitness, state, params)
            return state, None

        state, _ = jax.lax.scan(step, state, jax.random.split(k_scan, gens))
        return state.best_fitness, state.best_solution

    defaults = {}
    try:
        for k, v in vars(algo.default_params).items():
            defaults[k] = _to_json(v)
    except TypeError:
        pass
    ctor = {k: _to_json(getattr(algo, k)) for k in ("elite_ratio",) if hasattr(algo, k)}
    for k in ("use_antithetic_sampling", "use_negative_weights"):
        if hasattr(algo, k):
            ctor[k] = getattr(algo, k)
    if hasattr(algo, "optimizer") and "optimizer" not in set_by_benchmark:
        ctor["optimizer"] = {"open_es": "optax.sgd(1e-3) [evosax default]",
                             "snes": "optax.sgd(1.0) [evosax default]"}.get(
                                 args.strategy, "evosax default")
    if hasattr(algo, "std_schedule") and "std_schedule" not in set_by_benchmark:
        ctor["std_schedule"] = "constant(%g) [evosax default]" % float(algo.std_schedule(0))
    return jax.jit(run), defaults, ctor, set_by_benchmark


def main(argv=None):
    args = parse_args(argv)
    from importlib import metadata

    import jax

    run, defaults, ctor, set_by_benchmark = build(args)
    key = jax.random.PRNGKey(args.seed)

    t0 = time.perf_counter()
    best, _ = run(key)
    jax.block_until_ready(best)
    compile_seconds = time.perf_counter() - t0

    times = []
    for _ in range(max(args.repeats, 1)):
        t0 = time.perf_counter()
        best, sol = run(key)
        jax.block_until_ready((best, sol))
        times.append(time.perf_counter() - t0)
    seconds = min(times)
    n_evals = args.pop_size * (args.generations + (1 if args.strategy in POPULATION_BASED else 0))
    best_f = float(best)
    result = {
        "peer": "evosax",
        "version": metadata.version("evosax"),
        "strategy": args.strategy,
        "evosax_class": STRATEGIES[args.strategy],
        "function": args.function,
        "dim": args.dim,
        "pop_size": args.pop_size,
        "generations": args.generations,
        "seed": args.seed,
        "seconds": seconds,
        "seconds_all_repeats": times,
        "compile_seconds": compile_seconds,
        "generations_per_second": args.generations / seconds,
        "evaluations_per_second": n_evals / seconds,
        "final_best_fitness": best_f if math.isfinite(best_f) else str(best_f),
        "default_params": defaults,
        "constructor_defaults": ctor,
        "set_by_benchmark": set_by_benchmark,
        "jax_version": jax.__version__,
        "jax_backend": jax.default_backend(),
        "device": str(jax.devices()[0]),
        "python": sys.version.split()[0],
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
