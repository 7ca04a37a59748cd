r"""Localization of the ensemble covariances: Schur products that damp spurious sample correlations.

With J members, a sample correlation whose true value is r has standard deviation
≈ (1 − r²)/√J, so most of the P·M entries of ``C_up`` (P = 18,050 weights × M = 640 outputs for
the LOD CNN) are noise of size ≈ 1/√J. Localization multiplies each entry by a weight
``ρ_ij ∈ [0, 1]``::

    C_up ← ρ_up ∘ C_up,    C_pp ← ρ_pp ∘ C_pp,    K = (ρ_up ∘ C_up)(ρ_pp ∘ C_pp + Γ/h)⁻¹

Every localizer here is *distance-free*: the weights are functions of the sample correlation
``r`` itself and of J (there is no meaningful distance between a network weight and a logit).
``RBF``-type kernels need a distance and are not provided.

- :class:`SEC` — sampling-error correction, Lee (2021), *Sampling error correction in ensemble
  Kalman inversion*, arXiv:2105.11341: ``ρ = |r|^α``, entries with ``|r|^{1+α} ≤ cutoff`` set
  to 0.
- :class:`SECNice` — Vishny, Morzfeld et al. (2024), doi:10.22541/essoar.171501094.44068137/v1
  (the reference of EnsembleKalmanProcesses' ``SECNice``):
  the amount of SEC is chosen per block by a discrepancy principle: shrink as much as the
  sampling noise allows, ``‖r ∘ (1 − ρ)‖_F ≈ δ ‖σ_r‖_F`` with ``σ_r = (1 − r²)/√J``. No tuning
  (``δ = 1``). Its weights tend to 1 (no localization) as J grows. The recommended default.
- :class:`SECFisher` — Flowerdew (2015), *Towards a theory of optimal localisation*, Tellus A
  67:25257, as used for EKI by Lee (2021): ``ρ = Q²/(1 + Q²)``, ``Q = r/σ_r`` with σ_r from the
  Fisher transform (``atanh r`` has standard deviation 1/√(J − 3)). No tuning; → 1 as J grows.
- :class:`BernoulliDropout` — a random mask: each u–G entry kept with probability ``keep``
  (EnsembleKalmanProcesses' ``BernoulliDropout``), redrawn every update; ``C_pp`` untouched.

The weights are only ever formed for the blocks the update uses (``up``: M×P, ``pp``: M×M),
never for a P×P matrix. Localizing forces the observation form of the update (see
:mod:`l2ljax.kalman.eki`), costing ≈ 2·J·M·P flops and M·P memory per update; for the LOD CNN at
J = 500 that is ≈ 11.6 GFLOP and 46 MB (float32), plus a few elementwise passes over the 11.6 M
entries (SECNice: one per bisection step, on a fixed subsample of at most 2¹⁶ entries).

Localizers are ``flax.struct`` pytrees: continuous fields are leaves (vmappable, schedulable
inside the optimizer's ``Params``), integer fields are static.

Example::

    U = kalman.eki_update(key, U, G, y, 0.01, localizer=SECNice())
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct

Array = jax.Array

__all__ = ["BernoulliDropout", "SEC", "SECFisher", "SECNice", "sampling_std"]

_TINY = 1e-12


def sampling_std(r: Array, n: Array | float) -> Array:
    """Standard deviation of a sample correlation from n draws when the true one is r: (1 − r²)/√n."""
    return (1.0 - r * r) / jnp.sqrt(jnp.maximum(n, 1.0))


@struct.dataclass
class SEC:
    """Sampling-error correction ``ρ = |r|^α`` with a cutoff (Lee 2021).

    alpha: the exponent (0: no correction; Lee uses 1–2). cutoff: entries whose corrected
    correlation ``|r|^{1+α}`` is at most ``cutoff`` are dropped (0: none).
    """

    alpha: float = 1.0
    cutoff: float = 0.0

    def weights(self, key: Array, r: Array, n: Array, block: str) -> Array:
        a = jnp.abs(r)
        rho = jnp.power(jnp.maximum(a, _TINY), self.alpha)
        return jnp.where(a * rho > self.cutoff, rho, 0.0)


@struct.dataclass
class SECFisher:
    """Flowerdew's (2015) optimal shrinkage of a sample correlation, ``ρ = Q²/(1 + Q²)``.

    ``Q = r/σ_r`` is the correlation over its sampling standard deviation, taken from the Fisher
    transform: ``s = atanh r`` has standard deviation ``1/√(n − 3)``, so
    ``σ_r = (tanh(s + 1/√(n−3)) − tanh(s − 1/√(n−3)))/2``. Tuning-free.
    """

    def weights(self, key: Array, r: Array, n: Array, block: str) -> Array:
        r = jnp.clip(r, -1 + 1e-6, 1 - 1e-6)
        s, width = jnp.arctanh(r), jax.lax.rsqrt(jnp.maximum(n - 3.0, 1.0))
        sigma = (jnp.tanh(s + width) - jnp.tanh(s - width)) / 2
        q2 = (r / sigma) ** 2
        return q2 / (1.0 + q2)


@struct.dataclass
class SECNice:
    r"""Tuning-free sampling-error correction by a discrepancy principle (Vishny et al. 2024).

    The weights form a one-parameter family that is positive semi-definite for every t ≥ 0
    (even Schur powers of a correlation matrix, and convex combinations of them, are PSD)::

        ρ(t) = (1 − f) r^{∘2k} + f r^{∘2k+2},    k = ⌊t⌋, f = t − k,      ρ(0) = 1

    and, per block (``up`` and ``pp`` separately), t is the largest value in
    ``[0, max_power/2]`` with ``‖r ∘ (1 − ρ(t))‖_F ≤ δ ‖σ_r‖_F``, ``σ_r = (1 − r²)/√n``: the
    correction removes as much correlation as is indistinguishable from sampling noise. Found by
    ``steps`` bisection steps (the discrepancy grows with t); for blocks of more than 2¹⁶ entries
    the two norms are estimated on a fixed, evenly strided subsample of 2¹⁶ entries. As n → ∞,
    σ_r → 0, so t → 0 and ρ → 1.

    This keeps the principle of EnsembleKalmanProcesses' ``SECNice`` (even powers 2..10 and a
    linear interpolation) but searches a continuous exponent and uses the textbook
    ``(1 − r²)/√n`` (EKP uses ``(1 − r)/√n``).
    """

    delta_up: float = 1.0
    delta_pp: float = 1.0
    max_power: int = struct.field(pytree_node=False, default=10)
    steps: int = struct.field(pytree_node=False, default=14)

    def exponent(self, r: Array, n: Array, block: str) -> Array:
        """The chosen t for correlations ``r`` of one block."""
        sample = r.reshape(-1)
        if sample.size > 2**16:
            sample = sample[:: sample.size // 2**16][: 2**16]
        delta = self.delta_up if block == "up" else self.delta_pp
        tolerance = delta * jnp.sqrt(jnp.mean(sampling_std(sample, n) ** 2))
        log_r2 = jnp.log(jnp.maximum(sample * sample, _TINY))

        def discrepancy(t: Array) -> Array:
            return jnp.sqrt(jnp.mean((sample * (1.0 - _family(log_r2, t))) ** 2))

        def bisect(_, bounds: tuple[Array, Array]) -> tuple[Array, Array]:
            lo, hi = bounds
            mid = (lo + hi) / 2
            ok = discrepancy(mid) <= tolerance
            return jnp.where(ok, mid, lo), jnp.where(ok, hi, mid)

        lo, _ = jax.lax.fori_loop(0, self.steps, bisect,
                                  (jnp.zeros((), r.dtype), jnp.asarray(self.max_power / 2, r.dtype)))
        return lo

    def weights(self, key: Array, r: Array, n: Array, block: str) -> Array:
        t = self.exponent(r, n, block)
        return _family(jnp.log(jnp.maximum(r * r, _TINY)), t)


def _family(log_r2: Array, t: Array) -> Array:
    k = jnp.floor(t)
    f = t - k
    low = jnp.exp(k * log_r2)
    return low * ((1.0 - f) + f * jnp.exp(log_r2))


@struct.dataclass
class BernoulliDropout:
    """Random localization: each u–G cross-covariance entry kept with probability ``keep``.

    A fresh mask every update (and every sample of a sequential batch); ``C_pp`` is not masked, so
    the solve stays positive definite. EnsembleKalmanProcesses' ``BernoulliDropout``. Distance-
    and correlation-free; like every localizer it takes the update out of the ensemble's span.
    """

    keep: float = 0.9

    def weights(self, key: Array, r: Array, n: Array, block: str) -> Array:
        if block == "pp":
            return jnp.ones_like(r)
        return jax.random.bernoulli(key, self.keep, r.shape).astype(r.dtype)
