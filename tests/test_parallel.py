"""Evaluation split over devices and MPI ranks gives the numbers of one device, and never hangs on errors.

The multi-device and MPI runs happen in subprocesses (``parallel_worker.py``): CPU devices must be
created before JAX starts, and MPI needs ``mpirun``. The MPI tests skip where mpi4jax or mpirun is
missing, unless ``L2LJAX_REQUIRE_MPI=1`` (set by CI, which installs them) turns that into a failure.
The ``jax.distributed`` tests (``distributed_worker.py``) start their processes themselves and need
nothing but JAX (mpi4py and mpi4jax are made unimportable there): they never skip; only their
``mpirun`` variant needs MPI, and is held to ``L2LJAX_REQUIRE_MPI`` like the others.
"""

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import max_difference

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


def test_population_state_split_over_devices_gives_the_numbers_of_one(device_reports):
    """EnKF ensemble, GA offspring, SA and PT chains held 15 rows per device between chunks; 31
    rows, which 2 devices cannot split evenly, and a batch EnKF whose form is left to "auto"
    (the ensemble form cannot be split) stay whole on each."""
    split = device_reports[0]["state_split"]
    assert sorted(split) == ["EnKF", "EnKFauto", "GA", "GA31", "PT", "SA"]
    whole = {"GA31": 31, "EnKFauto": 30}
    for name, got in split.items():
        assert got["state"] < 1e-4 and got["score"] < 1e-5, (name, got)
        rows = whole.get(name, 15)
        assert got["rows_per_device"] == [rows] and got["whole_after"] == (rows if name in whole else 30), (name, got)


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
    members resampled, the LOD sequential composition), SA and PT chains (swaps across shards) and
    the GA's offspring (parents, duplicates and the hall of fame across shards), against the same
    runs unsharded."""
    _sharded(tmp_path, 3, "compare", str(tmp_path))
    for rank in range(3):
        report = json.loads((tmp_path / f"rank{rank}.json").read_text())
        for name, got in report.items():
            if not isinstance(got, dict) or name == "chains":
                continue
            for field in ("ensemble", "score", "misfit", "spread"):
                assert got[field] < 1e-4, (rank, name, field, got[field])
            assert got["rows_held"] == [11 if rank == 0 else 10], (rank, name)  # only its rows, all along
            assert got["whole_after"] == 31
        assert report["failing members+SECNice"]["n_failed_first"] > 0  # the resampling path ran
        for name, got in report["chains"].items():  # SA and PT chains, GA offspring
            assert max(got["x"], got["score"], got["best"], got.get("swap_rate", 0.0), got.get("hof", 0.0),
                       got.get("duplicates", 0.0)) < 1e-5, (rank, name, got)
            assert got["rows_held"] == [11 if rank == 0 else 10] and got["whole_after"] == 31, (rank, name, got)
        assert report["chains"]["PT"]["swaps"] > 1  # states did move between chains
        assert report["chains"]["GA-hof5"]["n_duplicates"] > 0  # the cross-shard duplicate path ran


def test_a_sharded_run_resumes_on_another_number_of_ranks(tmp_path):
    run_dir = tmp_path / "run"
    _sharded(tmp_path, 2, "start", str(run_dir), str(tmp_path))
    _sharded(tmp_path, 3, "resume", str(run_dir), str(tmp_path))
    for stage, ranks, generations in (("start", 2, 4), ("resume", 3, 8)):
        for rank in range(ranks):
            report = json.loads((tmp_path / f"{stage}{rank}.json").read_text())
            assert report["generations"] == generations
            assert report["ensemble"] < 1e-4 and report["score"] < 1e-4, report


# --------------------------------------------------------------------------- jax.distributed

DISTRIBUTED_WORKER = Path(__file__).with_name("distributed_worker.py")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def finished(processes: list[subprocess.Popen], timeout: float) -> list[str]:
    """Every process's output once all ended; kills them all if one is still running at ``timeout``."""
    deadline, outputs = time.monotonic() + timeout, []
    try:
        for process in processes:
            outputs.append(process.communicate(timeout=max(1.0, deadline - time.monotonic()))[0])
    except subprocess.TimeoutExpired:
        for process in processes:
            process.kill()
        pytest.fail(f"a jax.distributed process hung: still running after {timeout:.0f} s")
    for process, output in zip(processes, outputs, strict=True):
        assert process.returncode == 0, output[-3000:]
    return outputs


