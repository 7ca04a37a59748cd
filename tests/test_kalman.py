"""Tests for l2ljax.kalman against an independent float64 numpy implementation of EKI."""

import math
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import l2ljax.kalman.eki  # noqa: F401  (private helpers)
from l2ljax import kalman
from l2ljax.rows import everything

# --------------------------------------------------------------------------- numpy reference


def ref_update(U, G, Y, noise, step_size=1.0):
    """EKI step written out: explicit C_pp, C_up (1/J), one np.linalg.solve per member.

    ``Y`` is the (J, M) matrix of per-member observations y_j (deterministic: y repeated).
    """
    U, G, Y = (np.asarray(a, np.float64) for a in (U, G, Y))
    J, M = G.shape
    Gamma = noise * np.eye(M) if np.ndim(noise) == 0 else np.asarray(noise, np.float64)
    u_bar, g_bar = U.mean(axis=0), G.mean(axis=0)
    C_pp = sum(np.outer(G[j] - g_bar, G[j] - g_bar) for j in range(J)) / J
    C_up = sum(np.outer(U[j] - u_bar, G[j] - g_bar) for j in range(J)) / J
    S = C_pp + Gamma / step_size
    return np.stack([U[j] + C_up @ np.linalg.solve(S, Y[j] - G[j]) for j in range(J)])


def ref_sequential(U, G, y, noise):
    """L2L's LOD loop: per sample d, C_pp from the stale G[:, d], C_up from the current ensemble."""
    for d in range(G.shape[1]):
        U = ref_update(U, G[:, d], np.broadcast_to(y[d], G[:, d].shape), noise)
    return U


def problem(seed, J, P, M, *, full=False, dtype=np.float64):
    """Random ensemble with outputs correlated to the parameters, observation and noise."""
    rng = np.random.default_rng(seed)
    U = rng.normal(size=(J, P))
    W = rng.normal(size=(P, M)) / np.sqrt(P)
    G = np.tanh(U @ W) + 0.1 * rng.normal(size=(J, M))
    y = rng.normal(size=M)
    if full:
        Q = rng.normal(size=(M, M))
        noise = Q @ Q.T / M + 0.1 * np.eye(M)
    else:
        noise = 0.3
    cast = partial(np.asarray, dtype=dtype)
    return cast(U), cast(G), cast(y), (cast(noise) if full else noise)


def rel_err(a, b, ref_point):
    """Relative error of the increments a - ref_point vs b - ref_point."""
    da, db = np.asarray(a, np.float64) - ref_point, np.asarray(b, np.float64) - ref_point
    return np.linalg.norm(da - db) / np.linalg.norm(db)


@pytest.fixture
def x64():
    with jax.enable_x64(True):
        yield


KEY = jax.random.key(0)
SHAPES = [(50, 30, 20), (20, 40, 60)]  # J > M (observation form) and J < M (ensemble form)

# --------------------------------------------------------------------------- one update


