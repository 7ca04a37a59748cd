"""Write tests/reference/trajectories.npz: every optimizer case's trajectory for fixed keys.

Run from the repository root (``PYTHONPATH=. python tests/reference/make_reference.py``) only to
record numbers on purpose; ``tests/test_reference.py`` then requires bit-identical runs. The
file was recorded before the run layer's refactor (issue #8); a later change of numbers must be
a documented bug fix.
"""

import sys
from pathlib import Path

import jax
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import optimizer_cases as cases  # noqa: E402

import l2ljax  # noqa: E402

GENERATIONS = 5
PATH = Path(__file__).with_name("trajectories.npz")


def record(case: str, problem_name: str) -> dict[str, np.ndarray]:
    """The trajectory and final state of one case on one problem, as flat numpy arrays."""
    make, kind = cases.CASES[case]
    problem = cases.problem(kind, problem_name)
    result = l2ljax.run(make(problem), problem, jax.random.key(42), GENERATIONS)
    arrays = {f"trajectory/{name}": value for name, value in result.trajectory.items()}
    for path, leaf in jax.tree_util.tree_flatten_with_path(result.state)[0]:
        if jax.numpy.issubdtype(leaf.dtype, jax.dtypes.prng_key):
            leaf = jax.random.key_data(leaf)
        arrays[f"state{jax.tree_util.keystr(path)}"] = np.asarray(leaf)
    return arrays


def all_records() -> dict[str, np.ndarray]:
    out = {}
    for case, (_, kind) in cases.CASES.items():
        for name in cases.problems(kind):
            for field, value in record(case, name).items():
                out[f"{case}|{name}|{field}"] = value
    return out


if __name__ == "__main__":
    np.savez_compressed(PATH, **all_records())
    print(PATH, PATH.stat().st_size, "bytes")