def distributed_stage(out: Path, n_processes: int, *flags: str) -> None:
    """``distributed_worker.py`` as ``n_processes`` processes started here (no launcher, no MPI)."""
    address = f"127.0.0.1:{free_port()}"
    processes = [subprocess.Popen([sys.executable, str(DISTRIBUTED_WORKER), str(out), *flags],
                                  env=subprocess_env(L2LJAX_COORDINATOR=address, L2LJAX_NUM_PROCESSES=str(n_processes),
                                                     L2LJAX_PROCESS_ID=str(i)),
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                 for i in range(n_processes)]
    finished(processes, timeout=400)


def distributed_reports(out: Path, n_processes: int, *flags: str) -> list[dict]:
    distributed_stage(out, n_processes, *flags)
    return [worker_report(out, rank) for rank in range(n_processes)]


def worker_report(out: Path, rank: int) -> dict:
    report = json.loads((out / f"rank{rank}.json").read_text())
    with np.load(out / f"rank{rank}.npz") as arrays:
        report["numbers"] = dict(arrays)
    return report


@pytest.fixture(scope="module")
def one_process():
    """The worker's runs in this process, without a parallel engine."""
    from distributed_worker import Problems, numbers

    problems = Problems()
    return numbers(problems.evaluated(), problems.ce_run(), problems.enkf_run(), problems.host_run(),
                   problems.sharded_runs())


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory):
    return distributed_reports(tmp_path_factory.mktemp("distributed2"), 2, "--ce", "--enkf", "--host", "--sharded")


@pytest.fixture(scope="module")
def three_processes(tmp_path_factory):
    return distributed_reports(tmp_path_factory.mktemp("distributed3"), 3, "--ce", "--enkf", "--sharded")


def check_numbers_of_one_process(report: dict, one: dict) -> None:
    """Float32 rounding of other shapes only: noise keys drawn after the split would differ by the
    noise (0.1), a wrong gather or padding by the scores themselves."""
    split = report["numbers"]
    assert max_difference(split["evaluated"], one["evaluated"]) < 1e-6
    if "ce_score" in split:
        assert max_difference(split["ce_score"], one["ce_score"]) < 5e-4
        assert split["ce_best"] == pytest.approx(one["ce_best"], rel=1e-4)
    if "enkf_ensemble" in split:
        assert max_difference(split["enkf_ensemble"], one["enkf_ensemble"]) < 1e-4
    if "host_score" in split:
        np.testing.assert_array_equal(split["host_score"], one["host_score"])  # float64 numpy on the host
    if "enkf30_ensemble" in split:  # the state itself split over the processes
        for name in ("enkf30_ensemble", "enkf30_average", "enkf30_misfit"):
            assert max_difference(split[name], one[name]) < 1e-4, name
        for name in ("ga30_offspring", "ga30_hof", "ga30_score"):
            assert max_difference(split[name], one[name]) < 1e-5, name


