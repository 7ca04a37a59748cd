"""GeneticAlgorithm: convergence, DEAP operator semantics, hall of fame, NaN safety, multi-objective.

Compilation dominates the run time of these tests on CPU, so runs share optimizer objects and
shapes (XLA caches the compiled program) and operator tests share jitted functions.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import assert_same_trajectory, assert_states_equal

import l2ljax
from l2ljax.core import make_evaluation
from l2ljax.optimizers.genetic import (
    GeneticAlgorithm,
    GeneticAlgorithmParams,
    _mutate_duplicates,
    blend_crossover,
    duplicate_rows,
    fitness_levels,
    gaussian_mutation,
    lexicographic_order,
    tournament_selection,
)

N_GEN = 40
POP = 50


# --------------------------------------------------------------------------- shared runs


@functools.cache
def rastrigin_setup():
    problem = l2ljax.function_optimizee("rastrigin", 2)
    return problem, GeneticAlgorithm(problem, pop_size=POP, tourn_size=3)


@functools.cache
def rastrigin_run(seed: int, chunk_size: int | None = None) -> l2ljax.RunResult:
    problem, opt = rastrigin_setup()
    return l2ljax.run(opt, problem, jax.random.key(seed), N_GEN, chunk_size=chunk_size)


@functools.cache
def random_search(problem: l2ljax.Optimizee) -> l2ljax.RandomSearch:
    return l2ljax.RandomSearch(problem, POP)


def random_search_best(problem: l2ljax.Optimizee, seed: int) -> float:
    return -l2ljax.run(random_search(problem), problem, jax.random.key(seed), N_GEN).best_score


# --------------------------------------------------------------------------- convergence


def test_rastrigin_2d_converges():
    """L2L's example parameters (cx 0.5, mut 0.3, ind 0.02, α 0.5, σ 1), tournaments of 3."""
    for seed in range(3):
        result = rastrigin_run(seed)
        best = -result.best_score
        assert best < 1e-2, (seed, best)  # global basin: the next local minimum is 0.995
        assert np.linalg.norm(np.asarray(result.best)) < 1e-2


def test_ackley_10d_converges_and_beats_random_search():
    problem = l2ljax.function_optimizee("ackley", 10)
    opt = GeneticAlgorithm(problem, pop_size=POP, tourn_size=3)
    params = GeneticAlgorithmParams(cx_prob=0.7, mut_prob=0.3, ind_prob=0.1, mate_par=0.5, mut_par=0.1)
    for seed in range(3):
        best = -l2ljax.run(opt, problem, jax.random.key(seed), N_GEN, params=params).best_score
        rs = random_search_best(problem, seed)
        assert best < 0.1, (seed, best)
        assert rs > 2.5 and best < rs / 20, (seed, best, rs)  # same budget: 40 × 50 evaluations


# --------------------------------------------------------------------------- run mechanics


def test_scan_equals_host_loop():
    scan, host = rastrigin_run(0), rastrigin_run(0, chunk_size=1)
    assert_same_trajectory(scan.trajectory, host.trajectory)
    assert_states_equal(scan.state, host.state)


def test_reproducible():
    problem, opt = rastrigin_setup()
    again = l2ljax.run(opt, problem, jax.random.key(0), N_GEN)
    np.testing.assert_array_equal(again.trajectory["population"], rastrigin_run(0).trajectory["population"])
    assert not np.array_equal(rastrigin_run(1).trajectory["population"], again.trajectory["population"])


def test_initial_population_is_x0_then_samples():
    problem, opt = rastrigin_setup()
    x0 = jnp.array([1.5, -2.5])
    population = opt.ask_flat(jax.random.key(1), opt.init(jax.random.key(0), x0=x0))
    assert population.shape == (POP, 2)
    np.testing.assert_array_equal(population[0], x0)
    assert np.all(population >= -5) and np.all(population <= 5)
    assert len(np.unique(np.asarray(population), axis=0)) == POP


def test_offspring_are_distinct_every_generation():
    """Tournaments with replacement copy parents; the duplicate step makes every row unique."""
    trajectory = rastrigin_run(0).trajectory
    for g, population in enumerate(trajectory["population"]):
        assert len(np.unique(population, axis=0)) == POP, g
    assert trajectory["diag/n_duplicates"].sum() > 0  # the step had work to do


