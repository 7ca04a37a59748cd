"""Spreading the inner loop over devices and processes.

Small optimizer state (CE, CMA-ES, ES, NES distributions) is kept whole by every device and
every process (same key, same program, same numbers) and only the population's *evaluation* is
split: each shard scores its rows, and the rows are gathered back before ``tell``. State that *is*
the population (``Optimizer.sharded_fields``: the EnKF ensemble, SA and PT chains, GA offspring)
is split by rows instead: under ``MPI()`` each rank keeps its rows (:mod:`l2ljax.rows`), under
``Devices()`` and ``Distributed()`` each device does, when the device count divides the
population (:class:`_MeshSharded`); ``shard_state=False`` keeps it whole.

Per-individual keys are drawn for the whole population before it is split, so a parallel run
gives the same numbers as a run on one device (to floating-point tolerance: XLA may round a
shard's batched products differently). Host simulators get the same seed on every rank
and the index of their first row (``fn(population, seed, first_row)``, the contract of
:class:`l2ljax.Optimizee`), so ``worker_pool_optimizee`` derives per-row seeds that do not depend
on the split; a two-argument ``fn(population, seed)`` gets a seed of its own per rank.

- ``Devices``: several devices of one process (GPUs of a node, or CPU devices made with
  ``XLA_FLAGS=--xla_force_host_platform_device_count=N``). The population axis is sharded over a
  ``jax.sharding.Mesh``; XLA inserts the gather.
- ``MPI``: one process per rank (``srun``/``mpirun``), rows gathered with mpi4jax inside the
  jitted step (``mpi4py`` for optimizees evaluated on the host). Rank 0 writes the run directory
  and shows progress; every rank returns the same result.
- ``Distributed``: one process per rank joined by ``jax.distributed`` (multi-controller JAX), no
  MPI needed: the jitted step is one program over a mesh of every process's devices (NCCL
  between GPUs, gloo between CPU processes), the rows split and gathered as ``Devices`` does;
  agreement on the host goes through JAX's own collectives. Rank 0 writes, as under ``MPI``.
- ``SingleProcess``: the no-op scheme of a plain run (what ``parallel=None`` means).
- ``auto()`` picks, in this order: the engine named by ``$L2LJAX_PARALLEL`` (``none``,
  ``devices``, ``mpi``, ``distributed``); ``Distributed`` for a launch by hand
  (``L2LJAX_NUM_PROCESSES`` > 1); for several ranks of a launcher (``srun``, ``mpirun``) ``MPI``
  if mpi4jax imports, else ``Distributed``; ``Devices`` when this process has several
  accelerators; else ``None`` (plain ``jit``). Which to install: mpi4jax where a system MPI is
  what the site has (CPU clusters, a CUDA-aware MPI); multi-controller JAX on GPU clusters (JAX's
  own route: NCCL between GPUs, nothing to build against the site) and wherever there is no MPI.

A population whose size is not a multiple of the shard count is padded with copies of its first
row, which are scored and dropped: no ragged-shape errors, at most ``shards - 1`` wasted rows.

Example (``srun -n 4 python train.py``, or ``mpirun -n 4``; ``L2LJAX_PARALLEL=distributed`` for
multi-controller JAX)::

    result = l2ljax.run(opt, problem, key, 100, parallel=l2ljax.parallel.auto(), directory="runs/a")
"""

from __future__ import annotations

import contextlib
import math
import os
import pickle
import re
import socket
import warnings
from collections.abc import Callable
from typing import Any, NamedTuple, Protocol, runtime_checkable

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

PyTree = Any
CPU_DEVICES_WARNING = (
    "Devices() over several CPU devices: they share one thread pool, so the split gains nothing "
    "(benchmarks/RESULTS.md §8), and jaxlib's batched LAPACK kernels (e.g. the batched triangular "
    "solves of the EnKF sequential update) can deadlock when every device runs them at once "
    "(seen with jaxlib 0.10.2 on 2 cores). On CPUs, split over MPI ranks instead; CPU devices "
    "serve to test the sharded program.")

# Set by the launchers for each rank of a parallel job. MPI's own process managers (Hydra, Open
# MPI, PMI/PMIx) come first: a Slurm variable may be inherited from an enclosing `srun --pty bash`.
_RANK_COUNT_VARIABLES = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "PMIX_SIZE", "SLURM_STEP_NUM_TASKS")
_LOCAL_RANK_VARIABLES = ("MPI_LOCALRANKID", "OMPI_COMM_WORLD_LOCAL_RANK", "PMI_LOCAL_RANK", "SLURM_LOCALID")
_LOCAL_COUNT_VARIABLES = ("MPI_LOCALNRANKS", "OMPI_COMM_WORLD_LOCAL_SIZE", "PMI_LOCAL_SIZE",
                          "SLURM_STEP_TASKS_PER_NODE")


def _first_count(environ: dict[str, str] | None, names: tuple[str, ...]) -> int | None:
    environ = os.environ if environ is None else environ
    for name in names:
        value = environ.get(name, "")
        if name == "SLURM_STEP_TASKS_PER_NODE":  # "4" or "4(x2)"; uneven layouts ("4,2") are not read
            value = value.split("(")[0]
        if value.isdigit():
            return int(value)
    return None


def launched_ranks(environ: dict[str, str] | None = None) -> int:
    """How many ranks the launcher started this process among (1 when not launched by one)."""
    return max(1, _first_count(environ, _RANK_COUNT_VARIABLES) or 1)


def local_rank(environ: dict[str, str] | None = None) -> int | None:
    """This process's index among the ranks on its node, if a launcher says it."""
    return _first_count(environ, _LOCAL_RANK_VARIABLES)


def local_rank_count(environ: dict[str, str] | None = None) -> int | None:
    """How many ranks the launcher put on this node, if it says it."""
    return _first_count(environ, _LOCAL_COUNT_VARIABLES)


