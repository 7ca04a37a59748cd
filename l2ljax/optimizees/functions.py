"""Benchmark functions of L2L as pure JAX functions.

The fifteen benchmarks of the original L2L (``l2l.optimizees.functions``,
``BenchmarkedFunctions``) are eleven functions, four of which L2L offers in 2
and 10 dimensions (Rastrigin, Rosenbrock, Ackley, Easom). Here each function
maps a flat vector ``x`` of shape ``(d,)`` to a scalar, is written with
``jax.numpy`` (so it can be jitted, vmapped and differentiated) and keeps the
dtype of ``x``. :func:`spec` bundles a function with its bounds and a known
global minimiser.

Conventions taken from L2L:

* Direction: every function is to be **minimised**. L2L's function optimizee
  asks for ``fitness_weights=(-1,)``; its Gaussians return the *negative*
  density, so minimising finds the peak. No function here is a maximisation.
* Bounds: one interval ``[lo, hi]`` for every coordinate. L2L draws starting
  individuals uniformly in it and clips individuals to it.
* Noise: L2L can add ``N(mu=0, sigma=0.01)`` to each evaluation (off by
  default). The functions here are noise-free; a noisy optimizee adds
  ``sigma * jax.random.normal(key)`` with an explicit key.
* Constants: L2L's defaults (Shekel and Langermann centres and weights,
  Michalewicz ``m = 10``, Permutation ``beta = 0.005``, the Gaussians' means
  and covariances); each docstring gives them.

================= ========= ====== ========================== ===================
name              bounds    dims   argmin                     minimum
================= ========= ====== ========================== ===================
rastrigin         [-5, 5]   d >= 1 (0, ..., 0)                0
rosenbrock        [-2, 2]   d >= 2 (1, ..., 1)                0
ackley            [-2, 2]   d >= 1 (0, ..., 0)                0
easom             [-10, 10] d >= 1 (pi, ..., pi), even d      -1 (even d)
chasm             [-2, 2]   2      (0, 0)                     0
gauss2d           [-5, 5]   2      (-1, -1)                   -0.23993510443917
shekel2d          [0, 10]   2      (2.99623774, 4.99589574)   -5.76016091600122
langermann2d      [0, 10]   2      (2.79340221, 1.59723250)   -4.15580929184779
michalewicz2d     [0, pi]   2      (2.20290552, pi/2)         -1.80130341009855
permutation2d     [-2, 2]   2      (1, 2)                     0
three_gaussians2d [-5, 5]   2      (0.99905735, 0.99509942)   -0.39847499579652
================= ========= ====== ========================== ===================

For odd ``d`` Easom's product of cosines is ``-1`` at ``(pi, ..., pi)``, so that
point is a maximum; the minimum ``-0.00900567814857386`` lies at
``(pi + 1.83659720315213, pi, ..., pi)`` (or any permutation / reflection of
it). The numerical optima (Easom odd ``d``, Shekel, Langermann, Michalewicz,
3Gaussians) were found offline: the best local minima of a 1501 x 1501 grid,
refined by Nelder-Mead in float64 and then by Newton's method on the gradient
in 40-digit arithmetic (mpmath). ``spec(...).fn(argmin)`` reproduces
``minimum`` to float64 precision and the gradient vanishes there.

Example::

    import jax
    from l2ljax.optimizees import functions

    s = functions.spec("rastrigin", dim=10)
    x = jax.random.uniform(jax.random.key(0), (64, s.dim), minval=s.lower, maxval=s.upper)
    fitness = jax.vmap(s.fn)(x)  # shape (64,), lower is better
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "NAMES",
    "FunctionSpec",
    "ackley",
    "chasm",
    "easom",
    "gauss2d",
    "langermann2d",
    "michalewicz2d",
    "permutation2d",
    "rastrigin",
    "rosenbrock",
    "shekel2d",
    "spec",
    "three_gaussians2d",
]


def _vector(x: jax.Array, name: str, *, dim: int | None = None, min_dim: int = 1) -> jax.Array:
    """``x`` as a floating 1-D array, checked against the function's dimension."""
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        x = x.astype(jnp.result_type(float))
    if x.ndim != 1:
        raise ValueError(f"{name} takes a flat vector of shape (d,), got shape {x.shape}")
    if dim is not None and x.shape[0] != dim:
        raise ValueError(f"{name} is defined for d = {dim}, got shape {x.shape}")
    if x.shape[0] < min_dim:
        raise ValueError(f"{name} needs d >= {min_dim}, got shape {x.shape}")
    return x


