"""Covariance matrix adaptation evolution strategy: the (μ/μ_w, λ)-CMA-ES.

Hansen, "The CMA Evolution Strategy: A Tutorial", arXiv:1604.00772 (2016), Appendix A and
Table 1; equation numbers below are the tutorial's. Search distribution N(m, σ² C), C = B D² Bᵀ:

    y_k = B D z_k,  x_k = m + σ y_k,  z_k ~ N(0, I)                          k = 1..λ   (38–40)
    y_w = Σ_{i≤μ} w_i y_{i:λ};  m ← m + c_m σ y_w                                        (41–42)
    p_σ ← (1 − c_σ) p_σ + √(c_σ(2 − c_σ) μ_eff) C^{-1/2} y_w                              (43)
    σ ← σ exp(c_σ/d_σ (‖p_σ‖ / E‖N(0, I)‖ − 1))                                          (44)
    p_c ← (1 − c_c) p_c + h_σ √(c_c(2 − c_c) μ_eff) y_w                                   (45)
    w°_i = w_i · (1 if w_i ≥ 0 else n / ‖C^{-1/2} y_{i:λ}‖²)                              (46)
    C ← (1 + c_1 δ(h_σ) − c_1 − c_μ Σ w_j) C + c_1 p_c p_cᵀ + c_μ Σ_i w°_i y_{i:λ} y_{i:λ}ᵀ    (47)

with y_{i:λ} the i-th best sample, h_σ = 1 iff ‖p_σ‖/√(1 − (1 − c_σ)^{2(g+1)}) < (1.4 + 2/(n+1))
E‖N(0, I)‖, δ(h_σ) = (1 − h_σ) c_c (2 − c_c), E‖N(0, I)‖ ≈ √n (1 − 1/(4n) + 1/(21n²)).

Default strategy parameters (Table 1; n = dim): λ = 4 + ⌊3 ln n⌋, μ = ⌊λ/2⌋,
w'_i = ln((λ+1)/2) − ln i, μ_eff = (Σ_{i≤μ} w'_i)²/Σ_{i≤μ} w'_i² (μ_eff⁻ likewise over i > μ),
c_m = 1, c_σ = (μ_eff + 2)/(n + μ_eff + 5), d_σ = 1 + 2 max(0, √((μ_eff − 1)/(n + 1)) − 1) + c_σ,
c_c = (4 + μ_eff/n)/(n + 4 + 2μ_eff/n), c_1 = 2/((n + 1.3)² + μ_eff),
c_μ = min(1 − c_1, 2(μ_eff − 2 + 1/μ_eff)/((n + 2)² + μ_eff)) (the 2016 tutorial's form; pycma
adds 1/4 to the numerator's bracket), and the active (negative) weights
w_i = w'_i/Σ_{w'>0} w'_j for w'_i ≥ 0, else min(1 + c_1/c_μ, 1 + 2μ_eff⁻/(μ_eff + 2),
(1 − c_1 − c_μ)/(n c_μ)) · w'_i/Σ_{w'<0} |w'_j|  (``negative_weights=False``: 0).

L2L has no CMA-ES; names follow the tutorial. ``pop_size`` is λ (None → Table 1), ``sigma``
the initial step size (constructor argument; default 0.3·mean(upper − lower) when bounded,
else 1), ``x0`` of ``init`` the initial mean. The learning rates are ``CMAESParams`` (None →
Table 1, so they can be vmapped or tuned); the weights are re-derived from c_1 and c_μ.

Robustness: C is symmetrised and eigendecomposed every generation (dims are small), its
eigenvalues floored at 1e-14 of the largest. Non-finite scores rank last and get weight 0;
if fewer than μ samples are finite, the remaining positive weights are renormalised to sum
to 1 and μ_eff is that of the weights actually used; with no finite sample the state is
unchanged, as it is whenever an update would leave it non-finite. Samples y_k are recovered
from the evaluated (bound-clipped) population, y_k = (x_k − m)/σ.

Example::

    opt = CMAES(problem, sigma=0.5)                     # λ, μ, weights, rates from Table 1
    result = l2ljax.run(opt, problem, jax.random.key(0), n_generations=300)
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from l2ljax.core import Evaluation, Optimizee, Optimizer, Space, check_range, descending_ranks, is_concrete
from l2ljax.optimizers._common import initial_sigma, keep_finite

RATES = ("c_m", "c_sigma", "d_sigma", "c_c", "c_1", "c_mu")


@struct.dataclass
class CMAESParams:
    """Learning rates of the tutorial's Table 1; ``None`` means its default for (dim, λ)."""

    c_m: float | None = None
    c_sigma: float | None = None
    d_sigma: float | None = None
    c_c: float | None = None
    c_1: float | None = None
    c_mu: float | None = None


