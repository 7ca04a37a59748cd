"""Real NEST simulations as the inner loop: reproducible per row, tuned by SA, GD and CE, robust to NEST's faults.

The network is the CI size (40 E + 10 I neurons, 5 s simulated, ≈ 0.5 s per simulation on one
core). These tests skip without NEST unless ``L2LJAX_REQUIRE_NEST=1`` (set by CI, which installs
it) turns that into a failure. Their runtime: ≈ 2 minutes on 2 idle cores, ≈ 5 when others share them.
"""

import importlib.util
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import simulators
from helpers import process_alive

import l2ljax

if importlib.util.find_spec("nest") is None:
    if os.environ.get("L2LJAX_REQUIRE_NEST") == "1":
        raise RuntimeError("L2LJAX_REQUIRE_NEST=1 but NEST is missing: pip install 'l2ljax[nest]'")
    pytest.skip("needs NEST: pip install 'l2ljax[nest]'", allow_module_level=True)

from l2ljax.optimizees import nest as sp  # noqa: E402 (after the skip)
from l2ljax.optimizees.external import WorkerPool  # noqa: E402

WORKER = Path(__file__).with_name("nest_worker.py")
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def problem():
    problem = sp.structural_plasticity_optimizee(n_workers=2, spares=0)
    yield problem
    problem.fn.pool.close()


def x0_of(problem):
    return {name: np.float32(value) for name, value in problem.info["x0"].items()}


def test_each_call_resets_nest_and_is_seeded_by_its_row():
    x0 = {name: spec.default for name, spec in sp.PARAMETERS.items()}
    grown = dict(x0, growth_rate_e=2.0, growth_rate_i=2.0)
    with WorkerPool(sp.simulate_fitness, n_workers=1, spares=0) as one, \
            WorkerPool(sp.simulate_fitness, n_workers=2, spares=0) as two:
        a, _ = one.map([grown, x0, grown, grown], [5, 5, 5, 6])  # one NEST process, four calls in a row
        b, _ = two.map([grown, grown], [5, 6])
    assert np.array_equal(a[0], a[2]) and np.array_equal(a[0], b[0]) and np.array_equal(a[3], b[1])
    assert not np.array_equal(a[0], a[3])  # the seed matters: the noise and the rewiring are NEST's random draws
    assert a[0].shape == (3,) and np.all(a[0] < a[1])  # growing synapses brings the network nearer its target


@pytest.mark.parametrize("name", ["SimulatedAnnealing", "GradientDescent", "CrossEntropy"])
def test_sa_gd_and_ce_each_improve_on_nests_example_setting(problem, name):
    # Budget: 6 generations of 4 (SA, GD) or 8 (CE) simulations, from NEST's example growth curves
    # (score ≈ -1.77: no synapse grows in 5 s, rates stay at the Poisson drive's ≈ 4 Hz).
    x0 = x0_of(problem)
    initial = float(problem.evaluate(jax.random.key(0), jax.tree.map(lambda v: np.asarray([v]), x0)).score[0])
    opt = {"SimulatedAnnealing": l2ljax.SimulatedAnnealing(problem, n_parallel_runs=4),
           "GradientDescent": l2ljax.GradientDescent(problem, n_random_steps=3, optimizer=optax.sgd(2.0)),
           "CrossEntropy": l2ljax.CrossEntropy(problem, pop_size=8, init_std=2.0)}[name]
    settings = {"SimulatedAnnealing": {"noisy_step": 1.0, "T0": 0.3, "temp_decay": 0.9},
                "GradientDescent": {"exploration_step_size": 0.5}, "CrossEntropy": {}}[name]
    params = opt.default_params.replace(**settings)
    result = l2ljax.run(opt, problem, jax.random.key(1), 6, x0=x0, params=params)
    assert initial < -1.5
    assert result.best_score > initial + 0.5, (initial, result.trajectory["best_score"])
    assert np.all(np.isfinite(result.trajectory["fitness"]))


