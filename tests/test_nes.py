"""Separable NES: the paper's utilities and update against numpy, convergence, NaN safety, vmap."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import assert_nan_region_never_selected, assert_scan_equals_host_loop, final_best, nan_region_run

import l2ljax
from l2ljax.core import make_evaluation
from l2ljax.optimizers.nes import NaturalEvolutionStrategies, nes_utilities

# --------------------------------------------------------------------------- the paper's formulas


@pytest.mark.parametrize("n", [2, 5, 6, 10, 17])
def test_utilities_are_the_nes_rank_utilities(n):
    expected = [max(0.0, math.log(n / 2 + 1) - math.log(k)) for k in range(1, n + 1)]
    expected = np.array(expected) / sum(expected) - 1 / n
    u = nes_utilities(n)
    np.testing.assert_allclose(u, expected, rtol=1e-12)
    assert abs(u.sum()) < 1e-12 and np.all(np.diff(u) <= 0)


def test_l2l_defaults():
    for dim, pop in [(1, 4), (2, 6), (10, 10)]:
        problem = l2ljax.function_optimizee("rastrigin", dim)
        opt = NaturalEvolutionStrategies(problem)
        assert opt.pop_size == pop == 4 + math.floor(3 * math.log(dim))
        assert opt.default_params.learning_rate_mu == 1.0
        assert opt.default_params.learning_rate_sigma == pytest.approx((3 + math.log(dim)) / (5 * math.sqrt(dim)))
        np.testing.assert_allclose(opt.sigma0, 0.3 * 10.0)  # rastrigin lives in [-5, 5]
    # 4 + ⌊3 ln 3⌋ = 7 is odd: mirrored sampling rounds it up to 8
    problem = l2ljax.Optimizee.create(lambda x, k: jnp.sum(x**2), jnp.zeros(3))
    assert NaturalEvolutionStrategies(problem).pop_size == 8
    assert NaturalEvolutionStrategies(problem, mirrored_sampling=False).pop_size == 7
    np.testing.assert_array_equal(NaturalEvolutionStrategies(problem).sigma0, np.ones(3))  # unbounded
    # None learning rates resolve to the defaults
    opt = NaturalEvolutionStrategies(problem)
    assert opt.resolve(opt.Params()) == opt.default_params


@pytest.mark.parametrize("shaping", [True, False])
def test_one_update_matches_numpy(shaping):
    """One tell against the update written out in float64 numpy, with a NaN sample."""
    problem = l2ljax.Optimizee.create(lambda x, k: jnp.sum(x**2), jnp.zeros(3))
    opt = NaturalEvolutionStrategies(problem, pop_size=6, sigma=[0.5, 1.0, 2.0], fitness_shaping=shaping)
    params = opt.Params(learning_rate_mu=0.7, learning_rate_sigma=0.3)
    state = opt.init(jax.random.key(0), params, x0=jnp.array([1.0, -1.0, 0.5]))
    population = opt.ask(jax.random.key(1), state)
    s = (np.asarray(population, np.float64) - [1.0, -1.0, 0.5]) / [0.5, 1.0, 2.0]
    np.testing.assert_allclose(s[:3], -s[3:], atol=1e-6)  # mirrored pairs
    score = np.array([-3.0, np.nan, -1.0, -7.0, -2.0, -5.0])

    order = sorted(range(6), key=lambda i: -score[i] if np.isfinite(score[i]) else np.inf)
    if shaping:
        u = np.empty(6)
        u[order] = nes_utilities(6)
    else:
        u = np.where(np.isfinite(score), score, 0.0)
    mu = np.array([1.0, -1.0, 0.5]) + 0.7 * np.array([0.5, 1.0, 2.0]) * (u @ s)
    sigma = np.array([0.5, 1.0, 2.0]) * np.exp(0.3 / 2 * (u @ (s**2 - 1)))

    evaluation = make_evaluation(jnp.asarray(-score, jnp.float32), (-1.0,))
    new = opt.tell(state, population, evaluation)
    np.testing.assert_allclose(new.inner.mu, mu, rtol=1e-5)
    np.testing.assert_allclose(new.inner.sigma, sigma, rtol=1e-5)
    assert float(new.best_score) == -1.0  # the NaN sample is never best


def test_update_that_would_overflow_is_skipped():
    """Raw fitness of huge magnitude would overflow σ: the state stays as it was."""
    problem = l2ljax.Optimizee.create(lambda x, k: jnp.sum(x**2), jnp.zeros(2))
    opt = NaturalEvolutionStrategies(problem, pop_size=4, fitness_shaping=False)
    state = opt.init(jax.random.key(0), x0=jnp.zeros(2))
    population = opt.ask(jax.random.key(1), state)
    evaluation = make_evaluation(jnp.array([1e30, -1e30, 3e30, 0.0]), (1.0,))
    new = opt.tell(state, population, evaluation)
    np.testing.assert_array_equal(new.inner.mu, state.inner.mu)
    np.testing.assert_array_equal(new.inner.sigma, state.inner.sigma)


# --------------------------------------------------------------------------- optimisation


SEEDS = [0, 1, 2, 3]


@pytest.mark.parametrize(
    ("name", "dim", "pop_size", "learning_rate_sigma", "n_generations", "tolerance"),
    [
        # SNES's default η_σ = 0.52 collapses σ in Rosenbrock's curved valley (a diagonal
        # covariance on a non-separable problem) and then loses to random search; with
        # η_σ = 0.05 it follows the valley (seeds 0-3 reach 5e-6 ... 5e-4).
        ("rosenbrock", 2, 10, 0.05, 500, 2e-3),
        ("ackley", 10, None, None, 200, 1e-2),
    ],
)
def test_converges_and_beats_random_search(name, dim, pop_size, learning_rate_sigma, n_generations, tolerance):
    problem = l2ljax.function_optimizee(name, dim)
    opt = NaturalEvolutionStrategies(problem, pop_size)
    params = opt.Params(learning_rate_sigma=learning_rate_sigma)
    nes = final_best(opt, problem, n_generations, SEEDS, params)
    random = final_best(l2ljax.RandomSearch(problem, opt.pop_size), problem, n_generations, SEEDS)
    assert np.all(nes < tolerance), nes  # the minimum is 0
    assert np.median(nes) < 0.1 * np.median(random), (nes, random)
    assert len(set(nes.tolist())) == len(SEEDS)  # the seeds matter


@pytest.fixture(scope="module")
def nan_run():
    return nan_region_run(lambda problem: NaturalEvolutionStrategies(problem, pop_size=10), 150)


def test_nan_region_is_never_selected(nan_run):
    assert_nan_region_never_selected(nan_run[1], probed_fraction=0.05, best_fitness_below=1.0 + 1e-2)


def test_scan_equals_host_loop_and_is_reproducible(nan_run):
    assert_scan_equals_host_loop(*nan_run)


def test_all_nan_generation_keeps_the_state_finite():
    problem = l2ljax.Optimizee.create(lambda x, k: jnp.sum(x**2), jnp.zeros(2))
    for shaping in (True, False):
        opt = NaturalEvolutionStrategies(problem, pop_size=4, fitness_shaping=shaping)
        state = opt.init(jax.random.key(0), x0=jnp.ones(2))
        population = opt.ask(jax.random.key(1), state)
        new = opt.tell(state, population, make_evaluation(jnp.full(4, jnp.nan), (-1.0,)))
        assert np.all(np.isfinite(new.inner.mu)) and np.all(np.isfinite(new.inner.sigma))
        assert float(new.best_score) == -np.inf


# --------------------------------------------------------------------------- input checks and vmap


def test_bad_input_is_rejected_by_name():
    problem = l2ljax.function_optimizee("rastrigin", 2)
    with pytest.raises(ValueError, match="sigma"):
        NaturalEvolutionStrategies(problem, sigma=-1.0)
    with pytest.raises(ValueError, match="sigma"):
        NaturalEvolutionStrategies(problem, sigma=float("nan"))
    with pytest.raises(ValueError, match="sigma"):
        NaturalEvolutionStrategies(problem, sigma=[1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="even pop_size"):
        NaturalEvolutionStrategies(problem, pop_size=5)
    with pytest.raises(ValueError, match="pop_size"):
        NaturalEvolutionStrategies(problem, pop_size=1, mirrored_sampling=False)
    opt = NaturalEvolutionStrategies(problem)
    with pytest.raises(ValueError, match="learning_rate_mu"):
        opt.init(jax.random.key(0), opt.Params(learning_rate_mu=0.0))
    with pytest.raises(ValueError, match="learning_rate_sigma"):
        opt.init(jax.random.key(0), opt.Params(learning_rate_sigma=-0.1))
    with pytest.raises(ValueError, match="learning_rate_mu"):
        opt.init(jax.random.key(0), opt.Params(learning_rate_mu=float("nan")))


def test_vmap_over_learning_rates():
    """Init/ask/tell of one generation for two learning rates at once, equal to one at a time."""
    problem = l2ljax.function_optimizee("rosenbrock", 2)
    opt = NaturalEvolutionStrategies(problem)

    def one_generation(learning_rate_mu, learning_rate_sigma):
        params = opt.default_params.replace(learning_rate_mu=learning_rate_mu, learning_rate_sigma=learning_rate_sigma)
        state = opt.init(jax.random.key(0), params)
        population = opt.ask(jax.random.key(1), state)
        state = opt.tell(state, population, problem.evaluate(jax.random.key(2), population))
        return state.inner.mu, state.inner.sigma

    batched = jax.jit(jax.vmap(one_generation))
    lr_mu, lr_sigma = jnp.array([0.5, 1.0]), jnp.array([0.1, 0.5])
    mu, sigma = batched(lr_mu, lr_sigma)
    assert mu.shape == (2, 2) and sigma.shape == (2, 2)
    for i in range(2):  # a lane does not depend on the other lane's setting
        mu_i, sigma_i = batched(jnp.full(2, lr_mu[i]), jnp.full(2, lr_sigma[i]))
        np.testing.assert_array_equal(mu[i], mu_i[0])
        np.testing.assert_array_equal(sigma[i], sigma_i[0])
    # η_μ scales the mean's step, η_σ the log of σ's factor
    mu0, sigma0 = opt.init(jax.random.key(0)).inner
    np.testing.assert_allclose(mu[1] - mu0, 2 * (mu[0] - mu0), rtol=1e-5)
    np.testing.assert_allclose(np.log(sigma[1] / sigma0), 5 * np.log(sigma[0] / sigma0), rtol=1e-3, atol=1e-6)
