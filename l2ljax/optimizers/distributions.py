"""Gaussian mixtures for the cross-entropy optimizers, fitted by a fixed number of weighted EM steps.

A mixture of K Gaussians p(x) = Σ_k π_k N(x | μ_k, Σ_k). Given samples x_i with
nonnegative weights w_i (CE passes 1 for kept samples, 0 for the rest), each EM iteration
(Dempster, Laird & Rubin 1977; Bishop, *Pattern Recognition and Machine Learning* §9.2) does

    E:  r_ik = π_k N(x_i | μ_k, Σ_k) / Σ_l π_l N(x_i | μ_l, Σ_l)
    M:  n_k = Σ_i w_i r_ik
        π_k = (n_k + c·π_k) / (Σ_l n_l + c),       then π_k ← max(π_k, min_weight), renormalised
        μ_k = (Σ_i w_i r_ik x_i + c·μ_k) / (n_k + c)
        Σ_k = (Σ_i w_i r_ik (x_i−μ_k)(x_i−μ_k)ᵀ + n_k·reg_covar·I + c·Σ_k) / (n_k + c)

with c = 1e-6 pseudo-samples of the current parameters: negligible for a component that
holds data, but a component that holds none (n_k = 0) keeps its parameters instead of
dividing 0 by 0, and its weight stays at ``min_weight``, so no component dies with NaN.
``reg_covar`` (as in scikit-learn) keeps every covariance positive definite. A row of
weight 0 is replaced by zeros before the E-step and contributes exact zeros, so it has no
influence (fitting with zero weights equals fitting the subset, up to summation order).

``fit`` warm-starts from the current mixture and runs ``n_iter`` iterations (a fixed shape
and trip count, so it jits and vmaps), then blends: θ ← smoothing·θ_old + (1−smoothing)·θ_EM,
component by component (the warm start keeps component k of the old and new mixtures the
same component). ``from_moments(mean, std)`` places the components at mean + std·o_k/2 with
fixed offsets o_k (centred, unit mean square per coordinate, drawn once from
``jax.random.key(0)``; for K = 2 they are ±1 per coordinate) and covariances (3/4)·std²·I,
so the mixture has exactly the given mean and per-coordinate variance std².

This replaces L2L's ``BayesianGaussianMixture(n_components=2, **sklearn_kwargs)`` (scikit-learn's
variational mixture refitted from scratch each generation) and
``NoisyBayesianGaussianMixture(n_components, noise_magnitude=1, coordinate_scale=None,
noise_decay=0.95)``: a maximum-likelihood mixture with a weight floor in place of the
Dirichlet prior that switches unused components off.

Example::

    opt = l2ljax.CrossEntropy(problem, pop_size=60, distribution=GaussianMixture(n_components=3))
    result = l2ljax.run(opt, problem, jax.random.key(0), n_generations=40)
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax.scipy.linalg import solve_triangular

from l2ljax.core import Frozen, check_positive_int
from l2ljax.optimizers._common import check_noise, draw_noise, jittered_cholesky

_PRIOR_COUNT = 1e-6  # pseudo-samples of the current parameters in each M-step (see module docstring)


class MixtureState(NamedTuple):
    weights: jax.Array  # (K,) component weights π, summing to 1
    means: jax.Array  # (K, dim)
    covs: jax.Array  # (K, dim, dim), or (K, dim) variances when diagonal


class GaussianMixture(Frozen):
    """Mixture of ``n_components`` Gaussians refitted by ``n_iter`` weighted EM iterations.

    ``diagonal=True`` keeps only per-component variances (for large dim). ``reg_covar > 0``
    is added to every fitted variance; ``min_weight`` (< 1/n_components) floors the component
    weights. See the module docstring for the update.
    """

    name = "GaussianMixture"

    def __init__(self, n_components: int = 2, diagonal: bool = False, n_iter: int = 10, reg_covar: float = 1e-6,
                 min_weight: float = 1e-3):
        self.n_components = check_positive_int(n_components, "n_components")
        self.n_iter = check_positive_int(n_iter, "n_iter")
        if not (math.isfinite(reg_covar) and reg_covar > 0):
            raise ValueError(f"{self.name}: reg_covar must be positive and finite, got {reg_covar}")
        if not 0 <= min_weight < 1 / self.n_components:
            raise ValueError(f"{self.name}: min_weight must lie in [0, 1/n_components) = "
                             f"[0, {1 / self.n_components:.4g}), got {min_weight}")
        self.diagonal = bool(diagonal)
        self.reg_covar, self.min_weight = float(reg_covar), float(min_weight)

    # -- protocol
    def from_moments(self, mean: jax.Array, std: jax.Array) -> MixtureState:
        k, dim, dtype = self.n_components, mean.shape[0], mean.dtype
        var = jnp.broadcast_to(jnp.square(std), mean.shape).astype(dtype)
        offsets = jax.random.normal(jax.random.key(0), (k, dim), dtype)
        offsets = offsets - jnp.mean(offsets, axis=0)
        rms = jnp.sqrt(jnp.mean(jnp.square(offsets), axis=0))
        offsets = jnp.where(rms > 0, offsets / jnp.where(rms > 0, rms, 1.0), 0.0)  # K = 1: no offset
        spread = 0.5 if k > 1 else 0.0
        means = mean + spread * jnp.sqrt(var) * offsets
        comp_var = jnp.broadcast_to((1 - spread**2) * var, (k, dim))
        covs = comp_var if self.diagonal else jax.vmap(jnp.diag)(comp_var)
        return MixtureState(jnp.full(k, 1.0 / k, dtype), means, covs)

    def sample(self, key: jax.Array, state: MixtureState, n: int) -> jax.Array:
        """Component indices drawn by weight, then a Gaussian draw from each chosen component."""
        k_comp, k_z = jax.random.split(key)
        comp = jax.random.categorical(k_comp, jnp.log(state.weights), shape=(n,))
        z = jax.random.normal(k_z, (n, state.means.shape[1]), state.means.dtype)
        if self.diagonal:
            return state.means[comp] + z * jnp.sqrt(state.covs[comp])
        chol = jax.vmap(jittered_cholesky)(state.covs)  # (K, dim, dim)
        steps = jnp.einsum("kij,nj->kni", chol, z)  # every draw under every component: K·n·dim memory
        return state.means[comp] + steps[comp, jnp.arange(n)]

    def fit(self, key: jax.Array, state: MixtureState, samples: jax.Array, weights: jax.Array,
            smoothing: jax.Array) -> MixtureState:
        """``n_iter`` weighted EM iterations from ``state``, blended with ``state`` by ``smoothing``."""
        used = weights > 0
        x = jnp.where(used[:, None], samples, 0.0)
        w = jnp.where(used, weights, 0.0)
        new = jax.lax.fori_loop(0, self.n_iter, lambda _, s: self._em_step(s, x, w), state)
        return jax.tree_util.tree_map(lambda old, fitted: smoothing * old + (1 - smoothing) * fitted, state, new)

    def spread(self, state: MixtureState) -> jax.Array:
        """Per-coordinate standard deviation of the whole mixture."""
        var = state.covs if self.diagonal else jnp.diagonal(state.covs, axis1=1, axis2=2)
        mean = state.weights @ state.means
        second = state.weights @ (var + jnp.square(state.means))
        return jnp.sqrt(jnp.maximum(second - jnp.square(mean), 0.0))

    def config(self) -> dict[str, Any]:
        return {"name": self.name, "n_components": self.n_components, "diagonal": self.diagonal,
                "n_iter": self.n_iter, "reg_covar": self.reg_covar, "min_weight": self.min_weight}

    # -- EM
    def log_density(self, state: MixtureState, x: jax.Array) -> jax.Array:
        """(n, K) log N(x_i | μ_k, Σ_k)."""
        dim = x.shape[1]
        if self.diagonal:
            diff = x[:, None, :] - state.means[None]  # (n, K, dim)
            maha = jnp.sum(jnp.square(diff) / state.covs, axis=-1)
            logdet = jnp.sum(jnp.log(state.covs), axis=-1)
        else:
            chol = jax.vmap(jittered_cholesky)(state.covs)
            diff = x[None] - state.means[:, None]  # (K, n, dim)
            whitened = jax.vmap(lambda c, d: solve_triangular(c, d.T, lower=True))(chol, diff)  # (K, dim, n)
            maha = jnp.sum(jnp.square(whitened), axis=1).T
            logdet = 2 * jnp.sum(jnp.log(jnp.diagonal(chol, axis1=1, axis2=2)), axis=-1)
        return -0.5 * (dim * math.log(2 * math.pi) + logdet + maha)

    def responsibilities(self, state: MixtureState, x: jax.Array) -> jax.Array:
        """(n, K) posterior component probabilities r_ik."""
        return jax.nn.softmax(jnp.log(state.weights) + self.log_density(state, x), axis=1)

    def _em_step(self, state: MixtureState, x: jax.Array, w: jax.Array) -> MixtureState:
        c = _PRIOR_COUNT
        resp = self.responsibilities(state, x) * w[:, None]  # (n, K)
        nk = jnp.sum(resp, axis=0)
        weights = (nk + c * state.weights) / (jnp.sum(nk) + c)
        weights = jnp.maximum(weights, self.min_weight)
        weights = weights / jnp.sum(weights)
        means = (resp.T @ x + c * state.means) / (nk + c)[:, None]
        diff = x[None] - means[:, None]  # (K, n, dim)
        if self.diagonal:
            scatter = jnp.einsum("nk,knd->kd", resp, jnp.square(diff))
            covs = (scatter + nk[:, None] * self.reg_covar + c * state.covs) / (nk + c)[:, None]
        else:
            scatter = jnp.einsum("kni,knj->kij", diff * resp.T[:, :, None], diff)
            scatter = 0.5 * (scatter + jnp.swapaxes(scatter, 1, 2))
            ridge = nk[:, None, None] * self.reg_covar * jnp.eye(x.shape[1], dtype=x.dtype)
            covs = (scatter + ridge + c * state.covs) / (nk + c)[:, None, None]
        return MixtureState(weights, means, covs)


class NoisyMixtureState(NamedTuple):
    weights: jax.Array
    means: jax.Array
    covs: jax.Array  # fitted covariances, without noise
    noise: jax.Array  # (K, dim) variance added to each component's diagonal when sampling
    magnitude: jax.Array  # current noise magnitude, decays by noise_decay per fit


class NoisyGaussianMixture(GaussianMixture):
    """Gaussian mixture whose sampling covariances get extra diagonal variance that decays.

    After each fit, noise_ki = |N(0, (magnitude·coordinate_scale_i)²)| is added to the i-th
    variance of component k for sampling (not to the fitted covariances), then magnitude ←
    magnitude·noise_decay: the convention of :class:`~l2ljax.optimizers.cross_entropy.NoisyGaussian`,
    per component as in L2L's ``NoisyBayesianGaussianMixture``.
    """

    name = "NoisyGaussianMixture"

    def __init__(self, n_components: int = 2, noise_magnitude: float = 1.0, coordinate_scale: Any = None,
                 noise_decay: float = 0.95, diagonal: bool = False, n_iter: int = 10, reg_covar: float = 1e-6,
                 min_weight: float = 1e-3):
        super().__init__(n_components, diagonal, n_iter, reg_covar, min_weight)
        self.noise_magnitude, self.coordinate_scale, self.noise_decay = check_noise(
            noise_magnitude, coordinate_scale, noise_decay, self.name)

    @staticmethod
    def _fitted(state: NoisyMixtureState) -> MixtureState:
        return MixtureState(state.weights, state.means, state.covs)

    def _noisy(self, state: NoisyMixtureState) -> MixtureState:
        covs = state.covs + state.noise if self.diagonal else state.covs + jax.vmap(jnp.diag)(state.noise)
        return MixtureState(state.weights, state.means, covs)

    def from_moments(self, mean: jax.Array, std: jax.Array) -> NoisyMixtureState:
        base = super().from_moments(mean, std)
        return NoisyMixtureState(*base, jnp.zeros_like(base.means), jnp.asarray(self.noise_magnitude, mean.dtype))

    def sample(self, key: jax.Array, state: NoisyMixtureState, n: int) -> jax.Array:
        return super().sample(key, self._noisy(state), n)

    def fit(self, key: jax.Array, state: NoisyMixtureState, samples: jax.Array, weights: jax.Array,
            smoothing: jax.Array) -> NoisyMixtureState:
        base = super().fit(key, self._fitted(state), samples, weights, smoothing)
        noise = draw_noise(key, state.magnitude, self.coordinate_scale, state.means.shape, samples.dtype)
        return NoisyMixtureState(*base, noise, state.magnitude * self.noise_decay)

    def spread(self, state: NoisyMixtureState) -> jax.Array:
        return super().spread(self._noisy(state))

    def config(self) -> dict[str, Any]:
        return {**super().config(), "noise_magnitude": self.noise_magnitude,
                "coordinate_scale": self.coordinate_scale, "noise_decay": self.noise_decay}
