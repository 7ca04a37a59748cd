"""Run directories: the trajectory, readable with numpy alone, and exact-resume checkpoints.

Layout of a run directory::

    meta.json                     what ran: optimizer, optimizee, sizes, fields (plain JSON)
    trajectory/chunk_00000000.npz generations [0, n) as arrays with leading axis = generation
    trajectory/chunk_00000050.npz generations [50, ...) ...
    checkpoint.npz                optimizer state leaves (by pytree path), run key, generation

Every file is written to a temporary name, read back and verified, and renamed into place, so
a crash never leaves a half-written file; a chunk is written before the checkpoint that follows
it, and resuming drops chunks the checkpoint does not cover. Every ``.npz`` carries a SHA-256
checksum of its arrays (``__checksum__``) and every chunk the generations it holds
(``__first__``, ``__count__``): reading checks them, and the generations of the chunks must run
on without gap or overlap, so a damaged, edited, missing or stray file is an error that names
it (:class:`RunFileError`), never a silently different trajectory. Without l2ljax::

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

import hashlib
import json
import math
import os
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import jax
import numpy as np

CHUNK_DIR = "trajectory"
CHECKPOINT = "checkpoint.npz"
META = "meta.json"
FORMAT_VERSION = 2  # 2: checksums and generation ranges in every npz
CHECKSUM = "__checksum__"
FIRST, COUNT = "__first__", "__count__"


class RunFileError(ValueError):
    """A file of a run directory is damaged, foreign or inconsistent; the message names it."""


def _current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_UMASK = _current_umask()


def atomic_write(path: Path, write: Any, suffix: str = "", mode: str = "wb") -> None:
    """Call ``write(file_object)`` on a temporary file in the same folder, fsync, rename into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix + ".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp's 0600 would hide results from the user's group
        with os.fdopen(fd, mode) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def checksum(arrays: dict[str, np.ndarray]) -> str:
    """SHA-256 over every array's name, dtype, shape and bytes (the checksum entry left out)."""
    digest = hashlib.sha256()
    for name in sorted(arrays):
        if name == CHECKSUM:
            continue
        array = np.ascontiguousarray(arrays[name])
        digest.update(f"{name}|{array.dtype.str}|{array.shape}|".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Write ``arrays`` with their checksum; the written file is read back and verified first."""
    arrays = {name: np.asarray(a) for name, a in arrays.items()}
    arrays[CHECKSUM] = np.asarray(checksum(arrays))

    def write(f) -> None:
        np.savez(f, **arrays)
        f.flush()
        f.seek(0)
        with np.load(f, allow_pickle=False) as back:
            if str(back[CHECKSUM]) != checksum({n: back[n] for n in back.files}):
                raise OSError(f"{path}: the file read back differs from what was written (disk or file system fault)")

    atomic_write(path, write, mode="w+b")


def read_npz(path: Path) -> dict[str, np.ndarray]:
    """The arrays of an npz written by :func:`save_npz`, checksum verified (and removed)."""
    try:
        with np.load(path, allow_pickle=False) as stored:
            arrays = {name: stored[name] for name in stored.files}
    except FileNotFoundError:
        raise
    except (zipfile.BadZipFile, EOFError, OSError, ValueError, KeyError) as e:
        raise RunFileError(f"{path}: not a readable npz file ({type(e).__name__}: {e}); it is damaged or not "
                           "written by l2ljax") from None
    if CHECKSUM not in arrays:
        raise RunFileError(f"{path}: has no checksum: written by an older l2ljax or by something else")
    if str(arrays.pop(CHECKSUM)) != checksum(arrays):
        raise RunFileError(f"{path}: checksum mismatch: the file was changed or damaged after it was written")
    return arrays


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
    path = Path(directory) / META
    try:
        meta = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise RunFileError(f"{path}: not valid JSON ({e}); it is damaged or not written by l2ljax") from None
    if not isinstance(meta, dict) or "optimizer" not in meta:
        raise RunFileError(f"{path}: not the meta.json of an l2ljax run")
    return meta


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
    count = len(records["generation"])
    save_npz(chunk_path(directory, start), {**records, FIRST: np.int64(start), COUNT: np.int64(count)})


def drop_chunks_from(directory: Path, generation: int) -> None:
    """Remove chunks starting at or after ``generation`` (not covered by the checkpoint)."""
    for start, path in chunk_files(directory):
        if start >= generation:
            path.unlink()


def load_trajectory(directory: str | os.PathLike, *, until: int | None = None) -> dict[str, np.ndarray]:
    """All chunks of a run directory concatenated along the generation axis, verified.

    Each chunk's checksum, its generation range and the continuity of the ranges are checked, and
    every chunk must hold the same fields; ``until``: the generations must end there (the
    checkpoint's generation, on resume).
    """
    files = chunk_files(Path(directory))
    if not files:
        raise FileNotFoundError(f"no trajectory chunks in {Path(directory) / CHUNK_DIR}")
    parts: dict[str, list[np.ndarray]] = {}
    expected_start, fields = None, None
    for start, path in files:
        chunk = read_npz(path)
        first, count = int(chunk.pop(FIRST, -1)), int(chunk.pop(COUNT, -1))
        if first != start or "generation" not in chunk or not np.array_equal(
                chunk["generation"], np.arange(first, first + count)):
            raise RunFileError(f"{path}: its generations do not match its name and recorded range")
        if expected_start is not None and start != expected_start:
            what = "missing" if start > expected_start else "overlapping"
            raise RunFileError(f"{path}: starts at generation {start}, but the chunks before end at "
                               f"{expected_start}: a chunk is {what}")
        if fields is not None and set(chunk) != fields:
            raise RunFileError(f"{path}: holds fields {sorted(chunk)}, the chunks before {sorted(fields)}")
        expected_start, fields = start + count, set(chunk)
        for name, value in chunk.items():
            if len(value) != count:
                raise RunFileError(f"{path}: field {name} has {len(value)} generations, not {count}")
            parts.setdefault(name, []).append(value)
    if until is not None and expected_start != until:
        raise RunFileError(f"{Path(directory) / CHUNK_DIR}: the trajectory ends at generation {expected_start}, "
                           f"the checkpoint at {until}: chunks are missing")
    return {name: np.concatenate(arrays) for name, arrays in parts.items()}


def remove_leftovers(directory: str | os.PathLike) -> list[Path]:
    """Delete the temporary files a killed writer left (``.*.tmp``); the paths removed."""
    removed = []
    for folder in (Path(directory), Path(directory) / CHUNK_DIR):
        for path in folder.glob(".*.tmp") if folder.is_dir() else []:
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


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
        arrays[name] = np.asarray(_key_to_array(leaf) if is_key(leaf) else leaf)
        if is_key(leaf):
            arrays[f"{name}::impl"] = np.asarray(str(jax.random.key_impl(leaf)))
    arrays["__generation__"] = np.asarray(generation, np.int64)
    save_npz(Path(directory) / CHECKPOINT, arrays)


def is_key(leaf: Any) -> bool:
    return hasattr(leaf, "dtype") and jax.numpy.issubdtype(leaf.dtype, jax.dtypes.prng_key)


def load_checkpoint(directory: str | os.PathLike, like_state: Any) -> tuple[Any, jax.Array, int]:
    """Restore ``(state, key, generation)``; ``like_state`` (a fresh ``init``) gives the structure."""
    path = Path(directory) / CHECKPOINT
    stored = read_npz(path)
    for required in ("__key__", "__generation__"):
        if required not in stored:
            raise RunFileError(f"{path}: has no {required}: not an l2ljax checkpoint")
    leaves = []
    for p, like in jax.tree_util.tree_flatten_with_path(like_state)[0]:
        name = _leaf_name(p)
        if name not in stored:
            raise RunFileError(f"{path} has no entry {name}: it was written by a different optimizer or version")
        value = stored[name]
        if is_key(like):
            leaves.append(_restore_key(stored, name))
            continue
        if value.shape != np.shape(like):
            raise RunFileError(f"{path}: entry {name} has shape {value.shape}, expected {np.shape(like)}")
        leaves.append(jax.numpy.asarray(value, dtype=jax.numpy.result_type(like)))
    state = jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(like_state), leaves)
    generation = int(stored["__generation__"])
    if hasattr(state, "generation") and int(state.generation) != generation:
        raise RunFileError(f"{path}: records generation {generation} but its state is at generation "
                           f"{int(state.generation)}")
    return state, _restore_key(stored, "__key__"), generation


def _restore_key(stored: dict[str, np.ndarray], name: str) -> jax.Array:
    impl = stored.get(f"{name}::impl")
    return jax.random.wrap_key_data(stored[name], impl=None if impl is None else str(impl))


def has_checkpoint(directory: str | os.PathLike) -> bool:
    return (Path(directory) / CHECKPOINT).is_file()
