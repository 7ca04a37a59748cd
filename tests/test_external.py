"""Simulators in worker processes: same numbers as in-process, failures become NaN, nothing hangs or lingers."""

import multiprocessing
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import simulators
from helpers import process_alive

import l2ljax
from l2ljax.optimizees.external import WorkerPool, worker_pool_optimizee


@pytest.fixture(scope="module")
def sphere_problem():
    problem = worker_pool_optimizee(simulators.sphere, jnp.zeros(3), lower=-5.0, upper=5.0, n_workers=2, spares=0)
    yield problem
    problem.fn.pool.close()


def test_pool_gives_the_numbers_of_an_in_process_run(sphere_problem):
    in_process = l2ljax.Optimizee.create(lambda pop, seed: np.sum(np.square(pop), axis=1), jnp.zeros(3),
                                         lower=-5.0, upper=5.0, jittable=False)
    opt = l2ljax.CrossEntropy(sphere_problem, pop_size=10)
    pooled = l2ljax.run(opt, sphere_problem, jax.random.key(0), 4)
    direct = l2ljax.run(opt, in_process, jax.random.key(0), 4)
    np.testing.assert_array_equal(pooled.trajectory["fitness"], direct.trajectory["fitness"])


def test_seeds_depend_on_the_row_not_on_the_worker():
    population = [np.zeros(1)] * 6
    with WorkerPool(simulators.seed_of, n_workers=1, spares=0) as one, \
            WorkerPool(simulators.seed_of, n_workers=3, spares=0) as three:
        seeds = [11, 12, 13, 14, 15, 16]
        a, _ = one.map(population, seeds)
        b, _ = three.map(population, seeds)
    assert [float(x) for x in a] == [float(x) for x in b] == [s % 1000 for s in seeds]


def test_an_exception_scores_nan_with_a_warning_and_is_never_selected():
    problem = worker_pool_optimizee(simulators.raises_where_positive, jnp.zeros(2), lower=-3.0, upper=3.0,
                                    n_workers=2, spares=0)
    try:
        with pytest.warns(RuntimeWarning, match=r"score NaN; first: individual \d+ \{x=.*\}: simulate raised:"):
            result = l2ljax.run(l2ljax.CrossEntropy(problem, pop_size=12), problem, jax.random.key(1), 6)
    finally:
        problem.fn.pool.close()
    fitness = result.trajectory["fitness"][..., 0]
    population = result.trajectory["population"]
    assert np.all(np.isnan(fitness[population[..., 0] > 0]))
    assert np.all(np.isfinite(fitness[population[..., 0] <= 0]))
    assert np.asarray(result.best)[0] <= 0 and np.isfinite(result.best_score)


def test_a_hung_call_times_out_and_its_worker_is_replaced():
    with WorkerPool(simulators.hangs_where_positive, n_workers=2, spares=0, timeout=1.0) as pool:
        start = time.monotonic()
        values, failures = pool.map([np.array([1.0]), np.array([-2.0])], [0, 1])
        assert time.monotonic() - start < 20  # not the simulator's 60 s
        assert values[0] is None and float(values[1]) == 4.0
        assert failures == {0: "timed out after 1 s"}
        again, failures = pool.map([np.array([-1.0]), np.array([-3.0])], [0, 1])  # the pool still works
        assert [float(v) for v in again] == [1.0, 9.0] and failures == {}


def test_a_worker_that_dies_scores_nan_and_is_replaced():
    with WorkerPool(simulators.dies_where_positive, n_workers=1, spares=0) as pool:
        values, failures = pool.map([np.array([1.0]), np.array([-2.0])], [0, 1])
        assert values[0] is None and float(values[1]) == 4.0
        assert len(failures) == 1 and "worker process died (exit code 3)" in failures[0]


def test_retries_recover_transient_failures(tmp_path, monkeypatch):
    monkeypatch.setenv("L2LJAX_TEST_MARKERS", str(tmp_path))
    with WorkerPool(simulators.fails_on_first_attempt, n_workers=2, spares=0, retries=1) as pool:
        values, failures = pool.map([np.array([1.0]), np.array([2.0]), np.array([3.0])], [5, 6, 7])
    assert [float(v) for v in values] == [1.0, 4.0, 9.0] and failures == {}
    with WorkerPool(simulators.fails_on_first_attempt, n_workers=1, spares=0, retries=0) as pool:
        values, failures = pool.map([np.array([1.0])], [8])
    assert values == [None] and "transient failure" in failures[0]


