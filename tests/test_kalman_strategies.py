"""Strategies of l2ljax.kalman against float64 numpy references and inverse problems with known answers."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import l2ljax
from l2ljax import kalman


@pytest.fixture
def x64():
    with jax.enable_x64(True):
        yield


KEY = jax.random.key(0)

# --------------------------------------------------------------------------- numpy float64 references


def ref_stats(U, G):
    J = len(U)
    E, A = (U - U.mean(0)) / np.sqrt(J), (G - G.mean(0)) / np.sqrt(J)
    return E, A


def ref_kalman(U, G, y, Gamma, h=1.0):
    """Kalman mean and covariance from the ensemble statistics (what ETKI must produce)."""
    E, A = ref_stats(U, G)
    K = E.T @ A @ np.linalg.inv(A.T @ A + Gamma / h)
    return U.mean(0) + K @ (y - G.mean(0)), E.T @ E - K @ A.T @ E


def ref_etki(U, G, y, Gamma, h=1.0):
    """ETKI members: ū' + √J Ω^{1/2} E with Ω = (I + BBᵀ)⁻¹, B the whitened output anomalies."""
    J = len(U)
    E, A = ref_stats(U, G)
    Li = np.linalg.inv(np.linalg.cholesky(Gamma / h))
    B = A @ Li.T
    Omega = np.linalg.inv(np.eye(J) + B @ B.T)
    lam, V = np.linalg.eigh(Omega)
    root = V @ np.diag(np.sqrt(lam)) @ V.T
    mean = U.mean(0) + E.T @ Omega @ B @ (Li @ (y - G.mean(0)))
    return mean + np.sqrt(J) * root @ E


def ref_localized(U, G, y, Gamma, rho_up, rho_pp, h=1.0):
    """Localized EKI: u_j + (ρ_up∘C_up)(ρ_pp∘C_pp + Γ/h)⁻¹(y − G_j), C's from the 1/J sums."""
    E, A = ref_stats(U, G)
    C_up, C_pp = E.T @ A, A.T @ A
    K = (rho_up * C_up) @ np.linalg.inv(rho_pp * C_pp + Gamma / h)
    return U + (y - G) @ K.T


def ref_corr(U, G):
    E, A = ref_stats(U, G)
    su, sg = np.sqrt((E**2).sum(0)), np.sqrt((A**2).sum(0))
    return (E.T @ A) / np.outer(su, sg), (A.T @ A) / np.outer(sg, sg)


def ref_secnice_exponent(r, n, delta=1.0, max_power=10, steps=14):
    """The discrepancy principle written out: bisection on t for ‖r(1 − ρ(t))‖ ≤ δ‖(1 − r²)/√n‖."""
    r = r.ravel()
    tol = delta * np.sqrt(np.mean(((1 - r**2) / np.sqrt(n)) ** 2))

    def rho(t):
        k, f = np.floor(t), t - np.floor(t)
        return (1 - f) * np.abs(r) ** (2 * k) + f * np.abs(r) ** (2 * k + 2)

    lo, hi = 0.0, max_power / 2
    for _ in range(steps):
        mid = (lo + hi) / 2
        if np.sqrt(np.mean((r * (1 - rho(mid))) ** 2)) <= tol:
            lo = mid
        else:
            hi = mid
    return lo, rho(lo)


def ref_dmc(G, y, Gamma, elapsed, T):
    M = G.shape[1]
    Gi = np.linalg.inv(Gamma)
    phi = np.array([0.5 * (g - y) @ Gi @ (g - y) for g in G])
    q = max(M / (2 * phi.mean()), np.sqrt(M / (2 * phi.var(ddof=1))))
    return min(q, T - elapsed)


