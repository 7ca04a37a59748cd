"""l2ljax optimizers side by side with their peers: evosax 0.3 and the original L2L (l2lforhpc).

Part 1, versus evosax (JAX): OpenES, SNES, CMA-ES, SimpleGA and simulated annealing, which
both libraries have, on the same functions (default Rastrigin-10d and Rosenbrock-10d, L2L's
bounds [-5, 5] and [-2, 2], minimised), population 64, 1000 generations, seeds 0, 1, 2.

* l2ljax: the whole run is ONE jitted program, ``lax.scan`` of
  ``l2ljax.make_step(opt, problem, keep_population=False)`` from an ``opt.init`` state (the
  keys of ``l2ljax.run``, so the result equals ``run``'s, which is checked). Timed after a
  warm-up compile, best of 3 ``block_until_ready`` calls per seed. ``l2ljax.run(...)``
  (``keep_population=False``, warm) is timed once per seed for reference: it adds the
  per-generation trajectory records and their transfer to numpy.
* evosax: ``benchmarks/peer_evosax.py`` in its own venv (a subprocess per call, one JSON line):
  init + ``lax.scan(ask, evaluate, tell)`` in one ``jax.jit``, best of 3 after warm-up.
  Run with evosax's defaults ("default") and, where evosax's defaults differ from ours in a
  setting its API exposes (initial std, learning rate), again with ours ("matched").

The measurements are interleaved (for every function, algorithm and seed: ours, then evosax
default, then evosax matched) so machine load falls on both alike. Generations per second
are the best of all timed calls (seeds × 3 repeats: the one least disturbed by other jobs on a
shared machine; the median over seeds is in the JSON too); ratio = ours / evosax (> 1: l2ljax
faster). Final best fitness (raw function value, lower is better) is the mean over seeds.

Part 2, versus the original L2L: GA, SA and GD (L2L's ClassicGD) on Rastrigin-2d, population
32, 3 generations, L2L's example hyperparameters on both sides (``benchmarks/peer_l2l.py``,
local runner: one worker process per individual, file exchange polled every few seconds).
l2ljax: ``l2ljax.run`` cold (first call: tracing + compilation included, jax already
imported) and warm (best of 3 repeats), run before and after L2L; reported per generation.

Writes everything as JSON (``--json``) and prints Markdown tables for benchmarks/RESULTS.md.
The hyperparameters of every side are in the JSON (``settings``) and in the Markdown notes.

    .venv/bin/python benchmarks/optimizers_vs_peers.py --json benchmarks/results_optimizers_vs_peers.json
    .venv/bin/python benchmarks/optimizers_vs_peers.py --generations 50 --seeds 1 --no-l2l   # smoke test
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import jax
import numpy as np

import l2ljax
from l2ljax import presets

HERE = Path(__file__).resolve().parent
ALGORITHMS = ("open_es", "snes", "cma_es", "simple_ga", "sa")
NAMES = {"open_es": "OpenES", "snes": "SNES", "cma_es": "CMA-ES", "simple_ga": "SimpleGA / GA",
         "sa": "Simulated annealing"}
L2L_OPTIMIZERS = ("ga", "sa", "gd")


# --------------------------------------------------------------------------- machine, versions


def machine() -> dict[str, Any]:
    model = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {"cpu_model": model, "logical_cores": os.cpu_count(),
            "cores_available": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
            "platform": platform.platform(), "jax_backend": jax.default_backend(),
            "device": str(jax.devices()[0])}


def load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def strict(value: Any) -> Any:
    """A JSON-able copy: numpy scalars/arrays to Python, non-finite floats to strings."""
    if isinstance(value, dict):
        return {str(k): strict(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict(v) for v in value]
    if isinstance(value, (np.ndarray, np.generic, jax.Array)):
        return strict(np.asarray(value).tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def params_dict(params: Any) -> dict[str, Any]:
    if params is None:
        return {}
    return {f.name: strict(getattr(params, f.name)) for f in dataclasses.fields(params)}


# --------------------------------------------------------------------------- part 1: vs evosax


def build_ours(name: str, problem: l2ljax.Optimizee, pop: int, generations: int) -> tuple[Any, Any, str]:
    """(optimizer, params, description) of l2ljax's side: its defaults, the ES preset."""
    sigma0 = 0.3 * float(np.mean(problem.space.upper - problem.space.lower))
    if name == "open_es":
        opt = l2ljax.EvolutionStrategies(problem, pop_size=pop, evaluate_mean=False)
        params = presets.evolution_strategies(problem, generations)[1]
        text = (f"EvolutionStrategies(pop_size={pop}, evaluate_mean=False): {pop} mirrored perturbations, "
                f"centred ranks; learning_rate={params.learning_rate}, noise_std={params.noise_std} "
                "(l2ljax.presets); θ0 ~ U(bounds); θ clipped to the bounds")
    elif name == "snes":
        opt = l2ljax.NaturalEvolutionStrategies(problem, pop_size=pop)
        params = opt.default_params
        text = (f"NaturalEvolutionStrategies(pop_size={pop}): mirrored sampling, NES utilities, "
                f"η_μ={params.learning_rate_mu:g}, η_σ=(3+ln d)/(5√d)={params.learning_rate_sigma:.4f}, "
                f"σ0=0.3·(upper−lower)={sigma0:g} (defaults); μ0 ~ U(bounds); μ clipped")
    elif name == "cma_es":
        opt = l2ljax.CMAES(problem, pop_size=pop)
        params = opt.default_params
        text = (f"CMAES(pop_size={pop}): Hansen (2016) Table 1 rates, active (negative) weights, "
                f"σ0=0.3·(upper−lower)={sigma0:g} (defaults); m0 ~ U(bounds); samples clipped")
    elif name == "simple_ga":
        opt = l2ljax.GeneticAlgorithm(problem, pop_size=pop)
        params = opt.default_params
        text = (f"GeneticAlgorithm(pop_size={pop}, tourn_size={opt.tourn_size}): L2L/DEAP eaSimple, "
                f"tournament selection, blend crossover cx_prob={params.cx_prob} α={params.mate_par}, "
                f"Gaussian mutation mut_prob={params.mut_prob} ind_prob={params.ind_prob} "
                f"σ={params.mut_par} (L2L's example = defaults); initial population ~ U(bounds)")
    elif name == "sa":
        opt = l2ljax.SimulatedAnnealing(problem, n_parallel_runs=pop)
        params = opt.default_params
        text = (f"SimulatedAnnealing(n_parallel_runs={pop}): {pop} independent Metropolis chains, "
                f"proposal std noisy_step·T(k) = {params.noisy_step}·{params.T0}·{params.temp_decay}^k "
                "(L2L's defaults, 'default' schedule); chains start ~ U(bounds)")
    else:
        raise ValueError(name)
    return opt, params, text


