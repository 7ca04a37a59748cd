"""CMA-ES: Table 1 and the update of the tutorial against numpy, convergence, NaN safety, vmap."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import assert_nan_region_never_selected, assert_scan_equals_host_loop, final_best, nan_region_run

import l2ljax
from l2ljax.core import make_evaluation
from l2ljax.optimizers.cma_es import CMAES

# --------------------------------------------------------------------------- the tutorial, in numpy


def tutorial_parameters(n, lam):
    """Hansen (2016), Table 1, written out independently of l2ljax."""
    mu = lam // 2
    w_prime = np.array([math.log((lam + 1) / 2) - math.log(i) for i in range(1, lam + 1)])
    mu_eff = w_prime[:mu].sum() ** 2 / (w_prime[:mu] ** 2).sum()
    mu_eff_minus = w_prime[mu:].sum() ** 2 / (w_prime[mu:] ** 2).sum()
    alpha_cov = 2.0
    c_1 = alpha_cov / ((n + 1.3) ** 2 + mu_eff)
    c_mu = min(1 - c_1, alpha_cov * (mu_eff - 2 + 1 / mu_eff) / ((n + 2) ** 2 + alpha_cov * mu_eff / 2))
    c_sigma = (mu_eff + 2) / (n + mu_eff + 5)
    alpha_minus = min(1 + c_1 / c_mu, 1 + 2 * mu_eff_minus / (mu_eff + 2), (1 - c_1 - c_mu) / (n * c_mu))
    weights = np.where(w_prime >= 0, w_prime / w_prime[w_prime > 0].sum(),
                       alpha_minus * w_prime / np.abs(w_prime[w_prime < 0]).sum())
    return {
        "mu": mu, "weights": weights, "mu_eff": mu_eff,
        "c_m": 1.0, "c_sigma": c_sigma,
        "d_sigma": 1 + 2 * max(0.0, math.sqrt((mu_eff - 1) / (n + 1)) - 1) + c_sigma,
        "c_c": (4 + mu_eff / n) / (n + 4 + 2 * mu_eff / n),
        "c_1": c_1, "c_mu": c_mu,
        "chi_n": math.sqrt(n) * (1 - 1 / (4 * n) + 1 / (21 * n**2)),
    }


def tutorial_update(state, x, score, p):
    """One generation of the tutorial's Appendix A in float64; non-finite scores get weight 0."""
    m, sigma, p_sigma, p_c, C, g = state
    n = m.size
    order = sorted(range(len(score)), key=lambda i: -score[i] if np.isfinite(score[i]) else np.inf)
    w = np.zeros(len(score))
    w[order] = p["weights"]
    w[~np.isfinite(score)] = 0.0
    y = (x - m) / sigma
    y_w = sum(w[i] * y[i] for i in range(len(w)) if w[i] > 0)
    eigenvalues, B = np.linalg.eigh(C)
    C_inv_sqrt = B @ np.diag(eigenvalues**-0.5) @ B.T
    m = m + p["c_m"] * sigma * y_w
    p_sigma = ((1 - p["c_sigma"]) * p_sigma
               + math.sqrt(p["c_sigma"] * (2 - p["c_sigma"]) * p["mu_eff"]) * C_inv_sqrt @ y_w)
    sigma = sigma * math.exp(p["c_sigma"] / p["d_sigma"] * (np.linalg.norm(p_sigma) / p["chi_n"] - 1))
    g += 1
    h_sigma = float(np.linalg.norm(p_sigma) / math.sqrt(1 - (1 - p["c_sigma"]) ** (2 * g))
                    < (1.4 + 2 / (n + 1)) * p["chi_n"])
    p_c = (1 - p["c_c"]) * p_c + h_sigma * math.sqrt(p["c_c"] * (2 - p["c_c"]) * p["mu_eff"]) * y_w
    w_circ = [w[i] if w[i] >= 0 else w[i] * n / np.linalg.norm(C_inv_sqrt @ y[i]) ** 2 for i in range(len(w))]
    delta = (1 - h_sigma) * p["c_c"] * (2 - p["c_c"])
    C = ((1 + p["c_1"] * delta - p["c_1"] - p["c_mu"] * w.sum()) * C + p["c_1"] * np.outer(p_c, p_c)
         + p["c_mu"] * sum(w_circ[i] * np.outer(y[i], y[i]) for i in range(len(w))))
    return m, sigma, p_sigma, p_c, C, g


