r"""Meta-learning a task family by next-target prediction: the sinusoid family and the meta-loss.

**Sinusoid task family** (Finn, Abbeel & Levine 2017, MAML): a task is ``f(x) = A sin(x + φ)`` with
``A ~ U[0.1, 5]``, ``φ ~ U[0, π]``, inputs ``x ~ U[−5, 5]`` (the ranges of MAML's data generator).
Bellec, Salaj, Subramoney, Legenstein & Maass (NeurIPS 2018, "Long short-term memory and
learning-to-learn in networks of spiking neurons") meta-train LSNNs the same way (input x_t and the
previous target, fixed weights in the inner loop); their abstract names the supervised task family
"large families of non-linear transformations" learnt "from very few examples". Their network sizes,
task ranges and reported MSE were not available to us (the paper's body was not retrievable with the
project's search tools, and IGITUGraz/LSNN-official holds only the sequential-MNIST and store-recall
tutorials, no L2L script), so this family and its numbers are MAML's, not a reproduction of theirs;
see ``benchmarks/RESULTS.md`` §12. A sequence shows L points of one task; at position t the
network receives ``x_t`` and the *previous* target ``y_{t−1}`` (0 at t = 0) and must predict
``y_t``. With fixed weights, it can only do better than the prior mean (0) by inferring A and φ
from the examples so far in its dynamics: this is the inner loop. The outer loop (meta-training)
minimises the meta-loss

    L(θ) = E_task [ 1/L Σ_t (ŷ_t(θ) − y_t)² ]

over weights θ, by BPTT (:class:`l2ljax.optimizers.bptt.BPTT`) or a population method. The
zero predictor has ``E[A² sin²] = E[A²]/2 ≈ 4.25`` for every t.

Example::

    tasks = SinusoidTasks(n_points=20)
    meta = SequenceRegression(LSNN(LSNNConfig()), tasks, steps_per_example=10, tuning_curves=16)
    problem = meta.optimizee(jax.random.key(1), gradient=True)
    opt = BPTT(problem, optax.adam(3e-3))
    result = l2ljax.run(opt, problem, jax.random.key(0), 1000, x0=meta.init(jax.random.key(2)))
    mse_k = meta.mse_by_position(opt.current(result.state), *tasks.sample(jax.random.key(3), 1000)[:2])
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from l2ljax.core import Optimizee, check_positive_int
from l2ljax.optimizers.bptt import loss_optimizee

Array = jax.Array

__all__ = ["SequenceRegression", "SinusoidTasks", "TaskBatch"]


class TaskBatch(NamedTuple):
    """n tasks of L points: inputs ``xs`` and targets ``ys`` (n, L); task parameters (n,)."""

    xs: Array
    ys: Array
    amplitude: Array
    phase: Array


def _check_interval(interval: tuple[float, float], name: str, lower_bound: float = -math.inf) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in interval)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a pair (low, high), got {interval!r}") from None
    if not (math.isfinite(lo) and math.isfinite(hi)) or not lo < hi:
        raise ValueError(f"{name} must be a finite interval with low < high, got ({lo}, {hi})")
    if lo < lower_bound:
        raise ValueError(f"{name} must start at >= {lower_bound}, got ({lo}, {hi})")
    return lo, hi


@dataclasses.dataclass(frozen=True)
class SinusoidTasks:
    """The sinusoid task family with MAML's ranges; ``n_points`` examples per task sequence."""

    n_points: int = 20
    amplitude: tuple[float, float] = (0.1, 5.0)
    phase: tuple[float, float] = (0.0, math.pi)
    x_range: tuple[float, float] = (-5.0, 5.0)

    def __post_init__(self) -> None:
        check_positive_int(self.n_points, "SinusoidTasks.n_points")
        object.__setattr__(self, "amplitude", _check_interval(self.amplitude, "SinusoidTasks.amplitude", 0.0))
        object.__setattr__(self, "phase", _check_interval(self.phase, "SinusoidTasks.phase"))
        object.__setattr__(self, "x_range", _check_interval(self.x_range, "SinusoidTasks.x_range"))

    def sample(self, key: Array, n: int) -> TaskBatch:
        """n tasks with their L points each, drawn from ``key``."""
        k_a, k_p, k_x = jax.random.split(key, 3)
        amplitude = jax.random.uniform(k_a, (n,), minval=self.amplitude[0], maxval=self.amplitude[1])
        phase = jax.random.uniform(k_p, (n,), minval=self.phase[0], maxval=self.phase[1])
        xs = jax.random.uniform(k_x, (n, self.n_points), minval=self.x_range[0], maxval=self.x_range[1])
        return TaskBatch(xs, amplitude[:, None] * jnp.sin(xs + phase[:, None]), amplitude, phase)

    @property
    def zero_predictor_mse(self) -> float:
        """E[A² sin²(x + φ)] = E[A²]/2: exact when the phase range spans a multiple of π (MAML's [0, π])."""
        lo, hi = self.amplitude
        return (hi**3 - lo**3) / (3 * (hi - lo)) / 2


