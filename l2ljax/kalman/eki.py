r"""Ensemble Kalman inversion (EKI): the update step of L2L's ``EnsembleKalmanFilter``, as pure JAX.

Iglesias, Law & Stuart (2013), *Ensemble Kalman methods for inverse problems*, Inverse Problems
29:045001. An ensemble ``U`` (J, P) of parameter vectors, their forward outputs ``G`` (J, M) with
``G[j] = G(U[j])``, an observation ``y`` (M,) and an observation-noise covariance ``Γ`` (M, M).
With ensemble means ``ū, Ḡ`` over the J members::

    C_pp = 1/J Σ_j (G_j - Ḡ)(G_j - Ḡ)ᵀ          (M, M)
    C_up = 1/J Σ_j (u_j - ū)(G_j - Ḡ)ᵀ          (P, M)
    u_j ← u_j + C_up (C_pp + Γ/h)⁻¹ (y_j - G_j)

``y_j = y`` (deterministic) or ``y_j = y + η_j, η_j ~ N(0, Γ/h)`` (stochastic, "perturbed
observations"). ``h`` is the step size, with the convention of EnsembleKalmanProcesses.jl: the
time step Δt = h divides the noise covariance, both in the gain and in the perturbations, so
``h = 1`` is the classical EKI step and ``h → 0`` a small step of the continuous-time limit.

Noise: ``noise`` is a scalar γ (meaning Γ = γ I; any γ > 0 is used as given), an (M,) vector of
positive variances (Γ = diag) or an SPD (M, M) matrix. Γ must be positive definite: a concrete
``noise`` that is not raises :class:`NoiseCovarianceError` (γ = 0 would make the systems
singular whenever J ≤ M). If a Cholesky factorisation breaks down all the same (a traced Γ that
is singular, or a condition number of C_pp + Γ/h beyond ~1e7 in float32), the gain is
non-finite and that update is skipped (zero increment) rather than writing NaN into the ensemble.

Two algebraically equal forms, never building a (P, P) matrix and never inverting explicitly
(Cholesky solves only). With ``A = (G - Ḡ)/√J`` and ``E = (U - ū)/√J`` the anomalies, so that
``C_pp = AᵀA`` and ``C_up = EᵀA``, and ``D`` the (J, M) matrix of innovations ``y_j - G_j``::

    observation space:  ΔU = [D (AᵀA + Γ/h)⁻¹] (Aᵀ E)            M×M solve, cost ~ J·M·P
    ensemble space:     ΔU = [D̃ Bᵀ (I_J + B Bᵀ)⁻¹] E              J×J solve, cost ~ J²·(M+P)

where ``Γ/h = L Lᵀ`` (Cholesky), ``B = A L⁻ᵀ`` and ``D̃ = D L⁻ᵀ`` are whitened (for scalar γ,
``L = √(γ/h) I``). The second follows from the push-through identity
``(BᵀB + I)⁻¹ Bᵀ = Bᵀ (B Bᵀ + I)⁻¹``. ``form='auto'`` takes the ensemble form when J < M.

Localization (``localizer=``, see :mod:`l2ljax.kalman.localizers`) replaces the covariances by
Schur products ``ρ_up ∘ C_up`` and ``ρ_pp ∘ C_pp``. The localized ``ρ_up ∘ C_up`` is no longer
``EᵀA`` of rank < J, so the push-through identity and the ensemble form are lost: a localized
update always takes the observation form, with the (M, P) cross-covariance formed explicitly::

    ΔU = [D (ρ_pp ∘ AᵀA + Γ/h)⁻¹] (ρ_up ∘ AᵀE)                  cost ~ 2·J·M·P, memory M·P

and, because the rows of ``ρ_up ∘ AᵀE`` are not combinations of the anomalies, the members leave
the affine span of the initial ensemble (plain EKI never does). For the LOD CNN (P = 18,050,
M = 640, J = 500) that is 11.6 M entries (46 MB in float32) and ≈ 11.6 GFLOP per whole-batch
update, against ≈ 30 GFLOP for the ensemble forward pass.

Failed members. A member is *valid* when its row of ``G`` is all finite (and, if given, its
``valid`` flag is set). Invalid members get weight 0 in every mean and covariance, which are
normalised by the number n of valid members; their rows of ``G`` are replaced by zeros before any
product, so NaN/inf never reach the result. After the update they are resampled (the failure
handler of EnsembleKalmanProcesses.jl, restricted to a diagonal covariance so that no (P, P)
matrix appears): independent draws from ``N(ū_valid, diag var_valid)``, the per-coordinate mean
and population variance (1/n) of the *updated* valid members. If n < 2 there is no spread to
update or resample from and ``U`` is returned unchanged.

Sample-sequential ("LOD") mode. Yegenoglu, Krajsek, Diaz Pier & Herty (2020), *Ensemble Kalman
filter optimizing deep neural networks*, LNCS 12565, assimilate a minibatch of B samples one at a
time, each with its own K outputs, using outputs ``G`` computed once before the batch. L2L's
implementation (``l2l/optimizers/kalmanfilter/enkf.py``, ``EnsembleKalmanFilter.fit``: IGITUGraz/L2L
at 8b9368c and 144b8e9, alperyeg/L2L at 224fcd0, and the torch port of the same file) loops ``for d in idx``
over the samples and for each one takes ``g = model_output[:, :, d]`` from the stale outputs,
computes ``Cpp = cov(g, g)`` from them, but ``Cup = cov(self.ensemble, g)`` from the *current*
ensemble, already moved by the previous samples, then applies the (deterministic) update.
``eki_update_sequential`` does the same: sample d's gain ``D_d (C_pp,d + Γ/h)⁻¹`` depends only on
stale outputs (so all B of them are computed at once, batched), while ``C_up`` is recomputed
from the evolving ``U`` at every step of a ``lax.scan``. It equals B successive calls of
``eki_update`` on ``(G[:, d], y[d])`` with the member-validity mask of the whole batch; failed
members are resampled once, after the last sample.

Random keys (the first argument, always): ``k_obs, k_resample = jax.random.split(key)``; sample d
(d = 0 for ``eki_update``) draws its perturbations from ``jax.random.fold_in(k_obs, d)``, member j
its row from ``fold_in(fold_in(k_obs, d), j)`` (resampling and additive inflation likewise from
their keys folded with j), so that an ensemble split by rows draws the same numbers.

Sharded ensembles (``rows=``, :mod:`l2ljax.rows`; issue #14). With the members split over R
ranks, rank r holding rows ``U_r`` (J_r, P) and their outputs ``G_r``, every quantity above is a
sum over members, so each rank computes its partial sums and one all-reduce makes them global:
the valid count and the means ``ū, Ḡ`` (P + M numbers), ``C_pp = Σ_r A_rᵀA_r`` (M × M) and
``C_upᵀ = Σ_r A_rᵀE_r`` (M × P); then rank r updates its own rows, ``ΔU_r = D_r (C_pp + Γ/h)⁻¹ C_upᵀ``
(its innovations ``D_r``, the replicated M × M Cholesky). Only the observation form shards: the
ensemble form's J × J system couples every member, as does ETKI's transform (both refused on
shards). The sample-sequential composition shards the same way: ``Σ_r A_rᵀL_r`` (BK × BK) and
``Σ_r S_r U_r`` (BK × P) are its two all-reduces. Per iteration and rank (float32)::

    replicated:  4·J·M·P flops (the whole update on every rank) + the outputs all-gathered, 4·J·M bytes
    sharded:     4·(J/R)·M·P flops + a ring all-reduce of ≈ 2·4·(M·P + M²) bytes; ensemble 4·J·P/R bytes

For the LOD CNN (P = 18,050, M = 640) the all-reduce is ≈ 94 MB per rank whatever J, so with an
H100's ~50 TFLOP/s and 25 GB/s between nodes sharding pays above J ≈ 3,700 members (≈ 225 over
NVLink); at J = 100,000 on 64 ranks the update takes ≈ 5 ms instead of 104 ms and each rank holds
113 MB of ensemble instead of 7.2 GB (``benchmarks/shard_cost_model.py``; assumptions, not
measurements).

Mapping from L2L's ``EnsembleKalmanFilterParameters``: ``gamma`` → ``noise`` (L2L turned γ = 0
into I and silently dropped any nonzero scalar γ; here a scalar is always γ I), ``pop_size`` /
ensemble size → J, ``n_batches`` / ``online`` → which samples the caller passes to
``eki_update_sequential``, ``maxit`` → the caller's loop. L2L's updates were deterministic
(``stochastic=False``), with 1/J covariances and ``h = 1``.

Example::

    key = jax.random.key(0)
    U = jax.random.normal(key, (60, 10))                 # J = 60 members, P = 10
    for it in range(50):
        G = U @ A.T                                      # forward map, (J, M)
        U = eki_update(jax.random.fold_in(key, it), U, G, y, 0.01)
    print(misfit(U @ A.T, y), ensemble_spread(U))
"""

