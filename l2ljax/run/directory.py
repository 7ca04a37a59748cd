"""A run directory: open (fresh or resumed), validate against the run, write chunk by chunk.

Only the writer process (see :class:`l2ljax.parallel.Coordinator`) touches the files: a second
rank checking the directory while the first writes ``meta.json`` would see a run that is not
there. The other ranks learn the writer's outcome (every rank raises if it failed) and read the
checkpoint it resumed from. The file layout is :mod:`l2ljax.trajectory`'s.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import jax
import numpy as np

from l2ljax import trajectory as traj
from l2ljax.core import Optimizee, Optimizer, OptState
from l2ljax.parallel import Coordinator

Record = dict[str, Any]
_COMPARED = ("optimizer", "optimizee", "record")  # what must match for a resume


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
        opened, error = None, None
        if parallel.is_writer:
            try:
                opened = _open(path, meta, state, run_key, resume, explicit_params)
            except Exception as failure:  # re-raised below, on every rank
                error = failure
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
            raise ValueError(f"{path} already holds {opened.generation} generations, more than the "
                             f"n_generations={n_generations} asked for")
        opened.writer = parallel.is_writer
        return opened

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
    return RunDirectory(path, state, run_key, generation, _history(path))


def _history(path: Path) -> list[Record]:
    return [traj.load_trajectory(path)] if traj.chunk_files(path) else []


def _open(path: Path, meta: dict, state: OptState, run_key: jax.Array, resume: bool,
          explicit_params: Any) -> RunDirectory:
    """Start a fresh run directory or resume the one there; refuse to overwrite results."""
    if traj.has_checkpoint(path):
        if not resume:
            raise FileExistsError(f"{path} already holds a run: pass resume=True to continue it, "
                                  "or choose another directory")
        stored = traj.read_meta(path)
        for field in _COMPARED:
            if _normalise(stored.get(field)) != _normalise(meta[field]):
                raise ValueError(f"cannot resume {path}: its {field} differs from this run's "
                                 f"({stored.get(field)} vs {meta[field]})")
        state, run_key, generation = traj.load_checkpoint(path, state)
        if explicit_params is not None and not _same_leaves(explicit_params, state.params):
            raise ValueError(f"cannot resume {path} with other hyperparameters than it was run with "
                             f"({stored.get('params')}); omit params to continue with those")
        traj.drop_chunks_from(path, generation)
        traj.write_meta(path, {**meta, "params": stored.get("params", meta["params"])})
        return RunDirectory(path, state, run_key, generation, _history(path))
    if path.exists() and any(path.iterdir()):
        ours = {traj.META, traj.CHUNK_DIR}
        if not (resume and all(p.name in ours or p.name.endswith(".tmp") for p in path.iterdir())):
            raise FileExistsError(f"{path} is not empty and holds no checkpoint: choose an empty directory")
        traj.drop_chunks_from(path, 0)  # interrupted before its first checkpoint: start afresh
    traj.write_meta(path, meta)
    return RunDirectory(path, state, run_key, int(state.generation), [])


def _same_leaves(a: Any, b: Any) -> bool:
    leaves_a, leaves_b = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
    if len(leaves_a) != len(leaves_b):
        return False
    return all(np.array_equal(np.asarray(x, np.float64), np.asarray(y, np.float64))
               for x, y in zip(leaves_a, leaves_b, strict=True))


def _normalise(x: Any) -> Any:
    return traj.plain_json(x)