def bind_local_gpu(environ: dict[str, str] | None = None, n_gpus: int | None = None) -> str | None:
    """Give each rank of a node its own GPU through ``CUDA_VISIBLE_DEVICES``; returns the value set.

    Call before JAX first touches a device: without it every rank of a node would use the first
    GPU and preallocate memory on all of them. Rank ``local`` gets the ``local % n``-th of the GPUs
    the launcher made visible (all of them with ``--gres=gpu:N``), or of the node's ``n_gpus``
    (default: counted in ``/proc/driver/nvidia/gpus``) when it made none. Does nothing when the
    launcher gave this rank a single GPU (``srun --gpus-per-task=1``), or for one rank per node.
    """
    environ = os.environ if environ is None else environ
    local, count = local_rank(environ), local_rank_count(environ)
    if local is None or launched_ranks(environ) <= 1 or count == 1:
        return None
    visible = environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        choices = [entry.strip() for entry in visible.split(",") if entry.strip()]
        if len(choices) <= 1:
            return None
    else:
        n_gpus = _count_nvidia_gpus() if n_gpus is None else n_gpus
        choices = [str(i) for i in range(n_gpus or local + 1)]
    environ["CUDA_VISIBLE_DEVICES"] = choices[local % len(choices)]
    return environ["CUDA_VISIBLE_DEVICES"]


def _count_nvidia_gpus() -> int | None:
    try:
        return len(os.listdir("/proc/driver/nvidia/gpus")) or None
    except OSError:
        return None


def _shard_map(f: Callable, mesh: Mesh, in_specs: Any, out_specs: Any) -> Callable:
    """``shard_map`` without its replication check: ``f`` ends in an ``all_gather``, which the check
    does not always see through."""
    if hasattr(jax, "shard_map"):  # jax >= 0.7
        return jax.shard_map(f, mesh=mesh, in_specs=in_specs, out_specs=out_specs, check_vma=False)
    from jax.experimental.shard_map import shard_map

    return shard_map(f, mesh=mesh, in_specs=in_specs, out_specs=out_specs, check_rep=False)


def padded_rows(rows: PyTree, n_shards: int) -> tuple[PyTree, int]:
    """Rows padded with copies of row 0 to a multiple of ``n_shards``; and the rows per shard."""
    n = jax.tree_util.tree_leaves(rows)[0].shape[0]
    per_shard = math.ceil(n / n_shards)
    extra = per_shard * n_shards - n
    if extra == 0:
        return rows, per_shard
    return jax.tree_util.tree_map(lambda x: jnp.concatenate([x, jnp.repeat(x[:1], extra, axis=0)]), rows), per_shard


@runtime_checkable
class Coordinator(Protocol):
    """What the run layer asks of a parallel scheme: the whole interface, declared once.

    Traced inside the compiled step: ``map_rows`` (score the rows, split over shards, gathered
    back) and ``any_traced`` (a flag set on any shard). On the host: ``map_rows_host`` (the same
    for host simulators), ``place`` (put the state where the compiled step expects it),
    ``is_writer`` (this process writes the run directory and shows progress), ``agree`` (the
    writer's value everywhere), ``raise_together`` (an error on any process raises on all) and
    ``settle`` (after a chunk's host work: raise together, and stop if any process asks to).
    """

    is_writer: bool
    n_shards: int

    def map_rows(self, compute: Callable[[PyTree], PyTree], rows: PyTree) -> PyTree: ...

    def map_rows_host(self, compute: Callable[[np.ndarray, int, int], np.ndarray], rows: np.ndarray, seed: int
                      ) -> np.ndarray: ...

    def any_traced(self, flag: jax.Array) -> jax.Array: ...

    def place(self, tree: PyTree) -> PyTree: ...

    def agree(self, value: Any) -> Any: ...

    def check_same(self, fingerprint: dict[str, str]) -> None: ...

    def raise_together(self, error: BaseException | None) -> None: ...

    def settle(self, stop: bool, error: BaseException | None) -> bool: ...

    # Population-sized state (l2ljax.rows): identities unless the scheme shards state.
    def shard(self, optimizer: Any) -> Any: ...

    def own_rows(self, optimizer: Any, state: PyTree) -> PyTree: ...

    def whole_state(self, optimizer: Any, state: PyTree, *, everywhere: bool = False) -> PyTree: ...

    def whole_template(self, optimizer: Any, state: PyTree) -> PyTree: ...


class _Replicated:
    """Every process holds the whole state: the population-state members are identities."""

    def shard(self, optimizer: Any) -> Any:
        """The optimizer this scheme runs: ``optimizer`` itself (its state is not split)."""
        return optimizer

    def own_rows(self, optimizer: Any, state: PyTree) -> PyTree:
        """This process's part of a whole state: all of it."""
        return state

    def whole_state(self, optimizer: Any, state: PyTree, *, everywhere: bool = False) -> PyTree:
        """The whole state from every process's part (on the writer, or ``everywhere``)."""
        return state

    def whole_template(self, optimizer: Any, state: PyTree) -> PyTree:
        """A state shaped like the whole state (what checkpoints hold)."""
        return state


class SingleProcess(_Replicated):
    """The coordinator of a run in one process on one device: every member is the identity."""

    is_writer = True
    n_shards = 1

    def __repr__(self) -> str:
        return "one device"

    def __eq__(self, other: object) -> bool:  # equal schemes share compiled programs
        return type(other) is SingleProcess

    def __hash__(self) -> int:
        return hash("SingleProcess")

    def map_rows(self, compute: Callable[[PyTree], PyTree], rows: PyTree) -> PyTree:
        return compute(rows)

    def map_rows_host(self, compute: Callable[[np.ndarray, int, int], np.ndarray], rows: np.ndarray, seed: int
                      ) -> np.ndarray:
        return compute(rows, seed, 0)  # a host simulator is not split over devices

    def any_traced(self, flag: jax.Array) -> jax.Array:
        return flag

    def place(self, tree: PyTree) -> PyTree:
        return tree

    def agree(self, value: Any) -> Any:
        return value

    def check_same(self, fingerprint: dict[str, str]) -> None:
        """One process agrees with itself."""

    def raise_together(self, error: BaseException | None) -> None:
        if error is not None:
            raise error

    def settle(self, stop: bool, error: BaseException | None) -> bool:
        self.raise_together(error)
        return stop


