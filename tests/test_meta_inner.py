"""Whole inner trainings and nested EnKF runs as optimizees: equality with loops, masks, NaN, errors."""

import os
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import l2ljax
from l2ljax import data, kalman
from l2ljax.models import Mlp
from l2ljax.optimizees.inner import Hyperparameter, InnerTraining, NestedEnKF, masked_eki_update

MNIST_DIR = Path(os.environ.get("L2LJAX_MNIST_DIR", Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"))
needs_mnist = pytest.mark.skipif(not MNIST_DIR.is_dir(), reason=f"MNIST not found at {MNIST_DIR}")


@pytest.fixture(scope="module")
def mnist_small():
    m = data.load_mnist(MNIST_DIR)
    x = data.normalize(m.train_images[:3000]).reshape(3000, -1)
    y = m.train_labels[:3000].astype(np.int32)
    return (x[:2500], y[:2500]), (x[2500:], y[2500:])


def _sgd(h):
    return optax.sgd(h["learning_rate"], momentum=h["momentum"])


def _hpo(train, val, n_steps=60, lr_upper=3.0):
    return InnerTraining(Mlp(hidden=(16,), use_bias=True), _sgd,
                         {"learning_rate": Hyperparameter(1e-3, lr_upper, log=True),
                          "momentum": Hyperparameter(0.0, 0.95), "init_scale": Hyperparameter(0.1, 3.0, log=True)},
                         train=train, validation=val, n_steps=n_steps, batch_size=32)


@needs_mnist
def test_inner_training_equals_a_python_loop_of_optax_steps(mnist_small):
    train, val = mnist_small
    hpo = _hpo(train, val, n_steps=15)
    ind = hpo.individual({"learning_rate": 0.3, "momentum": 0.5, "init_scale": 0.5})
    params, _ = jax.jit(hpo.fit)(ind, jax.random.key(4))
    # the same run written out step by step
    k_init, k_batches = jax.random.split(jax.random.key(4))
    x, y = jnp.asarray(train[0]), jnp.asarray(train[1])
    p = jax.tree_util.tree_map(lambda a: a * 0.5, hpo.model.init(k_init, x[:1]))
    tx = optax.sgd(0.3, momentum=0.5)
    s = tx.init(p)
    grad = jax.jit(jax.grad(lambda q, xb, yb: jnp.mean(optax.softmax_cross_entropy_with_integer_labels(
        hpo.model.apply(q, xb), yb))))
    for k in jax.random.split(k_batches, 15):
        idx = jax.random.randint(k, (32,), 0, x.shape[0])
        g = grad(p, x[idx], y[idx])
        u, s = tx.update(g, s, p)
        p = optax.apply_updates(p, u)
    for a, b in zip(jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(p), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-4, atol=2e-6)


@needs_mnist
def test_a_vmapped_generation_equals_one_training_per_individual_and_nan_is_never_best(mnist_small):
    train, val = mnist_small
    hpo = _hpo(train, val, n_steps=40, lr_upper=1e38)
    problem = hpo.optimizee(jax.random.key(0))
    settings = [(0.3, 0.9, 1.0), (0.01, 0.0, 1.0), (1e37, 0.95, 3.0)]  # the last one overflows
    pop = jax.tree_util.tree_map(lambda *a: jnp.stack(a), *[
        hpo.individual({"learning_rate": a, "momentum": b, "init_scale": c}) for a, b, c in settings])
    evaluation = jax.jit(lambda p: problem.evaluate(jax.random.key(1), p, 0))(pop)
    one = jax.jit(hpo.fitness)
    for i in range(2):
        ind = jax.tree_util.tree_map(lambda a, i=i: a[i], pop)
        assert float(evaluation.fitness[i, 0]) == pytest.approx(float(one(ind, jax.random.fold_in(
            jax.random.key(0), 0))), abs=2.5e-3)  # vmapped vs single matmuls round apart: <= 1 of 500 images
    assert float(evaluation.fitness[0, 0]) > 0.7  # a good setting learns in 40 steps
    assert np.isnan(float(evaluation.fitness[2, 0])) and float(evaluation.score[2]) == -np.inf
    opt = l2ljax.CrossEntropy(problem, pop_size=3)
    state = opt.tell(opt.init(jax.random.key(0), opt.default_params.replace(rho=0.5)), pop, evaluation)
    assert hpo.values(opt.best(state))["learning_rate"] == pytest.approx(0.3, rel=1e-5)


@needs_mnist
def test_an_outer_cma_es_finds_a_better_learning_rate_than_a_tiny_one(mnist_small):
    """Tolerance: after 3 generations of pop 8 (40 SGD steps each), the best setting beats lr=1e-3
    (no momentum, scale 1) on validation by >= 20 points (measured ~60)."""
    train, val = mnist_small
    hpo = _hpo(train, val, n_steps=40)
    problem = hpo.optimizee(jax.random.key(0))
    result = l2ljax.run(l2ljax.CMAES(problem, pop_size=8), problem, jax.random.key(3), 3)
    tiny = hpo.fitness(hpo.individual({"learning_rate": 1e-3, "momentum": 0.0, "init_scale": 1.0}), jax.random.key(5))
    tuned = hpo.fitness(result.best, jax.random.key(5))
    assert float(tuned) >= float(tiny) + 0.2


def test_bad_hyperparameters_are_named():
    with pytest.raises(ValueError, match="lower < upper"):
        Hyperparameter(1.0, 1.0)
    with pytest.raises(ValueError, match="log-scaled"):
        Hyperparameter(0.0, 1.0, log=True)
    train = (np.zeros((10, 4), np.float32), np.zeros(10, np.int32))
    hpo = InnerTraining(Mlp(hidden=(2,)), _sgd, {"learning_rate": Hyperparameter(1e-3, 1.0, log=True),
                                                 "momentum": Hyperparameter(0.0, 0.9)}, train, train, n_steps=2,
                        batch_size=4)
    with pytest.raises(ValueError, match="outside the hyperparameter's bounds"):
        hpo.individual({"learning_rate": 5.0, "momentum": 0.0})
    with pytest.raises(ValueError, match="expected values for"):
        hpo.individual({"learning_rate": 0.1})
    with pytest.raises(ValueError, match="batch_size"):
        InnerTraining(Mlp(), _sgd, {"momentum": Hyperparameter(0.0, 0.9)}, train, train, batch_size=11)
    with pytest.raises(ValueError, match="no hyperparameters"):
        InnerTraining(Mlp(), _sgd, {}, train, train, batch_size=2)
    with pytest.raises(TypeError, match="labels must be integers"):
        InnerTraining(Mlp(), _sgd, {"momentum": Hyperparameter(0.0, 0.9)}, train, (train[0], train[1] * 1.0),
                      batch_size=2)


@pytest.mark.parametrize("kwargs,match", [({"ensemble": (30, 9)}, "ensemble range"),
                                          ({"ensemble": (1, 5)}, "ensemble sizes must be >= 2"),
                                          ({"repetitions": (0, 3)}, "repetitions must be >= 1"),
                                          ({"repetitions": (1.5, 3)}, "repetitions range"),
                                          ({"gamma": (0.0, 1.0)}, "log-scaled"),
                                          ({"n_batches": 0}, "n_batches")])
def test_bad_nested_ranges_are_named(kwargs, match):
    train = (np.zeros((10, 4), np.float32), np.zeros(10, np.int32))
    with pytest.raises(ValueError, match=match):
        NestedEnKF(Mlp(hidden=(2,)), train, train, **kwargs)


@needs_mnist
def test_a_masked_ensemble_is_the_small_ensemble(mnist_small):
    """J = 9 valid members of 30 (and 1 repetition of 3) give the run of a 9-member, 1-repetition EnKF."""
    train, val = mnist_small
    common = dict(n_batches=4, batch_size=16)
    big = NestedEnKF(Mlp(hidden=(8,)), train, val, **common)
    small = NestedEnKF(Mlp(hidden=(8,)), train, val, ensemble=(9, 9), repetitions=(1, 1), **common)
    key = jax.random.key(7)
    mean_big, valid = jax.jit(big.fit)(big.individual(0.05, 9, 1), key)
    mean_small, _ = jax.jit(small.fit)(small.individual(0.05, 9, 1), key)
    assert int(valid.sum()) == 9
    np.testing.assert_allclose(np.asarray(mean_big), np.asarray(mean_small), rtol=1e-4, atol=1e-5)
    gamma, size, reps = big.settings({"gamma": jnp.float32(0.0), "ensemble_size": jnp.float32(40.0),
                                      "repetitions": jnp.float32(2.4)})
    assert (float(gamma), int(size), int(reps)) == (pytest.approx(1.0), 30, 2)


@needs_mnist
def test_nested_population_runs_in_one_vmapped_program_and_learns(mnist_small):
    """Every setting of a generation in one program; the inner EnKF moves accuracy above chance (10 %)."""
    train, val = mnist_small
    nested = NestedEnKF(Mlp(hidden=(8,)), train, val, n_batches=10, batch_size=16)
    problem = nested.optimizee(jax.random.key(0))
    settings = [(0.01, 30, 1), (0.1, 9, 3), (1.0, 20, 2)]
    pop = jax.tree_util.tree_map(lambda *a: jnp.stack(a), *[nested.individual(*s) for s in settings])
    evaluation = jax.jit(lambda p: problem.evaluate(jax.random.key(1), p, 0))(pop)
    one = jax.jit(nested.fitness)
    for i in range(3):
        ind = jax.tree_util.tree_map(lambda a, i=i: a[i], pop)
        assert float(evaluation.fitness[i, 0]) == pytest.approx(
            float(one(ind, jax.random.fold_in(jax.random.key(0), 0))), abs=2.5e-3)  # <= 1 of 500 images
    assert float(evaluation.fitness[:, 0].max()) > 0.15
    chunked = nested.optimizee(jax.random.key(0), chunk=2)  # 2 at a time, in the same program
    np.testing.assert_allclose(np.asarray(jax.jit(lambda p: chunked.evaluate(jax.random.key(1), p, 0))(pop).fitness),
                               np.asarray(evaluation.fitness), atol=2.5e-3)
    with pytest.raises(ValueError, match="chunk"):
        nested.optimizee(jax.random.key(0), chunk=0)


def test_the_masked_update_is_the_library_update_of_the_valid_members():
    k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
    U = jax.random.normal(k1, (12, 7))
    G = jnp.tanh(U @ jax.random.normal(k2, (7, 20)))
    y = jax.random.normal(k3, (20,))
    valid = jnp.arange(12) < 8
    ours = masked_eki_update(U, G, y, jnp.float32(0.05), valid)
    ref = kalman.eki_update(jax.random.key(1), U[:8], G[:8], y, 0.05)
    np.testing.assert_allclose(np.asarray(ours[:8]), np.asarray(ref), rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(np.asarray(ours[8:]), np.asarray(U[8:]))  # padding is carried, not moved


@needs_mnist
def test_a_population_of_one_nested_run_is_the_single_run(mnist_small):
    """One individual is scored without a batch-one vmap (jaxlib 0.10.2 CPU miscompiles it to NaN)."""
    train, val = mnist_small
    nested = NestedEnKF(Mlp(hidden=(8,)), train, val, n_batches=3, batch_size=16)
    ind = nested.individual(0.01, 30, 2)
    pop = jax.tree_util.tree_map(lambda a: a[None], ind)
    fitness = jax.jit(lambda p: nested.optimizee(jax.random.key(0)).evaluate(jax.random.key(1), p, 0).fitness)(pop)
    single = jax.jit(nested.fitness)(ind, jax.random.fold_in(jax.random.key(0), 0))
    assert np.isfinite(float(fitness[0, 0])) and float(fitness[0, 0]) == pytest.approx(float(single), abs=2.5e-3)


@pytest.mark.slow  # compiles a 3-branch program and the masked one: ~1.5 min on 2 loaded cores
@needs_mnist
def test_bucketed_runs_one_at_a_time_give_the_fitness_of_the_masked_loop(mnist_small):
    """chunk=1 with ensemble buckets (each run holds the smallest bucket >= J and exactly its
    repetitions) scores every setting as the full 30-member masked run does."""
    train, val = mnist_small
    common = dict(n_batches=4, batch_size=16, n_seeds=2)
    masked = NestedEnKF(Mlp(hidden=(8,)), train, val, **common)
    bucketed = NestedEnKF(Mlp(hidden=(8,)), train, val, ensemble_buckets=(12, 20), **common)
    assert bucketed.ensemble_buckets == (12, 20, 30)
    settings = [(0.05, 9, 1), (0.2, 13, 3), (0.01, 30, 2)]
    pop = jax.tree_util.tree_map(lambda *a: jnp.stack(a), *[masked.individual(*s) for s in settings])
    fitness = jax.jit(lambda p: bucketed.optimizee(jax.random.key(0), chunk=1).evaluate(
        jax.random.key(1), p, 0).fitness[:, 0])(pop)
    one = jax.jit(masked.fitness)
    loop = [float(one(jax.tree_util.tree_map(lambda a, i=i: a[i], pop), jax.random.fold_in(jax.random.key(0), 0)))
            for i in range(len(settings))]
    np.testing.assert_allclose(np.asarray(fitness), loop, atol=2.5e-3)  # <= 1 of 500 images
    with pytest.raises(ValueError, match="ensemble_buckets"):
        NestedEnKF(Mlp(hidden=(8,)), train, val, ensemble_buckets=(20, 12))