@pytest.mark.parametrize(("n", "lam"), [(2, None), (10, None), (5, 20), (3, 4)])
def test_default_parameters_are_table1(n, lam):
    problem = l2ljax.Optimizee.create(lambda x, k: jnp.sum(x**2), jnp.zeros(n))
    opt = CMAES(problem, lam)
    lam = 4 + math.floor(3 * math.log(n)) if lam is None else lam
    ref = tutorial_parameters(n, lam)
    assert opt.pop_size == lam and opt.mu == ref["mu"]
    for name in ("c_m", "c_sigma", "d_sigma", "c_c", "c_1", "c_mu"):
        assert getattr(opt.default_params, name) == pytest.approx(ref[name], rel=1e-12), name
    assert opt.strategy["mu_eff"] == pytest.approx(ref["mu_eff"], rel=1e-12)
    assert opt.strategy["chi_n"] == pytest.approx(ref["chi_n"], rel=1e-12)
    np.testing.assert_allclose(opt.weights(), ref["weights"], rtol=1e-6, atol=1e-7)
    assert np.sum(np.asarray(opt.weights())[: ref["mu"]]) == pytest.approx(1.0, rel=1e-6)
    assert opt.resolve(opt.Params()) == opt.default_params
    no_negative = CMAES(problem, lam, negative_weights=False).weights()
    np.testing.assert_allclose(no_negative, np.maximum(ref["weights"], 0.0), rtol=1e-6, atol=1e-7)


def test_two_samples_have_no_rank_mu_update():
    """λ = 2: μ = 1, μ_eff = 1, so c_μ = 0 and the negative weight has nothing to scale."""
    problem = l2ljax.Optimizee.create(lambda x, k: jnp.sum(x**2), jnp.zeros(3))
    opt = CMAES(problem, pop_size=2)
    assert opt.default_params.c_mu == 0.0
    np.testing.assert_array_equal(opt.weights(), [1.0, 0.0])