class _MeshEngine:
    """The collectives of :class:`l2ljax.rows.Rows` inside one ``shard_map`` over a mesh axis."""

    def __init__(self, axis: str, n_shards: int):
        self.axis, self.n_shards = axis, n_shards

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _MeshEngine) and (self.axis, self.n_shards) == (other.axis, other.n_shards)

    def __hash__(self) -> int:
        return hash(("_MeshEngine", self.axis, self.n_shards))

    def sum_over_shards(self, x: jax.Array) -> jax.Array:
        return jax.lax.psum(x, self.axis)

    def gather_over_shards(self, x: jax.Array) -> jax.Array:
        return jax.lax.all_gather(x, self.axis)

    def shift_over_shards(self, x: jax.Array, offset: int) -> jax.Array:
        n = self.n_shards
        return jax.lax.ppermute(x, self.axis, [(r, (r + offset) % n) for r in range(n)])

    def shard_index(self) -> jax.Array:
        return jax.lax.axis_index(self.axis)


class _MeshSharded:
    """Population-sized state split by rows over a mesh's devices (``Devices``, ``Distributed``).

    Between chunks such a field is one global ``jax.Array`` sharded by rows (each device holds
    J / devices of them; callbacks compute with it as with the whole array, and XLA moves what
    they need). Inside the compiled chunk, the whole scan of generations runs as one
    ``shard_map``: each device runs the optimizer on its rows (``Rows(traced=True)``, collectives
    ``psum``/``all_gather``/``ppermute`` over the mesh axis), as each MPI rank does under
    ``MPI()``. Equal shards only: a population the device count does not divide stays whole
    (replicated, as with ``shard_state=False``), since a row-sharded array must split evenly.
    """

    mesh: Mesh
    n_shards: int
    shard_state: bool

    def _shards(self, optimizer: Any) -> bool:
        return (self.shard_state and self.n_shards > 1 and getattr(optimizer, "shardable", False)
                and getattr(optimizer, "rows", None) is None and optimizer.pop_size % self.n_shards == 0)

    @property
    def _row_sharding(self) -> NamedSharding:
        return NamedSharding(self.mesh, PartitionSpec("population"))

    def program_optimizer(self, optimizer: Any) -> Any:
        """The optimizer each device runs inside the compiled chunk: its rows, traced."""
        if not self._shards(optimizer):
            return optimizer
        from l2ljax.rows import Rows

        return optimizer.replace(rows=Rows(optimizer.pop_size, engine=_MeshEngine("population", self.n_shards),
                                           traced=True))

    def wrap_chunk(self, optimizer: Any, chunk: Callable) -> Callable:
        """``chunk(state, run_key, threshold, n_steps, length)`` as one ``shard_map`` over the mesh:
        the population-sized fields split by rows, everything else (and every record) replicated."""
        if not self._shards(optimizer):
            return chunk

        def sharded(state: PyTree, run_key: jax.Array, threshold: jax.Array, n_steps: jax.Array, length: int):
            replicated = jax.tree_util.tree_map(lambda _: PartitionSpec(), state)
            spec = _map_sharded(optimizer, replicated, lambda _: PartitionSpec("population"))
            per_device = _shard_map(lambda s, k, t, n: chunk(s, k, t, n, length), self.mesh,
                                    in_specs=(spec, PartitionSpec(), PartitionSpec(), PartitionSpec()),
                                    out_specs=(spec, PartitionSpec(), PartitionSpec()))
            return per_device(state, run_key, threshold, n_steps)

        return sharded

    def any_within(self, flag: jax.Array) -> jax.Array:
        """``any_traced`` inside the sharded chunk (already within the ``shard_map``)."""
        return jax.lax.pmax(flag.astype(jnp.int32), "population") > 0

    def without_state_sharding(self) -> Any:
        """This scheme with the state kept whole (for optimizees evaluated on the host)."""
        if not self.shard_state:
            return self
        import copy

        plain = copy.copy(self)
        plain.shard_state = False
        return plain

    def own_rows(self, optimizer: Any, state: PyTree) -> PyTree:
        """A whole state with its population-sized fields as row-sharded global arrays (each
        process builds only the blocks of its own devices)."""
        if not self._shards(optimizer):
            return state
        sharding = self._row_sharding

        def split(x: Any) -> jax.Array:
            if isinstance(x, jax.Array) and x.sharding == sharding:
                return x
            whole = np.asarray(x)
            return jax.make_array_from_callback(whole.shape, sharding, lambda index: whole[index])

        return _map_sharded(optimizer, state, split)

    def whole_state(self, optimizer: Any, state: PyTree, *, everywhere: bool = False) -> PyTree:
        """The row-sharded fields gathered to every process: numpy arrays on the host for a
        checkpoint (never the whole population on one device), ``jax.Array`` s for the result
        (``everywhere``)."""
        if not self._shards(optimizer):
            return state
        from jax.experimental import multihost_utils

        def join(x: jax.Array) -> Any:
            whole = np.asarray(x) if x.is_fully_addressable else multihost_utils.process_allgather(x, tiled=True)
            return jnp.asarray(whole) if everywhere else np.asarray(whole)

        return _map_sharded(optimizer, state, join)

    def whole_template(self, optimizer: Any, state: PyTree) -> PyTree:
        """``state`` with its population-sized fields as zeros of their (whole) shape."""
        if not self._shards(optimizer):
            return state
        return _map_sharded(optimizer, state, lambda x: np.zeros(x.shape, np.dtype(x.dtype)))

    def _keep_row_sharded(self, leaf: Any) -> bool:
        return isinstance(leaf, jax.Array) and self.n_shards > 1 and leaf.sharding == self._row_sharding