from __future__ import annotations

import math
from functools import partial
from typing import Any, Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.scipy.linalg import cho_factor, cho_solve, solve_triangular

from l2ljax.core import is_concrete
from l2ljax.rows import GENERATORS, Rows, everything, normal_rows

Array = jax.Array
Form = Literal["auto", "ensemble", "observation"]

__all__ = ["NoiseCovarianceError", "StrategyError", "additive_inflation", "check_noise", "ensemble_spread",
           "eki_update", "eki_update_sequential", "etki_update", "inflate", "misfit", "tikhonov_augment"]


class StrategyError(ValueError):
    """A strategy that does not fit the process or update form it was combined with."""


class NoiseCovarianceError(ValueError):
    """An observation-noise covariance that is not symmetric positive definite."""


class _Stats(NamedTuple):
    """Validity of the members of one update."""

    weight: Array  # (J,) 1.0 for valid members, 0.0 for failed ones
    count: Array  # () number of valid members n
    scale: Array  # () 1/√max(n, 1), turns centred rows into anomalies


def _stats(valid: Array, dtype: jnp.dtype, rows: Rows) -> _Stats:
    weight = valid.astype(dtype)
    count = rows.total(jnp.sum(weight))
    return _Stats(weight, count, lax.rsqrt(jnp.maximum(count, 1.0)))


