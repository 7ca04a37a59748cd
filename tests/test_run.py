"""run(): scan path == host loop, resume == uninterrupted, trajectories on disk, stopping, callbacks."""

import glob
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import assert_same_trajectory, assert_states_equal

import l2ljax
from l2ljax import trajectory
from l2ljax.core import Optimizee

PROBLEM = l2ljax.function_optimizee("rastrigin", 2)


def optimizers():
    return [
        l2ljax.CrossEntropy(PROBLEM, pop_size=16, distribution=l2ljax.NoisyGaussian()),
        l2ljax.EvolutionStrategies(PROBLEM, pop_size=8),
        l2ljax.RandomSearch(PROBLEM, pop_size=8),
    ]


@pytest.mark.parametrize("opt", optimizers(), ids=lambda o: o.name)
def test_scan_path_equals_host_loop(opt):
    scan = l2ljax.run(opt, PROBLEM, jax.random.key(7), 12)
    host = l2ljax.run(opt, PROBLEM, jax.random.key(7), 12, chunk_size=1)
    chunked = l2ljax.run(opt, PROBLEM, jax.random.key(7), 12, chunk_size=5)
    assert_same_trajectory(scan.trajectory, host.trajectory)
    assert_same_trajectory(scan.trajectory, chunked.trajectory)
    np.testing.assert_array_equal(scan.state.best_x, host.state.best_x)


def test_a_shorter_last_chunk_reuses_the_compiled_chunk():
    from l2ljax.run.program import compiled_chunk

    opt = l2ljax.CrossEntropy(PROBLEM, pop_size=9)
    result = l2ljax.run(opt, PROBLEM, jax.random.key(7), 12, chunk_size=5)  # chunks of 5, 5 and 2
    assert result.generations == 12 and result.trajectory["generation"].tolist() == list(range(12))
    assert compiled_chunk(opt, PROBLEM, "population", False)._cache_size() == 1


def test_same_key_same_numbers_other_key_other_numbers():
    opt = optimizers()[0]
    a = l2ljax.run(opt, PROBLEM, jax.random.key(1), 5)
    b = l2ljax.run(opt, PROBLEM, jax.random.key(1), 5)
    c = l2ljax.run(opt, PROBLEM, jax.random.key(2), 5)
    assert_same_trajectory(a.trajectory, b.trajectory)
    assert not np.array_equal(a.trajectory["population"], c.trajectory["population"])


@pytest.mark.parametrize("opt", optimizers()[1:], ids=lambda o: o.name)
def test_run_many_is_run_key_by_key(opt):
    """One jitted vmap over a batch of keys; run i has run's numbers for keys[i]. Bitwise for these
    optimizers on CPU (others may differ in the last float32 bits: XLA rounds batched reductions its own way)."""
    kwargs = {"x0": jnp.array([1.5, -2.0])}
    if isinstance(opt, l2ljax.EvolutionStrategies):
        kwargs["params"] = opt.Params(noise_std=0.3)
    keys = jax.random.split(jax.random.key(5), 3)
    states = l2ljax.run_many(opt, PROBLEM, keys, 12, **kwargs)
    assert states.best_score.shape == (3,) and states.best_x.shape == (3, 2)
    for i in range(3):
        single = l2ljax.run(opt, PROBLEM, keys[i], 12, **kwargs).state
        assert_states_equal(jax.tree_util.tree_map(lambda leaf, i=i: leaf[i], states), single)
    assert len(set(np.asarray(states.best_score).tolist())) == 3  # the keys matter
    by_seed = l2ljax.run_many(opt, PROBLEM, jax.vmap(jax.random.key)(jnp.arange(2)), 12, **kwargs)
    assert by_seed.best_score[1] == l2ljax.run(opt, PROBLEM, jax.random.key(1), 12, **kwargs).best_score