class CMAESState(NamedTuple):
    mean: jax.Array  # (n,) m
    sigma: jax.Array  # () step size σ
    p_sigma: jax.Array  # (n,) conjugate evolution path
    p_c: jax.Array  # (n,) evolution path
    C: jax.Array  # (n, n) covariance matrix
    B: jax.Array  # (n, n) eigenvectors of C (columns)
    D: jax.Array  # (n,) square roots of the eigenvalues of C
    generation: jax.Array  # () number of updates applied, g


def table1(n: int, lam: int) -> dict[str, Any]:
    """Default strategy parameters of the tutorial's Table 1 (float64 numpy)."""
    mu = lam // 2
    w_prime = math.log((lam + 1) / 2) - np.log(np.arange(1, lam + 1))
    pos, neg = w_prime[:mu], w_prime[mu:]
    mu_eff = pos.sum() ** 2 / np.square(pos).sum()
    mu_eff_minus = neg.sum() ** 2 / np.square(neg).sum()
    c_sigma = (mu_eff + 2) / (n + mu_eff + 5)
    c_1 = 2 / ((n + 1.3) ** 2 + mu_eff)
    return {
        "mu": mu, "w_prime": w_prime, "mu_eff": mu_eff, "mu_eff_minus": mu_eff_minus,
        "c_m": 1.0,
        "c_sigma": c_sigma,
        "d_sigma": 1 + 2 * max(0.0, math.sqrt((mu_eff - 1) / (n + 1)) - 1) + c_sigma,
        "c_c": (4 + mu_eff / n) / (n + 4 + 2 * mu_eff / n),
        "c_1": c_1,
        "c_mu": min(1 - c_1, 2 * (mu_eff - 2 + 1 / mu_eff) / ((n + 2) ** 2 + mu_eff)),
        "chi_n": math.sqrt(n) * (1 - 1 / (4 * n) + 1 / (21 * n ** 2)),
    }


def recombination_weights(w_prime: Any, mu_eff: float, mu_eff_minus: float, n: int, c_1: Any, c_mu: Any,
                          negative: bool = True) -> jax.Array:
    """Table 1's weights from w' (positive part sums to 1; negative part scaled by the α⁻ bound)."""
    w_prime = jnp.asarray(w_prime)
    positive = w_prime >= 0
    w_pos = w_prime / jnp.sum(jnp.where(positive, w_prime, 0.0))
    if not negative:
        return jnp.where(positive, w_pos, 0.0)
    safe_c_mu = jnp.where(c_mu > 0, c_mu, 1.0)
    alpha = jnp.minimum(jnp.minimum(1 + c_1 / safe_c_mu, 1 + 2 * mu_eff_minus / (mu_eff + 2)),
                        (1 - c_1 - c_mu) / (n * safe_c_mu))
    neg_sum = jnp.maximum(jnp.sum(jnp.where(positive, 0.0, -w_prime)), 1e-30)
    w_neg = jnp.where(c_mu > 0, alpha * w_prime / neg_sum, 0.0)
    return jnp.where(positive, w_pos, w_neg)


