"""Spreading the inner loop over devices and processes.

The optimizer's state is small next to the cost of scoring a population, so every device and
every process keeps the whole state (same key, same program, same numbers) and only the
population's *evaluation* is split: each shard scores its rows, and the rows are gathered back
before ``tell``. Per-individual keys are drawn for the whole population before it is split, so a
parallel run gives the same numbers as a run on one device (to floating-point tolerance: XLA
may round a shard's batched products differently).

- ``Devices``: several devices of one process (GPUs of a node, or CPU devices made with
  ``XLA_FLAGS=--xla_force_host_platform_device_count=N``). The population axis is sharded over a
  ``jax.sharding.Mesh``; XLA inserts the gather.
- ``MPI``: one process per rank (``srun``/``mpirun``), rows gathered with mpi4jax inside the
  jitted step (``mpi4py`` for optimizees evaluated on the host). Rank 0 writes the run directory
  and shows progress; every rank returns the same result.
- ``auto()``: ``MPI`` when launched as several ranks, else ``Devices`` when there are several
  local devices, else ``None`` (plain ``jit``).

A population whose size is not a multiple of the shard count is padded with copies of its first
row, which are scored and dropped: no ragged-shape errors, at most ``shards - 1`` wasted rows.

Example (``srun -n 4 python train.py``, or ``mpirun -n 4``)::

    result = l2ljax.run(opt, problem, key, 100, parallel=l2ljax.parallel.auto(), directory="runs/a")
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

PyTree = Any

# Set by the launchers for each rank of a parallel job (Slurm's srun, MPICH/Hydra, Open MPI, PMIx).
_RANK_COUNT_VARIABLES = ("SLURM_STEP_NUM_TASKS", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "PMIX_SIZE")
_LOCAL_RANK_VARIABLES = ("SLURM_LOCALID", "MPI_LOCALRANKID", "OMPI_COMM_WORLD_LOCAL_RANK", "PMI_LOCAL_RANK")


def launched_ranks(environ: dict[str, str] | None = None) -> int:
    """How many ranks the launcher started this process among (1 when not launched by one)."""
    environ = os.environ if environ is None else environ
    for name in _RANK_COUNT_VARIABLES:
        value = environ.get(name, "")
        if value.isdigit() and int(value) > 0:
            return int(value)
    return 1


def local_rank(environ: dict[str, str] | None = None) -> int | None:
    """This process's index among the ranks on its node, if a launcher says it."""
    environ = os.environ if environ is None else environ
    for name in _LOCAL_RANK_VARIABLES:
        value = environ.get(name, "")
        if value.isdigit():
            return int(value)
    return None


def bind_local_gpu(environ: dict[str, str] | None = None) -> str | None:
    """Give each rank of a node its own GPU: set ``CUDA_VISIBLE_DEVICES`` to the local rank.

    Call before JAX first touches a device. Without it, every rank of a node would see (and
    preallocate memory on) every GPU. Does nothing when the launcher already chose the GPUs
    (``srun --gpus-per-task``) or when this is not a multi-rank launch. Returns the value set.
    """
    environ = os.environ if environ is None else environ
    local = local_rank(environ)
    if launched_ranks(environ) <= 1 or local is None or "CUDA_VISIBLE_DEVICES" in environ:
        return None
    environ["CUDA_VISIBLE_DEVICES"] = str(local)
    return environ["CUDA_VISIBLE_DEVICES"]


def padded_rows(rows: PyTree, n_shards: int) -> tuple[PyTree, int]:
    """Rows padded with copies of row 0 to a multiple of ``n_shards``; and the rows per shard."""
    n = jax.tree_util.tree_leaves(rows)[0].shape[0]
    per_shard = math.ceil(n / n_shards)
    extra = per_shard * n_shards - n
    if extra == 0:
        return rows, per_shard
    return jax.tree_util.tree_map(lambda x: jnp.concatenate([x, jnp.repeat(x[:1], extra, axis=0)]), rows), per_shard


class Devices:
    """Shard the population's evaluation over the devices of this process.

    devices: the devices to use (default: ``jax.local_devices()``).
    """

    is_writer = True

    def __init__(self, devices: list[jax.Device] | None = None):
        devices = list(jax.local_devices() if devices is None else devices)
        if not devices:
            raise ValueError("Devices() needs at least one device")
        self.mesh = Mesh(np.array(devices), ("population",))
        self.n_shards = len(devices)

    def __repr__(self) -> str:
        return f"Devices({self.n_shards} × {self.mesh.devices.flat[0].platform})"

    def _ids(self) -> tuple[int, ...]:
        return tuple(d.id for d in self.mesh.devices.flat)

    def __eq__(self, other: object) -> bool:  # equal meshes reuse compiled programs
        return isinstance(other, Devices) and self._ids() == other._ids()

    def __hash__(self) -> int:
        return hash(("Devices", self._ids()))

    def map_rows(self, compute: Callable[[PyTree], PyTree], rows: PyTree) -> PyTree:
        """``compute(rows)`` with the rows split over the devices; traced inside ``jit``."""
        n = jax.tree_util.tree_leaves(rows)[0].shape[0]
        rows, _ = padded_rows(rows, self.n_shards)
        sharded = NamedSharding(self.mesh, PartitionSpec("population"))
        rows = jax.lax.with_sharding_constraint(rows, sharded)
        out = jax.lax.with_sharding_constraint(compute(rows), sharded)
        return jax.tree_util.tree_map(lambda x: x[:n], out)

    def map_rows_host(self, compute: Callable[[np.ndarray, int], np.ndarray], rows: np.ndarray, seed: int
                      ) -> np.ndarray:
        return compute(rows, seed)  # a host simulator is not split over devices

    def place(self, tree: PyTree) -> PyTree:
        """Replicate ``tree`` (the optimizer state) over the mesh, where the jitted step expects it."""
        return jax.device_put(tree, NamedSharding(self.mesh, PartitionSpec()))

    def agree(self, value: Any) -> Any:
        return value

    def raise_together(self, error: BaseException | None) -> None:
        if error is not None:
            raise error