def test_run_many_rejects_bad_input_by_name():
    opt = optimizers()[1]
    keys = jax.random.split(jax.random.key(0), 2)
    with pytest.raises(TypeError, match="batch of JAX PRNG keys"):
        l2ljax.run_many(opt, PROBLEM, jnp.arange(2), 3)
    with pytest.raises(TypeError, match="batch of JAX PRNG keys"):
        l2ljax.run_many(opt, PROBLEM, jax.random.key(0), 3)
    with pytest.raises(ValueError, match="n_generations"):
        l2ljax.run_many(opt, PROBLEM, keys, 0)
    with pytest.raises(ValueError, match="noise_std"):
        l2ljax.run_many(opt, PROBLEM, keys, 3, params=opt.default_params.replace(noise_std=-1.0))
    with pytest.raises(ValueError, match="x0 contains NaN"):
        l2ljax.run_many(opt, PROBLEM, keys, 3, x0=jnp.array([0.0, jnp.nan]))
    with pytest.raises(ValueError, match="x0 does not match"):
        l2ljax.run_many(opt, PROBLEM, keys, 3, x0=jnp.zeros(3))
    legacy = jax.random.key_data(keys)  # (2, 2) uint32: legacy keys are accepted, as by run
    np.testing.assert_array_equal(l2ljax.run_many(opt, PROBLEM, legacy, 3).best_score,
                                  l2ljax.run_many(opt, PROBLEM, keys, 3).best_score)


def test_trajectory_shapes_and_best_so_far():
    opt = optimizers()[0]
    result = l2ljax.run(opt, PROBLEM, jax.random.key(0), 10)
    t = result.trajectory
    assert t["population"].shape == (10, 16, 2)
    assert t["fitness"].shape == (10, 16, 1)
    np.testing.assert_array_equal(t["generation"], np.arange(10))
    assert np.all(np.diff(t["best_score"]) >= 0)
    np.testing.assert_allclose(t["best_score"], np.maximum.accumulate(t["score"].max(axis=1)))
    assert result.best_score == pytest.approx(-float(result.best_fitness[0]))
    assert result.best.shape == (2,)
    assert {"diag/gamma", "diag/temperature", "diag/mean_spread"} <= t.keys()


def test_trajectory_round_trip_through_numpy_only(tmp_path):
    opt = optimizers()[1]
    result = l2ljax.run(opt, PROBLEM, jax.random.key(0), 9, directory=tmp_path, chunk_size=4)
    files = sorted(glob.glob(str(tmp_path / "trajectory" / "chunk_*.npz")))
    assert len(files) == 3
    fitness = np.concatenate([np.load(f)["fitness"] for f in files])
    np.testing.assert_array_equal(fitness, result.trajectory["fitness"])
    assert_same_trajectory(l2ljax.load_trajectory(tmp_path), result.trajectory)
    meta = json.loads((tmp_path / "meta.json").read_text())
    assert meta["optimizer"]["name"] == "EvolutionStrategies"
    assert meta["optimizee"]["name"] == "rastrigin-2d"
    assert not list(tmp_path.rglob("*.tmp"))


@pytest.mark.parametrize("opt", optimizers()[:2], ids=lambda o: o.name)
def test_resume_equals_uninterrupted(tmp_path, opt):
    full = l2ljax.run(opt, PROBLEM, jax.random.key(3), 12, directory=tmp_path / "full", chunk_size=3)
    part = l2ljax.run(opt, PROBLEM, jax.random.key(3), 7, directory=tmp_path / "part", chunk_size=3)
    assert part.generations == 7
    resumed = l2ljax.run(opt, PROBLEM, jax.random.key(3), 12, directory=tmp_path / "part", resume=True,
                         chunk_size=3)
    assert resumed.generations == 12
    assert_same_trajectory(full.trajectory, resumed.trajectory)
    assert_same_trajectory(l2ljax.load_trajectory(tmp_path / "part"), full.trajectory)
    np.testing.assert_array_equal(jax.tree_util.tree_leaves(full.state.inner)[0],
                                  jax.tree_util.tree_leaves(resumed.state.inner)[0])


def test_resume_drops_chunk_written_after_last_checkpoint(tmp_path):
    opt = optimizers()[0]
    full = l2ljax.run(opt, PROBLEM, jax.random.key(4), 6, directory=tmp_path / "full", chunk_size=2)
    l2ljax.run(opt, PROBLEM, jax.random.key(4), 4, directory=tmp_path / "crash", chunk_size=2)
    # A crash between writing a chunk and its checkpoint leaves a chunk the checkpoint does not cover.
    trajectory.write_chunk(tmp_path / "crash", 4, {"generation": np.array([99])})
    resumed = l2ljax.run(opt, PROBLEM, jax.random.key(4), 6, directory=tmp_path / "crash", resume=True,
                         chunk_size=2)
    assert_same_trajectory(full.trajectory, resumed.trajectory)


def test_existing_run_is_never_overwritten(tmp_path):
    opt = optimizers()[2]
    l2ljax.run(opt, PROBLEM, jax.random.key(0), 2, directory=tmp_path)
    with pytest.raises(FileExistsError, match="resume=True"):
        l2ljax.run(opt, PROBLEM, jax.random.key(0), 2, directory=tmp_path)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not empty"):
        l2ljax.run(opt, PROBLEM, jax.random.key(0), 2, directory=tmp_path / "other")


def test_resume_with_a_different_optimizer_is_refused(tmp_path):
    l2ljax.run(optimizers()[2], PROBLEM, jax.random.key(0), 2, directory=tmp_path)
    with pytest.raises(ValueError, match="optimizer differs"):
        l2ljax.run(optimizers()[1], PROBLEM, jax.random.key(0), 4, directory=tmp_path, resume=True)


def test_checkpoint_round_trip_restores_every_leaf(tmp_path):
    opt = optimizers()[0]
    state = opt.init(jax.random.key(0))
    state = state.replace(generation=jax.numpy.asarray(17, state.generation.dtype))
    l2ljax.save_checkpoint(tmp_path, state, jax.random.key(5), 17)
    restored, key, generation = l2ljax.load_checkpoint(tmp_path, opt.init(jax.random.key(1)))
    assert generation == 17
    np.testing.assert_array_equal(jax.random.key_data(key), jax.random.key_data(jax.random.key(5)))
    assert_states_equal(state, restored)


@pytest.mark.parametrize("chunk_size", [1, 50])
def test_stop_criterion_stops_at_the_same_generation_in_both_paths(chunk_size):
    opt = l2ljax.CrossEntropy(PROBLEM, pop_size=32, distribution=l2ljax.NoisyGaussian())
    result = l2ljax.run(opt, PROBLEM, jax.random.key(0), 50, stop_criterion=-1.0, chunk_size=chunk_size)
    assert result.stopped_early
    best = result.trajectory["best_score"]
    assert best[-1] >= -1.0 and np.all(best[:-1] < -1.0)
    assert result.generations == len(best) < 50


def test_callbacks_see_every_generation_and_can_stop():
    seen = []

    def callback(record, state):
        seen.append(int(record["generation"]))
        return record["generation"] == 3

    result = l2ljax.run(optimizers()[2], PROBLEM, jax.random.key(0), 10, callbacks=[callback])
    assert seen == [0, 1, 2, 3]
    assert result.generations == 4 and result.stopped_early


def test_progress_bar_writes_to_stderr(capsys):
    l2ljax.run(optimizers()[2], PROBLEM, jax.random.key(0), 5, progress=True)
    assert "5/5" in capsys.readouterr().err


def test_non_finite_fitness_never_becomes_best():
    def holey(x, key):
        return jnp.where(x[0] > 0, jnp.nan, jnp.sum(jnp.square(x)))

    problem = Optimizee.create(holey, jnp.zeros(2), lower=-3.0, upper=3.0)
    for opt in (l2ljax.CrossEntropy(problem, pop_size=20), l2ljax.EvolutionStrategies(problem, pop_size=10)):
        result = l2ljax.run(opt, problem, jax.random.key(0), 15)
        assert np.isfinite(result.best_score)
        assert result.best[0] <= 0
        assert all(np.all(np.isfinite(leaf)) for leaf in jax.tree_util.tree_leaves(result.state.inner)
                   if not jnp.issubdtype(leaf.dtype, jax.dtypes.prng_key))


