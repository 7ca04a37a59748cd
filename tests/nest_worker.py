"""Tunes the CI-size NEST structural-plasticity network with cross-entropy (3 generations of 6) and
prints the worker pids after each generation, for ``test_nest.py`` to kill, resume and compare::

    python nest_worker.py DIR N_GENERATIONS [--resume]
    mpirun -n 2 python nest_worker.py DIR N_GENERATIONS --mpi      # one worker per rank
"""

import sys

import jax
import numpy as np

import l2ljax
from l2ljax import parallel
from l2ljax.optimizees.nest import structural_plasticity_optimizee


def main(directory: str, n_generations: int, flags: list[str]) -> None:
    scheme = parallel.MPI() if "--mpi" in flags else None
    problem = structural_plasticity_optimizee(n_workers=1 if scheme else 2, spares=0)
    opt = l2ljax.CrossEntropy(problem, pop_size=6, init_std=2.0)
    x0 = {name: np.float32(value) for name, value in problem.info["x0"].items()}

    def report(record, state):
        print("generation", int(record["generation"]), *problem.fn.pool.pids(), flush=True)

    l2ljax.run(opt, problem, jax.random.key(3), n_generations, x0=x0, directory=directory,
               resume="--resume" in flags, chunk_size=1, callbacks=[report], parallel=scheme)
    problem.fn.pool.close()


if __name__ == "__main__":  # workers start with spawn and re-import this module
    main(sys.argv[1], int(sys.argv[2]), sys.argv[3:])
