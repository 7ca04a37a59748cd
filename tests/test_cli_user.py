"""The command line as a user types it: subprocesses, exit codes, what is printed, the files promised."""

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
MNIST_DIR = Path(os.environ.get("L2LJAX_MNIST_DIR", REPO.parent / "shared" / "data" / "mnist"))
needs_mnist = pytest.mark.skipif(not MNIST_DIR.is_dir(), reason=f"MNIST not found at {MNIST_DIR}")
TINY = ["--members", "8", "--eval-every", "2", "--train-subset", "640", "--test-subset", "200"]


def l2ljax_command() -> list[str]:
    """The installed ``l2ljax`` script beside this Python (as README's commands use it), else ``-m``."""
    script = Path(sys.executable).parent / "l2ljax"
    return [str(script)] if script.exists() else [sys.executable, "-m", "l2ljax.cli"]


def user_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("L2LJAX_", "PMI_", "OMPI_", "SLURM_"))}
    env.update(HOME=str(home), L2LJAX_MNIST_DIR=str(MNIST_DIR), PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1")
    return env


def l2ljax(*args: str, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([*l2ljax_command(), *args], cwd=cwd, env=user_env(cwd / "home"), capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture
def empty_dir(tmp_path: Path) -> Path:
    (tmp_path / "home").mkdir()
    return tmp_path


def strict_json(path: Path):
    def refuse(constant: str):
        raise ValueError(f"{path}: {constant} is not standard JSON")

    return json.loads(path.read_text(), parse_constant=refuse)


@needs_mnist
def test_readme_main_job_as_a_new_user(empty_dir):
    """README's main-job line (tiny --iterations) from an empty folder and an empty HOME: every file it promises."""
    done = l2ljax("mnist-enkf", "--download", "--iterations", "4", *TINY, cwd=empty_dir)
    assert done.returncode == 0, done.stderr
    assert "final test accuracy of the averaged ensemble mean" in done.stdout
    run_dir = (empty_dir / "runs" / "latest").resolve()
    assert run_dir.name.startswith("mnist-enkf-") and f"results in runs/{run_dir.name}" in done.stdout
    with open(run_dir / "test_accuracy.csv") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["iteration", "test_accuracy", "seconds"] and [int(r[0]) for r in rows[1:]] == [2, 4]
    assert all(0.0 <= float(r[1]) <= 1.0 for r in rows[1:])
    assert (run_dir / "test_error.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (run_dir / "progress.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    meta = strict_json(run_dir / "meta.json")
    assert meta["n_generations"] == 4 if "n_generations" in meta else True
    chunks = sorted((run_dir / "trajectory").glob("chunk_*.npz"))
    generations = np.concatenate([np.load(c)["generation"] for c in chunks])
    assert generations.tolist() == [0, 1, 2, 3]  # numpy alone reads the results
    assert np.load(run_dir / "checkpoint.npz").files
    for path in [run_dir / "meta.json", run_dir / "test_accuracy.csv", *chunks]:
        assert path.stat().st_mode & 0o044 == 0o044, f"{path} is not readable by the group and others"

    again = l2ljax("mnist-enkf", "--iterations", "2", *TINY, cwd=empty_dir)  # a second run never collides
    assert again.returncode == 0, again.stderr
    second = (empty_dir / "runs" / "latest").resolve()
    assert second != run_dir and len(list((empty_dir / "runs").glob("mnist-enkf-*"))) == 2

    resumed = l2ljax("mnist-enkf", "--resume", "--iterations", "4", *TINY, cwd=empty_dir)  # continues runs/latest
    assert resumed.returncode == 0, resumed.stderr
    with open(second / "test_accuracy.csv") as f:
        assert [int(r[0]) for r in list(csv.reader(f))[1:]] == [2, 4]


@pytest.mark.parametrize(("flags", "says"), [
    (["--gamma", "-1"], "--gamma must be a positive number"),
    (["--init-std", "-1"], "--init-std must be a positive number"),
    (["--train-subset", "10"], "--train-subset 10 is smaller than one batch"),
    (["--members", "1"], "--members must be at least 2"),
    (["--average-decay", "1"], "--average-decay must be in [0, 1)"),
    (["--resume", "--out", "nowhere"], "holds no run to continue"),
])
def test_bad_flags_fail_in_one_line_before_loading_mnist(empty_dir, flags, says):
    # --data-dir points nowhere: the flag must be refused before MNIST is looked for
    done = l2ljax("mnist-enkf", "--data-dir", str(empty_dir / "no-mnist"), *flags, cwd=empty_dir, timeout=60)
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and says in lines[0] and "Traceback" not in done.stderr


def test_missing_mnist_says_add_download(empty_dir):
    done = l2ljax("mnist-enkf", "--data-dir", str(empty_dir / "no-mnist"), cwd=empty_dir, timeout=60)
    assert done.returncode == 1
    assert "add --download" in done.stderr and "Traceback" not in done.stderr
    assert "load_mnist" not in done.stderr and "resume=True" not in done.stderr


def test_debug_shows_the_traceback(empty_dir):
    done = l2ljax("--debug", "mnist-enkf", "--data-dir", str(empty_dir / "no-mnist"), cwd=empty_dir, timeout=60)
    assert done.returncode == 1 and "Traceback" in done.stderr


@needs_mnist
def test_existing_out_says_add_resume(empty_dir):
    first = l2ljax("mnist-enkf", "--iterations", "2", *TINY, "--out", "mine", cwd=empty_dir)
    assert first.returncode == 0, first.stderr
    second = l2ljax("mnist-enkf", "--iterations", "2", *TINY, "--out", "mine", cwd=empty_dir)
    assert second.returncode == 1 and "add --resume" in second.stderr and "Traceback" not in second.stderr


@needs_mnist
# SIGTERM takes the same handler as SIGINT; its run is in the slow suite (-m slow)
@pytest.mark.parametrize("signum", [signal.SIGINT, pytest.param(signal.SIGTERM, marks=pytest.mark.slow)])
def test_ctrl_c_exits_130_and_says_how_to_continue(empty_dir, signum):
    process = subprocess.Popen([*l2ljax_command(), "mnist-enkf", "--iterations", "100000", *TINY, "--out", "run",
                                "--eval-every", "1"], cwd=empty_dir, env=user_env(empty_dir / "home"),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    csv_path = empty_dir / "run" / "test_accuracy.csv"
    deadline = time.monotonic() + 240
    while not csv_path.exists() and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.2)
    assert csv_path.exists(), "the run never finished its first iteration"
    process.send_signal(signum)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130, err
    assert "--resume --out run" in err and "Traceback" not in err
    resumed = l2ljax("mnist-enkf", "--resume", "--out", "run", "--iterations", "3", *TINY, "--eval-every", "1",
                     cwd=empty_dir)
    assert resumed.returncode == 0, resumed.stderr


def test_version_and_every_option_documented(empty_dir):
    from l2ljax import __version__
    from l2ljax.cli import build_parser

    done = l2ljax("--version", cwd=empty_dir, timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == f"l2ljax {__version__}"
    parser = build_parser()
    subparsers = next(a for a in parser._actions if a.dest == "command").choices
    for name, sub in subparsers.items():
        for action in sub._actions:
            assert action.help, f"l2ljax {name} {action.option_strings or action.dest} has no help text"


def test_functions_table_explains_itself_and_has_no_negative_gaps(empty_dir):
    done = l2ljax("functions", "--functions", "shekel2d", "michalewicz2d", "--generations", "20", cwd=empty_dir)
    assert done.returncode == 0, done.stderr
    out = done.stdout.splitlines()
    assert out[0].startswith("gap f(best) - f(argmin)")
    rows = [line.split() for line in out[2:]]
    assert [r[0] for r in rows] == ["shekel2d-2d", "michalewicz2d-2d"]
    assert all(float(v) >= 0 for r in rows for v in r[1:])
    help_text = l2ljax("functions", "--help", cwd=empty_dir, timeout=60).stdout
    assert "--quick" in help_text and "minutes" in help_text and "rastrigin" in help_text


@needs_mnist
def test_main_job_killed_at_random_instants_loses_no_record(empty_dir):
    """SIGKILL at random instants, resume each time: the CSV and the final state equal an uninterrupted run's.

    The riskiest instant is just after a checkpoint, before that iteration's test row is written
    (the first test also compiles): kill there twice; once at a random instant."""
    kills = kill_main_job_and_resume(empty_dir, ("after checkpoint", "random", "after checkpoint"), seed=0)
    assert kills == 3


@needs_mnist
@pytest.mark.slow
def test_main_job_killed_again_and_again_loses_no_record(empty_dir):
    """Eight kills in a row, four just after a checkpoint and four at random instants."""
    kills = kill_main_job_and_resume(empty_dir, ("random", "after checkpoint") * 4, seed=1, iterations=12)
    assert kills >= 5


def kill_main_job_and_resume(empty_dir: Path, waits: tuple[str, ...], seed: int, iterations: int = 8) -> int:
    """Run the main job, SIGKILL it at each of ``waits``, resume each time, finish, and compare
    with an uninterrupted run: the same CSV rows, none lost or doubled, the same checkpoint, no
    temporary file left, the lock released. Returns how many kills hit a live process."""
    import random

    flags = ["--iterations", str(iterations), *TINY, "--eval-every", "1"]
    reference = l2ljax("mnist-enkf", *flags, "--out", "reference", cwd=empty_dir)
    assert reference.returncode == 0, reference.stderr
    rng = random.Random(seed)
    run_dir = empty_dir / "killed"
    checkpoint = run_dir / "checkpoint.npz"
    kills = 0
    for wait in waits:
        resume = ["--resume"] if (run_dir / "meta.json").exists() else []
        process = subprocess.Popen([*l2ljax_command(), "mnist-enkf", *flags, "--out", "killed", *resume],
                                   cwd=empty_dir, env=user_env(empty_dir / "home"), stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL)
        seen = checkpoint.stat().st_mtime_ns if checkpoint.exists() else 0
        deadline = time.monotonic() + 240
        while process.poll() is None and time.monotonic() < deadline:  # this process's first checkpoint
            if checkpoint.exists() and checkpoint.stat().st_mtime_ns != seen:
                break
            time.sleep(0.001)
        if wait == "random":
            time.sleep(rng.uniform(0.0, 0.6))
        kills += process.poll() is None
        process.kill()
        process.wait()
    finished = l2ljax("mnist-enkf", *flags, "--out", "killed", "--resume", cwd=empty_dir)
    assert finished.returncode == 0, finished.stderr

    def table(path: Path) -> list[tuple[int, str]]:
        with open(path / "test_accuracy.csv") as f:
            return [(int(r[0]), r[1]) for r in list(csv.reader(f))[1:]]

    assert table(run_dir) == table(empty_dir / "reference")
    assert [i for i, _ in table(run_dir)] == list(range(1, iterations + 1))
    with np.load(run_dir / "checkpoint.npz") as got, np.load(empty_dir / "reference" / "checkpoint.npz") as want:
        assert got.files == want.files
        for name in want.files:
            np.testing.assert_array_equal(got[name], want[name], err_msg=name)
    assert not list(run_dir.rglob("*.tmp")) and not (run_dir / "lock").exists()
    print(f"\nmain job: {kills} kills injected of {len(waits)}, resumed to an identical result")
    return kills
