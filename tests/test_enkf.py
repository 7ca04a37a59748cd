"""The EnKF optimizer through the l2ljax protocol: inverse problems, failures, and MNIST learning."""

import os
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import l2ljax
from l2ljax.core import Optimizee
from l2ljax.data import load_mnist
from l2ljax.optimizees.mnist import batch_indices, build_model, dataset_accuracy, mnist_optimizee

MNIST_DIR = Path(os.environ.get("L2LJAX_MNIST_DIR", Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"))


def linear_problem(P=8, M=24, noise=0.0, fail_region=False, seed=0):
    """G(u) = A u with observations y = A u* (+ noise): EKI must find the least-squares solution."""
    rng = np.random.default_rng(seed)
    A = rng.normal(size=(M, P)).astype(np.float32)
    u_true = rng.normal(size=P).astype(np.float32)
    y = (A @ u_true + noise * rng.normal(size=M)).astype(np.float32)
    A_j, y_j = jnp.asarray(A), jnp.asarray(y)

    def fn(u, key, inputs):
        out = A_j @ u
        if fail_region:
            out = jnp.where(u[0] > 2.5, jnp.nan, out)
        return -jnp.mean(jnp.square(out - y_j)), out

    problem = Optimizee.create(fn, jnp.zeros(P), weights=(1.0,), data=lambda g: (jnp.zeros(()), y_j),
                               sample=lambda k: 2.0 * jax.random.normal(k, (P,)))
    return problem, A, y


def test_converges_to_least_squares_solution():
    problem, A, y = linear_problem(noise=0.1)
    opt = l2ljax.EnsembleKalmanFilter(problem, pop_size=60)
    result = l2ljax.run(opt, problem, jax.random.key(0), 60, params=opt.default_params.replace(gamma=1e-3))
    mean = np.asarray(jnp.mean(result.state.inner.ensemble, 0), np.float64)
    lstsq = np.linalg.lstsq(A.astype(np.float64), y.astype(np.float64), rcond=None)[0]
    assert np.linalg.norm(mean - lstsq) / np.linalg.norm(lstsq) < 1e-3
    misfit = result.trajectory["diag/misfit"]
    assert misfit[-1] < 1e-2 * misfit[0]
    assert np.all(np.diff(result.trajectory["diag/spread"]) <= 1e-6)  # EKI contracts the ensemble


def test_one_generation_equals_a_direct_kalman_update():
    problem, A, y = linear_problem()
    opt = l2ljax.EnsembleKalmanFilter(problem, pop_size=30)
    state = opt.init(jax.random.key(1), opt.default_params.replace(gamma=0.5))
    population = opt.ask_flat(jax.random.key(2), state)
    evaluation = problem.evaluate_flat(jax.random.key(3), population)
    new = opt.tell_flat(state, population, evaluation).inner.ensemble
    U = np.asarray(population, np.float64)
    G = U @ A.T.astype(np.float64)
    du, dg = U - U.mean(0), G - G.mean(0)
    c_up, c_pp = du.T @ dg / len(U), dg.T @ dg / len(U)
    expected = U + np.linalg.solve(c_pp + 0.5 * np.eye(len(y)), (y - G).T).T @ c_up.T
    np.testing.assert_allclose(new, expected, rtol=2e-4, atol=2e-4)


def test_full_noise_covariance_and_scalar_gamma_agree():
    problem, _, y = linear_problem()
    scalar = l2ljax.EnsembleKalmanFilter(problem, pop_size=20)
    matrix = l2ljax.EnsembleKalmanFilter(problem, pop_size=20, noise_cov=0.3 * np.eye(len(y)))
    a = l2ljax.run(scalar, problem, jax.random.key(0), 3, params=scalar.default_params.replace(gamma=0.3))
    b = l2ljax.run(matrix, problem, jax.random.key(0), 3)
    np.testing.assert_allclose(a.state.inner.ensemble, b.state.inner.ensemble, rtol=1e-4, atol=1e-5)
    small = l2ljax.run(scalar, problem, jax.random.key(0), 3, params=scalar.default_params.replace(gamma=1e-6))
    assert not np.allclose(a.state.inner.ensemble, small.state.inner.ensemble, atol=1e-3)


def test_failed_members_never_poison_the_ensemble():
    problem, _, _ = linear_problem(fail_region=True)
    opt = l2ljax.EnsembleKalmanFilter(problem, pop_size=40)
    result = l2ljax.run(opt, problem, jax.random.key(0), 10)
    assert np.isfinite(result.state.inner.ensemble).all()
    assert np.isneginf(result.trajectory["score"][0]).any()  # some members did fail
    assert np.isfinite(result.best_score) and result.best[0] <= 2.5


def test_scan_equals_host_loop_and_sequential_mode_runs():
    problem, _, _ = linear_problem(P=6, M=20)
    opt = l2ljax.EnsembleKalmanFilter(problem, pop_size=16, sequential=True, outputs_per_sample=5,
                                      stochastic=True)
    scan = l2ljax.run(opt, problem, jax.random.key(2), 6)
    host = l2ljax.run(opt, problem, jax.random.key(2), 6, chunk_size=1)
    for name in scan.trajectory:
        np.testing.assert_array_equal(scan.trajectory[name], host.trajectory[name], err_msg=name)


@pytest.mark.parametrize("kwargs, message", [
    ({"pop_size": 1}, "at least 2 members"),
    ({"sequential": True}, "outputs_per_sample"),
    ({"form": "dual"}, "form must be"),
    ({"noise_cov": -np.eye(3)}, "positive definite"),
    ({"init_std": 0.0}, "init_std"),
])
def test_bad_configuration_is_named(kwargs, message):
    problem, _, _ = linear_problem()
    with pytest.raises(ValueError, match=message):
        l2ljax.EnsembleKalmanFilter(problem, **{"pop_size": 10, **kwargs})


def test_needs_outputs_and_a_positive_gamma():
    problem = l2ljax.function_optimizee("rastrigin", 2)
    opt = l2ljax.EnsembleKalmanFilter(problem, pop_size=10)
    with pytest.raises(ValueError, match="needs an optimizee that returns outputs"):
        l2ljax.run(opt, problem, jax.random.key(0), 1)
    with pytest.raises(ValueError, match="gamma must lie in"):
        opt.init(jax.random.key(0), opt.default_params.replace(gamma=0.0))


def test_minibatch_schedule_repeats_and_reshuffles():
    idx = [np.asarray(batch_indices(jnp.asarray(g), 640, 64, 3, 0)) for g in range(33)]
    assert all(np.array_equal(idx[0], idx[g]) for g in (1, 2))  # 3 repetitions of a batch
    assert not np.array_equal(idx[2], idx[3])
    epoch = np.concatenate(idx[0:30:3])
    assert sorted(epoch.tolist()) == list(range(640))  # one epoch covers every example once
    assert not np.array_equal(idx[30], idx[0])  # the next epoch is shuffled anew


def test_lod_cnn_has_18050_parameters_and_bad_data_is_named():
    ensemble, _ = build_model("lod_cnn")
    assert ensemble.n_params == 18_050
    with pytest.raises(ValueError, match="uint8"):
        mnist_optimizee(np.zeros((10, 28, 28), np.float32), np.zeros(10, int))
    with pytest.raises(ValueError, match="unknown model"):
        build_model("resnet")


@pytest.mark.skipif(not MNIST_DIR.is_dir(), reason=f"MNIST not found at {MNIST_DIR}")
def test_enkf_learns_mnist_with_forward_passes_only():
    """Tiny LOD setting (J=64, LOD sample-sequential updates, 80 iterations of batch 64 on real MNIST):
    the ensemble-mean CNN goes from chance (~10 %) to >= 25 % test accuracy (about 35-40 % measured)."""
    data = load_mnist(MNIST_DIR)
    problem = mnist_optimizee(data.train_images[:10000], data.train_labels[:10000], batch_size=64, repetitions=1)
    opt = l2ljax.EnsembleKalmanFilter(problem, pop_size=64, sequential=True, outputs_per_sample=10)
    ensemble, _ = build_model("lod_cnn")
    test_x, test_y = data.test_images[:2000], data.test_labels[:2000]
    state = opt.init(jax.random.key(0))
    before = dataset_accuracy(ensemble, jnp.mean(state.inner.ensemble, 0), test_x, test_y)
    result = l2ljax.run(opt, problem, jax.random.key(0), 80, summary=True)
    after = dataset_accuracy(ensemble, jnp.mean(result.state.inner.ensemble, 0), test_x, test_y)
    assert before < 0.2
    assert after >= 0.25, f"test accuracy {after:.3f} after 80 EnKF iterations"
    assert result.trajectory["score_mean"][-10:].mean() > result.trajectory["score_mean"][:5].mean() + 0.1
    assert set(result.trajectory) >= {"best_score", "score_max", "n_failed", "diag/misfit"}
    assert "fitness" not in result.trajectory and np.isnan(result.best_fitness).all()


def test_step_schedule_scales_the_step_size():
    """h·schedule(t): a schedule of 0.5 everywhere equals a constant step size of 0.5."""
    problem, _, _ = linear_problem()
    scheduled = l2ljax.EnsembleKalmanFilter(problem, pop_size=20, step_schedule=lambda t: 0.5)
    constant = l2ljax.EnsembleKalmanFilter(problem, pop_size=20)
    a = l2ljax.run(scheduled, problem, jax.random.key(0), 3)
    b = l2ljax.run(constant, problem, jax.random.key(0), 3, params=constant.default_params.replace(step_size=0.5))
    np.testing.assert_allclose(a.state.inner.ensemble, b.state.inner.ensemble, rtol=1e-6, atol=1e-6)
    assert int(a.state.inner.iteration) == 3
    decaying = l2ljax.EnsembleKalmanFilter(problem, pop_size=20, step_schedule=lambda t: 0.5 ** t)
    c = l2ljax.run(decaying, problem, jax.random.key(0), 3)
    assert not np.allclose(c.state.inner.ensemble, a.state.inner.ensemble, atol=1e-4)


def test_bfloat16_forward_matches_float32_closely_and_bad_precision_is_named():
    rng = np.random.default_rng(0)
    images, labels = rng.integers(0, 256, (256, 28, 28), dtype=np.uint8), rng.integers(0, 10, 256)
    f32 = mnist_optimizee(images, labels, batch_size=64)
    b16 = mnist_optimizee(images, labels, batch_size=64, precision="bfloat16")
    population = 0.1 * jax.random.normal(jax.random.key(0), (12, f32.space.dim))
    a = f32.evaluate_flat(jax.random.key(1), population)
    b = b16.evaluate_flat(jax.random.key(1), population)
    assert b.outputs.dtype == jnp.float32
    np.testing.assert_allclose(b.outputs, a.outputs, atol=0.1)
    agree = np.mean(np.argmax(np.asarray(a.outputs).reshape(12, 64, 10), -1)
                    == np.argmax(np.asarray(b.outputs).reshape(12, 64, 10), -1))
    assert agree > 0.95
    with pytest.raises(ValueError, match="precision must be one of"):
        mnist_optimizee(images, labels, precision="fp8")


def test_x0_needs_init_std_and_output_blocks_must_divide():
    problem, _, _ = linear_problem(P=6, M=21)
    with pytest.raises(ValueError, match="only with init_std"):
        l2ljax.EnsembleKalmanFilter(problem, pop_size=8).init(jax.random.key(0), x0=jnp.ones(6))
    centred = l2ljax.EnsembleKalmanFilter(problem, pop_size=8, init_std=0.01).init(jax.random.key(0), x0=jnp.ones(6))
    np.testing.assert_allclose(np.mean(centred.inner.ensemble, 0), 1.0, atol=0.02)
    opt = l2ljax.EnsembleKalmanFilter(problem, pop_size=8, sequential=True, outputs_per_sample=5)
    with pytest.raises(ValueError, match="not a multiple of outputs_per_sample=5"):
        l2ljax.run(opt, problem, jax.random.key(0), 1)


@pytest.mark.parametrize("accelerator", [None, l2ljax.kalman.NesterovAccelerator()])
def test_averaged_mean_is_the_debiased_ema_of_the_update_means(accelerator):
    problem, _, _ = linear_problem(noise=0.3)
    opt = l2ljax.EnsembleKalmanFilter(problem, pop_size=20, accelerator=accelerator)
    beta = 0.8
    state = opt.init(jax.random.key(4), opt.default_params.replace(gamma=0.05, average_decay=beta,
                                                                   additive_inflation=0.1))
    np.testing.assert_array_equal(opt.averaged_mean_flat(state), opt.mean_flat(state))  # no update yet
    step = jax.jit(l2ljax.make_step(opt, problem))
    means = []
    for _ in range(12):
        state, _ = step(state, jax.random.key(5))
        means.append(np.asarray(opt.mean_flat(state), np.float64))
    weights = (1 - beta) * beta ** np.arange(len(means))[::-1]
    expected = weights @ np.stack(means) / weights.sum()
    averaged = np.asarray(opt.averaged_mean_flat(state))
    np.testing.assert_allclose(averaged, expected, rtol=1e-5, atol=1e-5)
    assert np.max(np.abs(averaged - means[-1])) > 1e-3  # an average, not the latest mean

    plain = opt.init(jax.random.key(4), opt.default_params.replace(gamma=0.05, additive_inflation=0.1))
    for _ in range(3):
        plain, _ = step(plain, jax.random.key(5))
    np.testing.assert_array_equal(opt.averaged_mean_flat(plain), opt.mean_flat(plain))  # β = 0: the latest
    for bad in (1.0, -0.1, float("nan")):
        with pytest.raises(ValueError, match="average_decay"):
            opt.init(jax.random.key(0), opt.default_params.replace(average_decay=bad))


def test_additive_schedule_scales_the_additive_noise_per_iteration():
    problem, _, _ = linear_problem(noise=0.3)
    params = dict(gamma=0.05, additive_inflation=0.1)

    def trajectory(schedule, **overrides):
        opt = l2ljax.EnsembleKalmanFilter(problem, pop_size=20, additive_schedule=schedule)
        state = opt.init(jax.random.key(4), opt.default_params.replace(**{**params, **overrides}))
        step = jax.jit(l2ljax.make_step(opt, problem))
        ensembles = []
        for _ in range(6):
            state, _ = step(state, jax.random.key(5))
            ensembles.append(np.asarray(state.inner.ensemble))
        return np.stack(ensembles)

    plain = trajectory(None)
    np.testing.assert_array_equal(trajectory(lambda it: 1.0), plain)
    np.testing.assert_array_equal(trajectory(lambda it: 0.5), trajectory(None, additive_inflation=0.05))
    np.testing.assert_array_equal(trajectory(lambda it: 0.0), trajectory(None, additive_inflation=0.0))
    # on after two updates: the first two updates are noise-free, the rest are not
    switched = trajectory(lambda it: jnp.where(it >= 2, 1.0, 0.0))
    noiseless = trajectory(None, additive_inflation=0.0)
    np.testing.assert_array_equal(switched[:2], noiseless[:2])
    assert np.max(np.abs(switched[2] - noiseless[2])) > 1e-3
    for bad, message in ((lambda it: 2.0, r"additive_schedule\(0\) must be a scalar factor in \[0, 1\], got 2"),
                         (lambda it: jnp.where(it > 0, jnp.nan, 1.0), r"additive_schedule\(1\) must be"),
                         (lambda it: jnp.ones(3), "scalar factor")):
        with pytest.raises(ValueError, match=message):
            l2ljax.EnsembleKalmanFilter(problem, pop_size=20, additive_schedule=bad)
    with pytest.raises(TypeError, match="additive_schedule must be a callable"):
        l2ljax.EnsembleKalmanFilter(problem, pop_size=20, additive_schedule=0.5)
