r"""A population split by rows over shards: which rows a shard holds, and sums over all of them.

Optimizers whose state *is* the population (the EnKF ensemble) can keep, under a coordinator
that shards state (``l2ljax.parallel.MPI()``), only their own rows on each rank: J = 100,000
members of an 18,050-weight CNN are 7.2 GB in float32, more than one GPU should hold twice.
Everything such an optimizer computes over members is then written against a :class:`Rows`:

- ``rows.total(x)`` turns per-shard partial sums into sums over every member (an all-reduce;
  the identity when one shard holds every row), so a mean is ``rows.total(jnp.sum(X, 0)) / J``;
- ``rows.normal(key, width)`` and ``rows.keys(key)`` give each row the random numbers of its
  *global* index (``fold_in(key, row)``), so a run draws the same numbers however it is split;
- ``rows.gather(x)`` collects small per-row arrays (fitness, J numbers) from every shard, in row
  order, and ``rows.best(score, x)`` agrees on the best row of all shards;
- ``rows.take(x, source)`` gives each row the global row ``source`` names (states that move
  between members: replica exchange), passing the shards' blocks around a ring so that no shard
  ever holds more than two blocks.

``ALL`` rows (``whole``): one shard holds the whole population, every member is the identity and
the code is the unsharded code. The row split is balanced (:func:`split`): shard r holds
``J // n`` or ``J // n + 1`` consecutive rows, the first ``J % n`` shards one more.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Protocol

import jax
import jax.numpy as jnp

Array = jax.Array


class Engine(Protocol):
    """The collectives a sharding coordinator gives :class:`Rows` (traced inside ``jit``)."""

    n_shards: int

    def sum_over_shards(self, x: Array) -> Array: ...

    def gather_over_shards(self, x: Array) -> Array: ...  # (n_shards, *x.shape), equal shapes only

    def shift_over_shards(self, x: Array, offset: int) -> Array: ...  # shard (r − offset) mod n's x, equal shapes

    # only for ``Rows(traced=True)``: this shard's index, known inside the one program of all shards
    # def shard_index(self) -> Array: ...


def split(total_rows: int, n_shards: int, shard: int) -> tuple[int, int]:
    """``(start, count)`` of shard ``shard``'s rows in a balanced split of ``total_rows`` rows."""
    base, extra = divmod(total_rows, n_shards)
    return shard * base + min(shard, extra), base + (shard < extra)


GENERATORS = ("threefry", "hash")


def normal_rows(key: Array, rows: Array, width: int, dtype: Any = jnp.float32,
                generator: str = "threefry") -> Array:
    """(len(rows), width) standard normals, the ones of global row j from ``fold_in(key, j)``.

    generator: 'threefry' (``jax.random.normal``) or 'hash' (:func:`hashed_normal_rows`, about
    4× cheaper on CPU; for noise injection, where threefry's bits dominate the cost).
    """
    if generator == "threefry":
        return jax.vmap(lambda row: jax.random.normal(jax.random.fold_in(key, row), (width,), dtype))(rows)
    if generator == "hash":
        return hashed_normal_rows(key, rows, width, dtype)
    raise ValueError(f"generator must be one of {GENERATORS}, got {generator!r}")


def _mix32(x: Array) -> Array:
    # lowbias32 (C. Wellons, hash-prospector, 2018): xorshifts and odd multiplies, a bijection of uint32
    x = (x ^ (x >> 16)) * jnp.uint32(0x7FEB352D)
    x = (x ^ (x >> 15)) * jnp.uint32(0x846CA68B)
    return x ^ (x >> 16)


def hashed_normal_rows(key: Array, rows: Array, width: int, dtype: Any = jnp.float32) -> Array:
    """(len(rows), width) standard normals from a counter-based integer hash, row-keyed like :func:`normal_rows`.

    Row j's two 32-bit seeds come from threefry (``fold_in(key, j)``), so rows are as independent
    as threefry makes them and a run draws the same numbers however its rows are split. Column
    p's bits are ``mix(mix(p ⊕ s₀) + s₁)`` with the lowbias32 mixer: a bijection of p, so the
    columns of a row never repeat a word. Their top 23 bits give u, uniform on
    (−1, 1) in steps of 2⁻²² (never ±1), and z = √2 erf⁻¹(u) (|z| ≤ 5.3). Statistically sound for
    noise (mean, variance, kurtosis, row and column correlations are tested), not for cryptography.
    Computed in float32, then cast to ``dtype``. Threefry spends ~20 rounds per word; this is 9
    integer operations, so 500 × 18,050 normals cost 30 instead of 115–135 ms on the 2-core CPU.
    """
    seeds = jax.vmap(lambda row: jax.random.bits(jax.random.fold_in(key, row), (2,), jnp.uint32))(rows)
    column = jnp.arange(width, dtype=jnp.uint32)[None, :]
    bits = _mix32(_mix32(column ^ seeds[:, :1]) + seeds[:, 1:])
    unit = jax.lax.bitcast_convert_type((bits >> 9) | jnp.uint32(0x3F800000), jnp.float32) - 1.0  # [0, 1)
    u = 2.0 * unit - 1.0 + jnp.float32(2.0 ** -23)
    return (jnp.float32(2.0 ** 0.5) * jax.lax.erf_inv(u)).astype(dtype)