def row_sum(X: Array) -> Array:
    """``jnp.sum(X, axis=0)`` as a product with a vector of ones (full float32 precision).

    XLA:CPU reduces a (J, P) array over its leading axis ~50× slower than it multiplies it by a
    vector (500 × 18,050: 22 ms against 0.5 ms on the 2-core AVX-512 VM), and every EnKF step
    takes several such sums (means, variances). The rounding differs from ``jnp.sum``'s by a few
    ulps (a blocked instead of a pairwise sum). Non-float arrays and empty ones are ``jnp.sum``'s.
    """
    X = jnp.asarray(X)
    if not jnp.issubdtype(X.dtype, jnp.floating) or X.size == 0:
        return jnp.sum(X, axis=0)
    flat = X.reshape(X.shape[0], math.prod(X.shape[1:]))
    return jnp.dot(jnp.ones(X.shape[0], X.dtype), flat, precision=lax.Precision.HIGHEST).reshape(X.shape[1:])


def _valid_mean(X: Array, stats: _Stats, rows: Rows) -> Array:
    """The mean of the valid rows of every shard (NaN-safe)."""
    valid = stats.weight[:, None] > 0
    return rows.total(row_sum(jnp.where(valid, X, 0.0))) / jnp.maximum(stats.count, 1.0)


def _anomalies(X: Array, stats: _Stats, rows: Rows) -> Array:
    """``(X_j - mean_valid X) / √n`` on valid rows, exact zeros on the others (NaN-safe)."""
    valid = stats.weight[:, None] > 0
    return jnp.where(valid, jnp.where(valid, X, 0.0) - _valid_mean(X, stats, rows), 0.0) * stats.scale


def _validity(G: Array, valid: Array | None, J: int) -> Array:
    finite = jnp.all(jnp.isfinite(G.reshape(J, -1)), axis=1)
    if valid is None:
        return finite
    valid = jnp.asarray(valid)
    if valid.shape != (J,) or valid.dtype != jnp.bool_:
        raise ValueError(f"valid must be a boolean array of shape ({J},), got {valid.dtype} {valid.shape}")
    return finite & valid


class _Noise(NamedTuple):
    """Γ/h in one of three structures (``cov.ndim`` 0: γ I, 1: diagonal, 2: full with ``chol``)."""

    cov: Array
    chol: Array | None

    @classmethod
    def scaled(cls, noise: Array, step_size: Array, *, need_chol: bool) -> _Noise:
        cov = noise / step_size
        return cls(cov, jnp.linalg.cholesky(cov) if cov.ndim == 2 and need_chol else None)

    def whiten(self, X: Array) -> Array:
        """``X L⁻ᵀ`` for rows X (..., M), with ``Γ/h = L Lᵀ``."""
        if self.cov.ndim == 2:
            return solve_triangular(self.chol, X.T, lower=True).T
        return X * lax.rsqrt(self.cov)

    def colour(self, xi: Array) -> Array:
        """``ξ Lᵀ``: rows with covariance Γ/h from standard normal rows."""
        return xi @ self.chol.T if self.cov.ndim == 2 else jnp.sqrt(self.cov) * xi

    def add_to(self, S: Array) -> Array:
        if self.cov.ndim == 2:
            return S + self.cov
        return S + jnp.diag(jnp.broadcast_to(self.cov, S.shape[:1]))


def _correlation(C: Array, sd_rows: Array, sd_cols: Array) -> Array:
    """``C / (sd_rows sd_colsᵀ)``, 0 where a standard deviation is 0, clipped to [-1, 1]."""
    denom = sd_rows[:, None] * sd_cols[None, :]
    return jnp.clip(jnp.where(denom > 0, C / jnp.where(denom > 0, denom, 1.0), 0.0), -1.0, 1.0)


def _localize(localizer: Any, key: Array, C: Array, sd_rows: Array, sd_cols: Array, n: Array,
              block: str) -> Array:
    """The Schur product ``ρ ∘ C`` with ``ρ = localizer.weights(corr(C), n)``."""
    return C * localizer.weights(key, _correlation(C, sd_rows, sd_cols), n, block)


class _Gain(NamedTuple):
    """The U-independent factors of one update: ``ΔU = left @ (right.T @ E)`` (``right=None``: ``left @ E``).

    Observation form: ``left = D (AᵀA + Γ/h)⁻¹`` (J, M), ``right = A`` (J, M), and with a
    localizer ``sd`` = the (M,) output standard deviations used for the u–G correlations.
    Ensemble form: ``left = D̃ Bᵀ (I + BBᵀ)⁻¹`` (J, J), ``right = None``.
    """

    left: Array
    right: Array | None
    sd: Array | None


def _innovations(key: Array, G: Array, y: Array, noise: _Noise, stats: _Stats, stochastic: bool,
                 rows: Rows) -> Array:
    """``D``, the (J, M) rows ``y_j - G_j`` (``y_j = y + η_j`` if stochastic), zero for failed members."""
    J, M = G.shape
    valid = stats.weight[:, None] > 0
    Y = jnp.broadcast_to(y, (J, M))
    if stochastic:
        Y = Y + noise.colour(rows.normal(key, M, G.dtype))
    return jnp.where(valid, Y - jnp.where(valid, G, 0.0), 0.0)


def _gain(key: Array, G: Array, y: Array, noise: Array, stats: _Stats, rows: Rows, *, stochastic: bool,
          step_size: Array, form: str, localizer: Any = None) -> _Gain:
    J, M = G.shape
    A = _anomalies(G, stats, rows)
    scaled = _Noise.scaled(noise, step_size, need_chol=stochastic or form == "ensemble")
    D = _innovations(key, G, y, scaled, stats, stochastic, rows)

    if form == "observation":
        S = rows.total(A.T @ A)
        sd = None
        if localizer is not None:
            sd = jnp.sqrt(jnp.diag(S))
            S = _localize(localizer, jax.random.fold_in(key, 1), S, sd, sd, stats.count, "pp")
        left = cho_solve(cho_factor(scaled.add_to(S), lower=True), D.T).T
        return _Gain(left, A, sd)

    B, Dw = scaled.whiten(A), scaled.whiten(D)
    K = B @ B.T + jnp.eye(J, dtype=G.dtype)
    left = cho_solve(cho_factor(K, lower=True), B @ Dw.T).T  # D̃ Bᵀ K⁻¹ (K symmetric)
    return _Gain(left, None, None)


