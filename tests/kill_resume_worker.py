"""Runs optimizer cases into run directories, each resumed from whatever a killed process left
there; ``test_kill_resume.py`` SIGKILLs the process at random instants and compares the results.

The test starts these functions in children of a fork server that has imported JAX and l2ljax
but started no backend (so forking it is safe): a kill then costs a fork and a compilation, not
a Python start and a JAX import (seconds on a loaded machine). The test points JAX's persistent
compilation cache (``JAX_COMPILATION_CACHE_DIR``) at a folder of its own, which the uninterrupted
reference runs fill first, so that a restarted process loads its programs instead of compiling.
"""

from pathlib import Path

import jax
from optimizer_cases import CASES, problem, problems

import l2ljax

DONE = "done"  # beside the run directories: a run directory holds only its run's files


def case_run(name: str, directory: Path, n_generations: int, chunk_size: int) -> l2ljax.RunResult:
    """Case ``name`` of ``optimizer_cases.CASES`` on the first problem of its kind, written to
    ``directory`` and resumed from it if a run is there (``resume=True`` starts an empty one)."""
    make, kind = CASES[name]
    optimizee = problem(kind, problems(kind)[0])
    return l2ljax.run(make(optimizee), optimizee, jax.random.key(7), n_generations, directory=directory,
                      resume=True, chunk_size=chunk_size)


def run_cases(names: list[str], root: Path, n_generations: int, chunk_size: int) -> None:
    """Every case of ``names`` not yet done, in order, into ``root/<name>``; marks each done."""
    (root / DONE).mkdir(parents=True, exist_ok=True)
    for name in names:
        if not (root / DONE / name).exists():
            case_run(name, root / name, n_generations, chunk_size)
            (root / DONE / name).touch()