@dataclasses.dataclass(frozen=True)
class Rows:
    """This shard's rows ``[start, start + count)`` of a population of ``total_rows``.

    ``engine`` does the collectives (None: this shard holds every row). Hashable and static: it
    is closed over by compiled programs, never passed as an array.

    ``traced``: one program runs every shard (a ``shard_map`` over a mesh: ``parallel.Devices``,
    ``Distributed``), so the shard's index is known only inside it (``engine.shard_index()``);
    the shards are then equal, ``count = total_rows / n_shards`` rows each, and ``start`` is
    unused (:attr:`first` is the traced first row).
    """

    total_rows: int
    start: int = 0
    count: int = -1  # -1: every row
    engine: Any = None
    traced: bool = False

    def __post_init__(self) -> None:
        if self.traced:
            if self.engine is None or self.total_rows % self.engine.n_shards:
                raise ValueError(f"traced rows need an engine whose shards divide {self.total_rows} rows")
            object.__setattr__(self, "count", self.total_rows // self.engine.n_shards)
        if self.count < 0:
            object.__setattr__(self, "count", self.total_rows - self.start)

    @property
    def whole(self) -> bool:
        return self.engine is None

    @property
    def n_shards(self) -> int:
        return 1 if self.engine is None else self.engine.n_shards

    @property
    def shard(self) -> Any:
        """This shard's index in the split (traced for ``traced`` rows)."""
        if self.traced:
            return self.engine.shard_index()
        return next(r for r in range(self.n_shards) if split(self.total_rows, self.n_shards, r)[0] == self.start)

    @property
    def first(self) -> Any:
        """The global index of this shard's first row (traced for ``traced`` rows)."""
        return self.shard * self.count if self.traced else self.start

    def _block(self, shard: Any) -> tuple[Any, int]:
        """(first row, row count) of shard ``shard`` (a traced index for ``traced`` rows)."""
        if self.traced:
            return shard * self.count, self.count
        return split(self.total_rows, self.n_shards, shard)

    def total(self, partial: Array) -> Array:
        """Sum of every shard's ``partial`` (a sum over its own rows)."""
        return partial if self.engine is None else self.engine.sum_over_shards(partial)

    def indices(self) -> Array:
        """The global indices of this shard's rows."""
        return self.first + jnp.arange(self.count)

    def own(self, x: Any) -> Any:
        """This shard's rows of ``x``, an array over the whole population (leading axis total_rows)."""
        if self.whole:
            return x
        if self.traced:
            return jax.lax.dynamic_slice_in_dim(x, self.first, self.count)
        return x[self.start:self.start + self.count]

    def keys(self, key: Array) -> Array:
        """This shard's rows of ``jax.random.split(key, total_rows)`` (keys are small: split all)."""
        return self.own(jax.random.split(key, self.total_rows))

    def normal(self, key: Array, width: int, dtype: Any = jnp.float32, generator: str = "threefry") -> Array:
        """(count, width) standard normals, row j drawn from ``fold_in(key, j)`` for its global j."""
        return normal_rows(key, self.indices(), width, dtype, generator)

    def gather(self, x: Array) -> Array:
        """Every shard's rows of ``x`` (leading axis ``count``) in row order: (total_rows, ...).

        For small per-row arrays (fitness, flags): moving population-sized arrays this way would
        undo the point of sharding."""
        if self.engine is None:
            return x
        per_shard = -(-self.total_rows // self.n_shards)
        padded = jnp.concatenate([x, jnp.zeros((per_shard - self.count, *x.shape[1:]), x.dtype)])
        everyone = self.engine.gather_over_shards(padded)
        return jnp.concatenate([everyone[r, :split(self.total_rows, self.n_shards, r)[1]]
                                for r in range(self.n_shards)])

    def take(self, x: Array, source: Array) -> Array:
        """Row ``source[i]`` (a global index) of the whole population, for each entry of ``source``
        (any length: e.g. two per own row, a row and its partner).

        Sharded, every block travels once around a ring of shards (n − 1 shifts of ⌈J/n⌉ rows): the
        bytes of an all-gather, but only one travelling block held beside the output. Meant for
        states that move between members, not for reading the whole population."""
        if self.engine is None:
            return x[source]
        n, per_shard = self.n_shards, -(-self.total_rows // self.n_shards)
        block = jnp.concatenate([x, jnp.zeros((per_shard - self.count, *x.shape[1:]), x.dtype)])
        out = jnp.zeros((source.shape[0], *x.shape[1:]), x.dtype)
        for offset in range(n):
            owner = (self.shard - offset) % n
            start, count = self._block(owner)
            local = source - start
            here = (local >= 0) & (local < count)
            picked = block[jnp.clip(local, 0, per_shard - 1)]
            out = jnp.where(here.reshape(-1, *([1] * (x.ndim - 1))), picked, out)
            if offset < n - 1:
                block = self.engine.shift_over_shards(block, 1)
        return out

    def gather_blocks(self, block: Array) -> Array:
        """Every shard's ``block`` (equal shapes, e.g. its k best rows): (n_shards, *block.shape)."""
        return block[None] if self.engine is None else self.engine.gather_over_shards(block)

    def best(self, score: Array, x: Array) -> tuple[Array, Array]:
        """``(score[i], x[i])`` of the best row over every shard: the first maximum in row order,
        as ``jnp.argmax`` of the whole population picks it. ``score`` must be NaN-free."""
        i = jnp.argmax(score)
        if self.engine is None:
            return score[i], x[i]
        # one collective per generation: every shard's best score and row together, (n_shards, 1 + P)
        everyone = self.engine.gather_over_shards(jnp.concatenate([score[i][None].astype(x.dtype), x[i]]))
        r = jnp.argmax(everyone[:, 0])
        return everyone[r, 0].astype(score.dtype), everyone[r, 1:]


def everything(total_rows: int) -> Rows:
    """One shard holding every row: the unsharded case."""
    return Rows(total_rows)