def rastrigin(x: jax.Array) -> jax.Array:
    """Rastrigin: ``sum_i x_i^2 + 10 - 10 cos(2 pi x_i)``.

    Bounds ``[-5, 5]``; minimum 0 at the origin. Written as
    ``x_i^2 + 20 sin^2(pi x_i)`` (the same function), which is exact near the
    optimum.
    """
    x = _vector(x, "rastrigin")
    return jnp.sum(x**2 + 20.0 * jnp.sin(jnp.pi * x) ** 2)


def rosenbrock(x: jax.Array) -> jax.Array:
    """Rosenbrock: ``sum_{i<d} 100 (x_{i+1} - x_i^2)^2 + (1 - x_i)^2``, ``d >= 2``.

    Bounds ``[-2, 2]`` (as L2L); minimum 0 at ``(1, ..., 1)``.
    """
    x = _vector(x, "rosenbrock", min_dim=2)
    head, tail = x[:-1], x[1:]
    return jnp.sum(100.0 * (tail - head**2) ** 2 + (1.0 - head) ** 2)


def ackley(x: jax.Array) -> jax.Array:
    """Ackley: ``20 + e - 20 exp(-0.2 sqrt(mean x_i^2)) - exp(mean cos(2 pi x_i))``.

    Bounds ``[-2, 2]`` (as L2L); minimum 0 at the origin. Computed with
    ``expm1`` so the optimum is exactly 0, and with a square root whose
    gradient at the origin is 0 instead of NaN.
    """
    x = _vector(x, "ackley")
    mean_sq = jnp.mean(x**2)
    positive = mean_sq > 0
    radius = jnp.where(positive, jnp.sqrt(jnp.where(positive, mean_sq, 1.0)), 0.0)
    mean_cos = jnp.mean(jnp.cos(2.0 * jnp.pi * x))
    return -20.0 * jnp.expm1(-0.2 * radius) - math.e * jnp.expm1(mean_cos - 1.0)


def easom(x: jax.Array) -> jax.Array:
    """Easom in ``d`` dimensions (L2L's form): ``-prod_i cos(x_i) exp(-sum_i (x_i - pi)^2)``.

    Bounds ``[-10, 10]``. For even ``d`` the minimum is -1 at
    ``(pi, ..., pi)``; for odd ``d`` see the module docstring.
    """
    x = _vector(x, "easom")
    return -jnp.prod(jnp.cos(x)) * jnp.exp(-jnp.sum((x - jnp.pi) ** 2))


def chasm(x: jax.Array) -> jax.Array:
    """Chasm (L2L): ``1000 |x_0| / (1000 |x_0| + 1) + 0.01 |x_1|``, 2-D only.

    A flat plateau split by a steep narrow chasm along ``x_0 = 0``. Bounds
    ``[-2, 2]``; minimum 0 at the origin.
    """
    x = _vector(x, "chasm", dim=2)
    a = 1e3 * jnp.abs(x[0])
    return a / (a + 1.0) + 1e-2 * jnp.abs(x[1])


def _gaussian_peak(mean: tuple[float, float], cov: tuple[tuple[float, float], ...]) -> tuple:
    cov_arr = np.asarray(cov, dtype=np.float64)
    norm = 1.0 / (2.0 * np.pi * np.sqrt(np.linalg.det(cov_arr)))
    return np.asarray(mean, dtype=np.float64), np.linalg.inv(cov_arr), norm


# L2L's Gauss2d is the first peak; its 3Gaussians2d sums all three.
_GAUSSIAN_PEAKS = (
    _gaussian_peak((-1.0, -1.0), ((1.5, 0.1), (0.1, 0.3))),
    _gaussian_peak((1.0, 1.0), ((0.25, 0.3), (0.3, 1.0))),
    _gaussian_peak((2.0, -2.0), ((0.5, 0.25), (0.25, 1.3))),
)


