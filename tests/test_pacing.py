"""Runs that follow the clock: sub-chunks give the same numbers; Ctrl-C saves every completed generation."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import l2ljax
from l2ljax.run.pacing import Pace

sys.path.insert(0, str(Path(__file__).resolve().parent))
from slow_problem import build  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def test_pace_measures_after_the_compiling_call():
    pace = Pace(1.0)
    assert pace.steps(50) == 1
    pace.observe(1, 30.0)  # compilation: not a rate
    assert pace.steps(50) == 1
    pace.observe(1, 0.1)
    assert pace.steps(50) == 10 and pace.steps(4) == 4
    pace.observe(10, 20.0)
    assert pace.steps(50) == 1
    assert Pace(None).steps(50) == 50


def test_sub_chunks_give_the_numbers_of_one_scan(tmp_path):
    problem = l2ljax.function_optimizee("rastrigin", 3)
    opt = l2ljax.CrossEntropy(problem, pop_size=16)
    whole = l2ljax.run(opt, problem, jax.random.key(3), 40)
    paced = l2ljax.run(opt, problem, jax.random.key(3), 40, directory=tmp_path, chunk_size=20, chunk_seconds=1e-9)
    np.testing.assert_array_equal(paced.trajectory["population"], whole.trajectory["population"])
    for got, want in zip(jax.tree_util.tree_leaves(paced.state), jax.tree_util.tree_leaves(whole.state), strict=True):
        np.testing.assert_array_equal(np.asarray(jax.random.key_data(got) if jnp.issubdtype(got.dtype,
                                      jax.dtypes.prng_key) else got), np.asarray(
                                      jax.random.key_data(want) if jnp.issubdtype(want.dtype, jax.dtypes.prng_key)
                                      else want))
    starts = sorted(int(p.stem.split("_")[1]) for p in (tmp_path / "trajectory").glob("chunk_*.npz"))
    assert starts == [0, 20]  # saved every chunk_size generations, not every sub-chunk


SCRIPT = """
import sys
import jax, l2ljax
sys.path.insert(0, {tests!r})
from slow_problem import build

opt, problem = build({repeats})
try:
    l2ljax.run(opt, problem, jax.random.key(0), 10_000, directory=sys.argv[1], chunk_size=10_000, progress=True)
except KeyboardInterrupt:
    print("interrupted", flush=True)
    sys.exit(7)
"""


def start_script(tmp_path: Path, repeats: int) -> subprocess.Popen:
    script = tmp_path / "slow_run.py"
    script.write_text(SCRIPT.format(tests=str(REPO / "tests"), repeats=repeats))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, str(script), str(tmp_path / "run")], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def wait_for_progress(process: subprocess.Popen, text: str = "/10000") -> None:
    """Until the run prints ``text`` (default: the progress bar shows a generation done)."""
    seen, deadline = "", time.monotonic() + 240
    while text not in seen and time.monotonic() < deadline and process.poll() is None:
        seen += process.stderr.read(1) or ""
    assert text in seen, seen


def test_ctrl_c_mid_chunk_saves_every_completed_generation_and_resume_continues(tmp_path):
    process = start_script(tmp_path, repeats=200)
    wait_for_progress(process)
    time.sleep(3.0)
    sent = time.monotonic()
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=60)
    waited = time.monotonic() - sent
    assert process.returncode == 7, err
    assert waited < 10, f"took {waited:.1f} s to stop"  # sub-chunks of ~1 s (generous under load)
    run_dir = tmp_path / "run"
    trajectory = l2ljax.load_trajectory(run_dir)
    generations = trajectory["generation"].tolist()
    assert len(generations) > 1 and generations == list(range(len(generations)))  # nothing lost, no gap

    opt, problem = build(200)
    whole = l2ljax.run(opt, problem, jax.random.key(0), len(generations) + 2)
    resumed = l2ljax.run(opt, problem, jax.random.key(0), len(generations) + 2, directory=run_dir, resume=True)
    np.testing.assert_array_equal(resumed.trajectory["population"], whole.trajectory["population"])


def test_second_ctrl_c_exits_at_once_while_compiled_code_runs(tmp_path):
    process = start_script(tmp_path, repeats=20_000)  # the first generation takes tens of seconds
    wait_for_progress(process, "compiling")
    time.sleep(1.0)
    process.send_signal(signal.SIGINT)
    time.sleep(0.5)
    sent = time.monotonic()
    process.send_signal(signal.SIGINT)
    process.wait(timeout=30)
    assert process.returncode == 130
    assert time.monotonic() - sent < 5
