"""Evaluation split over devices and MPI ranks gives the numbers of one device, and never hangs on errors.

The multi-device and MPI runs happen in subprocesses (``parallel_worker.py``): CPU devices must be
created before JAX starts, and MPI needs ``mpirun``. The MPI tests skip where mpi4jax or mpirun is
missing, unless ``L2LJAX_REQUIRE_MPI=1`` (set by CI, which installs them) turns that into a failure.
"""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import l2ljax
from l2ljax import parallel

WORKER = Path(__file__).with_name("parallel_worker.py")
REPO = Path(__file__).resolve().parents[1]


def subprocess_env(**extra: str) -> dict:
    """This environment on the CPU, with the repository importable."""
    path = os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])
    return dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=path, **extra)


def two_cpu_devices_env() -> dict:
    return subprocess_env(XLA_FLAGS="--xla_force_host_platform_device_count=2")


def mpirun() -> str | None:
    """``mpirun`` beside this Python (the mpich wheel puts it there), else on PATH, if mpi4jax imports."""
    try:
        import mpi4jax  # noqa: F401
        import mpi4py  # noqa: F401
    except ImportError:
        return None
    beside = Path(sys.executable).parent / "mpirun"
    return str(beside) if beside.exists() else shutil.which("mpirun")


def require_mpi() -> str:
    launcher = mpirun()
    if launcher is None:
        if os.environ.get("L2LJAX_REQUIRE_MPI") == "1":
            pytest.fail("L2LJAX_REQUIRE_MPI=1 but mpi4py/mpi4jax/mpirun are missing")
        pytest.skip("needs mpi4py, mpi4jax and mpirun (pip install 'l2ljax[mpi]')")
    return launcher


def reports(command: list[str], out: Path, env: dict, n_ranks: int) -> list[dict]:
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(n_ranks)]


def check_split_runs(report: dict, n_shards: int) -> None:
    """What ``parallel_worker.main`` measured, against one-device runs in the same process."""
    assert report["shards"] == n_shards
    # Relative differences (float32 rounding of other shapes); a noise key drawn after the split
    # would differ by the noise (0.1), a wrong gather by the scores themselves.
    assert report["ce_score"] < 5e-4
    assert report["ce_best"][0] == pytest.approx(report["ce_best"][1], rel=1e-4)
    assert report["enkf_ensemble"] < 1e-4
    assert report["host_score"] == 0.0  # the host path is float64 numpy: exactly equal
    assert report["resume_score"] < 5e-4 and report["resume_generations"] == 16
    assert report["refused"] is not None and "already holds a run" in report["refused"]
    assert report["stopped_after"] == 6


@pytest.fixture(scope="module")
def device_reports(tmp_path_factory):
    out = tmp_path_factory.mktemp("devices")
    return reports([sys.executable, str(WORKER), "devices", str(out)], out, two_cpu_devices_env(), 1)


def test_two_devices_give_the_numbers_of_one(device_reports):
    check_split_runs(device_reports[0], 2)
    assert device_reports[0]["host_rows_seen"] == [7] * 4  # a host simulator is not split over devices


@pytest.fixture(scope="module")
def mpi_reports(tmp_path_factory):
    launcher = require_mpi()
    out = tmp_path_factory.mktemp("mpi")
    return reports([launcher, "-n", "2", sys.executable, str(WORKER), "mpi", str(out)], out, subprocess_env(), 2)


def test_two_mpi_ranks_give_the_numbers_of_one_process(mpi_reports):
    for report in mpi_reports:
        check_split_runs(report, 2)
    assert [r["writer"] for r in mpi_reports] == [True, False]


def test_each_rank_scores_only_its_rows_of_a_host_simulator(mpi_reports):
    assert [r["host_rows_seen"] for r in mpi_reports] == [[4] * 4, [3] * 4]  # 7 rows over 2 ranks


def test_a_failure_on_the_writer_is_raised_on_every_rank(mpi_reports):
    writer, other = mpi_reports
    assert writer["refused"].startswith("FileExistsError")
    assert other["refused"].startswith("RuntimeError: rank 0 failed: FileExistsError")


def test_worker_pools_on_ranks_give_the_numbers_of_one_pool(mpi_reports, device_reports):
    # the workers start under a launcher and with mpi4py imported by the main script: they must
    # not try to join the job as its ranks, and their seeds must not depend on the split
    assert mpi_reports[0]["pool_fitness"] == mpi_reports[1]["pool_fitness"] == device_reports[0]["pool_fitness"]


def test_a_failing_callback_on_one_rank_is_raised_on_every_rank(mpi_reports):
    writer, other = mpi_reports
    assert writer["callback_failed"] == "OSError: disk full"
    assert other["callback_failed"] == "RuntimeError: rank 0 failed: OSError: disk full"


