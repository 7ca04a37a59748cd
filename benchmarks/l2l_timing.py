"""One generation of whole inner runs: in one compiled program (vmapped, or in vmapped chunks) vs
one jitted run after another, interleaved in the same run."""

from __future__ import annotations

import time

import jax
import numpy as np

from l2ljax.core import Optimizee


def generation_times(problems: dict[str, Optimizee], flat: jax.Array, generation: int = 0, repeats: int = 3) -> dict:
    """Median seconds per generation for each problem's population path and for a Python loop over
    single jitted runs (of the first problem's ``fn``), after a warm-up (compile) of each; checks that
    all give the same fitness (to 5 validation images in 10,000: vmapped and single matmuls round
    differently)."""
    first = next(iter(problems.values()))
    batch, _ = first.data(jax.numpy.asarray(generation))
    keys = jax.random.split(jax.random.key(0), flat.shape[0])
    one = jax.jit(lambda row, k: first.fn(first.space.unravel(row), k, batch)[0])
    runners = {name: (lambda f, p=p: p.evaluate_flat(jax.random.key(0), f, generation).fitness[:, 0])
               for name, p in problems.items()}
    runners = {name: jax.jit(r) for name, r in runners.items()}
    runners["python loop of single runs"] = lambda f: np.array([float(one(f[i], keys[i])) for i in range(len(f))])
    reference = np.asarray(runners["python loop of single runs"](flat))
    for r in runners.values():
        np.testing.assert_allclose(np.asarray(r(flat)), reference, atol=5e-4, equal_nan=True)  # + warm-up
    times: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(repeats):
        for name, r in runners.items():
            start = time.perf_counter()
            jax.block_until_ready(r(flat))
            times[name].append(time.perf_counter() - start)
    seconds = {name: float(np.median(t)) for name, t in times.items()}
    loop = seconds["python loop of single runs"]
    return {"population": int(flat.shape[0]), "repeats": repeats, "seconds": seconds,
            "loop_over": {name: loop / s for name, s in seconds.items()}}
