r"""Recurrent networks for learning to learn: an LSNN (LIF + adaptive LIF) and an LSTM, one interface.

LSNN of Bellec, Salaj, Subramoney, Legenstein & Maass (NeurIPS 2018), *Long short-term memory and
learning-to-learn in networks of spiking neurons* (arXiv:1803.09574). N = n_lif + n_alif neurons in
discrete time (dt = 1 step), inputs ``x_t`` (n_in,), spikes ``z_t ∈ {0, 1}``::

    I_t   = W_in x_t + W_rec z_{t-1}                    (W_rec without self-connections)
    b_t   = ρ b_{t-1} + (1 − ρ) z_{t-1}                  ρ = exp(−1/τ_a), adaptation
    A_t   = ϑ + β b_t                                    β = 0 for LIF, β > 0 for the ALIF fraction
    v_t   = α v_{t-1} + (1 − α) I_t − A_t z_{t-1}        α = exp(−1/τ_m), reset by subtracting A_t
    z_t   = H((v_t − A_t) / A_t)
    r_t   = κ r_{t-1} + (1 − κ) z_t,   y_t = W_out r_t + c     (linear readout of filtered spikes)

The Heaviside step H has the pseudo-derivative ``dz/dv_scaled = γ max(0, 1 − |v_scaled|)``
(γ = 0.3, the dampening factor of the paper's code) for backpropagation through time. Parameters
(``W_in, W_rec, W_out, c``) are flax params; the constants ϑ, τ_m, τ_a, β, κ are fixed by the
config (not trained), as in the paper. The adaptive thresholds are the LSNN's working memory: their
decay τ_a spans many inputs, so fixed weights can hold what a new task is.

Checked against the paper's code (IGITUGraz/LSNN-official, ``lsnn/spiking_models.py`` at 0e09090,
``LIF``/``ALIF`` cells): same τ_m = 20, τ_a = 200, β = 1.6, dampening 0.3, the same threshold
adaptation ``b_t = ρ b_{t-1} + (1 − ρ) z_{t-1}``, ``A_t = ϑ + β b_t``, reset by subtracting
``A_t z_{t-1}``, recurrent weights N(0, 1/N) without autapses. Deviations: their spike at step t is
``H((v_{t-1} − A_t)/A_t)`` (from the voltage *before* the update; a one-step delay), ours is from
``v_t``; their ϑ = 0.01 for spike inputs, ours 1 for analog currents of order 1; inputs are analog
currents held for ``steps_per_example`` steps, not Poisson spike trains from an input population;
no synaptic delays and no DEEP R rewiring (dense weights); the network is smaller so that
meta-training takes minutes on a laptop CPU (see ``benchmarks/RESULTS.md``).

``LSTM`` (Hochreiter & Schmidhuber 1997; flax's ``OptimizedLSTMCell``) with a linear readout is the
non-spiking network with the same interface: ``model.apply(params, inputs)`` maps a sequence
``(T, n_in)`` to predictions ``(T, n_out)``; ``model.init(key, inputs)`` gives the params.

Example::

    net = LSNN(LSNNConfig(n_lif=50, n_alif=50))
    params = net.init(jax.random.key(0), jnp.zeros((200, 2)))
    y = net.apply(params, inputs)                       # (200, 1)
    y, spikes = net.apply(params, inputs, return_spikes=True)  # spikes: (200, 100) 0/1
"""

from __future__ import annotations

import dataclasses
import math

import flax.linen as nn
import jax
import jax.numpy as jnp

Array = jax.Array

__all__ = ["LSNN", "LSTM", "LSNNConfig", "spike"]


@jax.custom_vjp
def spike(v_scaled: Array, dampening: float | Array = 0.3) -> Array:
    """Heaviside ``v_scaled > 0`` as float, with the LSNN pseudo-derivative ``γ max(0, 1 − |v|)``."""
    return (v_scaled > 0).astype(v_scaled.dtype)


def _spike_fwd(v_scaled: Array, dampening: float | Array) -> tuple[Array, tuple[Array, Array]]:
    return spike(v_scaled, dampening), (v_scaled, jnp.asarray(dampening, v_scaled.dtype))


def _spike_bwd(res: tuple[Array, Array], g: Array) -> tuple[Array, Array]:
    v_scaled, dampening = res
    return g * dampening * jnp.maximum(0.0, 1.0 - jnp.abs(v_scaled)), jnp.zeros_like(dampening)


spike.defvjp(_spike_fwd, _spike_bwd)