class Devices(_MeshSharded, SingleProcess):
    """Shard the population's evaluation over the devices of this process.

    devices: the devices to use (default: ``jax.local_devices()``).
    shard_state: optimizers whose state is the population (``sharded_fields``: the EnKF
          ensemble, SA/PT chains, GA offspring) keep it split by rows over the devices when their
          count divides the population (see :class:`_MeshSharded`); False: replicated.
    """

    def __init__(self, devices: list[jax.Device] | None = None, *, shard_state: bool = True):
        devices = list(jax.local_devices() if devices is None else devices)
        if not devices:
            raise ValueError("Devices() needs at least one device")
        if len(devices) > 1 and devices[0].platform == "cpu":
            warnings.warn(CPU_DEVICES_WARNING, RuntimeWarning, stacklevel=2)
        self.mesh = Mesh(np.array(devices), ("population",))
        self.n_shards = len(devices)
        self.shard_state = bool(shard_state)

    def __repr__(self) -> str:
        return f"Devices({self.n_shards} × {self.mesh.devices.flat[0].platform})"

    def _ids(self) -> tuple[int, ...]:
        return tuple(d.id for d in self.mesh.devices.flat)

    def __eq__(self, other: object) -> bool:  # equal meshes reuse compiled programs
        return type(other) is type(self) and self._ids() == other._ids() and self.shard_state == other.shard_state

    def __hash__(self) -> int:
        return hash((type(self).__name__, self._ids(), self.shard_state))

    def map_rows(self, compute: Callable[[PyTree], PyTree], rows: PyTree) -> PyTree:
        """``compute(rows)`` with the rows split over the devices; traced inside ``jit``.

        Only ``compute`` is split (a ``shard_map``); its results are gathered inside it and the
        rows going in and the results coming out are pinned as replicated. Left to propagate, the
        split spread from the evaluation into the optimizer's update, whose all-reduces then
        deadlocked XLA's CPU devices (EnKF sequential mode). A state kept whole (``shard_state=False``,
        or an optimizer that cannot be split) is then updated whole on every device, as on every
        MPI rank; a split one is updated shard by shard inside the sharded chunk (:class:`_MeshSharded`).
        """
        n = jax.tree_util.tree_leaves(rows)[0].shape[0]
        replicated = NamedSharding(self.mesh, PartitionSpec())
        rows, _ = padded_rows(jax.lax.with_sharding_constraint(rows, replicated), self.n_shards)

        def compute_and_gather(shard: PyTree) -> PyTree:
            return jax.tree_util.tree_map(lambda x: jax.lax.all_gather(x, "population", tiled=True), compute(shard))

        out = _shard_map(compute_and_gather, self.mesh, in_specs=(PartitionSpec("population"),),
                         out_specs=PartitionSpec())(rows)
        return jax.lax.with_sharding_constraint(jax.tree_util.tree_map(lambda x: x[:n], out), replicated)

    def place(self, tree: PyTree) -> PyTree:
        """Replicate ``tree`` (the optimizer state) over the mesh, where the jitted step expects it
        (fields already split by rows, :meth:`own_rows`, stay split)."""
        replicated = NamedSharding(self.mesh, PartitionSpec())
        return jax.tree_util.tree_map(lambda leaf: leaf if self._keep_row_sharded(leaf) else
                                      jax.device_put(leaf, replicated), tree)


class _Ranks:
    """The host-side agreement of engines with one process per rank, declared once.

    Subclasses set ``rank``, ``n_ranks`` and ``ranks_name`` (for messages) and give
    ``_allgather`` (every rank's picklable value, in rank order); ``_broadcast`` defaults to rank
    0's entry of it. Each exchange runs in a phase of the scheme's watchdog, if it has one
    (:mod:`l2ljax.run.watchdog`).
    """

    rank: int
    n_ranks: int
    ranks_name = "ranks"

    def _allgather(self, value: Any) -> list:
        raise NotImplementedError

    def _broadcast(self, value: Any) -> Any:
        return self._allgather(value)[0]

    def _phase(self, key: str, description: str, **options: bool) -> contextlib.AbstractContextManager:
        from l2ljax.run.watchdog import watching  # here: l2ljax.run imports this module

        return watching(self)(key, description, **options)

    def agree(self, value: Any) -> Any:
        """Rank 0's value on every rank (e.g. whether to stop): ranks never take different paths."""
        with self._phase("agree", "rank 0's decision (agree)", waits=True):
            return self._broadcast(value)

    def map_rows_host(self, compute: Callable[[np.ndarray, int, int], np.ndarray], rows: np.ndarray, seed: int
                      ) -> np.ndarray:
        """Host evaluation of this rank's rows, gathered: ``compute(rows, seed, first_row)`` with the
        same seed on every rank; ``first_row`` lets a simulator derive per-row seeds that do not
        depend on the split (:func:`l2ljax.core.host_convention`). If the simulator raises on any
        rank, every rank raises (none is left waiting)."""
        per_rank = math.ceil(rows.shape[0] / self.n_ranks)
        mine = rows[self.rank * per_rank:(self.rank + 1) * per_rank]
        result, error = None, None
        try:
            with self._phase("simulator", "the host simulator (its rows of the population)"):
                result = compute(mine, seed, self.rank * per_rank) if len(mine) else None
        except Exception as failure:  # re-raised below, on every rank
            error = failure
        parts = self._gather_or_raise(result, error)
        return np.concatenate([part for part in parts if part is not None])

    def check_same(self, fingerprint: dict[str, str]) -> None:
        """Raise on every rank, naming the fields and ranks, unless every rank has rank 0's
        ``fingerprint`` (digests of the key, optimizer, optimizee, hyperparameters and versions):
        ranks called differently would diverge silently or deadlock in a collective."""
        with self._phase("check_same", "the check that every rank runs the same run", waits=True, setup=True):
            everyone = self._allgather(fingerprint)
        differing = {field: [r for r, theirs in enumerate(everyone) if theirs.get(field) != value]
                     for field, value in everyone[0].items()}
        differing = {field: ranks for field, ranks in differing.items() if ranks}
        if differing:
            named = "; ".join(f"{field} on rank(s) {', '.join(map(str, ranks))}" for field, ranks in differing.items())
            raise ValueError(f"{self.ranks_name} were called differently from rank 0: {named}. Every rank must run "
                             "the same script with the same key, settings, data and package versions")

    def raise_together(self, error: BaseException | None) -> None:
        """Raise on every rank if any rank failed, instead of leaving the others waiting forever."""
        self._gather_or_raise(None, error)

    def settle(self, stop: bool, error: BaseException | None) -> bool:
        """After a chunk's host work: raise everywhere if any rank failed; stop if any rank asks to."""
        return any(self._gather_or_raise(bool(stop), error))

    def _gather_or_raise(self, value: Any, error: BaseException | None) -> list:
        """Every rank's ``value``; or, if any rank had an ``error``, raise there and on every other rank."""
        with self._phase("exchange", "the exchange of errors and stops", waits=True):
            gathered = self._allgather((value, None if error is None else f"{type(error).__name__}: {error}"))
        if error is not None:
            raise error
        for rank, (_, message) in enumerate(gathered):
            if message is not None:
                raise RuntimeError(f"rank {rank} failed: {message}")
        return [part for part, _ in gathered]


