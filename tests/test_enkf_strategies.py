"""EnKF strategies through the optimizer on nonlinear inverse problems with known answers."""

import os
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import l2ljax
from l2ljax import kalman
from l2ljax.core import Optimizee

# --------------------------------------------------------------------------- problems


def lotka_volterra(log_theta, t_obs, steps_per_obs=10, dt=0.05):
    """Prey/predator (x, y) at t_obs from (1, 0.5), RK4; θ = (α, β, δ, γ) = exp(log_theta)."""
    a, b, d, g = jnp.exp(log_theta)

    def f(z):
        x, y = z
        return jnp.array([a * x - b * x * y, d * x * y - g * y])

    def rk4(z, _):
        k1 = f(z)
        k2 = f(z + dt / 2 * k1)
        k3 = f(z + dt / 2 * k2)
        k4 = f(z + dt * k3)
        return z + dt / 6 * (k1 + 2 * k2 + 2 * k3 + k4), None

    def obs(z, _):
        z, _ = jax.lax.scan(rk4, z, None, length=steps_per_obs)
        return z, z

    _, zs = jax.lax.scan(obs, jnp.array([1.0, 0.5]), None, length=t_obs)
    return zs.reshape(-1)


def exp_sine(theta):
    """EnsembleKalmanProcesses' example: amplitude and mean of exp(θ₁ sin(t) + θ₂) over a period."""
    t = jnp.linspace(0, 2 * jnp.pi, 64, endpoint=False)
    s = jnp.exp(theta[0] * jnp.sin(t) + theta[1])
    return jnp.array([jnp.max(s) - jnp.min(s), jnp.mean(s)])


def make_problem(name, seed=0):
    """(optimizee, truth, noise variance): y = G(θ†) + small noise; members start from a broad prior."""
    rng = np.random.default_rng(seed)
    if name == "lotka_volterra":
        truth = np.log(np.array([1.0, 0.6, 0.4, 0.8]))
        forward = lambda u: lotka_volterra(u, 12)  # noqa: E731  (M = 24 observations)
        prior_mean, prior_std, noise = np.log([0.7, 0.8, 0.6, 0.6]), 0.3, 1e-4
    else:
        truth = np.array([1.0, 0.8])
        forward = exp_sine
        prior_mean, prior_std, noise = np.array([0.5, 0.3]), 0.5, 1e-4
    clean = np.asarray(forward(jnp.asarray(truth, jnp.float32)))
    y = jnp.asarray(clean + np.sqrt(noise) * rng.normal(size=clean.shape), jnp.float32)

    def fn(u, key, inputs):
        out = forward(u)
        return -jnp.mean(jnp.square(out - y)), out

    dim = len(truth)
    problem = Optimizee.create(fn, jnp.asarray(prior_mean, jnp.float32), weights=(1.0,),
                               data=lambda g: (jnp.zeros(()), y),
                               sample=lambda k: jnp.asarray(prior_mean, jnp.float32)
                               + prior_std * jax.random.normal(k, (dim,)))
    return problem, truth, noise


VARIANTS = {
    "eki": {},
    "eki_stochastic": {"stochastic": True},
    "eki_dmc": {"scheduler": kalman.DataMisfitController()},  # stops at the posterior time 1
    "etki": {"process": kalman.TransformInversion()},
    "teki": {"process": kalman.TikhonovInversion(prior_std=1.0)},
    "eki_nesterov": {"accelerator": kalman.NesterovAccelerator()},
    "eki_secnice": {"localizer": kalman.SECNice()},
    "eki_additive": {"additive": 1e-3},
}


def solve(problem, noise, kwargs, generations=40, members=40, seed=0):
    kwargs = dict(kwargs)
    additive = kwargs.pop("additive", 0.0)
    opt = l2ljax.EnsembleKalmanFilter(problem, pop_size=members, **kwargs)
    params = opt.default_params.replace(gamma=noise, additive_inflation=additive)
    result = l2ljax.run(opt, problem, jax.random.key(seed), generations, params=params)
    return opt, result


