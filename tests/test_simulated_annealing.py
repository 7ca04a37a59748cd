"""SimulatedAnnealing: cooling schedules against a float64 numpy reference of L2L's formulas,
Metropolis acceptance statistics, convergence, NaN safety, scan == host loop, bad input."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import assert_same_trajectory, assert_states_equal, final_best

import l2ljax
from l2ljax.core import Optimizee, make_evaluation
from l2ljax.optimizers.simulated_annealing import (
    ADDITIVE_SCHEDULES,
    COOLING_SCHEDULES,
    SimulatedAnnealing,
    cooling_schedule_name,
    temperature,
)

# ---------------------------------------------------------------------------
# Independent float64 reference of the schedules as L2L documents them
# (l2l/optimizers/simulatedannealing/optimizer.py; Kirkpatrick et al. 1983, Luke 2005).
# ---------------------------------------------------------------------------


def ref_temperature(name, k, T0, Tn, alpha, n):
    if name in ("default", "exponential"):  # default: T <- T * temp_decay from T0
        return T0 * alpha**k
    if name == "logarithmic":
        return T0 / (1 + alpha * math.log(1 + k))
    if name == "linear_multiplicative":
        return T0 / (1 + alpha * k)
    if name == "quadratic_multiplicative":
        return T0 / (1 + alpha * k**2)
    k = min(k, n)  # additive schedules end at Tn after n steps
    if name == "linear_additive":
        return Tn + (T0 - Tn) * ((n - k) / n)
    if name == "quadratic_additive":
        return Tn + (T0 - Tn) * ((n - k) / n) ** 2
    if name == "exponential_additive":
        return Tn + (T0 - Tn) * (1 / (1 + math.exp(2 * math.log(T0 - Tn) / n * (k - n / 2))))
    if name == "trigonometric_additive":
        return Tn + (T0 - Tn) / 2 * (1 + math.cos(k * math.pi / n))
    raise AssertionError(name)


T0, TN, N_ITER = 3.0, 0.2, 50
ALPHA = {"default": 0.9, "exponential": 0.85, "logarithmic": 1.5, "linear_multiplicative": 0.5,
         "quadratic_multiplicative": 0.05}


def test_nine_schedules_of_l2l():
    assert COOLING_SCHEDULES == ("default", "logarithmic", "exponential", "linear_multiplicative",
                                 "quadratic_multiplicative", "linear_additive", "quadratic_additive",
                                 "exponential_additive", "trigonometric_additive")


@pytest.mark.parametrize("name", COOLING_SCHEDULES)
def test_schedule_matches_numpy_reference_positive_and_non_increasing(name):
    alpha = ALPHA.get(name, 0.7)  # the additive schedules ignore it
    ks = [0, 1, 2, 5, 17, 33, 49, 50, 51, 120]
    got = np.asarray(temperature(name, jnp.asarray(ks), T0, TN, alpha, N_ITER), np.float64)
    want = np.array([ref_temperature(name, k, T0, TN, alpha, N_ITER) for k in ks])
    np.testing.assert_allclose(got, want, rtol=1e-5)  # float32: α^k with α rounded, k up to 120
    every = np.asarray(temperature(name, jnp.arange(3 * N_ITER), T0, TN, alpha, N_ITER), np.float64)
    assert np.all(every > 0)
    assert np.all(np.diff(every) <= 1e-6 * T0)  # float32 rounding only
    assert every[-1] < every[0]  # it does cool
    if name in ADDITIVE_SCHEDULES:  # after n steps they stay at T(n), which is Tn except for the sigmoid
        np.testing.assert_array_equal(every[N_ITER:], every[N_ITER])
        if name != "exponential_additive":
            np.testing.assert_allclose(every[N_ITER], TN, rtol=1e-6)


def test_schedule_broadcasts_over_chains():
    T0s, Tns = np.array([1.0, 2.0, 4.0]), np.array([0.01, 0.1, 0.5])
    got = np.asarray(temperature("quadratic_additive", 7, T0s, Tns, 1.0, 20))
    want = [ref_temperature("quadratic_additive", 7, a, b, 1.0, 20) for a, b in zip(T0s, Tns, strict=True)]
    np.testing.assert_allclose(got, want, rtol=2e-6)


def test_schedule_names_any_case_and_l2l_spelling():
    assert cooling_schedule_name("LINEAR_ADDAPTIVE") == "linear_additive"
    assert cooling_schedule_name("Linear_Additive") == "linear_additive"
    assert cooling_schedule_name("TRIGONOMETRIC_ADDAPTIVE") == "trigonometric_additive"
    assert cooling_schedule_name("DEFAULT") == "default"

    class Member:  # like a member of L2L's AvailableCoolingSchedules enum
        name = "QUADRATIC_ADDAPTIVE"

    assert cooling_schedule_name(Member()) == "quadratic_additive"
    with pytest.raises(ValueError, match="unknown cooling schedule 'cubic'") as err:
        temperature("cubic", 1, 1.0, 0.1, 0.9, 10)
    for name in COOLING_SCHEDULES:
        assert name in str(err.value)


# ---------------------------------------------------------------------------
# Metropolis acceptance: measured rate of worse moves == exp(-Δ/T) as T cools
# ---------------------------------------------------------------------------


def test_acceptance_of_worse_moves_follows_the_schedule():
    n, delta = 20_000, 1.0
    space = l2ljax.Space.from_template(jnp.zeros(1), lower=-1.0, upper=1.0)
    opt = SimulatedAnnealing(space, n_parallel_runs=n, cooling_schedule="default")
    params = opt.default_params.replace(noisy_step=0.1, temp_decay=0.7, T0=2.0)
    tell = jax.jit(opt.tell_flat)

    def scored(state, scores):  # a population to tell, with the given scores
        population = state.inner.x + jax.random.normal(jax.random.key(int(state.generation)), (n, 1)) / 10
        return population, make_evaluation(scores[:, None], (1.0,))

    state = opt.init(jax.random.key(0), params)
    population, evaluation = scored(state, jnp.zeros(n))
    state = tell(state, population, evaluation)  # first proposals: scores were -inf, all accepted
    np.testing.assert_array_equal(state.inner.x, population)
    assert float(state.inner.acceptance_rate) == 1.0

    rates, expected = [], []
    for _ in range(5):
        before = state.inner
        population, evaluation = scored(state, before.score - delta)  # every proposal is exactly Δ worse
        state = tell(state, population, evaluation)
        accepted = np.asarray(state.inner.score) < np.asarray(before.score)
        # accepted chains moved to their proposal, the others kept their point and score
        np.testing.assert_array_equal(np.asarray(state.inner.x)[accepted], np.asarray(population)[accepted])
        np.testing.assert_array_equal(np.asarray(state.inner.x)[~accepted], np.asarray(before.x)[~accepted])
        T = 2.0 * 0.7 ** int(state.inner.step)  # acceptance uses the cooled temperature T(k+1)
        np.testing.assert_allclose(float(opt.diagnostics(state)["temperature"]), T, rtol=1e-6)
        p, rate = math.exp(-delta / T), accepted.mean()
        assert float(state.inner.acceptance_rate) == pytest.approx(rate)
        assert abs(rate - p) < 4 * math.sqrt(p * (1 - p) / n), (rate, p)
        rates.append(rate)
        expected.append(p)
    assert np.all(np.diff(rates) < 0)  # colder -> fewer worse moves accepted
    assert expected[0] > 0.3 and expected[-1] < 0.05  # the test spans a real range of T

    # better and equal moves are always accepted
    for gain in (0.5, 0.0):
        population, evaluation = scored(state, state.inner.score + gain)
        state = tell(state, population, evaluation)
        assert float(state.inner.acceptance_rate) == 1.0


# ---------------------------------------------------------------------------
# Optimisation
# ---------------------------------------------------------------------------

RASTRIGIN = l2ljax.function_optimizee("rastrigin", 2)
ACKLEY = l2ljax.function_optimizee("ackley", 2)
N_RUNS, N_GEN = 32, 150


@functools.cache
def annealer(problem):  # one object per problem, so its compiled run is reused across tests
    opt = SimulatedAnnealing(problem, n_parallel_runs=N_RUNS, cooling_schedule="linear_additive",
                             n_iteration=N_GEN)
    return opt, opt.default_params.replace(noisy_step=0.3, T0=5.0, Tn=0.01)


@pytest.mark.parametrize("problem, tol", [(RASTRIGIN, 0.15), (ACKLEY, 0.05)], ids=["rastrigin", "ackley"])
def test_converges(problem, tol):
    opt, params = annealer(problem)
    sa = final_best(opt, problem, N_GEN, range(4), params)
    assert np.all(sa < tol), sa  # minimum 0 at the origin


def test_beats_random_search_at_equal_budget():
    opt, params = annealer(RASTRIGIN)
    sa = final_best(opt, RASTRIGIN, N_GEN, range(4), params)
    rs = final_best(l2ljax.RandomSearch(RASTRIGIN, N_RUNS), RASTRIGIN, N_GEN, range(4))  # 32 × 150 evaluations each
    assert np.all(sa < rs), (sa, rs)
    assert np.median(sa) < 0.2 * np.median(rs), (sa, rs)


def test_scan_equals_host_loop_and_reproducible():
    opt, params = annealer(ACKLEY)
    scan = l2ljax.run(opt, ACKLEY, jax.random.key(3), N_GEN, params=params)
    host = l2ljax.run(opt, ACKLEY, jax.random.key(3), N_GEN, params=params, chunk_size=1)
    again = l2ljax.run(opt, ACKLEY, jax.random.key(3), N_GEN, params=params)
    other = l2ljax.run(opt, ACKLEY, jax.random.key(4), N_GEN, params=params)
    assert {"diag/temperature", "diag/acceptance_rate"} <= scan.trajectory.keys()
    assert_same_trajectory(scan.trajectory, host.trajectory)
    assert_same_trajectory(scan.trajectory, again.trajectory)
    assert_states_equal(scan.state, host.state)
    assert not np.array_equal(scan.trajectory["population"], other.trajectory["population"])
    # generation g records the temperature of its acceptance test, T(g + 1)
    want = [ref_temperature("linear_additive", k, 5.0, 0.01, 0, N_GEN) for k in range(1, N_GEN + 1)]
    np.testing.assert_allclose(scan.trajectory["diag/temperature"], want, rtol=1e-5)


def test_nan_fitness_never_accepted_state_stays_finite():
    def fn(x, key):  # sphere, NaN for x[0] > 0.5
        return jnp.where(x[0] > 0.5, jnp.nan, jnp.sum(x**2))

    problem = Optimizee.create(fn, jnp.zeros(2), lower=-2.0, upper=2.0)
    opt = SimulatedAnnealing(problem, n_parallel_runs=16, cooling_schedule="default")
    params = opt.default_params.replace(noisy_step=0.5, temp_decay=0.95, T0=2.0)
    result = l2ljax.run(opt, problem, jax.random.key(0), 40, params=params)
    inner = result.state.inner
    assert np.isnan(result.trajectory["fitness"]).any()  # the NaN region was proposed
    assert np.all(np.isfinite(inner.x)) and not np.isnan(inner.score).any()
    finite = np.isfinite(np.asarray(inner.score))
    assert finite.sum() >= 14  # nearly every chain found the finite region
    # (a chain all of whose proposals fell in the NaN region keeps its start, unscored: -inf)
    x = np.asarray(inner.x)
    assert np.all(x[finite, 0] <= 0.5)  # no scored chain sits on a NaN point
    np.testing.assert_allclose(inner.score[finite], -np.sum(x[finite] ** 2, axis=1), rtol=1e-6)
    assert result.best[0] <= 0.5 and result.best_score > -0.05

    # a generation where every fitness is NaN changes nothing but the step counter and key
    tell = jax.jit(opt.tell_flat)
    nan = make_evaluation(jnp.full((16, 1), jnp.nan), (-1.0,))
    before = result.state
    after = tell(before, before.inner.x + 0.01, nan)
    np.testing.assert_array_equal(after.inner.x, before.inner.x)
    np.testing.assert_array_equal(after.inner.score, before.inner.score)
    assert float(after.inner.acceptance_rate) == 0.0

    # from the start: NaN proposals are rejected even against the initial -inf scores
    fresh = opt.init(jax.random.key(2), params)
    after = tell(fresh, fresh.inner.x + 0.01, nan)
    np.testing.assert_array_equal(after.inner.x, fresh.inner.x)
    assert np.all(np.isneginf(after.inner.score)) and np.all(np.isfinite(after.inner.x))


def test_initial_chains_and_first_proposals():
    opt = SimulatedAnnealing(ACKLEY, n_parallel_runs=N_RUNS)
    x0 = jnp.array([0.25, -0.5])
    state = opt.init(jax.random.key(0), x0=x0)
    x = np.asarray(state.inner.x)
    np.testing.assert_array_equal(x[0], x0)
    assert len({tuple(row) for row in x}) == N_RUNS and np.all(np.abs(x) <= 2)  # independent draws in the box
    assert np.all(np.isneginf(state.inner.score))
    params = opt.default_params
    step = (np.asarray(opt.ask_flat(jax.random.key(1), state)) - x) / (params.noisy_step * params.T0)
    assert 0.3 < np.std(step) < 3  # N(0, 1) · noisy_step · T0 around the initial points


# ---------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("n", [0, -1, 1.5, True])
def test_bad_n_parallel_runs(n):
    with pytest.raises(ValueError, match="n_parallel_runs"):
        SimulatedAnnealing(ACKLEY, n_parallel_runs=n)


def test_bad_schedule_and_missing_n_iteration():
    with pytest.raises(ValueError, match="unknown cooling schedule 'fast'"):
        SimulatedAnnealing(ACKLEY, cooling_schedule="fast")
    with pytest.raises(ValueError, match="quadratic_additive needs n_iteration"):
        SimulatedAnnealing(ACKLEY, cooling_schedule="QUADRATIC_ADDAPTIVE")
    with pytest.raises(ValueError, match="n_iteration"):
        SimulatedAnnealing(ACKLEY, cooling_schedule="linear_additive", n_iteration=0)
    with pytest.raises(ValueError, match="needs n_iteration"):
        temperature("linear_additive", 1, 1.0, 0.1, 0.9)


@pytest.mark.parametrize("schedule, change, match", [
    ("default", {"noisy_step": 0.0}, "noisy_step"),
    ("default", {"temp_decay": 1.5}, r"decay of the 'default' schedule must lie in \(0, 1\]"),
    ("exponential", {"temp_decay": 0.0}, "decay of the 'exponential'"),
    ("logarithmic", {"temp_decay": -0.1}, "decay of the 'logarithmic' schedule must be >= 0"),
    ("default", {"T0": 0.0}, "T0 must be finite and > 0"),
    ("linear_additive", {"T0": 1.0, "Tn": 2.0}, "needs 0 < Tn <= T0"),
    ("trigonometric_additive", {"Tn": 0.0}, "needs 0 < Tn <= T0"),
    ("exponential_additive", {"T0": 1.0, "Tn": 0.5}, r"T0 - Tn > 1"),
])
def test_bad_params_named(schedule, change, match):
    opt = SimulatedAnnealing(ACKLEY, cooling_schedule=schedule, n_iteration=10)
    with pytest.raises(ValueError, match=match):
        opt.init(jax.random.key(0), opt.default_params.replace(**change))