def _apply(U: Array, gain: _Gain, stats: _Stats, rows: Rows, localizer: Any = None, key: Array | None = None
           ) -> Array:
    E = _anomalies(U, stats, rows)
    left = jnp.where(jnp.all(jnp.isfinite(gain.left)), gain.left, 0.0)  # failed solve: skip, never NaN
    if gain.right is None:
        return U + left @ E
    if localizer is None and _member_space_cheaper(rows, *gain.right.shape, U.shape[1]):
        return U + (left @ gain.right.T) @ E
    C = rows.total(gain.right.T @ E)  # C_upᵀ (M, P): on shards, the one (M, P) all-reduce of an update
    if localizer is not None:
        C = _localize(localizer, key, C, gain.sd, jnp.sqrt(rows.total(row_sum(E * E))), stats.count, "up")
    return U + left @ C


def _resample(key: Array, U: Array, stats: _Stats, rows: Rows) -> Array:
    """Replace failed members by draws from N(ū_valid, diag var_valid); identity if none failed or n < 2."""
    valid = stats.weight[:, None] > 0

    def draw(U: Array) -> Array:
        E = _anomalies(U, stats, rows)  # (u_j - ū)/√n on valid rows
        mean = _valid_mean(U, stats, rows)
        std = jnp.sqrt(rows.total(row_sum(E * E)))
        draws = mean + std * rows.normal(key, U.shape[1], U.dtype)
        return jnp.where(valid, U, draws)

    needed = (stats.count < rows.total_rows) & (stats.count >= 2)
    return lax.cond(needed, draw, lambda U: U, U)


def check_noise(noise: Any, M: int) -> None:
    """Raise unless ``noise`` is a positive scalar, an (M,) positive vector or an SPD (M, M) matrix.

    Shapes are always checked; values only when concrete (not under tracing). Raises
    :class:`NoiseCovarianceError` naming the defect.
    """
    shape = np.shape(noise)
    if shape not in ((), (M,), (M, M)):
        raise NoiseCovarianceError(f"noise must be a scalar, an ({M},) vector of variances or an ({M}, {M}) "
                                   f"matrix, got shape {shape}")
    if not is_concrete(noise):
        return
    cov = np.asarray(noise, np.float64)
    if not np.all(np.isfinite(cov)):
        raise NoiseCovarianceError("noise contains NaN or inf")
    if cov.ndim < 2:
        if np.any(cov <= 0):
            raise NoiseCovarianceError(f"noise variances must be positive (Γ positive definite), got min {cov.min()}")
        return
    if not np.allclose(cov, cov.T, rtol=1e-6, atol=1e-12 * np.abs(cov).max()):
        raise NoiseCovarianceError("noise matrix is not symmetric")
    try:
        np.linalg.cholesky(cov)
    except np.linalg.LinAlgError:
        raise NoiseCovarianceError("noise matrix is not positive definite (its Cholesky factorisation fails); "
                                   "add a nugget, e.g. Γ + 1e-6·I") from None


def _check(U: Array, G: Array, y: Array, noise: float | Array, form: str, sequential: bool,
           localizer: Any = None, rows: Rows | None = None) -> str:
    """Validate shapes and noise (outside jit) and resolve ``form`` against J and M (or K)."""
    if not jnp.issubdtype(jnp.result_type(U), jnp.floating):
        raise TypeError(f"U must be a floating-point array, got {jnp.result_type(U)}")
    U_shape, G_shape, y_shape = np.shape(U), np.shape(G), np.shape(y)
    expected = "U (J, P), G (J, B, K), y (B, K)" if sequential else "U (J, P), G (J, M), y (M,)"
    if (len(U_shape) != 2 or len(G_shape) != 2 + sequential or G_shape[0] != U_shape[0]
            or y_shape != G_shape[1:]):
        raise ValueError(f"expected {expected}; got {U_shape}, {G_shape}, {y_shape}")
    J, M = G_shape[0], G_shape[-1]
    check_noise(noise, M)
    if form not in ("auto", "ensemble", "observation"):
        raise ValueError(f"form must be 'auto', 'ensemble' or 'observation', got {form!r}")
    if localizer is not None:
        if form == "ensemble":
            raise StrategyError("localization needs the observation form (the localized C_up is not low rank); "
                                "use form='observation' or 'auto'")
        return "observation"
    if rows is not None and not rows.whole:
        if form == "ensemble":
            raise StrategyError("a sharded ensemble needs the observation form (the ensemble form's J×J system "
                                "couples every member); use form='observation' or 'auto'")
        return "observation"
    if form == "auto":
        return "ensemble" if J < M else "observation"
    return form


def _cast(U: Array, *arrays: Array | float) -> tuple[Array, ...]:
    U = jnp.asarray(U)
    return (U, *(jnp.asarray(a, U.dtype) for a in arrays))


