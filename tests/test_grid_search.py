"""GridSearch walks grids far beyond int32 indices exactly, and refuses grids beyond 64-bit ones by name."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import l2ljax
from l2ljax.optimizers.search import GridState


def sphere(dim: int) -> l2ljax.Optimizee:
    return l2ljax.Optimizee.create(lambda x, key: jnp.sum(x ** 2), jnp.zeros(dim), lower=-2.0, upper=3.0,
                                   weights=(-1.0,))


def numpy_points(index: np.ndarray, n_steps: int, dim: int) -> np.ndarray:
    digits = np.stack(np.unravel_index(np.minimum(index, (n_steps + 1) ** dim - 1), (n_steps + 1,) * dim), -1)
    return -2.0 + 5.0 * digits / n_steps


def test_a_grid_of_2_6e10_points_is_walked_in_slices():
    opt = l2ljax.GridSearch(sphere(5), n_steps=120, pop_size=1000)  # 121**5 = 2.59e10 points > 2**31
    assert opt.grid_size == 121 ** 5 and opt.n_generations == -(-121 ** 5 // 1000)
    state = opt.init(jax.random.key(0))
    for start in (0, 3_000_000_000, 121 ** 5 - 997):  # inside int32, beyond it, at the very end
        digits = np.stack(np.unravel_index(start, (121,) * 5), -1).astype(np.int32)
        state = state.replace(inner=GridState(jnp.asarray(digits), jnp.array(False)))
        points = np.asarray(opt.ask(jax.random.key(1), state))
        np.testing.assert_allclose(points, numpy_points(start + np.arange(1000), 120, 5), rtol=1e-6, atol=1e-6)
        evaluation = sphere(5).evaluate(jax.random.key(2), points)
        told = opt.tell(state, points, evaluation)
        if start + 1000 < 121 ** 5:
            np.testing.assert_array_equal(np.asarray(told.inner.digits),
                                          np.stack(np.unravel_index(start + 1000, (121,) * 5), -1))
        assert bool(told.inner.exhausted) == (start + 1000 >= 121 ** 5)


def test_a_whole_small_grid_matches_numpy_and_repeats_its_last_point():
    problem = sphere(2)
    opt = l2ljax.GridSearch(problem, n_steps=4, pop_size=7)  # 25 points in 4 slices
    result = l2ljax.run(opt, problem, jax.random.key(0), opt.n_generations)
    walked = result.trajectory["population"].reshape(-1, 2)
    np.testing.assert_allclose(walked, numpy_points(np.arange(28), 4, 2), rtol=1e-6)
    assert float(result.best_fitness[0]) == 0.5  # the grid point nearest the origin: (0.5, 0.5)


def test_grids_beyond_64_bit_indices_and_huge_single_slices_are_refused():
    with pytest.raises(ValueError, match="more than 64-bit indices"):
        l2ljax.GridSearch(sphere(10), n_steps=2**20, pop_size=100)
    with pytest.raises(ValueError, match="give pop_size"):
        l2ljax.GridSearch(sphere(5), n_steps=120)