@pytest.mark.parametrize("name", ["lotka_volterra", "exp_sine"])
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_variants_solve_nonlinear_inverse_problems(name, variant):
    problem, truth, noise = make_problem(name)
    opt, result = solve(problem, noise, VARIANTS[variant])
    misfit = result.trajectory["diag/misfit"]
    spread = result.trajectory["diag/spread"]
    assert np.all(np.isfinite(misfit)) and misfit[-1] < 1e-2 * misfit[0]
    assert misfit[-1] < 20 * noise  # at the noise level
    mean = np.asarray(opt.mean_flat(result.state), np.float64)
    assert np.max(np.abs(mean - truth)) < (0.1 if name == "lotka_volterra" else 0.05)
    assert 1e-5 * spread[0] < spread[-1] < spread[0]  # contracts, but neither collapses to 0 nor explodes


def test_nesterov_accelerates_and_constant_momentum_is_the_least_stable():
    """Misfit after 15 updates on Lotka–Volterra, deterministic EKI at a fixed step (seeds averaged)."""
    problem, _, noise = make_problem("lotka_volterra", seed=1)
    final = {}
    for label, acc in [("plain", None), ("nesterov", kalman.NesterovAccelerator()),
                       ("first_order", kalman.FirstOrderNesterovAccelerator()),
                       ("constant", kalman.ConstantNesterovAccelerator(0.9))]:
        runs = [solve(problem, noise, {"accelerator": acc}, generations=15, seed=s)[1] for s in range(3)]
        final[label] = np.mean([np.log10(r.trajectory["diag/misfit"][-1]) for r in runs])
        rough = [np.sum(np.diff(r.trajectory["diag/misfit"]) > 0) for r in runs]
        final[label + "_increases"] = np.mean(rough)
    assert final["nesterov"] < final["plain"]
    assert final["first_order"] < final["plain"]
    assert final["constant_increases"] >= final["nesterov_increases"]


def test_data_misfit_controller_terminates_and_the_run_stops_saying_why(capsys):
    problem, _, noise = make_problem("exp_sine")
    opt = l2ljax.EnsembleKalmanFilter(problem, pop_size=40, scheduler=kalman.DataMisfitController())
    params = opt.default_params.replace(gamma=noise)
    result = l2ljax.run(opt, problem, jax.random.key(0), 200, params=params, callbacks=[opt.stop_when_terminated()])
    out = capsys.readouterr().out
    assert result.stopped_early and result.generations < 200
    assert "terminate_at=1" in out and "stopped after" in out
    steps = result.trajectory["diag/step"]
    assert abs(np.sum(steps) - 1.0) < 1e-5 and np.all(steps[:-1] > 0)
    # after termination, further generations leave the ensemble alone
    state = result.state
    population = opt.ask_flat(jax.random.key(1), state)
    after = opt.tell_flat(state, population, problem.evaluate_flat(jax.random.key(2), population))
    np.testing.assert_array_equal(after.inner.ensemble, state.inner.ensemble)
    assert bool(after.inner.terminated)


def test_etki_optimizer_step_equals_the_pure_function():
    problem, _, noise = make_problem("exp_sine")
    opt = l2ljax.EnsembleKalmanFilter(problem, pop_size=20, process=kalman.TransformInversion())
    state = opt.init(jax.random.key(0), opt.default_params.replace(gamma=noise, step_size=0.5))
    population = opt.ask_flat(jax.random.key(1), state)
    evaluation = problem.evaluate_flat(jax.random.key(2), population)
    new = opt.tell_flat(state, population, evaluation).inner.ensemble
    ref = kalman.etki_update(jax.random.key(3), population, evaluation.outputs, evaluation.targets, noise,
                             step_size=0.5)
    np.testing.assert_allclose(new, ref, rtol=1e-5, atol=1e-6)


def test_params_are_vmappable_and_strategy_fields_are_hyperparameters():
    problem, _, noise = make_problem("exp_sine")
    opt = l2ljax.EnsembleKalmanFilter(problem, pop_size=20, localizer=kalman.SEC(alpha=1.0),
                                      accelerator=kalman.ConstantNesterovAccelerator(0.5))
    base = opt.default_params.replace(gamma=noise)
    params = jax.tree.map(lambda *x: jnp.stack(x), base.replace(localizer=kalman.SEC(alpha=0.5)),
                          base.replace(localizer=kalman.SEC(alpha=2.0)))
    states = jax.vmap(lambda p: opt.init(jax.random.key(0), p))(params)
    assert states.inner.ensemble.shape == (2, 20, 2)
    with pytest.raises(ValueError, match="alpha must lie in"):
        opt.init(jax.random.key(0), base.replace(localizer=kalman.SEC(alpha=-1.0)))
    with pytest.raises(ValueError, match="momentum must lie in"):
        opt.init(jax.random.key(0), base.replace(accelerator=kalman.ConstantNesterovAccelerator(1.5)))
    with pytest.raises(kalman.StrategyError, match="strategies are static"):
        opt.init(jax.random.key(0), base.replace(localizer=kalman.SECNice()))