def test_a_trace_time_error_on_one_rank_is_raised_on_every_rank(mpi_reports, device_reports):
    writer, other = mpi_reports
    assert writer["trace_failed"] == "RuntimeError: rank 1 failed: ValueError: bad model on this rank"
    assert other["trace_failed"] == "ValueError: bad model on this rank"
    assert device_reports[0]["trace_failed"] == "ValueError: bad model on this rank"


def test_ranks_called_differently_are_named_on_every_rank(mpi_reports, device_reports):
    for report in mpi_reports:
        assert "called differently from rank 0: key on rank(s) 1" in report["other_key"]
        assert "optimizer on rank(s) 1" in report["other_pop_size"]
    assert device_reports[0]["other_key"] is None  # one process: nothing to disagree with


def test_a_simulator_crash_on_one_rank_is_raised_on_every_rank(mpi_reports, device_reports):
    writer, other = mpi_reports
    assert writer["crashed"] == "RuntimeError: rank 1 failed: ValueError: simulator crashed"
    assert other["crashed"] == "ValueError: simulator crashed"
    assert device_reports[0]["crashed"] == "ValueError: simulator crashed"  # one process: raised as is


def test_sharded_evaluation_compiles_to_per_device_shards():
    script = (
        "import jax, jax.numpy as jnp, l2ljax\n"
        "from l2ljax import parallel\n"
        "problem = l2ljax.function_optimizee('rastrigin', dim=5)\n"
        "p = parallel.Devices()\n"
        "f = jax.jit(lambda pop: problem.evaluate_flat(jax.random.key(0), pop, 0, p).score)\n"
        "print(f.lower(jnp.ones((33, 5))).compile().as_text())\n"
        "print('auto:', parallel.auto())\n"
    )
    done = subprocess.run([sys.executable, "-c", script], env=two_cpu_devices_env(), capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    shapes = set(re.findall(r"f32\[(\d+),5\]", done.stdout))
    assert "17" in shapes  # 33 rows padded to 34, 17 per device
    assert "share one thread pool" in done.stderr  # CPU devices warn: no gain, and jaxlib can deadlock
    assert "auto: None" in done.stdout  # auto() never picks CPU devices


def test_one_device_is_exactly_plain_jit():
    problem = l2ljax.function_optimizee("rosenbrock", dim=3)
    opt = l2ljax.CrossEntropy(problem, pop_size=16)
    plain = l2ljax.run(opt, problem, jax.random.key(0), 20)
    single = l2ljax.run(opt, problem, jax.random.key(0), 20, parallel=parallel.Devices(jax.devices()[:1]))
    np.testing.assert_array_equal(plain.trajectory["score"], single.trajectory["score"])


def test_padding_repeats_the_first_row_to_a_multiple_of_the_shards():
    rows = (jnp.arange(10.0).reshape(5, 2), jnp.arange(5))
    padded, per_shard = parallel.padded_rows(rows, 4)
    assert per_shard == 2
    np.testing.assert_array_equal(padded[0][5:], np.tile([[0.0, 1.0]], (3, 1)))
    np.testing.assert_array_equal(padded[1], [0, 1, 2, 3, 4, 0, 0, 0])
    same, per_shard = parallel.padded_rows(rows, 5)
    assert same is rows and per_shard == 1


def test_launcher_detection():
    assert parallel.launched_ranks({}) == 1
    assert parallel.launched_ranks({"SLURM_STEP_NUM_TASKS": "8"}) == 8
    assert parallel.launched_ranks({"PMI_SIZE": "2"}) == 2
    assert parallel.launched_ranks({"OMPI_COMM_WORLD_SIZE": "4", "SLURM_NTASKS": "16"}) == 4
    # mpirun inside `srun --pty bash`: the launcher's own variables win over the inherited Slurm step's
    assert parallel.launched_ranks({"SLURM_STEP_NUM_TASKS": "1", "PMI_SIZE": "4"}) == 4
    assert parallel.local_rank({"SLURM_LOCALID": "0", "MPI_LOCALRANKID": "3"}) == 3
    assert parallel.local_rank({"SLURM_LOCALID": "3"}) == 3 and parallel.local_rank({}) is None
    assert parallel.local_rank_count({"SLURM_STEP_TASKS_PER_NODE": "4(x2)"}) == 4
    assert parallel.local_rank_count({"SLURM_STEP_TASKS_PER_NODE": "4,2"}) is None


def test_gpu_binding():
    def bound(n_gpus=None, **env):
        return parallel.bind_local_gpu(env, n_gpus=n_gpus), env.get("CUDA_VISIBLE_DEVICES")

    step = {"SLURM_STEP_NUM_TASKS": "8", "SLURM_STEP_TASKS_PER_NODE": "4(x2)"}
    assert bound(4, SLURM_LOCALID="3", **step) == ("3", "3")
    assert bound(2, SLURM_LOCALID="3", **step) == ("1", "1")  # more ranks than GPUs: shared round-robin
    # --gres=gpu:4 shows every rank all four: each takes its own
    assert bound(SLURM_LOCALID="2", CUDA_VISIBLE_DEVICES="4,5,6,7", **step) == ("6", "6")
    # --gpus-per-task=1 already chose: left alone
    assert bound(SLURM_LOCALID="3", CUDA_VISIBLE_DEVICES="0", **step) == (None, "0")
    # one rank per node keeps every GPU; no launcher, nothing to do
    assert bound(4, SLURM_LOCALID="0", SLURM_STEP_NUM_TASKS="2", SLURM_STEP_TASKS_PER_NODE="1(x2)") == (None, None)
    assert bound(4, SLURM_LOCALID="0") == (None, None)


def test_auto_on_one_device_without_a_launcher_is_plain_jit(monkeypatch):
    for name in ("SLURM_STEP_NUM_TASKS", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "PMIX_SIZE"):
        monkeypatch.delenv(name, raising=False)
    if jax.local_device_count() == 1:
        assert parallel.auto() is None
    else:
        assert isinstance(parallel.auto(), parallel.Devices)


def test_mpi_without_mpi4jax_names_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "mpi4jax", None)
    with pytest.raises(ImportError, match=r"l2ljax\[mpi\]"):
        parallel.MPI()