def test_closing_leaves_no_worker_behind():
    before = set(multiprocessing.active_children())
    pool = WorkerPool(simulators.sphere, n_workers=2)
    pool.map([np.zeros(2)] * 3, [0, 1, 2])
    workers = [p for p in set(multiprocessing.active_children()) - before if p.name == "l2ljax-worker"]
    assert len(workers) == 3  # two serving, one spare
    pool.close()
    assert not any(p.is_alive() for p in workers)


def test_bad_configuration_is_a_named_error():
    with pytest.raises(TypeError, match="picklable"):
        WorkerPool(lambda x, seed: 0.0)
    with pytest.raises(ValueError, match="n_workers"):
        WorkerPool(simulators.sphere, n_workers=0)
    with pytest.raises(ValueError, match="timeout"):
        WorkerPool(simulators.sphere, timeout=-1.0)
    with pytest.raises(ValueError, match="retries"):
        WorkerPool(simulators.sphere, retries=-1)
    with pytest.raises(ValueError, match="max_calls"):
        WorkerPool(simulators.sphere, max_calls=0)
    with pytest.raises(ValueError, match="max_memory_mb"):
        WorkerPool(simulators.sphere, max_memory_mb=-5.0)
    assert WorkerPool(simulators.sphere, n_workers=np.int64(2)).n_workers == 2


def test_every_malformed_return_scores_nan_with_a_warning_naming_the_individual(caplog):
    problem = worker_pool_optimizee(simulators.malformed, jnp.zeros(1), weights=(-1.0, -1.0), n_workers=2, spares=0)
    try:
        with pytest.warns(RuntimeWarning, match=r"5 of 6 individuals failed and score NaN; first: individual 0 "
                                                r"\{x=0\}: simulate returned None"):
            evaluation = problem.evaluate(jax.random.key(0), jnp.array([[0.0], [1.0], [2.0], [3.0], [4.0], [7.0]]))
    finally:
        problem.fn.pool.close()
    fitness = np.asarray(evaluation.fitness)
    assert np.all(np.isnan(fitness[:5])) and fitness[5].tolist() == [7.0, 1.0]
    logged = "\n".join(r.getMessage() for r in caplog.records)
    for row, why in [(1, "returned str 'converged', not numbers"), (2, "returned 3 values for 2 fitness weights"),
                     (3, "returned list"), (4, "returned object")]:
        assert f"individual {row} {{x={row}}}: simulate" in logged and why in logged


def test_an_interrupted_map_leaves_the_pool_usable():
    import signal

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGALRM, interrupt)
    try:
        with WorkerPool(simulators.hangs_where_positive, n_workers=2, spares=0) as pool:
            signal.alarm(2)
            with pytest.raises(KeyboardInterrupt):
                pool.map([np.array([1.0]), np.array([1.0])], [0, 1])  # hangs until interrupted
            values, failures = pool.map([np.array([-1.0]), np.array([-2.0])], [0, 1])
            assert [float(v) for v in values] == [1.0, 4.0] and failures == {}
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def test_a_worker_killed_while_idle_is_replaced_without_a_failure():
    with WorkerPool(simulators.sphere, n_workers=1, spares=0) as pool:
        pool.map([np.ones(2)], [0])
        pool._workers[0].process.kill()
        pool._workers[0].process.join()
        values, failures = pool.map([np.ones(2), 2 * np.ones(2)], [0, 1])
        assert [float(v) for v in values] == [2.0, 8.0] and failures == {}


def sleepers(tag: str) -> list[int]:
    """Running (not zombie) processes of ``sleep <tag>``, from the process table."""
    found = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                with open(f"/proc/{entry.name}/cmdline", "rb") as f:
                    if f.read().split(b"\0")[:2] == [b"sleep", tag.encode()] and process_alive(int(entry.name)):
                        found.append(int(entry.name))
            except OSError:
                continue
    return found