class MPI(_Ranks, _Replicated):
    """One process per MPI rank; each rank scores its slice of the population.

    comm: an mpi4py communicator (default: a clone of ``COMM_WORLD``, so that l2ljax's messages
          never mix with the caller's). Needs ``mpi4py`` and ``mpi4jax`` (``pip install
          "l2ljax[mpi]"`` against the cluster's MPI).

    shard_state: optimizers whose state is the population (``sharded_fields``: the EnKF
          ensemble, SA and PT chains, GA offspring) keep only this rank's rows (:mod:`l2ljax.rows`, a balanced
          split): the update is computed from per-rank partial sums (:mod:`l2ljax.kalman.eki`,
          "Sharded ensembles"), nothing population-sized is gathered in the loop, and each rank
          holds 1/ranks of the ensemble. Checkpoints are whole (gathered to rank 0 when written),
          so a run resumes on any number of ranks; ``RunResult.state`` is whole on every rank.
          False: every rank keeps the whole state and only the evaluation is split.
    timeout: seconds a rank may spend in one phase of the run loop (a chunk, writing the run
          directory and calling the callbacks, or waiting for the other ranks) before the job is
          aborted; default ``L2LJAX_RANK_TIMEOUT``, else max(600 s, 10 × the longest that phase
          took so far); ``math.inf``: never. See :mod:`l2ljax.run.watchdog`.

    Every rank must call ``run`` with the same arguments. Rank 0 writes the run directory and
    shows progress; a stop decided by a callback on rank 0 stops every rank. Callbacks see the
    rank's own state: with a sharded ensemble, use ``MPI().shard(opt)`` for its figures (e.g.
    ``shard(opt).ensemble_mean(state)``, an all-reduce every rank must call). An exception on
    any rank is raised on every rank. A rank that hangs (a callback or simulator that never
    returns) or dies is caught by a per-phase deadline: the rank that sees it passed prints one
    line to stderr naming the rank, the phase and the time, and calls ``comm.Abort(1)``, which
    ends every rank under any launcher (mpich's ``mpirun`` and ``srun`` also end the job at once
    when a rank is killed). The first chunk of each run, which compiles, and the check before
    it, where ranks still load their data, get at least ``L2LJAX_SETUP_TIMEOUT`` (default 1 h).
    """

    ranks_name = "MPI ranks"

    def __init__(self, comm: Any = None, timeout: float | None = None, *, shard_state: bool = True):
        try:
            import mpi4jax  # noqa: F401 (checked here, used in map_rows)
            from mpi4py import MPI as _mpi
        except ImportError as error:
            raise ImportError("l2ljax.parallel.MPI needs mpi4py and mpi4jax: pip install 'l2ljax[mpi]' "
                              "(built against your cluster's MPI)") from error
        self.comm = _world_clone(_mpi) if comm is None else comm
        self.rank, self.n_shards = self.comm.Get_rank(), self.comm.Get_size()
        self.n_ranks = self.n_shards
        self.is_writer = self.rank == 0
        self.shard_state = bool(shard_state)
        self._sharded: dict[int, tuple[Any, Any]] = {}  # id(optimizer) -> (optimizer, its sharded copy)
        from l2ljax.run.watchdog import Watchdog  # here: l2ljax.run imports this module

        self.watchdog = Watchdog(self.rank, self.n_shards, lambda: self.comm.Abort(1), timeout)

    def __repr__(self) -> str:
        return f"MPI(rank {self.rank} of {self.n_shards}{'' if self.shard_state else ', replicated state'})"

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, MPI) and self.comm.py2f() == other.comm.py2f()
                and self.shard_state == other.shard_state)

    def __hash__(self) -> int:
        return hash(("MPI", self.comm.py2f(), self.shard_state))

    # -- the engine of l2ljax.rows (traced)
    def sum_over_shards(self, x: jax.Array) -> jax.Array:
        import mpi4jax
        from mpi4py import MPI as _mpi

        return mpi4jax.allreduce(x, op=_mpi.SUM, comm=self.comm)

    def gather_over_shards(self, x: jax.Array) -> jax.Array:
        import mpi4jax

        return mpi4jax.allgather(x, comm=self.comm)

    def shift_over_shards(self, x: jax.Array, offset: int) -> jax.Array:
        import mpi4jax

        return mpi4jax.sendrecv(x, x, source=(self.rank - offset) % self.n_shards,
                                dest=(self.rank + offset) % self.n_shards, comm=self.comm)

    # -- population-sized state
    def _rows(self, optimizer: Any) -> Any:
        from l2ljax.rows import Rows, split

        start, count = split(optimizer.pop_size, self.n_shards, self.rank)
        return Rows(optimizer.pop_size, start, count, self)

    def _shards(self, optimizer: Any) -> bool:
        return self.shard_state and self.n_shards > 1 and bool(getattr(optimizer, "sharded_fields", ()))

    def shard(self, optimizer: Any) -> Any:
        """The optimizer this rank runs: for one whose state is the population, a copy that holds
        this rank's rows (``optimizer.replace(rows=...)``, made once per optimizer); else itself."""
        if not self._shards(optimizer) or getattr(optimizer, "rows", None) is not None:
            return optimizer
        if optimizer.pop_size < self.n_shards:
            raise ValueError(f"{optimizer.name}: pop_size={optimizer.pop_size} is smaller than the {self.n_shards} "
                             "MPI ranks sharing its ensemble; use fewer ranks or MPI(shard_state=False)")
        kept = self._sharded.get(id(optimizer))
        if kept is None or kept[0] is not optimizer:
            kept = (optimizer, optimizer.replace(rows=self._rows(optimizer)))
            self._sharded[id(optimizer)] = kept
        return kept[1]

    def own_rows(self, optimizer: Any, state: PyTree) -> PyTree:
        """This rank's rows of a whole state (e.g. a resumed checkpoint)."""
        if not self._shards(optimizer):
            return state
        rows = self._rows(optimizer)
        return _map_sharded(optimizer, state, rows.own)

    def whole_state(self, optimizer: Any, state: PyTree, *, everywhere: bool = False) -> PyTree:
        """Every rank's rows joined into the whole state: on rank 0 (the writer; the others keep
        their rows), or on every rank with ``everywhere``. A host-side gather every rank calls;
        for checkpoints and the result, never inside the loop."""
        if not self._shards(optimizer):
            return state

        def join(x: jax.Array) -> jax.Array:
            local = np.asarray(x)
            parts = self.comm.allgather(local) if everywhere else self.comm.gather(local, root=0)
            return x if parts is None else jnp.asarray(np.concatenate(parts))

        return _map_sharded(optimizer, state, join)

    def whole_template(self, optimizer: Any, state: PyTree) -> PyTree:
        """``state`` with its sharded fields as zeros of the whole population's shape (``np.zeros``
        maps no memory until written): the shapes a checkpoint holds."""
        if not self._shards(optimizer):
            return state
        return _map_sharded(optimizer, state,
                            lambda x: np.zeros((optimizer.pop_size, *x.shape[1:]), np.dtype(x.dtype)))

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

    def place(self, tree: PyTree) -> PyTree:
        return tree

    def any_traced(self, flag: jax.Array) -> jax.Array:
        """Whether ``flag`` is set on any rank, inside ``jit``: ranks whose replicated states drifted
        apart in the last bits still take the same branch around the next collective."""
        import mpi4jax
        from mpi4py import MPI as _mpi

        return mpi4jax.allreduce(flag.astype(jnp.int32), op=_mpi.MAX, comm=self.comm) > 0

    def _allgather(self, value: Any) -> list:
        return self.comm.allgather(value)

    def _broadcast(self, value: Any) -> Any:
        return self.comm.bcast(value, root=0)