def evosax_runs(name: str, sigma0: float, ours_params: Any) -> list[tuple[str, list[str], str]]:
    """[(label, extra peer_evosax.py arguments, description)]: evosax's defaults, then ours where they differ."""
    default = {
        "open_es": "Open_ES: antithetic, centred ranks, optax.sgd(1e-3), std 1.0 (defaults)",
        "snes": "SNES: no mirroring, NES weights, optax.sgd(1.0), lr_std=(3+ln d)/(5√d), std_init 1.0 (defaults)",
        "cma_es": "CMA_ES: Hansen (2016) rates, negative weights, std_init 1.0 (defaults)",
        "simple_ga": ("SimpleGA: truncation to the best half (elite_ratio 0.5), crossover_rate 0.0, "
                      "N(0, 1.0²) on every gene (defaults)"),
        "sa": ("SimulatedAnnealing: ONE chain, 64 proposals per generation around it, moves to the best if "
               "Metropolis-accepted (k_B 5), std 1.0, T 1.0 → 0.1 (×0.999) (defaults)"),
    }[name]
    runs = [("default", [], default + "; initial mean/population ~ U(bounds); no bounds")]
    if name == "open_es":
        lr, std = float(ours_params.learning_rate), float(ours_params.noise_std)
        runs.append(("matched", ["--lr", repr(lr), "--std-init", repr(std)],
                     f"Open_ES with optax.sgd({lr:g}) and std {std:g} (= ours: the same update rule)"))
    elif name in ("snes", "cma_es"):
        runs.append(("matched", ["--std-init", repr(sigma0)], f"std_init {sigma0:g} (= our σ0)"))
    elif name == "sa":
        std = float(ours_params.noisy_step * ours_params.T0)
        runs.append(("matched", ["--std-init", repr(std)],
                     f"constant std {std:g} (= our first proposal std; evosax has no cooled step)"))
    # simple_ga: the mutation std (1.0) already equals ours; the other settings have no counterpart.
    return runs