def test_a_sharded_distributed_run_resumes_on_another_number_of_processes(tmp_path):
    """The EnKF ensemble and GA offspring split over 2 processes, checkpointed whole, continued on 3:
    the numbers of 8 generations in one process."""
    from distributed_worker import Problems, numbers

    run_dir = tmp_path / "run"
    distributed_stage(tmp_path, 2, "--resume-start", str(run_dir))
    distributed_stage(tmp_path, 3, "--resume-finish", str(run_dir))
    one = numbers(np.zeros(1), None, None, None, Problems().sharded_runs(n_generations=8))
    for stage, processes, generations in (("resume-start", 2, 4), ("resume-finish", 3, 8)):
        for rank in range(processes):
            assert json.loads((tmp_path / f"{stage}{rank}.json").read_text())["generations"] == [generations] * 2
    for rank in range(3):
        split = np.load(tmp_path / f"resume-finish{rank}.npz")
        for name in ("enkf30_ensemble", "enkf30_average", "ga30_offspring", "ga30_hof"):
            assert max_difference(split[name], one[name]) < 1e-4, (rank, name)


@pytest.mark.parametrize("n", [2, 3])
def test_distributed_processes_give_the_numbers_of_one_process(n, one_process, request):
    reports = request.getfixturevalue({2: "two_processes", 3: "three_processes"}[n])
    assert [(r["processes"], r["shards"], r["reused"], r["auto"]) for r in reports] == [(n, n, True, "distributed")] * n
    for report in reports:
        assert "enkf_ensemble" in report["numbers"] and report["ce_generations"] == 10
        assert "enkf30_ensemble" in report["numbers"]
        check_numbers_of_one_process(report, one_process)
        assert report["sharded_rows_held"] == [30 // n] and report["sharded_whole_after"] == [30, 30]


def test_distributed_processes_score_only_their_rows_of_a_host_simulator(two_processes):
    assert [r["host_rows_seen"][:3] for r in two_processes] == [[4] * 3, [3] * 3]
    assert [r["stopped_after"] for r in two_processes] == [2, 2]  # rank 0's callback stops every process


def test_only_distributed_rank_0_writes_the_run_directory(two_processes, three_processes):
    for reports in (two_processes, three_processes):
        assert [r["writer"] for r in reports] == [True] + [False] * (len(reports) - 1)
        assert all(r["wrote"] == ["run0"] for r in reports)  # every rank named its own directory


def test_an_error_on_one_distributed_process_is_raised_on_every_process(two_processes, three_processes):
    for reports in (two_processes, three_processes):  # the writer refuses a directory holding a run
        assert reports[0]["refused"].startswith("FileExistsError")
        assert all(r["refused"].startswith("RuntimeError: rank 0 failed: FileExistsError") for r in reports[1:])
    writer, last = two_processes  # the host simulator crashes on the last process
    assert last["crashed"] == "ValueError: simulator crashed"
    assert writer["crashed"] == "RuntimeError: rank 1 failed: ValueError: simulator crashed"


def test_distributed_processes_called_with_other_keys_are_named(two_processes, three_processes):
    for reports, named in ((two_processes, "key on rank(s) 1;"), (three_processes, "key on rank(s) 1, 2;")):
        for report in reports:
            assert f"called differently from rank 0: {named}" in report["other_key"]


def test_distributed_under_mpirun_finds_its_coordinator_through_mpi4py(tmp_path, one_process):
    launcher = require_mpi()
    done = subprocess.run([launcher, "-n", "2", sys.executable, str(DISTRIBUTED_WORKER), str(tmp_path), "--mpirun"],
                          env=subprocess_env(), capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    reports = [worker_report(tmp_path, rank) for rank in range(2)]
    assert [(r["rank"], r["writer"], r["auto"]) for r in reports] == [(0, True, "mpi"), (1, False, "mpi")]
    for report in reports:
        check_numbers_of_one_process(report, one_process)
        assert "called differently from rank 0: key on rank(s) 1;" in report["other_key"]


def test_distributed_launch_spec_from_the_launchers():
    spec = parallel.launch_spec
    assert spec(environ={"L2LJAX_COORDINATOR": "h:1", "L2LJAX_NUM_PROCESSES": "3", "L2LJAX_PROCESS_ID": "2"}) == (
        "h:1", 3, 2, "L2LJAX_NUM_PROCESSES")
    # Hydra's mpirun: process numbers from PMI_*, the address left to mpi4py (None) unless given
    assert spec(environ={"PMI_RANK": "1", "PMI_SIZE": "4"}) == (None, 4, 1, "mpirun (Hydra/PMI)")
    assert spec(environ={"PMI_RANK": "1", "PMI_SIZE": "4", "L2LJAX_COORDINATOR": "n1:9"}).coordinator_address == "n1:9"
    assert spec(environ={"OMPI_COMM_WORLD_RANK": "0", "OMPI_COMM_WORLD_SIZE": "2"})[1:3] == (2, 0)
    slurm = {"SLURM_PROCID": "5", "SLURM_STEP_NUM_TASKS": "8", "SLURM_STEP_NODELIST": "gpu[003-004]",
             "SLURM_JOB_ID": "4096", "SLURM_STEP_ID": "1"}
    assert spec(environ=slurm) == ("gpu003:61441", 8, 5, "srun")  # the step's first node; a port of job and step
    assert spec("c:7", 2, 1, environ={}) == ("c:7", 2, 1, "arguments")
    with pytest.raises(RuntimeError, match="launched as one process.*L2LJAX_NUM_PROCESSES"):
        spec(environ={})
    with pytest.raises(RuntimeError, match="no coordinator address for 2 processes.*L2LJAX_COORDINATOR"):
        spec(environ={"L2LJAX_NUM_PROCESSES": "2", "L2LJAX_PROCESS_ID": "0"})
    with pytest.raises(RuntimeError, match="not this one's index.*L2LJAX_PROCESS_ID"):
        spec(environ={"L2LJAX_NUM_PROCESSES": "2", "L2LJAX_COORDINATOR": "h:1"})


def test_first_host_of_a_slurm_node_list():
    assert parallel.first_host("node001") == "node001"
    assert parallel.first_host("node001,host2") == "node001"
    assert parallel.first_host("node[007,009-015],host2") == "node007"
    assert parallel.first_host("gpu[03-04]-ib,x") == "gpu03-ib"


def test_auto_chooses_the_engine_from_the_launch(monkeypatch):
    choice = parallel.auto_choice
    assert choice({"L2LJAX_PARALLEL": "distributed", "PMI_SIZE": "2"}) == "distributed"
    assert choice({"L2LJAX_PARALLEL": "mpi"}) == "mpi"
    assert choice({"L2LJAX_NUM_PROCESSES": "2"}) == "distributed"  # a jax.distributed launch by hand
    monkeypatch.setattr(parallel, "_importable", lambda module: True)
    assert choice({"SLURM_STEP_NUM_TASKS": "4"}) == "mpi"  # mpi4jax where the site has an MPI
    monkeypatch.setattr(parallel, "_importable", lambda module: False)
    assert choice({"SLURM_STEP_NUM_TASKS": "4"}) == "distributed"  # no mpi4jax: multi-controller JAX
    with pytest.raises(ValueError, match="L2LJAX_PARALLEL='gloo': valid values are none, devices, mpi, distributed"):
        choice({"L2LJAX_PARALLEL": "gloo"})


def test_distributed_in_one_process_names_what_is_missing(monkeypatch):
    for name in ("L2LJAX_NUM_PROCESSES", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "PMIX_SIZE", "SLURM_STEP_NUM_TASKS"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(RuntimeError, match="launched as one process"):
        parallel.Distributed()


def test_distributed_after_jax_has_computed_says_to_create_it_first(monkeypatch):
    jax.devices()  # the backend is up: joining a job now is refused at once, before any connection
    monkeypatch.setenv("L2LJAX_COORDINATOR", "127.0.0.1:1")
    monkeypatch.setenv("L2LJAX_NUM_PROCESSES", "2")
    monkeypatch.setenv("L2LJAX_PROCESS_ID", "1")
    with pytest.raises(RuntimeError, match=r"from L2LJAX_NUM_PROCESSES failed.*Create Distributed\(\) before JAX"):
        parallel.Distributed()