def _map_sharded(optimizer: Any, state: PyTree, fn: Callable[[Any], Any]) -> PyTree:
    """``state`` with ``fn`` applied to the optimizer's population-sized fields of ``state.inner``
    (names; ``"chains.x"`` is field ``x`` of the named tuple in field ``chains``)."""
    return state.replace(inner=_map_fields(state.inner, optimizer.sharded_fields, fn))


def _map_fields(inner: Any, names: tuple[str, ...], fn: Callable[[Any], Any]) -> Any:
    changes: dict[str, Any] = {}
    for head in dict.fromkeys(name.partition(".")[0] for name in names):
        value = getattr(inner, head)
        nested = tuple(name.partition(".")[2] for name in names if name.startswith(head + "."))
        if value is not None:
            changes[head] = _map_fields(value, nested, fn) if nested else fn(value)
    return inner._replace(**changes)


_WORLD_CLONE: Any = None


def _world_clone(mpi: Any) -> Any:
    """One clone of COMM_WORLD per process: equal ``MPI()`` objects then share compiled programs."""
    global _WORLD_CLONE
    if _WORLD_CLONE is None:
        _WORLD_CLONE = mpi.COMM_WORLD.Clone()
    return _WORLD_CLONE


class LaunchSpec(NamedTuple):
    """How this process joins a ``jax.distributed`` job: the coordinator's ``host:port`` (None:
    rank 0 tells it through mpi4py), how many processes, which one this is, and who said so."""

    coordinator_address: str | None
    num_processes: int
    process_id: int
    launcher: str


# (launcher, rank variable, count variable), in the order of _RANK_COUNT_VARIABLES (MPI's own
# process managers before an inherited Slurm step); ours first: a launch by hand names itself.
_LAUNCHERS = (("L2LJAX_NUM_PROCESSES", "L2LJAX_PROCESS_ID", "L2LJAX_NUM_PROCESSES"),
              ("mpirun (Hydra/PMI)", "PMI_RANK", "PMI_SIZE"),
              ("Open MPI", "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE"),
              ("PMIx", "PMIX_RANK", "PMIX_SIZE"),
              ("srun", "SLURM_PROCID", "SLURM_STEP_NUM_TASKS"))
COORDINATOR_VARIABLE = "L2LJAX_COORDINATOR"


def launch_spec(coordinator_address: str | None = None, num_processes: int | None = None,
                process_id: int | None = None, environ: dict[str, str] | None = None) -> LaunchSpec:
    """The arguments of ``jax.distributed.initialize``: those given, else from the launcher.

    Processes: ``L2LJAX_NUM_PROCESSES``/``L2LJAX_PROCESS_ID``, else the variables of mpirun (Hydra
    ``PMI_*``, Open MPI, PMIx) or of an ``srun`` step. Coordinator: ``L2LJAX_COORDINATOR`` (or
    JAX's ``JAX_COORDINATOR_ADDRESS``), else for ``srun`` the step's first node and a port derived
    from the job and step ids, else for mpirun None (rank 0's host and a free port, through mpi4py).
    """
    environ = os.environ if environ is None else environ
    launcher = next((entry for entry in _LAUNCHERS if environ.get(entry[2], "").isdigit()), None)
    name = "arguments" if launcher is None else launcher[0]
    if num_processes is None:
        if launcher is None:
            raise RuntimeError(
                "Distributed(): launched as one process: no launcher variables (srun, mpirun) and no "
                "L2LJAX_NUM_PROCESSES. Launch one process per rank with srun or mpirun, or start them yourself with "
                f"{COORDINATOR_VARIABLE}=host:port, L2LJAX_NUM_PROCESSES=N and L2LJAX_PROCESS_ID=i on each")
        num_processes = int(environ[launcher[2]])
    if process_id is None:
        rank = "" if launcher is None else environ.get(launcher[1], "")
        if not rank.isdigit():
            raise RuntimeError(f"Distributed(): {name} gives {num_processes} processes but not this one's index: "
                               f"set {'L2LJAX_PROCESS_ID' if launcher is None else launcher[1]} or pass process_id")
        process_id = int(rank)
    address = coordinator_address or environ.get(COORDINATOR_VARIABLE) or environ.get("JAX_COORDINATOR_ADDRESS")
    if address is None and name == "srun" and "SLURM_STEP_NODELIST" in environ:
        job, step = int(environ.get("SLURM_JOB_ID", "0")), int(environ.get("SLURM_STEP_ID", "0") or 0)
        address = f"{first_host(environ['SLURM_STEP_NODELIST'])}:{61440 + (31 * job + step) % 4096}"
    if address is None and name in ("arguments", "L2LJAX_NUM_PROCESSES", "srun"):
        raise RuntimeError(f"Distributed(): no coordinator address for {num_processes} processes: set "
                           f"{COORDINATOR_VARIABLE}=host:port (rank 0's host, a free port) on every process, or pass "
                           "coordinator_address")
    return LaunchSpec(address, num_processes, process_id, name)