def test_main_job_under_mpirun_gives_the_accuracies_of_one_process(tmp_path):
    from l2ljax import cli

    launcher = require_mpi()
    mnist = os.environ.get("L2LJAX_MNIST_DIR", str(REPO.parent / "shared" / "data" / "mnist"))
    job = ["mnist-enkf", "--members", "32", "--iterations", "4", "--eval-every", "2", "--train-subset", "2000",
           "--test-subset", "500", "--data-dir", mnist]
    done = subprocess.run([launcher, "-n", "2", sys.executable, "-m", "l2ljax.cli", *job, "--out",
                           str(tmp_path / "mpi")], env=subprocess_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("final test accuracy") == 1  # only rank 0 reports
    cli.main([*job, "--out", str(tmp_path / "one"), "--parallel", "none"])

    def accuracies(run: str) -> list[str]:
        return [line.split(",")[1] for line in (tmp_path / run / "test_accuracy.csv").read_text().splitlines()[1:]]

    assert accuracies("mpi") == accuracies("one") and len(accuracies("one")) == 2


def test_auto_refuses_a_launch_mpi_does_not_see():
    require_mpi()
    script = "from l2ljax import parallel\nparallel.auto()\n"
    done = subprocess.run([sys.executable, "-c", script], env=subprocess_env(PMI_SIZE="2"), capture_output=True,
                          text=True, timeout=300)
    assert done.returncode != 0
    assert "the launcher started 2 ranks but MPI sees 1" in done.stderr


def _sharded(tmp_path, n, *args, timeout=300):
    """``sharded_worker.py`` on ``n`` MPI ranks."""
    launcher = require_mpi()
    env = subprocess_env()
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), str(REPO / "tests"), env["PYTHONPATH"]])
    done = subprocess.run([launcher, "-n", str(n), sys.executable, str(WORKER.with_name("sharded_worker.py")), *args],
                          env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]


def test_a_sharded_ensemble_gives_the_numbers_of_one_process_on_3_ranks(tmp_path):
    """31 members over 3 ranks (11, 10, 10): every sharded code path of the EnKF update (stochastic
    perturbations, additive inflation, misfit controller, Nesterov, SECNice localization, failed
    members resampled, the LOD sequential composition) against the same run unsharded."""
    _sharded(tmp_path, 3, "compare", str(tmp_path))
    for rank in range(3):
        report = json.loads((tmp_path / f"rank{rank}.json").read_text())
        for name, got in report.items():
            if not isinstance(got, dict):
                continue
            for field in ("ensemble", "score", "misfit", "spread"):
                assert got[field] < 1e-4, (rank, name, field, got[field])
            assert got["rows_held"] == [11 if rank == 0 else 10], (rank, name)  # only its rows, all along
            assert got["whole_after"] == 31
        assert report["failing members+SECNice"]["n_failed_first"] > 0  # the resampling path ran


def test_a_sharded_run_resumes_on_another_number_of_ranks(tmp_path):
    run_dir = tmp_path / "run"
    _sharded(tmp_path, 2, "start", str(run_dir), str(tmp_path))
    _sharded(tmp_path, 3, "resume", str(run_dir), str(tmp_path))
    for stage, ranks, generations in (("start", 2, 4), ("resume", 3, 8)):
        for rank in range(ranks):
            report = json.loads((tmp_path / f"{stage}{rank}.json").read_text())
            assert report["generations"] == generations
            assert report["ensemble"] < 1e-4 and report["score"] < 1e-4, report
