r"""Minibatchers over an observation series: which samples iteration n assimilates.

EKI for large data sets (Kovachki & Stuart 2019, *Ensemble Kalman inversion: a derivative-free
technique for machine learning tasks*, Inverse Problems 35:095005) uses a different minibatch
of the observation series at every iteration; an *epoch* is one pass over all batches.
EnsembleKalmanProcesses' ``FixedMinibatcher`` and ``RandomFixedSizeMinibatcher`` over an
``ObservationSeries`` are the same idea. Here a minibatcher is a static object with pure,
jittable index functions, so the data schedule of a whole run can live inside ``lax.scan``::

    epoch(n)   = (n // repetitions) // batches_per_epoch
    indices(n) = the samples of batch (n // repetitions) mod batches_per_epoch of that epoch

``repetitions`` uses each batch for that many consecutive iterations (the LOD protocol of
Yegenoglu et al. 2020 uses 8).

- :class:`FixedMinibatcher` — given batches, visited in order, the same every epoch.
- :class:`RandomMinibatcher` — batches of ``batch_size`` from a fresh permutation of the
  ``n_samples`` every epoch (a key from ``seed`` and the epoch). A size that does not divide the
  series raises :class:`MinibatchError` unless ``remainder='drop'`` (the last
  ``n_samples mod batch_size`` samples of each epoch's permutation are skipped, so every epoch
  sees a different subset).

Example::

    batches = RandomMinibatcher(60000, 64, remainder="drop")
    idx = batches.indices(n)                       # (64,) int32, jittable in n
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array

__all__ = ["FixedMinibatcher", "MinibatchError", "RandomMinibatcher"]


class MinibatchError(ValueError):
    """A minibatch configuration that does not fit the observation series."""


def _positive(value: int, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise MinibatchError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


class FixedMinibatcher:
    """Fixed batches of equal size, in the given order every epoch.

    batches: a sequence of index sequences (or an (n_batches, batch_size) integer array); all
    batches must have the same size (jittable indexing), indices in [0, n_samples) if given.
    """

    def __init__(self, batches: Sequence[Sequence[int]] | np.ndarray, *, n_samples: int | None = None,
                 repetitions: int = 1):
        sizes = {len(b) for b in batches}
        if len(batches) == 0 or 0 in sizes:
            raise MinibatchError("FixedMinibatcher needs at least one non-empty batch")
        if len(sizes) != 1:
            raise MinibatchError(f"all batches must have the same size, got sizes {sorted(sizes)}; "
                                 "split the series into equal parts or use RandomMinibatcher")
        table = np.asarray(batches)
        if table.dtype.kind not in "iu":
            raise MinibatchError(f"batch indices must be integers, got {table.dtype}")
        if table.min() < 0 or (n_samples is not None and table.max() >= n_samples):
            raise MinibatchError(f"batch indices must lie in [0, {n_samples}), got [{table.min()}, {table.max()}]")
        self.table = table.astype(np.int32)
        self.batches_per_epoch, self.batch_size = self.table.shape
        self.repetitions = _positive(repetitions, "repetitions")

    def epoch(self, n: Array) -> Array:
        return (n // self.repetitions) // self.batches_per_epoch

    def indices(self, n: Array) -> Array:
        return jnp.asarray(self.table)[(n // self.repetitions) % self.batches_per_epoch]


class RandomMinibatcher:
    """Random batches of ``batch_size`` out of ``n_samples``, reshuffled every epoch."""

    def __init__(self, n_samples: int, batch_size: int, *, repetitions: int = 1, seed: int = 0,
                 remainder: str = "error"):
        self.n_samples = _positive(n_samples, "n_samples")
        self.batch_size = _positive(batch_size, "batch_size")
        self.repetitions = _positive(repetitions, "repetitions")
        if remainder not in ("error", "drop"):
            raise MinibatchError(f"remainder must be 'error' or 'drop', got {remainder!r}")
        if self.batch_size > self.n_samples:
            raise MinibatchError(f"batch_size {batch_size} exceeds the {n_samples} samples of the series")
        if self.n_samples % self.batch_size and remainder == "error":
            raise MinibatchError(f"batch_size {batch_size} does not divide the series of {n_samples} samples "
                                 f"({n_samples % batch_size} left over); pick a divisor or pass remainder='drop'")
        self.batches_per_epoch = self.n_samples // self.batch_size
        self.seed = seed

    def epoch(self, n: Array) -> Array:
        return (n // self.repetitions) // self.batches_per_epoch

    def indices(self, n: Array) -> Array:
        batch = n // self.repetitions
        epoch, position = batch // self.batches_per_epoch, batch % self.batches_per_epoch
        order = jax.random.permutation(jax.random.fold_in(jax.random.key(self.seed), epoch), self.n_samples)
        return jax.lax.dynamic_slice(order, (position * self.batch_size,), (self.batch_size,))