def _negative_gaussians(x: jax.Array, peaks: tuple) -> jax.Array:
    """Minus the sum of bivariate normal densities ``(mean, inverse covariance, normaliser)``."""
    total = jnp.zeros((), x.dtype)
    for mean, precision, norm in peaks:
        diff = x - jnp.asarray(mean, x.dtype)
        quad = diff @ jnp.asarray(precision, x.dtype) @ diff
        total = total + norm * jnp.exp(-0.5 * quad)
    return -total


def gauss2d(x: jax.Array) -> jax.Array:
    """Gauss2d (L2L): minus the normal density with mean ``(-1, -1)`` and
    covariance ``[[1.5, 0.1], [0.1, 0.3]]``.

    Bounds ``[-5, 5]``; minimum ``-1 / (2 pi sqrt(0.44))`` at the mean.
    """
    x = _vector(x, "gauss2d", dim=2)
    return _negative_gaussians(x, _GAUSSIAN_PEAKS[:1])


def three_gaussians2d(x: jax.Array) -> jax.Array:
    """3Gaussians2d (L2L): minus the sum of three normal densities.

    Means ``(-1, -1)``, ``(1, 1)``, ``(2, -2)``; covariances
    ``[[1.5, 0.1], [0.1, 0.3]]``, ``[[0.25, 0.3], [0.3, 1.0]]``,
    ``[[0.5, 0.25], [0.25, 1.3]]``. Bounds ``[-5, 5]``; numerical minimum
    ``-0.398474995796524`` near the second mean (see :func:`spec`).
    """
    x = _vector(x, "three_gaussians2d", dim=2)
    return _negative_gaussians(x, _GAUSSIAN_PEAKS)


_SHEKEL_A = np.array([[3, 5], [5, 2], [2, 1], [3, 3], [2, 7], [1, 4], [7, 9]], dtype=np.float64)
_SHEKEL_C = np.array([1, 2, 5, 2, 3, 1, 1], dtype=np.float64) / 10.0


def shekel2d(x: jax.Array) -> jax.Array:
    """Shekel foxholes with L2L's 2-D defaults: ``-sum_i 1 / sum_j ((x_j - A_ij)^2 + c_i)``.

    ``A = [[3,5],[5,2],[2,1],[3,3],[2,7],[1,4],[7,9]]``,
    ``c = [1,2,5,2,3,1,1] / 10``. L2L adds ``c_i`` once per coordinate, so in
    2-D this is the textbook Shekel ``-sum_i 1 / (|x - A_i|^2 + c_i)`` with
    ``c`` doubled; we keep L2L's form so values match L2L. Bounds ``[0, 10]``;
    numerical minimum ``-5.76016091600122`` near ``(3, 5)``.
    """
    x = _vector(x, "shekel2d", dim=2)
    a = jnp.asarray(_SHEKEL_A, x.dtype)
    c = jnp.asarray(_SHEKEL_C, x.dtype)
    denom = jnp.sum((x - a) ** 2 + c[:, None], axis=1)
    return -jnp.sum(1.0 / denom)


_LANGERMANN_A = np.array([[3, 5], [5, 2], [2, 1], [1, 4], [7, 9]], dtype=np.float64)
_LANGERMANN_C = np.array([1, 2, 5, 2, 3], dtype=np.float64)


def langermann2d(x: jax.Array) -> jax.Array:
    """Langermann with L2L's 2-D defaults: ``sum_i c_i exp(-s_i / pi) cos(pi s_i)``, ``s_i = |x - A_i|^2``.

    ``A = [[3,5],[5,2],[2,1],[1,4],[7,9]]``, ``c = [1,2,5,2,3]`` (the constants
    of Surjanovic & Bingham's page, with its sign: no leading minus). Bounds
    ``[0, 10]``; numerical minimum ``-4.15580929184779`` at
    ``(2.79340221, 1.59723250)``.
    """
    x = _vector(x, "langermann2d", dim=2)
    s = jnp.sum((x - jnp.asarray(_LANGERMANN_A, x.dtype)) ** 2, axis=1)
    c = jnp.asarray(_LANGERMANN_C, x.dtype)
    return jnp.sum(c * jnp.exp(-s / jnp.pi) * jnp.cos(jnp.pi * s))


