"""Ensemble Kalman filter (ensemble Kalman inversion) as an l2ljax optimizer: no gradients.

Iglesias, Law & Stuart (2013), Inverse Problems 29:045001; for network weights Kovachki & Stuart
(2019) and Yegenoglu et al. (LOD 2020). The population IS the ensemble U (J, P): ``ask`` returns
it unchanged, the optimizee returns each member's outputs G(u_j) (J, M) and the observations y
(M,) (e.g. logits and one-hot labels of a minibatch), and ``tell`` moves every member by

    u_j ← u_j + C_up (C_pp + Γ/h)⁻¹ (y_j − G(u_j))          (see :mod:`l2ljax.kalman`)

So one generation is one ensemble forward pass plus one update. Fitness (e.g. minibatch
accuracy) is only tracked, it does not drive the update; members whose outputs or fitness are
non-finite are left out of the statistics and resampled.

Strategies (see ``docs/kalman.md`` for the defaults and :mod:`l2ljax.kalman.strategies` for the
maths): ``process`` (:class:`~l2ljax.kalman.Inversion` EKI, :class:`~l2ljax.kalman.TransformInversion`
ETKI, :class:`~l2ljax.kalman.TikhonovInversion` TEKI), ``scheduler`` (:class:`~l2ljax.kalman.FixedStep`
or the Iglesias–Yang :class:`~l2ljax.kalman.DataMisfitController`, which terminates the process;
``stop_when_terminated()`` is the callback that ends a run then and says why), ``accelerator``
(Nesterov variants: the forward map is evaluated at the extrapolated ensemble),
``localizer`` (SEC, SECNice, SECFisher, BernoulliDropout; EKI only) and additive inflation
(``Params.additive_inflation`` = s, noise N(0, sh/(1−sh) Σ), Σ the diagonal of the initial
ensemble's covariance, ``additive_cov='prior'``, or of the current one, ``'ensemble'``;
``additive_noise='antithetic'`` gives members j and j + J/2 opposite draws: zero-mean noise, half
the normals drawn; ``additive_generator='hash'`` draws the normals from a cheap integer hash,
:func:`l2ljax.rows.hashed_normal_rows`, a quarter of threefry's cost on CPU).

Hyperparameters: continuous ones are ``Params`` fields (vmappable, schedulable, checked at
``init``): ``gamma``, ``step_size``, ``inflation``, ``additive_inflation``, ``noise_cov`` (the
values of a full or diagonal Γ; ``None``: Γ = gamma·I) and the strategies themselves (pytrees
whose float fields are leaves: e.g. ``params.scheduler.terminate_at``). Shape- or
structure-deciding ones are constructor arguments: ``pop_size``, ``sequential``,
``outputs_per_sample``, ``stochastic``, ``form``, which strategy classes, whether Γ is full,
diagonal or scalar (the constructor's ``noise_cov``, which is also its default value).

Options: ``sequential=True`` assimilates the B samples of a batch one at a time (the LOD
protocol; outputs must be ordered sample-major, ``outputs_per_sample`` = K values each);
``stochastic`` perturbed observations; Γ = ``gamma``·I or the matrix (or variances) ``noise_cov``;
``step_size`` h, times ``step_schedule(iteration)`` when given (any optax schedule, e.g.
``optax.exponential_decay``); ``additive_schedule(iteration)`` likewise scales s (a factor in
[0, 1]: annealing the additive noise, e.g. ``optax.cosine_decay_schedule(1.0, n, alpha=0.1)``;
checked at iterations 0 and 1 when built; inside the update clipped to [0, 1], NaN as 0;
not part of ``config()``, like ``step_schedule``, so a resume cannot check it); multiplicative
``inflation`` of the prior ensemble; ``init_std``: the initial ensemble N(x0, init_std²)
instead of draws of the optimizee's sampler. Repeating a batch (LOD's ``repetitions``) is the
optimizee's data schedule (:func:`l2ljax.optimizees.mnist`).
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
from l2ljax.core import Evaluation, Optimizee, Optimizer, OptState, Space, check_positive_int, check_range, is_concrete
from l2ljax.rows import GENERATORS, Rows, everything

_PROCESSES = (kalman.Inversion, kalman.TransformInversion, kalman.TikhonovInversion)
_SCHEDULERS = (kalman.FixedStep, kalman.DataMisfitController)
_ACCELERATORS = (kalman.NoAcceleration, kalman.NesterovAccelerator, kalman.FirstOrderNesterovAccelerator,
                 kalman.ConstantNesterovAccelerator)
_LOCALIZERS = (kalman.SEC, kalman.SECNice, kalman.SECFisher, kalman.BernoulliDropout)


@struct.dataclass
class EnsembleKalmanParams:
    gamma: float = 0.01
    step_size: float = 1.0
    inflation: float = 1.0
    additive_inflation: float = 0.0
    average_decay: float = 0.0  # β of the averaged ensemble mean (0: the latest mean)
    noise_cov: Any = None
    process: Any = kalman.Inversion()
    scheduler: Any = kalman.FixedStep()
    accelerator: Any = kalman.NoAcceleration()
    localizer: Any = None


class EnsembleKalmanState(NamedTuple):
    ensemble: jax.Array  # (J, P) the members the forward map is evaluated at next (v with momentum)
    misfit: jax.Array  # mean squared error of the ensemble-mean output before the last update
    iteration: jax.Array  # updates done, the argument of step_schedule
    key: jax.Array
    previous: jax.Array | None = None  # (J, P) the last plain update u_n (accelerators only)
    theta: jax.Array | None = None  # Nesterov's θ_n
    elapsed: jax.Array | None = None  # algorithm time Σ h (data-misfit controller)
    terminated: jax.Array | None = None  # the controller reached terminate_at: no more updates
    step: jax.Array | None = None  # h of the last update
    prior_mean: jax.Array | None = None  # (P,) the initial ensemble's mean (TEKI)
    prior_std: jax.Array | None = None  # (P,) its per-coordinate std (TEKI, additive inflation)
    average: jax.Array | None = None  # (P,) Σ_n β^(N−n)(1−β) ū_n over the N updates, not yet debiased


def _kind(obj: Any, allowed: tuple[type, ...], what: str) -> Any:
    if not isinstance(obj, allowed):
        names = ", ".join(t.__name__ for t in allowed)
        raise kalman.StrategyError(f"{what} must be one of {names}; got {type(obj).__name__}")
    return obj


def _check_factor_schedule(schedule: Callable[[jax.Array], jax.Array] | None, name: str):
    """A schedule of factors in [0, 1]: say at once when its first values are not (a typo'd optax
    schedule that grows, or returns NaN, would otherwise be clipped silently in every update)."""
    if schedule is None:
        return None
    if not callable(schedule):
        raise TypeError(f"{name} must be a callable of the iteration (e.g. an optax schedule), got {schedule!r}")
    for iteration in (0, 1):
        value = np.asarray(schedule(jnp.asarray(iteration, jnp.int32)), np.float64)
        if value.shape != () or not (np.isfinite(value) and 0 <= value <= 1):
            raise ValueError(f"{name}({iteration}) must be a scalar factor in [0, 1], got {value}")
    return schedule


class EnsembleKalmanFilter(Optimizer):
    name = "EnsembleKalmanFilter"
    Params = EnsembleKalmanParams
    sharded_fields = ("ensemble", "previous")

    def __init__(self, space: Space | Optimizee, pop_size: int = 100, *, sequential: bool = False,
                 outputs_per_sample: int | None = None, stochastic: bool = False,
                 noise_cov: Any = None, form: str = "auto", init_std: float | None = None,
                 step_schedule: Callable[[jax.Array], jax.Array] | None = None,
                 additive_schedule: Callable[[jax.Array], jax.Array] | None = None,
                 process: Any = None, scheduler: Any = None, accelerator: Any = None, localizer: Any = None,
                 additive_cov: str = "prior", additive_noise: str = "independent", additive_generator: str = "threefry",
                 rows: Rows | None = None):
        super().__init__(space, pop_size)
        if self.pop_size < 2:
            raise ValueError(f"an ensemble needs at least 2 members, got pop_size={pop_size}")
        self.rows = self._check_rows(rows, process, form)
        if sequential:
            self.outputs_per_sample = check_positive_int(outputs_per_sample, "outputs_per_sample")
        else:
            self.outputs_per_sample = outputs_per_sample
        if form not in ("auto", "ensemble", "observation"):
            raise ValueError(f"form must be 'auto', 'ensemble' or 'observation', got {form!r}")
        if init_std is not None and not (np.isfinite(init_std) and init_std > 0):
            raise ValueError(f"init_std must be finite and positive, got {init_std}")
        self.noise_cov = None
        if noise_cov is not None:
            cov = np.asarray(noise_cov, np.float64)
            if cov.ndim not in (1, 2) or (cov.ndim == 2 and cov.shape[0] != cov.shape[1]):
                raise kalman.NoiseCovarianceError(f"noise_cov must be a square matrix or a vector of variances, "
                                                  f"got shape {cov.shape}")
            kalman.check_noise(cov, cov.shape[0])
            self.noise_cov = cov
        self.sequential, self.stochastic, self.form, self.init_std = sequential, stochastic, form, init_std
        self.step_schedule = step_schedule
        self.additive_schedule = _check_factor_schedule(additive_schedule, "additive_schedule")
        # None: plain EKI with the fixed step, no momentum, no localization (L2L's EnKF)
        process = kalman.Inversion() if process is None else process
        self.process = _kind(process, _PROCESSES, "process")
        self.scheduler = _kind(kalman.FixedStep() if scheduler is None else scheduler, _SCHEDULERS, "scheduler")
        self.accelerator = _kind(kalman.NoAcceleration() if accelerator is None else accelerator, _ACCELERATORS,
                                 "accelerator")
        self.localizer = None if localizer is None else _kind(localizer, _LOCALIZERS, "localizer")
        if additive_cov not in ("prior", "ensemble"):
            raise ValueError(f"additive_cov must be 'prior' or 'ensemble', got {additive_cov!r}")
        self.additive_cov = additive_cov
        if additive_noise not in ("independent", "antithetic"):
            raise ValueError(f"additive_noise must be 'independent' or 'antithetic', got {additive_noise!r}")
        self.additive_noise = additive_noise
        if additive_generator not in GENERATORS:
            raise ValueError(f"additive_generator must be one of {GENERATORS}, got {additive_generator!r}")
        self.additive_generator = additive_generator
        eki = isinstance(process, kalman.Inversion)
        if localizer is not None and not eki:
            raise kalman.StrategyError(f"localization applies to Inversion() only, not {type(process).__name__}: "
                                       "ETKI and TEKI use the ensemble form, which has no explicit C_up to localize")
        if localizer is not None and form == "ensemble":
            raise kalman.StrategyError("localization needs the observation form; use form='observation' or 'auto'")
        if sequential and not eki:
            raise kalman.StrategyError(f"{type(process).__name__} has no sample-sequential form; use sequential=False")
        if stochastic and isinstance(process, kalman.TransformInversion):
            raise kalman.StrategyError("TransformInversion (ETKI) is deterministic; drop stochastic=True")
        if isinstance(process, kalman.TikhonovInversion) and self.noise_cov is not None and self.noise_cov.ndim == 2:
            raise kalman.StrategyError("TikhonovInversion needs a scalar or diagonal noise (the augmented Γ has "
                                       "M + P rows); pass noise_cov as a vector of variances")

    def _check_rows(self, rows: Rows | None, process: Any, form: str) -> Rows | None:
        """``rows``: this shard's rows of a sharded ensemble (set by a sharding coordinator, e.g.
        ``parallel.MPI()``, through ``replace(rows=...)``; None: the whole ensemble is here)."""
        if rows is None or rows.whole:
            return None
        if rows.total_rows != self.pop_size or rows.count < 1:
            raise ValueError(f"rows {rows.start}..{rows.start + rows.count} of {rows.total_rows} do not shard an "
                             f"ensemble of {self.pop_size} (every shard needs at least one member)")
        if process is not None and not isinstance(process, kalman.Inversion):
            raise kalman.StrategyError(f"{type(process).__name__} needs every member's anomalies in one place (its "
                                       "J×J transform or augmented data couple all members): run it unsharded, "
                                       "e.g. parallel.MPI(shard_state=False)")
        if form == "ensemble":
            raise kalman.StrategyError("a sharded ensemble needs the observation form; use form='observation' or "
                                       "'auto'")
        return rows

    @property
    def _rows(self) -> Rows:
        return everything(self.pop_size) if self.rows is None else self.rows

    @property
    def shardable(self) -> bool:
        """Whether a mesh engine (``parallel.Devices``/``Distributed``) may split the ensemble.

        ETKI, TEKI and the ensemble form couple every member (J × J systems): never. A sharded
        EKI update is the observation form (M × P cross-covariance, M × M solve), so ``form="auto"``
        is split only where it would pick that form anyway: with a localizer, or sample-sequential
        with J ≥ K outputs per sample. Batch EKI with ``form="auto"`` (M known only from the
        optimizee) stays whole; pass ``form="observation"`` to split it.
        """
        if not isinstance(self.process, kalman.Inversion) or self.form == "ensemble":
            return False
        if self.form == "observation" or self.localizer is not None:
            return True
        return self.sequential and self.pop_size >= self.outputs_per_sample

    @property
    def default_params(self) -> EnsembleKalmanParams:
        return EnsembleKalmanParams(noise_cov=self.noise_cov, process=self.process, scheduler=self.scheduler,
                                    accelerator=self.accelerator, localizer=self.localizer)

    def _check_params(self, params: EnsembleKalmanParams) -> None:
        for name in ("gamma", "step_size", "inflation"):
            check_range(params, name, 0.0, float("inf"), lo_open=True, owner=self.name)
        check_range(params, "additive_inflation", 0.0, 1.0, hi_open=True, owner=self.name)
        check_range(params, "average_decay", 0.0, 1.0, hi_open=True, owner=self.name)
        if (isinstance(self.scheduler, kalman.FixedStep) and is_concrete(params.additive_inflation, params.step_size)
                and np.any(np.asarray(params.additive_inflation) * np.asarray(params.step_size) >= 1)):
            raise kalman.StrategyError(f"{self.name}: additive inflation needs additive_inflation·step_size < 1")
        for field, mine in (("process", self.process), ("scheduler", self.scheduler),
                            ("accelerator", self.accelerator), ("localizer", self.localizer)):
            given = getattr(params, field)
            if type(given) is not type(mine):
                raise kalman.StrategyError(f"{self.name}: params.{field} is a {type(given).__name__}, but this "
                                           f"optimizer was built with {type(mine).__name__}; strategies are static")
        if (params.noise_cov is None) != (self.noise_cov is None) or (
                params.noise_cov is not None and np.shape(params.noise_cov) != self.noise_cov.shape):
            shape = None if self.noise_cov is None else self.noise_cov.shape
            raise kalman.NoiseCovarianceError(f"{self.name}: params.noise_cov must have the structure given to the "
                                              f"constructor ({shape})")
        if params.noise_cov is not None:
            kalman.check_noise(params.noise_cov, np.shape(params.noise_cov)[0])
        owner = self.name
        if isinstance(self.scheduler, kalman.DataMisfitController):
            check_range(params.scheduler, "terminate_at", 0.0, float("inf"), lo_open=True, owner=owner)
        if isinstance(self.process, kalman.TikhonovInversion):
            check_range(params.process, "prior_std", 0.0, float("inf"), lo_open=True, owner=owner)
        if isinstance(self.accelerator, kalman.ConstantNesterovAccelerator):
            check_range(params.accelerator, "momentum", 0.0, 1.0, hi_open=True, owner=owner)
        if isinstance(self.accelerator, kalman.FirstOrderNesterovAccelerator):
            check_range(params.accelerator, "r", 0.0, float("inf"), lo_open=True, owner=owner)
        if isinstance(self.localizer, kalman.SEC):
            check_range(params.localizer, "alpha", 0.0, float("inf"), owner=owner)
            check_range(params.localizer, "cutoff", 0.0, 1.0, hi_open=True, owner=owner)
        if isinstance(self.localizer, kalman.SECNice):
            check_range(params.localizer, "delta_up", 0.0, float("inf"), owner=owner)
            check_range(params.localizer, "delta_pp", 0.0, float("inf"), owner=owner)
        if isinstance(self.localizer, kalman.BernoulliDropout):
            check_range(params.localizer, "keep", 0.0, 1.0, lo_open=True, owner=owner)

    def init(self, key: jax.Array, params: Any = None, x0: Any = None) -> OptState:
        """Fresh ensemble: ``pop_size`` draws of the optimizee's sampler, or N(x0, init_std²) with ``init_std``."""
        if x0 is not None and self.init_std is None:
            raise ValueError("EnsembleKalmanFilter centres the initial ensemble on x0 only with init_std=...; "
                             "without it the members are draws of the optimizee's sampler")
        return super().init(key, params, x0)

    @property
    def _accelerated(self) -> bool:
        return not isinstance(self.accelerator, kalman.NoAcceleration)

    def _init(self, key: jax.Array, x0: jax.Array, params: EnsembleKalmanParams) -> EnsembleKalmanState:
        k_members, k_state = jax.random.split(key)
        rows = self._rows  # a shard draws only its own members, each from its global index
        if self.init_std is None:
            ensemble = jax.vmap(self.space.sample)(rows.keys(k_members))
        else:
            ensemble = x0 + self.init_std * rows.normal(k_members, x0.shape[0], x0.dtype)
        ensemble = self.space.clip(ensemble.astype(x0.dtype))
        teki = isinstance(self.process, kalman.TikhonovInversion)
        prior_mean = None
        if teki:
            prior_mean = (jnp.mean(ensemble, 0) if self.process.prior_mean is None
                          else jnp.full(x0.shape, self.process.prior_mean, x0.dtype))
        zero = jnp.zeros((), x0.dtype)
        return EnsembleKalmanState(
            ensemble, jnp.array(jnp.nan, x0.dtype), jnp.array(0, jnp.int32), k_state,
            previous=ensemble if self._accelerated else None, theta=jnp.ones((), x0.dtype), elapsed=zero,
            terminated=jnp.array(False), step=zero, prior_mean=prior_mean,
            prior_std=kalman.eki._std(ensemble, rows) if self.additive_cov == "prior" else None,
            average=jnp.zeros(x0.shape, x0.dtype))

    def _ask(self, key: jax.Array, inner: EnsembleKalmanState, params: EnsembleKalmanParams) -> jax.Array:
        return inner.ensemble

    def _step_size(self, inner: EnsembleKalmanState, params: EnsembleKalmanParams, outputs: jax.Array,
                   targets: jax.Array, noise: Any, valid: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        """(h, new elapsed time, terminated before this update)."""
        dtype = outputs.dtype
        if isinstance(self.scheduler, kalman.FixedStep):
            h = jnp.asarray(params.step_size, dtype)
            if self.step_schedule is not None:
                h = h * jnp.asarray(self.step_schedule(inner.iteration), dtype)
            return h, inner.elapsed, jnp.array(False)
        if self.sequential:  # Φ_j sums the per-sample potentials (Γ block diagonal)
            k, J = self.outputs_per_sample, outputs.shape[0]
            per_sample = kalman.misfit_potential(outputs.reshape(-1, k), jnp.tile(targets.reshape(-1, k), (J, 1)),
                                                 noise)
            phi = per_sample.reshape(J, -1).sum(1)
        else:
            phi = kalman.misfit_potential(outputs, targets, noise)
        phi = jnp.where(valid, phi, jnp.nan)
        q, capped = kalman.strategies._dmc(phi, outputs.shape[1], inner.elapsed.astype(dtype),
                                           jnp.asarray(params.scheduler.terminate_at, dtype), self._rows)
        done = inner.elapsed >= params.scheduler.terminate_at
        h = jnp.where(done & (self.scheduler.on_terminate == "continue"), q, capped)
        h = jnp.where(jnp.isfinite(h) & (h > 0), h, 0.0)
        return h, (inner.elapsed + h).astype(dtype), done & (self.scheduler.on_terminate == "stop")

    def _update(self, key: jax.Array, prior: jax.Array, outputs: jax.Array, targets: jax.Array, noise: Any,
                step: jax.Array, valid: jax.Array, inner: EnsembleKalmanState,
                params: EnsembleKalmanParams) -> jax.Array:
        if isinstance(self.process, kalman.TransformInversion):
            return kalman.etki_update(key, prior, outputs, targets, noise, step_size=step, valid=valid)
        if isinstance(self.process, kalman.TikhonovInversion):
            outputs, targets, noise = kalman.tikhonov_augment(prior, outputs, targets, noise,
                                                              params.process.prior_std, inner.prior_mean)
        if self.sequential:
            k = self.outputs_per_sample
            n = prior.shape[0]
            if outputs.shape[1] % k:
                raise ValueError(f"the optimizee returns {outputs.shape[1]} outputs per member, not a multiple of "
                                 f"outputs_per_sample={k}")
            return kalman.eki_update_sequential(
                key, prior, outputs.reshape(n, -1, k), targets.reshape(-1, k), noise, stochastic=self.stochastic,
                step_size=step, form=self.form, valid=valid, localizer=params.localizer, rows=self.rows)
        return kalman.eki_update(key, prior, outputs, targets, noise, stochastic=self.stochastic, step_size=step,
                                 form=self.form, valid=valid, localizer=params.localizer, rows=self.rows)

    def _tell(self, inner: EnsembleKalmanState, population: jax.Array, evaluation: Evaluation,
              params: EnsembleKalmanParams) -> EnsembleKalmanState:
        if evaluation.outputs is None or evaluation.targets is None:
            raise ValueError("EnsembleKalmanFilter needs an optimizee that returns outputs and targets "
                             "(an Optimizee with `data`)")
        key, k_update = jax.random.split(inner.key)
        outputs = evaluation.outputs.astype(population.dtype)
        targets = evaluation.targets.astype(population.dtype)
        valid = jnp.isfinite(evaluation.score)
        noise = params.gamma if params.noise_cov is None else jnp.asarray(params.noise_cov, population.dtype)
        h, elapsed, stopped = self._step_size(inner, params, outputs, targets, noise, valid)
        moves = ~stopped & (h > 0)
        prior = kalman.inflate(population, params.inflation, rows=self.rows)
        updated = self._update(k_update, prior, outputs, targets, noise, jnp.where(moves, h, 1.0), valid, inner,
                               params)
        theta, previous = inner.theta, inner.previous
        if self._accelerated:
            lam, new_theta = params.accelerator.coefficient(inner.iteration + 1, inner.theta)
            ensemble = kalman.accelerate(updated, inner.previous, lam.astype(updated.dtype))
            previous = jnp.where(moves, updated, inner.previous)
            theta = jnp.where(moves, new_theta, inner.theta)
        else:
            ensemble = updated
        additive = jnp.asarray(params.additive_inflation, population.dtype)
        if self.additive_schedule is not None:
            factor = jnp.asarray(self.additive_schedule(inner.iteration), population.dtype)
            additive = additive * jnp.clip(jnp.nan_to_num(factor, nan=0.0), 0.0, 1.0)
        ensemble = jax.lax.cond(
            additive > 0,
            lambda U: kalman.additive_inflation(jax.random.fold_in(k_update, 7), U, additive,
                                                step_size=h, std=inner.prior_std, rows=self.rows,
                                                antithetic=self.additive_noise == "antithetic",
                                                generator=self.additive_generator),
            lambda U: U, ensemble)
        ensemble = jnp.where(moves, self.space.clip(ensemble), population)
        # Polyak–Ruppert-style iterate averaging: an EMA of the plain ensemble means, only over updates done
        beta = jnp.asarray(params.average_decay, population.dtype)
        plain_mean = kalman.eki._mean(previous if self._accelerated else ensemble, self._rows)
        average = jnp.where(moves, beta * inner.average + (1 - beta) * plain_mean, inner.average)
        finite_outputs = jnp.where(valid[:, None], outputs, 0.0)
        rows = self._rows
        mean_output = rows.total(jnp.sum(finite_outputs, 0)) / jnp.maximum(rows.total(jnp.sum(valid)), 1)
        dtype = population.dtype
        misfit = jnp.mean(jnp.square(mean_output - targets)).astype(dtype)
        return inner._replace(ensemble=ensemble, misfit=misfit, iteration=inner.iteration + moves.astype(jnp.int32),
                              key=key, previous=previous, theta=theta.astype(dtype), elapsed=elapsed.astype(dtype),
                              terminated=inner.terminated | stopped, step=jnp.where(moves, h, 0.0).astype(dtype),
                              average=average.astype(dtype))

    def mean_flat(self, state: OptState) -> jax.Array:
        """The (P,) ensemble mean of the latest plain update (with momentum: u_n, not the extrapolated v_n).

        On a shard's rows (``rows`` set) every shard must call it: the mean is an all-reduce."""
        inner = state.inner
        members = inner.previous if self._accelerated else inner.ensemble
        if members.shape[0] != self._rows.count:
            raise ValueError(f"this state holds {members.shape[0]} members but the optimizer expects "
                             f"{self._rows.count}: a shard's state needs the sharded optimizer "
                             "(parallel.shard(opt)); a whole state (RunResult.state) the plain one")
        return kalman.eki._mean(members, self._rows)

    def averaged_mean_flat(self, state: OptState) -> jax.Array:
        """The (P,) exponential moving average of the ensemble means of all updates, debiased.

        With ``params.average_decay`` = β > 0 it is Σ_n w_n ū_n with w_n ∝ β^(N−n) over the N updates
        done (Polyak & Juditsky 1992 iterate averaging, in its exponential form): the ensemble's
        mean wanders around the minimiser and the average sits closer to it. It does not steer the
        ensemble. With β = 0 (the default), and before the first update, it is :meth:`mean_flat`.
        """
        inner = state.inner
        beta = jnp.asarray(state.params.average_decay, inner.average.dtype)
        done = inner.iteration > 0
        weight = 1 - beta ** jnp.maximum(inner.iteration, 1).astype(inner.average.dtype)
        latest = self.mean_flat(state)
        return jnp.where(done & (beta > 0), inner.average / weight, latest)

    def ensemble_mean(self, state: OptState) -> Any:
        """The ensemble-mean individual (pytree): the model LOD evaluates."""
        return self.space.unravel(self.mean_flat(state))

    def diagnostics(self, state: OptState) -> dict[str, jax.Array]:
        inner = state.inner
        return {"misfit": inner.misfit, "spread": kalman.ensemble_spread(inner.ensemble, self.rows), "step": inner.step,
                "elapsed": inner.elapsed, "terminated": inner.terminated}

    def stop_when_terminated(self, log: Callable[[str], Any] = print) -> Callable[[Any, OptState], bool]:
        """A ``run`` callback that ends the run once the data-misfit controller has terminated.

        It reports why through ``log``; with a fixed step it never stops anything.
        """
        reported = []

        def callback(record: Any, state: OptState) -> bool:
            done = bool(is_concrete(state.inner.terminated) and state.inner.terminated)
            if done and not reported:
                reported.append(True)
                log(f"{self.name}: stopped after {int(state.inner.iteration)} updates: the data-misfit "
                    f"controller's algorithm time reached terminate_at={float(state.params.scheduler.terminate_at):g} "
                    f"(Σh = {float(state.inner.elapsed):.4g}); further updates would go past the posterior time")
            return done

        return callback

    def config(self) -> dict[str, Any]:
        return {**super().config(), "sequential": self.sequential, "outputs_per_sample": self.outputs_per_sample,
                "stochastic": self.stochastic, "form": self.form, "init_std": self.init_std,
                "noise_cov": None if self.noise_cov is None else self.noise_cov.shape,
                "process": type(self.process).__name__, "scheduler": type(self.scheduler).__name__,
                "accelerator": type(self.accelerator).__name__,
                "localizer": None if self.localizer is None else type(self.localizer).__name__,
                "additive_cov": self.additive_cov, "additive_noise": self.additive_noise,
                "additive_generator": self.additive_generator}
