"""Tests for l2ljax.optimizees.functions against independent float64 numpy references."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from l2ljax.optimizees import functions

# ---------------------------------------------------------------------------
# Independent float64 references, written from the textbook / L2L definitions.
# ---------------------------------------------------------------------------


def ref_rastrigin(x):
    return 10.0 * len(x) + sum(xi * xi - 10.0 * math.cos(2.0 * math.pi * xi) for xi in x)


def ref_rosenbrock(x):
    return sum(100.0 * (x[i + 1] - x[i] ** 2) ** 2 + (1.0 - x[i]) ** 2 for i in range(len(x) - 1))


def ref_ackley(x):
    d = len(x)
    r = math.sqrt(sum(xi * xi for xi in x) / d)
    c = sum(math.cos(2.0 * math.pi * xi) for xi in x) / d
    return -20.0 * math.exp(-0.2 * r) - math.exp(c) + 20.0 + math.e


def ref_easom(x):
    prod = 1.0
    for xi in x:
        prod *= math.cos(xi)
    return -prod * math.exp(-sum((xi - math.pi) ** 2 for xi in x))


def ref_chasm(x):
    return 1000.0 * abs(x[0]) / (1000.0 * abs(x[0]) + 1.0) + 0.01 * abs(x[1])


def _normal_pdf_2d(x, mean, cov):
    (a, b), (c, d) = cov
    det = a * d - b * c
    u, v = x[0] - mean[0], x[1] - mean[1]
    quad = (d * u * u - (b + c) * u * v + a * v * v) / det
    return math.exp(-0.5 * quad) / (2.0 * math.pi * math.sqrt(det))


GAUSSIANS = [
    ((-1.0, -1.0), ((1.5, 0.1), (0.1, 0.3))),
    ((1.0, 1.0), ((0.25, 0.3), (0.3, 1.0))),
    ((2.0, -2.0), ((0.5, 0.25), (0.25, 1.3))),
]


def ref_gauss2d(x):
    return -_normal_pdf_2d(x, *GAUSSIANS[0])


def ref_three_gaussians2d(x):
    return -sum(_normal_pdf_2d(x, mean, cov) for mean, cov in GAUSSIANS)


def ref_shekel2d(x):
    # L2L adds c_i to every squared coordinate difference before summing.
    centres = [(3, 5), (5, 2), (2, 1), (3, 3), (2, 7), (1, 4), (7, 9)]
    weights = [0.1, 0.2, 0.5, 0.2, 0.3, 0.1, 0.1]
    total = 0.0
    for (a0, a1), ci in zip(centres, weights, strict=True):
        total += 1.0 / (((x[0] - a0) ** 2 + ci) + ((x[1] - a1) ** 2 + ci))
    return -total


def ref_langermann2d(x):
    centres = [(3, 5), (5, 2), (2, 1), (1, 4), (7, 9)]
    weights = [1, 2, 5, 2, 3]
    total = 0.0
    for (a0, a1), ci in zip(centres, weights, strict=True):
        s = (x[0] - a0) ** 2 + (x[1] - a1) ** 2
        total += ci * math.exp(-s / math.pi) * math.cos(math.pi * s)
    return total


def ref_michalewicz2d(x, m=10):
    return -sum(math.sin(xi) * math.sin((i + 1) * xi * xi / math.pi) ** (2 * m) for i, xi in enumerate(x))


def ref_permutation2d(x, beta=0.005):
    d = len(x)
    total = 0.0
    for k in range(1, d + 1):
        inner = sum((j**k + beta) * ((x[j - 1] / j) ** k - 1.0) for j in range(1, d + 1))
        total += inner * inner
    return total


REFERENCES = {
    "rastrigin": ref_rastrigin,
    "rosenbrock": ref_rosenbrock,
    "ackley": ref_ackley,
    "easom": ref_easom,
    "chasm": ref_chasm,
    "gauss2d": ref_gauss2d,
    "shekel2d": ref_shekel2d,
    "langermann2d": ref_langermann2d,
    "michalewicz2d": ref_michalewicz2d,
    "permutation2d": ref_permutation2d,
    "three_gaussians2d": ref_three_gaussians2d,
}


def ref_value(name, x):
    return REFERENCES[name]([float(v) for v in x])


# L2L's bounds, written out independently of the module.
L2L_BOUNDS = {
    "rastrigin": (-5.0, 5.0),
    "rosenbrock": (-2.0, 2.0),
    "ackley": (-2.0, 2.0),
    "easom": (-10.0, 10.0),
    "chasm": (-2.0, 2.0),
    "gauss2d": (-5.0, 5.0),
    "shekel2d": (0.0, 10.0),
    "langermann2d": (0.0, 10.0),
    "michalewicz2d": (0.0, math.pi),
    "permutation2d": (-2.0, 2.0),
    "three_gaussians2d": (-5.0, 5.0),
}

DIMS = {"rastrigin": (1, 2, 10), "ackley": (1, 2, 10), "easom": (1, 2, 3, 10), "rosenbrock": (2, 10)}
CASES = [(name, dim) for name in functions.NAMES for dim in DIMS.get(name, (2,))]
CASE_IDS = [f"{name}-{dim}d" for name, dim in CASES]


def _enable_x64():
    """Context manager for 64-bit mode: ``jax.enable_x64`` (new JAX) or ``jax.experimental.enable_x64`` (old)."""
    if hasattr(jax, "enable_x64"):
        return jax.enable_x64(True)
    from jax.experimental import enable_x64

    return enable_x64()


@pytest.fixture
def x64():
    with _enable_x64():
        yield


def _uniform(s, n, seed):
    rng = np.random.default_rng(seed)
    return rng.uniform(s.lower, s.upper, size=(n, s.dim))


def _near_argmin(s, n, seed):
    rng = np.random.default_rng(seed)
    x = s.argmin + 0.02 * (s.upper - s.lower) * rng.standard_normal((n, s.dim))
    return np.clip(x, s.lower, s.upper)


def _grid(s, n_per_axis):
    axes = [np.linspace(lo, hi, n_per_axis) for lo, hi in zip(s.lower, s.upper, strict=True)]
    return np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, s.dim)


def _reference_points(s):
    """50 uniform points in the box and 50 near the argmin (where Easom-10d is not ~0)."""
    return np.concatenate([_uniform(s, 50, seed=1), _near_argmin(s, 50, seed=2)])


@functools.cache
def _float64_values(name, dim):
    """float64 values at the argmin, the reference points, 10,000 uniform points and a dense grid (d <= 2).

    One compiled batch per case keeps the file fast; x64 is on only inside this helper.
    """
    s = functions.spec(name, dim)
    grid = _grid(s, {1: 100_001, 2: 1001}[dim]) if dim <= 2 else np.empty((0, dim))
    parts = [s.argmin[None], _reference_points(s), _uniform(s, 10_000, seed=3), grid]
    with _enable_x64():
        values = jax.jit(jax.vmap(s.fn))(jnp.asarray(np.concatenate(parts), jnp.float64))
    assert values.dtype == jnp.float64
    at_argmin, reference, uniform, grid_values = np.split(np.asarray(values), np.cumsum([len(p) for p in parts[:-1]]))
    return {"argmin": at_argmin[0], "reference": reference, "uniform": uniform, "grid": grid_values}


@functools.cache
def _float32_points_and_values(name, dim):
    """The argmin and the reference points in float32 and ``jit(vmap(fn))`` of them."""
    s = functions.spec(name, dim)
    x = jnp.asarray(np.concatenate([s.argmin[None], _reference_points(s)]), jnp.float32)
    values = jax.jit(jax.vmap(s.fn))(x)
    assert values.dtype == jnp.float32 and values.shape == (len(x),)
    return np.asarray(x), np.asarray(values)


def test_names():
    assert functions.NAMES == (
        "rastrigin",
        "rosenbrock",
        "ackley",
        "easom",
        "chasm",
        "gauss2d",
        "shekel2d",
        "langermann2d",
        "michalewicz2d",
        "permutation2d",
        "three_gaussians2d",
    )
    assert set(REFERENCES) == set(functions.NAMES)


@pytest.mark.parametrize(("name", "dim"), CASES, ids=CASE_IDS)
def test_spec_fields(name, dim):
    s = functions.spec(name, dim)
    assert s.name == name and s.dim == dim and s.fn is getattr(functions, name)
    for arr in (s.lower, s.upper, s.argmin):
        assert arr.shape == (dim,) and arr.dtype == np.float64
        assert not arr.flags.writeable
    lo, hi = L2L_BOUNDS[name]
    np.testing.assert_array_equal(s.lower, lo)
    np.testing.assert_array_equal(s.upper, hi)
    assert np.all(s.lower <= s.argmin) and np.all(s.argmin <= s.upper)
    assert isinstance(s.minimum, float) and s.citation


@pytest.mark.parametrize(("name", "dim"), CASES, ids=CASE_IDS)
def test_value_at_argmin(name, dim):
    s = functions.spec(name, dim)
    assert ref_value(name, s.argmin) == pytest.approx(s.minimum, rel=1e-12, abs=1e-12)
    assert _float64_values(name, dim)["argmin"] == pytest.approx(s.minimum, rel=1e-12, abs=1e-12)
    value32 = _float32_points_and_values(name, dim)[1][0]
    assert value32 == pytest.approx(s.minimum, rel=1e-5, abs=1e-5)


@pytest.mark.parametrize(("name", "dim"), CASES, ids=CASE_IDS)
def test_matches_numpy_reference_float64(name, dim):
    s = functions.spec(name, dim)
    want = np.array([ref_value(name, xi) for xi in _reference_points(s)])
    np.testing.assert_allclose(_float64_values(name, dim)["reference"], want, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize(("name", "dim"), CASES, ids=CASE_IDS)
def test_matches_numpy_reference_float32(name, dim):
    x32, got = _float32_points_and_values(name, dim)
    want = np.array([ref_value(name, xi) for xi in x32.astype(np.float64)])  # at the float32 inputs
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(("name", "dim"), CASES, ids=CASE_IDS)
def test_minimum_is_global_within_bounds(name, dim):
    s = functions.spec(name, dim)
    values = _float64_values(name, dim)
    assert values["uniform"].min() >= s.minimum - 1e-6
    if dim <= 2:
        assert values["grid"].min() >= s.minimum - 1e-6
        # The grid is fine enough to come close to the minimum it does not beat.
        assert values["grid"].min() <= s.minimum + 1e-2 * max(1.0, abs(s.minimum))


SMOOTH = [(i, c) for i, c in zip(CASE_IDS, CASES, strict=True) if c[0] != "chasm"]  # chasm has a kink at its minimum


@pytest.mark.parametrize(("name", "dim"), [c for _, c in SMOOTH], ids=[i for i, _ in SMOOTH])
def test_gradient_vanishes_at_argmin(name, dim, x64):
    s = functions.spec(name, dim)
    grad = jax.jit(jax.grad(s.fn))(jnp.asarray(s.argmin))
    assert grad.dtype == jnp.float64
    np.testing.assert_allclose(np.asarray(grad), 0.0, atol=1e-9)


@pytest.mark.parametrize(("name", "dim"), CASES, ids=CASE_IDS)
def test_jit_and_vmap_match_python_loop(name, dim):
    s = functions.spec(name, dim)
    x32, batched = _float32_points_and_values(name, dim)
    fn = jax.jit(s.fn)
    looped = [fn(xi) for xi in x32]
    assert all(v.shape == () and v.dtype == jnp.float32 for v in looped)
    np.testing.assert_allclose(batched, np.array(looped), rtol=1e-6, atol=1e-7)
    seven = jax.jit(jax.vmap(s.fn))(x32[:7])
    np.testing.assert_allclose(np.asarray(seven), np.array(looped[:7]), rtol=1e-6, atol=1e-7)


def test_x64_not_left_on():
    assert jnp.asarray(1.0).dtype == jnp.float32


def test_integer_input_is_promoted():
    assert functions.rastrigin(jnp.array([0, 1])).dtype == jnp.float32
    assert float(functions.rastrigin(jnp.array([0, 1]))) == pytest.approx(1.0, abs=1e-5)


def test_name_lookup_is_case_insensitive_and_has_alias():
    assert functions.spec("RastRigin").name == "rastrigin"
    assert functions.spec("3Gaussians2d").name == "three_gaussians2d"
    assert functions.spec("THREE_GAUSSIANS2D").name == "three_gaussians2d"
    assert functions.spec("easom").dim == 2


def test_unknown_name_lists_valid_names():
    with pytest.raises(ValueError, match="unknown benchmark function 'sphere'") as info:
        functions.spec("sphere")
    for name in functions.NAMES:
        assert name in str(info.value)


@pytest.mark.parametrize(
    ("name", "dim", "message"),
    [
        ("shekel2d", 10, r"shekel2d is defined only for dim=2, got dim=10"),
        ("chasm", 3, r"chasm is defined only for dim=2, got dim=3"),
        ("michalewicz2d", 1, r"michalewicz2d is defined only for dim=2, got dim=1"),
        ("rastrigin", 0, r"rastrigin needs dim >= 1, got dim=0"),
        ("ackley", -3, r"ackley needs dim >= 1, got dim=-3"),
        ("rosenbrock", 1, r"rosenbrock needs dim >= 2, got dim=1"),
    ],
)
def test_bad_dim_raises(name, dim, message):
    with pytest.raises(ValueError, match=message):
        functions.spec(name, dim)


def test_non_integer_dim_raises():
    with pytest.raises(TypeError, match="dim must be an integer"):
        functions.spec("rastrigin", 2.5)


def test_wrong_shape_raises():
    with pytest.raises(ValueError, match=r"shekel2d is defined for d = 2"):
        functions.shekel2d(jnp.zeros(3))
    with pytest.raises(ValueError, match=r"flat vector"):
        functions.rastrigin(jnp.zeros((2, 2)))
    with pytest.raises(ValueError, match=r"rosenbrock needs d >= 2"):
        functions.rosenbrock(jnp.zeros(1))