@dataclasses.dataclass(frozen=True, eq=False)
class SequenceRegression:
    """A recurrent model meta-learning a task family by next-target prediction.

    model:             a flax module mapping inputs (T, 2) to predictions (T, 1) (``l2ljax.snn``).
    steps_per_example: time steps each example is held for (T = L · steps); the prediction of an
                       example is the output at its last step.
    input_scale:       the inputs (x, previous y) are multiplied by it and the network's output divided
                       by it, so the network works with values of order 1 (1/5 maps MAML's ranges to [−1, 1]).
    tuning_curves:     0: the two scaled values are the inputs. n > 0: each value is encoded by n Gaussian
                       tuning curves with centres evenly spaced on [−1, 1] and width 2/(n−1) (population
                       coding, as spiking models receive analog values), so inputs have 2n channels.
    """

    model: nn.Module
    tasks: SinusoidTasks
    steps_per_example: int = 1
    batch_size: int = 32
    input_scale: float = 0.2
    tuning_curves: int = 0

    def __post_init__(self) -> None:
        check_positive_int(self.steps_per_example, "steps_per_example")
        if isinstance(self.tuning_curves, bool) or not isinstance(self.tuning_curves, int) or \
                self.tuning_curves < 0 or self.tuning_curves == 1:
            raise ValueError(f"tuning_curves must be 0 (raw inputs) or an integer >= 2, got {self.tuning_curves!r}")
        check_positive_int(self.batch_size, "batch_size")
        if not (math.isfinite(self.input_scale) and self.input_scale > 0):
            raise ValueError(f"input_scale must be finite and > 0, got {self.input_scale}")

    def encode(self, xs: Array, ys: Array) -> Array:
        """One task's sequence (L,), (L,) -> network inputs (L · steps, n_inputs): x_t and y_{t−1}, held."""
        previous = jnp.concatenate([jnp.zeros(1, ys.dtype), ys[:-1]])
        inputs = self.input_scale * jnp.stack([xs, previous], axis=-1)
        if self.tuning_curves:
            n = self.tuning_curves
            centres = jnp.linspace(-1.0, 1.0, n)
            width = 2.0 / (n - 1)
            inputs = jnp.exp(-0.5 * ((inputs[..., None] - centres) / width) ** 2).reshape(inputs.shape[0], 2 * n)
        return jnp.repeat(inputs, self.steps_per_example, axis=0)

    @property
    def n_inputs(self) -> int:
        return 2 * self.tuning_curves if self.tuning_curves else 2

    def init(self, key: Array) -> Any:
        """Fresh network parameters (the untrained network)."""
        return self.model.init(key, jnp.zeros((self.tasks.n_points * self.steps_per_example, self.n_inputs)))

    def predict(self, params: Any, xs: Array, ys: Array) -> Array:
        """Predictions (n, L) for tasks (n, L): the output at the last step of every example."""
        def one(x: Array, y: Array) -> Array:
            out = self.model.apply(params, self.encode(x, y))[:, 0] / self.input_scale
            return out[self.steps_per_example - 1::self.steps_per_example]

        return jax.vmap(one)(xs, ys)

    def loss(self, params: Any, xs: Array, ys: Array) -> Array:
        """The meta-loss: mean squared error over tasks and positions."""
        return jnp.mean((self.predict(params, xs, ys) - ys) ** 2)

    def mse_by_position(self, params: Any, xs: Array, ys: Array, chunk: int = 250) -> np.ndarray:
        """(L,) mean squared error at position t = after t observed examples, over the tasks given (float64)."""
        n = xs.shape[0]
        predict = jax.jit(self.predict)
        errors = [np.sum((np.asarray(predict(params, xs[i:i + chunk], ys[i:i + chunk]), np.float64)
                          - np.asarray(ys[i:i + chunk], np.float64)) ** 2, axis=0) for i in range(0, n, chunk)]
        return sum(errors) / n

    def batches(self, key: Array) -> Callable[[Array], tuple[tuple[Array, Array], Array]]:
        """``data(generation)``: the training batch of a generation, a pure function of ``key`` and it."""
        def data(generation: Array) -> tuple[tuple[Array, Array], Array]:
            batch = self.tasks.sample(jax.random.fold_in(key, generation), self.batch_size)
            return (batch.xs, batch.ys), jnp.zeros(1)

        return data

    def optimizee(self, key: Array, *, gradient: bool = False) -> Optimizee:
        """The meta-learning problem over the network weights; batches drawn from ``key``.

        ``gradient=True`` for :class:`~l2ljax.optimizers.bptt.BPTT`, False for population optimizers.
        """
        template = self.init(jax.random.key(0))

        def loss(params: Any, _key: Array, batch: tuple[Array, Array]) -> Array:
            return self.loss(params, *batch)

        return loss_optimizee(loss, template, data=self.batches(key), gradient=gradient, sample=self.init,
                              name=f"meta-{type(self.model).__name__}",
                              info={"zero_predictor_mse": self.tasks.zero_predictor_mse})
