"""A run directory: open (fresh or resumed), validate against the run, write chunk by chunk.

Only the writer process (see :class:`l2ljax.parallel.Coordinator`) touches the files: a second
rank checking the directory while the first writes ``meta.json`` would see a run that is not
there. The other ranks learn the writer's outcome (every rank raises if it failed) and read the
checkpoint it resumed from. The file layout is :mod:`l2ljax.trajectory`'s.

While a run writes its directory it holds ``DIR/lock`` (host, pid, start time), created with
``O_CREAT | O_EXCL``, which is atomic on local file systems and on NFSv3+ and Lustre, so a second
writer on any machine that shares the directory gets :class:`RunDirectoryLocked`. A lock left by
a killed run is taken over only when it names this host and its process is gone; a lock from
another host is never taken over (its process cannot be checked from here): the error says to
delete it once that run is known to be dead.
"""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import time
import uuid
from pathlib import Path
from typing import Any

import jax
import numpy as np

from l2ljax import trajectory as traj
from l2ljax.core import Optimizee, Optimizer, OptState
from l2ljax.parallel import Coordinator

Record = dict[str, Any]
_COMPARED = ("optimizer", "optimizee", "record")  # what must match for a resume
LOCK = "lock"


class RunDirectoryLocked(RuntimeError):
    """Another run is writing this directory."""


@dataclasses.dataclass
class RunLock:
    """``DIR/lock`` held by this process (see the module docstring)."""

    path: Path
    token: str

    @staticmethod
    def acquire(directory: Path) -> RunLock:
        directory.mkdir(parents=True, exist_ok=True)
        path, token = directory / LOCK, uuid.uuid4().hex
        holder = {"host": socket.gethostname(), "pid": os.getpid(), "since": time.strftime("%Y-%m-%d %H:%M:%S"),
                  "token": token}
        for _ in range(2):
            try:
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                RunLock._take_over_if_stale(path)
                continue
            with os.fdopen(fd, "w") as f:
                json.dump(holder, f)
            return RunLock(path, token)
        raise RunDirectoryLocked(f"{directory} is being written by another run ({_describe(path)}); wait for it, "
                                 f"or delete {path} if that run is dead")

    @staticmethod
    def _take_over_if_stale(path: Path) -> None:
        holder = _holder(path)
        if holder is None or holder.get("host") != socket.gethostname() or _alive(int(holder.get("pid", -1))):
            raise RunDirectoryLocked(f"{path.parent} is being written by another run ({_describe(path)}); wait "
                                     f"for it, or delete {path} if that run is dead")
        try:  # atomic: of several processes taking over, one renames it away, the others find it gone
            os.rename(path, path.with_name(f".{LOCK}.stale.{uuid.uuid4().hex}.tmp"))
        except FileNotFoundError:
            pass

    def release(self) -> None:
        holder = _holder(self.path)
        if holder is not None and holder.get("token") == self.token:
            self.path.unlink(missing_ok=True)


def _holder(path: Path) -> dict | None:
    try:
        holder = json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError):
        return None
    return holder if isinstance(holder, dict) else None


def _describe(path: Path) -> str:
    holder = _holder(path) or {}
    return f"pid {holder.get('pid', '?')} on {holder.get('host', '?')} since {holder.get('since', '?')}"


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclasses.dataclass
class RunDirectory:
    """Where a run continues from (state, run key, generation, the history already on disk), and
    where it writes (``path``; None: nowhere). ``open`` makes one; ``write`` stores a chunk."""

    path: Path | None
    state: OptState
    run_key: jax.Array
    generation: int
    history: list[Record]
    writer: bool = True
    lock: RunLock | None = None

    @staticmethod
    def open(path: str | Path | None, meta: dict, state: OptState, run_key: jax.Array, *, resume: bool,
             explicit_params: Any, n_generations: int, parallel: Coordinator) -> RunDirectory:
        """A fresh run in an empty ``path``, or the run there resumed (``resume=True``); never an
        overwrite. ``explicit_params``: the hyperparameters the caller asked for (None: any)."""
        if path is None:
            if resume:
                raise ValueError("resume=True needs the directory of the run to resume")
            return RunDirectory(None, state, run_key, int(state.generation), [])
        path = Path(path)
        opened, error, lock = None, None, None
        if parallel.is_writer:
            try:
                lock = RunLock.acquire(path)
                opened = _open(path, meta, state, run_key, resume, explicit_params)
                opened.lock = lock
            except Exception as failure:  # re-raised below, on every rank
                error = failure
                if lock is not None:
                    lock.release()
        parallel.raise_together(error)
        resumed_at = parallel.agree(None if opened is None else opened.generation)
        if opened is None:
            try:
                opened = (_read_resumed(path, state, resumed_at) if resumed_at != int(state.generation)
                          else RunDirectory(path, state, run_key, resumed_at, []))
            except Exception as failure:
                error = failure
        parallel.raise_together(error)
        if opened.generation > n_generations:
            opened.close()
            raise ValueError(f"{path} already holds {opened.generation} generations, more than the "
                             f"n_generations={n_generations} asked for")
        opened.writer = parallel.is_writer
        return opened

    def close(self) -> None:
        """Release the directory's lock (the files stay)."""
        if self.lock is not None:
            self.lock.release()
            self.lock = None

    def write(self, records: Record, state: OptState, run_key: jax.Array, n_new: int) -> None:
        """Append ``n_new`` generations (a chunk written before the checkpoint that covers it)."""
        if self.path is not None and self.writer:
            traj.write_chunk(self.path, self.generation, records)
            traj.save_checkpoint(self.path, state, run_key, self.generation + n_new)
        self.history.append(records)
        self.generation += n_new

    def trajectory(self) -> dict[str, np.ndarray]:
        """Every generation so far (resumed ones included), concatenated."""
        if not self.history:
            return {}
        return {name: np.concatenate([h[name] for h in self.history]) for name in self.history[0]}