def test_hall_of_fame_single_objective_matches_best_score():
    problem, opt = rastrigin_setup()
    result = rastrigin_run(0)
    individuals, weighted = opt.hall_of_fame(result.state)
    assert individuals.shape == (20, 2) and weighted.shape == (20, 1)
    assert float(weighted[0, 0]) == result.best_score
    np.testing.assert_array_equal(individuals[0], result.state.best_x)
    assert np.all(np.diff(np.asarray(weighted[:, 0])) <= 0)


# --------------------------------------------------------------------------- hall of fame, NaN, two objectives


def _toy(x, key):
    """Two objectives, weights (1, −1): maximise floor(x₀) (many ties), then minimise (x₁ − ½)².
    NaN for x₁ < −1: a quarter of the box."""
    f1 = jnp.floor(x[0])
    f2 = jnp.square(x[1] - 0.5)
    return jnp.where(x[1] < -1.0, jnp.nan, jnp.stack([f1, f2]))


def _lex_better_or_equal(a: np.ndarray, b: np.ndarray) -> bool:
    for x, y in zip(a, b, strict=True):
        if x != y:
            return bool(x > y)
    return True


def _reference_hall_of_fame(population: np.ndarray, weighted: np.ndarray, size: int):
    """numpy: first occurrence of each distinct valid individual, stable lexicographic sort, top ``size``."""
    x, w = population.reshape(-1, population.shape[-1]), weighted.reshape(-1, weighted.shape[-1])
    keep, seen = [], set()
    for i in range(len(x)):
        if np.all(np.isfinite(w[i])) and x[i].tobytes() not in seen:
            seen.add(x[i].tobytes())
            keep.append(i)
    keep = np.asarray(keep)
    order = np.lexsort(tuple(-w[keep, k] for k in reversed(range(w.shape[1]))))
    top = keep[order[:size]]
    return x[top], w[top]


def test_hall_of_fame_two_objectives_with_nan():
    weights = np.array([1.0, -1.0], np.float32)
    problem = l2ljax.Optimizee.create(_toy, jnp.zeros(2), lower=-2.0, upper=2.0, weights=tuple(weights))
    opt = GeneticAlgorithm(problem, pop_size=16, tourn_size=2, hall_of_fame_size=8)
    assert opt.n_objectives == 2
    params = opt.default_params.replace(mut_prob=0.5, ind_prob=0.5, mut_par=0.5)
    result = l2ljax.run(opt, problem, jax.random.key(3), 12, params=params)
    t = result.trajectory
    weighted = t["fitness"] * weights  # (G, J, 2); NaN rows stay NaN
    assert np.isnan(weighted).any() and np.isfinite(weighted).all(axis=-1).any()
    hof_history = t["diag/hall_of_fame_weighted"]  # (G, 8, 2)

    for g in range(len(hof_history)):
        hof = hof_history[g]
        filled = np.isfinite(hof).all(axis=1)
        assert not np.isnan(hof).any()
        assert np.all(filled[:-1] >= filled[1:])  # empty slots (−inf) only at the end
        for k in range(int(filled.sum()) - 1):  # sorted, best first
            assert _lex_better_or_equal(hof[k], hof[k + 1])
        seen = weighted[:g + 1].reshape(-1, 2)
        seen = seen[np.isfinite(seen).all(axis=1)]
        best = seen[np.lexsort((-seen[:, 1], -seen[:, 0]))[0]]
        np.testing.assert_array_equal(hof[0], best)  # the best row ever is in it, first
        if g:
            for k in range(len(hof)):  # no slot ever gets worse
                assert _lex_better_or_equal(hof[k], hof_history[g - 1][k]), (g, k)

    individuals, hof_w = opt.hall_of_fame(result.state)
    ref_x, ref_w = _reference_hall_of_fame(t["population"], weighted, 8)
    np.testing.assert_array_equal(np.asarray(individuals), ref_x)
    np.testing.assert_array_equal(np.asarray(hof_w), ref_w)
    assert np.all(np.asarray(individuals)[:, 1] >= -1.0)  # no NaN individual ever entered
    for leaf in jax.tree_util.tree_leaves(result.state.inner[:-1]):
        assert not np.isnan(np.asarray(leaf)).any()
    assert np.isfinite(result.state.best_score)