def test_nest_faults_score_nan_are_logged_with_the_individual_and_the_run_goes_on(caplog):
    names = tuple(sp.PARAMETERS)
    template = {name: np.float32(0.0) for name in names}
    problem = l2ljax.worker_pool_optimizee(
        simulators.nest_with_faults, template, weights=sp.WEIGHTS, n_workers=2, spares=1, timeout=10.0,
        lower={n: np.float32(-500.0 if n == "tau_ca_ms" else sp.PARAMETERS[n].lower) for n in names},
        upper={n: np.float32(sp.PARAMETERS[n].upper) for n in names}, name="sp")
    pool = problem.fn.pool
    x0 = {name: spec.default for name, spec in sp.PARAMETERS.items()}
    rows = [x0, dict(x0, tau_ca_ms=-100.0), dict(x0, growth_rate_i=9.0), dict(x0, growth_rate_e=6.0)]
    population = {name: jnp.array([row[name] for row in rows], jnp.float32) for name in names}
    try:
        start = time.monotonic()
        with caplog.at_level(logging.WARNING), pytest.warns(RuntimeWarning, match="3 of 4 individuals failed"):
            fitness = np.asarray(problem.evaluate(jax.random.key(0), population).fitness)
        assert time.monotonic() - start < 60  # the 1000 s simulation was cut at its 10 s limit
        assert np.all(np.isfinite(fitness[0])) and np.all(np.isnan(fitness[1:]))
        logged = "\n".join(r.getMessage() for r in caplog.records)
        assert "individual 1 {growth_rate_e=0.1, " in logged and "tau_ca_ms=-100}" in logged
        assert "All time constants must be strictly positive" in logged  # NEST's own BadProperty
        assert "individual 2 " in logged and "timed out after 10 s" in logged
        assert "individual 3 " in logged and "worker process died (exit code -9)" in logged
        x0 = {name: np.float32(value) for name, value in x0.items()}
        result = l2ljax.run(l2ljax.CrossEntropy(problem, pop_size=5, init_std=0.5), problem, jax.random.key(2), 2,
                            x0=x0)
        assert np.isfinite(result.best_score) and result.trajectory["fitness"].shape == (2, 5, 3)
        pids = pool.pids()
    finally:
        pool.close()
    assert not any(process_alive(pid) for pid in pids)


def test_kill_9_resume_and_mpi_ranks_give_the_trajectory_of_one_uninterrupted_run(tmp_path):
    env = dict(os.environ, JAX_PLATFORMS="cpu",
               PYTHONPATH=os.pathsep.join([str(REPO), str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")]))
    whole, killed, ranks = tmp_path / "whole", tmp_path / "killed", tmp_path / "ranks"
    done = subprocess.run([sys.executable, str(WORKER), str(whole), "3"], env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]

    run = subprocess.Popen([sys.executable, str(WORKER), str(killed), "3"], env=env, stdout=subprocess.PIPE,
                           stderr=subprocess.DEVNULL, text=True)
    try:
        for line in run.stdout:
            if line.startswith("generation 0 "):  # one generation checkpointed
                workers = [int(pid) for pid in line.split()[2:]]
                run.send_signal(signal.SIGKILL)
                break
        run.wait(timeout=60)
    finally:
        run.kill()
    assert len(l2ljax.load_trajectory(killed)["generation"]) in (1, 2)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(process_alive(pid) for pid in workers):
        time.sleep(0.2)
    assert not any(process_alive(pid) for pid in workers)  # the killed run's NEST workers ended with it
    done = subprocess.run([sys.executable, str(WORKER), str(killed), "3", "--resume"], env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]

    mpirun = Path(sys.executable).parent / "mpirun"
    if not mpirun.exists() or importlib.util.find_spec("mpi4jax") is None:
        if os.environ.get("L2LJAX_REQUIRE_MPI") == "1":
            pytest.fail("L2LJAX_REQUIRE_MPI=1 but mpi4jax/mpirun are missing")
        pytest.skip("the MPI part needs mpi4jax and mpirun (pip install 'l2ljax[mpi]')")
    done = subprocess.run([str(mpirun), "-n", "2", sys.executable, str(WORKER), str(ranks), "3", "--mpi"], env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    reference = l2ljax.load_trajectory(whole)
    assert reference["fitness"].shape == (3, 6, 3) and np.all(np.isfinite(reference["fitness"]))
    for other in (killed, ranks):  # two workers, killed and resumed; one worker on each of two ranks
        trajectory = l2ljax.load_trajectory(other)
        assert np.array_equal(trajectory["generation"], reference["generation"])
        np.testing.assert_array_equal(trajectory["population"], reference["population"])
        np.testing.assert_array_equal(trajectory["fitness"], reference["fitness"])


def test_bad_settings_are_named_errors():
    with pytest.raises(ValueError, match="refuses structural plasticity with more than one thread"):
        sp.Network(threads=2)
    with pytest.raises(ValueError, match="multiples of record_ms"):
        sp.Network(t_sim_ms=1234.0)
    with pytest.raises(ValueError, match="tune names"):
        sp.structural_plasticity_optimizee(tune=("growth_rate", "set_point_e"))
    with pytest.raises(ValueError, match="not tuned"):
        sp.structural_plasticity_optimizee(lower={"tau_ca_ms": 10.0})
    with pytest.raises(ValueError, match="either network or paper_scale"):
        sp.structural_plasticity_optimizee(sp.Network(), paper_scale=True)
    paper = sp.Network.paper_scale()
    assert (paper.n_excitatory, paper.n_inhibitory, paper.t_sim_ms, paper.resolution_ms) == (800, 200, 200_000.0, 0.1)

