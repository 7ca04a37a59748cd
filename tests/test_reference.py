"""No change in numbers: every optimizer case reproduces its recorded trajectory bit for bit.

``tests/reference/trajectories.npz`` was recorded by ``tests/reference/make_reference.py``
before the run layer's refactor (issue #8). Every trajectory field and every leaf of the final
state must be identical; state leaves and diagnostics may be added (a new hyperparameter, a new
strategy's figures), none may vanish. Bit for bit where this CPU has the vector features and
jaxlib the case was recorded with; elsewhere XLA:CPU rounds differently, and runs must agree to
float32 rounding (the rtol below, a few ulps grown over 5 generations).
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
        exact = str(REFERENCE.get(f"{case}|__isa__", make_reference.RECORDED_ON)) == make_reference.vector_isa()
        for field, value in expected.items():
            if exact or not np.issubdtype(np.asarray(value).dtype, np.floating):
                np.testing.assert_array_equal(got[field], value, err_msg=f"{case} on {name}: {field}")
            else:
                np.testing.assert_allclose(got[field], value, rtol=2e-4, atol=1e-5,
                                           err_msg=f"{case} on {name}: {field}")