def linear_gaussian(seed=0, J=40, P=6, M=10, exact_moments=False):
    """y = A u† + noise, Gaussian prior N(m0, C0); the ensemble optionally with exact prior moments."""
    rng = np.random.default_rng(seed)
    A = rng.normal(size=(M, P))
    m0 = rng.normal(size=P)
    L0 = np.tril(rng.normal(size=(P, P))) * 0.3 + np.eye(P)
    C0 = L0 @ L0.T
    Gamma = 0.2 * np.eye(M) + 0.05 * np.ones((M, M))
    y = A @ rng.normal(size=P) + rng.multivariate_normal(np.zeros(M), Gamma)
    Z = rng.normal(size=(J, P))
    if exact_moments:  # sample mean exactly m0, population covariance exactly C0
        Z = Z - Z.mean(0)
        W = np.linalg.cholesky(Z.T @ Z / J)
        Z = Z @ np.linalg.inv(W).T
    U = m0 + Z @ L0.T
    post_cov = np.linalg.inv(A.T @ np.linalg.inv(Gamma) @ A + np.linalg.inv(C0))
    post_mean = post_cov @ (A.T @ np.linalg.inv(Gamma) @ y + np.linalg.solve(C0, m0))
    return dict(U=U, A=A, y=y, Gamma=Gamma, m0=m0, C0=C0, post_mean=post_mean, post_cov=post_cov)


# --------------------------------------------------------------------------- ETKI


def test_etki_matches_numpy_members_and_kalman_moments(x64):
    p = linear_gaussian(1)
    U, G = p["U"], p["U"] @ p["A"].T
    out = np.asarray(kalman.etki_update(KEY, U, G, p["y"], p["Gamma"], step_size=0.7))
    np.testing.assert_allclose(out, ref_etki(U, G, p["y"], p["Gamma"], 0.7), rtol=1e-9, atol=1e-10)
    mean, cov = ref_kalman(U, G, p["y"], p["Gamma"], 0.7)
    np.testing.assert_allclose(out.mean(0), mean, rtol=1e-9, atol=1e-10)
    np.testing.assert_allclose(np.cov(out.T, bias=True), cov, rtol=1e-8, atol=1e-10)


def test_etki_and_eki_give_the_exact_posterior_mean_on_a_linear_gaussian_problem(x64):
    """An ensemble with the prior's exact moments: one step (h = 1) of either is the Bayesian posterior mean."""
    p = linear_gaussian(2, J=60, exact_moments=True)
    U, G = p["U"], p["U"] @ p["A"].T
    etki = np.asarray(kalman.etki_update(KEY, U, G, p["y"], p["Gamma"]))
    eki = np.asarray(kalman.eki_update(KEY, U, G, p["y"], p["Gamma"]))
    np.testing.assert_allclose(etki.mean(0), p["post_mean"], rtol=1e-9, atol=1e-10)
    np.testing.assert_allclose(eki.mean(0), etki.mean(0), rtol=1e-9, atol=1e-10)  # same mean update
    np.testing.assert_allclose(np.cov(etki.T, bias=True), p["post_cov"], rtol=1e-8, atol=1e-10)
    # deterministic EKI under-spreads: its covariance is Eᵀ Ω² E, strictly smaller than the posterior's
    assert np.trace(np.cov(eki.T, bias=True)) < 0.95 * np.trace(p["post_cov"])


def test_etki_n_steps_of_one_over_n_equal_one_step_and_data_misfit_steps_reach_the_posterior(x64):
    """Tempering: linear Gaussian ETKI is exact, so any steps that sum to 1 give the same posterior."""
    p = linear_gaussian(3, J=50, exact_moments=True)
    A, y, Gamma = p["A"], p["y"], p["Gamma"]
    U = p["U"]
    for _ in range(4):
        U = kalman.etki_update(KEY, U, U @ A.T, y, Gamma, step_size=0.25)
    np.testing.assert_allclose(np.asarray(U).mean(0), p["post_mean"], rtol=1e-8, atol=1e-9)
    U, t, steps = p["U"], 0.0, []
    for _ in range(50):
        G = U @ A.T
        h, t, done = kalman.data_misfit_step(G, y, Gamma, elapsed=t, terminate_at=1.0)
        if done:
            break
        steps.append(float(h))
        U = kalman.etki_update(KEY, U, G, y, Gamma, step_size=h)
    assert bool(done) and 1 < len(steps) < 50
    assert abs(sum(steps) - 1.0) < 1e-12
    np.testing.assert_allclose(np.asarray(U).mean(0), p["post_mean"], rtol=1e-8, atol=1e-9)
    np.testing.assert_allclose(np.cov(np.asarray(U).T, bias=True), p["post_cov"], rtol=1e-7, atol=1e-9)