def first_host(nodelist: str) -> str:
    """The first host of a Slurm node list: ``gpu[003-010,012],cpu1`` → ``gpu003``."""
    prefix, ranges, suffix = re.match(r"([^,\[]*)(?:\[([^\]]*)\])?([^,]*)", nodelist).groups()
    return prefix + ("" if ranges is None else re.split("[,-]", ranges)[0]) + suffix


def _mpi4py_address(num_processes: int) -> str:
    """Rank 0's host name and a free port there, sent to every rank by mpi4py (mpirun gives no
    address of its own; Hydra's ``PMI_*`` variables are not among those JAX reads)."""
    try:
        from mpi4py import MPI as _mpi
    except ImportError as error:
        raise RuntimeError(f"Distributed(): launched by mpirun without a coordinator address: set "
                           f"{COORDINATOR_VARIABLE}=host:port (rank 0's host, a free port), or install mpi4py "
                           "to let rank 0 choose one") from error
    world = _mpi.COMM_WORLD
    if world.Get_size() != num_processes:
        raise RuntimeError(f"Distributed(): the launcher started {num_processes} ranks but mpi4py sees "
                           f"{world.Get_size()} (built against another MPI): set {COORDINATOR_VARIABLE}=host:port")
    address = None
    if world.Get_rank() == 0:
        with socket.socket() as probe:  # a port free now; JAX's coordinator binds it moments later
            probe.bind(("", 0))
            address = f"{socket.gethostname()}:{probe.getsockname()[1]}"
    return world.bcast(address, root=0)


def _visible_gpu_count(environ: dict[str, str] | None = None) -> int:
    environ = os.environ if environ is None else environ
    visible = environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return len([entry for entry in visible.split(",") if entry.strip()])
    return _count_nvidia_gpus() or 0


def initialize_distributed(coordinator_address: str | None = None, num_processes: int | None = None,
                           process_id: int | None = None, **options: Any) -> None:
    """``jax.distributed.initialize`` once per process, with the arguments of :func:`launch_spec`.

    A second call checks that it asks for the job already joined. Before joining, each rank of a
    node gets its own GPU (:func:`bind_local_gpu`) and JAX is told to use every GPU it then sees:
    JAX's own Slurm rule (GPU number ``SLURM_LOCALID``) fails under ``--gpus-per-task=1``, where
    each rank sees one GPU, number 0. On CPUs the collectives run over gloo.
    """
    if jax.distributed.is_initialized():
        for asked, joined, what in ((num_processes, jax.process_count(), "num_processes"),
                                    (process_id, jax.process_index(), "process_id")):
            if asked is not None and asked != joined:
                raise RuntimeError(f"Distributed(): jax.distributed is already initialized with {what}={joined}, "
                                   f"not {asked}; a process joins one job")
        return
    spec = launch_spec(coordinator_address, num_processes, process_id)
    address = spec.coordinator_address or _mpi4py_address(spec.num_processes)
    bind_local_gpu()
    options.setdefault("local_device_ids", list(range(_visible_gpu_count())))
    if jax.config.jax_cpu_collectives_implementation in (None, "none"):
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    try:
        jax.distributed.initialize(address, spec.num_processes, spec.process_id, **options)
    except RuntimeError as error:
        raise RuntimeError(f"Distributed(): jax.distributed.initialize({address!r}, num_processes="
                           f"{spec.num_processes}, process_id={spec.process_id}) from {spec.launcher} failed: "
                           f"{error}. Create Distributed() before JAX computes anything (it must join the job "
                           "first), with the same coordinator address on every process") from error


class Distributed(_Ranks, Devices):
    """One process per rank joined by ``jax.distributed`` (multi-controller JAX): no MPI needed.

    coordinator_address, num_processes, process_id: as ``jax.distributed.initialize``; None reads
        them from the launcher (:func:`launch_spec`: ``srun``, mpirun, or ``L2LJAX_COORDINATOR``,
        ``L2LJAX_NUM_PROCESSES``, ``L2LJAX_PROCESS_ID``). Further keywords go to
        ``jax.distributed.initialize`` (e.g. ``heartbeat_timeout_seconds``).

    Create it before JAX computes anything. The jitted step runs as one program over a mesh of
    every process's devices: the state is replicated, the population's rows are split over all
    devices (NCCL between GPUs; gloo between CPU processes) and gathered back, as ``Devices``
    does within one process. Host-side agreement (stops, errors, fingerprints) goes through JAX's
    collectives (``multihost_utils``); host simulators split their rows by process, as ``MPI``.
    Rank 0 (``jax.process_index() == 0``) writes the run directory and shows progress; every
    rank returns the same result.

    shard_state: population-sized state (EnKF ensemble, SA/PT chains, GA offspring) split by rows
    over the job's devices, as under ``MPI()``, when their count divides the population (a
    row-sharded global array must split evenly; otherwise it stays whole, as with False; so do
    ETKI, TEKI and ``form="ensemble"``, whose J × J systems couple every member, see
    ``EnsembleKalmanFilter.shardable``). The initial state is drawn whole on every process and then
    split; checkpoints are whole. Callbacks get the split state as global arrays: jnp reductions
    (``opt.mean_flat(state)``) work when every process calls them, but ``np.asarray`` of a split
    field does not (each process holds only its rows); a callback that needs the whole population
    on the host calls ``scheme.whole_state(opt, state)`` on every process.

    Unlike ``MPI``: there is no watchdog: a process that hangs or dies outside l2ljax's checks is
    noticed by JAX's coordination service after ``heartbeat_timeout_seconds`` (default 100 s).
    """

    ranks_name = "jax.distributed processes"

    def __init__(self, coordinator_address: str | None = None, num_processes: int | None = None,
                 process_id: int | None = None, *, shard_state: bool = True, **options: Any):
        initialize_distributed(coordinator_address, num_processes, process_id, **options)
        self.rank, self.n_ranks = jax.process_index(), jax.process_count()
        self.is_writer = self.rank == 0
        self.mesh = Mesh(np.array(jax.devices()), ("population",))
        self.n_shards = self.mesh.size
        self.shard_state = bool(shard_state)

    def __repr__(self) -> str:
        return (f"Distributed(process {self.rank} of {self.n_ranks}, {self.n_shards} × "
                f"{self.mesh.devices.flat[0].platform})")

    def place(self, tree: PyTree) -> PyTree:
        """``tree`` (the same on every process) as arrays replicated over the job's mesh.

        Each process gives its own copy (``make_array_from_process_local_data``): no collective,
        where ``device_put`` would first compare every leaf across processes (``check_same`` has
        already compared the initial state's digest)."""
        replicated = NamedSharding(self.mesh, PartitionSpec())

        def one(leaf: Any) -> jax.Array:
            if isinstance(leaf, jax.Array) and (leaf.sharding == replicated or self._keep_row_sharded(leaf)):
                return leaf
            if hasattr(leaf, "dtype") and jnp.issubdtype(leaf.dtype, jax.dtypes.prng_key):
                return jax.random.wrap_key_data(one(jax.random.key_data(leaf)), impl=jax.random.key_impl(leaf))
            local = np.asarray(leaf if isinstance(leaf, jax.Array | np.ndarray) else jnp.asarray(leaf))
            return jax.make_array_from_process_local_data(replicated, local)

        return jax.tree_util.tree_map(one, tree)

    def any_traced(self, flag: jax.Array) -> jax.Array:
        """Whether ``flag`` is set on any device, inside ``jit``: every device takes the same branch
        around the next collective even if their copies of the state differ in the last bits."""
        anywhere = _shard_map(lambda f: jax.lax.pmax(f, "population"), self.mesh, in_specs=(PartitionSpec(),),
                              out_specs=PartitionSpec())
        return anywhere(flag.astype(jnp.int32)) > 0

    def _allgather(self, value: Any) -> list:
        """Every process's ``value`` (pickled), through two ``process_allgather`` calls: the sizes,
        then the bytes padded to a power of two (few shapes, so few compiled gathers)."""
        from jax.experimental import multihost_utils

        data = np.frombuffer(pickle.dumps(value), np.uint8)
        sizes = np.asarray(multihost_utils.process_allgather(np.int32(data.size))).ravel()
        padded = np.zeros(1 << max(6, int(sizes.max() - 1).bit_length()), np.uint8)
        padded[:data.size] = data
        everyone = np.asarray(multihost_utils.process_allgather(padded))
        return [pickle.loads(everyone[r, :sizes[r]].tobytes()) for r in range(self.n_ranks)]