def make_whole_run(opt: Any, problem: l2ljax.Optimizee, generations: int):
    """``(state, run_key) -> (best_score, best_x)``: the whole run as one jitted ``lax.scan``."""
    step = l2ljax.make_step(opt, problem, keep_population=False)

    def whole(state, run_key):
        def body(s, _):
            return step(s, run_key)[0], None

        final, _ = jax.lax.scan(body, state, None, length=generations)
        return final.best_score, final.best_x

    return jax.jit(whole)


def initial(opt: Any, params: Any, seed: int):
    """State and run key exactly as ``l2ljax.run(opt, problem, jax.random.key(seed), ...)`` makes them."""
    k_init, run_key = jax.random.split(jax.random.key(seed))
    return opt.init(k_init, params), run_key


def timed(fn, *args) -> tuple[float, Any]:
    start = time.perf_counter()
    out = jax.block_until_ready(fn(*args))
    return time.perf_counter() - start, out


def call_evosax(args: argparse.Namespace, strategy: str, function: str, seed: int, extra: list[str]) -> dict:
    cmd = [args.evosax_python, str(HERE / "peer_evosax.py"), "--strategy", strategy, "--function", function,
           "--dim", str(args.dim), "--pop-size", str(args.pop_size), "--generations", str(args.generations),
           "--seed", str(seed), "--repeats", str(args.repeats), *extra]
    start = time.perf_counter()
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=args.evosax_timeout)
        lines = [line for line in out.stdout.splitlines() if line.strip()]
        result = json.loads(lines[-1]) if out.returncode == 0 and lines else {
            "error": f"exit code {out.returncode}", "stderr_tail": out.stderr[-2000:]}
    except (subprocess.TimeoutExpired, json.JSONDecodeError, OSError) as error:
        result = {"error": repr(error)}
    result["subprocess_wall_seconds"] = time.perf_counter() - start
    result["command"] = " ".join(cmd[1:])
    return result


def versus_evosax(args: argparse.Namespace) -> list[dict]:
    rows = []
    for function in args.functions:
        problem = l2ljax.function_optimizee(function, args.dim)
        sigma0 = 0.3 * float(np.mean(problem.space.upper - problem.space.lower))
        for name in args.algorithms:
            opt, params, ours_text = build_ours(name, problem, args.pop_size, args.generations)
            runs = evosax_runs(name, sigma0, params)
            row = {"function": function, "dim": args.dim, "algorithm": name, "load_start": load(),
                   "l2ljax": {"class": type(opt).__name__, "config": strict(opt.config()),
                              "params": params_dict(params), "settings": ours_text,
                              "evaluations_per_generation": opt.pop_size, "seeds": []},
                   "evosax": {label: {"settings": text, "seeds": []} for label, _, text in runs}}
            whole = make_whole_run(opt, problem, args.generations)
            state, run_key = initial(opt, params, args.seeds[0])
            row["l2ljax"]["compile_seconds"], _ = timed(whole, state, run_key)

            def reference(seed, o=opt, q=problem, p=params):
                return l2ljax.run(o, q, jax.random.key(seed), args.generations, params=p, keep_population=False)

            row["l2ljax"]["run_compile_seconds"], _ = timed(lambda: reference(args.seeds[0]).state)
            for seed in args.seeds:  # interleaved: ours, evosax default, evosax matched, next seed ...
                state, run_key = initial(opt, params, seed)
                times = []
                for _ in range(args.repeats):
                    seconds, (best_score, _) = timed(whole, state, run_key)
                    times.append(seconds)
                run_seconds, result = timed(reference, seed)
                ours = {"seed": seed, "seconds_all_repeats": times, "seconds": min(times),
                        "generations_per_second": args.generations / min(times),
                        "final_best_fitness": -float(best_score), "run_seconds": run_seconds,
                        "run_generations_per_second": args.generations / run_seconds,
                        "run_final_best_fitness": float(result.best_fitness[0]),
                        "scan_equals_run": bool(float(best_score) == result.best_score)}
                row["l2ljax"]["seeds"].append(ours)
                line = [f"{function} {name} seed {seed}: l2ljax {ours['generations_per_second']:.0f} gen/s "
                        f"f={ours['final_best_fitness']:.4g}"]
                if not args.no_evosax:
                    for label, extra, _ in runs:
                        peer = call_evosax(args, name, function, seed, extra)
                        row["evosax"][label]["seeds"].append(peer)
                        line.append(f"evosax-{label} {peer.get('generations_per_second', float('nan')):.0f} gen/s "
                                    f"f={float(peer.get('final_best_fitness', 'nan')):.4g}")
                print(" | ".join(line), file=sys.stderr, flush=True)
            row["load_end"] = load()
            summarise(row)
            rows.append(row)
    return rows