# --------------------------------------------------------------------------- data-misfit controller


def test_data_misfit_step_matches_numpy_and_terminates(x64):
    p = linear_gaussian(4)
    G = p["U"] @ p["A"].T
    h, t, done = kalman.data_misfit_step(G, p["y"], p["Gamma"], elapsed=0.1, terminate_at=1.0)
    assert float(h) == pytest.approx(ref_dmc(G, p["y"], p["Gamma"], 0.1, 1.0), rel=1e-10)
    assert float(t) == pytest.approx(0.1 + float(h)) and not bool(done)
    h, _, done = kalman.data_misfit_step(G, p["y"], p["Gamma"], elapsed=1.0, terminate_at=1.0)
    assert bool(done) and float(h) == 0.0
    h, _, _ = kalman.data_misfit_step(G, p["y"], p["Gamma"], elapsed=1.0, terminate_at=1.0, on_terminate="continue")
    assert float(h) > 0
    with pytest.raises(kalman.StrategyError, match="terminate_at > 0"):
        kalman.DataMisfitController(terminate_at=0.0)
    with pytest.raises(kalman.StrategyError, match="on_terminate"):
        kalman.DataMisfitController(on_terminate="halt")


# --------------------------------------------------------------------------- TEKI


def test_teki_converges_to_the_tikhonov_solution(x64):
    """Iterated deterministic TEKI (J > P) converges to argmin |Γ^-½(y − Au)|² + |σ⁻¹(u − m0)|²."""
    p = linear_gaussian(5, J=30, P=6, M=4)  # M < P: the data alone do not determine u
    A, y, Gamma, sigma = p["A"], p["y"], p["Gamma"], 0.5
    m0 = np.zeros(6)
    Gamma_diag = np.diag(np.diag(Gamma))  # TEKI with a diagonal Γ (an (M,) vector)
    target = np.linalg.solve(A.T @ np.linalg.inv(Gamma_diag) @ A + np.eye(6) / sigma**2,
                             A.T @ np.linalg.inv(Gamma_diag) @ y)
    U = p["U"]
    for _ in range(150):  # h scales both blocks of Γ̃ alike, so it speeds up without moving the minimiser
        Ga, ya, Na = kalman.tikhonov_augment(U, U @ A.T, y, np.diag(Gamma).copy(), sigma, m0)
        assert Ga.shape == (30, 10) and Na.shape == (10,)
        U = kalman.eki_update(KEY, U, Ga, ya, Na, step_size=1e3)
    U = np.asarray(U)
    assert np.linalg.norm(U.mean(0) - target) / np.linalg.norm(target) < 1e-2
    unregularised = np.linalg.lstsq(A, y, rcond=None)[0]
    assert np.linalg.norm(U.mean(0) - unregularised) > 0.1 * np.linalg.norm(unregularised)
    # and the augmented step is the plain numpy EKI step on the augmented data
    Ga, ya, Na = kalman.tikhonov_augment(p["U"], p["U"] @ A.T, y, Gamma, sigma, m0)
    assert Na.shape == (10, 10)
    ref = ref_localized(p["U"], np.asarray(Ga), np.asarray(ya), np.asarray(Na), 1.0, 1.0)
    np.testing.assert_allclose(kalman.eki_update(KEY, p["U"], Ga, ya, Na), ref, rtol=1e-9, atol=1e-10)


# --------------------------------------------------------------------------- localization


def _loc_problem(seed=6, J=30, P=25, M=12):
    rng = np.random.default_rng(seed)
    U = rng.normal(size=(J, P))
    G = np.tanh(U @ rng.normal(size=(P, M)) / np.sqrt(P)) + 0.1 * rng.normal(size=(J, M))
    return U, G, rng.normal(size=M), 0.3 * np.eye(M)


