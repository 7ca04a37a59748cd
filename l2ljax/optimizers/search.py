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
from flax import struct

from l2ljax.core import Evaluation, Optimizee, Optimizer, Space


def _require_bounded(space: Space, who: str) -> None:
    if not space.bounded:
        raise ValueError(f"{who} needs finite lower and upper bounds on every coordinate")


MAX_GRID_POINTS = 2**63 - 1  # grids are indexed by 64-bit integers


@struct.dataclass
class GridState:
    """The next slice's first grid point as mixed-radix digits (one per coordinate, int32 each),
    so grids far beyond int32 indices are walked exactly without 64-bit integers in JAX."""

    digits: jax.Array  # (dim,) int32
    exhausted: jax.Array  # () bool: past the last point (the last point repeats)


class GridSearch(Optimizer):
    name = "GridSearch"

    def __init__(self, space: Space | Optimizee, n_steps: int | Sequence[int] = 10,
                 pop_size: int | None = None):
        space = space.space if isinstance(space, Optimizee) else space
        _require_bounded(space, "GridSearch")
        steps = np.broadcast_to(np.asarray(n_steps), (space.dim,))
        if steps.dtype.kind not in "iu" or np.any(steps < 1):
            raise ValueError(f"n_steps must be positive integers (one per coordinate or one for all), got {n_steps}")
        if np.any(steps >= 2**30):
            raise ValueError(f"n_steps must be below 2**30 per coordinate, got {n_steps}")
        n_steps = tuple(int(s) for s in steps)
        grid_size = math.prod(s + 1 for s in n_steps)
        if grid_size > MAX_GRID_POINTS:
            raise ValueError(f"GridSearch: the grid has {grid_size:.3g} points, more than 64-bit indices reach "
                             f"({MAX_GRID_POINTS:.3g}); use fewer n_steps or RandomSearch")
        if pop_size is None and grid_size > 2**24:
            raise ValueError(f"GridSearch: the grid has {grid_size:.3g} points; give pop_size to walk it in slices")
        self.n_steps = n_steps
        self.grid_size = grid_size
        super().__init__(space, grid_size if pop_size is None else pop_size)
        self.n_generations = -(-self.grid_size // self.pop_size)

    def _add(self, digits: jax.Array, offset: jax.Array) -> tuple[jax.Array, jax.Array]:
        """``digits + offset`` in the grid's mixed radix (last coordinate fastest); overflow past the end."""
        carry, out = offset, []
        for axis in range(self.space.dim - 1, -1, -1):
            value = digits[..., axis] + carry
            out.append(value % (self.n_steps[axis] + 1))
            carry = value // (self.n_steps[axis] + 1)
        return jnp.stack(out[::-1], axis=-1), carry > 0

    def grid_points(self, index: jax.Array) -> jax.Array:
        """Flat grid index (row-major over coordinates, below 2**31) -> point of shape (..., dim)."""
        digits, _ = self._add(jnp.zeros(self.space.dim, jnp.int32), jnp.asarray(index, jnp.int32))
        return self._points(digits)

    def _points(self, digits: jax.Array) -> jax.Array:
        dtype = self.space.dtype
        lo, hi = jnp.asarray(self.space.lower, dtype), jnp.asarray(self.space.upper, dtype)
        return lo + (hi - lo) * digits / jnp.asarray(self.n_steps, dtype)

    def _init(self, key: jax.Array, x0: jax.Array, params: Any) -> GridState:
        return GridState(jnp.zeros(self.space.dim, jnp.int32), jnp.array(False))

    def _ask(self, key: jax.Array, inner: GridState, params: Any) -> jax.Array:
        digits, past_end = self._add(inner.digits, jnp.arange(self.pop_size, dtype=jnp.int32))
        last = jnp.asarray(self.n_steps, jnp.int32)
        return self._points(jnp.where((past_end | inner.exhausted)[:, None], last, digits))

    def _tell(self, inner: GridState, population: jax.Array, evaluation: Evaluation, params: Any) -> GridState:
        digits, past_end = self._add(inner.digits, jnp.int32(self.pop_size))
        return GridState(digits, inner.exhausted | past_end)

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