def test_multi_parameter_set_individuals():
    """L2L MultiGA (n_inner_params): one individual = 4 parameter sets, evaluated by one vmapped
    inner function; fitness is the mean over the sets. Each set has its own optimum, so all four
    must be found by the GA acting on the stack as one genome."""
    targets = jnp.array([[-1.0, 0.5], [0.0, 1.0], [1.0, -0.5], [2.0, 0.0]])  # n_inner = 4, d = 2

    def fitness(individual, key):
        return jnp.mean(jax.vmap(lambda w, t: jnp.sum(jnp.square(w - t)))(individual["w"], targets))

    problem = l2ljax.Optimizee.create(fitness, {"w": jnp.zeros((4, 2))}, lower=-5.0, upper=5.0)
    opt = GeneticAlgorithm(problem, pop_size=POP, tourn_size=3)
    params = GeneticAlgorithmParams(cx_prob=0.7, mut_prob=0.3, ind_prob=0.1, mate_par=0.5, mut_par=0.1)
    result = l2ljax.run(opt, problem, jax.random.key(0), N_GEN, params=params)
    assert result.trajectory["population"].shape == (N_GEN, POP, 8)
    assert -result.best_score < 1e-3
    np.testing.assert_allclose(result.best["w"], targets, atol=0.05)
    individuals, _ = opt.hall_of_fame(result.state)
    assert individuals["w"].shape == (20, 4, 2)


# --------------------------------------------------------------------------- lexicographic comparison


def _numpy_order(w: np.ndarray) -> np.ndarray:
    valid = np.isfinite(w).all(axis=1)
    keys = [np.where(valid, -w[:, k], np.inf) for k in range(w.shape[1])]
    return np.lexsort(tuple(reversed(keys)))  # stable: ties keep index order


def test_lexicographic_order_matches_numpy():
    rng = np.random.default_rng(0)
    raw = rng.integers(0, 4, size=(64, 2)).astype(np.float32)  # many ties in both objectives
    raw[rng.choice(64, 8, replace=False), rng.integers(0, 2)] = np.nan
    weighted = np.asarray(make_evaluation(jnp.asarray(raw), (1.0, -1.0)).weighted)
    assert np.isneginf(weighted).any()
    order_and_levels = jax.jit(lambda w: (lexicographic_order(w), fitness_levels(w)))
    order, levels = map(np.asarray, order_and_levels(weighted))
    np.testing.assert_array_equal(order, _numpy_order(weighted))
    with_nan = np.where(np.isinf(weighted), np.nan, weighted)  # NaN rows rank like −inf rows: last
    np.testing.assert_array_equal(np.asarray(order_and_levels(with_nan)[0]), order)
    ranked = weighted[order]
    expected = np.concatenate([[0], np.cumsum(np.any(ranked[1:] != ranked[:-1], axis=1))])
    np.testing.assert_array_equal(levels[order], expected)
    # one objective: the order of the score
    score = rng.normal(size=(30, 1)).astype(np.float32)
    np.testing.assert_array_equal(np.asarray(jax.jit(lexicographic_order)(score)),
                                  np.argsort(-score[:, 0], kind="stable"))


# --------------------------------------------------------------------------- tournament selection


@functools.partial(jax.jit, static_argnums=(2, 3))
def _select(key, weighted, n, tourn_size):
    return tournament_selection(key, weighted, n, tourn_size)