def run_meta(optimizer: Optimizer, optimizee: Optimizee, n_generations: int, level: str, params: Any,
             parallel: Coordinator) -> dict:
    """``meta.json``: what ran (plain JSON)."""
    from l2ljax import __version__

    return {
        "l2ljax_version": __version__,
        "jax_version": jax.__version__,
        "optimizer": optimizer.config(),
        "optimizee": {"name": optimizee.name, "dim": optimizee.space.dim, "weights": optimizee.weights,
                      "noise_std": optimizee.noise_std, **_bounds_summary(optimizee), **optimizee.info},
        "n_generations": n_generations,
        "record": level,
        "params": {jax.tree_util.keystr(path): np.asarray(leaf) for path, leaf in
                   jax.tree_util.tree_flatten_with_path(params)[0]},
        "parallel": str(parallel),
    }


def _bounds_summary(optimizee: Optimizee, max_listed: int = 64) -> dict:
    """Bounds per coordinate for small spaces; their range for large ones (network weights)."""
    lower, upper = optimizee.space.lower, optimizee.space.upper
    if lower.size <= max_listed:
        return {"lower": lower, "upper": upper}
    return {"lower_min": float(lower.min()), "upper_max": float(upper.max())}


def _read_resumed(path: Path, state: OptState, resumed_at: int) -> RunDirectory:
    """What a rank other than the writer needs to continue the run the writer resumed."""
    state, run_key, generation = traj.load_checkpoint(path, state)
    if generation != resumed_at:
        raise RuntimeError(f"{path}: rank 0 resumed at generation {resumed_at}, this rank read "
                           f"{generation}; is the directory on a file system every rank shares?")
    return RunDirectory(path, state, run_key, generation, _history(path, generation))


def _history(path: Path, generation: int) -> list[Record]:
    return [traj.load_trajectory(path, until=generation)] if generation > 0 else []


def _open(path: Path, meta: dict, state: OptState, run_key: jax.Array, resume: bool,
          explicit_params: Any) -> RunDirectory:
    """Start a fresh run directory or resume the one there; refuse to overwrite results."""
    traj.remove_leftovers(path)  # a killed writer's temporary files (the lock is ours now)
    if traj.has_checkpoint(path):
        if not resume:
            raise FileExistsError(f"{path} already holds a run: pass resume=True to continue it, "
                                  "or choose another directory")
        stored = traj.read_meta(path)
        for field in _COMPARED:
            if _normalise(stored.get(field)) != _normalise(meta[field]):
                raise ValueError(f"cannot resume {path}: its {field} differs from this run's "
                                 f"({stored.get(field)} vs {meta[field]})")
        fresh = state
        state, stored_key, generation = traj.load_checkpoint(path, state)
        _refuse_nan(path / traj.CHECKPOINT, fresh, state)
        if not np.array_equal(jax.random.key_data(stored_key), jax.random.key_data(run_key)):
            raise ValueError(f"cannot resume {path} with another key (seed) than it was started with")
        run_key = stored_key
        if explicit_params is not None and not _same_leaves(explicit_params, state.params):
            raise ValueError(f"cannot resume {path} with other hyperparameters than it was run with "
                             f"({stored.get('params')}); omit params to continue with those")
        traj.drop_chunks_from(path, generation)
        traj.write_meta(path, {**meta, "params": stored.get("params", meta["params"])})
        return RunDirectory(path, state, run_key, generation, _history(path, generation))
    others = [p for p in path.iterdir() if p.name != LOCK] if path.exists() else []
    if others:
        ours = {traj.META, traj.CHUNK_DIR}
        if not (resume and all(p.name in ours or p.name.endswith(".tmp") for p in others)):
            raise FileExistsError(f"{path} is not empty and holds no checkpoint: choose an empty directory")
        traj.drop_chunks_from(path, 0)  # interrupted before its first checkpoint: start afresh
    traj.write_meta(path, meta)
    return RunDirectory(path, state, run_key, int(state.generation), [])


def _refuse_nan(path: Path, fresh: OptState, stored: OptState) -> None:
    """Optimizers keep NaN out of their state (non-finite updates are refused), so a NaN where a
    fresh state has none means a damaged or doctored checkpoint: resuming would spread it."""
    for (where, new), old in zip(jax.tree_util.tree_flatten_with_path(stored)[0], jax.tree_util.tree_leaves(fresh),
                                 strict=True):
        if traj.is_key(new) or not jax.numpy.issubdtype(new.dtype, jax.numpy.inexact):
            continue
        if np.isnan(np.asarray(new)).any() and not np.isnan(np.asarray(old)).any():
            raise traj.RunFileError(f"{path}: state{jax.tree_util.keystr(where)} holds NaN; the checkpoint is "
                                    "damaged, and resuming would spread it")


def _same_leaves(a: Any, b: Any) -> bool:
    leaves_a, leaves_b = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
    if len(leaves_a) != len(leaves_b):
        return False
    return all(np.array_equal(np.asarray(x, np.float64), np.asarray(y, np.float64))
               for x, y in zip(leaves_a, leaves_b, strict=True))


def _normalise(x: Any) -> Any:
    return traj.plain_json(x)