@pytest.mark.parametrize("full", [False, True], ids=["scalar", "full"])
@pytest.mark.parametrize("form", ["auto", "ensemble", "observation"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "J{}P{}M{}".format(*s))
def test_update_matches_numpy_float64(x64, shape, form, full):
    U, G, y, noise = problem(1, *shape, full=full)
    out = kalman.eki_update(KEY, U, G, y, noise, form=form)
    assert out.dtype == jnp.float64
    ref = ref_update(U, G, np.broadcast_to(y, G.shape), noise)
    assert rel_err(out, ref, U) < 1e-9


@pytest.mark.parametrize("full", [False, True], ids=["scalar", "full"])
def test_step_size_divides_noise(x64, full):
    U, G, y, noise = problem(2, *SHAPES[0], full=full)
    out = kalman.eki_update(KEY, U, G, y, noise, step_size=0.25)
    ref = ref_update(U, G, np.broadcast_to(y, G.shape), noise, step_size=0.25)
    assert rel_err(out, ref, U) < 1e-9
    assert rel_err(kalman.eki_update(KEY, U, G, y, noise), ref, U) > 1e-2  # h matters


def test_nonzero_scalar_gamma_is_used(x64):
    """L2L's bug: a nonzero scalar γ became 0. Here γ = 1 must differ from γ → 0 and match numpy."""
    U, G, y, _ = problem(3, *SHAPES[0])
    Y = np.broadcast_to(y, G.shape)
    one = kalman.eki_update(KEY, U, G, y, 1.0)
    tiny = kalman.eki_update(KEY, U, G, y, 1e-8)
    assert rel_err(one, ref_update(U, G, Y, 1.0), U) < 1e-9
    assert rel_err(tiny, ref_update(U, G, Y, 1e-8), U) < 1e-6
    assert rel_err(one, tiny, U) > 0.1


def test_forms_agree_float32():
    """Both forms in float32, full Γ, stochastic (same perturbations in both). The increments agree
    to ~1e-6 here (condition numbers ~1e2, sums of J or M terms); 2e-4 leaves room for other BLAS."""
    U, G, y, noise = problem(4, *SHAPES[1], full=True, dtype=np.float32)
    run = partial(kalman.eki_update, KEY, U, G, y, noise, stochastic=True, step_size=0.5)
    ens, obs = run(form="ensemble"), run(form="observation")
    assert ens.dtype == obs.dtype == jnp.float32
    assert rel_err(ens, obs, U) < 2e-4


# --------------------------------------------------------------------------- stochastic mode


@pytest.mark.parametrize("form", ["ensemble", "observation"])
def test_stochastic_reproducible_and_key_dependent(x64, form):
    U, G, y, noise = problem(6, *SHAPES[0], full=True)
    run = partial(kalman.eki_update, U=U, G=G, y=y, noise=noise, stochastic=True, form=form)
    a, b, c = run(jax.random.key(7)), run(jax.random.key(7)), run(jax.random.key(8))
    np.testing.assert_array_equal(a, b)
    assert rel_err(a, c, U) > 1e-2
    assert rel_err(a, kalman.eki_update(KEY, U, G, y, noise, form=form), U) > 1e-2


@pytest.mark.parametrize("full", [False, True], ids=["scalar", "full"])
def test_stochastic_tends_to_deterministic_as_noise_vanishes(x64, full):
    U, G, y, noise = problem(7, *SHAPES[0], full=full)
    noise = noise * 1e-10
    det = kalman.eki_update(KEY, U, G, y, noise)
    sto = kalman.eki_update(KEY, U, G, y, noise, stochastic=True)
    assert rel_err(sto, det, U) < 1e-3


@pytest.mark.parametrize("stochastic", [False, True])
@pytest.mark.parametrize("form", ["ensemble", "observation"])
def test_scalar_noise_is_gamma_times_identity(x64, form, stochastic):
    """A scalar γ is exactly Γ = γ I, perturbations included (same key, same ξ; chol(γI) = √γ I)."""
    U, G, y, _ = problem(7, *SHAPES[0])
    run = partial(kalman.eki_update, KEY, U, G, y, stochastic=stochastic, step_size=0.5, form=form)
    np.testing.assert_allclose(run(0.3), run(0.3 * np.eye(G.shape[1])), rtol=1e-12, atol=1e-12)


def test_perturbations_have_covariance_noise_over_h(x64):
    """Recover η_j from the stochastic update and check η ~ N(0, Γ/h).

    The update is linear in y_j: ΔU_sto - ΔU_det = η S⁻¹ C_upᵀ, and C_upᵀ (M, P) has full row
    rank here (P > M), so η = (ΔU_sto - ΔU_det) pinv(C_upᵀ) S.
    """
    J, P, M, h = 4000, 6, 3, 0.5
    U, G, y, noise = problem(8, J, P, M, full=True)
    det = np.asarray(kalman.eki_update(KEY, U, G, y, noise, step_size=h))
    sto = np.asarray(kalman.eki_update(KEY, U, G, y, noise, step_size=h, stochastic=True))
    Gc, Uc = G - G.mean(0), U - U.mean(0)
    S = Gc.T @ Gc / J + noise / h
    eta = (sto - det) @ np.linalg.pinv(Gc.T @ Uc / J) @ S
    assert np.all(np.abs(eta.mean(0)) < 4 * np.sqrt(np.diag(noise / h) / J))
    assert np.linalg.norm(np.cov(eta.T) - noise / h) / np.linalg.norm(noise / h) < 0.1


# --------------------------------------------------------------------------- convergence


@pytest.mark.parametrize("form", ["ensemble", "observation"])
def test_linear_inverse_problem_converges_to_least_squares(form):
    """G(u) = A u, y = A u* + noise: deterministic EKI's mean converges to the LSQ solution.

    Float32, 50 jitted iterations (scan). EKI's mean stays in ū₀ + span(anomalies) = ℝ^P here
    (J = 60 > P), and for linear G it is a Levenberg-Marquardt-like iteration on ‖y - Au‖²
    with a shrinking prior covariance, so it tends to argmin ‖y - Au‖. The distance to it falls
    only like the spread, ~√(γ/n) per direction: with γ = 1e-3 both forms end 8e-5 (relative)
    from the LSQ solution, as float64 does; u* itself is 4e-3 away, so 2e-4 tells them apart.
    """
    J, P, M, n_iter = 60, 10, 30, 50
    rng = np.random.default_rng(9)
    A = rng.normal(size=(M, P)).astype(np.float32)
    u_star = rng.normal(size=P).astype(np.float32)
    y = (A @ u_star + 0.01 * rng.normal(size=M)).astype(np.float32)
    u_lsq = np.linalg.lstsq(A.astype(np.float64), y.astype(np.float64), rcond=None)[0]
    U0 = jnp.asarray(rng.normal(size=(J, P)), jnp.float32)

    def step(U, key):
        G = U @ A.T
        U = kalman.eki_update(key, U, G, y, 1e-3, form=form)
        return U, (kalman.misfit(U @ A.T, y), kalman.ensemble_spread(U))

    U, (misfits, spreads) = jax.jit(lambda U: jax.lax.scan(step, U, jax.random.split(KEY, n_iter)))(U0)
    u_mean = np.asarray(U.mean(0), np.float64)
    initial = float(kalman.misfit(U0 @ A.T, y))
    assert np.linalg.norm(u_mean - u_lsq) / np.linalg.norm(u_lsq) < 2e-4
    assert np.linalg.norm(u_star - u_lsq) / np.linalg.norm(u_lsq) > 2e-3
    assert misfits[-1] < 1e-2 * initial
    assert np.all(np.diff(np.asarray(misfits)[5:]) <= 1e-6 + 1e-3 * np.asarray(misfits)[5:-1])
    assert np.all(np.isfinite(spreads)) and spreads[-1] < spreads[0] < float(kalman.ensemble_spread(U0))


# --------------------------------------------------------------------------- failures


def _broken(G):
    G = np.array(G)
    G[3] = np.nan
    G[7, 2] = np.inf
    G[11, :] = -np.inf
    G[20, 0] = np.nan
    bad = np.zeros(G.shape[0], bool)
    bad[[3, 7, 11, 20]] = True
    return G, bad


@pytest.mark.parametrize("stochastic", [False, True])
@pytest.mark.parametrize("form", ["ensemble", "observation"])
def test_failed_members_are_excluded_and_resampled(x64, form, stochastic):
    U, G, y, noise = problem(10, *SHAPES[0], full=True)
    G, bad = _broken(G)
    out = np.asarray(kalman.eki_update(KEY, U, G, y, noise, form=form, stochastic=stochastic))
    assert np.all(np.isfinite(out))
    if not stochastic:  # the valid members see exactly the update of the valid subset
        ref = ref_update(U[~bad], G[~bad], np.broadcast_to(y, G[~bad].shape), noise)
        assert rel_err(out[~bad], ref, U[~bad]) < 1e-9
    alive = out[~bad]
    mean, std = alive.mean(0), alive.std(0)
    assert np.all(np.abs(out[bad] - mean) < 6 * std)
    assert not np.allclose(out[bad], U[bad])


def test_valid_mask_and_nan_parameters(x64):
    """A user mask removes members like a failure; NaN parameters of a failed member stay out."""
    U, G, y, noise = problem(11, *SHAPES[0])
    bad = np.zeros(len(U), bool)
    bad[[0, 5]] = True
    U_nan = U.copy()
    U_nan[5] = np.nan
    out = np.asarray(kalman.eki_update(KEY, U_nan, G, y, noise, valid=~bad, form="observation"))
    ref = ref_update(U[~bad], G[~bad], np.broadcast_to(y, G[~bad].shape), noise)
    assert np.all(np.isfinite(out))
    assert rel_err(out[~bad], ref, U[~bad]) < 1e-9
    with pytest.raises(ValueError, match="valid"):
        kalman.eki_update(KEY, U, G, y, noise, valid=np.ones(len(U) - 1, bool))


@pytest.mark.parametrize("form", ["ensemble", "observation"])
def test_failed_solve_skips_the_update(form):
    """Γ = 0 with J < M: C_pp + Γ is singular, the float32 Cholesky breaks down; no NaN escapes."""
    U, G, y, noise = problem(4, *SHAPES[1], full=True, dtype=np.float32)
    update = jax.jit(lambda noise: kalman.eki_update(KEY, U, G, y, noise, stochastic=True, step_size=0.5, form=form))
    out = update(0 * noise)  # traced, so the SPD check of a concrete Γ cannot catch it
    np.testing.assert_array_equal(out, U)  # (the same configuration as test_forms_agree_float32)


@pytest.mark.parametrize("n_valid", [0, 1])
def test_fewer_than_two_valid_members_leaves_ensemble_unchanged(x64, n_valid):
    U, G, y, noise = problem(12, *SHAPES[0])
    G = np.array(G)
    G[n_valid:] = np.nan
    for form in ("ensemble", "observation"):
        np.testing.assert_array_equal(kalman.eki_update(KEY, U, G, y, noise, form=form), U)


# --------------------------------------------------------------------------- sample-sequential


def batch(seed, J, P, B, K):
    """Ensemble, stale outputs (J, B, K) and one-hot targets (B, K) of a classification batch."""
    rng = np.random.default_rng(seed)
    U = rng.normal(size=(J, P))
    G = np.tanh(U @ rng.normal(size=(P, B * K)) / 5).reshape(J, B, K) + 0.1 * rng.normal(size=(J, B, K))
    return U, G, np.eye(K)[rng.integers(0, K, size=B)]


@pytest.mark.parametrize(("form", "full"), [("observation", False), ("auto", False), ("ensemble", True)])
def test_sequential_matches_l2l_loop(x64, form, full):
    U, G, y = batch(13, 30, 25, 6, 10)
    noise = problem(13, 30, 25, 10, full=full)[3]
    out = kalman.eki_update_sequential(KEY, U, G, y, noise, form=form)
    assert rel_err(out, ref_sequential(U, G, y, noise), U) < 1e-9


def test_sequential_equals_successive_eki_updates_with_failures(x64):
    J, P, B, K = 40, 15, 4, 10
    U, G, y = batch(15, J, P, B, K)
    G[3, 2, 1] = np.nan  # member 3 fails on one sample only: failed for the whole batch
    G[9, :, :] = np.inf
    bad = np.zeros(J, bool)
    bad[[3, 9]] = True
    out = np.asarray(kalman.eki_update_sequential(KEY, U, G, y, 0.1))
    by_hand = U
    for d in range(B):
        by_hand = kalman.eki_update(KEY, by_hand, G[:, d], y[d], 0.1, valid=~bad)
    np.testing.assert_allclose(out[~bad], np.asarray(by_hand)[~bad], rtol=1e-10, atol=1e-12)
    assert rel_err(out[~bad], ref_sequential(U[~bad], G[~bad], y, 0.1), U[~bad]) < 1e-9
    assert np.all(np.isfinite(out))
    assert np.all(np.abs(out[bad] - out[~bad].mean(0)) < 6 * out[~bad].std(0))


def test_sequential_with_one_sample_is_eki_update(x64):
    """Same key schedule: B = 1 reproduces eki_update exactly, perturbations and resampling included."""
    U, G, y, noise = problem(14, *SHAPES[0], full=True)
    G, _ = _broken(G)
    seq = kalman.eki_update_sequential(KEY, U, G[:, None], y[None], noise, stochastic=True, step_size=0.7)
    one = kalman.eki_update(KEY, U, G, y, noise, stochastic=True, step_size=0.7)
    np.testing.assert_allclose(seq, one, rtol=1e-10, atol=1e-12)


def test_sequential_jits_in_float32():
    U, G, y = (a.astype(np.float32) for a in batch(16, 64, 50, 8, 10))
    out = jax.jit(partial(kalman.eki_update_sequential, stochastic=True))(KEY, U, G, y, 0.01)
    assert out.dtype == jnp.float32 and out.shape == U.shape and np.all(np.isfinite(out))
    assert not np.allclose(out, U)  # it moved


def test_shape_errors():
    U, G, y, _ = problem(17, 10, 4, 3, dtype=np.float32)
    with pytest.raises(ValueError, match="noise"):
        kalman.eki_update(KEY, U, G, y, np.eye(4))
    with pytest.raises(ValueError, match="form"):
        kalman.eki_update(KEY, U, G, y, 0.1, form="woodbury")
    with pytest.raises(ValueError, match="expected"):
        kalman.eki_update_sequential(KEY, U, G, y, 0.1)


# --------------------------------------------------------------------------- inflation, diagnostics


def test_inflation_keeps_mean_and_scales_spread(x64):
    U = np.random.default_rng(18).normal(size=(25, 7)) * 3.0 + 1.0
    out = np.asarray(kalman.inflate(U, 1.5))
    np.testing.assert_allclose(out.mean(0), U.mean(0), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(out.std(0), 1.5 * U.std(0), rtol=1e-12)
    np.testing.assert_allclose(np.cov(out.T), 2.25 * np.cov(U.T), rtol=1e-12, atol=1e-12)
    assert float(kalman.ensemble_spread(out)) == pytest.approx(1.5 * float(kalman.ensemble_spread(U)))
    np.testing.assert_allclose(kalman.inflate(U, 1.0), U, rtol=1e-12)


def test_diagnostics_match_numpy(x64):
    rng = np.random.default_rng(19)
    U, G, y = rng.normal(size=(12, 5)), rng.normal(size=(12, 3, 4)), rng.normal(size=(3, 4))
    assert float(kalman.ensemble_spread(U)) == pytest.approx(np.mean(np.std(U, axis=0)))
    assert float(kalman.misfit(G, y)) == pytest.approx(np.mean((G.mean(0) - y) ** 2))


@pytest.mark.parametrize("stochastic", [False, True])
def test_composed_sequential_update_equals_the_step_by_step_scan(stochastic):
    """The low-rank composition of the B sample updates is the scan of B updates, to rounding."""
    k_u, k_g, k_y = jax.random.split(jax.random.key(11), 3)
    J, P, B, K = 40, 300, 16, 10
    U = 0.1 * jax.random.normal(k_u, (J, P))
    G = jax.random.normal(k_g, (J, B, K)).at[5].set(jnp.nan)
    y = jax.nn.one_hot(jax.random.randint(k_y, (B,), 0, K), K)
    args = (jax.random.key(2), U, G, y, jnp.float32(0.05), jnp.float32(1.0), None)
    composed = kalman.eki._update_sequential(*args, stochastic=stochastic, form="observation")
    scanned = kalman.eki._update_sequential(*args, stochastic=stochastic, form="observation", scan=True)
    change = float(jnp.max(jnp.abs(scanned - U)))
    assert change > 1e-2
    np.testing.assert_allclose(composed, scanned, atol=1e-5 * max(change, 1.0))


@pytest.mark.parametrize(("J", "B"), [(30, 6), (90, 2)])
def test_both_orders_of_the_low_rank_product_match_the_float64_loop(x64, J, B):
    """``U + (L R) U`` (J × J, small J) and ``U + L (R U)`` (large J) are one update, for both forms."""
    P, K = 25, 10
    member_space = kalman.eki._member_space_cheaper(everything(J), J, B * K, P)
    assert member_space == (J == 30)  # the two cases take the two branches
    U, G, y = batch(17, J, P, B, K)
    out = kalman.eki_update_sequential(KEY, U, G, y, 0.2, form="observation")
    assert rel_err(out, ref_sequential(U, G, y, 0.2), U) < 1e-9
    flat_G, flat_y = G.reshape(J, B * K), y.reshape(-1)
    whole = kalman.eki_update(KEY, U, flat_G, flat_y, 0.2, form="observation")
    assert rel_err(whole, ref_update(U, flat_G, np.broadcast_to(flat_y, flat_G.shape), 0.2), U) < 1e-9


def test_row_sums_mean_and_std_match_float64_and_keep_trailing_shapes():
    from l2ljax.kalman.eki import _mean, _std, row_sum

    rng = np.random.default_rng(3)
    X = (0.3 + 0.1 * rng.standard_normal((500, 7, 11))).astype(np.float32)
    np.testing.assert_allclose(row_sum(X), X.astype(np.float64).sum(0), rtol=2e-6)
    assert row_sum(X).shape == (7, 11) and row_sum(X[:, 0, 0]).shape == ()
    U = X.reshape(500, -1)
    np.testing.assert_allclose(_mean(U, everything(500)), U.astype(np.float64).mean(0), rtol=2e-6)
    np.testing.assert_allclose(_std(U, everything(500)), U.astype(np.float64).std(0), rtol=2e-5)
    with jax.enable_x64(True):  # float64 stays float64 (no silent float32 product)
        U64 = rng.standard_normal((300, 40)) + 1e3
        got = np.asarray(row_sum(jnp.asarray(U64)))
        assert got.dtype == np.float64
        np.testing.assert_allclose(got, [math.fsum(column) for column in U64.T], rtol=1e-13)
    flags = np.arange(12).reshape(4, 3) % 2 == 0  # non-float arrays: jnp.sum's counts
    np.testing.assert_array_equal(row_sum(flags), flags.sum(0))
    assert row_sum(np.zeros((0, 5), np.float32)).shape == (5,)
