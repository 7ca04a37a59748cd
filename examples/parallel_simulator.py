"""L2L's use case on MPI ranks: tune a simulator that is not JAX code, each rank simulating its share.

    mpirun -n 4 python -m mpi4py examples/parallel_simulator.py     # or: srun -n 4 python -m mpi4py ...
    python examples/parallel_simulator.py                            # one process, same numbers

The simulator (numpy, a Python loop over time, as external simulators are) is a damped driven
oscillator; CE searches the damping and drive frequency that put its response amplitude at a
target. ``parallel.auto()`` picks MPI when launched as several ranks; only rank 0 writes
a new ``runs/parallel-simulator-<UTC time>`` (``--resume DIR`` continues one) and prints.
"""

import argparse
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import l2ljax
from l2ljax import parallel
from l2ljax.cli import new_run_dir

TARGET_AMPLITUDE = 2.0


def simulate(population: np.ndarray, seed: int) -> np.ndarray:
    """Squared distance of each individual's steady amplitude to the target; rows = (damping, frequency)."""
    dt, steps = 0.01, 3000
    distances = []
    for damping, frequency in population:
        x = v = amplitude = 0.0
        for step in range(steps):
            v += dt * (-damping * v - x + np.cos(frequency * step * dt))
            x += dt * v
            if step > steps // 2:
                amplitude = max(amplitude, abs(x))
        distances.append((amplitude - TARGET_AMPLITUDE) ** 2)
    return np.asarray(distances)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--resume", metavar="RUN_DIR", help="continue this run instead of starting a new one")
    args = parser.parse_args()
    scheme = parallel.auto()
    directory = Path(args.resume) if args.resume else new_run_dir("parallel-simulator", scheme)
    problem = l2ljax.Optimizee.create(simulate, jnp.zeros(2), lower=jnp.array([0.05, 0.2]),
                                      upper=jnp.array([2.0, 3.0]), jittable=False, name="oscillator")
    opt = l2ljax.CrossEntropy(problem, pop_size=16)
    result = l2ljax.run(opt, problem, jax.random.key(0), 15, parallel=scheme, progress=True,
                        directory=directory, resume=bool(args.resume))
    if scheme is None or scheme.is_writer:
        print(f"results in {directory} (continue with --resume {directory})")
        damping, frequency = np.asarray(result.best)
        print(f"{scheme or 'one process'}: damping {damping:.3f}, frequency {frequency:.3f}, "
              f"distance² {float(result.best_fitness[0]):.2e}")


if __name__ == "__main__":
    main()
