"""A rank that hangs or dies ends the whole MPI job, soon, with a line that says what happened.

``rank_fault_worker.py`` under ``mpirun -n 2``: rank 1 hangs in a callback (the watchdog of
:mod:`l2ljax.run.watchdog` must abort the job ``L2LJAX_RANK_TIMEOUT`` seconds later, naming rank 1
and the phase), or SIGKILLs itself (mpich's ``mpirun`` ends the other rank at once). The times
are measured from the fault, which the worker stamps, to the end of ``mpirun``: the start (JAX
imported and a chunk compiled on each rank) is not what is judged.
"""

import re
import subprocess
import sys
import time
from pathlib import Path

from test_parallel import require_mpi, subprocess_env

WORKER = Path(__file__).with_name("rank_fault_worker.py")
TIMEOUT = 4


def run_fault(fault: str) -> tuple[subprocess.CompletedProcess, float]:
    """The job's outcome, and the seconds from rank 1's fault to the end of the job."""
    command = [require_mpi(), "-n", "2", sys.executable, str(WORKER), fault]
    done = subprocess.run(command, env=subprocess_env(L2LJAX_RANK_TIMEOUT=str(TIMEOUT)), capture_output=True,
                          text=True, timeout=300)
    ended = time.time()
    stamp = re.search(r"rank 1 \w+ at ([0-9.]+)", done.stderr)
    assert stamp, done.stdout[-2000:] + done.stderr[-2000:]
    return done, ended - float(stamp.group(1))


def test_a_rank_that_hangs_in_a_callback_aborts_the_job_naming_it():
    done, after = run_fault("hang")
    assert done.returncode != 0
    assert "rank 0 finished" not in done.stderr
    lines = [line for line in done.stderr.splitlines() if line.startswith("l2ljax: rank")]
    assert lines and lines[0].startswith("l2ljax: rank 1 of 2 is hung: writing the run directory and calling "
                                         "the callbacks has not returned after 4 s"), done.stderr[-2000:]
    assert "L2LJAX_RANK_TIMEOUT" in lines[0]
    assert TIMEOUT <= after < TIMEOUT + 5, after


def test_a_rank_killed_mid_run_ends_the_job_at_once():
    done, after = run_fault("kill")
    assert done.returncode != 0
    assert "rank 0 finished" not in done.stderr
    said = done.stdout + done.stderr  # mpirun reports on stdout, the watchdog on stderr
    assert "Killed (signal 9)" in said or "l2ljax: rank 0 of 2 waited" in said, said[-2000:]
    assert after < TIMEOUT + 5, after