def test_tournament_selection_pressure():
    j, n = 10, 20_000
    score = jnp.asarray(np.random.default_rng(1).permutation(j), jnp.float32)[:, None]  # distinct
    rank = np.argsort(np.argsort(-np.asarray(score[:, 0])))  # 0 = best

    counts = np.bincount(np.asarray(_select(jax.random.key(0), score, n, 1)), minlength=j)
    sd = np.sqrt(n * 0.1 * 0.9)
    assert np.all(np.abs(counts - n / j) < 5 * sd), counts  # tourn_size 1: uniform

    k = 3  # the winner has rank r with P = ((j−r)/j)^k − ((j−r−1)/j)^k (contestants drawn with replacement)
    winners = np.asarray(_select(jax.random.key(3), score, n, k))
    freq = np.bincount(rank[winners], minlength=j) / n
    r = np.arange(j)
    expected = ((j - r) / j) ** k - ((j - r - 1) / j) ** k
    assert np.all(np.abs(freq - expected) < 5 * np.sqrt(expected * (1 - expected) / n)), freq

    winners = np.asarray(_select(jax.random.key(9), score, 2000, 200))  # P(best absent) = 0.9^200
    assert np.all(rank[winners] == 0)


def test_tournament_nan_contestants_lose():
    j, n, k = 10, 20_000, 3
    fitness = jnp.full(j, jnp.nan).at[4].set(2.0)  # one valid individual among NaN
    weighted = make_evaluation(fitness, (-1.0,)).weighted
    winners = np.asarray(_select(jax.random.key(0), weighted, n, k))
    p_valid = 1 - 0.9 ** k  # it wins whenever it is drawn at least once
    assert abs(np.mean(winners == 4) - p_valid) < 5 * np.sqrt(p_valid * (1 - p_valid) / n)
    assert np.all(np.asarray(_select(jax.random.key(1), weighted, 2000, 200)) == 4)
    everything_nan = make_evaluation(jnp.full(j, jnp.nan), (-1.0,)).weighted  # all invalid: uniform
    winners = np.asarray(_select(jax.random.key(2), everything_nan, n, k))
    assert np.all((winners >= 0) & (winners < j)) and np.bincount(winners, minlength=j).min() > 0.8 * n / j


def test_tournament_is_lexicographic():
    # row 0 has the best first objective, row 1 the best sum (weights (1, −1) already applied)
    weighted = jnp.asarray([[3.0, -100.0], [2.0, 0.0], [3.0, -200.0], [1.0, 5.0]])
    assert np.all(np.asarray(_select(jax.random.key(0), weighted, 1000, 200)) == 0)


# --------------------------------------------------------------------------- crossover, mutation


@jax.jit
def _blend(key, x, alpha, cx_prob):
    return blend_crossover(key, x, alpha, cx_prob)


def test_blend_crossover():
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.uniform(-3, 3, size=(2001, 5)), jnp.float32)  # odd: the last row is not mated
    x1, x2 = np.asarray(x[0:2000:2]), np.asarray(x[1:2000:2])

    children = np.asarray(_blend(jax.random.key(0), x, 0.0, 1.0))  # α = 0: between the parents
    c1, c2 = children[0:2000:2], children[1:2000:2]
    lo, hi = np.minimum(x1, x2) - 1e-6, np.maximum(x1, x2) + 1e-6
    assert np.all((c1 >= lo) & (c1 <= hi) & (c2 >= lo) & (c2 <= hi))
    np.testing.assert_allclose(c1 + c2, x1 + x2, atol=1e-5)  # blend keeps the pair's mean
    np.testing.assert_array_equal(children[-1], np.asarray(x[-1]))

    alpha = 0.5  # γ = (c1 − x1)/(x2 − x1) ~ U[−α, 1 + α)
    children = np.asarray(_blend(jax.random.key(1), x, alpha, 1.0))
    gamma = ((children[0:2000:2] - x1) / (x2 - x1))[np.abs(x2 - x1) > 0.1]
    assert gamma.min() >= -alpha - 1e-4 and gamma.max() <= 1 + alpha + 1e-4
    assert abs(gamma.mean() - 0.5) < 0.02 and abs(gamma.var() - (1 + 2 * alpha) ** 2 / 12) < 0.02

    children = np.asarray(_blend(jax.random.key(2), x, alpha, 0.3))  # a pair is mated with p = 0.3
    mated = np.any(children[0:2000:2] != x1, axis=1)
    assert np.array_equal(mated, np.any(children[1:2000:2] != x2, axis=1))
    assert abs(mated.mean() - 0.3) < 5 * np.sqrt(0.3 * 0.7 / 1000)


