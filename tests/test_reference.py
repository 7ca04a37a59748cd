"""No change in numbers: every optimizer case reproduces its recorded trajectory bit for bit.

``tests/reference/trajectories.npz`` was recorded by ``tests/reference/make_reference.py``
before the run layer's refactor (issue #8). Every trajectory field and every leaf of the final
state must be identical; state leaves and diagnostics may be added (a new hyperparameter, a new
strategy's figures), none may vanish.
"""

import sys
from pathlib import Path

import numpy as np
import pytest
from optimizer_cases import CASES, problems

sys.path.insert(0, str(Path(__file__).parent / "reference"))
import make_reference  # noqa: E402

REFERENCE = dict(np.load(make_reference.PATH))


@pytest.mark.parametrize("case", sorted(CASES))
def test_same_numbers_as_recorded(case):
    for name in problems(CASES[case][1]):
        prefix = f"{case}|{name}|"
        expected = {k[len(prefix):]: v for k, v in REFERENCE.items() if k.startswith(prefix)}
        assert expected, f"no reference for {case} on {name}: record it with make_reference.py"
        got = make_reference.record(case, name)
        trajectory = {k for k in expected if k.startswith("trajectory/")}
        added = {k for k in got if k.startswith("trajectory/")} - trajectory
        assert trajectory <= {k for k in got if k.startswith("trajectory/")}, f"{case} on {name}: fields vanished"
        assert all(k.startswith("trajectory/diag/") for k in added), f"{case} on {name}: new fields {added}"
        missing = set(expected) - set(got)
        assert not missing, f"{case} on {name}: state leaves vanished: {sorted(missing)}"
        for field, value in expected.items():
            np.testing.assert_array_equal(got[field], value, err_msg=f"{case} on {name}: {field}")
