"""Tests for l2ljax.optimizers.distributions: weighted EM against a float64 numpy reference,
recovery of a known mixture, zero weights, robustness, and CE on a multimodal function."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import l2ljax
from l2ljax.optimizers.cross_entropy import CrossEntropy
from l2ljax.optimizers.distributions import GaussianMixture, MixtureState, NoisyGaussianMixture

TRUE_WEIGHTS = np.array([0.3, 0.7])
TRUE_MEANS = np.array([[-2.0, 0.0], [2.0, 1.0]])
TRUE_COVS = np.array([[[0.5, 0.2], [0.2, 0.4]], [[1.0, -0.3], [-0.3, 0.6]]])


def _mixture_samples(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    comp = rng.choice(2, n, p=TRUE_WEIGHTS)
    z = rng.standard_normal((n, 2))
    chol = np.linalg.cholesky(TRUE_COVS)
    return (TRUE_MEANS[comp] + np.einsum("nij,nj->ni", chol[comp], z)).astype(np.float32)


def _em_step_reference(state: MixtureState, x: np.ndarray, w: np.ndarray, reg: float, min_weight: float,
                       diagonal: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One weighted EM iteration in float64 numpy, written from the module docstring's formulas."""
    pi, mu, cov = (np.asarray(a, np.float64) for a in state)
    x, w, c = np.asarray(x, np.float64), np.asarray(w, np.float64), 1e-6
    k, d = mu.shape
    full = np.stack([np.diag(v) for v in cov]) if diagonal else cov
    logp = np.empty((x.shape[0], k))
    for j in range(k):
        diff = x - mu[j]
        maha = np.einsum("ni,ij,nj->n", diff, np.linalg.inv(full[j]), diff)
        logp[:, j] = np.log(pi[j]) - 0.5 * (d * np.log(2 * np.pi) + np.linalg.slogdet(full[j])[1] + maha)
    resp = np.exp(logp - logp.max(1, keepdims=True))
    resp = resp / resp.sum(1, keepdims=True) * w[:, None]
    nk = resp.sum(0)
    new_pi = np.maximum((nk + c * pi) / (nk.sum() + c), min_weight)
    new_pi /= new_pi.sum()
    new_mu = (resp.T @ x + c * mu) / (nk + c)[:, None]
    new_cov = []
    for j in range(k):
        diff = x - new_mu[j]
        scatter = (diff * resp[:, j, None]).T @ diff
        if diagonal:
            new_cov.append((np.diag(scatter) + nk[j] * reg + c * cov[j]) / (nk[j] + c))
        else:
            new_cov.append((scatter + nk[j] * reg * np.eye(d) + c * cov[j]) / (nk[j] + c))
    return new_pi, new_mu, np.stack(new_cov)


@pytest.mark.parametrize("diagonal", [False, True])
def test_em_step_matches_float64_reference(diagonal):
    x = _mixture_samples(300, seed=1)
    w = np.random.default_rng(2).uniform(0.0, 2.0, 300).astype(np.float32)  # frequency weights
    gm = GaussianMixture(2, diagonal=diagonal, n_iter=1, reg_covar=1e-3, min_weight=0.01)
    state = gm.from_moments(jnp.asarray([0.5, -0.5]), jnp.asarray([2.0, 1.5]))
    got = jax.jit(gm.fit)(jax.random.key(0), state, jnp.asarray(x), jnp.asarray(w), jnp.asarray(0.0))
    ref = _em_step_reference(state, x, w, 1e-3, 0.01, diagonal)
    for a, b in zip(got, ref, strict=True):
        np.testing.assert_allclose(np.asarray(a), b, rtol=2e-4, atol=2e-5)


@pytest.mark.parametrize("diagonal", [False, True])
def test_em_recovers_a_known_mixture(diagonal):
    x = _mixture_samples(4000)
    gm = GaussianMixture(2, diagonal=diagonal, n_iter=60)
    start = gm.from_moments(jnp.asarray(x.mean(0)), jnp.asarray(x.std(0)))
    fit = jax.jit(gm.fit)(jax.random.key(0), start, jnp.asarray(x), jnp.ones(len(x)), jnp.asarray(0.0))
    order = np.argsort(np.asarray(fit.means)[:, 0])  # match components by their first coordinate
    weights, means, covs = (np.asarray(a)[order] for a in fit)
    np.testing.assert_allclose(weights, TRUE_WEIGHTS, atol=0.02)
    np.testing.assert_allclose(means, TRUE_MEANS, atol=0.06)
    true_covs = np.stack([np.diag(c) for c in TRUE_COVS]) if diagonal else TRUE_COVS
    # a diagonal mixture cannot represent the correlations (misspecified): its variances come out close
    np.testing.assert_allclose(covs, true_covs, atol=0.15 if diagonal else 0.06)