@pytest.mark.parametrize("name", ["sec", "sec_cutoff", "secfisher", "secnice"])
def test_localized_update_matches_numpy(x64, name):
    U, G, y, Gamma = _loc_problem()
    J = len(U)
    r_up, r_pp = ref_corr(U, G)
    if name == "sec":
        loc, w = kalman.SEC(alpha=1.5), lambda r, b: np.abs(r) ** 1.5
    elif name == "sec_cutoff":
        loc, w = kalman.SEC(alpha=1.0, cutoff=0.05), lambda r, b: np.where(np.abs(r) ** 2 > 0.05, np.abs(r), 0.0)
    elif name == "secfisher":
        def w(r, b):
            r = np.clip(r, -1 + 1e-6, 1 - 1e-6)
            s, width = np.arctanh(r), 1 / np.sqrt(J - 3)
            q2 = (r / ((np.tanh(s + width) - np.tanh(s - width)) / 2)) ** 2
            return q2 / (1 + q2)
        loc = kalman.SECFisher()
    else:
        loc, w = kalman.SECNice(), lambda r, b: ref_secnice_exponent(r, J)[1].reshape(r.shape)
    out = kalman.eki_update(KEY, U, G, y, Gamma, localizer=loc)
    ref = ref_localized(U, G, y, Gamma, w(r_up, "up"), w(r_pp, "pp"))
    np.testing.assert_allclose(out, ref, rtol=1e-7, atol=1e-9)
    assert np.abs(np.asarray(out) - kalman.eki_update(KEY, U, G, y, Gamma)).max() > 1e-3  # it does something


def test_secnice_tends_to_no_localization_as_the_ensemble_grows(x64):
    """σ_r ~ 1/√J: the discrepancy principle allows less and less correction, t → 0 and ρ∘C → C."""
    rng = np.random.default_rng(7)
    W = rng.normal(size=(20, 8)) / np.sqrt(20)
    exps, gaps = [], []
    for J in (20, 200, 2000, 20000):
        U = rng.normal(size=(J, 20))
        G = U @ W + 0.5 * rng.normal(size=(J, 8))
        r_up, _ = ref_corr(U, G)
        t = float(kalman.SECNice().exponent(jnp.asarray(r_up), jnp.asarray(float(J)), "up"))
        rho = np.asarray(kalman.SECNice().weights(KEY, jnp.asarray(r_up), jnp.asarray(float(J)), "up"))
        exps.append(t)
        gaps.append(np.linalg.norm(r_up * (1 - rho)) / np.linalg.norm(r_up))
        assert t == pytest.approx(ref_secnice_exponent(r_up, J)[0], abs=1e-9)
    assert exps == sorted(exps, reverse=True) and exps[0] > 10 * exps[-1]
    assert gaps == sorted(gaps, reverse=True) and gaps[0] > 10 * gaps[-1]  # ~ 1/√J
    assert gaps[-1] < 0.05
    fisher = [float(kalman.SECFisher().weights(KEY, jnp.asarray([[0.3]]), jnp.asarray(float(J)), "up")[0, 0])
              for J in (20, 2000, 200000)]
    assert fisher == sorted(fisher) and fisher[-1] > 0.999


def test_localization_and_additive_inflation_leave_the_ensemble_subspace():
    """Plain EKI keeps U in ū₀ + span(E₀); a localized update or additive noise does not."""
    U, G, y, Gamma = _loc_problem(8, J=10, P=40, M=12)
    U, G, y = (jnp.asarray(a, jnp.float32) for a in (U, G, y))
    basis = np.linalg.qr(np.asarray(U - U.mean(0)).T)[0]  # (P, J) orthonormal span of the anomalies

    def outside(V):
        D = np.asarray(V, np.float64) - np.asarray(U.mean(0))
        return np.linalg.norm(D - D @ basis @ basis.T) / np.linalg.norm(D)

    assert outside(kalman.eki_update(KEY, U, G, y, 0.3)) < 1e-5
    assert outside(kalman.eki_update(KEY, U, G, y, 0.3, stochastic=True)) < 1e-5
    assert outside(kalman.etki_update(KEY, U, G, y, 0.3)) < 1e-5
    assert outside(kalman.eki_update(KEY, U, G, y, 0.3, localizer=kalman.SECNice())) > 1e-2
    assert outside(kalman.eki_update(KEY, U, G, y, 0.3, localizer=kalman.BernoulliDropout(0.5))) > 1e-2
    assert outside(kalman.additive_inflation(KEY, U, 0.1)) > 1e-2