def _loc_key(key: Array) -> Array:
    """Key of a localizer's random draws; a fold-in keeps the streams of the other draws unchanged."""
    return jax.random.fold_in(key, 2)


def _rows(rows: Rows | None, U: Any) -> Rows:
    return everything(np.shape(U)[0]) if rows is None else rows


@partial(jax.jit, static_argnames=("stochastic", "form", "rows"))
def _update(key: Array, U: Array, G: Array, y: Array, noise: Array, step_size: Array,
            valid: Array | None, localizer: Any, *, stochastic: bool, form: str, rows: Rows | None = None) -> Array:
    rows = _rows(rows, U)
    U, G, y, noise, step_size = _cast(U, G, y, noise, step_size)
    stats = _stats(_validity(G, valid, G.shape[0]), U.dtype, rows)
    k_obs, k_resample = jax.random.split(key)
    k_loc = _loc_key(key)
    gain = _gain(jax.random.fold_in(k_obs, 0), G, y, noise, stats, rows, stochastic=stochastic,
                 step_size=step_size, form=form, localizer=localizer)
    return _resample(k_resample, _apply(U, gain, stats, rows, localizer, k_loc), stats, rows)


@partial(jax.jit, static_argnames=("stochastic", "form", "scan", "rows"))
def _update_sequential(key: Array, U: Array, G: Array, y: Array, noise: Array, step_size: Array,
                       valid: Array | None, localizer: Any = None, *, stochastic: bool, form: str,
                       scan: bool = False, rows: Rows | None = None) -> Array:
    rows = _rows(rows, U)
    U, G, y, noise, step_size = _cast(U, G, y, noise, step_size)
    stats = _stats(_validity(G, valid, G.shape[0]), U.dtype, rows)
    k_obs, k_resample = jax.random.split(key)
    k_loc = _loc_key(key)

    def gain(d: Array, G_d: Array, y_d: Array) -> _Gain:
        return _gain(jax.random.fold_in(k_obs, d), G_d, y_d, noise, stats, rows, stochastic=stochastic,
                     step_size=step_size, form=form, localizer=localizer)

    # The per-sample gains depend only on the stale outputs: all B at once, batched. Samples lead
    # the scan axis (an explicit transpose of G, never a reshape).
    samples = jnp.arange(G.shape[1])
    gains = jax.vmap(gain)(samples, jnp.swapaxes(G, 0, 1), y)

    if form == "observation" and not scan and localizer is None:
        return _resample(k_resample, _compose_sequential(U, gains.left, gains.right, stats, rows), stats, rows)

    def step(U: Array, args: tuple[Array, _Gain]) -> tuple[Array, None]:
        d, gain_d = args
        return _apply(U, gain_d, stats, rows, localizer, jax.random.fold_in(k_loc, d)), None

    U, _ = lax.scan(step, U, (samples, gains))
    return _resample(k_resample, U, stats, rows)


def _compose_sequential(U: Array, lefts: Array, rights: Array, stats: _Stats, rows: Rows) -> Array:
    """The B observation-form steps ``U ← U + L_d A_dᵀ E(U)`` composed into one low-rank update.

    With ``E(X) = s·center(X)`` and ``A_d`` centred on the valid members (zero elsewhere),
    ``A_dᵀ E(X) = s A_dᵀ X``, so ``U_B = U_0 + Σ_d L_d S_d U_0`` where
    ``S_d = s A_dᵀ (I + Σ_{e<d} L_e S_e)``: a block unit-lower-triangular system in the stacked
    ``S`` of size B·K. One (BK × BK) triangular solve and two (J × BK)·(BK × P) products replace B
    passes over the (J, P) ensemble, so the sequential mode costs what the whole-batch one does.
    Exact in exact arithmetic; the float32 results agree with the step-by-step scan to rounding.
    On shards, ``Aᵀ L`` (BK × BK) and ``S U`` (BK × P) are sums over members: two all-reduces,
    the second the size of the whole-batch update's ``C_up``.
    """
    B, J, K = lefts.shape
    lefts = jnp.where(jnp.all(jnp.isfinite(lefts), axis=(1, 2), keepdims=True), lefts, 0.0)  # failed solve: skip
    L = jnp.swapaxes(lefts, 0, 1).reshape(J, B * K)  # block d = L_d
    A = jnp.swapaxes(rights, 0, 1).reshape(J, B * K)  # block d = A_d
    coupling = stats.scale * rows.total(A.T @ L)  # block (d, e) = s A_dᵀ L_e
    block = jnp.arange(B * K) // K
    strictly_earlier = block[:, None] > block[None, :]
    system = jnp.eye(B * K, dtype=U.dtype) - jnp.where(strictly_earlier, coupling, 0.0)
    S = solve_triangular(system, stats.scale * A.T, lower=True, unit_diagonal=True)  # (BK, J)
    if _member_space_cheaper(rows, J, B * K, U.shape[1]):
        return U + (L @ S) @ U
    return U + L @ rows.total(S @ U)


def _member_space_cheaper(rows: Rows, J: int, M: int, P: int) -> bool:
    """Whether ``U + (L R) U`` (a J × J transform, J²(M + P) flops) beats ``U + L (R U)`` (2JMP).

    Both are the same low-rank update; the J × J form wins when J < 2MP/(M + P) ≈ 2M (J = 500,
    M = 640: 9.2 against 23 GFLOP for the LOD CNN's P = 18,050). Sharded rows keep ``L (R U)``:
    its ``R U`` is the (M, P) sum over shards, the J × J form would need every shard's rows.
    """
    return rows.whole and J * (M + P) < 2 * M * P


