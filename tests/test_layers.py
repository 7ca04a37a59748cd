"""The run layer's parts alone: immutable configurations, caches that free what they compiled,
the single-process coordinator, the program and the run directory."""

import gc
import weakref

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import l2ljax
from l2ljax.core import Optimizee
from l2ljax.parallel import Coordinator, SingleProcess, coordinator
from l2ljax.run import Program, RunDirectory
from l2ljax.run.directory import RunDirectoryLocked

PROBLEM = l2ljax.function_optimizee("rastrigin", 2)


def test_optimizers_and_distributions_are_immutable_and_replace_makes_new_ones():
    opt = l2ljax.CrossEntropy(PROBLEM, pop_size=8, distribution=l2ljax.NoisyGaussian())
    first = l2ljax.run(opt, PROBLEM, jax.random.key(0), 2)
    with pytest.raises(AttributeError, match=r"immutable.*replace\(pop_size=\.\.\.\)"):
        opt.pop_size = 16
    with pytest.raises(AttributeError, match="immutable"):
        opt.distribution.noise_decay = 0.5
    bigger = opt.replace(pop_size=16)
    assert (bigger.pop_size, opt.pop_size) == (16, 8) and bigger.distribution is opt.distribution
    assert l2ljax.run(bigger, PROBLEM, jax.random.key(0), 2).trajectory["score"].shape == (2, 16)
    assert first.trajectory["score"].shape == (2, 8)
    with pytest.raises(TypeError, match="no argument"):
        opt.replace(popsize=3)


def test_replace_keeps_positional_and_keyword_arguments():
    ga = l2ljax.GeneticAlgorithm(PROBLEM, 10, tourn_size=2)
    other = ga.replace(hall_of_fame_size=3)
    assert (other.pop_size, other.tourn_size, other.hall_of_fame_size) == (10, 2, 3)


def test_a_dropped_optimizee_frees_its_arrays_and_programs():
    """Compiled programs are cached on the optimizee: dropping it drops them and what they captured."""

    def make():
        table = jnp.arange(4096.0)  # a "dataset" the fitness closes over

        def fn(x, key):
            return jnp.sum(jnp.square(x)) + table[0]

        problem = Optimizee.create(fn, jnp.zeros(2), lower=-1.0, upper=1.0)
        opt = l2ljax.RandomSearch(problem, pop_size=4)
        l2ljax.run(opt, problem, jax.random.key(0), 2)
        l2ljax.run_many(opt, problem, jax.random.split(jax.random.key(0), 2), 2)
        return weakref.ref(table), weakref.ref(problem)

    table, problem = make()
    gc.collect()
    assert problem() is None and table() is None


def test_the_cache_of_an_optimizee_is_bounded_and_keyed_by_configuration():
    from l2ljax.run.program import _CACHE_SIZE, compiled_chunk

    problem = l2ljax.function_optimizee("ackley", 2)
    opts = [l2ljax.RandomSearch(problem, pop_size=n) for n in range(1, _CACHE_SIZE + 3)]
    chunks = [compiled_chunk(opt, problem, "summary", False) for opt in opts]
    assert compiled_chunk(opts[-1], problem, "summary", False) is chunks[-1]
    assert len(problem.__dict__["_compiled_programs"]) == _CACHE_SIZE


def test_single_process_coordinator_is_the_identity_and_raises_at_once():
    single = coordinator(None)
    assert isinstance(single, SingleProcess) and isinstance(single, Coordinator)
    assert single == SingleProcess() and hash(single) == hash(SingleProcess()) and single.is_writer
    rows = jnp.arange(6.0).reshape(3, 2)
    np.testing.assert_array_equal(single.map_rows(lambda r: r * 2, rows), rows * 2)
    assert single.map_rows_host(lambda r, seed, first: (seed, first), rows, 7) == (7, 0)
    assert single.agree(3) == 3 and single.settle(True, None) is True
    with pytest.raises(OSError, match="disk"):
        single.settle(False, OSError("disk full"))


def test_program_advances_by_chunks_and_stops_at_the_criterion():
    opt = l2ljax.CrossEntropy(PROBLEM, pop_size=16, distribution=l2ljax.NoisyGaussian())
    state = opt.init(jax.random.key(0))
    program = Program.build(opt, PROBLEM, "individuals", 4, -1e9, None)
    with pytest.raises(ValueError, match="NaN"):
        Program.build(opt, PROBLEM, "individuals", 4, float("nan"), None)
    with pytest.raises(ValueError, match="record level"):
        Program.build(opt, PROBLEM, "everything", 4, None, None)
    state, records, stopped = program.advance(state, jax.random.key(1), 0, 10)
    assert records["generation"].tolist() == [0] and stopped  # any finite score beats -1e9
    program = Program.build(opt, PROBLEM, "individuals", 4, None, None)
    state, records, stopped = program.advance(state, jax.random.key(1), 8, 10)
    assert records["generation"].tolist() == [1, 2] and not stopped  # a shorter last chunk


def test_run_directory_refuses_to_overwrite_and_resumes(tmp_path):
    opt = l2ljax.RandomSearch(PROBLEM, pop_size=4)
    state = opt.init(jax.random.key(0))
    meta = {"optimizer": opt.config(), "optimizee": {"name": "x"}, "record": "individuals", "params": {}}
    single = SingleProcess()
    rundir = RunDirectory.open(tmp_path, meta, state, jax.random.key(1), resume=False, explicit_params=None,
                               n_generations=5, parallel=single)
    records = {"generation": np.arange(2), "best_score": np.zeros(2)}
    rundir.write(records, state.replace(generation=jnp.asarray(2, state.generation.dtype)), jax.random.key(1), 2)
    with pytest.raises(RunDirectoryLocked, match="being written by another run"):  # a second writer
        RunDirectory.open(tmp_path, meta, state, jax.random.key(1), resume=True, explicit_params=None,
                          n_generations=5, parallel=single)
    rundir.close()
    with pytest.raises(FileExistsError, match="resume=True"):
        RunDirectory.open(tmp_path, meta, state, jax.random.key(1), resume=False, explicit_params=None,
                          n_generations=5, parallel=single)
    resumed = RunDirectory.open(tmp_path, meta, state, jax.random.key(1), resume=True, explicit_params=None,
                                n_generations=5, parallel=single)
    assert resumed.generation == 2 and resumed.trajectory()["generation"].tolist() == [0, 1]
    resumed.close()
    with pytest.raises(ValueError, match="optimizer differs"):
        RunDirectory.open(tmp_path, {**meta, "optimizer": {"name": "other"}}, state, jax.random.key(1), resume=True,
                          explicit_params=None, n_generations=5, parallel=single)
    with pytest.raises(ValueError, match="more than the n_generations=1"):
        RunDirectory.open(tmp_path, meta, state, jax.random.key(1), resume=True, explicit_params=None,
                          n_generations=1, parallel=single)


@pytest.mark.parametrize("make", [lambda p: l2ljax.CMAES(p, pop_size=6),
                                  lambda p: l2ljax.NaturalEvolutionStrategies(p, pop_size=6)], ids=["CMAES", "NES"])
def test_rates_left_to_their_defaults_are_complete_in_the_state(make):
    """Params() leaves dimension-dependent rates None; init fills them, so a state's params are
    complete (vmappable, schedulable) and equal those of default_params."""
    import dataclasses

    opt = make(PROBLEM)
    state = opt.init(jax.random.key(0), opt.Params())
    for field in dataclasses.fields(state.params):
        assert getattr(state.params, field.name) == np.float32(getattr(opt.default_params, field.name))