@pytest.mark.parametrize("kwargs, error, message", [
    ({"process": kalman.TransformInversion(), "localizer": kalman.SECNice()}, kalman.StrategyError,
     "localization applies to Inversion"),
    ({"process": kalman.TikhonovInversion(), "localizer": kalman.SEC()}, kalman.StrategyError, "Inversion\\(\\) only"),
    ({"form": "ensemble", "localizer": kalman.SEC()}, kalman.StrategyError, "observation form"),
    ({"process": kalman.TransformInversion(), "sequential": True, "outputs_per_sample": 1}, kalman.StrategyError,
     "no sample-sequential form"),
    ({"process": kalman.TransformInversion(), "stochastic": True}, kalman.StrategyError, "deterministic"),
    ({"noise_cov": np.array([[1.0, 2.0], [2.0, 1.0]])}, kalman.NoiseCovarianceError, "not positive definite"),
    ({"noise_cov": np.array([1.0, -1.0])}, kalman.NoiseCovarianceError, "must be positive"),
    ({"scheduler": kalman.SECNice()}, kalman.StrategyError, "scheduler must be one of"),
])
def test_bad_strategy_combinations_are_named(kwargs, error, message):
    problem, _, _ = make_problem("exp_sine")
    with pytest.raises(error, match=message):
        l2ljax.EnsembleKalmanFilter(problem, pop_size=10, **kwargs)


def test_bad_hyperparameters_are_named():
    problem, _, _ = make_problem("exp_sine")
    opt = l2ljax.EnsembleKalmanFilter(problem, pop_size=10, scheduler=kalman.DataMisfitController())
    with pytest.raises(kalman.StrategyError, match="terminate_at > 0"):
        kalman.DataMisfitController().replace(terminate_at=-1.0)
    with pytest.raises(ValueError, match="terminate_at must lie in"):  # an array slips past the constructor
        opt.init(jax.random.key(0), opt.default_params.replace(
            scheduler=kalman.DataMisfitController(terminate_at=jnp.asarray(-1.0))))
    plain = l2ljax.EnsembleKalmanFilter(problem, pop_size=10)
    with pytest.raises(kalman.StrategyError, match="additive_inflation·step_size < 1"):
        plain.init(jax.random.key(0), plain.default_params.replace(additive_inflation=0.5, step_size=2.0))
    with pytest.raises(kalman.NoiseCovarianceError, match="structure"):
        plain.init(jax.random.key(0), plain.default_params.replace(noise_cov=np.eye(2)))


# --------------------------------------------------------------------------- the main job's flags

MNIST_DIR = Path(os.environ.get("L2LJAX_MNIST_DIR", Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"))


@pytest.mark.skipif(not MNIST_DIR.is_dir(), reason=f"MNIST not found at {MNIST_DIR}")
def test_main_job_takes_strategy_flags_and_stops_at_termination(tmp_path, capsys):
    from l2ljax.cli import main

    common = ["mnist-enkf", "--data-dir", str(MNIST_DIR), "--members", "8", "--eval-every", "2",
              "--train-subset", "640", "--test-subset", "200", "--parallel", "none"]
    main([*common, "--iterations", "2", "--mode", "batch", "--accelerator", "nesterov", "--localizer", "sec",
          "--additive-inflation", "0.01", "--additive-cov", "prior", "--out", str(tmp_path / "a")])
    out = capsys.readouterr()
    assert "eki + nesterov + sec + additive 0.01 (prior)" in out.out and "final test accuracy" in out.out
    # the controller's time reaches terminate_at after the first update: the run ends at that chunk, saying why
    main([*common, "--iterations", "20", "--scheduler", "dmc", "--terminate-at", "1e-4", "--out", str(tmp_path / "b")])
    out = capsys.readouterr()
    assert "reached terminate_at=0.0001" in out.err
    assert "after 2 iterations" in out.out  # stopped at the end of the first chunk of --eval-every 2
