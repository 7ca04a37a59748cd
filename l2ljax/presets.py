"""Settings that work on the L2L benchmark functions, one factory per optimizer.

Each factory takes ``(problem, generations)`` and returns ``(optimizer, params, generations)``;
the functions table (``l2ljax functions``) and the benchmarks use them, so every optimizer is
compared at its documented, tested settings.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from l2ljax.core import Optimizee
from l2ljax.optimizers import CrossEntropy, EvolutionStrategies, GridSearch, NoisyGaussian, RandomSearch

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


def optimizers() -> dict[str, Factory]:
    return {"CrossEntropy": cross_entropy, "ES": evolution_strategies, "GridSearch": grid_search,
            "RandomSearch": random_search}
