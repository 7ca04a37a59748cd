"""Run directories: the trajectory, readable with numpy alone, and exact-resume checkpoints.

Layout of a run directory::

    meta.json                     what ran: optimizer, optimizee, sizes, fields (plain JSON)
    trajectory/chunk_00000000.npz generations [0, n) as arrays with leading axis = generation
    trajectory/chunk_00000050.npz generations [50, ...) ...
    checkpoint.npz                optimizer state leaves (by pytree path), run key, generation

Every file is written to a temporary name and renamed into place, so a crash never leaves a
half-written file; a chunk is written before the checkpoint that follows it, and resuming
drops chunks the checkpoint does not cover. Without l2ljax::

    import glob, numpy as np
    chunks = [np.load(f) for f in sorted(glob.glob("run/trajectory/chunk_*.npz"))]
    fitness = np.concatenate([c["fitness"] for c in chunks])   # (generations, J, n_obj)

Fields: ``generation`` (G,), ``best_score`` (G,), ``diag/<name>`` (the optimizer's
diagnostics), and ``fitness`` (G, J, n_obj), ``score`` (G, J), ``best_x`` (G, dim), plus
``population`` (G, J, dim) unless ``keep_population=False``. With ``summary=True`` the
per-individual fields are replaced by ``score_max``, ``score_mean``, ``score_min`` and
``n_failed`` (G,) each.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

import jax
import numpy as np

CHUNK_DIR = "trajectory"
CHECKPOINT = "checkpoint.npz"
META = "meta.json"
FORMAT_VERSION = 1


def _current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_UMASK = _current_umask()


def atomic_write(path: Path, write: Any, suffix: str = "") -> None:
    """Call ``write(file_object)`` on a temporary file in the same folder, fsync, rename into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix + ".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp's 0600 would hide results from the user's group
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    atomic_write(path, lambda f: np.savez(f, **arrays))


def plain_json(obj: Any) -> Any:
    """``obj`` as standard JSON values: arrays as lists, non-finite floats as the strings
    ``"inf"``, ``"-inf"``, ``"nan"`` (JSON has no Infinity/NaN; other readers reject them)."""
    def finite(x: Any) -> Any:
        if isinstance(x, float) and not math.isfinite(x):
            return "nan" if math.isnan(x) else ("inf" if x > 0 else "-inf")
        if isinstance(x, dict):
            return {k: finite(v) for k, v in x.items()}
        if isinstance(x, list):
            return [finite(v) for v in x]
        return x

    return finite(json.loads(json.dumps(obj, default=jsonable)))


def write_meta(directory: Path, meta: dict[str, Any]) -> None:
    payload = json.dumps(plain_json({"format_version": FORMAT_VERSION, **meta}), indent=2, allow_nan=False).encode()
    atomic_write(Path(directory) / META, lambda f: f.write(payload))


def read_meta(directory: Path) -> dict[str, Any]:
    return json.loads((Path(directory) / META).read_text())


def jsonable(x: Any) -> Any:
    if isinstance(x, np.ndarray | jax.Array):
        return np.asarray(x).tolist()
    if isinstance(x, np.generic):
        return x.item()
    return str(x)


def chunk_path(directory: Path, start: int) -> Path:
    return Path(directory) / CHUNK_DIR / f"chunk_{start:08d}.npz"


def chunk_files(directory: Path) -> list[tuple[int, Path]]:
    folder = Path(directory) / CHUNK_DIR
    if not folder.is_dir():
        return []
    found = [(int(p.stem.split("_")[1]), p) for p in folder.glob("chunk_*.npz")]
    return sorted(found)


def write_chunk(directory: Path, start: int, records: dict[str, np.ndarray]) -> None:
    save_npz(chunk_path(directory, start), records)


def drop_chunks_from(directory: Path, generation: int) -> None:
    """Remove chunks starting at or after ``generation`` (not covered by the checkpoint)."""
    for start, path in chunk_files(directory):
        if start >= generation:
            path.unlink()


def load_trajectory(directory: str | os.PathLike) -> dict[str, np.ndarray]:
    """All chunks of a run directory concatenated along the generation axis."""
    files = chunk_files(Path(directory))
    if not files:
        raise FileNotFoundError(f"no trajectory chunks in {Path(directory) / CHUNK_DIR}")
    parts: dict[str, list[np.ndarray]] = {}
    for _, path in files:
        with np.load(path, allow_pickle=False) as chunk:
            for name in chunk.files:
                parts.setdefault(name, []).append(chunk[name])
    return {name: np.concatenate(arrays) for name, arrays in parts.items()}


# --------------------------------------------------------------------------- checkpoints


def _leaf_name(path: Any) -> str:
    return "state" + jax.tree_util.keystr(path)


def _key_to_array(key: jax.Array) -> np.ndarray:
    if jax.numpy.issubdtype(key.dtype, jax.dtypes.prng_key):
        return np.asarray(jax.random.key_data(key))
    return np.asarray(key)


def save_checkpoint(directory: str | os.PathLike, state: Any, key: jax.Array, generation: int) -> None:
    """Write the full pytree state, the run key and the generation count atomically.

    Typed PRNG keys are stored as their key data plus the name of their implementation
    (``<name>::impl``), so a resumed run draws the same numbers whatever the PRNG.
    """
    arrays: dict[str, np.ndarray] = {}
    for name, leaf in [(_leaf_name(p), leaf) for p, leaf in jax.tree_util.tree_flatten_with_path(state)[0]] + [
            ("__key__", key)]:
        arrays[name] = np.asarray(_key_to_array(leaf) if _is_key(leaf) else leaf)
        if _is_key(leaf):
            arrays[f"{name}::impl"] = np.asarray(str(jax.random.key_impl(leaf)))
    arrays["__generation__"] = np.asarray(generation, np.int64)
    save_npz(Path(directory) / CHECKPOINT, arrays)


def _is_key(leaf: Any) -> bool:
    return hasattr(leaf, "dtype") and jax.numpy.issubdtype(leaf.dtype, jax.dtypes.prng_key)


def load_checkpoint(directory: str | os.PathLike, like_state: Any) -> tuple[Any, jax.Array, int]:
    """Restore ``(state, key, generation)``; ``like_state`` (a fresh ``init``) gives the structure."""
    path = Path(directory) / CHECKPOINT
    with np.load(path, allow_pickle=False) as ckpt:
        stored = {name: ckpt[name] for name in ckpt.files}
    leaves = []
    for p, like in jax.tree_util.tree_flatten_with_path(like_state)[0]:
        name = _leaf_name(p)
        if name not in stored:
            raise ValueError(f"checkpoint {path} has no entry {name}: it was written by a different optimizer")
        value = stored[name]
        if _is_key(like):
            leaves.append(_restore_key(stored, name))
            continue
        if value.shape != np.shape(like):
            raise ValueError(f"checkpoint entry {name} has shape {value.shape}, expected {np.shape(like)}")
        leaves.append(jax.numpy.asarray(value, dtype=jax.numpy.result_type(like)))
    state = jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(like_state), leaves)
    return state, _restore_key(stored, "__key__"), int(stored["__generation__"])


def _restore_key(stored: dict[str, np.ndarray], name: str) -> jax.Array:
    impl = stored.get(f"{name}::impl")
    return jax.random.wrap_key_data(stored[name], impl=None if impl is None else str(impl))


def has_checkpoint(directory: str | os.PathLike) -> bool:
    return (Path(directory) / CHECKPOINT).is_file()
