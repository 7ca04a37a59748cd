"""Outer loops: one module per algorithm, all sharing the protocol of :class:`l2ljax.core.Optimizer`."""

from l2ljax.optimizers.cross_entropy import CrossEntropy, CrossEntropyParams, Gaussian, NoisyGaussian
from l2ljax.optimizers.evolution_strategies import EvolutionStrategies, EvolutionStrategiesParams
from l2ljax.optimizers.search import GridSearch, RandomSearch

__all__ = [
    "CrossEntropy", "CrossEntropyParams", "EvolutionStrategies", "EvolutionStrategiesParams", "Gaussian",
    "GridSearch", "NoisyGaussian", "RandomSearch",
]
