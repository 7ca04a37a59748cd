"""Optimization happens: CE and ES reach known optima and beat random search at equal budget."""

import jax
import numpy as np
import pytest

import l2ljax

GENERATIONS = 300


def cross_entropy(problem):
    opt = l2ljax.CrossEntropy(problem, pop_size=100, distribution=l2ljax.NoisyGaussian(noise_decay=0.95))
    return opt, opt.default_params.replace(rho=0.2, smoothing=0.2)


def evolution_strategies(problem):
    opt = l2ljax.EvolutionStrategies(problem, pop_size=50)
    return opt, opt.default_params.replace(learning_rate=0.2, noise_std=0.5)


# (optimizer factory, function, dim, tolerance on f(best) - f*), fixed seed 0.
CASES = [
    (cross_entropy, "rosenbrock", 2, 1e-4),
    (cross_entropy, "rastrigin", 2, 1e-4),
    (cross_entropy, "ackley", 10, 5e-3),
    (evolution_strategies, "rosenbrock", 2, 5e-2),
    (evolution_strategies, "rastrigin", 2, 1e-2),
    (evolution_strategies, "ackley", 10, 1e-2),
]


def random_search_best(problem, evaluations, seed):
    opt = l2ljax.RandomSearch(problem, pop_size=100)
    return float(l2ljax.run(opt, problem, jax.random.key(seed), evaluations // 100).best_fitness[0])


@pytest.mark.parametrize("factory, name, dim, tolerance", CASES,
                         ids=[f"{c[0].__name__}-{c[1]}{c[2]}" for c in CASES])
def test_reaches_the_known_optimum(factory, name, dim, tolerance):
    problem = l2ljax.function_optimizee(name, dim)
    opt, params = factory(problem)
    result = l2ljax.run(opt, problem, jax.random.key(0), GENERATIONS, params=params)
    gap = float(result.best_fitness[0]) - problem.info["minimum"]
    assert 0 <= gap + 1e-6 and gap < tolerance, f"{opt.name} on {name}-{dim}d: gap {gap}"
    if name != "rosenbrock":  # unimodal valley: ES is a local method, it may stop near but not at the argmin
        np.testing.assert_allclose(result.best, problem.info["argmin"], atol=0.05)


@pytest.mark.parametrize("factory, name, dim", [
    (cross_entropy, "rosenbrock", 2), (cross_entropy, "rastrigin", 2), (cross_entropy, "ackley", 10),
    (evolution_strategies, "rastrigin", 2), (evolution_strategies, "ackley", 10),
])
def test_beats_random_search_at_equal_budget(factory, name, dim):
    problem = l2ljax.function_optimizee(name, dim)
    opt, params = factory(problem)
    result = l2ljax.run(opt, problem, jax.random.key(1), GENERATIONS, params=params)
    evaluations = result.trajectory["fitness"].shape[1] * GENERATIONS
    assert result.best_fitness[0] < random_search_best(problem, evaluations, seed=1)


def test_many_hyperparameter_settings_in_one_vmapped_run():
    """Params are a pytree: vmap init/ask/tell over learning rates, one compiled program."""
    problem = l2ljax.function_optimizee("ackley", 2)
    opt = l2ljax.EvolutionStrategies(problem, pop_size=20)
    params = opt.default_params.replace(learning_rate=np.array([0.01, 0.3]), noise_std=np.array([0.5, 0.5]))
    step = l2ljax.make_step(opt, problem)

    def run_one(p):
        state = opt.init(jax.random.key(0), p, x0=np.full(2, 1.5, np.float32))
        state, _ = jax.lax.scan(lambda s, _: (step(s, jax.random.key(1))[0], None), state, None, length=100)
        return state.best_score

    best = jax.jit(jax.vmap(run_one))(params)
    assert best.shape == (2,)
    assert best[1] > best[0]  # the larger learning rate gets further in 100 generations
    single = l2ljax.run(opt, problem, jax.random.key(0), 5, params=opt.default_params)
    assert single.generations == 5