class CMAES(Optimizer):
    name = "CMAES"
    Params = CMAESParams

    def __init__(self, space: Space | Optimizee, pop_size: int | None = None, *, sigma: float | None = None,
                 negative_weights: bool = True):
        space = space.space if isinstance(space, Optimizee) else space
        n = space.dim
        if pop_size is None:
            pop_size = 4 + math.floor(3 * math.log(n))
        super().__init__(space, pop_size)
        if self.pop_size < 2:
            raise ValueError(f"{self.name}: pop_size (λ) must be at least 2, got {pop_size}")
        if sigma is not None and np.ndim(sigma) != 0:
            raise ValueError(f"{self.name}: sigma must be a scalar step size, got shape {np.shape(sigma)}")
        self.sigma0 = float(np.mean(initial_sigma(self.space, sigma, self.name)))
        self.negative_weights = bool(negative_weights)
        self.strategy = table1(n, self.pop_size)
        self.mu = self.strategy["mu"]

    @property
    def default_params(self) -> CMAESParams:
        return self.Params(**{name: float(self.strategy[name]) for name in RATES})

    def resolve(self, params: CMAESParams) -> CMAESParams:
        """Replace ``None`` rates by Table 1's."""
        return params.replace(**{name: float(self.strategy[name]) for name in RATES if getattr(params, name) is None})

    def weights(self, params: CMAESParams | None = None) -> jax.Array:
        """(λ,) recombination weights by rank, best first, for the given (or default) c_1, c_μ."""
        params = self.resolve(self.Params() if params is None else params)
        s = self.strategy
        return recombination_weights(s["w_prime"], s["mu_eff"], s["mu_eff_minus"], self.space.dim,
                                     params.c_1, params.c_mu, self.negative_weights)

    def _check_params(self, params: CMAESParams) -> None:
        params = self.resolve(params)
        check_range(params, "c_m", 0.0, 1.0, lo_open=True, owner=self.name)
        check_range(params, "c_sigma", 0.0, 1.0, lo_open=True, hi_open=True, owner=self.name)
        check_range(params, "d_sigma", 0.0, float("inf"), lo_open=True, owner=self.name)
        check_range(params, "c_c", 0.0, 1.0, lo_open=True, owner=self.name)
        check_range(params, "c_1", 0.0, 1.0, owner=self.name)
        check_range(params, "c_mu", 0.0, 1.0, owner=self.name)
        total = params.c_1 + params.c_mu
        if is_concrete(total) and np.any(np.asarray(total) > 1):
            raise ValueError(f"{self.name}: c_1 + c_mu must not exceed 1, got {params.c_1} + {params.c_mu}")

    def _init(self, key: jax.Array, x0: jax.Array, params: Any) -> CMAESState:
        n, dtype = x0.shape[0], x0.dtype
        eye = jnp.eye(n, dtype=dtype)
        zeros = jnp.zeros(n, dtype)
        return CMAESState(x0, jnp.asarray(self.sigma0, dtype), zeros, zeros, eye, eye, jnp.ones(n, dtype),
                          jnp.array(0, jnp.int32))

    def _ask(self, key: jax.Array, inner: CMAESState, params: Any) -> jax.Array:
        z = jax.random.normal(key, (self.pop_size, inner.mean.shape[0]), inner.mean.dtype)
        return inner.mean + inner.sigma * (z * inner.D) @ inner.B.T

    def _tell(self, inner: CMAESState, population: jax.Array, evaluation: Evaluation,
              params: CMAESParams) -> CMAESState:
        p = params  # complete: init resolved them
        n, dtype = population.shape[1], population.dtype
        chi_n = self.strategy["chi_n"]
        score = evaluation.score
        valid = jnp.isfinite(score)
        w = jnp.where(valid, self.weights(p).astype(dtype)[descending_ranks(score)], 0.0)
        w_pos = jnp.maximum(w, 0.0)
        pos_total = jnp.sum(w_pos)
        w_pos = w_pos / jnp.where(pos_total > 0, pos_total, 1.0)
        w = jnp.where(w > 0, w_pos, w)
        mu_eff = 1.0 / jnp.maximum(jnp.sum(jnp.square(w_pos)), 1e-30)

        y = (population - inner.mean) / inner.sigma
        y_w = w_pos @ y
        mean = self.space.clip(inner.mean + p.c_m * inner.sigma * y_w)
        c_inv_sqrt = (inner.B / inner.D) @ inner.B.T
        p_sigma = (1 - p.c_sigma) * inner.p_sigma + jnp.sqrt(p.c_sigma * (2 - p.c_sigma) * mu_eff) * (c_inv_sqrt @ y_w)
        norm_p_sigma = jnp.linalg.norm(p_sigma)
        sigma = inner.sigma * jnp.exp(p.c_sigma / p.d_sigma * (norm_p_sigma / chi_n - 1))
        g = inner.generation + 1
        h_sigma = (norm_p_sigma / jnp.sqrt(1 - (1 - p.c_sigma) ** (2 * g)) < (1.4 + 2 / (n + 1)) * chi_n).astype(dtype)
        p_c = (1 - p.c_c) * inner.p_c + h_sigma * jnp.sqrt(p.c_c * (2 - p.c_c) * mu_eff) * y_w
        mahalanobis = jnp.sum(jnp.square(y @ c_inv_sqrt), axis=1)
        w_circ = w * jnp.where(w < 0, n / jnp.maximum(mahalanobis, 1e-30), 1.0)
        delta_h = (1 - h_sigma) * p.c_c * (2 - p.c_c)
        C = ((1 + p.c_1 * delta_h - p.c_1 - p.c_mu * jnp.sum(w)) * inner.C + p.c_1 * jnp.outer(p_c, p_c)
             + p.c_mu * (w_circ * y.T) @ y)
        C, B, D = _eigen(C)

        new = CMAESState(mean, sigma.astype(dtype), p_sigma, p_c, C, B, D, g)
        return keep_finite(new, inner, jnp.any(valid) & (sigma > 0))

    def diagnostics(self, state: Any) -> dict[str, jax.Array]:
        inner = state.inner
        return {"sigma": inner.sigma, "axis_ratio": jnp.max(inner.D) / jnp.min(inner.D)}

    def config(self) -> dict[str, Any]:
        return {**super().config(), "sigma": self.sigma0, "mu": self.mu, "negative_weights": self.negative_weights}


def _eigen(C: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Symmetrise C, eigendecompose, floor the eigenvalues; returns (C rebuilt, B, D)."""
    C = 0.5 * (C + C.T)
    eigenvalues, B = jnp.linalg.eigh(C)
    eigenvalues = jnp.maximum(eigenvalues, 1e-14 * jnp.max(jnp.abs(eigenvalues)) + 1e-30)
    return (B * eigenvalues) @ B.T, B, jnp.sqrt(eigenvalues)
