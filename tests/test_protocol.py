"""The optimizer protocol, checked alike for every optimizer case of ``optimizer_cases.CASES``.

jit of init/ask/tell; the compiled scan == the host loop; resume == uninterrupted, bit for bit,
after interruptions at several generations; vmap over hyperparameters; non-finite rows never
selected; a population that is all non-finite for several generations survived; dtypes kept
(float32 by default, float64 from a float64 template under ``jax_enable_x64``).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import assert_same_trajectory, assert_states_equal, plain
from optimizer_cases import CASES, kalman_problem

import l2ljax
from l2ljax.core import Optimizee, make_evaluation

NAMES = sorted(CASES)
GENERATIONS = 5


def fail_region_problem(kind: str, dtype=jnp.float32) -> Optimizee:
    """A problem whose fitness is -inf (for a minimised problem: infinitely good) where x₀ > 1 and
    NaN where x₁ > 1.5; elsewhere a sphere around 2 (Kalman kind: a linear inverse problem)."""
    if kind == "kalman":
        base = kalman_problem("linear", dtype)

        def fn(u, key, inputs):
            fitness, out = base.fn(u, key, inputs)
            fitness = jnp.where(u[0] > 1.0, jnp.inf, jnp.where(u[1] > 1.5, jnp.nan, fitness))
            return fitness, jnp.where(u[1] > 1.5, jnp.nan, out)

        return Optimizee.create(fn, jnp.zeros(4, dtype), weights=(1.0,), data=base.data,
                                sample=lambda k: 2.0 * jax.random.normal(k, (4,), dtype))

    def sphere(x, key):
        return jnp.where(x[0] > 1.0, -jnp.inf, jnp.where(x[1] > 1.5, jnp.nan, jnp.sum(jnp.square(x - 2.0))))

    return Optimizee.create(sphere, jnp.zeros(3, dtype), lower=-5.0, upper=5.0)


def setup(name, dtype=jnp.float32):
    make, kind = CASES[name]
    problem = fail_region_problem(kind, dtype)
    return make(problem), problem


def assert_not_poisoned(tree):
    """No NaN and no +inf in any float leaf; -inf is the "no finite score yet" of score leaves."""
    for path, leaf in jax.tree_util.tree_flatten_with_path(plain(tree))[0]:
        if jnp.issubdtype(leaf.dtype, jnp.floating):
            assert not np.any(np.isnan(leaf)) and not np.any(leaf == np.inf), jax.tree_util.keystr(path)


def float_leaves(tree):
    return [leaf for leaf in jax.tree_util.tree_leaves(plain(tree)) if jnp.issubdtype(leaf.dtype, jnp.floating)]


@pytest.mark.parametrize("name", NAMES)
def test_init_ask_tell_jit_and_keep_non_finite_rows_out(name):
    opt, problem = setup(name)
    state = jax.jit(opt.init)(jax.random.key(0))
    ask, tell = jax.jit(opt.ask), jax.jit(opt.tell)
    eager = opt.init(jax.random.key(0))
    for leaf, eager_leaf in zip(float_leaves(state), float_leaves(eager), strict=True):
        np.testing.assert_allclose(leaf, eager_leaf, rtol=1e-6)
    for generation in range(GENERATIONS):
        population = ask(jax.random.key(2 * generation + 1), state)
        flat = problem.space.to_flat(population)
        assert flat.shape == (opt.pop_size, problem.space.dim) and flat.dtype == jnp.float32
        state = tell(state, population, problem.evaluate(jax.random.key(2 * generation + 2), population))
        assert_not_poisoned(state.inner)  # failed rows never enter the state
        assert np.all(np.isfinite(flat))
        assert int(state.generation) == generation + 1
        if np.isfinite(state.best_score):
            assert state.best_x[0] <= 1.0 and state.best_x[1] <= 1.5  # never a failed row
    assert all(leaf.dtype == jnp.float32 for leaf in float_leaves(state))


@pytest.mark.parametrize("name", NAMES)
def test_scan_equals_host_loop_and_resume_equals_uninterrupted(name, tmp_path):
    opt, problem = setup(name)
    whole = l2ljax.run(opt, problem, jax.random.key(3), GENERATIONS)
    host = l2ljax.run(opt, problem, jax.random.key(3), GENERATIONS, chunk_size=1)
    assert_same_trajectory(whole.trajectory, host.trajectory)
    assert_states_equal(whole.state, host.state)
    for stop in (1, 3):
        directory = tmp_path / f"stopped-at-{stop}"
        l2ljax.run(opt, problem, jax.random.key(3), stop, directory=directory)
        resumed = l2ljax.run(opt, problem, jax.random.key(3), GENERATIONS, directory=directory, resume=True)
        assert_same_trajectory(whole.trajectory, resumed.trajectory)
        assert_states_equal(whole.state, resumed.state)


def scaled(params, factor):
    return jax.tree_util.tree_map(
        lambda x: x * factor if jnp.issubdtype(jnp.asarray(x).dtype, jnp.floating) else x, params)


@pytest.mark.parametrize("name", NAMES)
def test_vmap_over_params_is_run_setting_by_setting(name):
    opt, problem = setup(name)
    settings = [opt.default_params, scaled(opt.default_params, 0.9)]
    if not jax.tree_util.tree_leaves(settings[0]):
        pytest.skip(f"{name} has no hyperparameters")
    batch = jax.tree_util.tree_map(lambda *x: jnp.stack([jnp.asarray(v) for v in x]), *settings)

    def generations(params):
        state = opt.init(jax.random.key(0), params)
        for g in range(3):
            population = opt.ask_flat(jax.random.fold_in(jax.random.key(1), g), state)
            state = opt.tell_flat(state, population, problem.evaluate_flat(jax.random.key(2), population))
        return state

    batched = jax.jit(jax.vmap(generations))(batch)
    for i, params in enumerate(settings):
        single = jax.jit(generations)(params)
        for a, b in zip(float_leaves(batched), float_leaves(single), strict=True):
            # float32 rounding differs between the batched and the single program; relative to the
            # leaf's scale (entries near zero of an O(1) ensemble carry its absolute error). The
            # two settings differ by 10 %, so a mixed-up setting fails by far.
            scale = float(np.max(np.abs(np.asarray(b)), initial=0.0, where=np.isfinite(np.asarray(b))))
            np.testing.assert_allclose(a[i], b, rtol=2e-4, atol=max(1e-5, 2e-5 * scale))


@pytest.mark.parametrize("name", NAMES)
def test_survives_a_population_that_is_all_non_finite(name):
    opt, _ = setup(name)
    problem = kalman_problem("linear") if CASES[name][1] == "kalman" else Optimizee.create(
        lambda x, key: jnp.sum(jnp.square(x - 2.0)), jnp.zeros(3), lower=-5.0, upper=5.0)  # finite everywhere
    state = opt.init(jax.random.key(0))
    ask, tell = jax.jit(opt.ask_flat), jax.jit(opt.tell_flat)
    for generation in range(6):
        population = ask(jax.random.key(generation), state)
        evaluation = problem.evaluate_flat(jax.random.key(100 + generation), population)
        if generation < 3:  # every row fails: NaN fitness (and NaN outputs for Kalman methods)
            outputs = None if evaluation.outputs is None else jnp.full_like(evaluation.outputs, jnp.nan)
            evaluation = make_evaluation(jnp.full_like(evaluation.fitness, jnp.nan), problem.weights, outputs,
                                         evaluation.targets)
        state = tell(state, population, evaluation)
        assert_not_poisoned(state.inner)
        assert (generation < 3) == (not np.isfinite(state.best_score))
    assert np.all(np.isfinite(ask(jax.random.key(9), state)))


@pytest.mark.parametrize("name", NAMES)
def test_float64_template_under_x64_gives_float64_state_and_results(name):
    with jax.enable_x64(True):
        opt, problem = setup(name, jnp.float64)
        result = l2ljax.run(opt, problem, jax.random.key(0), 3)
        leaves = float_leaves(result.state)
        assert leaves and all(leaf.dtype == jnp.float64 for leaf in leaves), \
            [str(leaf.dtype) for leaf in leaves]
        assert result.trajectory["population"].dtype == np.float64
        assert result.trajectory["best_score"].dtype == np.float64
