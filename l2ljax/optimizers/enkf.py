"""Ensemble Kalman filter (ensemble Kalman inversion) as an l2ljax optimizer: no gradients.

Iglesias, Law & Stuart (2013), Inverse Problems 29:045001; for network weights Kovachki & Stuart
(2019) and Yegenoglu et al. (LOD 2020). The population IS the ensemble U (J, P): ``ask`` returns
it unchanged, the optimizee returns each member's outputs G(u_j) (J, M) and the observations y
(M,) (e.g. logits and one-hot labels of a minibatch), and ``tell`` moves every member by

    u_j ← u_j + C_up (C_pp + Γ/h)⁻¹ (y_j − G(u_j))          (see :mod:`l2ljax.kalman`)

So one generation is one ensemble forward pass plus one update. Fitness (e.g. minibatch
accuracy) is only tracked, it does not drive the update; members whose outputs or fitness are
non-finite are left out of the statistics and resampled.

Options: ``sequential=True`` assimilates the B samples of a batch one at a time (the LOD
protocol; outputs must be ordered sample-major, ``outputs_per_sample`` = K values each);
``stochastic`` perturbed observations; Γ = ``gamma``·I or the full matrix ``noise_cov``;
``step_size`` h, times ``step_schedule(iteration)`` when given (any optax schedule, e.g.
``optax.exponential_decay``); multiplicative ``inflation`` of the prior ensemble; ``init_std``: the initial
ensemble N(x0, init_std²) instead of draws of the optimizee's sampler. Repeating a batch
(LOD's ``repetitions``) is the optimizee's data schedule (:func:`l2ljax.optimizees.mnist`).
L2L names: ``gamma``, ``pop_size`` (J), ``n_iteration``/``maxit`` (generations).

Example::

    data = l2ljax.data.load_mnist()
    problem = l2ljax.optimizees.mnist.mnist_optimizee(data.train_images, data.train_labels, repetitions=8)
    opt = EnsembleKalmanFilter(problem, pop_size=5000, sequential=True, outputs_per_sample=10)
    result = l2ljax.run(opt, problem, key, 7500, summary=True)
    weights = opt.ensemble_mean(result.state)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from l2ljax import kalman
from l2ljax.core import Evaluation, Optimizee, Optimizer, OptState, Space, check_positive_int, check_range


@struct.dataclass
class EnsembleKalmanParams:
    gamma: float = 0.01
    step_size: float = 1.0
    inflation: float = 1.0


class EnsembleKalmanState(NamedTuple):
    ensemble: jax.Array  # (J, P)
    misfit: jax.Array  # mean squared error of the ensemble-mean output before the last update
    iteration: jax.Array  # updates done, the argument of step_schedule
    key: jax.Array


class EnsembleKalmanFilter(Optimizer):
    name = "EnsembleKalmanFilter"
    Params = EnsembleKalmanParams

    def __init__(self, space: Space | Optimizee, pop_size: int = 100, *, sequential: bool = False,
                 outputs_per_sample: int | None = None, stochastic: bool = False,
                 noise_cov: Any = None, form: str = "auto", init_std: float | None = None,
                 step_schedule: Callable[[jax.Array], jax.Array] | None = None):
        super().__init__(space, pop_size)
        if self.pop_size < 2:
            raise ValueError(f"an ensemble needs at least 2 members, got pop_size={pop_size}")
        if sequential:
            self.outputs_per_sample = check_positive_int(outputs_per_sample, "outputs_per_sample")
        else:
            self.outputs_per_sample = outputs_per_sample
        if form not in ("auto", "ensemble", "observation"):
            raise ValueError(f"form must be 'auto', 'ensemble' or 'observation', got {form!r}")
        if init_std is not None and not init_std > 0:
            raise ValueError(f"init_std must be positive, got {init_std}")
        self.noise_cov = None
        if noise_cov is not None:
            cov = np.asarray(noise_cov, np.float64)
            if cov.ndim != 2 or cov.shape[0] != cov.shape[1] or not np.all(np.isfinite(cov)):
                raise ValueError(f"noise_cov must be a finite square matrix, got shape {cov.shape}")
            if not np.allclose(cov, cov.T) or np.linalg.eigvalsh(cov).min() <= 0:
                raise ValueError("noise_cov must be symmetric positive definite")
            self.noise_cov = cov
        self.sequential, self.stochastic, self.form, self.init_std = sequential, stochastic, form, init_std
        self.step_schedule = step_schedule

    def _check_params(self, params: EnsembleKalmanParams) -> None:
        check_range(params, "gamma", 0.0, float("inf"), lo_open=True, owner=self.name)
        check_range(params, "step_size", 0.0, float("inf"), lo_open=True, owner=self.name)
        check_range(params, "inflation", 0.0, float("inf"), lo_open=True, owner=self.name)

    def init(self, key: jax.Array, params: Any = None, x0: Any = None) -> OptState:
        """Fresh ensemble: ``pop_size`` draws of the optimizee's sampler, or N(x0, init_std²) with ``init_std``."""
        if x0 is not None and self.init_std is None:
            raise ValueError("EnsembleKalmanFilter centres the initial ensemble on x0 only with init_std=...; "
                             "without it the members are draws of the optimizee's sampler")
        return super().init(key, params, x0)

    def _init(self, key: jax.Array, x0: jax.Array, params: EnsembleKalmanParams) -> EnsembleKalmanState:
        k_members, k_state = jax.random.split(key)
        if self.init_std is None:
            ensemble = jax.vmap(self.space.sample)(jax.random.split(k_members, self.pop_size))
        else:
            ensemble = x0 + self.init_std * jax.random.normal(k_members, (self.pop_size, x0.shape[0]), x0.dtype)
        return EnsembleKalmanState(self.space.clip(ensemble.astype(x0.dtype)), jnp.array(jnp.nan, x0.dtype),
                                   jnp.array(0, jnp.int32), k_state)

    def _ask(self, key: jax.Array, inner: EnsembleKalmanState, params: EnsembleKalmanParams) -> jax.Array:
        return inner.ensemble

    def _tell(self, inner: EnsembleKalmanState, population: jax.Array, evaluation: Evaluation,
              params: EnsembleKalmanParams) -> EnsembleKalmanState:
        if evaluation.outputs is None or evaluation.targets is None:
            raise ValueError("EnsembleKalmanFilter needs an optimizee that returns outputs and targets "
                             "(an Optimizee with `data`)")
        key, k_update = jax.random.split(inner.key)
        outputs = evaluation.outputs.astype(population.dtype)
        targets = evaluation.targets.astype(population.dtype)
        valid = jnp.isfinite(evaluation.score)
        noise = params.gamma if self.noise_cov is None else jnp.asarray(self.noise_cov, population.dtype)
        prior = kalman.inflate(population, params.inflation)
        step_size = params.step_size
        if self.step_schedule is not None:
            step_size = step_size * jnp.asarray(self.step_schedule(inner.iteration), population.dtype)
        if self.sequential:
            k = self.outputs_per_sample
            n = population.shape[0]
            if outputs.shape[1] % k:
                raise ValueError(f"the optimizee returns {outputs.shape[1]} outputs per member, not a multiple of "
                                 f"outputs_per_sample={k}")
            ensemble = kalman.eki_update_sequential(
                k_update, prior, outputs.reshape(n, -1, k), targets.reshape(-1, k), noise,
                stochastic=self.stochastic, step_size=step_size, form=self.form, valid=valid)
        else:
            ensemble = kalman.eki_update(k_update, prior, outputs, targets, noise, stochastic=self.stochastic,
                                         step_size=step_size, form=self.form, valid=valid)
        finite_outputs = jnp.where(valid[:, None], outputs, 0.0)
        mean_output = jnp.sum(finite_outputs, 0) / jnp.maximum(jnp.sum(valid), 1)
        misfit = jnp.mean(jnp.square(mean_output - targets)).astype(population.dtype)
        return EnsembleKalmanState(self.space.clip(ensemble), misfit, inner.iteration + 1, key)

    def ensemble_mean(self, state: OptState) -> Any:
        """The ensemble-mean individual (pytree): the model LOD evaluates."""
        return self.space.unravel(jnp.mean(state.inner.ensemble, axis=0))

    def diagnostics(self, state: OptState) -> dict[str, jax.Array]:
        return {"misfit": state.inner.misfit, "spread": kalman.ensemble_spread(state.inner.ensemble)}

    def config(self) -> dict[str, Any]:
        return {**super().config(), "sequential": self.sequential, "outputs_per_sample": self.outputs_per_sample,
                "stochastic": self.stochastic, "form": self.form, "init_std": self.init_std,
                "noise_cov": None if self.noise_cov is None else self.noise_cov.shape}
