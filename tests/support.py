"""Helpers shared by the test modules (import as ``from support import ...``)."""

from __future__ import annotations

import os
import shutil
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, NoReturn

import pytest

if TYPE_CHECKING:
    from ivhw.sw.echo import EchoResponder

__all__ = ["missing", "require_tool", "serve_in_thread", "wait_for"]


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


def serve_in_thread(responder: EchoResponder, stop: threading.Event) -> threading.Thread:
    """Run ``responder`` in a daemon thread until ``stop`` is set (then join the thread)."""

    def run() -> None:
        while not stop.is_set():
            responder.run(until=time.monotonic() + 0.1)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread
