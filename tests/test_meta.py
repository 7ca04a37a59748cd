"""Sinusoid meta-learning and the BPTT outer loop through l2ljax.run: learning, resume, NaN, errors."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import l2ljax
from l2ljax.optimizees.meta import SequenceRegression, SinusoidTasks
from l2ljax.optimizers.bptt import BPTT, gradient_optimizee, loss_optimizee
from l2ljax.snn import LSNN, LSTM, LSNNConfig


def test_tasks_follow_the_maml_ranges_and_the_zero_predictor_formula():
    tasks = SinusoidTasks(n_points=5)
    batch = tasks.sample(jax.random.key(0), 20000)
    assert float(batch.amplitude.min()) >= 0.1 and float(batch.amplitude.max()) <= 5.0
    assert float(batch.phase.min()) >= 0.0 and float(batch.phase.max()) <= math.pi
    assert float(jnp.abs(batch.xs).max()) <= 5.0
    np.testing.assert_allclose(np.asarray(batch.ys), np.asarray(batch.amplitude[:, None] *
                                                                jnp.sin(batch.xs + batch.phase[:, None])), atol=1e-6)
    empirical = float(jnp.mean(batch.ys.astype(jnp.float32) ** 2))
    assert empirical == pytest.approx(tasks.zero_predictor_mse, rel=0.03)  # 4.25; MC error ~1%


def test_the_network_sees_x_and_the_previous_target_held_for_its_steps():
    meta = SequenceRegression(LSTM(4), SinusoidTasks(n_points=3), steps_per_example=2, input_scale=0.5)
    inputs = np.asarray(meta.encode(jnp.array([1.0, 2.0, 3.0]), jnp.array([10.0, 20.0, 30.0])))
    np.testing.assert_allclose(inputs, 0.5 * np.array([[1, 0], [1, 0], [2, 10], [2, 10], [3, 20], [3, 20]]))
    coded = SequenceRegression(LSTM(4), SinusoidTasks(n_points=3), tuning_curves=5).encode(jnp.zeros(3), jnp.zeros(3))
    assert coded.shape == (3, 10) and float(coded.max()) == pytest.approx(1.0)  # centre at 0 hit exactly


@pytest.mark.parametrize("kwargs,match", [
    ({"n_points": 0}, "n_points"), ({"amplitude": (5.0, 0.1)}, "amplitude"), ({"amplitude": (-1.0, 2.0)}, "amplitude"),
    ({"phase": (0.0, float("nan"))}, "phase"), ({"x_range": (1.0,)}, "x_range")])
def test_bad_task_families_are_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SinusoidTasks(**kwargs)


@pytest.mark.parametrize("kwargs,match", [({"steps_per_example": 0}, "steps_per_example"),
                                          ({"batch_size": -2}, "batch_size"), ({"tuning_curves": 1}, "tuning_curves"),
                                          ({"input_scale": 0.0}, "input_scale")])
def test_bad_meta_configs_are_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SequenceRegression(LSTM(4), SinusoidTasks(), **kwargs)


def test_bptt_meta_trains_an_lstm_to_adapt_within_the_sequence():
    """Tolerance: after 300 Adam steps the end-of-sequence MSE on 500 unseen tasks is below half the
    zero predictor's (measured ~0.2 of it), and the network improves along the sequence."""
    tasks = SinusoidTasks(n_points=12)
    meta = SequenceRegression(LSTM(32), tasks, batch_size=32)
    problem = meta.optimizee(jax.random.key(1), gradient=True)
    opt = BPTT(problem, optax.adam(1e-2))
    params0 = meta.init(jax.random.key(2))
    result = l2ljax.run(opt, problem, jax.random.key(0), 300, x0=params0, summary=True)
    test = tasks.sample(jax.random.key(99), 500)
    before = meta.mse_by_position(params0, test.xs, test.ys)
    after = meta.mse_by_position(opt.current(result.state), test.xs, test.ys)
    zero = float(np.mean(np.asarray(test.ys) ** 2))
    assert before[-1] > 0.8 * zero
    assert after[-1] < 0.5 * zero
    assert after[-1] < 0.6 * after[0]  # it learns from the examples, not only a better prior
    losses = np.asarray(result.trajectory["diag/loss"])
    assert losses[-20:].mean() < 0.6 * losses[:20].mean()


