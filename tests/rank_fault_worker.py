"""A run under ``mpirun -n 2`` in which rank 1 hangs in a callback or SIGKILLs itself at generation 3;
``test_rank_faults.py`` checks that the job ends, and how soon, and what it says.

    mpirun -n 2 python rank_fault_worker.py hang|kill
"""

import os
import signal
import sys
import time

import jax

import l2ljax
from l2ljax import parallel


def main(fault: str) -> None:
    scheme = parallel.MPI()
    problem = l2ljax.function_optimizee("rastrigin", dim=3)

    def faulty(record, state):
        if scheme.rank == 1 and int(record["generation"]) == 3:
            print(f"rank 1 {fault}s at {time.time():.3f}", file=sys.stderr, flush=True)
            if fault == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            time.sleep(3600)

    l2ljax.run(l2ljax.CrossEntropy(problem, pop_size=8), problem, jax.random.key(0), 10, parallel=scheme,
               callbacks=[faulty])
    print(f"rank {scheme.rank} finished", file=sys.stderr, flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
