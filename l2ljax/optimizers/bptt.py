r"""A gradient outer loop: optax on the gradient of a differentiable optimizee, run like every optimizer.

For a differentiable objective ``L(θ)`` (e.g. a meta-loss of a recurrent network, backpropagated
through time over a batch of tasks), one generation is one optax step::

    g_t = ∇_θ L(θ_t; batch_t),   (u_t, s_{t+1}) = tx.update(g_t, s_t, θ_t),   θ_{t+1} = θ_t + u_t

The population is the single individual θ_t. The optimizee computes ``L`` and ``∇L`` together
(``gradient_optimizee``: ``jax.value_and_grad`` inside the vmapped evaluation) and hands the flat
gradient to ``tell`` as the ``outputs`` of its :class:`~l2ljax.core.Evaluation`, so the gradient
loop goes through ``l2ljax.run`` unchanged: trajectory, checkpoint/resume (the optax state is part
of the optimizer state), progress, callbacks and ``stop_criterion``. A step whose loss or gradient
is non-finite is skipped (θ and the optax state stay), never written into θ.

This is the "outer loop by BPTT" of Bellec et al. (NeurIPS 2018), who meta-train LSNNs with Adam;
``loss_optimizee(..., gradient=False)`` gives the same problem to a gradient-free population
optimizer (ES, CMA-ES) for a side-by-side comparison.

Example::

    problem = gradient_optimizee(loss, params0, data=batches)      # loss(params, key, batch) -> ()
    opt = BPTT(problem, optax.adam(1e-3))
    result = l2ljax.run(opt, problem, jax.random.key(0), 2000, x0=params0, stop_criterion=-0.01)
    params = opt.current(result.state)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax.flatten_util import ravel_pytree

from l2ljax.core import Evaluation, Optimizee, Optimizer, OptState

__all__ = ["BPTT", "gradient_optimizee", "loss_optimizee"]

Loss = Callable[[Any, jax.Array, Any], jax.Array]


def loss_optimizee(loss: Loss, template: Any, *, data: Callable[[jax.Array], tuple[Any, Any]] | None = None,
                   gradient: bool = False, sample: Callable[[jax.Array], Any] | None = None,
                   name: str = "loss", info: dict | None = None) -> Optimizee:
    """A minimised scalar ``loss(params, key, batch)`` as an optimizee (weight −1).

    data:     ``data(generation) -> (batch, targets)``, the batch every individual of a generation
              sees (common random numbers for population methods); default: no batch (``None``).
    gradient: also return the flat gradient as the evaluation's outputs (what :class:`BPTT` needs).
    sample:   initial individuals (e.g. a flax ``init``); default: template + N(0, 1).
    """
    if data is None:
        def data(generation: jax.Array) -> tuple[None, jax.Array]:
            return None, jnp.zeros(1)

    def fn(params: Any, key: jax.Array, batch: Any) -> tuple[jax.Array, jax.Array]:
        if gradient:
            value, grads = jax.value_and_grad(loss)(params, key, batch)
            return value, ravel_pytree(grads)[0]
        value = loss(params, key, batch)
        return value, jnp.reshape(value, (1,))  # outputs must be non-empty; the loss itself

    return Optimizee.create(fn, template, sample=sample, weights=(-1.0,), name=name, data=data,
                            info={**(info or {}), "gradient": gradient})


def gradient_optimizee(loss: Loss, template: Any, **kwargs: Any) -> Optimizee:
    """``loss_optimizee(..., gradient=True)``: the optimizee :class:`BPTT` runs on."""
    return loss_optimizee(loss, template, gradient=True, **kwargs)


class BPTTState(NamedTuple):
    theta: jax.Array       # (dim,) current parameters
    opt_state: Any         # the optax state
    loss: jax.Array        # () loss of the last step (NaN before the first)
    n_skipped: jax.Array   # () steps skipped for a non-finite loss or gradient


class BPTT(Optimizer):
    """Gradient descent with an optax transformation on a :func:`gradient_optimizee` (pop_size 1)."""

    name = "BPTT"

    def __init__(self, optimizee: Optimizee, tx: optax.GradientTransformation):
        if not isinstance(optimizee, Optimizee) or not optimizee.info.get("gradient"):
            raise TypeError("BPTT needs an optimizee that returns its gradient: build it with "
                            "l2ljax.optimizers.bptt.gradient_optimizee(loss, template, data=...)")
        if not (hasattr(tx, "init") and hasattr(tx, "update")):
            raise TypeError(f"tx must be an optax GradientTransformation, got {type(tx).__name__}")
        super().__init__(optimizee, 1)
        self.tx = tx

    def _init(self, key: jax.Array, x0: jax.Array, params: Any) -> BPTTState:
        return BPTTState(x0, self.tx.init(x0), jnp.array(jnp.nan, jnp.float32), jnp.array(0, jnp.int32))

    def _ask(self, key: jax.Array, inner: BPTTState, params: Any) -> jax.Array:
        return inner.theta[None]

    def _tell(self, inner: BPTTState, population: jax.Array, evaluation: Evaluation, params: Any) -> BPTTState:
        if evaluation.outputs is None or evaluation.outputs.shape[1] != self.space.dim:
            raise ValueError("BPTT: the evaluation carries no gradient of the individual's size; "
                             "use gradient_optimizee")
        grad = evaluation.outputs[0].astype(inner.theta.dtype)
        ok = jnp.isfinite(evaluation.score[0])  # make_evaluation marks rows with a non-finite output too
        updates, opt_state = self.tx.update(jnp.where(ok, grad, 0.0), inner.opt_state, inner.theta)
        theta = self.space.clip(inner.theta + updates)
        keep = lambda new, old: jnp.where(ok, new, old)  # noqa: E731 (skip the whole step)
        return BPTTState(keep(theta, inner.theta), jax.tree_util.tree_map(keep, opt_state, inner.opt_state),
                         evaluation.fitness[0, 0].astype(jnp.float32), inner.n_skipped + (~ok).astype(jnp.int32))

    def current(self, state: OptState) -> Any:
        """The current parameters θ (pytree): the trained network (``best`` is the best single batch)."""
        return self.space.unravel(state.inner.theta)

    def diagnostics(self, state: OptState) -> dict[str, jax.Array]:
        return {"loss": state.inner.loss, "n_skipped": state.inner.n_skipped}