def test_host_evaluated_optimizee_matches_jitted_one():
    def numpy_rastrigin(population, seed):
        x = np.asarray(population, np.float64)
        return 10 * x.shape[1] + np.sum(x**2 - 10 * np.cos(2 * np.pi * x), axis=1)

    host_problem = Optimizee(numpy_rastrigin, PROBLEM.space, name="numpy-rastrigin", jittable=False)
    opt = l2ljax.EvolutionStrategies(PROBLEM, pop_size=8)
    host = l2ljax.run(opt, host_problem, jax.random.key(0), 4)
    jitted = l2ljax.run(opt, PROBLEM, jax.random.key(0), 4)
    np.testing.assert_allclose(host.trajectory["fitness"], jitted.trajectory["fitness"], rtol=1e-4, atol=1e-4)


def test_grid_search_covers_the_grid_in_slices():
    opt = l2ljax.GridSearch(PROBLEM, n_steps=10, pop_size=32)
    assert opt.grid_size == 121 and opt.n_generations == 4
    result = l2ljax.run(opt, PROBLEM, jax.random.key(0), opt.n_generations)
    points = result.trajectory["population"].reshape(-1, 2)
    unique = np.unique(np.round(points, 5), axis=0)
    assert len(unique) == 121
    np.testing.assert_allclose(result.best, [0.0, 0.0], atol=1e-6)  # the grid holds the optimum
    assert result.best_fitness[0] == pytest.approx(0.0, abs=1e-5)


def test_summary_records_statistics_only_and_resumes(tmp_path):
    opt = l2ljax.EvolutionStrategies(PROBLEM, pop_size=8)
    full = l2ljax.run(opt, PROBLEM, jax.random.key(0), 6)
    summary = l2ljax.run(opt, PROBLEM, jax.random.key(0), 6, summary=True, directory=tmp_path / "s", chunk_size=2)
    t = summary.trajectory
    assert "population" not in t and "fitness" not in t and "best_x" not in t
    np.testing.assert_array_equal(t["best_score"], full.trajectory["best_score"])
    np.testing.assert_allclose(t["score_max"], full.trajectory["score"].max(axis=1))
    np.testing.assert_allclose(t["score_mean"], full.trajectory["score"].mean(axis=1), rtol=1e-6)
    assert np.all(t["n_failed"] == 0)
    with pytest.raises(ValueError, match="record differs"):
        l2ljax.run(opt, PROBLEM, jax.random.key(0), 8, directory=tmp_path / "s", resume=True)
    resumed = l2ljax.run(opt, PROBLEM, jax.random.key(0), 8, summary=True, directory=tmp_path / "s", resume=True)
    assert resumed.generations == 8 and len(resumed.trajectory["best_score"]) == 8


def test_run_interrupted_before_its_first_checkpoint_can_be_resumed(tmp_path):
    calls = {"n": 0}

    def flaky(population, seed):
        calls["n"] += 1
        if calls["n"] == 1:
            raise KeyboardInterrupt  # the user stops the run in its first generation
        return np.sum(np.asarray(population) ** 2, axis=1)

    problem = Optimizee(flaky, PROBLEM.space, name="flaky", jittable=False)
    opt = l2ljax.RandomSearch(PROBLEM, pop_size=4)
    with pytest.raises(KeyboardInterrupt):
        l2ljax.run(opt, problem, jax.random.key(0), 3, directory=tmp_path)
    assert not (tmp_path / "checkpoint.npz").exists()
    resumed = l2ljax.run(opt, problem, jax.random.key(0), 3, directory=tmp_path, resume=True)
    assert resumed.generations == 3


