"""Simulators in worker processes: same numbers as in-process, failures become NaN, nothing hangs or lingers."""

import multiprocessing
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import simulators

import l2ljax
from l2ljax.optimizees.external import WorkerPool, worker_pool_optimizee


@pytest.fixture(scope="module")
def sphere_problem():
    problem = worker_pool_optimizee(simulators.sphere, jnp.zeros(3), lower=-5.0, upper=5.0, n_workers=2)
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
    with WorkerPool(simulators.seed_of, n_workers=1) as one, WorkerPool(simulators.seed_of, n_workers=3) as three:
        seeds = [11, 12, 13, 14, 15, 16]
        a, _ = one.map(population, seeds)
        b, _ = three.map(population, seeds)
    assert [float(x) for x in a] == [float(x) for x in b] == [s % 1000 for s in seeds]


def test_an_exception_scores_nan_with_a_warning_and_is_never_selected():
    problem = worker_pool_optimizee(simulators.raises_where_positive, jnp.zeros(2), lower=-3.0, upper=3.0,
                                    n_workers=2)
    try:
        with pytest.warns(RuntimeWarning, match=r"failed and score NaN; first: individual \d+: simulate raised:"):
            result = l2ljax.run(l2ljax.CrossEntropy(problem, pop_size=12), problem, jax.random.key(1), 6)
    finally:
        problem.fn.pool.close()
    fitness = result.trajectory["fitness"][..., 0]
    population = result.trajectory["population"]
    assert np.all(np.isnan(fitness[population[..., 0] > 0]))
    assert np.all(np.isfinite(fitness[population[..., 0] <= 0]))
    assert np.asarray(result.best)[0] <= 0 and np.isfinite(result.best_score)


def test_a_hung_call_times_out_and_its_worker_is_replaced():
    with WorkerPool(simulators.hangs_where_positive, n_workers=2, timeout=1.0) as pool:
        start = time.monotonic()
        values, failures = pool.map([np.array([1.0]), np.array([-2.0])], [0, 1])
        assert time.monotonic() - start < 20  # not the simulator's 60 s
        assert values[0] is None and float(values[1]) == 4.0
        assert failures == ["individual 0: timed out after 1 s"]
        again, failures = pool.map([np.array([-1.0]), np.array([-3.0])], [0, 1])  # the pool still works
        assert [float(v) for v in again] == [1.0, 9.0] and failures == []


def test_a_worker_that_dies_scores_nan_and_is_replaced():
    with WorkerPool(simulators.dies_where_positive, n_workers=1) as pool:
        values, failures = pool.map([np.array([1.0]), np.array([-2.0])], [0, 1])
        assert values[0] is None and float(values[1]) == 4.0
        assert len(failures) == 1 and "worker process died (exit code 3)" in failures[0]


def test_retries_recover_transient_failures(tmp_path, monkeypatch):
    monkeypatch.setenv("L2LJAX_TEST_MARKERS", str(tmp_path))
    with WorkerPool(simulators.fails_on_first_attempt, n_workers=2, retries=1) as pool:
        values, failures = pool.map([np.array([1.0]), np.array([2.0]), np.array([3.0])], [5, 6, 7])
    assert [float(v) for v in values] == [1.0, 4.0, 9.0] and failures == []
    with WorkerPool(simulators.fails_on_first_attempt, n_workers=1, retries=0) as pool:
        values, failures = pool.map([np.array([1.0])], [8])
    assert values == [None] and "transient failure" in failures[0]


def test_closing_leaves_no_worker_behind():
    before = set(multiprocessing.active_children())
    pool = WorkerPool(simulators.sphere, n_workers=2)
    pool.map([np.zeros(2)] * 3, [0, 1, 2])
    workers = [p for p in set(multiprocessing.active_children()) - before if p.name == "l2ljax-worker"]
    assert len(workers) == 2
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


def test_wrong_number_of_objectives_is_a_named_error(sphere_problem):
    two_objectives = worker_pool_optimizee(simulators.sphere, jnp.zeros(2), weights=(-1.0, 1.0), n_workers=1)
    try:
        with pytest.raises(ValueError, match="returned 1 values for 2 fitness weights"):
            two_objectives.evaluate(jax.random.key(0), jnp.zeros((2, 2)))
    finally:
        two_objectives.fn.pool.close()


def test_an_interrupted_map_leaves_the_pool_usable():
    import signal

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGALRM, interrupt)
    try:
        with WorkerPool(simulators.hangs_where_positive, n_workers=2) as pool:
            signal.alarm(2)
            with pytest.raises(KeyboardInterrupt):
                pool.map([np.array([1.0]), np.array([1.0])], [0, 1])  # hangs until interrupted
            values, failures = pool.map([np.array([-1.0]), np.array([-2.0])], [0, 1])
            assert [float(v) for v in values] == [1.0, 4.0] and failures == []
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def test_a_worker_killed_while_idle_is_replaced_without_a_failure():
    with WorkerPool(simulators.sphere, n_workers=1) as pool:
        pool.map([np.ones(2)], [0])
        pool._workers[0].process.kill()
        pool._workers[0].process.join()
        values, failures = pool.map([np.ones(2), 2 * np.ones(2)], [0, 1])
        assert [float(v) for v in values] == [2.0, 8.0] and failures == []


def test_workers_exit_when_their_run_is_killed(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    from pathlib import Path

    script = (
        "import sys, numpy as np, simulators\n"
        "from l2ljax.optimizees.external import WorkerPool\n"
        "pool = WorkerPool(simulators.hangs_where_positive, n_workers=2)\n"
        "pool._workers += pool._start_workers(2)\n"
        "print(' '.join(str(w.process.pid) for w in pool._workers), flush=True)\n"
        "pool.map([np.ones(1), np.ones(1)], [0, 1])\n"
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(Path(__file__).parent), str(Path(__file__).parents[1])]))
    run = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, env=env)
    try:
        pids = [int(pid) for pid in run.stdout.readline().split()]
        assert len(pids) == 2
        time.sleep(0.5)
        run.send_signal(signal.SIGKILL)  # no cleanup runs in the parent
        run.wait()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(_alive(pid) for pid in pids):
            time.sleep(0.2)
        assert not any(_alive(pid) for pid in pids)
    finally:
        run.kill()


def _alive(pid: int) -> bool:
    """Whether a process runs (zombies, which only wait for init to reap them, count as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except OSError:
        return False
