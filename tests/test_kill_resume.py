"""SIGKILL at random instants, resume, again: every optimizer ends with the trajectory and state of
an uninterrupted run, no generation lost or written twice, no temporary file left, the lock released.

The runs happen in children of a fork server (``kill_resume_worker.py``); the uninterrupted
reference runs go first and fill a persistent compilation cache that the killed and resumed
processes load their programs from. The default suite kills a few cases twice each; the slow
one kills every case of ``optimizer_cases.CASES`` three times at random instants.
"""

import multiprocessing
import random
import time
from collections import Counter
from pathlib import Path

import kill_resume_worker as worker
import numpy as np
import pytest
from optimizer_cases import CASES

import l2ljax
from l2ljax import trajectory as traj
from l2ljax.run.directory import LOCK

CHUNK = 2
QUICK_CASES = ["CrossEntropy-Gaussian", "EnKF"]


def fork_server(cache: Path, monkeypatch) -> multiprocessing.context.BaseContext:
    """A fork server with JAX imported (no backend yet) and the compilation cache in ``cache``."""
    for name, value in {"JAX_COMPILATION_CACHE_DIR": str(cache), "JAX_PLATFORMS": "cpu",
                        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
                        "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0"}.items():
        monkeypatch.setenv(name, value)  # read by the fork server when it starts
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["jax", "l2ljax", "optimizer_cases", "kill_resume_worker"])
    return context


def start(context, names: list[str], root: Path, n_generations: int) -> multiprocessing.process.BaseProcess:
    process = context.Process(target=worker.run_cases, args=(names, root, n_generations, CHUNK))
    process.start()
    return process


def mtime(path: Path) -> int:
    return path.stat().st_mtime_ns if path.exists() else 0


def kill_and_resume(context, names: list[str], root: Path, n_generations: int, kills_per_case: int,
                    rng: random.Random, max_delay: float) -> Counter:
    """For each case, up to ``kills_per_case`` times: start the cases, wait until this case's
    process has written a checkpoint, wait a random delay, SIGKILL. Then run to the end."""
    counts: Counter = Counter()
    for name in names:
        for _ in range(kills_per_case):
            if (root / worker.DONE / name).exists():
                break
            checkpoint = root / name / traj.CHECKPOINT
            seen, process = mtime(checkpoint), start(context, names, root, n_generations)
            deadline = time.monotonic() + 300
            while process.is_alive() and mtime(checkpoint) == seen and time.monotonic() < deadline:
                time.sleep(0.002)
            time.sleep(rng.uniform(0.0, max_delay))
            if process.is_alive():
                process.kill()
                counts["kills injected"] += 1
                counts["kills that hit this case mid-run"] += not (root / worker.DONE / name).exists()
            process.join()
    finishing = start(context, names, root, n_generations)
    finishing.join()
    assert finishing.exitcode == 0, "the resumed run failed"
    return counts


def compare(names: list[str], root: Path, reference: Path, n_generations: int, counts: Counter) -> None:
    """Each case's directory against the uninterrupted run's: files, records, state, leftovers."""
    for name in names:
        got, want = l2ljax.load_trajectory(root / name), l2ljax.load_trajectory(reference / name)
        generations = got["generation"].tolist()
        counts["records lost"] += n_generations - len(set(generations))
        counts["records duplicated"] += len(generations) - len(set(generations))
        assert generations == list(range(n_generations)), name
        assert got.keys() == want.keys(), name
        for field in want:
            np.testing.assert_array_equal(got[field], want[field], err_msg=f"{name}: {field}")
        with np.load(root / name / traj.CHECKPOINT) as a, np.load(reference / name / traj.CHECKPOINT) as b:
            assert a.files == b.files, name
            for field in b.files:
                np.testing.assert_array_equal(a[field], b[field], err_msg=f"{name}: state {field}")
        assert not list((root / name).rglob("*.tmp")), f"{name}: temporary files left"
        assert not (root / name / LOCK).exists(), f"{name}: lock not released"
        counts["cases survived"] += 1


def check_kills(names: list[str], tmp_path: Path, monkeypatch, n_generations: int, kills_per_case: int,
                seed: int, max_delay: float) -> Counter:
    context = fork_server(tmp_path / "jax-cache", monkeypatch)
    reference = start(context, names, tmp_path / "reference", n_generations)
    reference.join()
    assert reference.exitcode == 0
    counts = kill_and_resume(context, names, tmp_path / "killed", n_generations, kills_per_case, random.Random(seed),
                             max_delay)
    compare(names, tmp_path / "killed", tmp_path / "reference", n_generations, counts)
    print(f"\nfault injection over {len(names)} cases: {dict(counts)}")
    assert counts["kills injected"] >= len(names)  # most cases are hit more than once
    return counts


def test_a_few_optimizers_killed_twice_each_resume_bit_identically(tmp_path, monkeypatch):
    check_kills(QUICK_CASES, tmp_path, monkeypatch, 24, kills_per_case=2, seed=0, max_delay=0.3)


@pytest.mark.slow
def test_every_optimizer_killed_at_random_instants_resumes_bit_identically(tmp_path, monkeypatch):
    check_kills(list(CASES), tmp_path, monkeypatch, 60, kills_per_case=3, seed=1, max_delay=0.5)
