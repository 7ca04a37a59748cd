"""Module-level simulators for the worker-pool tests (worker processes import them by name)."""

import os
import time
from pathlib import Path

import numpy as np


def sphere(x, seed):
    return float(np.sum(np.square(x)))


def seed_of(x, seed):
    return float(seed % 1000)


def raises_where_positive(x, seed):
    if x[0] > 0:
        raise ValueError(f"no solution for x0 = {x[0]:.3f}")
    return float(np.sum(np.square(x + 1)))


def hangs_where_positive(x, seed):
    if x[0] > 0:
        time.sleep(60)
    return float(np.sum(np.square(x)))


def dies_where_positive(x, seed):
    if x[0] > 0:
        os._exit(3)  # as a segfault or an OOM kill would end it
    return float(np.sum(np.square(x)))


def pid_or_death(x, seed):
    """The worker's pid, or a crash where x0 > 0."""
    if x[0] > 0:
        os._exit(3)
    return float(os.getpid())


def fails_on_first_attempt(x, seed):
    """Raises the first time it sees a seed (marker files in $L2LJAX_TEST_MARKERS), then succeeds."""
    marker = Path(os.environ["L2LJAX_TEST_MARKERS"]) / str(seed)
    if not marker.exists():
        marker.touch()
        raise RuntimeError("transient failure")
    return float(np.sum(np.square(x)))


def starts_programs(x, seed):
    """Starts `sleep $L2LJAX_TEST_SLEEP` (and where x1 > 0 a second one in a session of its own), then
    hangs where x0 > 0, dies where x0 < -5, and else returns with them still running."""
    import subprocess

    duration = os.environ["L2LJAX_TEST_SLEEP"]
    subprocess.Popen(["sleep", duration])
    if x[1] > 0:
        subprocess.Popen(["sleep", duration], start_new_session=True)
    if x[0] > 0:
        time.sleep(60)
    if x[0] < -5:
        os._exit(4)
    return float(np.sum(np.square(x)))


def malformed(x, seed):
    """A different kind of non-fitness return per x0: None, text, 3 values, ragged, an object; else 2 values."""
    kind = int(x[0])
    returns = {0: None, 1: "converged", 2: [1.0, 2.0, 3.0], 3: [[1.0], [2.0, 3.0]], 4: object()}
    return returns.get(kind, [float(x[0]), 1.0])


_LEAKED = []


def pid_after_leaking(x, seed):
    """Keeps x0 MB for good (a leaking simulator) and returns the worker's pid."""
    _LEAKED.append(np.ones(int(x[0] * 2**20), np.uint8))
    return float(os.getpid())


def nest_with_faults(individual, seed):
    """The CI-size structural-plasticity network, with the faults NEST users meet: where growth_rate_e > 5
    the worker is SIGKILLed (as by the OOM killer) inside NEST's Simulate; where growth_rate_i > 8 the
    network simulates 1000 s (minutes: past any test's time limit); a negative tau_ca_ms makes NEST raise."""
    import signal
    import threading

    from l2ljax.optimizees import nest as sp

    network = sp.Network()
    if float(individual["growth_rate_e"]) > 5:  # a long simulation, so the kill lands inside it on any machine
        network = sp.Network(t_sim_ms=1_000_000.0)
        threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGKILL)).start()
    if float(individual["growth_rate_i"]) > 8:
        network = sp.Network(t_sim_ms=1_000_000.0)
    return sp.simulate_fitness(individual, seed, network)