@pytest.mark.parametrize("dist", [GaussianMixture(3, n_iter=5), GaussianMixture(2, diagonal=True, n_iter=5)])
def test_zero_weight_rows_have_no_influence(dist):
    x = _mixture_samples(200, seed=3)
    keep = np.random.default_rng(4).uniform(size=200) < 0.4
    junk = x.copy()
    junk[~keep] = np.where(np.arange(2) == 0, np.nan, 1e30)  # dropped rows: NaN and huge values
    state = dist.from_moments(jnp.asarray([0.0, 0.0]), jnp.asarray([2.0, 2.0]))
    key, smoothing, fit = jax.random.key(5), jnp.asarray(0.25), jax.jit(dist.fit)
    masked = fit(key, state, jnp.asarray(junk), jnp.asarray(keep, jnp.float32), smoothing)
    subset = fit(key, state, jnp.asarray(x[keep]), jnp.ones(int(keep.sum())), smoothing)
    for a, b in zip(masked, subset, strict=True):
        assert np.all(np.isfinite(np.asarray(a)))
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)


def test_empty_component_keeps_its_parameters_and_floor_weight():
    gm = GaussianMixture(2, n_iter=10, min_weight=1e-3)
    far = MixtureState(jnp.asarray([0.5, 0.5]), jnp.asarray([[0.0, 0.0], [1e3, 1e3]]),
                       jnp.stack([jnp.eye(2), 2.0 * jnp.eye(2)]))
    x = jnp.asarray(_mixture_samples(100, seed=6))
    fit_fn = jax.jit(gm.fit)
    fit = fit_fn(jax.random.key(0), far, x, jnp.ones(100), jnp.asarray(0.0))
    assert all(np.all(np.isfinite(np.asarray(a))) for a in fit)
    np.testing.assert_allclose(np.asarray(fit.weights), np.array([1, 1e-3]) / 1.001, rtol=1e-5)  # floor, renormalised
    np.testing.assert_allclose(np.asarray(fit.means[1]), [1e3, 1e3], rtol=1e-6)
    np.testing.assert_allclose(np.asarray(fit.covs[1]), 2.0 * np.eye(2), rtol=1e-5)
    np.testing.assert_allclose(np.asarray(fit.means[0]), np.asarray(x).mean(0), atol=1e-4)
    # no kept sample at all: nothing moves
    same = fit_fn(jax.random.key(0), far, x, jnp.zeros(100), jnp.asarray(0.0))
    for a, b in zip(same, far, strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6)


def test_from_moments_matches_the_moments_and_sample_follows_the_mixture():
    gm = GaussianMixture(3)
    mean, std = jnp.asarray([1.0, -2.0, 0.5]), jnp.asarray([0.5, 2.0, 1.0])
    state = gm.from_moments(mean, std)
    assert len({tuple(np.round(m, 5)) for m in np.asarray(state.means)}) == 3  # distinct components
    np.testing.assert_allclose(np.asarray(state.weights @ state.means), mean, atol=1e-6)
    np.testing.assert_allclose(np.asarray(gm.spread(state)), std, rtol=1e-5)

    separated = 5 * TRUE_MEANS  # components 10 standard deviations apart: x_0 < 0 tells them apart
    truth = MixtureState(jnp.asarray(TRUE_WEIGHTS, jnp.float32), jnp.asarray(separated, jnp.float32),
                         jnp.asarray(TRUE_COVS, jnp.float32))
    two = GaussianMixture(2)
    sample = jax.jit(two.sample, static_argnums=2)
    x = np.asarray(sample(jax.random.key(1), truth, 40000))
    left = x[:, 0] < 0
    assert abs(left.mean() - 0.3) < 0.01
    np.testing.assert_allclose(x[left].mean(0), separated[0], atol=0.03)
    np.testing.assert_allclose(np.cov(x[~left].T), TRUE_COVS[1], atol=0.04)
    np.testing.assert_allclose(np.asarray(two.spread(truth)), x.std(0), rtol=0.02)
    np.testing.assert_array_equal(x, np.asarray(sample(jax.random.key(1), truth, 40000)))