def test_gaussian_mutation_rates():
    n, d, mut_prob, ind_prob, sigma = 4000, 10, 0.3, 0.2, 0.5
    x = jnp.zeros((n, d))
    y = np.asarray(jax.jit(gaussian_mutation)(jax.random.key(0), x, sigma, mut_prob, ind_prob))
    changed = y != 0
    p = mut_prob * ind_prob
    assert abs(changed.mean() - p) < 5 * np.sqrt(p * (1 - p) / (n * d))
    p_row = mut_prob * (1 - (1 - ind_prob) ** d)
    assert abs(changed.any(axis=1).mean() - p_row) < 5 * np.sqrt(p_row * (1 - p_row) / n)
    assert abs(y[changed].std() - sigma) < 0.03 and abs(y[changed].mean()) < 0.03


# --------------------------------------------------------------------------- duplicates


def test_duplicate_rows_matches_numpy():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 3, size=(200, 3)).astype(np.float32)  # 27 distinct rows: many duplicates
    x[5] = [-0.0, 1.0, 2.0]
    x[6] = [0.0, 1.0, 2.0]  # −0 == 0: a duplicate, as for DEAP's tuple comparison
    first = {}
    expected = np.zeros(len(x), bool)
    for i, row in enumerate(x + 0.0):
        expected[i] = row.tobytes() in first
        first.setdefault(row.tobytes(), i)
    dup = jax.jit(duplicate_rows)
    np.testing.assert_array_equal(np.asarray(dup(x, jnp.ones(len(x), bool))), expected)
    valid = rng.random(len(x)) < 0.5  # only valid rows count, as originals and as copies
    first, expected = set(), np.zeros(len(x), bool)
    for i, row in enumerate(x + 0.0):
        if valid[i]:
            expected[i] = row.tobytes() in first
            first.add(row.tobytes())
    np.testing.assert_array_equal(np.asarray(dup(x, jnp.asarray(valid))), expected)


def test_duplicates_at_the_bounds_are_moved():
    """Identical offspring in a corner of the box: all but the first move (even with
    ind_prob = 0: one gene is forced), and clipping cannot undo the move."""
    upper = jnp.array([1.0, 2.0, 3.0])
    x = jnp.tile(upper, (40, 1))
    clip = functools.partial(jnp.clip, min=-upper, max=upper)

    @jax.jit
    def step(key, x, ind_prob):
        return _mutate_duplicates(key, x, duplicate_rows(x), 0.3, ind_prob, clip)

    for ind_prob in (0.0, 0.5):
        y = np.asarray(step(jax.random.key(0), x, ind_prob))
        np.testing.assert_array_equal(y[0], upper)
        assert len(np.unique(y, axis=0)) == 40
        assert np.all(np.abs(y) <= np.asarray(upper))
        if ind_prob == 0.0:
            assert np.all(np.sum(y[1:] != upper, axis=1) == 1)


# --------------------------------------------------------------------------- input validation


def test_bad_input():
    problem, opt = rastrigin_setup()
    with pytest.raises(ValueError, match="pop_size"):
        GeneticAlgorithm(problem, pop_size=1)
    with pytest.raises(ValueError, match="tourn_size"):
        GeneticAlgorithm(problem, pop_size=10, tourn_size=0)
    with pytest.raises(ValueError, match="hall_of_fame_size"):
        GeneticAlgorithm(problem, pop_size=10, hall_of_fame_size=0)
    for name, value in [("cx_prob", 1.5), ("mut_prob", -0.1), ("ind_prob", 2.0), ("mut_par", -1.0),
                        ("mate_par", -0.5)]:
        with pytest.raises(ValueError, match=name):
            opt.init(jax.random.key(0), opt.default_params.replace(**{name: value}))
    state = opt.init(jax.random.key(0))
    two_objectives = make_evaluation(jnp.zeros((POP, 2)), (-1.0, 1.0))
    with pytest.raises(ValueError, match="n_objectives"):
        opt.tell_flat(state, opt.ask_flat(jax.random.key(1), state), two_objectives)