def summarise(row: dict) -> None:
    """Best and median gen/s over seeds (each the best of its repeats), mean final fitness, ratios ours/evosax."""
    def stats(seeds: list[dict], speed: str = "generations_per_second", fit: str = "final_best_fitness") -> dict:
        ok = [s for s in seeds if speed in s]
        if not ok:
            return {}
        f = [float(s[fit]) for s in ok]
        return {"generations_per_second": max(s[speed] for s in ok),
                "generations_per_second_median": statistics.median(s[speed] for s in ok),
                "final_best_fitness_mean": float(np.mean(f)), "final_best_fitness_std": float(np.std(f)),
                "final_best_fitness_per_seed": f, "n_seeds": len(ok)}

    ours = row["l2ljax"]
    ours["summary"] = stats(ours["seeds"])
    ours["summary_run"] = stats(ours["seeds"], "run_generations_per_second", "run_final_best_fitness")
    ours["summary"]["scan_equals_run_all_seeds"] = all(s["scan_equals_run"] for s in ours["seeds"])
    for peer in row["evosax"].values():
        peer["summary"] = stats(peer["seeds"])
        if peer["summary"]:
            for stat in ("", "_median"):
                peer["summary"]["ratio_ours_over_evosax" + stat] = (
                    ours["summary"]["generations_per_second" + stat] / peer["summary"]["generations_per_second" + stat])
            peer["summary"]["compile_seconds_median"] = statistics.median(
                s["compile_seconds"] for s in peer["seeds"] if "compile_seconds" in s)


# --------------------------------------------------------------------------- part 2: vs L2L


def build_l2l_like(name: str, problem: l2ljax.Optimizee, pop: int, generations: int) -> tuple[Any, Any, str]:
    """l2ljax's counterpart of benchmarks/peer_l2l.py's optimizer, same hyperparameters."""
    if name == "ga":
        opt = l2ljax.GeneticAlgorithm(problem, pop_size=pop, tourn_size=15)
        params = opt.default_params.replace(cx_prob=0.5, mut_prob=0.3, ind_prob=0.02, mate_par=0.5, mut_par=1.0)
        text = (f"pop {pop}, cx_prob 0.5, mut_prob 0.3, ind_prob 0.02, tourn_size 15, mate_par 0.5, mut_par 1 "
                "(both)")
    elif name == "sa":
        opt = l2ljax.SimulatedAnnealing(problem, n_parallel_runs=pop, cooling_schedule="quadratic_additive",
                                        n_iteration=generations)
        params = opt.default_params.replace(noisy_step=0.03, temp_decay=0.99, T0=1.0)
        text = (f"n_parallel_runs {pop}, noisy_step 0.03, temp_decay 0.99, QUADRATIC_ADDAPTIVE, "
                f"n_iteration {generations} (both); T_n: L2L 0, l2ljax {params.Tn} (must be > 0)")
    elif name == "gd":
        opt = l2ljax.GradientDescent(problem, n_random_steps=pop - 1,
                                     optimizer=l2ljax.l2l_variant("ClassicGD", learning_rate=0.01))
        params = opt.default_params.replace(exploration_step_size=0.01)
        text = f"ClassicGD, learning_rate 0.01, exploration_step_size 0.01, n_random_steps {pop - 1} (+ θ: {pop}/gen)"
    else:
        raise ValueError(name)
    return opt, params, text


