"""Outer loops: one module per algorithm, all sharing the protocol of :class:`l2ljax.core.Optimizer`."""

from l2ljax.optimizers.bptt import BPTT, gradient_optimizee, loss_optimizee
from l2ljax.optimizers.cma_es import CMAES, CMAESParams
from l2ljax.optimizers.cross_entropy import CrossEntropy, CrossEntropyParams, Gaussian, NoisyGaussian
from l2ljax.optimizers.distributions import GaussianMixture, NoisyGaussianMixture
from l2ljax.optimizers.enkf import EnsembleKalmanFilter, EnsembleKalmanParams
from l2ljax.optimizers.evolution_strategies import EvolutionStrategies, EvolutionStrategiesParams
from l2ljax.optimizers.face import FACE, FACEParams
from l2ljax.optimizers.genetic import GeneticAlgorithm, GeneticAlgorithmParams
from l2ljax.optimizers.gradient_descent import GradientDescent, GradientDescentParams, l2l_variant
from l2ljax.optimizers.nes import NaturalEvolutionStrategies, NaturalEvolutionStrategiesParams
from l2ljax.optimizers.parallel_tempering import ParallelTempering, ParallelTemperingParams
from l2ljax.optimizers.search import GridSearch, RandomSearch
from l2ljax.optimizers.simulated_annealing import COOLING_SCHEDULES, SimulatedAnnealing, SimulatedAnnealingParams

__all__ = [
    "BPTT", "gradient_optimizee", "loss_optimizee",
    "CMAES", "COOLING_SCHEDULES", "FACE", "CMAESParams", "CrossEntropy", "CrossEntropyParams", "EnsembleKalmanFilter",
    "EnsembleKalmanParams", "EvolutionStrategies", "EvolutionStrategiesParams", "FACEParams", "Gaussian",
    "GaussianMixture", "GeneticAlgorithm", "GeneticAlgorithmParams", "GradientDescent", "GradientDescentParams",
    "GridSearch", "NaturalEvolutionStrategies", "NaturalEvolutionStrategiesParams", "NoisyGaussian",
    "NoisyGaussianMixture", "ParallelTempering", "ParallelTemperingParams", "RandomSearch", "SimulatedAnnealing",
    "SimulatedAnnealingParams", "l2l_variant",
]
