"""A jittable optimizee whose generations take a chosen time (tests of pacing and interrupts)."""

import jax
import jax.numpy as jnp

import l2ljax


def build(repeats: int):
    """Random search on a 2-d problem whose every evaluation runs ``repeats`` 256×256 matrix products."""

    def slow(x, key):
        def body(_, m):
            return jnp.tanh(m @ m)

        m = jax.lax.fori_loop(0, repeats, body, jnp.full((256, 256), 1e-3) + jnp.sum(x) * 1e-9)
        return jnp.sum(m) * 0 + jnp.sum(x ** 2)

    problem = l2ljax.Optimizee.create(slow, jnp.zeros(2), lower=-1.0, upper=1.0, weights=(-1.0,))
    return l2ljax.RandomSearch(problem, pop_size=4), problem
