"""Finite-difference gradient ascent: exact gradients of linear scores, L2L's update rules, convergence,
NaN safety, vmapped learning rates and multi-parameter-set individuals."""


import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import assert_nan_region_never_selected, assert_scan_equals_host_loop, final_best, nan_region_run

import l2ljax
from l2ljax.core import make_evaluation
from l2ljax.optimizers.gradient_descent import GradientDescent, add_decaying_noise, l2l_variant

A = np.array([0.5, -1.0, 2.0])


def linear_problem():
    """Score a·x (fitness −a·x, minimised), unbounded: its gradient is a everywhere."""
    return l2ljax.Optimizee.create(lambda x, k: -jnp.dot(jnp.asarray(A, x.dtype), x), jnp.zeros(3))


def linear_evaluation(population, nan_rows=()):
    fitness = -np.asarray(population, np.float64) @ A
    fitness[list(nan_rows)] = np.nan
    return make_evaluation(jnp.asarray(fitness, jnp.float32), (-1.0,))


# --------------------------------------------------------------------------- the gradient estimate


@pytest.mark.parametrize("nan_rows", [(), (0, 3)])
def test_gradient_of_a_linear_score_is_exact(nan_rows):
    """n ≥ dim usable neighbours: the least-squares estimate is a; NaN neighbours are dropped."""
    problem = linear_problem()
    opt = GradientDescent(problem, n_random_steps=6, optimizer=optax.sgd(1.0))
    state = opt.init(jax.random.key(0), x0=jnp.zeros(3))
    population = opt.ask(jax.random.key(1), state)
    assert population.shape == (7, 3)
    np.testing.assert_array_equal(population[-1], state.inner.theta)  # θ itself is the last row
    new = opt.tell(state, population, linear_evaluation(population, nan_rows))
    np.testing.assert_allclose(new.inner.theta - state.inner.theta, A, rtol=2e-3)  # ascent: θ + 1·a


def test_fewer_steps_than_dimensions_give_the_minimum_norm_estimate():
    problem = linear_problem()
    opt = GradientDescent(problem, n_random_steps=2, optimizer=optax.sgd(1.0))
    state = opt.init(jax.random.key(0), x0=jnp.zeros(3))
    population = opt.ask(jax.random.key(1), state)
    new = opt.tell(state, population, linear_evaluation(population))
    dx = np.asarray(population[:2], np.float64)
    np.testing.assert_allclose(new.inner.theta, np.linalg.pinv(dx) @ (dx @ A), rtol=2e-3)


def test_non_finite_current_score_skips_the_update():
    problem = linear_problem()
    opt = GradientDescent(problem, n_random_steps=4, optimizer=optax.adam(0.1))
    state = opt.init(jax.random.key(0), x0=jnp.ones(3))
    population = opt.ask(jax.random.key(1), state)
    new = opt.tell(state, population, linear_evaluation(population, nan_rows=(4,)))  # row 4 is θ
    for a, b in zip(jax.tree_util.tree_leaves(new.inner.opt_state), jax.tree_util.tree_leaves(state.inner.opt_state),
                    strict=True):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(new.inner.theta, state.inner.theta)
    assert float(new.inner.current_score) == -np.inf


# --------------------------------------------------------------------------- L2L's update rules


def l2l_reference(variant, gradients, p):
    """L2L's GradientDescentOptimizer update rules (ascent on the score), in float64 numpy."""
    x, m, v = np.zeros(3), np.zeros(3), np.zeros(3)
    for t, g in enumerate(gradients, start=1):
        if variant == "ClassicGD":
            x = x + p["learning_rate"] * g
        elif variant == "RMSProp":
            v = p["momentum_decay"] * v + (1 - p["momentum_decay"]) * g * g
            x = x + p["learning_rate"] * g / np.sqrt(v + 1e-6)
        elif variant == "Adam":
            m = p["first_order_decay"] * m + (1 - p["first_order_decay"]) * g
            v = p["second_order_decay"] * v + (1 - p["second_order_decay"]) * g * g
            m_hat, v_hat = m / (1 - p["first_order_decay"] ** t), v / (1 - p["second_order_decay"] ** t)
            x = x + p["learning_rate"] * m_hat / (np.sqrt(v_hat) + 1e-8)
        elif variant == "AdaMax":  # Kingma & Ba's AdaMax; L2L's lacks the 1/(1 − b1^t) and the 1e-8
            m = p["first_order_decay"] * m + (1 - p["first_order_decay"]) * g
            v = np.maximum(p["second_order_decay"] * v, np.abs(g))
            x = x + p["learning_rate"] / (1 - p["first_order_decay"] ** t) * m / (v + 1e-8)
    return x