def call_l2l(args: argparse.Namespace, name: str) -> dict:
    cmd = [args.l2l_python, str(HERE / "peer_l2l.py"), "--optimizer", name, "--function", "rastrigin",
           "--dim", "2", "--pop-size", str(args.l2l_pop_size), "--generations", str(args.l2l_generations),
           "--seed", "0", "--timeout", str(args.l2l_timeout), "--python", args.l2l_python]
    start = time.perf_counter()
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=args.l2l_timeout + 60)
        lines = [line for line in out.stdout.splitlines() if line.strip()]
        result = json.loads(lines[-1]) if lines else {"error": f"exit code {out.returncode}",
                                                      "stderr_tail": out.stderr[-2000:]}
    except (subprocess.TimeoutExpired, json.JSONDecodeError, OSError) as error:
        result = {"error": repr(error)}
    result["subprocess_wall_seconds"] = time.perf_counter() - start
    return result


def versus_l2l(args: argparse.Namespace) -> list[dict]:
    rows = []
    gens = args.l2l_generations
    problem = l2ljax.function_optimizee("rastrigin", 2)
    for name in L2L_OPTIMIZERS:
        opt, params, text = build_l2l_like(name, problem, args.l2l_pop_size, gens)
        key = jax.random.key(0)
        row = {"optimizer": name, "function": "rastrigin-2d", "pop_size": args.l2l_pop_size, "generations": gens,
               "settings": text, "load_start": load()}

        def ours(o=opt, p=params, k=key):
            return l2ljax.run(o, problem, k, gens, params=p)

        cold, result = timed(ours)  # first call of a new optimizer: tracing + compilation
        warm = [timed(ours)[0] for _ in range(args.repeats)]
        peer = call_l2l(args, name)
        warm += [timed(ours)[0] for _ in range(args.repeats)]
        row["l2ljax"] = {"class": type(opt).__name__, "config": strict(opt.config()), "params": params_dict(params),
                         "evaluations_per_generation": opt.pop_size,
                         "seconds_cold": cold, "seconds_per_generation_cold": cold / gens,
                         "seconds_warm_all": warm, "seconds_per_generation_warm": min(warm) / gens,
                         "best_fitness": float(result.best_fitness[0])}
        row["l2l"] = peer
        if "seconds_per_generation" in peer:
            row["ratio_l2l_over_ours_per_generation_warm"] = (peer["seconds_per_generation"]
                                                             / row["l2ljax"]["seconds_per_generation_warm"])
            row["ratio_l2l_over_ours_per_generation_cold"] = (peer["seconds_per_generation"]
                                                             / row["l2ljax"]["seconds_per_generation_cold"])
            row["ratio_l2l_total_over_ours_cold_total"] = peer["seconds_total"] / cold
        row["load_end"] = load()
        print(f"L2L {name}: l2ljax warm {row['l2ljax']['seconds_per_generation_warm']:.4g} s/gen, cold "
              f"{row['l2ljax']['seconds_per_generation_cold']:.3g} s/gen | L2L "
              f"{peer.get('seconds_per_generation', float('nan')):.3g} s/gen", file=sys.stderr, flush=True)
        rows.append(row)
    return rows


# --------------------------------------------------------------------------- report


def fmt(x: Any, spec: str = ".3g") -> str:
    try:
        return format(float(x), spec)
    except (TypeError, ValueError):
        return "–"


