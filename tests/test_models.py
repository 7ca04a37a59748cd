"""Tests for l2ljax.models: sizes, a float64 numpy reference, and forward equivalences."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from numpy.lib.stride_tricks import sliding_window_view

from l2ljax.models import (
    LodCNN,
    Mlp,
    accuracy,
    forward_ensemble_grouped,
    forward_ensemble_mapped,
    make_ensemble,
)

EXAMPLE = jnp.zeros((1, 28, 28, 1), jnp.float32)


@pytest.fixture(scope="module")
def cnn():
    return make_ensemble(LodCNN(), EXAMPLE)


def _images(batch: int, seed: int = 1) -> jax.Array:
    return jax.random.uniform(jax.random.key(seed), (batch, 28, 28, 1), jnp.float32)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _conv_valid(x: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """NHWC x HWIO cross-correlation, VALID padding, stride 1."""
    windows = sliding_window_view(x, kernel.shape[:2], axis=(1, 2))  # N,H',W',C,kh,kw
    return np.einsum("nhwcij,ijco->nhwo", windows, kernel)


def _lod_cnn_numpy(params: dict, images: np.ndarray) -> np.ndarray:
    """LodCNN written out in float64 numpy from REFERENCE §2."""
    p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
    x = _sigmoid(_conv_valid(images.astype(np.float64), p["conv1"]["kernel"]))
    n, h, w, c = x.shape
    x = x.reshape(n, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))
    x = _sigmoid(_conv_valid(x, p["conv2"]["kernel"]))
    assert x.shape[1:] == (8, 8, 20)
    return x.reshape(n, -1) @ p["dense"]["kernel"]


def test_lod_cnn_has_18050_parameters(cnn):
    assert cnn.n_params == 18_050
    shapes = jax.tree.map(jnp.shape, cnn.unravel(jnp.zeros(cnn.n_params)))
    assert shapes == {
        "conv1": {"kernel": (5, 5, 1, 10)},
        "conv2": {"kernel": (5, 5, 10, 20)},
        "dense": {"kernel": (1280, 10)},
    }


@pytest.mark.parametrize(
    ("hidden", "use_bias", "n_params"),
    [
        ((10,), False, 784 * 10 + 10 * 10),
        ((10,), True, 7_940 + 10 + 10),
        ((32, 16), False, 784 * 32 + 32 * 16 + 16 * 10),
    ],
)
def test_mlp_parameter_count(hidden, use_bias, n_params):
    assert make_ensemble(Mlp(hidden=hidden, use_bias=use_bias), EXAMPLE).n_params == n_params


def test_mlp_without_bias_is_7940():
    assert make_ensemble(Mlp(hidden=(10,)), EXAMPLE).n_params == 7_940


def test_lod_cnn_matches_float64_numpy_reference(cnn):
    flat = cnn.init_ensemble(jax.random.key(3), 1, 0.3)[0]
    images = _images(5)
    expected = _lod_cnn_numpy(cnn.unravel(flat), np.asarray(images))
    np.testing.assert_allclose(cnn.forward_one(flat, images), expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("use_bias", [False, True])
def test_mlp_matches_float64_numpy_reference(use_bias):
    ens = make_ensemble(Mlp(hidden=(10,), use_bias=use_bias), EXAMPLE)
    flat = ens.init_ensemble(jax.random.key(4), 1, 0.3)[0]
    images = _images(6)
    p = jax.tree.map(lambda a: np.asarray(a, np.float64), ens.unravel(flat))
    x = np.asarray(images, np.float64).reshape(6, 784)
    h = x @ p["Dense_0"]["kernel"] + (p["Dense_0"]["bias"] if use_bias else 0.0)
    expected = _sigmoid(h) @ p["Dense_1"]["kernel"] + (p["Dense_1"]["bias"] if use_bias else 0.0)
    np.testing.assert_allclose(ens.forward_one(flat, images), expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("model", [LodCNN(), Mlp(hidden=(10,))], ids=["cnn", "mlp"])
def test_forward_shapes_and_ensemble_equals_loop(model):
    ens = make_ensemble(model, EXAMPLE)
    flat = ens.init_ensemble(jax.random.key(0), 4, 0.1)
    images = _images(8)
    assert ens.forward_one(flat[0], images).shape == (8, 10)
    logits = jax.jit(ens.forward_ensemble)(flat, images)
    assert logits.shape == (4, 8, 10) and logits.dtype == jnp.float32
    loop = np.stack([ens.forward_one(member, images) for member in flat])
    np.testing.assert_allclose(logits, loop, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("forward", [forward_ensemble_grouped, forward_ensemble_mapped])
@pytest.mark.parametrize("n_members", [1, 7])
def test_fast_lod_forwards_equal_vmapped(cnn, forward, n_members):
    flat = cnn.init_ensemble(jax.random.key(n_members), n_members, 0.1)
    images = _images(16)
    expected = jax.jit(cnn.forward_ensemble)(flat, images)
    got = jax.jit(forward)(flat, images)
    assert got.shape == (n_members, 16, 10)
    # Summation order differs: error ~ eps * sum|terms| ~ 1e-6 on logits of size ~3.
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)


def test_mapped_forward_pads_to_whole_chunks(cnn):
    flat = cnn.init_ensemble(jax.random.key(5), 7, 0.1)
    images = _images(4)
    expected = jax.jit(cnn.forward_ensemble)(flat, images)
    for chunk in (1, 3, 7, 20):
        got = jax.jit(forward_ensemble_mapped, static_argnames="chunk")(flat, images, chunk=chunk)
        assert got.shape == (7, 4, 10)
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)


def test_init_ensemble_std_and_reproducible(cnn):
    key = jax.random.key(42)
    flat = cnn.init_ensemble(key, 200, 0.1)
    assert flat.shape == (200, 18_050) and flat.dtype == jnp.float32
    assert abs(float(jnp.std(flat)) - 0.1) < 1e-3  # 3.6M draws: sd of the estimate ~4e-5
    assert abs(float(jnp.mean(flat))) < 1e-3
    np.testing.assert_array_equal(flat, cnn.init_ensemble(key, 200, 0.1))
    assert not np.array_equal(flat, cnn.init_ensemble(jax.random.key(43), 200, 0.1))


def test_accuracy_integer_and_one_hot_labels():
    logits = jnp.array(
        [[[2.0, 1.0], [0.0, 3.0], [5.0, 4.0], [1.0, 0.0]], [[0.0, 1.0], [0.0, 3.0], [4.0, 5.0], [0.0, 1.0]]]
    )  # (J=2, B=4, K=2)
    labels = jnp.array([0, 1, 1, 0])
    np.testing.assert_allclose(accuracy(logits, labels), [0.75, 0.5])
    np.testing.assert_allclose(accuracy(logits, jax.nn.one_hot(labels, 2)), [0.75, 0.5])
    assert float(accuracy(logits[0], labels)) == 0.75
