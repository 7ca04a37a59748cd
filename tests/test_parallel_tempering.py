"""ParallelTempering: replica-exchange probability against numpy, swaps of neighbouring states in
temperature order (never a chain with itself), convergence, NaN safety, scan == host loop, bad input."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import assert_same_trajectory, assert_states_equal, final_best

import l2ljax
from l2ljax.core import Optimizee, make_evaluation
from l2ljax.optimizers import parallel_tempering, simulated_annealing
from l2ljax.optimizers.parallel_tempering import ParallelTempering, replica_exchange, swap_probability


def ref_swap_probability(score_i, score_j, T_i, T_j):
    """float64 reference: min(1, exp((E_i - E_j)(1/T_i - 1/T_j))), E = -score; 0 where undefined."""
    with np.errstate(invalid="ignore"):
        exponent = (-score_i + score_j) * (1.0 / T_i - 1.0 / T_j)
    return np.where(np.isnan(exponent), 0.0, np.minimum(1.0, np.exp(np.minimum(exponent, 0.0))))


def test_shares_the_cooling_schedules_of_simulated_annealing():
    assert parallel_tempering.temperature is simulated_annealing.temperature


def test_swap_probability_matches_numpy():
    score_i = np.array([-3.0, 0.0, -1.0, -1.0, 2.5, -np.inf, -np.inf, -np.inf, 0.0, -7.25])
    score_j = np.array([0.0, -3.0, -1.0, -2.0, 2.0, 1.0, -np.inf, 1.0, 0.0, -7.5])
    T_i = np.array([1.0, 1.0, 0.5, 2.0, 0.1, 1.0, 1.0, 3.0, 1.0, 0.3])
    T_j = np.array([2.0, 2.0, 4.0, 2.0, 0.2, 2.0, 2.0, 3.0, 2.0, 0.7])
    got = np.asarray(swap_probability(*(jnp.asarray(a, jnp.float32) for a in (score_i, score_j, T_i, T_j))))
    want = ref_swap_probability(score_i, score_j, T_i, T_j)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
    # spelled out: a cold chain with the worse state always swaps, a cold one with the better
    # state with exp(-3 · (1 - 1/2)); both empty or equal temperature with one empty: never
    np.testing.assert_allclose(want[:2], [1.0, math.exp(-1.5)])
    assert want[3] == 1.0 and want[5] == 1.0 and want[6] == 0.0 and want[7] == 0.0
    assert 0 < want[4] < 1 and 0 < want[9] < 1


# temperatures out of index order: positions (coldest first) hold chains 1, 3, 0, 2
TEMPS = jnp.array([4.0, 1.0, 8.0, 2.0])


def test_exchange_moves_states_between_neighbours_in_temperature_order():
    x = jnp.arange(8.0).reshape(4, 2)
    score = jnp.array([-2.0, -30.0, 0.0, -10.0])  # colder is worse everywhere: every offered pair swaps
    even = replica_exchange(jax.random.key(0), x, score, TEMPS, 0)  # pairs (1, 3) and (0, 2)
    np.testing.assert_array_equal(even.source, [2, 3, 0, 1])
    np.testing.assert_array_equal(even.x, np.asarray(x)[[2, 3, 0, 1]])
    np.testing.assert_array_equal(even.score, np.asarray(score)[[2, 3, 0, 1]])
    np.testing.assert_array_equal(even.attempted, [True, False, True])
    np.testing.assert_array_equal(even.swapped, [True, False, True])
    odd = replica_exchange(jax.random.key(0), x, score, TEMPS, 1)  # the middle pair (3, 0) only
    np.testing.assert_array_equal(odd.source, [3, 1, 2, 0])
    np.testing.assert_array_equal(odd.x, np.asarray(x)[[3, 1, 2, 0]])
    np.testing.assert_array_equal(odd.score, np.asarray(score)[[3, 1, 2, 0]])
    np.testing.assert_array_equal(odd.attempted, [False, True, False])
    np.testing.assert_allclose(odd.probability, ref_swap_probability(
        np.asarray(score)[[1, 3, 0]], np.asarray(score)[[3, 0, 2]],
        np.asarray(TEMPS)[[1, 3, 0]], np.asarray(TEMPS)[[3, 0, 2]]), rtol=1e-6)


def test_exchange_never_pairs_a_chain_with_itself():
    n, draws = 6, 2000
    keys = jax.random.split(jax.random.key(1), draws)

    def one(key, parity):
        k_s, k_t, k_x = jax.random.split(key, 3)
        score = jax.random.normal(k_s, (n,))
        temps = jnp.exp(jax.random.normal(k_t, (n,)))
        return replica_exchange(k_x, jnp.arange(n, dtype=jnp.float32)[:, None], score, temps, parity), temps

    exchange = jax.jit(jax.vmap(one, in_axes=(0, None)))
    for parity in (0, 1):
        ex, temps = exchange(keys, parity)
        source, swapped = np.asarray(ex.source), np.asarray(ex.swapped)
        rank = np.argsort(np.argsort(np.asarray(temps), axis=1), axis=1)
        moved = source != np.arange(n)
        assert np.all(moved.sum(1) == 2 * swapped.sum(1))  # each swap moves two different chains
        assert np.all(np.take_along_axis(source, source, axis=1) == np.arange(n))  # swaps are pairwise
        partner_rank = np.take_along_axis(rank, source, axis=1)
        assert np.all(np.abs(partner_rank - rank)[moved] == 1)  # only temperature neighbours
        assert np.all(np.minimum(partner_rank, rank)[moved] % 2 == parity)  # only pairs of this parity
        np.testing.assert_array_equal(np.asarray(ex.x)[..., 0], source)  # states travel with source
        # offered pairs swap at the rate of their probability (mean of Bernoulli(p_k), 4 sigma)
        p = np.asarray(ex.probability, np.float64)[np.asarray(ex.attempted)]
        rate = swapped[np.asarray(ex.attempted)].mean()
        assert abs(rate - p.mean()) < 4 * np.sqrt(np.sum(p * (1 - p))) / p.size, (rate, p.mean())
        assert 0.2 < rate < 0.9 and not swapped[~np.asarray(ex.attempted)].any()


def test_tell_swaps_states_not_temperatures_with_alternating_pairs():
    space = l2ljax.Space.from_template(jnp.zeros(2), lower=-100.0, upper=100.0)
    opt = ParallelTempering(space, n_parallel_runs=4, cooling_schedules="default",
                            temperature_bounds=[(1.0, 0.1), (2.0, 0.1), (4.0, 0.1), (8.0, 0.1)], decay_parameters=1.0)
    tell = jax.jit(opt.tell_flat)
    state = opt.init(jax.random.key(0))
    rejected = make_evaluation(jnp.full((4, 1), jnp.nan), (-1.0,))  # no Metropolis move: only swaps act
    # NaN from the start: nothing accepted, chains without a score never swap, nothing becomes NaN
    fresh = tell(tell(state, state.inner.chains.x + 1.0, rejected), state.inner.chains.x + 1.0, rejected)
    np.testing.assert_array_equal(fresh.inner.chains.x, state.inner.chains.x)
    assert np.all(np.isneginf(fresh.inner.chains.score)) and float(fresh.inner.swap_rate) == 0.0

    x = jnp.arange(8.0).reshape(4, 2)
    score = jnp.array([-30.0, -20.0, -10.0, 0.0])  # coldest chain holds the worst state
    state = state.replace(inner=state.inner._replace(chains=state.inner.chains._replace(x=x, score=score)))

    state = tell(state, x + 50.0, rejected)  # step 0: pairs (0, 1), (2, 3)
    np.testing.assert_array_equal(state.inner.source, [1, 0, 3, 2])
    np.testing.assert_array_equal(state.inner.chains.x, np.asarray(x)[[1, 0, 3, 2]])
    np.testing.assert_array_equal(state.inner.chains.score, [-20.0, -30.0, 0.0, -10.0])
    diag = opt.diagnostics(state)
    assert float(diag["swap_rate"]) == 1.0 and float(diag["acceptance_rate"]) == 0.0
    np.testing.assert_array_equal(diag["temperatures"], [1.0, 2.0, 4.0, 8.0])  # temperatures stay put

    state = tell(state, x + 50.0, rejected)  # step 1: pair (1, 2) only
    np.testing.assert_array_equal(state.inner.source, [0, 2, 1, 3])
    np.testing.assert_array_equal(state.inner.chains.x, np.asarray(x)[[1, 3, 0, 2]])
    np.testing.assert_array_equal(state.inner.chains.score, [-20.0, 0.0, -30.0, -10.0])
    np.testing.assert_array_equal(opt.diagnostics(state)["temperatures"], [1.0, 2.0, 4.0, 8.0])


def test_per_chain_schedules():
    schedules = ["default", "LINEAR_ADDAPTIVE", "trigonometric_additive", "logarithmic"]
    bounds = np.array([(1.0, 0.5), (2.0, 0.1), (3.0, 0.3), (4.0, 4.0)])
    decay = np.array([0.9, 0.0, 0.0, 2.0])
    opt = ParallelTempering(l2ljax.function_optimizee("ackley", 2), n_parallel_runs=4, cooling_schedules=schedules,
                            temperature_bounds=bounds, decay_parameters=decay, n_iteration=20)
    assert opt.cooling_schedules == ("default", "linear_additive", "trigonometric_additive", "logarithmic")
    for k in (0, 3, 20, 25):
        want = [simulated_annealing.temperature(s, k, b[0], b[1], d, 20)
                for s, b, d in zip(schedules, bounds, decay, strict=True)]
        np.testing.assert_array_equal(opt.temperatures(opt.default_params, k), want)


# ---------------------------------------------------------------------------
# Optimisation
# ---------------------------------------------------------------------------

RASTRIGIN = l2ljax.function_optimizee("rastrigin", 2)
ROSENBROCK = l2ljax.function_optimizee("rosenbrock", 2)
N_CHAINS, N_GEN = 16, 300
LADDER = np.geomspace(0.5, 10.0, N_CHAINS)


@functools.cache
def tempering(problem):  # one object per problem, so its compiled run is reused across tests
    return ParallelTempering(problem, n_parallel_runs=N_CHAINS, cooling_schedules="linear_additive",
                             temperature_bounds=np.stack([LADDER, LADDER / 100], axis=1), noisy_step=0.3,
                             n_iteration=N_GEN)


@pytest.mark.parametrize("problem, tol", [(RASTRIGIN, 0.02), (ROSENBROCK, 0.01)], ids=["rastrigin", "rosenbrock"])
def test_converges(problem, tol):
    pt = final_best(tempering(problem), problem, N_GEN, range(4))
    assert np.all(pt < tol), pt  # minimum 0


def test_beats_random_search_at_equal_budget():
    pt = final_best(tempering(RASTRIGIN), RASTRIGIN, N_GEN, range(4))
    rs = final_best(l2ljax.RandomSearch(RASTRIGIN, N_CHAINS), RASTRIGIN, N_GEN, range(4))  # 16 × 300 evaluations each
    assert np.all(pt < rs), (pt, rs)
    assert np.median(pt) < 0.05 * np.median(rs), (pt, rs)


def test_run_swaps_keeps_temperatures_ordered_scan_equals_host_reproducible():
    opt = tempering(RASTRIGIN)
    scan = l2ljax.run(opt, RASTRIGIN, jax.random.key(3), N_GEN)
    host = l2ljax.run(opt, RASTRIGIN, jax.random.key(3), N_GEN, chunk_size=1)
    again = l2ljax.run(opt, RASTRIGIN, jax.random.key(3), N_GEN)
    other = l2ljax.run(opt, RASTRIGIN, jax.random.key(4), N_GEN)
    t = scan.trajectory
    assert_same_trajectory(t, host.trajectory)
    assert_same_trajectory(t, again.trajectory)
    assert_states_equal(scan.state, host.state)
    assert not np.array_equal(t["population"], other.trajectory["population"])

    temps = t["diag/temperatures"]  # (generations, chains): acceptance temperatures T_i(g + 1)
    assert temps.shape == (N_GEN, N_CHAINS)
    assert np.all(np.diff(temps, axis=1) > 0)  # the ladder stays ordered in every generation
    want = [simulated_annealing.temperature("linear_additive", g + 1, LADDER, LADDER / 100, 1.0, N_GEN)
            for g in range(0, N_GEN, 50)]
    np.testing.assert_allclose(temps[::50], want, rtol=1e-6)
    np.testing.assert_allclose(t["diag/temperature_mean"], temps.mean(1), rtol=1e-6)
    np.testing.assert_array_equal(t["diag/temperature_min"], temps.min(1))
    np.testing.assert_array_equal(t["diag/temperature_max"], temps.max(1))
    assert 0.1 < t["diag/swap_rate"].mean() < 0.9
    assert 0.05 < t["diag/acceptance_rate"].mean() < 0.95
    # the coldest chain ends on a good state that reached it by swaps
    inner = scan.state.inner
    assert -inner.chains.score[0] < 0.05


def test_nan_fitness_never_accepted_state_stays_finite():
    def fn(x, key):  # sphere, NaN for x[0] > 0.5
        return jnp.where(x[0] > 0.5, jnp.nan, jnp.sum(x**2))

    problem = Optimizee.create(fn, jnp.zeros(2), lower=-2.0, upper=2.0)
    opt = ParallelTempering(problem, n_parallel_runs=6, temperature_bounds=[(t, t / 10) for t in (1, 2, 4, 8, 16, 32)],
                            decay_parameters=0.95, noisy_step=0.2)
    result = l2ljax.run(opt, problem, jax.random.key(0), 40)
    chains = result.state.inner.chains
    assert np.isnan(result.trajectory["fitness"]).any()  # the NaN region was proposed
    assert np.all(np.isfinite(chains.x)) and np.all(np.isfinite(chains.score))
    assert np.all(np.asarray(chains.x)[:, 0] <= 0.5)  # no chain holds a NaN point, swapped or not
    np.testing.assert_allclose(chains.score, -np.sum(np.asarray(chains.x) ** 2, axis=1), rtol=1e-6)
    assert np.all(np.isfinite(result.trajectory["diag/swap_rate"]))
    assert result.best[0] <= 0.5 and result.best_score > -0.2  # and it still optimises


# ---------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------

ACKLEY = l2ljax.function_optimizee("ackley", 2)
GOOD = [(1.0, 0.1), (2.0, 0.2), (4.0, 0.4)]


@pytest.mark.parametrize("kwargs, match", [
    ({"n_parallel_runs": 1}, "n_parallel_runs must be at least 2"),
    ({"n_parallel_runs": 0}, "n_parallel_runs must be a positive integer"),
    ({"cooling_schedules": ["default", "warm", "default"]}, "unknown cooling schedule 'warm'"),
    ({"cooling_schedules": ["default", "default"]}, "cooling_schedules has 2 entries for 3 parallel runs"),
    ({"temperature_bounds": GOOD[:2]}, r"temperature_bounds must have shape \(3, 2\)"),
    ({"decay_parameters": [0.9, 0.9]}, "decay_parameters must have one entry per chain"),
    ({"temperature_bounds": [(1.0, 0.1), (0.5, 2.0), (4.0, 0.4)]}, r"temperature_bounds\[1\] .* 0 < T_end <= T0"),
    ({"temperature_bounds": [(1.0, 0.0), (2.0, 0.2), (4.0, 0.4)]}, r"temperature_bounds\[0\] .* 0 < T_end <= T0"),
    ({"temperature_bounds": [(1.0, 0.1), (2.0, 0.2), (-4.0, -8.0)]}, r"temperature_bounds\[2\]"),
    ({"decay_parameters": [0.9, 1.5, 0.9]}, r"chain 1: the decay of the 'default' schedule must lie in \(0, 1\]"),
    ({"cooling_schedules": "linear_additive"}, "linear_additive needs n_iteration"),
    ({"cooling_schedules": "exponential_additive", "n_iteration": 10}, r"chain 0: .*T0 - Tn > 1"),
    ({"noisy_step": 0.0}, "noisy_step must be > 0"),
])
def test_bad_input_named(kwargs, match):
    kwargs = {"n_parallel_runs": 3, "temperature_bounds": GOOD, **kwargs}
    with pytest.raises(ValueError, match=match):
        ParallelTempering(ACKLEY, **kwargs)


def test_bad_params_at_init():
    opt = ParallelTempering(ACKLEY, n_parallel_runs=3, temperature_bounds=GOOD)
    with pytest.raises(ValueError, match=r"temperature_bounds must have shape \(3, 2\)"):
        opt.init(jax.random.key(0), opt.default_params.replace(temperature_bounds=jnp.ones((4, 2))))
    with pytest.raises(ValueError, match="decay_parameters"):
        opt.init(jax.random.key(0), opt.default_params.replace(decay_parameters=jnp.full(3, 0.0)))
    with pytest.raises(ValueError, match="temperature_bounds and decay_parameters are required"):
        opt.init(jax.random.key(0), ParallelTempering.Params())