def michalewicz2d(x: jax.Array) -> jax.Array:
    """Michalewicz with L2L's default steepness ``m = 10``: ``-sum_i sin(x_i) sin(i x_i^2 / pi)^(2m)``.

    Bounds ``[0, pi]``; numerical minimum ``-1.80130341009855`` at
    ``(2.20290552017261, pi/2)``.
    """
    x = _vector(x, "michalewicz2d", dim=2)
    i = jnp.arange(1, x.shape[0] + 1, dtype=x.dtype)
    return -jnp.sum(jnp.sin(x) * jnp.sin(i * x**2 / jnp.pi) ** 20)


_PERMUTATION_BETA = 0.005


def permutation2d(x: jax.Array) -> jax.Array:
    """Perm function ``d, beta`` with L2L's ``beta = 0.005``: ``sum_k (sum_i (i^k + beta) ((x_i / i)^k - 1))^2``.

    ``i, k = 1..d``. Bounds ``[-d, d] = [-2, 2]``; minimum 0 at ``(1, 2)``
    (on the upper bound of the second coordinate).
    """
    x = _vector(x, "permutation2d", dim=2)
    d = x.shape[0]
    i = jnp.arange(1, d + 1, dtype=x.dtype)
    inner = [jnp.sum((i**k + _PERMUTATION_BETA) * ((x / i) ** k - 1.0)) for k in range(1, d + 1)]
    return jnp.sum(jnp.stack(inner) ** 2)


@dataclasses.dataclass(frozen=True, eq=False)
class FunctionSpec:
    """A benchmark function with its box and a known global minimum (read-only arrays).

    Attributes:
        name: canonical name (one of :data:`NAMES`).
        fn: ``fn(x) -> scalar`` for ``x`` of shape ``(dim,)``; to be minimised.
        dim: dimension ``d``.
        lower: ``(d,)`` float64 lower bounds.
        upper: ``(d,)`` float64 upper bounds.
        argmin: ``(d,)`` float64 global minimiser inside ``[lower, upper]``.
        minimum: ``fn(argmin)`` (float64).
        citation: where the function comes from.
    """

    name: str
    fn: Callable[[jax.Array], jax.Array]
    dim: int
    lower: np.ndarray
    upper: np.ndarray
    argmin: np.ndarray
    minimum: float
    citation: str


_EASOM_ODD_SHIFT = 1.8365972031521257228  # argmax of cos(t) exp(-(t - pi)^2) is pi + this
_EASOM_ODD_MINIMUM = -0.0090056781485738573602


def _easom_optimum(dim: int) -> tuple[list[float], float]:
    if dim % 2 == 0:
        return [math.pi] * dim, -1.0
    return [math.pi + _EASOM_ODD_SHIFT] + [math.pi] * (dim - 1), _EASOM_ODD_MINIMUM


def _fixed(argmin: list[float], minimum: float) -> Callable[[int], tuple[list[float], float]]:
    return lambda dim: (argmin, minimum)


@dataclasses.dataclass(frozen=True)
class _Entry:
    fn: Callable[[jax.Array], jax.Array]
    bounds: tuple[float, float]
    optimum: Callable[[int], tuple[list[float], float]]  # dim -> (argmin, minimum)
    citation: str
    min_dim: int = 1
    only_dim: int | None = None