VARIANTS = {
    "ClassicGD": {"learning_rate": 0.1},
    "RMSProp": {"learning_rate": 0.1, "momentum_decay": 0.9},
    "Adam": {"learning_rate": 0.1, "first_order_decay": 0.8, "second_order_decay": 0.99},
    "AdaMax": {"learning_rate": 0.1, "first_order_decay": 0.8, "second_order_decay": 0.99},
    "StochasticGD": {"learning_rate": 0.1, "stochastic_deviation": 0.0, "stochastic_decay": 0.9},
}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_l2l_variants_follow_l2l_update_rules(variant):
    gradients = np.random.default_rng(0).normal(size=(6, 3))
    tx = l2l_variant(variant, **VARIANTS[variant])
    x = jnp.zeros(3)
    state = tx.init(x)
    for g in gradients:  # ascent: optax sees the negated gradient
        updates, state = tx.update(-jnp.asarray(g, jnp.float32), state, x)
        x = optax.apply_updates(x, updates)
    reference = "ClassicGD" if variant == "StochasticGD" else variant  # no noise: deviation 0
    np.testing.assert_allclose(x, l2l_reference(reference, gradients, VARIANTS[variant]), rtol=1e-5, atol=1e-6)


def test_stochastic_noise_decays_geometrically():
    """L2L's StochasticGD: noise N(0, (deviation · decay^(t+1))²) at update t = 0, 1, ..."""
    tx = add_decaying_noise(deviation=0.5, decay=0.8, seed=1)
    zeros = jnp.zeros(40_000)
    state = tx.init(zeros)
    for t in range(3):
        noise, state = tx.update(zeros, state)
        assert float(jnp.std(noise)) == pytest.approx(0.5 * 0.8 ** (t + 1), rel=0.02)
        assert abs(float(jnp.mean(noise))) < 0.02 * 0.5 * 0.8 ** (t + 1)


def test_l2l_variant_rejects_bad_names_and_parameters():
    with pytest.raises(ValueError, match="unknown"):
        l2l_variant("Nesterov", learning_rate=0.1)
    with pytest.raises(ValueError, match="momentum_decay"):
        l2l_variant("RMSProp", learning_rate=0.1)
    with pytest.raises(ValueError, match="first_order_decay"):
        l2l_variant("ClassicGD", learning_rate=0.1, first_order_decay=0.9)
    with pytest.raises(ValueError, match="exploration_step_size.*GradientDescentParams"):
        l2l_variant("ClassicGD", learning_rate=0.1, exploration_step_size=0.01)
    with pytest.raises(ValueError, match="learning_rate"):
        l2l_variant("ClassicGD", learning_rate=-0.1)
    with pytest.raises(ValueError, match="second_order_decay"):
        l2l_variant("Adam", learning_rate=0.1, first_order_decay=0.9, second_order_decay=1.0)
    with pytest.raises(ValueError, match="decay"):
        add_decaying_noise(0.1, 1.5)
    assert isinstance(l2l_variant("adam", learning_rate=0.1, first_order_decay=0.9, second_order_decay=0.999),
                      optax.GradientTransformation)


# --------------------------------------------------------------------------- optimisation


SEEDS = [0, 1, 2, 3]


@pytest.mark.parametrize(
    ("name", "x0", "optimizer", "n_generations", "tolerance"),
    [
        ("rosenbrock", [0.0, 0.0],
         l2l_variant("Adam", learning_rate=0.1, first_order_decay=0.9, second_order_decay=0.999), 1000, 1e-3),
        ("ackley", [0.3, -0.2], l2l_variant("ClassicGD", learning_rate=0.01), 100, 5e-3),
    ],
    ids=["rosenbrock-adam", "ackley-classic"],
)
def test_converges_and_beats_random_search(name, x0, optimizer, n_generations, tolerance):
    problem = l2ljax.function_optimizee(name, 2)
    opt = GradientDescent(problem, n_random_steps=5, optimizer=optimizer)
    gd = final_best(opt, problem, n_generations, SEEDS, x0=jnp.array(x0))
    random = final_best(l2ljax.RandomSearch(problem, opt.pop_size), problem, n_generations, SEEDS)
    assert np.all(gd < tolerance), gd  # the minimum is 0
    assert np.median(gd) < 0.1 * np.median(random), (gd, random)


