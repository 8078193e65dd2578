"""Benchmarks: each module prints its figures beside a baseline measured in the same run."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["guests_importable"]

_ROOT = str(Path(__file__).resolve().parent.parent)


def guests_importable() -> None:
    """Let the simulators started from here import ``bench._cosim_guest`` (``PYTHONPATH``)."""
    paths = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    if _ROOT not in paths:
        os.environ["PYTHONPATH"] = os.pathsep.join([_ROOT, *paths])
