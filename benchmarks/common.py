"""What every benchmark report records: the machine and versions, and how it is written."""

from __future__ import annotations

import json
import os
import platform
import sys

import jax
import numpy as np


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info() -> dict:
    return {"machine": cpu_model(), "cpus": os.cpu_count(), "load_average": os.getloadavg(),
            "python": sys.version.split()[0], "jax": jax.__version__, "numpy": np.__version__,
            "devices": [str(d) for d in jax.devices()]}


def write_report(report: dict, path: str | None) -> None:
    """Print the report as JSON, and write it to ``path`` when given."""
    if path:
        with open(path, "w") as f:
            json.dump(report, f, indent=2)
    print(json.dumps(report, indent=2))
