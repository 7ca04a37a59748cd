"""l2ljax works without NEST; the NEST optimizee without NEST says what to install (runs with or without NEST)."""

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_without_nest_l2ljax_imports_and_the_nest_optimizee_names_the_install():
    script = (
        "import sys\n"
        "sys.modules['nest'] = None  # as if NEST were not installed\n"
        "import l2ljax\n"
        "from l2ljax.optimizees import nest as sp\n"
        "problem = l2ljax.function_optimizee('rastrigin', 2)\n"
        "try:\n"
        "    sp.structural_plasticity_optimizee()\n"
        "except ImportError as error:\n"
        "    print('ImportError:', error)\n"
    )
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO))
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == ("ImportError: the NEST optimizee needs the NEST simulator: "
                                   "pip install 'l2ljax[nest]' (or: pip install nest-simulator)")
