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


def fails_on_first_attempt(x, seed):
    """Raises the first time it sees a seed (marker files in $L2LJAX_TEST_MARKERS), then succeeds."""
    marker = Path(os.environ["L2LJAX_TEST_MARKERS"]) / str(seed)
    if not marker.exists():
        marker.touch()
        raise RuntimeError("transient failure")
    return float(np.sum(np.square(x)))