def test_localized_sequential_equals_successive_localized_updates(x64):
    rng = np.random.default_rng(9)
    U = rng.normal(size=(20, 15))
    G = rng.normal(size=(20, 4, 3))
    y = rng.normal(size=(4, 3))
    loc = kalman.SEC(alpha=1.0)
    seq = kalman.eki_update_sequential(KEY, U, G, y, 0.4, localizer=loc)
    V = U
    for d in range(4):
        V = kalman.eki_update(KEY, V, G[:, d], y[d], 0.4, form="observation", localizer=loc)
    np.testing.assert_allclose(seq, V, rtol=1e-9, atol=1e-10)


def test_bernoulli_dropout_is_reproducible_masks_only_cross_covariance(x64):
    U, G, y, Gamma = _loc_problem(10)
    loc = kalman.BernoulliDropout(keep=0.7)
    a = kalman.eki_update(KEY, U, G, y, Gamma, localizer=loc)
    np.testing.assert_array_equal(a, kalman.eki_update(KEY, U, G, y, Gamma, localizer=loc))
    assert np.abs(np.asarray(a) - kalman.eki_update(jax.random.key(5), U, G, y, Gamma, localizer=loc)).max() > 1e-6
    mask = np.asarray(loc.weights(KEY, jnp.ones((200, 50)), 30.0, "up"))
    assert set(np.unique(mask)) <= {0.0, 1.0} and abs(mask.mean() - 0.7) < 0.02
    np.testing.assert_array_equal(loc.weights(KEY, jnp.ones((5, 5)), 30.0, "pp"), np.ones((5, 5)))
    keep_all = kalman.eki_update(KEY, U, G, y, Gamma, localizer=kalman.BernoulliDropout(keep=1.0))
    np.testing.assert_allclose(keep_all, kalman.eki_update(KEY, U, G, y, Gamma, form="observation"), rtol=1e-10)


# --------------------------------------------------------------------------- inflation, momentum, minibatches


def test_additive_inflation_statistics():
    U = jnp.zeros((4000, 3)) + jnp.asarray([1.0, -2.0, 3.0])
    V = np.asarray(kalman.additive_inflation(KEY, U, 0.2, step_size=0.5, std=jnp.asarray([1.0, 2.0, 0.5])))
    np.testing.assert_allclose(V.mean(0), [1.0, -2.0, 3.0], atol=0.05)
    np.testing.assert_allclose(V.var(0), (0.1 / 0.9) * np.array([1.0, 4.0, 0.25]), rtol=0.08)
    with pytest.raises(kalman.StrategyError, match="scale·step_size < 1"):
        kalman.additive_inflation(KEY, U, 1.0)


class _NoCollectives:
    """A shard's engine for code that must not need one (the noise is drawn per row)."""

    n_shards = 3