@dataclasses.dataclass(frozen=True)
class LSNNConfig:
    """Fixed (untrained) constants of an LSNN; time constants in steps.

    Defaults: τ_m = 20, τ_a = 200, β = 1.6, γ = 0.3 as in the paper's code (``ALIF`` cell); the
    threshold ϑ = 1 because inputs here are analog currents of order 1, not spikes.
    """

    n_lif: int = 50
    n_alif: int = 50
    n_out: int = 1
    tau_m: float = 20.0
    tau_a: float = 200.0
    tau_out: float = 5.0
    beta: float = 1.6
    threshold: float = 1.0
    dampening: float = 0.3
    input_gain: float = 3.0

    def __post_init__(self) -> None:
        for name in ("n_lif", "n_alif", "n_out"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"LSNNConfig.{name} must be a non-negative integer, got {value!r}")
        if self.n_lif + self.n_alif == 0 or self.n_out == 0:
            raise ValueError("LSNNConfig needs at least one neuron and one output")
        for name in ("tau_m", "tau_a", "tau_out", "threshold", "dampening", "input_gain"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"LSNNConfig.{name} must be finite and > 0, got {value}")
        if not (math.isfinite(self.beta) and self.beta >= 0):
            raise ValueError(f"LSNNConfig.beta must be finite and >= 0, got {self.beta}")

    @property
    def n_rec(self) -> int:
        return self.n_lif + self.n_alif


class LSNN(nn.Module):
    """A recurrent network of LIF and adaptive-threshold (ALIF) neurons with a linear readout."""

    config: LSNNConfig = LSNNConfig()

    @nn.compact
    def __call__(self, inputs: Array, return_spikes: bool = False) -> Array | tuple[Array, Array]:
        """Predictions (T, n_out) for an input sequence (T, n_in); with ``return_spikes`` also the
        spike raster (T, N), LIF neurons first."""
        c = self.config
        n_in = inputs.shape[-1]
        n = c.n_rec
        w_in = self.param("w_in", lambda k: c.input_gain * jax.random.normal(k, (n_in, n)) / math.sqrt(n_in))
        w_rec = self.param("w_rec", lambda k: jax.random.normal(k, (n, n)) / math.sqrt(n))
        w_out = self.param("w_out", lambda k: jax.random.normal(k, (n, c.n_out)) / math.sqrt(n))
        bias = self.param("b_out", nn.initializers.zeros, (c.n_out,))
        w_rec = w_rec * (1.0 - jnp.eye(c.n_rec, dtype=w_rec.dtype))  # no autapses (as in the paper)
        alpha, rho, kappa = (math.exp(-1.0 / t) for t in (c.tau_m, c.tau_a, c.tau_out))
        beta = jnp.concatenate([jnp.zeros(c.n_lif), jnp.full(c.n_alif, c.beta)]).astype(inputs.dtype)
        currents_in = inputs @ w_in  # (T, N): the feed-forward part of every step at once

        def step(carry: tuple[Array, Array, Array, Array], current_in: Array):
            v, z, b, r = carry
            b = rho * b + (1 - rho) * z
            threshold = c.threshold + beta * b
            v = alpha * v + (1 - alpha) * (current_in + z @ w_rec) - threshold * z
            z = spike((v - threshold) / threshold, c.dampening)
            r = kappa * r + (1 - kappa) * z
            return (v, z, b, r), (r, z)

        zeros = jnp.zeros(c.n_rec, inputs.dtype)
        _, (r, z) = jax.lax.scan(step, (zeros, zeros, zeros, zeros), currents_in)
        predictions = r @ w_out + bias
        return (predictions, z) if return_spikes else predictions


class LSTM(nn.Module):
    """An LSTM with a linear readout: the non-spiking network with the LSNN's interface."""

    hidden: int = 64
    n_out: int = 1

    @nn.compact
    def __call__(self, inputs: Array) -> Array:
        if self.hidden <= 0:
            raise ValueError(f"LSTM.hidden must be positive, got {self.hidden}")
        scan = nn.scan(nn.OptimizedLSTMCell, variable_broadcast="params", split_rngs={"params": False},
                       in_axes=0, out_axes=0)
        cell = scan(self.hidden)
        carry = cell.initialize_carry(jax.random.key(0), inputs[:1].shape)
        carry = jax.tree_util.tree_map(lambda a: a[0], carry)
        _, h = cell(carry, inputs)
        return nn.Dense(self.n_out)(h)
