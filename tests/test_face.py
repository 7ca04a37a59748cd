"""Tests for l2ljax.optimizers.face: the population-size rule on scripted scores, dead rows,
NaN handling, convergence on benchmarks, RandomSearch at equal live budget, scan == host loop."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import assert_same_trajectory

import l2ljax
from l2ljax.core import make_evaluation
from l2ljax.optimizers.cross_entropy import Gaussian
from l2ljax.optimizers.face import FACE

N_GEN = 40
SEEDS = range(10)


def _sphere() -> l2ljax.Optimizee:
    return l2ljax.Optimizee.create(lambda x, key: jnp.sum(x**2), jnp.zeros(2), lower=-5.0, upper=5.0)


def test_population_grows_on_stagnation_and_shrinks_on_improvement():
    opt = FACE(_sphere(), min_pop_size=4, max_pop_size=13, n_elite=2, n_expand=3, distribution=Gaussian())
    ask, tell = jax.jit(opt.ask_flat), jax.jit(opt.tell_flat)
    state = opt.init(jax.random.key(0), opt.default_params.replace(smoothing=0.0))
    sizes, total = [], 0
    for g in range(11):
        n = int(state.inner.pop_size)
        sizes.append(n)
        population = ask(jax.random.key(g), state)
        assert population.shape == (13, 2)
        np.testing.assert_array_equal(population, population[np.arange(13) % n])  # dead rows copy live ones
        np.testing.assert_array_equal(opt.live_mask(state), np.arange(13) < n)
        if g < 5:  # a flat function: nothing improves after the first generation
            fitness = np.ones(13)
        else:  # every generation improves; a NaN live row, and dead rows that score best (as noise could)
            fitness = 10.0 * g + np.arange(13, dtype=np.float64)
            fitness[n - 1] = np.nan
            fitness[n:] = 1e9
        new = tell(state, population, make_evaluation(jnp.asarray(fitness, jnp.float32), (1.0,)))
        total += n
        diag = opt.diagnostics(new)
        assert int(diag["live_pop_size"]) == n and int(diag["evaluations"]) == total
        if 1 <= g < 5:  # no improvement: the distribution is not refitted
            np.testing.assert_array_equal(new.inner.dist.mean, state.inner.dist.mean)
        if g >= 5:
            finite = np.flatnonzero(np.isfinite(fitness[:n]))
            elite = finite[np.argsort(-fitness[finite])[:2]]  # smoothing 0: the new mean is the elite mean
            np.testing.assert_allclose(new.inner.dist.mean, np.asarray(population)[elite].mean(0), rtol=1e-6)
            assert float(new.best_score) == fitness[elite[0]] < 1e9
            np.testing.assert_array_equal(new.best_x, population[elite[0]])
        state = new
    assert sizes == [4, 4, 7, 10, 13, 13, 8, 6, 5, 4, 4]  # +n_expand up to max, then (n + min) // 2 down to min


@pytest.fixture(scope="module")
def ackley_runs():
    problem = l2ljax.function_optimizee("ackley", 2)
    opt = FACE(problem)
    return problem, opt, [l2ljax.run(opt, problem, jax.random.key(seed), N_GEN) for seed in SEEDS]


def test_face_solves_ackley(ackley_runs):
    problem, _, runs = ackley_runs
    errors = [r.best_fitness[0] - problem.info["minimum"] for r in runs]
    assert max(errors) < 1e-5, errors
    for r in runs:
        live = r.trajectory["diag/live_pop_size"]
        assert live.min() >= 30 and live.max() <= 50
        np.testing.assert_array_equal(r.trajectory["diag/evaluations"], np.cumsum(live))


def test_face_solves_shekel():
    # shekel2d: global minimum -5.76 near (3, 5); the other local minima are >= 0.1 worse
    problem = l2ljax.function_optimizee("shekel2d", 2)
    opt = FACE(problem)
    errors = [l2ljax.run(opt, problem, jax.random.key(seed), N_GEN).best_fitness[0] - problem.info["minimum"]
              for seed in SEEDS]
    assert max(errors) < 0.05, errors


def test_face_beats_random_search_at_equal_live_budget(ackley_runs):
    problem, _, runs = ackley_runs
    rs = l2ljax.RandomSearch(problem, pop_size=30)
    face_err, rs_err = [], []
    for seed, r in zip(SEEDS, runs, strict=True):
        budget = int(r.trajectory["diag/evaluations"][-1])  # live evaluations only
        n_gen = math.ceil(budget / rs.pop_size)  # RandomSearch gets at least as many
        rs_err.append(l2ljax.run(rs, problem, jax.random.key(seed), n_gen).best_fitness[0])
        face_err.append(r.best_fitness[0])
    assert max(face_err) < min(rs_err), (face_err, rs_err)


def test_reproducible(ackley_runs):
    problem, opt, runs = ackley_runs
    again = l2ljax.run(opt, problem, jax.random.key(0), N_GEN)
    assert_same_trajectory(again.trajectory, runs[0].trajectory)
    assert not np.array_equal(runs[0].trajectory["population"], runs[1].trajectory["population"])


def test_scan_equals_host_loop_and_nan_is_never_kept():
    # minimum of (x0 - 1.5)² + x1² is NaN: the fitness is NaN wherever x0 > 1
    def fn(x, key):
        return jnp.where(x[0] > 1.0, jnp.nan, (x[0] - 1.5) ** 2 + x[1] ** 2)

    problem = l2ljax.Optimizee.create(fn, jnp.zeros(2), lower=-3.0, upper=3.0)
    opt = FACE(problem, min_pop_size=10, max_pop_size=25, n_elite=4, n_expand=6)
    scan = l2ljax.run(opt, problem, jax.random.key(7), 15)
    host = l2ljax.run(opt, problem, jax.random.key(7), 15, chunk_size=1)
    assert_same_trajectory(host.trajectory, scan.trajectory)
    score, population = scan.trajectory["score"], scan.trajectory["population"]
    assert np.isnan(scan.trajectory["fitness"]).any() and np.all(score[np.isnan(score)] == -np.inf)
    fitness = scan.trajectory["fitness"][..., 0]
    assert scan.best[0] <= 1.0 and scan.best_fitness[0] == np.nanmin(fitness) < np.nanmin(fitness[0])
    assert all(np.all(np.isfinite(np.asarray(leaf))) for leaf in jax.tree_util.tree_leaves(scan.state.inner.dist))
    assert float(scan.state.inner.dist.mean[0]) <= 1.0  # refitted to finite samples only
    for g, n in enumerate(scan.trajectory["diag/live_pop_size"]):
        assert 10 <= n <= 25
        np.testing.assert_array_equal(population[g], population[g][np.arange(25) % n])


def test_bad_input():
    problem = _sphere()
    with pytest.raises(ValueError, match="min_pop_size .* exceeds max_pop_size"):
        FACE(problem, min_pop_size=20, max_pop_size=10, n_elite=5)
    with pytest.raises(ValueError, match="n_elite .* exceeds min_pop_size"):
        FACE(problem, min_pop_size=10, max_pop_size=20, n_elite=11)
    with pytest.raises(ValueError, match="n_expand"):
        FACE(problem, min_pop_size=10, max_pop_size=20, n_elite=5, n_expand=0)
    with pytest.raises(ValueError, match="n_elite must be at least 2"):
        FACE(problem, min_pop_size=10, max_pop_size=20, n_elite=1)
    with pytest.raises(ValueError, match="min_pop_size"):
        FACE(problem, min_pop_size=0)
    opt = FACE(problem, min_pop_size=4, max_pop_size=8, n_elite=2)
    with pytest.raises(ValueError, match="smoothing"):
        opt.init(jax.random.key(0), opt.default_params.replace(smoothing=1.0))
    with pytest.raises(ValueError, match="temp_decay"):
        opt.init(jax.random.key(0), opt.default_params.replace(temp_decay=-0.1))
    state = opt.init(jax.random.key(0))
    with pytest.raises(ValueError, match="max_pop_size"):
        opt.tell_flat(state, jnp.zeros((4, 2)), make_evaluation(jnp.zeros(4), (-1.0,)))
    assert opt.config()["min_pop_size"] == 4 and opt.config()["distribution"]["name"] == "Gaussian"