def wait_for(condition, seconds: float = 10.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and not condition():
        time.sleep(0.1)
    return condition()


@pytest.fixture
def sleep_tag(monkeypatch):
    """A unique ``sleep`` duration for ``simulators.starts_programs``; kills its stragglers whatever happens."""
    tag = f"{700 + os.getpid() % 100}.{time.monotonic_ns() % 10**6}"
    monkeypatch.setenv("L2LJAX_TEST_SLEEP", tag)
    yield tag
    for pid in sleepers(tag):
        os.kill(pid, signal.SIGKILL)


def test_timeouts_crashes_and_close_kill_everything_a_call_started(sleep_tag):
    with WorkerPool(simulators.starts_programs, n_workers=3, spares=0, timeout=2.0) as pool:
        hung, dies, returns = np.array([1.0, 1.0]), np.array([-6.0, 0.0]), np.array([-1.0, 1.0])
        values, failures = pool.map([hung, dies, returns], [0, 1, 2])
        assert values[:2] == [None, None] and float(values[2]) == 2.0
        assert failures == {0: "timed out after 2 s", 1: "its worker process died (exit code 4)"}
        # the hung call's two programs (one in a session of its own) and the crashed one's are gone;
        # the returned call's two still run beside their live worker, until the pool closes
        assert wait_for(lambda: len(sleepers(sleep_tag)) == 2), sleepers(sleep_tag)
    assert wait_for(lambda: not sleepers(sleep_tag)), sleepers(sleep_tag)


def test_workers_are_recycled_after_max_calls_and_above_a_memory_limit():
    with WorkerPool(simulators.pid_after_leaking, n_workers=1, spares=0, max_calls=2) as pool:
        pids = [int(pool.map([np.zeros(1)], [i])[0][0]) for i in range(5)]
        assert pids[0] == pids[1] != pids[2] == pids[3] != pids[4] and pool.recycled == 2
    with WorkerPool(simulators.pid_after_leaking, n_workers=1, spares=0, max_memory_mb=1e9) as pool:
        first = int(pool.map([np.zeros(1)], [0])[0][0])
        pool.max_memory_mb = pool._workers[0].memory_mb + 150  # a worker may grow by 150 MB
        pids = [int(pool.map([np.array([100.0])], [i])[0][0]) for i in range(3)]
        assert first == pids[0] == pids[1] != pids[2] and pool.recycled == 1  # at +200 MB it was replaced


def test_a_spare_serves_at_once_while_a_crashed_worker_is_replaced():
    with WorkerPool(simulators.pid_or_death, n_workers=1, spares=1) as pool:
        pool.map([np.zeros(1)], [0])
        warm = set(pool.pids())
        assert len(warm) == 2
        values, failures = pool.map([np.ones(1), -np.ones(1)], [0, 1])
        assert values[0] is None and "died (exit code 3)" in failures[0]
        assert int(values[1]) in warm  # served by the spare, not by the replacement still importing
        assert len(set(pool.pids()) - warm) == 1


def test_workers_and_their_programs_exit_when_their_run_is_killed(sleep_tag):
    script = (
        "import sys, numpy as np, simulators\n"
        "from l2ljax.optimizees.external import WorkerPool\n"
        "pool = WorkerPool(simulators.starts_programs, n_workers=2, spares=0)\n"
        "pool._spawn(), pool._spawn()\n"
        "print(' '.join(str(pid) for pid in pool.pids()), flush=True)\n"
        "pool.map([np.ones(2), np.ones(2)], [0, 1])\n"
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(Path(__file__).parent), str(Path(__file__).parents[1])]))
    run = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, env=env)
    try:
        pids = [int(pid) for pid in run.stdout.readline().split()]
        assert len(pids) == 2
        assert wait_for(lambda: len(sleepers(sleep_tag)) == 4, 60)  # both calls hang with their programs
        run.send_signal(signal.SIGKILL)  # no cleanup runs in the parent
        run.wait()
        assert wait_for(lambda: not any(process_alive(pid) for pid in pids) and not sleepers(sleep_tag))
    finally:
        run.kill()

