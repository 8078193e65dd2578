"""Helpers shared by the test modules (import as ``from support import ...``)."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn
from xml.etree import ElementTree

import pytest

__all__ = ["check_results", "missing", "require_tool", "wait_for"]


def missing(what: str) -> NoReturn:
    """Skip the test because ``what`` is not installed.

    Under ``IVHW_REQUIRE_TOOLS=1`` (set by ``make test`` and so by CI, which
    installs every tool) fail it instead: nothing may be skipped there.
    """
    message = f"{what} is not installed (run `make setup`)"
    if os.environ.get("IVHW_REQUIRE_TOOLS") == "1":
        pytest.fail(message)
    pytest.skip(message)


def require_tool(name: str) -> str:
    """Path of the executable ``name``; :func:`missing` if there is none."""
    path = shutil.which(name)
    if path is None:
        missing(name)
    return path


def wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    """Poll ``condition`` until it holds; ``AssertionError`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.005)


def check_results(xml: Path, test: str) -> None:
    """The cocotb results file says ``test`` ran once and passed (one that never ran fails)."""
    assert xml.is_file(), f"no results file {xml}: the simulation did not finish"
    cases = ElementTree.parse(xml).getroot().iter("testcase")
    ran = [case for case in cases if case.get("name") == test]
    assert len(ran) == 1, f"{test} ran {len(ran)} times according to {xml}"
    failed = [child for child in ran[0] if child.tag in ("failure", "error", "skipped")]
    details = "; ".join(f"{c.tag}: {c.get('message', '')}" for c in failed)
    assert not failed, f"{test}: {details} (log: {xml.parent / 'sim.log'})"