def eki_update(key: Array, U: Array, G: Array, y: Array, noise: float | Array, *,
               stochastic: bool = False, step_size: float | Array = 1.0, form: Form = "auto",
               valid: Array | None = None, localizer: Any = None, rows: Rows | None = None) -> Array:
    """One EKI step ``u_j ← u_j + C_up (C_pp + Γ/h)⁻¹ (y_j − G_j)``; returns the new (J, P) ensemble.

    Jitted (``stochastic`` and ``form`` static); it can also be called inside ``jit``/``scan``.

    Args:
      key: PRNG key, used for the observation perturbations (``stochastic=True``), for
        resampling failed members and for a random localizer.
      U: (J, P) ensemble; its dtype is the computation dtype.
      G: (J, M) forward outputs, ``G[j] = G(U[j])``; non-finite rows mark failed members.
      y: (M,) observation.
      noise: Γ, a scalar γ (Γ = γ I), an (M,) vector of variances or an SPD (M, M) matrix.
      stochastic: perturbed observations ``y + η_j, η_j ~ N(0, Γ/h)``.
      step_size: h, scales the noise covariance to Γ/h (EnsembleKalmanProcesses' Δt).
      form: 'observation' (M×M solve), 'ensemble' (J×J solve) or 'auto' (ensemble iff J < M).
        The two are equal up to rounding.
      valid: optional (J,) bool; members flagged False are treated as failed, as are members
        with a non-finite output. Failed members are left out of the statistics and resampled
        from N(ū_valid, diag var_valid) of the updated valid members; with fewer than two
        valid members ``U`` is returned unchanged.
      localizer: a localizer of :mod:`l2ljax.kalman.localizers` (None: no localization); it
        forces the observation form (``form='ensemble'`` raises :class:`StrategyError`).
      rows: with a sharded ensemble (:mod:`l2ljax.rows`), ``U``, ``G`` and ``valid`` are this
        shard's rows; the update is computed from per-shard partial sums (observation form
        only) and gives every shard its rows of the unsharded update. Call it inside the
        coordinator's compiled program (its collectives are traced).
    """
    form = _check(U, G, y, noise, form, sequential=False, localizer=localizer, rows=rows)
    return _update(key, U, G, y, noise, step_size, valid, localizer, stochastic=stochastic, form=form,
                   rows=_rows(rows, U))


def eki_update_sequential(key: Array, U: Array, G: Array, y: Array, noise: float | Array, *,
                          stochastic: bool = False, step_size: float | Array = 1.0,
                          form: Form = "auto", valid: Array | None = None, localizer: Any = None,
                          rows: Rows | None = None) -> Array:
    """LOD sample-sequential EKI: assimilate the B samples of a batch one after the other.

    ``G`` is (J, B, K), the outputs of every member on every sample, computed once before the
    batch; ``y`` is (B, K); ``noise`` is a scalar, a (K,) vector or a (K, K) matrix, Γ of one
    sample. Sample d is the update of :func:`eki_update` with ``(G[:, d], y[d])``: its ``C_pp``
    and innovations come from the stale ``G``, its ``C_up`` from the ensemble as moved by samples
    0..d-1 (what L2L's ``EnsembleKalmanFilter.fit`` does). ``form`` picks the per-sample solve by
    J vs K. A member with any non-finite output in the batch (or ``valid[j]`` False) is failed for
    the whole batch: excluded from every sample's statistics, resampled once at the end. With a
    ``localizer`` the B steps run one by one (a ``lax.scan``; the composed low-rank form needs the
    update to be linear in U) and sample d's localizer draws from ``fold_in(key', d)``. Other
    arguments as in :func:`eki_update`.
    """
    form = _check(U, G, y, noise, form, sequential=True, localizer=localizer, rows=rows)
    return _update_sequential(key, U, G, y, noise, step_size, valid, localizer, stochastic=stochastic,
                              form=form, rows=_rows(rows, U))


@jax.jit
def _etki(key: Array, U: Array, G: Array, y: Array, noise: Array, step_size: Array, valid: Array | None) -> Array:
    U, G, y, noise, step_size = _cast(U, G, y, noise, step_size)
    J = G.shape[0]
    rows = everything(J)  # ETKI's J×J transform couples every member: never sharded
    stats = _stats(_validity(G, valid, J), U.dtype, rows)
    scaled = _Noise.scaled(noise, step_size, need_chol=True)
    B = scaled.whiten(_anomalies(G, stats, rows))  # (J, M), zero rows for failed members
    mean_g = jnp.sum(jnp.where(stats.weight[:, None] > 0, G, 0.0), axis=0) / jnp.maximum(stats.count, 1.0)
    d = scaled.whiten(y - mean_g)
    # Ω = (I + BBᵀ)⁻¹ = V diag(1/(1+λ)) Vᵀ: one eigendecomposition gives Ω, Ω^{1/2} and the solve.
    lam, V = jnp.linalg.eigh(B @ B.T)
    lam = jnp.maximum(lam, 0.0)
    w = V @ ((V.T @ (B @ d)) / (1.0 + lam))  # Ω B d̃ (J,)
    root = (V * lax.rsqrt(1.0 + lam)) @ V.T  # Ω^{1/2}, symmetric
    E = _anomalies(U, stats, rows)
    new = _valid_mean(U, stats, rows) + w @ E + (root @ E) / stats.scale
    ok = jnp.all(jnp.isfinite(w)) & jnp.all(jnp.isfinite(root))
    new = jnp.where(ok & (stats.count >= 2), new, U)
    return _resample(jax.random.split(key)[1], new, stats, rows)


