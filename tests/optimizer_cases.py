"""Every optimizer at a small setting, shared by the reference and protocol tests.

``CASES`` maps a case name to ``(make_optimizer, kind)``: ``make_optimizer(problem)`` builds the
optimizer on an optimizee of that ``kind``; "function" cases run on the L2L benchmark
functions ``FUNCTIONS``, "kalman" cases (EnKF: it needs outputs and observations) on the
inverse problems of ``kalman_problem``.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax

import l2ljax
from l2ljax.core import Optimizee

FUNCTIONS = ("rastrigin-3", "rosenbrock-2")
KALMAN_PROBLEMS = ("linear", "tanh")

CASES = {
    "CrossEntropy-Gaussian": (lambda p: l2ljax.CrossEntropy(p, pop_size=8), "function"),
    "CrossEntropy-NoisyGaussian": (lambda p: l2ljax.CrossEntropy(
        p, pop_size=8, distribution=l2ljax.NoisyGaussian(noise_decay=0.9)), "function"),
    "CrossEntropy-GaussianMixture": (lambda p: l2ljax.CrossEntropy(
        p, pop_size=10, distribution=l2ljax.GaussianMixture(n_components=2, n_iter=3)), "function"),
    "CrossEntropy-NoisyGaussianMixture": (lambda p: l2ljax.CrossEntropy(
        p, pop_size=10, distribution=l2ljax.NoisyGaussianMixture(n_components=2, n_iter=3, diagonal=True)),
        "function"),
    "FACE": (lambda p: l2ljax.FACE(p, min_pop_size=6, max_pop_size=10, n_elite=3, n_expand=2), "function"),
    "ES": (lambda p: l2ljax.EvolutionStrategies(p, pop_size=8), "function"),
    "NES": (lambda p: l2ljax.NaturalEvolutionStrategies(p, pop_size=8), "function"),
    "CMAES": (lambda p: l2ljax.CMAES(p, pop_size=8), "function"),
    "GA": (lambda p: l2ljax.GeneticAlgorithm(p, pop_size=8, hall_of_fame_size=4), "function"),
    "SA": (lambda p: l2ljax.SimulatedAnnealing(p, n_parallel_runs=6), "function"),
    "SA-linear_additive": (lambda p: l2ljax.SimulatedAnnealing(
        p, n_parallel_runs=6, cooling_schedule="linear_additive", n_iteration=20), "function"),
    "PT": (lambda p: l2ljax.ParallelTempering(p, n_parallel_runs=4, noisy_step=0.3), "function"),
    "GD-sgd": (lambda p: l2ljax.GradientDescent(p, n_random_steps=5), "function"),
    "GD-adam": (lambda p: l2ljax.GradientDescent(p, n_random_steps=5, optimizer=optax.adam(0.05)), "function"),
    "GridSearch": (lambda p: l2ljax.GridSearch(p, n_steps=3, pop_size=7), "function"),
    "RandomSearch": (lambda p: l2ljax.RandomSearch(p, pop_size=8), "function"),
    "EnKF": (lambda p: l2ljax.EnsembleKalmanFilter(p, pop_size=8), "kalman"),
    "EnKF-stochastic": (lambda p: l2ljax.EnsembleKalmanFilter(p, pop_size=8, stochastic=True), "kalman"),
}


def function_problem(name: str) -> Optimizee:
    function, dim = name.rsplit("-", 1)
    return l2ljax.function_optimizee(function, int(dim))


def kalman_problem(name: str, dtype=jnp.float32) -> Optimizee:
    """G(u) = A u (``linear``) or tanh(A u) (``tanh``), 4 parameters, 6 observations of a known u*."""
    rng = np.random.default_rng(0)
    A = jnp.asarray(rng.normal(size=(6, 4)), dtype)
    forward = (lambda u: A @ u) if name == "linear" else (lambda u: jnp.tanh(A @ u))
    y = forward(jnp.asarray(rng.normal(size=4), dtype))

    def fn(u, key, inputs):
        out = forward(u)
        return -jnp.mean(jnp.square(out - y)), out

    return Optimizee.create(fn, jnp.zeros(4, dtype), weights=(1.0,), data=lambda g: (jnp.zeros(()), y),
                            sample=lambda k: jax.random.normal(k, (4,), dtype))


def problems(kind: str) -> tuple[str, ...]:
    return FUNCTIONS if kind == "function" else KALMAN_PROBLEMS


def problem(kind: str, name: str) -> Optimizee:
    return function_problem(name) if kind == "function" else kalman_problem(name)