def test_noisy_mixture_adds_decaying_sampling_noise():
    noisy = NoisyGaussianMixture(2, noise_magnitude=0.5, coordinate_scale=[1.0, 4.0], noise_decay=0.5, n_iter=3)
    plain = GaussianMixture(2, n_iter=3)
    x, w, zero = jnp.asarray(_mixture_samples(200, seed=7)), jnp.ones(200), jnp.asarray(0.0)
    noisy_fit = jax.jit(noisy.fit)
    state = noisy.from_moments(jnp.zeros(2), jnp.ones(2))
    assert float(jnp.max(state.noise)) == 0.0
    for step in range(3):
        state = noisy_fit(jax.random.key(step), state, x, w, zero)
        assert float(state.magnitude) == pytest.approx(0.5 * 0.5 ** (step + 1))
    base = jax.jit(plain.fit)(jax.random.key(0), plain.from_moments(jnp.zeros(2), jnp.ones(2)), x, w, zero)
    once = noisy_fit(jax.random.key(0), noisy.from_moments(jnp.zeros(2), jnp.ones(2)), x, w, zero)
    for a, b in zip(once[:3], base, strict=True):  # the fitted part is the plain mixture's
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert once.noise.shape == (2, 2) and np.all(np.asarray(once.noise) >= 0)
    assert np.all(np.asarray(noisy.spread(once)) > np.asarray(plain.spread(base)))


@pytest.mark.parametrize("bad", [0, -1, 2.5, True, "2"])
def test_bad_n_components(bad):
    with pytest.raises(ValueError, match="n_components"):
        GaussianMixture(bad)


def test_bad_arguments():
    with pytest.raises(ValueError, match="n_iter"):
        GaussianMixture(2, n_iter=0)
    with pytest.raises(ValueError, match="reg_covar"):
        GaussianMixture(2, reg_covar=0.0)
    with pytest.raises(ValueError, match="min_weight"):
        GaussianMixture(4, min_weight=0.25)
    with pytest.raises(ValueError, match="noise_decay"):
        NoisyGaussianMixture(2, noise_decay=1.5)


@pytest.fixture(scope="module")
def ce_mixture():
    problem = l2ljax.function_optimizee("three_gaussians2d", 2)
    opt = CrossEntropy(problem, pop_size=100, distribution=GaussianMixture(2))
    return problem, opt, opt.default_params.replace(rho=0.3, smoothing=0.3)


def test_cross_entropy_with_mixture_finds_the_global_minimum(ce_mixture):
    # three_gaussians2d: global minimum -0.398 near (1, 1); its local minima are >= 0.1 worse
    problem, opt, params = ce_mixture
    errors = [l2ljax.run(opt, problem, jax.random.key(seed), 30, params=params).best_fitness[0]
              - problem.info["minimum"] for seed in range(10)]
    assert max(errors) < 0.02, errors


def test_cross_entropy_with_mixture_is_reproducible(ce_mixture):
    problem, opt, params = ce_mixture
    a = l2ljax.run(opt, problem, jax.random.key(3), 30, params=params)  # 30 generations as above: no recompile
    b = l2ljax.run(opt, problem, jax.random.key(3), 30, params=params)
    c = l2ljax.run(opt, problem, jax.random.key(4), 30, params=params)
    for name in a.trajectory:
        np.testing.assert_array_equal(a.trajectory[name], b.trajectory[name])
    assert not np.array_equal(a.trajectory["population"], c.trajectory["population"])
    assert opt.config()["distribution"] == {"name": "GaussianMixture", "n_components": 2, "diagonal": False,
                                            "n_iter": 10, "reg_covar": 1e-6, "min_weight": 1e-3}


def test_a_float32_covariance_without_spread_in_one_direction_still_factorises():
    """Elites on a hyperplane: the smallest eigenvalue is lost to float32 rounding. A jitter of
    1e-10 of the scale (the first version) gave NaN factors for most of these; CE then sampled NaN."""
    from l2ljax.optimizers._common import jittered_cholesky

    for seed in range(50):
        rng = np.random.default_rng(seed)
        x = rng.normal(size=(6, 5)) * rng.uniform(0.01, 10, size=5)
        x[:, 4] = x[:, :4] @ rng.normal(size=4)  # no spread off this hyperplane
        d = jnp.asarray(x - x.mean(0), jnp.float32)
        cov = d.T @ d / 6
        chol = np.asarray(jittered_cholesky(cov), np.float64)
        assert np.all(np.isfinite(chol)), seed
        np.testing.assert_allclose(chol @ chol.T, np.asarray(cov, np.float64), atol=1e-4 * float(jnp.trace(cov)))