def etki_update(key: Array, U: Array, G: Array, y: Array, noise: float | Array, *,
                step_size: float | Array = 1.0, valid: Array | None = None) -> Array:
    r"""One ensemble transform Kalman inversion (ETKI) step, the square-root form of EKI.

    Huang, Huang, Reich & Stuart (2022), *Efficient derivative-free Bayesian inference for
    large-scale inverse problems*, Inverse Problems 38:125006. With whitened output anomalies
    ``B = A L⁻ᵀ`` (J, M), ``Γ/h = L Lᵀ``, the whitened mean innovation ``d̃ = L⁻¹ (y − Ḡ)`` and
    ``Ω = (I_J + B Bᵀ)⁻¹``::

        ū ← ū + Eᵀ Ω B d̃            (the Kalman mean update, the same as deterministic EKI's)
        E ← Ω^{1/2} E                (symmetric square root: Eᵀ E becomes Eᵀ Ω E, the Kalman
                                       posterior covariance; deterministic EKI gives Eᵀ Ω² E)

    so for a linear forward map and a Gaussian ensemble the mean and covariance are those of the
    exact Kalman update, and N steps with h = 1/N equal one step with h = 1. Deterministic (no
    perturbed observations); cost ~ J²(M + P) plus a J×J eigendecomposition. Members stay in the
    span of the initial ensemble; localization does not apply (no explicit C_up): combine with
    additive inflation to leave it. Failed members as in :func:`eki_update` (weight 0, resampled
    from the updated valid ones, whose mean the resample key does not affect).
    """
    _check(U, G, y, noise, "ensemble", sequential=False)
    return _etki(key, U, G, y, noise, step_size, valid)


def tikhonov_augment(U: Array, G: Array, y: Array, noise: float | Array, prior_std: float | Array,
                     prior_mean: float | Array = 0.0) -> tuple[Array, Array, Array]:
    r"""The augmented problem of Tikhonov EKI (TEKI): returns ``(G̃, ỹ, Γ̃)``.

    Chada, Stuart & Tong (2020), *Tikhonov regularization within ensemble Kalman inversion*,
    SIAM J. Numer. Anal. 58:1263. The forward map is extended by the identity and the data by
    the prior mean, with the prior covariance ``C₀ = diag(prior_std²)`` as its noise::

        G̃(u) = [G(u); u],   ỹ = [y; m₀],   Γ̃ = blockdiag(Γ, C₀)

    so EKI (or ETKI) on the augmented problem minimises ``½|Γ^{-½}(y − G(u))|² + ½|C₀^{-½}(u − m₀)|²``
    instead of the data misfit alone: its fixed points are regularised, the ensemble stops
    drifting along directions the data do not see. The augmented data have M + P entries: use
    the ensemble form (``form='auto'`` picks it when J < M + P), cost ~ J²(M + P). ``noise`` a
    scalar or vector gives a diagonal Γ̃ ((M+P,)); a full (M, M) Γ gives a dense block-diagonal
    Γ̃ of (M+P)² entries, so use it only for small P.
    """
    U, G, y, noise, prior_std, prior_mean = _cast(U, G, y, noise, prior_std, prior_mean)
    J, P = U.shape
    M = G.shape[1]
    check_noise(noise, M)
    if np.shape(prior_std) not in ((), (P,)) or np.shape(prior_mean) not in ((), (P,)):
        raise ValueError(f"prior_std and prior_mean must be scalars or ({P},) vectors")
    if is_concrete(prior_std) and not np.all(np.asarray(prior_std) > 0):
        raise NoiseCovarianceError("prior_std must be positive")
    prior_var = jnp.broadcast_to(prior_std**2, (P,))
    if noise.ndim == 2:
        aug = jnp.zeros((M + P, M + P), U.dtype).at[:M, :M].set(noise).at[M:, M:].set(jnp.diag(prior_var))
    else:
        aug = jnp.concatenate([jnp.broadcast_to(noise, (M,)), prior_var])
    return jnp.concatenate([G, U], axis=1), jnp.concatenate([y, jnp.broadcast_to(prior_mean, (P,))]), aug


def inflate(U: Array, factor: float | Array, rows: Rows | None = None) -> Array:
    """Multiplicative covariance inflation: ``ū + factor · (u_j − ū)``.

    Keeps the ensemble mean, multiplies every anomaly (so every per-coordinate standard deviation)
    by ``factor`` and the ensemble covariance by ``factor²``. ``factor > 1`` counters ensemble
    collapse (EnsembleKalmanProcesses' multiplicative inflation, with ``factor = (1 − sΔt)^{-½}``);
    ``factor = 1`` is the identity. Members stay in the span of the ensemble. ``rows``: this
    shard's rows of a sharded ensemble (:mod:`l2ljax.rows`).
    """
    return _inflate(U, factor, _rows(rows, U))


@partial(jax.jit, static_argnames="rows")
def _inflate(U: Array, factor: float | Array, rows: Rows) -> Array:
    U = jnp.asarray(U)
    mean = _mean(U, rows)
    return mean + jnp.asarray(factor, U.dtype) * (U - mean)


