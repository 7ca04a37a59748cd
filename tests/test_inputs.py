"""Constructor and input checks: values that cannot work are refused by name, before a run starts."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import l2ljax
from l2ljax import parallel

PROBLEM = l2ljax.function_optimizee("rastrigin", 2)


@pytest.mark.parametrize(("lower", "upper"), [(np.inf, np.inf), (-np.inf, -np.inf), (1.0, 0.0)])
def test_bounds_that_admit_no_value_are_refused(lower, upper):
    with pytest.raises(ValueError, match="admit no value|lower > upper"):
        l2ljax.Optimizee.create(lambda x, key: jnp.sum(x), jnp.zeros(2), lower=lower, upper=upper)


def test_unbounded_coordinates_stay_allowed():
    problem = l2ljax.Optimizee.create(lambda x, key: jnp.sum(x ** 2), jnp.zeros(2), lower=-np.inf, upper=np.inf)
    assert not problem.space.bounded


def test_complex_fitness_is_refused():
    problem = l2ljax.Optimizee.create(lambda x, key: jnp.sum(x) + 1j, jnp.zeros(2), lower=-1.0, upper=1.0)
    with pytest.raises(TypeError, match="fitness is complex"):
        problem.evaluate(jax.random.key(0), jnp.zeros((3, 2)))


@pytest.mark.parametrize("make", [
    lambda: l2ljax.CrossEntropy(PROBLEM, pop_size=8, init_std=np.inf),
    lambda: l2ljax.CrossEntropy(PROBLEM, pop_size=8, init_std=-1.0),
    lambda: l2ljax.EnsembleKalmanFilter(PROBLEM, pop_size=8, init_std=np.inf),
], ids=["CE inf", "CE negative", "EnKF inf"])
def test_init_std_must_be_finite_and_positive(make):
    with pytest.raises(ValueError, match="init_std must be finite and positive"):
        make()


def test_a_sigma_whose_square_overflows_is_refused():
    with pytest.raises(ValueError, match="covariance overflows float32"):
        l2ljax.CMAES(PROBLEM, sigma=1e30)
    l2ljax.CMAES(PROBLEM, sigma=1e3)  # large but representable


def test_non_finite_l2l_variant_rates_are_refused():
    with pytest.raises(ValueError, match="learning_rate must be finite"):
        l2ljax.l2l_variant("Adam", learning_rate=np.inf, first_order_decay=0.9, second_order_decay=0.999)


def test_parallel_by_name_and_bad_schemes():
    assert parallel.coordinator("none").n_shards == 1
    with pytest.raises(ValueError, match="valid names are auto, none, devices, mpi"):
        parallel.coordinator("mpi4jax")
    with pytest.raises(TypeError, match="parallel must be None"):
        l2ljax.run(l2ljax.RandomSearch(PROBLEM, pop_size=4), PROBLEM, jax.random.key(0), 2, parallel=3)


def test_numpy_integers_are_accepted_where_ints_are_expected():
    opt = l2ljax.CrossEntropy(PROBLEM, pop_size=np.int64(8))
    assert l2ljax.run(opt, PROBLEM, jax.random.key(0), np.int64(2)).generations == 2
