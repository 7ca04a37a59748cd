"""Helpers shared by the test modules (pytest puts tests/ on sys.path: ``from helpers import ...``)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np

import l2ljax


def final_best(opt, problem, n_generations, seeds, params=None, x0=None):
    """Best fitness after ``n_generations`` for each seed: ``l2ljax.run_many``, one jit of a vmap over runs.

    The key of seed s is ``jax.random.key(s)``, as for ``l2ljax.run(..., jax.random.key(s), ...)``.
    """
    keys = jax.vmap(jax.random.key)(jnp.asarray(seeds))
    states = l2ljax.run_many(opt, problem, keys, n_generations, params=params, x0=x0)
    return -np.asarray(states.best_score)  # the benchmarks are minimised: fitness = -score


def nan_region_problem():
    """f(x) = Σ(x − 2)² on [-5, 5]², NaN where x₀ > 1: the unconstrained optimum lies in the NaN region.

    The feasible optimum is (1, 2) with f = 1.
    """

    def fn(x, key):
        return jnp.where(x[0] > 1.0, jnp.nan, jnp.sum(jnp.square(x - 2.0)))

    return l2ljax.Optimizee.create(fn, jnp.zeros(2), lower=-5.0, upper=5.0)


def nan_region_run(make_optimizer, n_generations, **kwargs):
    """``(run, result)``: ``make_optimizer(problem)`` on ``nan_region_problem()`` from x0 = (−2, −2)
    with key 3; ``run(**more)`` calls ``l2ljax.run`` with ``kwargs`` and ``more``; ``result = run()``
    (the scan path), shared by a module's NaN and scan == host tests."""
    problem = nan_region_problem()
    run = functools.partial(l2ljax.run, make_optimizer(problem), problem, jax.random.key(3), n_generations,
                            x0=jnp.array([-2.0, -2.0]), **kwargs)
    return run, run()


def plain(tree):
    """PRNG keys as their raw data, so that states can be compared with numpy."""
    return jax.tree_util.tree_map(
        lambda x: jax.random.key_data(x) if jnp.issubdtype(x.dtype, jax.dtypes.prng_key) else x, tree)


def assert_same_trajectory(a, b):
    """Two trajectories (dicts of arrays) with the same fields and the same numbers, NaN included."""
    assert a.keys() == b.keys()
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)


def assert_states_equal(a, b):
    """Two states (pytrees) with the same structure and the same numbers in every leaf, keys included."""
    for a_leaf, b_leaf in zip(jax.tree_util.tree_leaves(plain(a)), jax.tree_util.tree_leaves(plain(b)), strict=True):
        np.testing.assert_array_equal(a_leaf, b_leaf)


def assert_scan_equals_host_loop(run, scan):
    """``run(chunk_size=1)``, a host loop of one-generation scans, compiled apart from the one scan
    that gave ``scan``: the same trajectory (NaN fitness included) and the same final state."""
    host = run(chunk_size=1)
    assert_same_trajectory(scan.trajectory, host.trajectory)
    assert_states_equal(scan.state, host.state)


def assert_finite(tree):
    """Every floating-point leaf of ``tree`` is finite (integer leaves always are; keys are skipped)."""
    for leaf in jax.tree_util.tree_leaves(tree):
        if jnp.issubdtype(leaf.dtype, jnp.inexact):
            assert np.all(np.isfinite(leaf))


def assert_nan_region_never_selected(result, *, probed_fraction, best_fitness_below, finite=None):
    """A ``run`` on ``nan_region_problem()``: the search probes the NaN region (more than
    ``probed_fraction`` of all individuals there), never keeps a point of it as best nor a
    non-finite best score, keeps ``finite`` (default: the optimizer's whole state) free of NaN
    and inf, and still gets close to the feasible optimum f(1, 2) = 1 (``best_fitness <
    best_fitness_below``)."""
    population, best_x = result.trajectory["population"], result.trajectory["best_x"]
    assert np.mean(population[..., 0] > 1.0) > probed_fraction  # the search does probe the NaN region
    assert np.all(best_x[:, 0] <= 1.0)
    assert np.all(np.isfinite(result.trajectory["best_score"]))
    assert_finite(result.state.inner if finite is None else finite)
    assert result.best_fitness[0] < best_fitness_below


def process_alive(pid: int) -> bool:
    """Whether a process runs (zombies, which only wait for init to reap them, count as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def max_difference(a, b):
    """Largest |a - b| / (1 + |b|) over finite entries; inf where the non-finite entries differ."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    finite = np.isfinite(a)
    if a.shape != b.shape or not np.array_equal(finite, np.isfinite(b)) or not np.array_equal(a[~finite], b[~finite]):
        return float("inf")
    return float(np.max(np.abs(a[finite] - b[finite]) / (1 + np.abs(b[finite])), initial=0.0))


def linear_inverse_problem(P=6, M=12):
    rng = np.random.default_rng(0)
    A = jnp.asarray(rng.normal(size=(M, P)), jnp.float32)
    y = A @ jnp.asarray(rng.normal(size=P), jnp.float32)

    def fn(u, key, inputs):
        out = A @ u
        return -jnp.mean(jnp.square(out - y)), out

    return l2ljax.Optimizee.create(fn, jnp.zeros(P), weights=(1.0,), data=lambda g: (jnp.zeros(()), y),
                                   sample=lambda k: jax.random.normal(k, (P,)))
