"""The LSNN against an independent float64 numpy loop, its pseudo-derivative, adaptation, configs."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from l2ljax.snn import LSNN, LSTM, LSNNConfig, spike


def test_spike_is_heaviside_with_the_lsnn_pseudo_derivative():
    v = jnp.linspace(-2.0, 2.0, 41)
    np.testing.assert_array_equal(np.asarray(spike(v)), (np.asarray(v) > 0).astype(np.float32))
    grad = jax.vmap(jax.grad(lambda x: spike(x, 0.3)))(v)
    np.testing.assert_allclose(np.asarray(grad), 0.3 * np.maximum(0.0, 1.0 - np.abs(np.asarray(v))), atol=1e-7)


def _numpy_lsnn(p: dict, inputs: np.ndarray, c: LSNNConfig) -> tuple[np.ndarray, np.ndarray]:
    """The equations of the module docstring, step by step in float64."""
    w_in, w_rec, w_out, b_out = (np.asarray(p[k], np.float64) for k in ("w_in", "w_rec", "w_out", "b_out"))
    w_rec = w_rec * (1 - np.eye(c.n_rec))
    alpha, rho, kappa = math.exp(-1 / c.tau_m), math.exp(-1 / c.tau_a), math.exp(-1 / c.tau_out)
    beta = np.r_[np.zeros(c.n_lif), np.full(c.n_alif, c.beta)]
    v = z = b = r = np.zeros(c.n_rec)
    outs, spikes = [], []
    for x in np.asarray(inputs, np.float64):
        b = rho * b + (1 - rho) * z
        a = c.threshold + beta * b
        v = alpha * v + (1 - alpha) * (x @ w_in + z @ w_rec) - a * z
        z = ((v - a) / a > 0).astype(np.float64)
        r = kappa * r + (1 - kappa) * z
        outs.append(r @ w_out + b_out)
        spikes.append(z)
    return np.array(outs), np.array(spikes)


def test_lsnn_matches_a_float64_numpy_loop():
    c = LSNNConfig(n_lif=6, n_alif=4, n_out=2, tau_a=30.0, input_gain=8.0)
    net = LSNN(c)
    inputs = jax.random.uniform(jax.random.key(3), (80, 3))
    params = net.init(jax.random.key(0), inputs)
    out, z = net.apply(params, inputs, return_spikes=True)
    ref_out, ref_z = _numpy_lsnn(params["params"], np.asarray(inputs), c)
    assert 0.02 < ref_z.mean() < 0.8  # the comparison covers real spiking, not a silent network
    np.testing.assert_array_equal(np.asarray(z), ref_z)
    np.testing.assert_allclose(np.asarray(out), ref_out, rtol=1e-4, atol=1e-5)


def test_adaptive_neurons_fire_less_under_constant_drive():
    """Spike-frequency adaptation: the ALIF half slows down, the LIF half does not."""
    c = LSNNConfig(n_lif=20, n_alif=20, tau_a=100.0, beta=10.0)
    net = LSNN(c)
    inputs = jnp.ones((400, 1))
    params = net.init(jax.random.key(0), inputs)
    params = {"params": {**params["params"], "w_in": jnp.full((1, 40), 6.0), "w_rec": jnp.zeros((40, 40))}}
    _, z = net.apply(params, inputs, return_spikes=True)
    z = np.asarray(z)
    lif_early, lif_late = z[50:150, :20].mean(), z[300:, :20].mean()
    alif_early, alif_late = z[:40, 20:].mean(), z[300:, 20:].mean()
    assert lif_late == pytest.approx(lif_early, abs=0.02)
    assert alif_late < 0.75 * alif_early


def test_gradients_flow_through_time_to_every_weight():
    net = LSNN(LSNNConfig(n_lif=10, n_alif=10, input_gain=8.0))
    inputs = jax.random.uniform(jax.random.key(1), (60, 2))
    params = net.init(jax.random.key(0), inputs)
    grads = jax.grad(lambda p: jnp.sum(net.apply(p, inputs) ** 2))(params)["params"]
    for name, g in grads.items():
        assert np.all(np.isfinite(np.asarray(g))) and float(jnp.abs(g).max()) > 0, name


def test_lstm_has_the_same_interface():
    inputs = jnp.zeros((25, 2))
    for net in (LSTM(hidden=8), LSNN(LSNNConfig(n_lif=4, n_alif=4))):
        params = net.init(jax.random.key(0), inputs)
        assert net.apply(params, inputs).shape == (25, 1)


@pytest.mark.parametrize("field,value", [("n_lif", -1), ("n_alif", 1.5), ("tau_m", 0.0), ("tau_a", float("nan")),
                                         ("beta", -1.0), ("threshold", 0.0), ("dampening", float("inf"))])
def test_bad_lsnn_configs_are_named(field, value):
    with pytest.raises(ValueError, match=field):
        LSNNConfig(**{field: value})


def test_an_lsnn_needs_neurons():
    with pytest.raises(ValueError, match="at least one neuron"):
        LSNNConfig(n_lif=0, n_alif=0)
