"""The two loops as data: search spaces, optimizees, evaluations and the optimizer protocol.

Outer loop:  ``state --ask(key)--> population``          (pytree, leading axis J)
Inner loop:  ``population --optimizee--> Evaluation``   (vmapped and jitted here, never by users)
Outer loop:  ``state, population, Evaluation --tell--> state``

Optimizers work on flat ``(J, P)`` float arrays; individuals are pytrees only at the edges.
Every optimizer *maximises* ``Evaluation.score = fitness @ weights`` (L2L's ``fitness_weights``:
a positive weight maximises that objective, a negative one minimises it). A row whose fitness
has any non-finite entry scores ``-inf``: it is never elite, never best, and optimizers keep it
out of their state.

Optimizers and optimizees are immutable (:class:`Frozen`, frozen dataclasses): a changed
setting is a new object (``opt.replace(pop_size=16)``), so programs compiled for an object stay
right. Hyperparameters follow one rule: continuous ones (rates, temperatures, step sizes) are
fields of the optimizer's ``Params`` pytree, which is vmappable, schedulable and checked; those
that decide shapes or code paths (population sizes, the number of components, a schedule's
name) are static constructor arguments. Floating-point state has the dtype of the individuals'
template (float32 by default; float64 templates under ``jax_enable_x64`` give float64 state).

The optimizee contract (:class:`Optimizee`), one signature per kind. A JAX function of ONE
individual, vmapped and jitted here::

    >>> import jax, jax.numpy as jnp, numpy as np, l2ljax
    >>> def sphere(x, key):                                   # fitness of one individual
    ...     return jnp.sum(x ** 2)
    >>> problem = l2ljax.Optimizee.create(sphere, jnp.zeros(3), lower=-5.0, upper=5.0)
    >>> problem.evaluate(jax.random.key(0), jnp.ones((4, 3))).fitness.ravel().tolist()
    [3.0, 3.0, 3.0, 3.0]

With data (Kalman methods): ``data(generation) -> (inputs, targets)``, and the function returns
its outputs too; the evaluation carries them as :class:`KalmanData`::

    >>> A, y = jnp.eye(2), jnp.array([1.0, 2.0])
    >>> def model(u, key, inputs):                            # (fitness, outputs G(u))
    ...     return -jnp.sum((A @ u - y) ** 2), A @ u
    >>> inverse = l2ljax.Optimizee.create(model, jnp.zeros(2), weights=(1.0,), data=lambda g: (None, y))
    >>> inverse.evaluate(jax.random.key(0), jnp.zeros((5, 2))).kalman.outputs.shape
    (5, 2)

A host simulator (not JAX code) scores numpy rows: ``fn(population, seed, first_row)``::

    >>> def simulate(population, seed, first_row):           # population: numpy, leading axis = rows
    ...     return np.sum(population ** 2, axis=1)
    >>> host = l2ljax.Optimizee.create(simulate, jnp.zeros(3), lower=-1.0, upper=1.0, jittable=False)
    >>> host.evaluate(jax.random.key(0), jnp.ones((2, 3))).fitness.ravel().tolist()
    [3.0, 3.0]

The outer loop, by hand (``l2ljax.run`` does this)::

    >>> problem = l2ljax.function_optimizee("rastrigin", dim=2)
    >>> opt = l2ljax.CrossEntropy(problem, pop_size=32)
    >>> state = opt.init(jax.random.key(0))
    >>> population = opt.ask(jax.random.key(1), state)
    >>> state = opt.tell(state, population, problem.evaluate(jax.random.key(2), population))
    >>> int(state.generation), population.shape
    (1, (32, 2))
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import math
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct
from jax.flatten_util import ravel_pytree

from l2ljax.parallel import coordinator

Array = jax.Array
PyTree = Any


def is_concrete(*values: Any) -> bool:
    """True when no leaf is a tracer, so values can be checked on the host (not under jit/vmap)."""
    return not any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree_util.tree_leaves(values))


def as_key(key: Any) -> Array:
    """Accept a typed key (``jax.random.key``) or a legacy uint32 key; reject anything else."""
    if isinstance(key, int | np.integer):
        raise TypeError("expected a JAX PRNG key, got an int: use jax.random.key(seed)")
    key = jnp.asarray(key) if not isinstance(key, jax.Array) else key
    if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        if key.shape != ():
            raise TypeError(f"expected one PRNG key, got a batch of shape {key.shape} (run_many takes batches)")
        return key
    if key.dtype == jnp.uint32 and key.shape == (2,):
        return jax.random.wrap_key_data(key)
    raise TypeError(f"expected a JAX PRNG key, got an array of dtype {key.dtype} and shape {key.shape}")


# --------------------------------------------------------------------------- search space


@dataclasses.dataclass(frozen=True, eq=False)
class Space:
    """A box-bounded search space of pytree individuals, flattened to ``dim`` floats.

    ``lower``/``upper`` are flat float64 numpy arrays (``-inf``/``inf`` where unbounded);
    ``sample(key) -> (dim,)`` draws one initial individual (L2L's ``create_individual``);
    ``dtype``: the flat individuals' dtype (the template's), which optimizer states keep.
    """

    unravel: Callable[[Array], PyTree]
    dim: int
    lower: np.ndarray
    upper: np.ndarray
    sample: Callable[[Array], Array]
    dtype: Any = jnp.float32

    @property
    def bounded(self) -> bool:
        return bool(np.all(np.isfinite(self.lower)) and np.all(np.isfinite(self.upper)))

    def clip(self, flat: Array) -> Array:
        """The one place where bounds are applied (L2L's ``bounding_func``)."""
        if np.all(np.isinf(self.lower)) and np.all(np.isinf(self.upper)):
            return flat
        return jnp.clip(flat, jnp.asarray(self.lower, flat.dtype), jnp.asarray(self.upper, flat.dtype))

    def ravel(self, individual: PyTree) -> Array:
        return ravel_pytree(individual)[0]

    def to_flat(self, population: PyTree) -> Array:
        """Pytree population with leading axis J -> ``(J, dim)``; checks structure and shapes."""
        flat = jax.vmap(lambda ind: ravel_pytree(ind)[0])(population)
        if flat.ndim != 2 or flat.shape[1] != self.dim:
            raise ValueError(f"population flattens to shape {flat.shape}, expected (J, {self.dim})")
        return flat

    def to_pytree(self, flat: Array) -> PyTree:
        return jax.vmap(self.unravel)(flat)

    @staticmethod
    def from_template(
        template: PyTree,
        lower: PyTree | float | None = None,
        upper: PyTree | float | None = None,
        sample: Callable[[Array], PyTree] | None = None,
    ) -> Space:
        """Build a space from an example individual and bounds (scalars or pytrees like it).

        Without ``sample``, initial individuals are uniform in the box when it is bounded,
        otherwise standard normal around the template.
        """
        flat, unravel = ravel_pytree(template)
        if flat.size == 0:
            raise ValueError("the individual template has no parameters")
        if not jnp.issubdtype(flat.dtype, jnp.floating):
            raise TypeError(f"individuals must be floating point, template flattens to {flat.dtype}")
        dim = int(flat.size)
        lo = _flat_bound(lower, template, dim, -np.inf, "lower")
        hi = _flat_bound(upper, template, dim, np.inf, "upper")
        bad = np.flatnonzero(lo > hi)
        if bad.size:
            i = int(bad[0])
            raise ValueError(f"bounds with lower > upper at flat index {i}: {lo[i]} > {hi[i]}")
        empty = np.flatnonzero((lo == np.inf) | (hi == -np.inf))
        if empty.size:
            i = int(empty[0])
            raise ValueError(f"bounds at flat index {i} admit no value (lower {lo[i]}, upper {hi[i]}): use -inf/inf "
                             "for an unbounded coordinate, or finite bounds")
        if sample is not None:
            def sample_flat(key: Array) -> Array:
                return ravel_pytree(sample(key))[0].astype(flat.dtype)
        elif np.all(np.isfinite(lo)) and np.all(np.isfinite(hi)):
            def sample_flat(key: Array) -> Array:
                return jax.random.uniform(key, (dim,), flat.dtype, jnp.asarray(lo), jnp.asarray(hi))
        else:
            def sample_flat(key: Array) -> Array:
                return flat + jax.random.normal(key, (dim,), flat.dtype)
        return Space(unravel=unravel, dim=dim, lower=lo, upper=hi, sample=sample_flat, dtype=flat.dtype)


def _flat_bound(bound: Any, template: PyTree, dim: int, default: float, which: str) -> np.ndarray:
    if bound is None:
        return np.full(dim, default)
    if np.ndim(bound) == 0 and not isinstance(bound, dict | list | tuple):
        value = float(bound)
        if math.isnan(value):
            raise ValueError(f"{which} bound is NaN")
        return np.full(dim, value)
    if jax.tree_util.tree_structure(bound) != jax.tree_util.tree_structure(template):
        raise ValueError(
            f"{which} bound pytree does not match the individual: "
            f"{jax.tree_util.tree_structure(bound)} vs {jax.tree_util.tree_structure(template)}"
        )
    for b, t in zip(jax.tree_util.tree_leaves(bound), jax.tree_util.tree_leaves(template), strict=True):
        if np.shape(b) not in ((), np.shape(t)):
            raise ValueError(f"{which} bound leaf of shape {np.shape(b)} does not match leaf {np.shape(t)}")
    leaves = [np.broadcast_to(np.asarray(b, np.float64), np.shape(t)) for b, t in
              zip(jax.tree_util.tree_leaves(bound), jax.tree_util.tree_leaves(template), strict=True)]
    out = np.concatenate([leaf.ravel() for leaf in leaves])
    if np.isnan(out).any():
        raise ValueError(f"{which} bound contains NaN")
    return out


# --------------------------------------------------------------------------- evaluation


class KalmanData(NamedTuple):
    """The extension of an evaluation that Kalman methods need (optimizees with ``data``).

    outputs:  (J, M) every individual's model outputs G(u_j).
    targets:  (M,) the observations y the outputs should match.
    """

    outputs: Array
    targets: Array


class Evaluation(NamedTuple):
    """What the inner loop returns for a population of J individuals.

    fitness:  (J, n_obj) raw objective values as the optimizee returned them.
    weighted: (J, n_obj) fitness * weights; rows with any non-finite value are ``-inf``.
    score:    (J,) sum of ``weighted``: the scalar every optimizer maximises.
    kalman:   :class:`KalmanData` (outputs and observations) from optimizees with ``data``, else
              None; ``outputs`` and ``targets`` read it (None without it).
    """

    fitness: Array
    weighted: Array
    score: Array
    kalman: KalmanData | None = None

    @property
    def outputs(self) -> Array | None:
        return None if self.kalman is None else self.kalman.outputs

    @property
    def targets(self) -> Array | None:
        return None if self.kalman is None else self.kalman.targets


def make_evaluation(
    fitness: Array,
    weights: Sequence[float] | Array,
    outputs: Array | None = None,
    targets: Array | None = None,
) -> Evaluation:
    """Weight raw fitness into the score optimizers maximise; non-finite rows score -inf."""
    fitness = jnp.asarray(fitness)
    if jnp.iscomplexobj(fitness):
        raise TypeError(f"fitness is complex ({fitness.dtype}): return real numbers (e.g. the .real part or the abs)")
    if fitness.ndim == 1:
        fitness = fitness[:, None]
    weights = jnp.asarray(weights, fitness.dtype if jnp.issubdtype(fitness.dtype, jnp.floating) else jnp.float32)
    if fitness.ndim != 2 or fitness.shape[1] != weights.shape[0]:
        raise ValueError(f"fitness of shape {fitness.shape} does not match {weights.shape[0]} fitness weights")
    valid = jnp.all(jnp.isfinite(fitness), axis=1)
    if outputs is not None:
        valid &= jnp.all(jnp.isfinite(outputs.reshape(outputs.shape[0], -1)), axis=1)
    product = fitness * weights
    valid &= jnp.all(jnp.isfinite(product), axis=1)  # finite fitness can overflow once weighted
    total = jnp.sum(jnp.where(valid[:, None], product, 0.0), axis=1)
    valid &= jnp.isfinite(total)
    weighted = jnp.where(valid[:, None], product, -jnp.inf)
    score = jnp.where(valid, total, -jnp.inf)
    kalman = None if outputs is None and targets is None else KalmanData(outputs, targets)
    return Evaluation(fitness, weighted, score, kalman)


def host_convention(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` as a host simulator of the contract, ``fn(population, seed, first_row)``.

    A function of two positional parameters, ``fn(population, seed)``, is wrapped once: the
    slice starting at row 0 gets ``seed``, any other slice (another MPI rank's) a seed derived
    from ``(seed, first_row)``, so that two ranks never draw the same noise.
    """
    try:
        parameters = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):  # a builtin without a signature: take it as the contract
        return fn
    positional = [p for p in parameters if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if len(positional) >= 3 or any(p.kind == p.VAR_POSITIONAL for p in parameters):
        return fn

    @functools.wraps(fn)
    def with_first_row(population: PyTree, seed: int, first_row: int) -> Any:
        if first_row:
            seed = int(np.random.SeedSequence([seed, first_row]).generate_state(1)[0] >> 1)
        return fn(population, seed)

    return with_first_row


def check_weights(weights: Sequence[float]) -> tuple[float, ...]:
    weights = tuple(float(w) for w in np.atleast_1d(np.asarray(weights, dtype=np.float64)))
    if not weights:
        raise ValueError("fitness weights are empty: give one weight per objective, e.g. (-1.0,) to minimise")
    if not all(math.isfinite(w) and w != 0.0 for w in weights):
        raise ValueError(f"fitness weights must be finite and nonzero, got {weights}")
    return weights


# --------------------------------------------------------------------------- optimizee


def map_rows(fn: Callable, individuals: Any, keys: Array, *shared: Any) -> Any:
    """``vmap(fn)`` over individuals and keys (``shared`` broadcast), but a single row is called
    directly: XLA in jaxlib 0.10.2 miscompiles some jitted vmaps over a batch of one on CPU
    (garbage and NaN values; ``tests/test_jax_regressions.py``), and one row needs no vmap."""
    if keys.shape[0] == 1:
        first = jax.tree_util.tree_map(lambda a: a[0], individuals)
        return jax.tree_util.tree_map(lambda a: jnp.asarray(a)[None], fn(first, keys[0], *shared))
    return jax.vmap(fn, in_axes=(0, 0) + (None,) * len(shared))(individuals, keys, *shared)


@dataclasses.dataclass(frozen=True, eq=False)
class Optimizee:
    """The inner loop. The contract, one signature per kind:

    - JAX: ``fn(individual, key) -> fitness`` (scalar or ``(n_obj,)``) scores ONE individual;
      l2ljax vmaps and jits it.
    - JAX with data (Kalman methods): ``fn(individual, key, inputs) -> (fitness, outputs)``,
      where ``data(generation) -> (inputs, targets)`` picks the minibatch of a generation
      (jittable, e.g. indexing arrays already on the device); the evaluation then carries
      :class:`KalmanData`. ``population_fn(flat_population, keys, inputs) -> (fitness,
      outputs)``, if given, replaces the vmap of ``fn`` for the whole population at once (a
      hand-batched forward, e.g. one grouped convolution for a whole ensemble); ``fn`` must
      compute the same thing.
    - Host (``jittable=False``, simulators that are not JAX code): ``fn(population, seed,
      first_row) -> (rows, n_obj)`` scores a numpy pytree population (leading axis = rows) on
      the host; ``first_row`` is the index of its first row in the whole population and
      ``seed`` is the same on every MPI rank, so per-row seeds can be independent of the split.
      A two-argument ``fn(population, seed)`` is accepted too: it gets a seed of its own for
      each slice of rows (see :func:`host_convention`).

    ``weights`` are L2L's ``fitness_weights``. ``noise_std`` adds N(0, noise_std²) to every
    objective (L2L's noisy benchmark functions).
    """

    fn: Callable[..., Any]
    space: Space
    weights: tuple[float, ...] = (-1.0,)
    noise_std: float = 0.0
    name: str = "optimizee"
    data: Callable[[Array], tuple[Array, Array]] | None = None
    jittable: bool = True
    info: dict = dataclasses.field(default_factory=dict)
    population_fn: Callable[..., Any] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "weights", check_weights(self.weights))
        if not self.jittable:
            object.__setattr__(self, "fn", host_convention(self.fn))
        if not self.jittable and self.data is not None:
            raise ValueError(f"{self.name}: host-evaluated (jittable=False) optimizees take no data schedule")
        if not (math.isfinite(self.noise_std) and self.noise_std >= 0):
            raise ValueError(f"noise_std must be finite and >= 0, got {self.noise_std}")

    @staticmethod
    def create(
        fn: Callable[..., Any],
        template: PyTree,
        *,
        lower: PyTree | float | None = None,
        upper: PyTree | float | None = None,
        sample: Callable[[Array], PyTree] | None = None,
        weights: Sequence[float] = (-1.0,),
        noise_std: float = 0.0,
        name: str = "optimizee",
        data: Callable[[Array], tuple[Array, Array]] | None = None,
        jittable: bool = True,
        info: dict | None = None,
        population_fn: Callable[..., Any] | None = None,
    ) -> Optimizee:
        """Build an optimizee from a function of one individual, an example individual and bounds.

        ``info``: JSON-able facts recorded in run metadata (e.g. the known optimum).
        """
        space = Space.from_template(template, lower, upper, sample)
        return Optimizee(fn, space, tuple(weights), noise_std, name, data, jittable, dict(info or {}),
                         population_fn)

    @property
    def n_objectives(self) -> int:
        return len(self.weights)

    def evaluate_flat(self, key: Array, population: Array, generation: Array | int = 0,
                      parallel: Any = None, rows: Any = None) -> Evaluation:
        """Score a flat ``(J, dim)`` population: vmap of ``fn`` over individuals (jittable).

        parallel: an ``l2ljax.parallel`` scheme that splits the rows over devices or ranks. Keys
        are drawn for the whole population first, so the numbers do not depend on the split.
        rows: ``population`` is this shard's rows of a sharded population (:mod:`l2ljax.rows`):
        they are scored here, with their rows of the whole population's keys, and not split again.
        """
        n = population.shape[0]
        sharded = rows is not None and not rows.whole
        k_eval, k_noise = jax.random.split(key)
        keys = rows.keys(k_eval) if sharded else jax.random.split(k_eval, n)
        inputs, targets = (None, None) if self.data is None else self.data(jnp.asarray(generation))

        def score_rows(rows: tuple[Array, Array]) -> tuple[Array, Array | None]:
            rows_flat, rows_keys = rows
            if self.data is None:
                return map_rows(self.fn, self.space.to_pytree(rows_flat), rows_keys), None
            if self.population_fn is not None:
                return self.population_fn(rows_flat, rows_keys, inputs)
            return map_rows(self.fn, self.space.to_pytree(rows_flat), rows_keys, inputs)

        if sharded:
            fitness, outputs = score_rows((population, keys))
        else:
            fitness, outputs = coordinator(parallel).map_rows(score_rows, (population, keys))
        if outputs is not None:  # only optimizees with data produce outputs for Kalman methods
            outputs, targets = outputs.reshape(n, -1), jnp.ravel(targets)
        fitness = jnp.asarray(fitness).reshape(n, -1)
        if fitness.shape[1] != self.n_objectives:
            raise ValueError(f"{self.name} returned {fitness.shape[1]} objectives but has "
                             f"{self.n_objectives} fitness weights")
        if self.noise_std > 0:
            shape = (rows.total_rows if sharded else n, fitness.shape[1])
            noise = self.noise_std * jax.random.normal(k_noise, shape, fitness.dtype)  # (J, objectives): drawn whole
            fitness = fitness + (rows.own(noise) if sharded else noise)
        return make_evaluation(fitness, self.weights, outputs, targets)

    def evaluate_host(self, key: Array, population: Array, generation: int = 0, parallel: Any = None
                      ) -> Evaluation:
        """Host-side evaluation for optimizees that are not JAX code (split over MPI ranks by
        ``parallel``): ``fn(rows, seed, first_row)`` on each slice of rows."""
        seed = int(jax.random.randint(key, (), 0, 2**31 - 1))

        def score_rows(rows: np.ndarray, rows_seed: int, first_row: int = 0) -> np.ndarray:
            individuals = jax.tree_util.tree_map(np.asarray, self.space.to_pytree(jnp.asarray(rows)))
            fitness = np.asarray(self.fn(individuals, rows_seed, first_row), dtype=np.float64)
            if fitness.shape[:1] != (rows.shape[0],):
                raise ValueError(f"{self.name} returned fitness of shape {fitness.shape} for {rows.shape[0]} "
                                 "individuals: expected one row per individual")
            return fitness.reshape(rows.shape[0], -1)

        rows = np.asarray(population)
        fitness = coordinator(parallel).map_rows_host(score_rows, rows, seed)
        if self.noise_std > 0:
            fitness = fitness + self.noise_std * np.random.default_rng(seed).normal(size=fitness.shape)
        return make_evaluation(jnp.asarray(fitness, population.dtype), self.weights)

    def evaluate(self, key: Array, population: PyTree, generation: Array | int = 0) -> Evaluation:
        """Score a pytree population (leading axis J)."""
        flat = self.space.to_flat(population)
        if self.jittable:
            return self.evaluate_flat(as_key(key), flat, generation)
        return self.evaluate_host(as_key(key), flat, int(generation))


# --------------------------------------------------------------------------- optimizers


@struct.dataclass
class NoParams:
    """Hyperparameters of an optimizer that has none."""


@struct.dataclass
class OptState:
    """State shared by every optimizer: its hyperparameters, its own state, best-so-far.

    params:     hyperparameter pytree (vmap over it to run many settings at once).
    inner:      the optimizer-specific state.
    best_x:     (dim,) best individual seen so far (flat).
    best_score: () its score (``-inf`` until a finite one is seen).
    generation: () number of ``tell`` calls so far.
    """

    params: Any
    inner: Any
    best_x: Array
    best_score: Array
    generation: Array


class _FreezeAfterInit(type):
    """Freezes an instance once its (most derived) ``__init__`` has returned, and keeps the
    constructor arguments for ``replace``."""

    def __call__(cls, *args: Any, **kwargs: Any) -> Any:
        instance = super().__call__(*args, **kwargs)
        object.__setattr__(instance, "_arguments", (args, kwargs))
        object.__setattr__(instance, "_frozen", True)
        return instance


class Frozen(metaclass=_FreezeAfterInit):
    """A configuration object that cannot change after construction: compiled programs are
    cached per object, so a setting changed in place would silently run the old program.
    ``replace(**changes)`` builds a new object from the constructor arguments and the changes."""

    def __setattr__(self, name: str, value: Any) -> None:
        if self.__dict__.get("_frozen"):
            raise AttributeError(f"{type(self).__name__} is immutable: make a new one with "
                                 f".replace({name}=...) instead of setting {name}")
        object.__setattr__(self, name, value)

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"{type(self).__name__} is immutable: cannot delete {name}")

    def replace(self, **changes: Any) -> Any:
        """A new object built like this one, with the constructor arguments in ``changes`` replaced."""
        args, kwargs = self.__dict__["_arguments"]
        signature = inspect.signature(type(self).__init__)
        bound = signature.bind(None, *args, **kwargs)
        unknown = set(changes) - set(signature.parameters)
        if unknown:
            raise TypeError(f"{type(self).__name__} takes no argument(s) {sorted(unknown)}")
        bound.arguments.update(changes)
        return type(self)(*bound.args[1:], **bound.kwargs)


class Optimizer(Frozen):
    """Static configuration plus the pure functions ``init``, ``ask`` and ``tell``.

    Subclasses define ``Params`` (a ``flax.struct`` dataclass of hyperparameters with
    defaults) and implement ``_init``, ``_ask`` and ``_tell`` on flat arrays. Shared
    mechanics live here once: pytree <-> flat conversion, bounds, best-so-far tracking,
    NaN-safety of the score and validation of hyperparameters.
    """

    Params: type = NoParams
    name: str = "optimizer"
    # Optimizers whose state is the population name its population-sized fields (of ``inner``);
    # a sharding coordinator then gives them ``rows`` (l2ljax.rows) and keeps only those rows.
    sharded_fields: tuple[str, ...] = ()
    rows: Any = None

    @property
    def shardable(self) -> bool:
        """Whether this configuration can run on a shard's rows (``sharded_fields`` and no
        strategy that needs every member in one place)."""
        return bool(self.sharded_fields)

    def __init__(self, space: Space | Optimizee, pop_size: int):
        self.space = space.space if isinstance(space, Optimizee) else space
        if not isinstance(self.space, Space):
            raise TypeError(f"expected a Space or an Optimizee, got {type(space).__name__}")
        self.pop_size = check_positive_int(pop_size, "pop_size")

    # -- hyperparameters
    @property
    def default_params(self) -> Any:
        return self.Params()

    def resolve(self, params: Any) -> Any:
        """``params`` with every hyperparameter that defaults to a value depending on the
        configuration (e.g. CMA-ES's rates, given as None) filled in; ``init`` stores the result,
        so a state's params are complete, vmappable and schedulable."""
        return params

    def check_params(self, params: Any) -> None:
        """Reject non-finite or out-of-range hyperparameters (only when they are concrete)."""
        for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
            if is_concrete(leaf) and not np.all(np.isfinite(np.asarray(leaf, dtype=np.float64))):
                raise ValueError(f"{self.name}: hyperparameter {jax.tree_util.keystr(path)} is not finite: {leaf}")
        self._check_params(params)

    def _check_params(self, params: Any) -> None:
        pass

    # -- the protocol
    def init(self, key: Array, params: Any = None, x0: PyTree | None = None) -> OptState:
        """Fresh state. ``x0``: the initial individual (pytree); default: ``space.sample``."""
        key = as_key(key)
        params = self.resolve(self.default_params if params is None else params)
        self.check_params(params)
        params = jax.tree_util.tree_map(jnp.asarray, params)
        k_x0, k_init = jax.random.split(key)
        if x0 is None:
            flat_x0 = self.space.sample(k_x0)
        else:
            template = jax.eval_shape(self.space.unravel, jax.ShapeDtypeStruct((self.space.dim,), self.space.dtype))
            if (jax.tree_util.tree_structure(x0) != jax.tree_util.tree_structure(template) or any(
                    np.shape(a) != b.shape for a, b in zip(jax.tree_util.tree_leaves(x0),
                                                           jax.tree_util.tree_leaves(template), strict=True))):
                shapes = jax.tree_util.tree_map(np.shape, x0), jax.tree_util.tree_map(lambda t: t.shape, template)
                raise ValueError(f"x0 does not match the individuals' structure: {shapes[0]} vs {shapes[1]}")
            flat_x0 = ravel_pytree(x0)[0]
            if is_concrete(flat_x0) and not np.all(np.isfinite(np.asarray(flat_x0))):
                raise ValueError("x0 contains NaN or inf")
        return self._jit_init(k_init, jnp.asarray(flat_x0, self.space.dtype), params)

    @functools.cached_property
    def _jit_init(self) -> Callable[[Array, Array, Any], OptState]:
        def init_flat(key: Array, flat_x0: Array, params: Any) -> OptState:
            flat_x0 = self.space.clip(flat_x0)
            inner = self._init(key, flat_x0, params)
            return OptState(params, inner, flat_x0, jnp.array(-jnp.inf, flat_x0.dtype), jnp.array(0, jnp.int32))

        return jax.jit(init_flat)

    def ask_flat(self, key: Array, state: OptState) -> Array:
        population = self._ask(as_key(key), state.inner, state.params)
        return self.space.clip(population)

    def ask(self, key: Array, state: OptState) -> PyTree:
        """The next population: a pytree whose leaves have leading axis J, within bounds."""
        return self.space.to_pytree(self.ask_flat(key, state))

    def tell_flat(self, state: OptState, population: Array, evaluation: Evaluation) -> OptState:
        if population.ndim != 2 or population.shape[1] != self.space.dim:
            raise ValueError(f"population of shape {population.shape} does not match (J, {self.space.dim})")
        if evaluation.score.shape != (population.shape[0],):
            raise ValueError(f"evaluation scores of shape {evaluation.score.shape} do not match "
                             f"the population of {population.shape[0]} individuals")
        score = jnp.where(jnp.isnan(evaluation.score), -jnp.inf, evaluation.score)
        evaluation = evaluation._replace(score=score)
        inner = self._tell(state.inner, population, evaluation, state.params)
        if self.rows is None:
            i = jnp.argmax(score)
            top_score, top_x = score[i], population[i]
        else:  # a shard's rows: the best of every shard
            top_score, top_x = self.rows.best(score, population)
        better = top_score > state.best_score
        return state.replace(
            inner=inner,
            best_x=jnp.where(better, top_x, state.best_x),
            best_score=jnp.where(better, top_score, state.best_score).astype(state.best_score.dtype),
            generation=state.generation + 1,
        )

    def tell(self, state: OptState, population: PyTree, evaluation: Evaluation) -> OptState:
        """Update the state with the scored population (maximising ``evaluation.score``)."""
        return self.tell_flat(state, self.space.to_flat(population), evaluation)

    def diagnostics(self, state: OptState) -> dict[str, Array]:
        """Scalars or small arrays recorded in the trajectory every generation."""
        return {}

    def best(self, state: OptState) -> PyTree:
        return self.space.unravel(state.best_x)

    # -- to implement
    def _init(self, key: Array, x0: Array, params: Any) -> Any:
        raise NotImplementedError

    def _ask(self, key: Array, inner: Any, params: Any) -> Array:
        raise NotImplementedError

    def _tell(self, inner: Any, population: Array, evaluation: Evaluation, params: Any) -> Any:
        raise NotImplementedError

    def config(self) -> dict[str, Any]:
        """The static configuration, for trajectory metadata."""
        return {"name": self.name, "pop_size": self.pop_size, "dim": self.space.dim}


def check_positive_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def check_range(params: Any, name: str, lo: float, hi: float, *, lo_open: bool = False, hi_open: bool = False,
                owner: str = "") -> None:
    """Range check of one concrete hyperparameter, skipped under tracing."""
    value = getattr(params, name)
    if not is_concrete(value):
        return
    v = np.asarray(value, dtype=np.float64)
    below = v <= lo if lo_open else v < lo
    above = v >= hi if hi_open else v > hi
    if np.any(below) or np.any(above):
        lb, rb = "(" if lo_open else "[", ")" if hi_open else "]"
        raise ValueError(f"{owner}: {name} must lie in {lb}{lo}, {hi}{rb}, got {value}")


def descending_ranks(score: Array) -> Array:
    """0-based rank of every row, best (highest score) first; -inf rows last."""
    order = jnp.argsort(-score)
    return jnp.empty_like(order).at[order].set(jnp.arange(score.shape[0]))


def centered_ranks(score: Array) -> Array:
    """Utilities in [-0.5, 0.5] by rank (Salimans et al. 2017); -inf scores get the lowest."""
    n = score.shape[0]
    order = jnp.argsort(score)
    dtype = score.dtype if jnp.issubdtype(score.dtype, jnp.floating) else jnp.float32
    ranks = jnp.zeros(n, dtype).at[order].set(jnp.arange(n, dtype=dtype))  # one sort, not two
    return ranks / max(n - 1, 1) - 0.5