@pytest.mark.parametrize("J", [4000, 4001])
def test_antithetic_additive_inflation_pairs_members_and_keeps_the_mean_in_place(J):
    from l2ljax.rows import Rows, split

    U = jnp.zeros((J, 3))  # V is then the noise itself, without rounding
    std = jnp.asarray([1.0, 2.0, 0.5])
    V = np.asarray(kalman.additive_inflation(KEY, U, 0.2, step_size=0.5, std=std, antithetic=True))
    noise, H = V, J // 2
    np.testing.assert_array_equal(noise[:H], -noise[H:2 * H])
    np.testing.assert_allclose(noise[:2 * H].mean(0), 0.0, atol=1e-7)  # exactly, not only in expectation
    np.testing.assert_allclose(V.var(0), (0.1 / 0.9) * np.array([1.0, 4.0, 0.25]), rtol=0.08)
    independent = np.asarray(kalman.additive_inflation(KEY, U, 0.2, step_size=0.5, std=std))
    # the first half's draws are the independent ones (to a rounding of the fused multiply)
    np.testing.assert_allclose(V[:H], independent[:H], rtol=1e-6, atol=1e-7)
    if J % 2:
        np.testing.assert_allclose(V[-1], independent[-1], rtol=1e-6, atol=1e-7)  # an odd last member: its own draw
    for shard in range(3):  # each shard draws its rows' numbers alone: the same numbers
        start, count = split(J, 3, shard)
        rows = Rows(J, start, count, engine=_NoCollectives())
        part = kalman.additive_inflation(KEY, U[start:start + count], 0.2, step_size=0.5, std=std, rows=rows,
                                         antithetic=True)
        np.testing.assert_allclose(np.asarray(part), V[start:start + count], rtol=1e-6, atol=1e-7)


def test_hashed_normals_have_the_normal_law_and_no_correlations():
    from math import erf

    from l2ljax.rows import hashed_normal_rows

    z = np.asarray(hashed_normal_rows(KEY, jnp.arange(400), 5000), np.float64)
    assert abs(z.mean()) < 4 / np.sqrt(z.size) and abs(z.var() - 1) < 4 * np.sqrt(2 / z.size)
    kurtosis = np.mean((z - z.mean()) ** 4) / z.var() ** 2
    assert abs(kurtosis - 3) < 0.02
    sample = np.sort(z.ravel()[::7])  # Kolmogorov–Smirnov distance to Φ, bound ≈ 3× its 1/√n scale
    cdf = 0.5 * (1 + np.vectorize(erf)(sample / np.sqrt(2)))
    ks = np.max(np.abs(cdf - np.arange(1, len(sample) + 1) / len(sample)))
    assert ks < 3 / np.sqrt(len(sample))
    for block in (z[:60], z[:, :60].T):  # rows against rows, columns against columns
        corr = np.corrcoef(block) - np.eye(len(block))
        n = block.shape[1]
        assert np.max(np.abs(corr)) < 5.5 / np.sqrt(n)
        assert abs(corr.sum() / (len(block) * (len(block) - 1))) < 3 / np.sqrt(n * len(block) ** 2 / 2)
    lag1 = np.mean(z[:, 1:] * z[:, :-1])  # neighbouring columns: consecutive counters
    assert abs(lag1) < 4 / np.sqrt(z[:, 1:].size)


def test_hashed_normals_are_keyed_per_row_and_reproducible():
    from l2ljax.rows import Rows, split

    rows = jnp.arange(10)
    a = np.asarray(kalman.additive_inflation(KEY, jnp.zeros((10, 300)), 0.5, std=1.0, generator="hash"))
    np.testing.assert_array_equal(a, kalman.additive_inflation(KEY, jnp.zeros((10, 300)), 0.5, std=1.0,
                                                               generator="hash"))
    from l2ljax.rows import hashed_normal_rows

    np.testing.assert_allclose(a, hashed_normal_rows(KEY, rows, 300), rtol=1e-6)  # sh/(1 - sh) = 1
    other = np.asarray(hashed_normal_rows(jax.random.key(1), rows, 300))
    assert np.abs(np.corrcoef(a.ravel(), other.ravel())[0, 1]) < 0.05
    for shard in range(3):  # a shard draws its own rows' numbers
        start, count = split(10, 3, shard)
        part = kalman.additive_inflation(KEY, jnp.zeros((count, 300)), 0.5, std=1.0, generator="hash",
                                         rows=Rows(10, start, count, engine=_NoCollectives()))
        np.testing.assert_array_equal(np.asarray(part), a[start:start + count])
    with pytest.raises(kalman.StrategyError, match="generator must be one of"):
        kalman.additive_inflation(KEY, jnp.zeros((10, 3)), 0.5, generator="philox")
    problem = l2ljax.function_optimizee("rastrigin", dim=3)
    with pytest.raises(ValueError, match="additive_generator must be one of"):
        l2ljax.EnsembleKalmanFilter(problem, pop_size=10, additive_generator="philox")