@pytest.fixture(scope="module")
def nan_run():
    """StochasticGD keeps a PRNG key in the optax state."""
    tx = l2l_variant("StochasticGD", learning_rate=0.05, stochastic_deviation=0.5, stochastic_decay=0.95, seed=4)
    return nan_region_run(lambda problem: GradientDescent(problem, n_random_steps=4, optimizer=tx), 100,
                          params=GradientDescent.Params(exploration_step_size=0.1))


def test_nan_region_is_never_selected(nan_run):
    _, result = nan_run
    inner = result.state.inner
    # from f(x0) = 32 to near the feasible optimum f(1, 2) = 1; the current score may be -inf (below)
    assert_nan_region_never_selected(result, probed_fraction=0.0, best_fitness_below=2.0,
                                     finite=(inner.theta, inner.opt_state, inner.gradient_norm))
    # Once θ itself steps into the NaN region there is no gradient: the update is skipped.
    current = result.trajectory["diag/current_score"]
    stuck = np.flatnonzero(~np.isfinite(current))
    assert stuck.size and np.all(result.trajectory["population"][stuck[0]:, -1] == np.asarray(inner.theta))


def test_scan_equals_host_loop_and_is_reproducible(nan_run):
    assert_scan_equals_host_loop(*nan_run)


# --------------------------------------------------------------------------- pytrees, vmap, input checks


def test_individuals_with_several_parameter_sets():
    """L2L MultiGD's n_inner_params: an individual of shape (n_inner, d), its sets scored together.

    Each inner set k has its own optimum c_k; the fitness is the mean over the sets of one
    vmapped function, and one finite-difference gradient moves every set to its own c_k.
    """
    targets = jnp.array([[1.0, -1.0], [0.5, 0.5], [-1.0, 0.0]])

    def one_set(x, c):
        return jnp.sum(jnp.square(x - c))

    def fitness(individual, key):  # one vmapped call scores every inner parameter set
        return jnp.mean(jax.vmap(one_set)(individual, targets))

    problem = l2ljax.Optimizee.create(fitness, jnp.zeros(targets.shape), lower=-2.0, upper=2.0)
    opt = GradientDescent(problem, n_random_steps=8, optimizer=l2l_variant("ClassicGD", learning_rate=0.5))
    assert opt.ask(jax.random.key(0), opt.init(jax.random.key(0))).shape == (9, *targets.shape)
    params = opt.Params(exploration_step_size=1e-3)  # one-sided differences: bias O(step) near the optimum
    result = l2ljax.run(opt, problem, jax.random.key(0), 60, params=params, x0=jnp.zeros(targets.shape))
    theta = opt.space.unravel(result.state.inner.theta)
    assert theta.shape == targets.shape
    np.testing.assert_allclose(theta, targets, atol=5e-3)
    assert result.best_fitness[0] < 1e-4  # from f(x0) = 4/3


def test_vmap_over_learning_rates_and_step_sizes():
    """optax.inject_hyperparams + set_hyperparams: one generation for two settings at once."""
    problem = l2ljax.function_optimizee("rosenbrock", 2)
    opt = GradientDescent(problem, n_random_steps=4, optimizer=optax.inject_hyperparams(optax.sgd)(learning_rate=0.1))

    def one_generation(learning_rate, exploration_step_size):
        state = opt.init(jax.random.key(0), opt.Params(exploration_step_size), x0=jnp.array([0.0, 0.5]))
        state = opt.set_hyperparams(state, learning_rate=learning_rate)
        population = opt.ask(jax.random.key(1), state)
        state = opt.tell(state, population, problem.evaluate(jax.random.key(2), population))
        return state.inner.theta

    learning_rates, step_sizes = jnp.array([0.001, 0.002, 0.001]), jnp.array([0.01, 0.01, 0.005])
    batched = jax.jit(jax.vmap(one_generation))
    theta = batched(learning_rates, step_sizes)
    for i in range(3):  # a lane does not depend on the other lanes' settings
        np.testing.assert_array_equal(theta[i], batched(jnp.full(3, learning_rates[i]), jnp.full(3, step_sizes[i]))[0])
    step = np.asarray(theta) - np.array([0.0, 0.5])
    np.testing.assert_allclose(step[1], 2 * step[0], rtol=1e-4)  # same estimate, twice the learning rate
    assert not np.allclose(step[2], step[0], rtol=1e-3)  # another step size, another estimate
    plain = GradientDescent(problem, optimizer=optax.sgd(0.1))
    with pytest.raises(ValueError, match="inject_hyperparams"):
        plain.set_hyperparams(plain.init(jax.random.key(0)), learning_rate=0.1)


