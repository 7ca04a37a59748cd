r"""Whole inner learning runs as optimizees: hyperparameter optimisation and nested L2L, vmapped.

**Inner training** (:class:`InnerTraining`). An individual is a setting h of named, bounded
hyperparameters; its fitness is what a whole training run under h achieves::

    θ_0 = s · θ_init(key)                         s = h["init_scale"] (if searched), flax's init
    θ_{k+1} = θ_k + tx_h.update(∇ℓ(θ_k; batch_k))  k = 0 … n_steps−1, one ``lax.scan``
    fitness(h) = accuracy(θ_{n_steps}; validation)

``tx_h = make_optimizer(h)`` is any optax transformation built from the (traced) values, so the
outer optimizer's ``vmap`` over the population runs every training of a generation in one compiled
program (the idea of EvoX's ``HPOProblemWrapper``, here for JAX/optax). All individuals of a
generation share the initialisation key and the batch order (common random numbers), fresh each
generation. A training whose loss or weights become non-finite scores NaN, so it is never selected.
Hyperparameters with ``log=True`` are searched as log10 of the value.

**Nested L2L** (:class:`NestedEnKF`; L2L's nested example: an outer GA tuning the inner EnKF's
γ ∈ [0.009, 1], ensemble size J ∈ [9, 30] and repetitions ∈ [1, 3]). The inner run is ensemble
Kalman inversion (Iglesias, Law & Stuart 2013; :func:`l2ljax.kalman.eki_update`) of an MLP on
MNIST minibatches, each batch assimilated ``repetitions`` times in a row. Different J would give
different array shapes; every individual instead runs ``J_max`` members of which the first J are
*valid* (:func:`masked_eki_update`: masked members get weight 0 in every mean and covariance,
so the update equals :func:`l2ljax.kalman.eki_update` of the J-member ensemble) and
``repetitions_max`` updates per batch of which the first ``repetitions`` are applied (``where``).
Shapes are then identical for the whole population, so one ``vmap`` runs them all; the price is
computing J_max members and 3 repetitions for everyone (at most 30/9 × 3 = 10× the cheapest
setting's work), against one compilation and one sequential run per distinct setting otherwise
(a GA proposes new (J, repetitions) pairs every generation). Fitness: validation accuracy of the
mean of the valid members; the test split is never seen by either loop.

Example::

    hpo = InnerTraining(Mlp(hidden=(64,)), lambda h: optax.sgd(h["learning_rate"], h["momentum"]),
                        {"learning_rate": Hyperparameter(1e-3, 1.0, log=True),
                         "momentum": Hyperparameter(0.0, 0.99), "init_scale": Hyperparameter(0.1, 3.0, log=True)},
                        train=(x_train, y_train), validation=(x_val, y_val), n_steps=300, batch_size=64)
    problem = hpo.optimizee(jax.random.key(0))
    result = l2ljax.run(l2ljax.CMAES(problem, pop_size=16), problem, jax.random.key(1), 10)
    hpo.values(result.best)      # {'learning_rate': ..., 'momentum': ..., 'init_scale': ...}
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.flatten_util import ravel_pytree

from l2ljax.core import Optimizee, check_positive_int

Array = jax.Array

__all__ = ["Hyperparameter", "InnerTraining", "NestedEnKF", "masked_eki_update", "run_optimizee"]


@dataclasses.dataclass(frozen=True)
class Hyperparameter:
    """A bounded scalar hyperparameter; ``log=True`` searches log10 of it (bounds stay in value units)."""

    lower: float
    upper: float
    log: bool = False

    def __post_init__(self) -> None:
        if not (math.isfinite(self.lower) and math.isfinite(self.upper)) or not self.lower < self.upper:
            raise ValueError(f"hyperparameter bounds must be finite with lower < upper, got "
                             f"[{self.lower}, {self.upper}]")
        if self.log and self.lower <= 0:
            raise ValueError(f"a log-scaled hyperparameter needs lower > 0, got {self.lower}")

    @property
    def search_bounds(self) -> tuple[float, float]:
        return (math.log10(self.lower), math.log10(self.upper)) if self.log else (self.lower, self.upper)

    def to_value(self, u: Array) -> Array:
        return 10.0 ** u if self.log else u

    def to_search(self, value: float) -> float:
        if not self.lower <= value <= self.upper:
            raise ValueError(f"value {value} outside the hyperparameter's bounds [{self.lower}, {self.upper}]")
        return math.log10(value) if self.log else float(value)


def _space_of(hyperparameters: dict[str, Hyperparameter]) -> tuple[dict, dict, dict]:
    if not hyperparameters:
        raise ValueError("no hyperparameters to search: give at least one name -> Hyperparameter")
    for name, h in hyperparameters.items():
        if not isinstance(h, Hyperparameter):
            raise TypeError(f"hyperparameter {name!r} must be a Hyperparameter(lower, upper, log=...), got {h!r}")
    template = {n: jnp.float32(0.5 * sum(h.search_bounds)) for n, h in hyperparameters.items()}
    lower = {n: h.search_bounds[0] for n, h in hyperparameters.items()}
    upper = {n: h.search_bounds[1] for n, h in hyperparameters.items()}
    return template, lower, upper


def masked_eki_update(U: Array, G: Array, y: Array, gamma: Array, valid: Array) -> Array:
    """Deterministic EKI step (Γ = γ I, ensemble-space form) over the ``valid`` members only.

    Equals :func:`l2ljax.kalman.eki_update` on the sub-ensemble ``U[valid]`` (tested); masked rows get
    weight 0 in every mean and covariance and are carried along unchanged. Unlike ``eki_update`` it
    does not resample the masked members (they are padding, not failures), which would otherwise
    draw J_max × P normals per update for nothing.
    """
    w = valid.astype(U.dtype)[:, None]
    n = jnp.sum(w)
    A = w * (G - jnp.sum(w * G, 0) / n) / jnp.sqrt(n * gamma)  # whitened output anomalies B (J, M)
    E = w * (U - jnp.sum(w * U, 0) / n) / jnp.sqrt(n)  # parameter anomalies (J, P)
    D = (y - G) / jnp.sqrt(gamma)  # whitened innovations (J, M)
    system = jnp.eye(U.shape[0], dtype=U.dtype) + A @ A.T
    coefficients = jax.scipy.linalg.cho_solve(jax.scipy.linalg.cho_factor(system), A @ D.T).T  # D Bᵀ (I + BBᵀ)⁻¹
    return U + w * (coefficients @ E)


def _check_split(split: tuple[Any, Any], name: str) -> tuple[Array, Array]:
    try:
        x, y = split
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a pair (inputs, integer labels)") from None
    x, y = jnp.asarray(x), jnp.asarray(y)
    if x.shape[0] != y.shape[0] or x.shape[0] == 0:
        raise ValueError(f"{name}: {x.shape[0]} inputs but {y.shape[0]} labels (need equal, non-zero counts)")
    if not jnp.issubdtype(y.dtype, jnp.integer):
        raise TypeError(f"{name}: labels must be integers, got {y.dtype}")
    return x, y


def run_optimizee(fitness: Callable[[dict[str, Array], Array], Array], hyperparameters: dict[str, Hyperparameter],
                  key: Array, *, chunk: int | None = None, name: str = "inner-run", info: dict | None = None
                  ) -> Optimizee:
    """Whole inner runs ``fitness(individual, run_key) -> accuracy`` as a maximised optimizee.

    Every individual of generation g runs from ``fold_in(key, g)`` (common random numbers).
    ``chunk=None`` vmaps the whole population; ``chunk=c`` runs c individuals at a time, vmapped,
    the chunks one after another inside the same compiled program (``lax.map``): the same numbers,
    a working set c/J as large (on CPUs a whole vmapped population of ensembles falls out of
    cache; see ``benchmarks/RESULTS.md``). The population is padded to whole chunks, so no vmap
    sees a batch of one (jaxlib 0.10.2 miscompiles some batch-one vmaps on CPU, among them the
    masked EKI update: ``tests/test_jax_regressions.py``).
    """
    if chunk is not None:
        check_positive_int(chunk, "chunk")
    template, lower, upper = _space_of(hyperparameters)

    def data(generation: Array) -> tuple[Array, Array]:
        return jax.random.fold_in(key, generation), jnp.zeros(1)

    def fn(individual: dict[str, Array], _key: Array, run_key: Array) -> tuple[Array, Array]:
        accuracy = fitness(individual, run_key)
        return accuracy, jnp.reshape(accuracy, (1,))

    population_fn = None
    if chunk is not None:
        def population_fn(flat: Array, keys: Array, run_key: Array) -> tuple[Array, Array]:
            def rows(block: Array) -> tuple[Array, Array]:
                return jax.vmap(lambda row: fn(space.unravel(row), None, run_key))(block)

            if chunk == 1:  # one run at a time, no vmap at all
                return jax.lax.map(lambda row: fn(space.unravel(row), None, run_key), flat)
            # pad to whole chunks (repeating the last row) so that no vmap has a batch of one
            n, pad = flat.shape[0], -flat.shape[0] % chunk
            padded = jnp.concatenate([flat, jnp.repeat(flat[-1:], pad, axis=0)]).reshape(-1, chunk, flat.shape[1])
            fitness, outputs = jax.lax.map(rows, padded)
            return fitness.reshape(-1)[:n], outputs.reshape(-1, 1)[:n]

    problem = Optimizee.create(fn, template, lower=lower, upper=upper, weights=(1.0,), name=name, data=data,
                               info={**(info or {}), "chunk": chunk}, population_fn=population_fn)
    space = problem.space
    return problem


def _accuracy(logits: Array, labels: Array) -> Array:
    return jnp.mean(jnp.argmax(logits, -1) == labels)


@dataclasses.dataclass(frozen=True, eq=False)
class InnerTraining:
    """Train ``model`` with ``make_optimizer(h)`` for ``n_steps`` minibatch steps; score on validation.

    ``hyperparameters``: name -> :class:`Hyperparameter`. The reserved name ``init_scale``
    multiplies the model's initial parameters; every value (as a traced scalar) reaches
    ``make_optimizer`` in a dict. Loss: softmax cross-entropy on integer labels.
    """

    model: nn.Module
    make_optimizer: Callable[[dict[str, Array]], optax.GradientTransformation]
    hyperparameters: dict[str, Hyperparameter]
    train: tuple[Any, Any]
    validation: tuple[Any, Any]
    n_steps: int = 300
    batch_size: int = 64

    def __post_init__(self) -> None:
        check_positive_int(self.n_steps, "n_steps")
        check_positive_int(self.batch_size, "batch_size")
        object.__setattr__(self, "train", _check_split(self.train, "train"))
        object.__setattr__(self, "validation", _check_split(self.validation, "validation"))
        if self.batch_size > self.train[0].shape[0]:
            raise ValueError(f"batch_size {self.batch_size} exceeds the {self.train[0].shape[0]} training examples")
        _space_of(self.hyperparameters)

    def values(self, individual: dict[str, Array]) -> dict[str, float]:
        """Search coordinates (an individual) -> hyperparameter values."""
        return {n: float(h.to_value(jnp.asarray(individual[n]))) for n, h in self.hyperparameters.items()}

    def individual(self, values: dict[str, float]) -> dict[str, Array]:
        """Hyperparameter values -> an individual (checks names and bounds)."""
        if set(values) != set(self.hyperparameters):
            raise ValueError(f"expected values for {sorted(self.hyperparameters)}, got {sorted(values)}")
        return {n: jnp.float32(h.to_search(values[n])) for n, h in self.hyperparameters.items()}

    def fit(self, individual: dict[str, Array], key: Array) -> tuple[Any, Array]:
        """One whole training run: (trained params, final training loss). Jittable and vmappable."""
        h = {n: hp.to_value(individual[n]) for n, hp in self.hyperparameters.items()}
        x, y = self.train
        k_init, k_batches = jax.random.split(key)
        params = self.model.init(k_init, x[:1])
        if "init_scale" in h:
            params = jax.tree_util.tree_map(lambda p: p * h["init_scale"], params)
        tx = self.make_optimizer(h)

        def loss(p: Any, xb: Array, yb: Array) -> Array:
            return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(self.model.apply(p, xb), yb))

        def step(carry: tuple[Any, Any], k: Array) -> tuple[tuple[Any, Any], Array]:
            p, s = carry
            idx = jax.random.randint(k, (self.batch_size,), 0, x.shape[0])
            value, grads = jax.value_and_grad(loss)(p, x[idx], y[idx])
            updates, s = tx.update(grads, s, p)
            return (optax.apply_updates(p, updates), s), value

        (params, _), losses = jax.lax.scan(step, (params, tx.init(params)),
                                           jax.random.split(k_batches, self.n_steps))
        return params, losses[-1]

    def score(self, params: Any, final_loss: Array, images: Array, labels: Array) -> Array:
        """Accuracy of trained params; NaN if the training diverged (non-finite loss or weights)."""
        finite = jnp.isfinite(final_loss) & jnp.all(jnp.isfinite(ravel_pytree(params)[0]))
        return jnp.where(finite, _accuracy(self.model.apply(params, images), labels), jnp.nan)

    def fitness(self, individual: dict[str, Array], key: Array) -> Array:
        """Validation accuracy after a whole training under ``individual`` (NaN if it diverged)."""
        params, final_loss = self.fit(individual, key)
        return self.score(params, final_loss, *self.validation)

    def optimizee(self, key: Array, *, chunk: int | None = None) -> Optimizee:
        """The hyperparameter search as an optimizee (accuracy maximised); generation g trains from
        ``fold_in(key, g)`` for every individual. ``chunk``: see :func:`run_optimizee`."""
        return run_optimizee(self.fitness, self.hyperparameters, key, chunk=chunk, name="inner-training",
                             info={"n_steps": self.n_steps, "batch_size": self.batch_size})


@dataclasses.dataclass(frozen=True, eq=False)
class NestedEnKF:
    """Inner EKI training of an MLP, tunable in γ, ensemble size and repetitions, shape-stable.

    model:        flax module on flattened images; the ensemble is ``ensemble_max`` draws of
                  N(0, init_std²) around zero in its flat parameter space.
    n_batches:    minibatches of ``batch_size`` assimilated per inner run (the same batches for
                  every individual of a generation).
    n_seeds:      inner runs per individual (different initial ensembles and batches), fitness is
                  their mean accuracy: small ensembles vary a lot with their draw.
    Ranges (L2L's nested example): γ ∈ ``gamma``, J ∈ ``ensemble`` (integers), repetitions ∈ ``repetitions``.
    ensemble_buckets: ensemble sizes a run may hold (J_max is always one): a run holds the smallest
                  bucket >= its J, masked. Only pays off un-vmapped, with ``optimizee(key, chunk=1)``
                  (see :meth:`fit`); e.g. ``(12, 18, 24)`` on CPUs.
    """

    model: nn.Module
    train: tuple[Any, Any]
    validation: tuple[Any, Any]
    n_batches: int = 20
    batch_size: int = 32
    init_std: float = 0.1
    gamma: tuple[float, float] = (0.009, 1.0)
    ensemble: tuple[int, int] = (9, 30)
    repetitions: tuple[int, int] = (1, 3)
    n_seeds: int = 1
    ensemble_buckets: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        check_positive_int(self.n_batches, "n_batches")
        check_positive_int(self.n_seeds, "n_seeds")
        check_positive_int(self.batch_size, "batch_size")
        object.__setattr__(self, "train", _check_split(self.train, "train"))
        object.__setattr__(self, "validation", _check_split(self.validation, "validation"))
        if not (math.isfinite(self.init_std) and self.init_std > 0):
            raise ValueError(f"init_std must be finite and > 0, got {self.init_std}")
        Hyperparameter(*self.gamma, log=True)  # validates the γ range
        for name in ("ensemble", "repetitions"):
            lo, hi = getattr(self, name)
            if not (isinstance(lo, int | np.integer) and isinstance(hi, int | np.integer)) or lo > hi:
                raise ValueError(f"{name} range must be integers with low <= high, got {getattr(self, name)}")
        if self.ensemble[0] < 2:
            raise ValueError(f"ensemble sizes must be >= 2 (an ensemble needs spread), got {self.ensemble}")
        if self.repetitions[0] < 1:
            raise ValueError(f"repetitions must be >= 1, got {self.repetitions}")
        buckets = tuple(self.ensemble_buckets)
        if buckets and (any(isinstance(b, bool) or not isinstance(b, int | np.integer) for b in buckets)
                        or list(buckets) != sorted(set(buckets)) or buckets[0] < self.ensemble[0]
                        or buckets[-1] > self.ensemble[1]):
            raise ValueError(f"ensemble_buckets must be increasing integers within the ensemble range "
                             f"{self.ensemble}, got {self.ensemble_buckets!r}")
        if not buckets or buckets[-1] != self.ensemble[1]:
            buckets = (*buckets, self.ensemble[1])  # the largest ensemble always has a bucket
        object.__setattr__(self, "ensemble_buckets", tuple(int(b) for b in buckets))

    @property
    def hyperparameters(self) -> dict[str, Hyperparameter]:
        """Search space: log10 γ, and J and repetitions as reals rounded to the nearest integer."""
        return {"gamma": Hyperparameter(*self.gamma, log=True),
                "ensemble_size": Hyperparameter(self.ensemble[0] - 0.5, self.ensemble[1] + 0.5),
                "repetitions": Hyperparameter(self.repetitions[0] - 0.5, self.repetitions[1] + 0.5)}

    def settings(self, individual: dict[str, Array]) -> tuple[Array, Array, Array]:
        """(γ, J, repetitions) of an individual; J and repetitions are rounded and clipped to their ranges."""
        h = self.hyperparameters
        gamma = h["gamma"].to_value(individual["gamma"])
        size = jnp.clip(jnp.round(individual["ensemble_size"]), *self.ensemble).astype(jnp.int32)
        reps = jnp.clip(jnp.round(individual["repetitions"]), *self.repetitions).astype(jnp.int32)
        return gamma, size, reps

    def individual(self, gamma: float, ensemble_size: int, repetitions: int) -> dict[str, Array]:
        h = self.hyperparameters
        return {"gamma": jnp.float32(h["gamma"].to_search(gamma)),
                "ensemble_size": jnp.float32(h["ensemble_size"].to_search(ensemble_size)),
                "repetitions": jnp.float32(h["repetitions"].to_search(repetitions))}

    def _forward(self) -> tuple[Callable[[Array, Array], Array], int]:
        x = self.train[0]
        flat, unravel = ravel_pytree(self.model.init(jax.random.key(0), x[:1]))
        return (lambda u, images: self.model.apply(unravel(u), images)), flat.size

    def fit(self, individual: dict[str, Array], key: Array) -> tuple[Array, Array]:
        """One inner EKI run: (ensemble-mean weights (P,), validity mask (J_max,)). Jittable, vmappable.

        The run holds the smallest of ``ensemble_buckets`` members that is >= J (the first J valid)
        and applies exactly ``repetitions`` updates per batch (a ``fori_loop``). Un-vmapped (a single
        run, ``chunk=1``) both are real branches and loop counts, so a small setting does a small
        setting's work; under ``vmap`` over individuals XLA turns the bucket ``switch`` into a select
        that runs every bucket and the loop into one that runs to the largest count, so keep one
        bucket (the default) for vmapped populations. Members are drawn from ``fold_in(key, j)``, so
        the numbers do not depend on the bucket (tested).
        """
        gamma, size, reps = self.settings(individual)
        forward, dim = self._forward()
        x, y = self.train
        k_init, k_batches = jax.random.split(key)
        batch_keys = jax.random.split(k_batches, self.n_batches)

        def run(j_cap: int) -> Array:
            valid = jnp.arange(j_cap) < size
            ensemble = self.init_std * jax.vmap(
                lambda j: jax.random.normal(jax.random.fold_in(k_init, j), (dim,)))(jnp.arange(j_cap))

            def batch_step(U: Array, k_batch: Array) -> tuple[Array, None]:
                idx = jax.random.randint(k_batch, (self.batch_size,), 0, x.shape[0])
                targets = jax.nn.one_hot(y[idx], 10).ravel()

                def repetition(_: Array, U: Array) -> Array:
                    G = jax.vmap(forward, in_axes=(0, None))(U, x[idx]).reshape(j_cap, -1)
                    return masked_eki_update(U, G, targets, gamma, valid)

                return jax.lax.fori_loop(0, reps, repetition, U), None

            ensemble, _ = jax.lax.scan(batch_step, ensemble, batch_keys)
            return jnp.sum(jnp.where(valid[:, None], ensemble, 0.0), 0) / size

        buckets = self.ensemble_buckets
        if len(buckets) == 1:
            mean = run(buckets[0])
        else:
            branch = jnp.searchsorted(jnp.asarray(buckets), size)  # the first bucket >= J
            mean = jax.lax.switch(branch, [lambda b=b: run(b) for b in buckets])
        return mean, jnp.arange(self.ensemble[1]) < size

    def accuracy(self, mean: Array, images: Array, labels: Array) -> Array:
        forward, _ = self._forward()
        finite = jnp.all(jnp.isfinite(mean))
        return jnp.where(finite, _accuracy(forward(mean, images), labels), jnp.nan)

    def fitness(self, individual: dict[str, Array], key: Array) -> Array:
        """Mean validation accuracy of ``n_seeds`` inner runs (seed s from ``fold_in(key, s)``)."""
        def one(seed: Array) -> Array:
            mean, _ = self.fit(individual, jax.random.fold_in(key, seed))
            return self.accuracy(mean, *self.validation)

        if self.n_seeds == 1:  # no batch-one vmap: jaxlib 0.10.2 CPU miscompiles it (tests/test_jax_regressions.py)
            return one(jnp.array(0))
        return jnp.mean(jax.vmap(one)(jnp.arange(self.n_seeds)))

    def optimizee(self, key: Array, *, chunk: int | None = None) -> Optimizee:
        """The nested problem for an outer optimizer (validation accuracy maximised); ``chunk``: see
        :func:`run_optimizee`."""
        return run_optimizee(self.fitness, self.hyperparameters, key, chunk=chunk, name="nested-enkf",
                             info={"n_batches": self.n_batches, "batch_size": self.batch_size,
                                   "n_seeds": self.n_seeds})