def _mean(U: Array, rows: Rows) -> Array:
    """The mean over every shard's rows."""
    return rows.total(row_sum(U)) / rows.total_rows


def _std(U: Array, rows: Rows) -> Array:
    """The per-coordinate population standard deviation over every shard's rows (two passes)."""
    return jnp.sqrt(rows.total(row_sum(jnp.square(U - _mean(U, rows)))) / rows.total_rows)


def additive_inflation(key: Array, U: Array, scale: float | Array, *, step_size: float | Array = 1.0,
                       std: float | Array | None = None, rows: Rows | None = None,
                       antithetic: bool = False, generator: str = "threefry") -> Array:
    r"""Additive inflation ``u_j ← u_j + ζ_j``, ``ζ_j ~ N(0, sh/(1 − sh) · Σ)``, Σ diagonal.

    EnsembleKalmanProcesses' additive inflation (its ``inflation.md``; Huang et al. 2022, eq. 41
    for the multiplicative twin): s = ``scale``, h = ``step_size``; for minibatches of |B| out of
    |C| samples EKP suggests s = |B|/|C|. ``Σ = diag(std²)`` with ``std`` a scalar or (P,) vector
    (e.g. the prior's, EKP's default ``Σ = C₀``), or, with ``std=None``, the current per-coordinate
    variance of ``U`` (a diagonal; the full ensemble covariance would keep the members in their
    span). The noise is independent across coordinates, so unlike every other EKI ingredient it
    moves the ensemble out of the affine span of the initial members: the remedy for the
    subspace limit. The ensemble covariance grows by ``sh/(1−sh) Σ`` in expectation, the mean is
    unchanged in expectation. Requires ``0 ≤ sh < 1`` (checked when concrete; a traced sh is
    clipped to 0.999). Member j's noise is drawn from ``fold_in(key, j)`` (also on shards, ``rows``).

    ``antithetic=True`` pairs the members (antithetic variates): with H = ⌊J/2⌋, member j < H gets
    ζ_j and member j + H gets −ζ_j (an odd last member its own draw). Each member's noise has the
    same law, but the noise's ensemble mean is exactly zero (J even), so the inflation no longer
    moves the ensemble mean at random (a random walk of variance sh/(1−sh)·Σ/J per step
    otherwise), and half the normals are drawn.

    ``generator``: 'threefry' (``jax.random``) or 'hash' (:func:`l2ljax.rows.hashed_normal_rows`,
    the same law from a cheap integer hash; on CPU the J × P draws cost a quarter as much).
    """
    if generator not in GENERATORS:
        raise StrategyError(f"additive inflation's generator must be one of {GENERATORS}, got {generator!r}")
    U = jnp.asarray(U)
    scale, step_size = jnp.asarray(scale, U.dtype), jnp.asarray(step_size, U.dtype)
    sh = scale * step_size
    if is_concrete(sh) and not 0 <= float(sh) < 1:
        raise StrategyError(f"additive inflation needs 0 <= scale·step_size < 1, got {float(sh)}")
    return _additive(key, U, jnp.clip(sh, 0.0, 0.999), None if std is None else jnp.asarray(std, U.dtype),
                     _rows(rows, U), bool(antithetic), generator)


@partial(jax.jit, static_argnames=("rows", "antithetic", "generator"))
def _additive(key: Array, U: Array, sh: Array, std: Array | None, rows: Rows, antithetic: bool,
              generator: str = "threefry") -> Array:
    if std is None:
        std = _std(U, rows)
    noise = (_antithetic_normal(key, rows, U.shape[1], U.dtype, generator) if antithetic
             else rows.normal(key, U.shape[1], U.dtype, generator))
    return U + jnp.sqrt(sh / (1 - sh)) * std * noise


def _antithetic_normal(key: Array, rows: Rows, width: int, dtype: Any, generator: str = "threefry") -> Array:
    """Row j < H = ⌊J/2⌋: z_j from ``fold_in(key, j)``; row j + H: −z_j; an odd last row: its own."""
    half = rows.total_rows // 2
    if rows.whole:  # draw each pair once
        z = normal_rows(key, jnp.arange(half), width, dtype, generator)
        last = [normal_rows(key, jnp.array([2 * half]), width, dtype, generator)] if rows.total_rows % 2 else []
        return jnp.concatenate([z, -z, *last])
    index = rows.indices()
    paired = index < 2 * half
    source = jnp.where(paired, index % jnp.maximum(half, 1), index)
    sign = jnp.where(paired & (index >= half), -1.0, 1.0).astype(dtype)
    return normal_rows(key, source, width, dtype, generator) * sign[:, None]


def ensemble_spread(U: Array, rows: Rows | None = None) -> Array:
    """Mean over the P coordinates of the per-coordinate (population) standard deviation of ``U``."""
    return _spread(jnp.asarray(U), _rows(rows, U))


@partial(jax.jit, static_argnames="rows")
def _spread(U: Array, rows: Rows) -> Array:
    return jnp.mean(_std(U, rows))


@jax.jit
def misfit(G: Array, y: Array) -> Array:
    """Mean squared error between the ensemble-mean output ``Ḡ`` and ``y`` (any trailing shape).

    All members count, so a failed (non-finite) member makes the misfit non-finite.
    """
    return jnp.mean((jnp.mean(jnp.asarray(G), axis=0) - y) ** 2)
