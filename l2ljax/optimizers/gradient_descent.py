"""Gradient ascent on finite-difference gradient estimates, with any optax update rule.

L2L ``GradientDescentOptimizer`` (variants ClassicGD, StochasticGD, RMSProp, Adam, AdaMax).
Each generation evaluates the current θ and n = ``n_random_steps`` random neighbours

    x_k = θ + ΔX_k,   ΔX_k ~ N(0, e² I)                      (e = exploration_step_size)

and estimates the gradient of the score f (the quantity every l2ljax optimizer maximises)
by least squares on the finite differences, the minimum-norm solution when n < dim:

    g = argmin_g ‖ΔX g − (f − f_0)‖² = pinv(ΔX) (f − f_0)        (f_0 = score of θ)

The step comes from an optax ``GradientTransformation`` fed the *negated* estimate, so that
optax's descent convention climbs the score: ``u, s = tx.update(−g, s, θ); θ ← θ + u``
(clipped to the bounds). The optax state lives in the optimizer state. The population is
the n neighbours followed by θ itself (L2L's order): ``pop_size = n_random_steps + 1``.

L2L parameter names: ``n_random_steps`` and the variant (constructor: shape and rule);
``exploration_step_size``, ``learning_rate`` and the variant's rates (``momentum_decay``,
``first_order_decay``, ``second_order_decay``, ``stochastic_deviation``, ``stochastic_decay``)
are fields of ``GradientDescentParams``, so they vmap and schedule like every optimizer's
hyperparameters. ``n_iteration``, ``stop_criterion`` and ``seed`` are arguments of
:func:`l2ljax.run` and its key (``seed=`` seeds StochasticGD's noise). Any other optax transform
can be passed as ``optimizer=`` (e.g. ``optax.sgd(0.01, momentum=0.9)``); its rates are then its
own (``optax.inject_hyperparams`` + :meth:`GradientDescent.set_hyperparams` puts them in the state).

Many learning rates in one program::

    opt = GradientDescent(problem, n_random_steps=8, variant="Adam")
    step = l2ljax.make_step(opt, problem)

    def best_score(lr, key):
        state = opt.init(key, params=opt.default_params.replace(learning_rate=lr), x0=x0)
        state, _ = jax.lax.scan(lambda s, _: step(s, key), state, None, length=200)
        return state.best_score

    jax.vmap(best_score, (0, None))(jnp.array([0.01, 0.03, 0.1]), jax.random.key(0))

Multi-parameter-set individuals (L2L ``MultiGradientDescent``, ``n_inner_params``): an l2ljax
individual is any pytree, so an individual of shape ``(n_inner_params, d)`` whose fitness
evaluates its parameter sets together (e.g. ``jnp.mean(jax.vmap(f)(individual))``) needs no
special optimizer: θ is the whole stack, and one finite-difference gradient moves every set.

Non-finite scores: neighbours with a non-finite score are dropped from the least squares
(their rows of ΔX and f − f_0 are zeroed); if f_0 itself is non-finite, or the step would
make θ or the optax state non-finite, the update is skipped (θ and the optax state stay).
A θ that has stepped into a region of non-finite fitness therefore stays there (there is no
gradient to follow): bound the space away from such regions or use a smaller learning rate.

Example::

    opt = GradientDescent(problem, n_random_steps=5, variant="Adam")
    params = opt.default_params.replace(learning_rate=0.05, exploration_step_size=0.01)
    result = l2ljax.run(opt, problem, jax.random.key(0), 300, params=params, x0=x0)
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import struct

from l2ljax.core import (
    Evaluation,
    Optimizee,
    Optimizer,
    OptState,
    Space,
    check_positive_int,
    check_range,
    is_concrete,
)
from l2ljax.optimizers._common import keep_finite

# --------------------------------------------------------------------------- L2L's update rules as optax


class DecayingNoiseState(NamedTuple):
    count: jax.Array  # () updates so far
    key: jax.Array  # PRNG key of the noise


def add_decaying_noise(deviation: float, decay: float, seed: int = 0) -> optax.GradientTransformation:
    """Add N(0, (deviation · decay^(t+1))²) to every gradient entry at update t = 0, 1, ...

    L2L's StochasticGD noise. ``optax.add_noise`` does not match it: its *variance* decays
    polynomially, η/(1 + t)^γ, where L2L's standard deviation decays geometrically.
    """
    if is_concrete(deviation, decay) and not (deviation >= 0 and 0 <= decay <= 1):
        raise ValueError(f"add_decaying_noise needs deviation >= 0 and decay in [0, 1], got {deviation}, {decay}")

    def init(params: Any) -> DecayingNoiseState:
        del params
        return DecayingNoiseState(jnp.array(0, jnp.int32), jax.random.key(seed))

    def update(updates: Any, state: DecayingNoiseState, params: Any = None) -> tuple[Any, DecayingNoiseState]:
        del params
        leaves, treedef = jax.tree_util.tree_flatten(updates)
        key, *keys = jax.random.split(state.key, len(leaves) + 1)
        noisy = [leaf + (deviation * jnp.power(decay, (state.count + 1).astype(leaf.dtype))
                         * jax.random.normal(k, leaf.shape, leaf.dtype)).astype(leaf.dtype)
                 for leaf, k in zip(leaves, keys, strict=True)]
        return jax.tree_util.tree_unflatten(treedef, noisy), DecayingNoiseState(state.count + 1, key)

    return optax.GradientTransformation(init, update)


_VARIANTS = {
    "ClassicGD": ("learning_rate",),
    "StochasticGD": ("learning_rate", "stochastic_deviation", "stochastic_decay"),
    "RMSProp": ("learning_rate", "momentum_decay"),
    "Adam": ("learning_rate", "first_order_decay", "second_order_decay"),
    "AdaMax": ("learning_rate", "first_order_decay", "second_order_decay"),
}
_ELSEWHERE = {
    "exploration_step_size": "a GradientDescentParams field",
    "n_random_steps": "an argument of GradientDescent",
    "n_iteration": "n_generations of l2ljax.run",
    "stop_criterion": "an argument of l2ljax.run",
}


def l2l_variant(name: str, seed: int = 0, **l2l_params: float) -> optax.GradientTransformation:
    """The optax transform of an L2L gradient-descent variant, from L2L's parameter names.

    ==============  ===============================================  ==============================================
    L2L variant     L2L parameters                                   optax transform
    ==============  ===============================================  ==============================================
    ClassicGD       learning_rate                                    ``sgd(learning_rate)``
    StochasticGD    learning_rate, stochastic_deviation,             ``chain(add_decaying_noise(deviation, decay,
                    stochastic_decay                                 seed), sgd(learning_rate))``
    RMSProp         learning_rate, momentum_decay                    ``rmsprop(learning_rate, decay=momentum_decay,
                                                                     eps=1e-6)`` (L2L's g/√(v + 1e-6), exactly)
    Adam            learning_rate, first_order_decay,                ``adam(learning_rate, b1, b2, eps=1e-8)``
                    second_order_decay                               (L2L's update, exactly)
    AdaMax          same as Adam                                     ``adamax(learning_rate, b1, b2, eps=1e-8)``
    ==============  ===============================================  ==============================================

    AdaMax follows Kingma & Ba (2015): the first moment is bias-corrected by 1/(1 − b1^t) and
    ε guards the division; L2L omits both (its early steps are smaller by 1 − b1^t).
    ``seed`` seeds StochasticGD's noise (L2L's ``seed``).
    """
    matches = [variant for variant in _VARIANTS if variant.lower() == str(name).lower()]
    if not matches:
        raise ValueError(f"unknown L2L gradient-descent variant {name!r}: choose one of {sorted(_VARIANTS)}")
    variant = matches[0]
    expected = _VARIANTS[variant]
    for key in l2l_params:
        if key in _ELSEWHERE:
            raise ValueError(f"{key} is not part of the update rule: it is {_ELSEWHERE[key]}")
        if key not in expected:
            raise ValueError(f"{variant} has no parameter {key!r}; it takes {expected}")
    missing = [key for key in expected if key not in l2l_params]
    if missing:
        raise ValueError(f"{variant} needs {missing}")
    p = {key: float(value) for key, value in l2l_params.items()}
    for name, value in p.items():
        if not math.isfinite(value):
            raise ValueError(f"{variant}: {name} must be finite, got {value}")
    if not p["learning_rate"] > 0:
        raise ValueError(f"{variant}: learning_rate must be positive, got {p['learning_rate']}")
    for key in ("momentum_decay", "first_order_decay", "second_order_decay"):
        if key in p and not 0 <= p[key] < 1:
            raise ValueError(f"{variant}: {key} must lie in [0, 1), got {p[key]}")
    return variant_transform(variant, p, seed)


def variant_transform(variant: str, p: Any, seed: int = 0) -> optax.GradientTransformation:
    """The optax transform of an L2L variant from its parameter values (a mapping or ``Params``;
    Python floats or traced arrays, so the rates can be vmapped)."""
    get = p.__getitem__ if isinstance(p, dict) else lambda name: getattr(p, name)
    if variant == "ClassicGD":
        return optax.sgd(get("learning_rate"))
    if variant == "StochasticGD":
        return optax.chain(add_decaying_noise(get("stochastic_deviation"), get("stochastic_decay"), seed),
                           optax.sgd(get("learning_rate")))
    if variant == "RMSProp":
        return optax.rmsprop(get("learning_rate"), decay=get("momentum_decay"), eps=1e-6)
    transform = optax.adam if variant == "Adam" else optax.adamax
    return transform(get("learning_rate"), b1=get("first_order_decay"), b2=get("second_order_decay"), eps=1e-8)


# --------------------------------------------------------------------------- the optimizer


@struct.dataclass
class GradientDescentParams:
    """The continuous hyperparameters. The rates (L2L's names) drive the L2L ``variant`` (default
    ClassicGD); only those the variant uses matter, and a transform passed as ``optimizer=``
    carries its own. Defaults: RMSProp's and Adam's decays as in Hinton's lecture and Kingma & Ba."""

    exploration_step_size: float = 0.01
    learning_rate: float = 0.01
    momentum_decay: float = 0.9
    first_order_decay: float = 0.9
    second_order_decay: float = 0.999
    stochastic_deviation: float = 1.0
    stochastic_decay: float = 0.99


class GradientDescentState(NamedTuple):
    theta: jax.Array  # (dim,) current individual
    opt_state: Any  # the optax transform's state
    current_score: jax.Array  # () score of θ in the last generation (L2L's current_fitness)
    gradient_norm: jax.Array  # () ‖g‖ of the last estimate


class GradientDescent(Optimizer):
    name = "GradientDescent"
    Params = GradientDescentParams

    def __init__(self, space: Space | Optimizee, n_random_steps: int = 5,
                 optimizer: optax.GradientTransformation | None = None, *, variant: str | None = None,
                 seed: int = 0):
        self.n_random_steps = check_positive_int(n_random_steps, "n_random_steps")
        super().__init__(space, self.n_random_steps + 1)
        if optimizer is not None and variant is not None:
            raise ValueError("give either an optax optimizer= or an L2L variant=, not both")
        if optimizer is not None and not (callable(getattr(optimizer, "init", None))
                                          and callable(getattr(optimizer, "update", None))):
            raise TypeError(f"optimizer must be an optax GradientTransformation, got {type(optimizer).__name__}")
        self.optimizer = optimizer
        self.variant = None
        if optimizer is None:
            matches = [v for v in _VARIANTS if v.lower() == str(variant or "ClassicGD").lower()]
            if not matches:
                raise ValueError(f"unknown L2L gradient-descent variant {variant!r}: choose one of {sorted(_VARIANTS)}")
            self.variant = matches[0]
        self.seed = int(seed)

    def _transform(self, params: GradientDescentParams) -> optax.GradientTransformation:
        return self.optimizer if self.variant is None else variant_transform(self.variant, params, self.seed)

    def _check_params(self, params: GradientDescentParams) -> None:
        check_range(params, "exploration_step_size", 0.0, float("inf"), lo_open=True, owner=self.name)
        if self.variant is not None:
            check_range(params, "learning_rate", 0.0, float("inf"), lo_open=True, owner=self.name)
            for name in ("momentum_decay", "first_order_decay", "second_order_decay"):
                check_range(params, name, 0.0, 1.0, hi_open=True, owner=self.name)
            check_range(params, "stochastic_deviation", 0.0, float("inf"), owner=self.name)
            check_range(params, "stochastic_decay", 0.0, 1.0, owner=self.name)

    def set_hyperparams(self, state: OptState, **values: Any) -> OptState:
        """Set hyperparameters of an ``optax.inject_hyperparams`` transform in ``state`` (vmappable)."""
        opt_state = state.inner.opt_state

        def is_array(path: Any, value: Any) -> bool:
            return isinstance(value, jax.Array)

        cast = {}
        for name, value in values.items():
            current = optax.tree_utils.tree_get(opt_state, name, filtering=is_array)
            if current is None:
                raise ValueError(f"{self.name}: the optax state has no hyperparameter {name!r}; build the transform "
                                 "with optax.inject_hyperparams to set its hyperparameters in the state")
            cast[name] = jnp.asarray(value, current.dtype)
        opt_state = optax.tree_utils.tree_set(opt_state, is_array, **cast)
        return state.replace(inner=state.inner._replace(opt_state=opt_state))

    def _init(self, key: jax.Array, x0: jax.Array, params: Any) -> GradientDescentState:
        return GradientDescentState(x0, self._transform(params).init(x0), jnp.array(-jnp.inf, x0.dtype),
                                    jnp.array(0.0, x0.dtype))

    def _ask(self, key: jax.Array, inner: GradientDescentState, params: GradientDescentParams) -> jax.Array:
        theta = inner.theta
        steps = params.exploration_step_size * jax.random.normal(key, (self.n_random_steps, theta.shape[0]),
                                                                 theta.dtype)
        return jnp.concatenate([theta + steps, theta[None]])

    def _tell(self, inner: GradientDescentState, population: jax.Array, evaluation: Evaluation,
              params: GradientDescentParams) -> GradientDescentState:
        n = self.n_random_steps
        f, f0 = evaluation.score[:n], evaluation.score[n]
        usable = jnp.isfinite(f) & jnp.isfinite(f0)
        dx = jnp.where(usable[:, None], population[:n] - inner.theta, 0.0)
        df = jnp.where(usable, f - f0, 0.0).astype(dx.dtype)
        gradient = jnp.linalg.pinv(dx) @ df
        updates, opt_state = self._transform(params).update(-gradient, inner.opt_state, inner.theta)
        theta = self.space.clip(optax.apply_updates(inner.theta, updates))
        theta, opt_state = keep_finite((theta, opt_state), (inner.theta, inner.opt_state), jnp.isfinite(f0))
        return GradientDescentState(theta, opt_state, f0.astype(theta.dtype),
                                    jnp.linalg.norm(gradient).astype(theta.dtype))

    def diagnostics(self, state: Any) -> dict[str, jax.Array]:
        return {"current_score": state.inner.current_score, "gradient_norm": state.inner.gradient_norm}

    def config(self) -> dict[str, Any]:
        return {**super().config(), "n_random_steps": self.n_random_steps, "variant": self.variant,
                **({} if self.variant is None else {"seed": self.seed})}