def test_bad_input_is_rejected_by_name():
    problem = l2ljax.function_optimizee("rosenbrock", 2)
    for n in (0, -1, 1.5):
        with pytest.raises(ValueError, match="n_random_steps"):
            GradientDescent(problem, n_random_steps=n)
    with pytest.raises(TypeError, match="optax"):
        GradientDescent(problem, optimizer="adam")
    opt = GradientDescent(problem)
    assert opt.pop_size == 6  # n_random_steps + 1
    for value in (0.0, -0.1, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="exploration_step_size"):
            opt.init(jax.random.key(0), opt.Params(exploration_step_size=value))


VARIANT_RATES = {
    "ClassicGD": {"learning_rate": 0.02},
    "StochasticGD": {"learning_rate": 0.02, "stochastic_deviation": 0.1, "stochastic_decay": 0.9},
    "RMSProp": {"learning_rate": 0.02, "momentum_decay": 0.8},
    "Adam": {"learning_rate": 0.05, "first_order_decay": 0.8, "second_order_decay": 0.95},
    "AdaMax": {"learning_rate": 0.05, "first_order_decay": 0.8, "second_order_decay": 0.95},
}


@pytest.mark.parametrize("variant", sorted(VARIANT_RATES))
def test_rates_as_params_give_the_numbers_of_the_fixed_transform(variant):
    problem = l2ljax.function_optimizee("rosenbrock", 2)
    rates = VARIANT_RATES[variant]
    fixed = l2ljax.GradientDescent(problem, n_random_steps=4, optimizer=l2ljax.l2l_variant(variant, **rates))
    by_params = l2ljax.GradientDescent(problem, n_random_steps=4, variant=variant)
    want = l2ljax.run(fixed, problem, jax.random.key(0), 25)
    got = l2ljax.run(by_params, problem, jax.random.key(0), 25, params=by_params.default_params.replace(**rates))
    # bit for bit but for AdaMax, whose bias correction XLA folds differently for a constant b1 (float32 rounding)
    np.testing.assert_allclose(got.trajectory["population"], want.trajectory["population"], rtol=2e-6, atol=1e-7)


def test_learning_rates_vmap_in_one_program():
    problem = l2ljax.function_optimizee("rosenbrock", 2)
    opt = l2ljax.GradientDescent(problem, n_random_steps=4, variant="Adam")
    step = l2ljax.make_step(opt, problem)
    x0 = jnp.asarray([-1.0, 1.5])

    def final_theta(lr):
        state = opt.init(jax.random.key(0), params=opt.default_params.replace(learning_rate=lr), x0=x0)
        state, _ = jax.lax.scan(lambda s, _: step(s, jax.random.key(1)), state, None, length=30)
        return state.inner.theta

    rates = jnp.asarray([0.01, 0.05])
    batched = jax.vmap(final_theta)(rates)
    for i, lr in enumerate(rates):
        np.testing.assert_allclose(batched[i], final_theta(lr), rtol=1e-5, atol=1e-6)
    assert not np.allclose(batched[0], batched[1])


def test_bad_variant_rates_are_named():
    problem = l2ljax.function_optimizee("rosenbrock", 2)
    opt = l2ljax.GradientDescent(problem, variant="RMSProp")
    with pytest.raises(ValueError, match="momentum_decay"):
        opt.init(jax.random.key(0), params=opt.default_params.replace(momentum_decay=1.5))
    with pytest.raises(ValueError, match="not both"):
        l2ljax.GradientDescent(problem, optimizer=optax.sgd(0.1), variant="Adam")
    with pytest.raises(ValueError, match="unknown L2L gradient-descent variant"):
        l2ljax.GradientDescent(problem, variant="Nesterov")