@pytest.mark.slow
def test_bptt_meta_trains_an_lsnn_below_the_issue_target():
    tasks = SinusoidTasks(n_points=20)
    meta = SequenceRegression(LSNN(LSNNConfig(input_gain=6.0)), tasks, steps_per_example=10, tuning_curves=16)
    problem = meta.optimizee(jax.random.key(11), gradient=True)
    opt = BPTT(problem, optax.adam(5e-3))
    result = l2ljax.run(opt, problem, jax.random.key(12), 4000, x0=meta.init(jax.random.key(1)), summary=True)
    test = tasks.sample(jax.random.key(2026), 1000)
    after = meta.mse_by_position(opt.current(result.state), test.xs, test.ys)
    assert after[-1] <= 0.15 * float(np.mean(np.asarray(test.ys[:, -1]) ** 2))


def _quadratic(batch_nan_at: int | None = None):
    target = jnp.arange(4.0)

    def loss(params, key, batch):
        return jnp.sum((params["w"] - target) ** 2) * batch

    def data(generation):
        scale = 1.0 if batch_nan_at is None else jnp.where(generation == batch_nan_at, jnp.nan, 1.0)
        return scale, jnp.zeros(1)

    return gradient_optimizee(loss, {"w": jnp.zeros(4)}, data=data)


def test_bptt_is_optax_through_run_and_resumes_exactly(tmp_path):
    problem = _quadratic()
    opt = BPTT(problem, optax.sgd(0.1, momentum=0.5))
    x0 = {"w": jnp.zeros(4)}
    straight = l2ljax.run(opt, problem, jax.random.key(0), 30, x0=x0)
    # independent reference: optax by hand
    tx, w = optax.sgd(0.1, momentum=0.5), jnp.zeros(4)
    s = tx.init(w)
    for _ in range(30):
        u, s = tx.update(2 * (w - jnp.arange(4.0)), s, w)
        w = w + u
    np.testing.assert_allclose(np.asarray(opt.current(straight.state)["w"]), np.asarray(w), rtol=1e-6)
    l2ljax.run(opt, problem, jax.random.key(0), 12, x0=x0, directory=tmp_path, chunk_size=4)
    resumed = l2ljax.run(opt, problem, jax.random.key(0), 30, x0=x0, directory=tmp_path, resume=True, chunk_size=4)
    np.testing.assert_array_equal(np.asarray(resumed.state.inner.theta), np.asarray(straight.state.inner.theta))
    assert resumed.generations == 30


def test_bptt_stop_criterion_and_nan_steps_are_skipped():
    problem = _quadratic(batch_nan_at=3)
    opt = BPTT(problem, optax.sgd(0.1))
    result = l2ljax.run(opt, problem, jax.random.key(0), 200, x0={"w": jnp.zeros(4)}, stop_criterion=-1e-4)
    assert result.stopped_early and result.generations < 200
    assert int(result.state.inner.n_skipped) == 1
    assert np.all(np.isfinite(np.asarray(result.state.inner.theta)))
    assert result.best_score >= -1e-4


def test_bptt_needs_a_gradient_optimizee():
    plain = loss_optimizee(lambda p, k, b: jnp.sum(p ** 2), jnp.zeros(3))
    with pytest.raises(TypeError, match="gradient_optimizee"):
        BPTT(plain, optax.adam(1e-3))
    with pytest.raises(TypeError, match="optax"):
        BPTT(_quadratic(), "adam")


def test_the_same_problem_runs_under_a_population_optimizer():
    """loss_optimizee(gradient=False) is the BPTT problem for ES: both reduce the same loss."""
    tasks = SinusoidTasks(n_points=6)
    meta = SequenceRegression(LSTM(4), tasks, batch_size=8)
    problem = meta.optimizee(jax.random.key(1))
    opt = l2ljax.EvolutionStrategies(problem, pop_size=16)
    params = opt.default_params.replace(learning_rate=0.02, noise_std=0.05)
    result = l2ljax.run(opt, problem, jax.random.key(0), 40, x0=meta.init(jax.random.key(2)), params=params)
    fitness = np.asarray(result.trajectory["fitness"])[:, -1, 0]  # the current θ: ES's last row
    assert fitness[-10:].mean() < 0.9 * fitness[:10].mean()