Parallel = Devices | MPI | Distributed


NAMES = ("auto", "none", "devices", "mpi", "distributed")
ENGINE_VARIABLE = "L2LJAX_PARALLEL"


def coordinator(parallel: Coordinator | str | None) -> Coordinator:
    """The coordinator of a run: ``parallel`` itself, a scheme by name (``"auto"``, ``"none"``,
    ``"devices"``, ``"mpi"``, ``"distributed"``), or ``SingleProcess()`` for ``None``."""
    if isinstance(parallel, str):
        parallel = by_name(parallel)
    if parallel is None:
        return SingleProcess()
    missing = [name for name in ("is_writer", "map_rows", "settle", "agree", "shard") if not hasattr(parallel, name)]
    if missing:
        raise TypeError(f"parallel must be None, one of {NAMES} or an l2ljax.parallel scheme (Devices(), MPI(), "
                        f"Distributed()), got {parallel!r}")
    return parallel


def by_name(name: str) -> Parallel | None:
    """``"auto"``: :func:`auto`; ``"none"``: None; ``"devices"``: :class:`Devices`; ``"mpi"``: :class:`MPI`
    (binding each rank to its local GPU first); ``"distributed"``: :class:`Distributed`."""
    if name not in NAMES:
        raise ValueError(f"parallel={name!r}: valid names are {', '.join(NAMES)}")
    if name in ("auto", "mpi"):
        bind_local_gpu()  # before JAX touches a device: one GPU per rank of a node
    return {"auto": auto, "none": lambda: None, "devices": Devices, "mpi": MPI, "distributed": Distributed}[name]()


def auto(environ: dict[str, str] | None = None) -> Parallel | None:
    """The engine the launch asks for (the rule is in this module's docstring): ``$L2LJAX_PARALLEL``
    if set; ``Distributed`` for a ``jax.distributed`` launch by hand; for several launched ranks,
    ``MPI`` when mpi4jax imports, else ``Distributed``; else ``Devices`` over several accelerators
    (never CPU "devices": see ``CPU_DEVICES_WARNING``); else ``None``."""
    choice = auto_choice(environ)
    if choice != "mpi":
        return by_name(choice)
    scheme = MPI()
    if scheme.n_shards == 1:  # each process would run the whole job alone, into the same directory
        raise RuntimeError(f"the launcher started {launched_ranks(environ)} ranks but MPI sees 1: mpi4py was "
                           "built against another MPI than the launcher's (or srun lacks --mpi=pmix / "
                           "--mpi=pmi2); rebuild mpi4py and mpi4jax against the MPI you launch with, or "
                           f"set {ENGINE_VARIABLE}=distributed (no MPI needed)")
    return scheme


def auto_choice(environ: dict[str, str] | None = None) -> str:
    """The name of the engine :func:`auto` picks (``"none"``: plain ``jit``)."""
    environ = os.environ if environ is None else environ
    asked = environ.get(ENGINE_VARIABLE, "")
    if asked:
        if asked not in NAMES or asked == "auto":
            raise ValueError(f"{ENGINE_VARIABLE}={asked!r}: valid values are "
                             f"{', '.join(n for n in NAMES if n != 'auto')}")
        return asked
    if environ.get("L2LJAX_NUM_PROCESSES", "").isdigit() and int(environ["L2LJAX_NUM_PROCESSES"]) > 1:
        return "distributed"
    if launched_ranks(environ) > 1:
        return "mpi" if _importable("mpi4jax") else "distributed"
    if jax.local_device_count() > 1 and jax.local_devices()[0].platform != "cpu":
        return "devices"
    return "none"


def _importable(module: str) -> bool:
    """Whether ``module`` imports (mpi4jax can be installed yet built against another MPI)."""
    import importlib

    try:
        importlib.import_module(module)
    except ImportError:
        return False
    return True
