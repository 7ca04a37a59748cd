"""Exhaustive and random search: the baselines every optimizer must beat.

GridSearch (L2L ``GridSearchOptimizer``, ``param_grid={name: (lo, hi, n_steps)}``): the
Cartesian grid of ``n_steps + 1`` equally spaced points per coordinate, lower and upper
bound included. A grid larger than memory is walked in slices: generation g evaluates
points ``[g·pop_size, (g+1)·pop_size)`` (the last slice repeats the final point), so
``n_generations = ceil(grid_size / pop_size)`` covers it.

RandomSearch: ``pop_size`` independent uniform draws from the bounded box each generation.

Example::

    opt = GridSearch(problem.space, n_steps=20)          # 21 × 21 points for a 2-d problem
    result = l2ljax.run(opt, problem, key, n_generations=opt.n_generations)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from l2ljax.core import Evaluation, Optimizee, Optimizer, Space


def _require_bounded(space: Space, who: str) -> None:
    if not space.bounded:
        raise ValueError(f"{who} needs finite lower and upper bounds on every coordinate")


class GridSearch(Optimizer):
    name = "GridSearch"

    def __init__(self, space: Space | Optimizee, n_steps: int | Sequence[int] = 10,
                 pop_size: int | None = None):
        space = space.space if isinstance(space, Optimizee) else space
        _require_bounded(space, "GridSearch")
        steps = np.broadcast_to(np.asarray(n_steps), (space.dim,))
        if steps.dtype.kind not in "iu" or np.any(steps < 1):
            raise ValueError(f"n_steps must be positive integers (one per coordinate or one for all), got {n_steps}")
        self.n_steps = tuple(int(s) for s in steps)
        self.grid_size = math.prod(s + 1 for s in self.n_steps)
        super().__init__(space, self.grid_size if pop_size is None else pop_size)
        self.n_generations = -(-self.grid_size // self.pop_size)

    def grid_points(self, index: jax.Array) -> jax.Array:
        """Flat grid index (row-major over coordinates) -> point of shape (..., dim)."""
        counts = jnp.asarray([s + 1 for s in self.n_steps])
        strides = jnp.asarray(np.cumprod([1] + [s + 1 for s in self.n_steps[::-1]])[:-1][::-1].copy())
        digits = (index[..., None] // strides) % counts
        dtype = self.space.dtype
        lo, hi = jnp.asarray(self.space.lower, dtype), jnp.asarray(self.space.upper, dtype)
        return lo + (hi - lo) * digits / jnp.asarray(self.n_steps, dtype)

    def _init(self, key: jax.Array, x0: jax.Array, params: Any) -> jax.Array:
        return jnp.array(0, jnp.int32)  # index of the next slice

    def _ask(self, key: jax.Array, inner: jax.Array, params: Any) -> jax.Array:
        index = jnp.minimum(inner * self.pop_size + jnp.arange(self.pop_size), self.grid_size - 1)
        return self.grid_points(index)

    def _tell(self, inner: jax.Array, population: jax.Array, evaluation: Evaluation, params: Any) -> jax.Array:
        return inner + 1

    def config(self) -> dict[str, Any]:
        return {**super().config(), "n_steps": self.n_steps, "grid_size": self.grid_size}


class RandomSearch(Optimizer):
    name = "RandomSearch"

    def __init__(self, space: Space | Optimizee, pop_size: int):
        super().__init__(space, pop_size)
        _require_bounded(self.space, "RandomSearch")

    def _init(self, key: jax.Array, x0: jax.Array, params: Any) -> None:
        return None

    def _ask(self, key: jax.Array, inner: None, params: Any) -> jax.Array:
        dtype = self.space.dtype
        lo, hi = jnp.asarray(self.space.lower, dtype), jnp.asarray(self.space.upper, dtype)
        return jax.random.uniform(key, (self.pop_size, self.space.dim), dtype, lo, hi)

    def _tell(self, inner: None, population: jax.Array, evaluation: Evaluation, params: Any) -> None:
        return None
