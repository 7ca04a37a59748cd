"""The examples in the docs run, so they cannot rot: README's "Ten lines", the doctests of every
module, and the ``Example::`` blocks of the optimizer and function modules (with ``l2ljax.run``
held to a few generations: the block is checked for names and signatures, not for its result).
"""

import doctest
import importlib
import pkgutil
import re
import textwrap
import types
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import l2ljax

ROOT = Path(__file__).resolve().parents[1]
MODULES = sorted(m.name for m in pkgutil.walk_packages(l2ljax.__path__, "l2ljax."))
# Examples that need what CI lacks: MNIST files, MPI ranks, a simulator binary, an observation model
# (a package here covers its modules).
NOT_RUN = {"l2ljax.data", "l2ljax.optimizers.enkf", "l2ljax.optimizees.mnist", "l2ljax.parallel",
           "l2ljax.optimizees.external", "l2ljax.models", "l2ljax.kalman", "l2ljax.cli",
           # NEST simulations, and sketches that use the reader's model and loss (their runnable forms
           # are examples/l2l_*.py and examples/nest_structural_plasticity.py)
           "l2ljax.optimizees.nest", "l2ljax.optimizees.inner", "l2ljax.optimizees.meta",
           "l2ljax.optimizers.bptt", "l2ljax.snn"}


def example_blocks(text: str) -> list[str]:
    """The indented literal blocks after ``Example::`` lines (not doctests: those run below)."""
    blocks = re.findall(r"Example[^\n]*::\n\n((?:(?: {4}.*)?\n)+)", text)
    return [textwrap.dedent(block) for block in blocks if ">>>" not in block]


def few_generations_run(*args, **kwargs):
    args = list(args)
    if len(args) >= 4:
        args[3] = min(args[3], 3)
    if "n_generations" in kwargs:
        kwargs["n_generations"] = min(kwargs["n_generations"], 3)
    return l2ljax.run(*args, **kwargs)


@pytest.mark.parametrize("name", MODULES)
def test_doctests(name):
    module = importlib.import_module(name)
    failed, _ = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert failed == 0


@pytest.mark.parametrize("name", [m for m in MODULES if m not in NOT_RUN and m.rsplit(".", 1)[0] not in NOT_RUN])
def test_example_blocks_run(name):
    module = importlib.import_module(name)
    blocks = example_blocks(module.__doc__ or "")
    if not blocks:
        pytest.skip(f"{name} has no literal example block")
    fast = types.SimpleNamespace(**{k: getattr(l2ljax, k) for k in dir(l2ljax) if not k.startswith("__")})
    fast.run = few_generations_run
    for block in blocks:
        namespace = {**vars(module), "jax": jax, "jnp": jnp, "np": np, "l2ljax": fast,
                     "problem": l2ljax.function_optimizee("rastrigin", 2), "key": jax.random.key(0),
                     "x0": jnp.array([1.0, -1.0])}
        exec(compile(block, f"<{name} example>", "exec"), namespace)  # noqa: S102 (our own docs)


def test_readme_ten_lines(tmp_path, monkeypatch):
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Ten lines", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    monkeypatch.chdir(tmp_path)  # it writes runs/sphere
    namespace = {}
    exec(compile(code, "<README Ten lines>", "exec"), namespace)  # noqa: S102
    assert namespace["result"].best_fitness[0] < 1e-3
    assert (tmp_path / "runs" / "sphere" / "checkpoint.npz").is_file()
