"""Settings that work on the L2L benchmark functions, one factory per optimizer.

Each factory takes ``(problem, generations)`` and returns ``(optimizer, params, generations)``;
the functions table (``l2ljax functions``) and the benchmarks use them, so every optimizer is
compared at its documented, tested settings.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import optax

from l2ljax.core import Optimizee
from l2ljax.optimizers import (
    CMAES,
    FACE,
    CrossEntropy,
    EvolutionStrategies,
    GeneticAlgorithm,
    GradientDescent,
    GridSearch,
    NaturalEvolutionStrategies,
    NoisyGaussian,
    ParallelTempering,
    RandomSearch,
    SimulatedAnnealing,
)

Factory = Callable[[Optimizee, int], tuple[Any, Any, int]]
POP = 100


def cross_entropy(problem: Optimizee, generations: int):
    opt = CrossEntropy(problem, pop_size=POP, distribution=NoisyGaussian(noise_decay=0.95))
    return opt, opt.default_params.replace(rho=0.2, smoothing=0.2), generations


def evolution_strategies(problem: Optimizee, generations: int):
    opt = EvolutionStrategies(problem, pop_size=POP)
    return opt, opt.default_params.replace(learning_rate=0.2, noise_std=0.5), generations


def random_search(problem: Optimizee, generations: int):
    return RandomSearch(problem, pop_size=POP), None, generations


def grid_search(problem: Optimizee, generations: int):
    """The finest grid within the same budget of POP * generations evaluations."""
    steps = max(1, int(math.floor((POP * generations) ** (1 / problem.space.dim))) - 1)
    opt = GridSearch(problem, n_steps=steps, pop_size=POP)
    return opt, None, min(generations, opt.n_generations)


def face(problem: Optimizee, generations: int):
    opt = FACE(problem, min_pop_size=50, max_pop_size=POP, n_elite=10, n_expand=10,
               distribution=NoisyGaussian(noise_decay=0.95))
    return opt, opt.default_params, generations


def natural_evolution_strategies(problem: Optimizee, generations: int):
    opt = NaturalEvolutionStrategies(problem, pop_size=POP)
    return opt, opt.default_params, generations


def cma_es(problem: Optimizee, generations: int):
    return CMAES(problem, pop_size=POP), None, generations


def genetic_algorithm(problem: Optimizee, generations: int):
    opt = GeneticAlgorithm(problem, pop_size=POP)
    return opt, opt.default_params, generations


def simulated_annealing(problem: Optimizee, generations: int):
    opt = SimulatedAnnealing(problem, n_parallel_runs=POP, cooling_schedule="linear_additive", n_iteration=generations)
    return opt, opt.default_params.replace(noisy_step=0.3, T0=5.0, Tn=0.01), generations


def parallel_tempering(problem: Optimizee, generations: int):
    opt = ParallelTempering(problem, n_parallel_runs=16, cooling_schedules="linear_additive",
                            noisy_step=0.3, n_iteration=generations)
    return opt, opt.default_params, generations * POP // 16


def gradient_descent(problem: Optimizee, generations: int):
    opt = GradientDescent(problem, n_random_steps=POP - 1, optimizer=optax.adam(0.05))
    return opt, opt.default_params, generations


def optimizers() -> dict[str, Factory]:
    return {"CrossEntropy": cross_entropy, "FACE": face, "ES": evolution_strategies,
            "NES": natural_evolution_strategies, "CMA-ES": cma_es, "GA": genetic_algorithm,
            "SA": simulated_annealing, "PT": parallel_tempering, "GD": gradient_descent,
            "GridSearch": grid_search, "RandomSearch": random_search}
