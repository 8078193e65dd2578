"""Helpers shared by the test modules (import as ``from support import ...``)."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable

import pytest

__all__ = ["require_tool", "wait_for"]


def require_tool(name: str) -> str:
    """Path of the executable ``name``; skip the test if it is missing.

    Under ``IVHW_REQUIRE_TOOLS=1`` (set by ``make test`` and so by CI, which
    installs every tool) a missing tool fails the test instead: nothing may be
    skipped there.
    """
    path = shutil.which(name)
    if path is None:
        message = f"{name} is not installed (run `make setup`)"
        if os.environ.get("IVHW_REQUIRE_TOOLS") == "1":
            pytest.fail(message)
        pytest.skip(message)
    return path


def wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    """Poll ``condition`` until it holds; ``AssertionError`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.005)