class MPI:
    """One process per MPI rank; each rank scores its slice of the population.

    comm: an mpi4py communicator (default: a clone of ``COMM_WORLD``, so that l2ljax's messages
          never mix with the caller's). Needs ``mpi4py`` and ``mpi4jax`` (``pip install
          "l2ljax[mpi]"`` against the cluster's MPI).

    Every rank must call ``run`` with the same arguments. Rank 0 writes the run directory and
    shows progress; a stop decided by a callback on rank 0 stops every rank.
    """

    def __init__(self, comm: Any = None):
        try:
            import mpi4jax  # noqa: F401 (checked here, used in map_rows)
            from mpi4py import MPI as _mpi
        except ImportError as error:
            raise ImportError("l2ljax.parallel.MPI needs mpi4py and mpi4jax: pip install 'l2ljax[mpi]' "
                              "(built against your cluster's MPI)") from error
        self.comm = _world_clone(_mpi) if comm is None else comm
        self.rank, self.n_shards = self.comm.Get_rank(), self.comm.Get_size()
        self.is_writer = self.rank == 0

    def __repr__(self) -> str:
        return f"MPI(rank {self.rank} of {self.n_shards})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, MPI) and self.comm.py2f() == other.comm.py2f()

    def __hash__(self) -> int:
        return hash(("MPI", self.comm.py2f()))

    def map_rows(self, compute: Callable[[PyTree], PyTree], rows: PyTree) -> PyTree:
        """``compute`` of this rank's rows, gathered from every rank; traced inside ``jit``."""
        import mpi4jax

        n = jax.tree_util.tree_leaves(rows)[0].shape[0]
        rows, per_shard = padded_rows(rows, self.n_shards)
        mine = jax.tree_util.tree_map(lambda x: jax.lax.dynamic_slice_in_dim(x, self.rank * per_shard, per_shard),
                                      rows)

        def gather(x: jax.Array) -> jax.Array:
            everyone = mpi4jax.allgather(x, comm=self.comm)  # (ranks, per_shard, ...)
            return everyone.reshape((self.n_shards * per_shard, *x.shape[1:]))[:n]

        return jax.tree_util.tree_map(gather, compute(mine))

    def map_rows_host(self, compute: Callable[[np.ndarray, int], np.ndarray], rows: np.ndarray, seed: int
                      ) -> np.ndarray:
        """Host evaluation of this rank's rows, gathered. Rank r > 0 gets its own seed: one shared
        seed would give individuals on different ranks the same noise. If the simulator raises on
        any rank, every rank raises (no rank is left waiting for the others' rows)."""
        per_shard = math.ceil(rows.shape[0] / self.n_shards)
        mine = rows[self.rank * per_shard:(self.rank + 1) * per_shard]
        rank_seed = seed if self.rank == 0 else int(np.random.SeedSequence([seed, self.rank]).generate_state(1)[0] >> 1)
        result, error = None, None
        try:
            result = compute(mine, rank_seed) if len(mine) else None
        except Exception as failure:  # re-raised below, on every rank
            error = failure
        parts = self._gather_or_raise(result, error)
        return np.concatenate([part for part in parts if part is not None])

    def place(self, tree: PyTree) -> PyTree:
        return tree

    def agree(self, value: Any) -> Any:
        """Rank 0's value on every rank (e.g. whether to stop): ranks never take different paths."""
        return self.comm.bcast(value, root=0)

    def raise_together(self, error: BaseException | None) -> None:
        """Raise on every rank if any rank failed, instead of leaving the others waiting forever."""
        self._gather_or_raise(None, error)

    def _gather_or_raise(self, value: Any, error: BaseException | None) -> list:
        """Every rank's ``value``; or, if any rank had an ``error``, raise there and on every other rank."""
        gathered = self.comm.allgather((value, None if error is None else f"{type(error).__name__}: {error}"))
        if error is not None:
            raise error
        for rank, (_, message) in enumerate(gathered):
            if message is not None:
                raise RuntimeError(f"rank {rank} failed: {message}")
        return [part for part, _ in gathered]


_WORLD_CLONE: Any = None


def _world_clone(mpi: Any) -> Any:
    """One clone of COMM_WORLD per process: equal ``MPI()`` objects then share compiled programs."""
    global _WORLD_CLONE
    if _WORLD_CLONE is None:
        _WORLD_CLONE = mpi.COMM_WORLD.Clone()
    return _WORLD_CLONE


Parallel = Devices | MPI


def auto() -> Parallel | None:
    """``MPI`` if this process is one of several launched ranks, else ``Devices`` if this process
    has several devices, else ``None``."""
    if launched_ranks() > 1:
        scheme = MPI()
        if scheme.n_shards > 1:
            return scheme
    if jax.local_device_count() > 1:
        return Devices()
    return None
