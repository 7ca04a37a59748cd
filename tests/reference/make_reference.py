"""Write tests/reference/trajectories.npz: every optimizer case's trajectory for fixed keys.

Run from the repository root (``PYTHONPATH=. python tests/reference/make_reference.py``) only to
record numbers on purpose (``... make_reference.py EnKF-stochastic`` re-records one case);
``tests/test_reference.py`` then requires bit-identical runs on a CPU with the recording
machine's vector features and jaxlib (XLA:CPU's code, hence its rounding, depends on them), and
agreement to float32 rounding elsewhere. The file was recorded before the run layer's refactor (issue #8);
a later change of numbers must be a documented change. Re-recorded since: EnKF-stochastic (each
member's perturbations drawn from its own row key, so that a sharded ensemble draws the same
numbers; issue #14), SA and SA-linear_additive (each chain's proposal noise from its own row key,
so that chains split over ranks draw the same numbers; issue #14), PT (likewise, and chains
split over ranks; issue #14), GA (each offspring's crossover, mutation and duplicate draws from
its own row or pair key, so that offspring bred on several ranks draw the same numbers; issue #14).
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
RECORDED_ON = "avx512"  # the machine that recorded the first cases (before full fingerprints were kept)


def vector_isa() -> str:
    """The CPU's vector features and the jaxlib version: what XLA:CPU's code, hence its rounding,
    depends on. Two AVX-512 machines of different models already round differently (seen
    2026-12-02), so the whole feature list is kept, not just the widest ISA."""
    import jaxlib

    try:
        flags = next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags"))
    except (OSError, StopIteration):
        flags = ""
    vector = sorted(f for f in flags.split() if f.startswith(("avx", "fma", "f16c", "amx", "sse4")))
    return f"{','.join(vector) or 'other'}|jaxlib {jaxlib.__version__}"


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


def all_records(only: list[str] | None = None) -> dict[str, np.ndarray]:
    out = {}
    for case, (_, kind) in cases.CASES.items():
        if only and case not in only:
            continue
        out[f"{case}|__isa__"] = np.asarray(vector_isa())
        for name in cases.problems(kind):
            for field, value in record(case, name).items():
                out[f"{case}|{name}|{field}"] = value
    return out


if __name__ == "__main__":
    only = sys.argv[1:]
    kept = {} if not only else {k: v for k, v in np.load(PATH).items() if k.split("|")[0] not in only}
    np.savez_compressed(PATH, **kept, **all_records(only))
    print(PATH, PATH.stat().st_size, "bytes")