def test_enkf_additive_noise_is_checked():
    problem = l2ljax.function_optimizee("rastrigin", dim=3)
    with pytest.raises(ValueError, match="additive_noise must be 'independent' or 'antithetic', got 'paired'"):
        l2ljax.EnsembleKalmanFilter(problem, pop_size=10, additive_noise="paired")


def test_nesterov_coefficients_match_the_recursions():
    theta, lams = jnp.ones(()), []
    for n in range(1, 8):
        lam, theta = kalman.NesterovAccelerator().coefficient(n, theta)
        lams.append(float(lam))
    t, ref = 1.0, []
    for _ in range(7):
        new = (-t * t + np.sqrt(t**4 + 4 * t * t)) / 2
        ref.append(new * (1 / t - 1))
        t = new
    np.testing.assert_allclose(lams, ref, rtol=1e-6)
    assert lams[0] == 0 and all(b > a for a, b in zip(lams, lams[1:], strict=False))
    first = [float(kalman.FirstOrderNesterovAccelerator().coefficient(n, jnp.ones(()))[0]) for n in (1, 2, 10)]
    np.testing.assert_allclose(first, [0.0, 0.25, 0.75], rtol=1e-6)
    np.testing.assert_allclose(kalman.accelerate(jnp.ones(3), jnp.zeros(3), 0.5), 1.5 * np.ones(3))


def test_minibatchers_cover_epochs_and_name_bad_sizes():
    batches = kalman.RandomMinibatcher(60, 12, repetitions=2, seed=3)
    idx = [np.asarray(batches.indices(jnp.asarray(n))) for n in range(20)]
    assert np.array_equal(idx[0], idx[1]) and not np.array_equal(idx[1], idx[2])
    assert sorted(np.concatenate(idx[0:10:2]).tolist()) == list(range(60))
    assert int(batches.epoch(jnp.asarray(10))) == 1 and not np.array_equal(idx[10], idx[0])
    fixed = kalman.FixedMinibatcher([[0, 1], [2, 3], [4, 5]], n_samples=6)
    assert [np.asarray(fixed.indices(jnp.asarray(n))).tolist() for n in (0, 1, 3)] == [[0, 1], [2, 3], [0, 1]]
    with pytest.raises(kalman.MinibatchError, match="does not divide"):
        kalman.RandomMinibatcher(60000, 64)
    assert kalman.RandomMinibatcher(60000, 64, remainder="drop").batches_per_epoch == 937
    with pytest.raises(kalman.MinibatchError, match="same size"):
        kalman.FixedMinibatcher([[0, 1], [2]])
    with pytest.raises(kalman.MinibatchError, match=r"lie in \[0, 4\)"):
        kalman.FixedMinibatcher([[0, 9]], n_samples=4)


# --------------------------------------------------------------------------- named errors


def test_bad_noise_and_strategy_combinations_are_named():
    U, G, y, _ = _loc_problem()
    with pytest.raises(kalman.NoiseCovarianceError, match="not positive definite"):
        kalman.eki_update(KEY, U, G, y, -np.eye(12))
    with pytest.raises(kalman.NoiseCovarianceError, match="not symmetric"):
        kalman.eki_update(KEY, U, G, y, np.triu(np.ones((12, 12))) + np.eye(12))
    with pytest.raises(kalman.NoiseCovarianceError, match="must be positive"):
        kalman.etki_update(KEY, U, G, y, 0.0)
    with pytest.raises(kalman.NoiseCovarianceError, match="shape"):
        kalman.eki_update(KEY, U, G, y, np.ones(5))
    with pytest.raises(kalman.StrategyError, match="observation form"):
        kalman.eki_update(KEY, U, G, y, 0.3, form="ensemble", localizer=kalman.SEC())
