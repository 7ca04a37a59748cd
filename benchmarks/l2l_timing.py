"""One generation of whole inner runs: vmapped in one program vs one jitted run after another (same run)."""

from __future__ import annotations

import time

import jax
import numpy as np

from l2ljax.core import Optimizee


def vmapped_vs_loop(problem: Optimizee, flat: jax.Array, generation: int = 0, repeats: int = 3) -> dict:
    """Seconds per generation both ways, interleaved ``repeats`` times after a warm-up (compile) of each;
    checks that both give the same fitness (to 5 validation images in 10,000)."""
    batch, _ = problem.data(jax.numpy.asarray(generation))
    keys = jax.random.split(jax.random.key(0), flat.shape[0])
    vmapped = jax.jit(lambda f: jax.vmap(problem.fn, in_axes=(0, 0, None))(problem.space.to_pytree(f), keys,
                                                                           batch)[0])
    one = jax.jit(lambda row, k: problem.fn(problem.space.unravel(row), k, batch)[0])

    def loop() -> np.ndarray:
        return np.array([float(one(flat[i], keys[i])) for i in range(flat.shape[0])])

    a, b = np.asarray(vmapped(flat)), loop()  # warm-up: compile both
    # same trainings; vmapped and single matmuls round differently, which can flip an image or two
    np.testing.assert_allclose(a, b, atol=5e-4, equal_nan=True)
    t_vmap, t_loop = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(vmapped(flat))
        t_vmap.append(time.perf_counter() - start)
        start = time.perf_counter()
        loop()
        t_loop.append(time.perf_counter() - start)
    return {"population": int(flat.shape[0]), "vmapped_s": float(np.median(t_vmap)), "loop_s": float(np.median(t_loop)),
            "loop_over_vmapped": float(np.median(t_loop) / np.median(t_vmap)), "repeats": repeats}