_SFU = "Surjanovic & Bingham, Virtual Library of Simulation Experiments, sfu.ca/~ssurjano"
_REGISTRY: dict[str, _Entry] = {
    "rastrigin": _Entry(rastrigin, (-5.0, 5.0), lambda d: ([0.0] * d, 0.0), f"Rastrigin (1974); {_SFU}/rastr.html"),
    "rosenbrock": _Entry(
        rosenbrock,
        (-2.0, 2.0),
        lambda d: ([1.0] * d, 0.0),
        f"Rosenbrock (1960), Comput. J. 3:175; {_SFU}/rosen.html",
        min_dim=2,
    ),
    "ackley": _Entry(ackley, (-2.0, 2.0), lambda d: ([0.0] * d, 0.0), f"Ackley (1987); {_SFU}/ackley.html"),
    "easom": _Entry(
        easom, (-10.0, 10.0), _easom_optimum, f"Easom (1990), d-dimensional form of L2L; {_SFU}/easom.html"
    ),
    "chasm": _Entry(chasm, (-2.0, 2.0), _fixed([0.0, 0.0], 0.0), "L2L (Meta-optimization/L2L) Chasm", only_dim=2),
    "gauss2d": _Entry(
        gauss2d,
        (-5.0, 5.0),
        _fixed([-1.0, -1.0], -0.2399351044391740734),
        "L2L Gauss2d: negative bivariate normal density",
        only_dim=2,
    ),
    "shekel2d": _Entry(
        shekel2d,
        (0.0, 10.0),
        _fixed([2.9962377426523887489, 4.9958957445375698063], -5.7601609160012223024),
        f"Shekel (1971) with L2L's 2-D constants; {_SFU}/shekel.html",
        only_dim=2,
    ),
    "langermann2d": _Entry(
        langermann2d,
        (0.0, 10.0),
        _fixed([2.7934022086450368537, 1.5972325013283600339], -4.1558092918477850731),
        f"Langermann; {_SFU}/langer.html",
        only_dim=2,
    ),
    "michalewicz2d": _Entry(
        michalewicz2d,
        (0.0, math.pi),
        _fixed([2.2029055201726093461, math.pi / 2], -1.8013034100985525327),
        f"Michalewicz (1992), m = 10; {_SFU}/michal.html",
        only_dim=2,
    ),
    "permutation2d": _Entry(
        permutation2d,
        (-2.0, 2.0),
        _fixed([1.0, 2.0], 0.0),
        f"Neumaier's Perm function d, beta (beta = 0.005); {_SFU}/permdb.html",
        only_dim=2,
    ),
    "three_gaussians2d": _Entry(
        three_gaussians2d,
        (-5.0, 5.0),
        _fixed([0.99905734532754648056, 0.99509941722019538143], -0.39847499579652355036),
        "L2L 3Gaussians2d: sum of three negative bivariate normal densities",
        only_dim=2,
    ),
}

NAMES: tuple[str, ...] = tuple(_REGISTRY)
_ALIASES = {"3gaussians2d": "three_gaussians2d"}


def _read_only(values: list[float] | np.ndarray) -> np.ndarray:
    arr = np.array(values, dtype=np.float64)
    arr.setflags(write=False)
    return arr


def spec(name: str, dim: int | None = None) -> FunctionSpec:
    """The :class:`FunctionSpec` of benchmark ``name`` in ``dim`` dimensions.

    Args:
        name: one of :data:`NAMES`, case-insensitive; ``"3gaussians2d"`` is
            accepted for ``"three_gaussians2d"``.
        dim: dimension; ``None`` means 2. The ``chasm`` and ``*2d`` functions
            accept only 2, ``rosenbrock`` needs at least 2, the others at least 1.

    Raises:
        ValueError: unknown name, or a dimension the function does not have.
        TypeError: ``dim`` is not an integer.
    """
    key = name.lower()
    key = _ALIASES.get(key, key)
    if key not in _REGISTRY:
        valid = ", ".join(NAMES)
        raise ValueError(f"unknown benchmark function {name!r}; valid names: {valid} (alias: 3gaussians2d)")
    entry = _REGISTRY[key]
    if dim is None:
        dim = 2
    if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)):
        raise TypeError(f"dim must be an integer, got {dim!r}")
    dim = int(dim)
    if entry.only_dim is not None and dim != entry.only_dim:
        raise ValueError(f"{key} is defined only for dim={entry.only_dim}, got dim={dim}")
    if dim < entry.min_dim:
        raise ValueError(f"{key} needs dim >= {entry.min_dim}, got dim={dim}")
    argmin, minimum = entry.optimum(dim)
    lo, hi = entry.bounds
    return FunctionSpec(
        name=key,
        fn=entry.fn,
        dim=dim,
        lower=_read_only(np.full(dim, lo)),
        upper=_read_only(np.full(dim, hi)),
        argmin=_read_only(argmin),
        minimum=float(minimum),
        citation=entry.citation,
    )