def test_stop_criterion_is_compared_in_float32_on_every_path():
    constant = Optimizee.create(lambda x, k: jnp.float32(0.1), jnp.zeros(2), lower=-1.0, upper=1.0, weights=(1.0,))
    opt = l2ljax.RandomSearch(constant, pop_size=4)
    generations = {chunk: l2ljax.run(opt, constant, jax.random.key(0), 20, stop_criterion=0.100000002,
                                     chunk_size=chunk).generations for chunk in (1, 5, 20)}
    assert generations == {1: 1, 5: 1, 20: 1}


def test_resume_keeps_the_prng_implementation(tmp_path):
    opt = optimizers()[0]
    key = jax.random.key(0, impl="rbg")
    full = l2ljax.run(opt, PROBLEM, key, 6, directory=tmp_path / "full", chunk_size=2)
    l2ljax.run(opt, PROBLEM, key, 4, directory=tmp_path / "part", chunk_size=2)
    resumed = l2ljax.run(opt, PROBLEM, key, 6, directory=tmp_path / "part", resume=True, chunk_size=2)
    assert_same_trajectory(full.trajectory, resumed.trajectory)


def test_resume_refuses_other_hyperparameters_and_fewer_generations(tmp_path):
    opt = optimizers()[1]
    params = opt.default_params.replace(learning_rate=0.05)
    l2ljax.run(opt, PROBLEM, jax.random.key(0), 4, params=params, directory=tmp_path)
    meta = json.loads((tmp_path / "meta.json").read_text())
    assert meta["params"][".learning_rate"] == pytest.approx(0.05)
    with pytest.raises(ValueError, match="other hyperparameters"):
        l2ljax.run(opt, PROBLEM, jax.random.key(0), 6, params=params.replace(learning_rate=1.0),
                   directory=tmp_path, resume=True)
    with pytest.raises(ValueError, match="more than the n_generations=2"):
        l2ljax.run(opt, PROBLEM, jax.random.key(0), 2, directory=tmp_path, resume=True)
    with pytest.raises(ValueError, match="needs the directory"):
        l2ljax.run(opt, PROBLEM, jax.random.key(0), 2, resume=True)
    assert l2ljax.run(opt, PROBLEM, jax.random.key(0), 6, params=params, directory=tmp_path,
                      resume=True).generations == 6


def test_best_fitness_is_not_taken_from_a_trajectory_that_misses_the_best():
    opt = optimizers()[0]
    first = l2ljax.run(opt, PROBLEM, jax.random.key(0), 30)
    more = l2ljax.run(opt, PROBLEM, jax.random.key(0), 31, state=first.state)
    if np.float32(more.trajectory["score"].max()) == np.float32(more.best_score):
        np.testing.assert_allclose(more.best_fitness, -more.best_score)
    else:
        assert np.isnan(more.best_fitness).all()


def test_a_batch_of_keys_is_a_named_error():
    with pytest.raises(TypeError, match="one PRNG key"):
        l2ljax.run(optimizers()[2], PROBLEM, jax.random.split(jax.random.key(0), 3), 2)


def test_a_paced_sub_chunk_keeps_only_the_records_of_the_generations_it_ran():
    """A sub-chunk of 1 generation out of a 50-generation program hands back 1 row that owns its
    memory: a view would keep the whole 50-row buffer (50 populations with keep_population)
    alive until the next save, as many times as there are sub-chunks."""
    from l2ljax.run import Program

    problem = l2ljax.function_optimizee("rastrigin", dim=3)
    opt = l2ljax.CrossEntropy(problem, pop_size=6)
    program = Program.build(opt, problem, "population", 50, None, None)
    state = opt.init(jax.random.key(0))
    state, records, _ = program.advance(state, jax.random.key(1), 0, 100, steps=1)

    def root(array: np.ndarray) -> np.ndarray:
        while isinstance(array.base, np.ndarray):
            array = array.base
        return array

    assert records["population"].shape == (1, 6, 3)
    for name, value in records.items():
        assert root(value).shape[0] == 1, name
    whole, all_records, _ = program.advance(opt.init(jax.random.key(0)), jax.random.key(1), 0, 100, steps=50)
    assert all_records["population"].shape == (50, 6, 3)
    np.testing.assert_array_equal(all_records["population"][:1], records["population"])