def test_three_updates_match_numpy_float64():
    """Three generations on an ill-conditioned ellipsoid, one NaN sample, against Appendix A in float64."""
    n = 4
    problem = l2ljax.Optimizee.create(lambda x, k: jnp.sum(10.0 ** jnp.arange(n) * x**2), jnp.zeros(n))
    opt = CMAES(problem, sigma=0.7)
    ref_params = tutorial_parameters(n, opt.pop_size)
    x0 = np.array([1.0, -0.5, 0.3, 0.2])
    state = opt.init(jax.random.key(0), x0=jnp.asarray(x0, jnp.float32))
    ref = (x0, 0.7, np.zeros(n), np.zeros(n), np.eye(n), 0)
    tell = jax.jit(opt.tell)
    for generation in range(3):
        population = opt.ask(jax.random.key(generation + 1), state)
        x = np.asarray(population, np.float64)
        score = -np.sum(10.0 ** np.arange(n) * x**2, axis=1)
        if generation == 1:
            score[2] = np.nan
        state = tell(state, population, make_evaluation(jnp.asarray(-score, jnp.float32), (-1.0,)))
        ref = tutorial_update(ref, x, score, ref_params)
    inner = state.inner
    np.testing.assert_allclose(inner.mean, ref[0], rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(inner.sigma, ref[1], rtol=1e-4)
    np.testing.assert_allclose(inner.p_sigma, ref[2], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(inner.p_c, ref[3], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(inner.C, ref[4], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose((inner.B * inner.D**2) @ inner.B.T, ref[4], rtol=1e-4, atol=1e-5)
    assert int(inner.generation) == ref[5] == 3


# --------------------------------------------------------------------------- optimisation


SEEDS = [0, 1, 2, 3]


@pytest.mark.parametrize(
    ("name", "dim", "n_generations", "tolerance"),
    [("rosenbrock", 2, 200, 1e-8), ("ackley", 10, 200, 1e-4)],
)
def test_converges_and_beats_random_search(name, dim, n_generations, tolerance):
    problem = l2ljax.function_optimizee(name, dim)
    opt = CMAES(problem)  # everything from Table 1; sigma = 0.3 · (upper − lower)
    cma = final_best(opt, problem, n_generations, SEEDS)
    random = final_best(l2ljax.RandomSearch(problem, opt.pop_size), problem, n_generations, SEEDS)
    assert np.all(cma < tolerance), cma  # the minimum is 0
    assert np.all(cma < np.min(random)), (cma, random)


@pytest.fixture(scope="module")
def nan_run():
    return nan_region_run(lambda problem: CMAES(problem, pop_size=10), 150)


def test_nan_region_is_never_selected(nan_run):
    assert_nan_region_never_selected(nan_run[1], probed_fraction=0.05, best_fitness_below=1.0 + 1e-3)


def test_scan_equals_host_loop_and_is_reproducible(nan_run):
    assert_scan_equals_host_loop(*nan_run)


def test_mostly_nan_generation_renormalises_and_all_nan_changes_nothing():
    problem = l2ljax.Optimizee.create(lambda x, k: jnp.sum(x**2), jnp.zeros(3))
    opt = CMAES(problem, pop_size=6, sigma=0.5)  # μ = 3
    tell = jax.jit(opt.tell)
    state = opt.init(jax.random.key(0), x0=jnp.ones(3))
    population = opt.ask(jax.random.key(1), state)
    fitness = jnp.array([jnp.nan, 2.0, jnp.nan, 1.0, jnp.nan, jnp.nan])  # two finite samples
    new = tell(state, population, make_evaluation(fitness, (-1.0,)))
    w = np.asarray(opt.weights())[:2] / np.sum(np.asarray(opt.weights())[:2])
    expected_mean = w[0] * np.asarray(population[3]) + w[1] * np.asarray(population[1])  # c_m = 1
    np.testing.assert_allclose(new.inner.mean, expected_mean, rtol=1e-5)
    for leaf in jax.tree_util.tree_leaves(new.inner):
        assert np.all(np.isfinite(leaf))

    new = tell(state, population, make_evaluation(jnp.full(6, jnp.nan), (-1.0,)))
    for a, b in zip(jax.tree_util.tree_leaves(new.inner), jax.tree_util.tree_leaves(state.inner), strict=True):
        np.testing.assert_array_equal(a, b)


# --------------------------------------------------------------------------- input checks and vmap


def test_bad_input_is_rejected_by_name():
    problem = l2ljax.function_optimizee("rastrigin", 2)
    for pop_size in (0, 1):
        with pytest.raises(ValueError, match="pop_size"):
            CMAES(problem, pop_size=pop_size)
    for sigma in (-1.0, 0.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="sigma"):
            CMAES(problem, sigma=sigma)
    with pytest.raises(ValueError, match="sigma"):
        CMAES(problem, sigma=[1.0, 2.0])
    opt = CMAES(problem)
    with pytest.raises(ValueError, match="c_1 \\+ c_mu"):
        opt.init(jax.random.key(0), opt.Params(c_1=0.6, c_mu=0.6))
    with pytest.raises(ValueError, match="c_sigma"):
        opt.init(jax.random.key(0), opt.Params(c_sigma=1.0))
    with pytest.raises(ValueError, match="c_m"):
        opt.init(jax.random.key(0), opt.Params(c_m=float("nan")))
    with pytest.raises(ValueError, match="d_sigma"):
        opt.init(jax.random.key(0), opt.Params(d_sigma=-1.0))


def test_vmap_over_learning_rates():
    """One generation for two (c_m, c_1) settings at once, equal to one at a time."""
    problem = l2ljax.function_optimizee("rosenbrock", 2)
    opt = CMAES(problem)

    def one_generation(c_m, c_1):
        state = opt.init(jax.random.key(0), opt.Params(c_m=c_m, c_1=c_1))
        population = opt.ask(jax.random.key(1), state)
        state = opt.tell(state, population, problem.evaluate(jax.random.key(2), population))
        return state.inner.mean, state.inner.C

    batched = jax.jit(jax.vmap(one_generation))
    c_m, c_1 = jnp.array([0.5, 1.0]), jnp.array([0.05, 0.15])
    mean, C = batched(c_m, c_1)
    for i in range(2):  # a lane does not depend on the other lane's setting
        mean_i, C_i = batched(jnp.full(2, c_m[i]), jnp.full(2, c_1[i]))
        np.testing.assert_array_equal(mean[i], mean_i[0])
        np.testing.assert_array_equal(C[i], C_i[0])
    mean0 = opt.init(jax.random.key(0)).inner.mean
    np.testing.assert_allclose(mean[1] - mean0, 2 * (mean[0] - mean0), rtol=1e-5)  # c_m scales the step
    assert not np.allclose(C[0], C[1])
