"""The protocol's edges: spaces, optimizees, evaluations and the errors for bad input."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import l2ljax
from l2ljax.core import Optimizee, Space, make_evaluation


def sphere(x, key):
    return jnp.sum(jnp.square(x["a"])) + jnp.sum(jnp.square(x["b"]))


TEMPLATE = {"a": jnp.zeros(3), "b": jnp.zeros((2, 2))}


def test_space_round_trip_of_pytree_population():
    space = Space.from_template(TEMPLATE, lower=-1.0, upper=2.0)
    assert space.dim == 7
    flat = jax.random.uniform(jax.random.key(0), (5, 7))
    pop = space.to_pytree(flat)
    assert pop["a"].shape == (5, 3) and pop["b"].shape == (5, 2, 2)
    np.testing.assert_array_equal(space.to_flat(pop), flat)


def test_space_bounds_from_pytrees_and_clip():
    lower = {"a": jnp.array([-1.0, -2.0, -3.0]), "b": 0.0}
    space = Space.from_template(TEMPLATE, lower=lower, upper=5.0)
    np.testing.assert_array_equal(space.lower, [-1, -2, -3, 0, 0, 0, 0])
    clipped = space.clip(jnp.full((1, 7), -10.0))
    np.testing.assert_array_equal(clipped[0], [-1, -2, -3, 0, 0, 0, 0])
    samples = jax.vmap(space.sample)(jax.random.split(jax.random.key(1), 200))
    assert np.all(samples >= space.lower - 1e-6) and np.all(samples <= space.upper + 1e-6)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"lower": 1.0, "upper": 0.0}, "lower > upper"),
        ({"lower": {"a": jnp.zeros(3)}}, "does not match the individual"),
        ({"lower": {"a": jnp.zeros(4), "b": 0.0}}, "does not match leaf"),
        ({"lower": float("nan")}, "NaN"),
    ],
)
def test_bad_bounds_raise(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Space.from_template(TEMPLATE, **kwargs)


def test_integer_template_is_rejected():
    with pytest.raises(TypeError, match="floating point"):
        Space.from_template(jnp.zeros(3, jnp.int32))


@pytest.mark.parametrize("weights, message", [((), "empty"), ((0.0,), "nonzero"), ((float("inf"),), "finite")])
def test_bad_fitness_weights_raise(weights, message):
    with pytest.raises(ValueError, match=message):
        Optimizee.create(sphere, TEMPLATE, weights=weights)


def test_negative_noise_is_rejected():
    with pytest.raises(ValueError, match="noise_std"):
        Optimizee.create(sphere, TEMPLATE, noise_std=-0.1)


def test_evaluation_weights_and_non_finite_rows():
    fitness = jnp.array([[1.0, 2.0], [jnp.nan, 0.0], [3.0, jnp.inf], [0.5, 0.5]])
    ev = make_evaluation(fitness, (1.0, -2.0))
    score = np.asarray(ev.score)
    np.testing.assert_allclose(score[[0, 3]], [1 - 4, 0.5 - 1])
    assert np.all(np.isneginf(score[[1, 2]]))
    assert np.all(np.isneginf(np.asarray(ev.weighted)[1]))


def test_evaluation_shape_mismatch():
    with pytest.raises(ValueError, match="does not match 2 fitness weights"):
        make_evaluation(jnp.zeros((4, 3)), (1.0, 1.0))


def test_optimizee_vmaps_over_population_and_checks_objectives():
    problem = Optimizee.create(sphere, TEMPLATE, lower=-1.0, upper=1.0)
    pop = problem.space.to_pytree(jnp.ones((4, 7)))
    ev = problem.evaluate(jax.random.key(0), pop)
    np.testing.assert_allclose(ev.fitness[:, 0], 7.0)
    np.testing.assert_allclose(ev.score, -7.0)
    two = Optimizee.create(lambda x, k: jnp.stack([sphere(x, k), 1.0]), TEMPLATE, weights=(-1.0,))
    with pytest.raises(ValueError, match="returned 2 objectives"):
        two.evaluate(jax.random.key(0), pop)


def test_mismatched_population_pytree_is_rejected():
    problem = Optimizee.create(sphere, TEMPLATE)
    with pytest.raises(ValueError, match="flattens to shape"):
        problem.evaluate(jax.random.key(0), {"a": jnp.zeros((4, 3)), "b": jnp.zeros((4, 3))})


def test_noise_is_additive_and_reproducible():
    problem = Optimizee.create(sphere, TEMPLATE, noise_std=0.5)
    pop = problem.space.to_pytree(jnp.zeros((2000, 7)))
    ev = problem.evaluate(jax.random.key(3), pop)
    assert abs(float(jnp.std(ev.fitness)) - 0.5) < 0.03
    np.testing.assert_array_equal(ev.fitness, problem.evaluate(jax.random.key(3), pop).fitness)


def test_keys_must_be_jax_keys():
    opt = l2ljax.RandomSearch(Optimizee.create(sphere, TEMPLATE, lower=-1.0, upper=1.0), pop_size=4)
    with pytest.raises(TypeError, match="jax.random.key"):
        opt.init(0)
    opt.init(jax.random.PRNGKey(0))  # legacy uint32 keys are accepted


@pytest.mark.parametrize("pop_size", [0, -3, 2.5, True])
def test_non_positive_population_sizes_raise(pop_size):
    problem = l2ljax.function_optimizee("rastrigin", 2)
    with pytest.raises(ValueError, match="pop_size must be a positive integer"):
        l2ljax.CrossEntropy(problem, pop_size=pop_size)


@pytest.mark.parametrize(
    "params, message",
    [
        ({"rho": float("nan")}, "not finite"),
        ({"rho": 0.0}, "rho must lie in"),
        ({"smoothing": 1.0}, "smoothing must lie in"),
        ({"temperature": float("inf")}, "not finite"),
        ({"rho": 0.01}, "rho \\* pop_size must be at least 1"),
    ],
)
def test_bad_cross_entropy_params_raise(params, message):
    opt = l2ljax.CrossEntropy(l2ljax.function_optimizee("rastrigin", 2), pop_size=20)
    with pytest.raises(ValueError, match=message):
        opt.init(jax.random.key(0), opt.default_params.replace(**params))


def test_bad_es_config_raises():
    problem = l2ljax.function_optimizee("rastrigin", 2)
    with pytest.raises(ValueError, match="even pop_size"):
        l2ljax.EvolutionStrategies(problem, pop_size=7)
    opt = l2ljax.EvolutionStrategies(problem, pop_size=8)
    with pytest.raises(ValueError, match="noise_std must lie in"):
        opt.init(jax.random.key(0), opt.default_params.replace(noise_std=-1.0))


def test_unknown_function_name():
    with pytest.raises(ValueError, match="rastrigin"):
        l2ljax.function_optimizee("rastrign", 2)


def test_search_needs_bounds():
    unbounded = Optimizee.create(sphere, TEMPLATE)
    with pytest.raises(ValueError, match="finite lower and upper bounds"):
        l2ljax.RandomSearch(unbounded, pop_size=4)
    with pytest.raises(ValueError, match="n_steps"):
        l2ljax.GridSearch(l2ljax.function_optimizee("rastrigin", 2), n_steps=0)


def test_tell_checks_shapes():
    problem = l2ljax.function_optimizee("rastrigin", 2)
    opt = l2ljax.CrossEntropy(problem, pop_size=10)
    state = opt.init(jax.random.key(0))
    pop = opt.ask_flat(jax.random.key(1), state)
    ev = problem.evaluate_flat(jax.random.key(2), pop)
    with pytest.raises(ValueError, match="does not match"):
        opt.tell_flat(state, pop[:, :1], ev)
    with pytest.raises(ValueError, match="do not match the population"):
        opt.tell_flat(state, pop[:5], ev)
    with pytest.raises(ValueError, match="x0 does not match"):
        opt.init(jax.random.key(0), x0=jnp.zeros(3))


def test_finite_fitness_that_overflows_once_weighted_is_invalid():
    ev = make_evaluation(jnp.array([[1e38, -1e38], [1.0, 1.0]]), (10.0, 10.0))
    assert np.isneginf(np.asarray(ev.score)[0]) and np.asarray(ev.score)[1] == 20.0
    assert np.isneginf(np.asarray(make_evaluation(jnp.array([1e38, 1.0]), (10.0,)).score)[0])


def test_x0_must_match_the_individual_structure():
    opt = l2ljax.EvolutionStrategies(Optimizee.create(sphere, TEMPLATE), pop_size=4)
    with pytest.raises(ValueError, match="does not match the individuals' structure"):
        opt.init(jax.random.key(0), x0={"a": jnp.zeros((2, 2)), "b": jnp.zeros(3)})
    with pytest.raises(ValueError, match="NaN or inf"):
        opt.init(jax.random.key(0), x0={"a": jnp.full(3, jnp.nan), "b": jnp.zeros((2, 2))})
