"""Fault injection on run directories: every damaged, foreign or stray file is an error naming it.

Each case damages a finished run directory one way, then resumes it (and reads it with
``load_trajectory``): the error must be a ``RunFileError`` (or the named lock/key errors) that
names the file, never a silently different trajectory or a raw library exception.
"""

import os
import shutil
import subprocess
import zipfile
from pathlib import Path

import jax
import numpy as np
import pytest

import l2ljax
from l2ljax import trajectory as traj
from l2ljax.run.directory import LOCK, RunDirectoryLocked

PROBLEM = l2ljax.function_optimizee("rastrigin", 2)
OPT = l2ljax.CrossEntropy(PROBLEM, pop_size=8)


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("finished") / "run"
    l2ljax.run(OPT, PROBLEM, jax.random.key(0), 8, directory=directory, chunk_size=2)
    return directory


@pytest.fixture
def run_dir(finished, tmp_path) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(finished, copy)
    return copy


def resume(run_dir: Path, key: int = 0, n: int = 12):
    return l2ljax.run(OPT, PROBLEM, jax.random.key(key), n, directory=run_dir, resume=True, chunk_size=2)


def chunk(run_dir: Path, start: int) -> Path:
    return traj.chunk_path(run_dir, start)


def rewrite_npz(path: Path, change) -> None:
    """Rewrite ``path`` with ``change(arrays)`` applied, keeping the old checksum (an edit)."""
    with np.load(path) as f:
        arrays = {n: f[n] for n in f.files}
    change(arrays)
    with open(path, "wb") as f:
        np.savez(f, **arrays)


def flip_a_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as z:
        info = z.getinfo("fitness.npy" if "fitness.npy" in z.namelist() else z.namelist()[0])
    data[info.header_offset + 30 + len(info.filename) + info.compress_size - 3] ^= 0x10  # inside the data
    path.write_bytes(bytes(data))


DAMAGES = {
    "flipped byte in a chunk": (lambda d: flip_a_byte(chunk(d, 2)), "chunk_00000002.npz"),
    "flipped byte in the checkpoint": (lambda d: flip_a_byte(d / traj.CHECKPOINT), "checkpoint.npz"),
    "NaN-filled checkpoint": (lambda d: rewrite_npz(d / traj.CHECKPOINT, lambda a: a.update(
        {n: np.full_like(v, np.nan) for n, v in a.items() if n.startswith("state") and v.dtype.kind == "f"})),
        "checksum mismatch"),
    "generation disagreeing with the state": (lambda d: rewrite_npz(d / traj.CHECKPOINT, lambda a: a.update(
        __generation__=np.asarray(6, np.int64), __checksum__=np.asarray(traj.checksum(
            {**a, "__generation__": np.asarray(6, np.int64)})))), "state is at generation"),
    "truncated checkpoint": (lambda d: (d / traj.CHECKPOINT).write_bytes((d / traj.CHECKPOINT).read_bytes()[:100]),
                             "checkpoint.npz: not a readable npz"),
    "empty chunk file": (lambda d: chunk(d, 4).write_bytes(b""), "chunk_00000004.npz"),
    "deleted chunk": (lambda d: chunk(d, 2).unlink(), "a chunk is missing"),
    "overlapping stray chunk": (lambda d: shutil.copy(chunk(d, 2), chunk(d, 3)), "chunk_00000003.npz"),
    "chunk without population": (lambda d: rewrite_npz(chunk(d, 4), lambda a: (a.pop("population"), a.update(
        __checksum__=np.asarray(traj.checksum(a))))), "holds fields"),
    "garbage meta.json": (lambda d: (d / traj.META).write_text("{not json"), "meta.json: not valid JSON"),
    "foreign meta.json": (lambda d: (d / traj.META).write_text("[1, 2]"), "not the meta.json of an l2ljax run"),
    "checkpoint of an older l2ljax (no checksum)": (lambda d: rewrite_npz(d / traj.CHECKPOINT, lambda a: a.pop(
        "__checksum__")), "has no checksum"),
}


@pytest.mark.parametrize("damage", sorted(DAMAGES))
def test_every_damaged_file_is_named_on_resume(run_dir, damage):
    apply, says = DAMAGES[damage]
    apply(run_dir)
    with pytest.raises((traj.RunFileError, FileNotFoundError)) as error:
        resume(run_dir)
    assert says in str(error.value)


@pytest.mark.parametrize("damage", ["flipped byte in a chunk", "deleted chunk", "overlapping stray chunk",
                                    "chunk without population", "empty chunk file"])
def test_load_trajectory_checks_every_chunk(run_dir, damage):
    apply, says = DAMAGES[damage]
    apply(run_dir)
    with pytest.raises(traj.RunFileError, match=says.replace(".", r"\.")):
        l2ljax.load_trajectory(run_dir)


def test_a_nan_state_with_a_valid_checksum_is_still_refused(run_dir):
    def nan_mean(arrays):
        name = next(n for n, v in arrays.items() if n.startswith("state.inner") and v.dtype.kind == "f")
        arrays[name] = np.full_like(arrays[name], np.nan)
        arrays.pop("__checksum__")
        arrays["__checksum__"] = np.asarray(traj.checksum(arrays))

    rewrite_npz(run_dir / traj.CHECKPOINT, nan_mean)
    with pytest.raises(traj.RunFileError, match="holds NaN"):
        resume(run_dir)


def test_resume_with_another_key_is_refused(run_dir):
    with pytest.raises(ValueError, match="another key"):
        resume(run_dir, key=1)


def test_leftover_tmp_files_are_removed_and_resume_equals_uninterrupted(run_dir, tmp_path):
    (run_dir / ".checkpoint.npz.abc.tmp").write_bytes(b"half")
    (run_dir / "trajectory" / ".chunk_00000008.npz.def.tmp").write_bytes(b"half")
    resumed = resume(run_dir)
    assert not list(run_dir.rglob("*.tmp"))
    whole = l2ljax.run(OPT, PROBLEM, jax.random.key(0), 12, directory=tmp_path / "whole", chunk_size=2)
    np.testing.assert_array_equal(resumed.trajectory["population"], whole.trajectory["population"])


def test_a_second_writer_is_refused_and_a_dead_writers_lock_is_taken_over(run_dir):
    (run_dir / LOCK).write_text(f'{{"host": "{os.uname().nodename}", "pid": {os.getpid()}, "since": "now"}}')
    with pytest.raises(RunDirectoryLocked, match=f"pid {os.getpid()}"):
        resume(run_dir)  # this very process holds it: alive
    (run_dir / LOCK).write_text('{"host": "another-node", "pid": 1, "since": "then"}')
    with pytest.raises(RunDirectoryLocked, match="another-node"):
        resume(run_dir)  # another machine's lock is never taken over
    dead = _pid_of_a_finished_process()
    (run_dir / LOCK).write_text(f'{{"host": "{os.uname().nodename}", "pid": {dead}, "since": "then"}}')
    assert resume(run_dir).generations == 12  # a killed run's lock on this host
    assert not (run_dir / LOCK).exists()  # released at the end


def _pid_of_a_finished_process() -> int:
    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid


def test_result_files_are_group_readable_and_meta_is_standard_json(run_dir):
    import json

    def refuse(constant):
        raise ValueError(constant)

    json.loads((run_dir / traj.META).read_text(), parse_constant=refuse)
    for path in run_dir.rglob("*.npz"):
        assert path.stat().st_mode & 0o044 == 0o044