def markdown(report: dict) -> str:
    m, v, s = report["machine"], report["versions"], report["sizes"]
    out = [f"Machine: {m['cpu_model']}, {m['logical_cores']} logical cores ({m['cores_available']} available), "
           f"JAX backend {m['jax_backend']}; load average (1/5/15 min) {report['load_start']} at start, "
           f"{report['load_end']} at end (shared machine).",
           f"Versions: Python {v['python']}, jax {v['jax']}, l2ljax {v['l2ljax']}, "
           f"evosax {v.get('evosax', '–')} (jax {v.get('evosax_jax', '–')}), "
           f"l2lforhpc {v.get('l2lforhpc', '–')} (Python {v.get('l2l_python', '–')}).",
           ""]
    rows = report.get("versus_evosax", [])
    if rows:
        out += [f"### l2ljax vs evosax: population {s['pop_size']}, {s['generations']} generations, "
                f"dim {s['dim']}, seeds {s['seeds']}",
                "",
                "Whole run as one jitted `lax.scan` (`run()`: `l2ljax.run`, one call per seed); generations per "
                f"second = best of {len(s['seeds'])} seeds × {s['repeats']} timed calls, measured interleaved; "
                "ratio = l2ljax / evosax (> 1: l2ljax faster). Final best fitness: mean over seeds "
                "(lower is better; minimum 0).",
                "",
                "| function | algorithm | l2ljax gen/s | l2ljax `run()` gen/s | evosax gen/s (default) | ratio "
                "| evosax gen/s (matched) | ratio | l2ljax best f | evosax best f (default) "
                "| evosax best f (matched) |",
                "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for r in rows:
            o, o_run = r["l2ljax"]["summary"], r["l2ljax"]["summary_run"]
            d = r["evosax"].get("default", {}).get("summary", {})
            mt = r["evosax"].get("matched", {}).get("summary", {})
            cells = [f"{r['function']}-{r['dim']}d", NAMES[r["algorithm"]],
                     fmt(o.get("generations_per_second"), ".0f"), fmt(o_run.get("generations_per_second"), ".0f"),
                     fmt(d.get("generations_per_second"), ".0f"), fmt(d.get("ratio_ours_over_evosax"), ".2f"),
                     fmt(mt.get("generations_per_second"), ".0f"), fmt(mt.get("ratio_ours_over_evosax"), ".2f"),
                     fmt(o.get("final_best_fitness_mean")), fmt(d.get("final_best_fitness_mean")),
                     fmt(mt.get("final_best_fitness_mean"))]
            out.append("| " + " | ".join(cells) + " |")
        out += ["", "Settings (\"matched\": evosax run again with l2ljax's value where its API has the setting; "
                "– : no such run):", ""]
        seen = set()
        for r in rows:
            if r["algorithm"] in seen:
                continue
            seen.add(r["algorithm"])
            same = [x for x in rows if x["algorithm"] == r["algorithm"]]
            out.append(f"* **{NAMES[r['algorithm']]}** — l2ljax: " + "; ".join(
                f"{x['function']}: {x['l2ljax']['settings']}" for x in same[:1]) + (
                " (σ0 is 0.3·(upper−lower) of each function)" if r["algorithm"] in ("snes", "cma_es") else ""))
            for label in r["evosax"]:
                out.append(f"  evosax {label}: " + " / ".join(
                    dict.fromkeys(f"{x['evosax'][label]['settings']}" for x in same)))
        out.append("")
    rows = report.get("versus_l2l", [])
    if rows:
        r0 = rows[0]
        out += [f"### l2ljax vs original L2L: Rastrigin-2d, population {r0['pop_size']}, "
                f"{r0['generations']} generations, seed 0",
                "",
                "L2L: local runner (one worker process per individual, file exchange); seconds per generation "
                "measured around its runner (start-up excluded). l2ljax: `l2ljax.run`, cold = first call incl. "
                "tracing and compilation (÷ generations), warm = best of repeats. speed-up = L2L / l2ljax.",
                "",
                "| optimizer | L2L s/gen | L2L start-up s | L2L total s | l2ljax s/gen (warm) | l2ljax s/gen (cold) "
                "| speed-up (warm) | speed-up (cold) | L2L best f | l2ljax best f |",
                "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for r in rows:
            p, o = r["l2l"], r["l2ljax"]
            out.append(
                f"| {r['optimizer'].upper()} | {fmt(p.get('seconds_per_generation'))} | "
                f"{fmt(p.get('seconds_startup'))} | {fmt(p.get('seconds_total'))} | "
                f"{fmt(o['seconds_per_generation_warm'])} | {fmt(o['seconds_per_generation_cold'])} | "
                f"{fmt(r.get('ratio_l2l_over_ours_per_generation_warm'), '.0f')}× | "
                f"{fmt(r.get('ratio_l2l_over_ours_per_generation_cold'), '.1f')}× | "
                f"{fmt(p.get('best_fitness'), '.4g')} | {fmt(o['best_fitness'], '.4g')} |")
        out += ["", "Settings (L2L's bin/l2l-fun-*.py examples, the same on both sides): " + "; ".join(
            f"{r['optimizer'].upper()}: {r['settings']}" for r in rows), ""]
        errors = [f"{r['optimizer']}: {r['l2l']['error']}" for r in rows if "error" in r["l2l"]]
        if errors:
            out += ["L2L errors: " + "; ".join(errors), ""]
    return "\n".join(out)


def versions(report: dict) -> dict:
    v = {"python": sys.version.split()[0], "jax": jax.__version__, "jaxlib": metadata.version("jaxlib"),
         "l2ljax": metadata.version("l2ljax"), "numpy": np.__version__}
    for row in report.get("versus_evosax", []):
        for peer in row["evosax"].values():
            for s in peer["seeds"]:
                if "version" in s:
                    v.update(evosax=s["version"], evosax_jax=s["jax_version"], evosax_python=s["python"])
    for row in report.get("versus_l2l", []):
        if "version" in row["l2l"]:
            v.update(l2lforhpc=row["l2l"]["version"], l2l_python=row["l2l"]["python"], l2l_numpy=row["l2l"]["numpy"])
    return v


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", default=str(HERE / "results_optimizers_vs_peers.json"), help="output JSON path")
    p.add_argument("--functions", nargs="+", default=["rastrigin", "rosenbrock"],
                   choices=["rastrigin", "rosenbrock"], help="part 1 functions (both libraries' bounds: L2L's)")
    p.add_argument("--algorithms", nargs="+", default=list(ALGORITHMS), choices=ALGORITHMS)
    p.add_argument("--dim", type=int, default=10)
    p.add_argument("--pop-size", type=int, default=64)
    p.add_argument("--generations", type=int, default=1000)
    p.add_argument("--seeds", type=int, default=3, help="seeds 0 .. n-1")
    p.add_argument("--repeats", type=int, default=3, help="timed repeats per measurement (best is kept)")
    p.add_argument("--evosax-python", default="/work/envs/evosax/bin/python")
    p.add_argument("--evosax-timeout", type=float, default=300.0)
    p.add_argument("--no-evosax", action="store_true", help="part 1 without the evosax runs")
    p.add_argument("--l2l-python", default="/work/envs/l2l/bin/python")
    p.add_argument("--l2l-pop-size", type=int, default=32)
    p.add_argument("--l2l-generations", type=int, default=3)
    p.add_argument("--l2l-timeout", type=float, default=120.0, help="per L2L run, seconds")
    p.add_argument("--no-l2l", action="store_true", help="skip part 2")
    args = p.parse_args(argv)
    args.seeds = list(range(args.seeds))
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    start = time.perf_counter()
    report: dict[str, Any] = {
        "benchmark": "optimizers_vs_peers", "command": " ".join(sys.argv), "machine": machine(),
        "load_start": load(),
        "sizes": {"dim": args.dim, "pop_size": args.pop_size, "generations": args.generations, "seeds": args.seeds,
                  "repeats": args.repeats, "functions": args.functions, "algorithms": args.algorithms,
                  "l2l_pop_size": args.l2l_pop_size, "l2l_generations": args.l2l_generations,
                  "l2l_function": "rastrigin-2d"},
        "notes": [
            "Fitness is the raw function value, minimised (l2ljax: weight -1, evosax: minimises).",
            "l2ljax clips samples to the bounds; evosax samples unbounded.",
            "OpenES: l2ljax with evaluate_mean=False, so both evaluate exactly pop_size points per generation.",
            "Simulated annealing differs in kind: l2ljax runs pop_size independent chains (L2L), evosax one "
            "chain with pop_size proposals per generation.",
            "SimpleGA vs GeneticAlgorithm differ in kind: evosax truncation selection + mutation of every gene, "
            "l2ljax L2L/DEAP tournament selection, blend crossover, sparse mutation, hall of fame.",
        ],
    }
    if args.algorithms:
        report["versus_evosax"] = versus_evosax(args)
    if not args.no_l2l:
        report["versus_l2l"] = versus_l2l(args)
    report["load_end"] = load()
    report["wall_seconds"] = time.perf_counter() - start
    report["versions"] = versions(report)
    report["markdown"] = markdown(report)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    with open(args.json, "w") as f:
        json.dump(strict(report), f, indent=1)
    print(report["markdown"])
    print(f"\nJSON: {args.json} ({report['wall_seconds']:.0f} s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
