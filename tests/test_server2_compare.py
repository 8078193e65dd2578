"""The server comparison tool, run with our ivshmem2-server on both sides (CI has no RFC build)."""

from __future__ import annotations

import shlex
import sys

import pytest

from bench import server2_compare
from ivhw.sw.protocol import MSG2_EVENT_FD, MSG2_INIT, MSG2_PEER_GONE


def test_format_message_names_every_field() -> None:
    init = server2_compare.format_message(40, MSG2_INIT, (2, 2, 1, 4, 3, 0xC003, 0x1000), 1)
    assert init == (
        "INIT len=40 id=1 version=2/2 max_peers=4 vectors=3 protocol=0xc003 output=0x1000 fds=1"
    )
    assert server2_compare.format_message(16, MSG2_EVENT_FD, (2, 1), 1) == (
        "EVENT_FD len=16 id=2 vector=1 fds=1"
    )
    assert (
        server2_compare.format_message(12, MSG2_PEER_GONE, (5,), 0) == "PEER_GONE len=12 id=5 fds=0"
    )


def test_diff_lines_marks_changed_and_missing_lines() -> None:
    pairs = server2_compare.diff_lines(["a", "b", "c"], ["a", "x"])
    assert pairs == [("a", "a", False), ("b", "x", True), ("c", "", True)]
    assert server2_compare.diff_lines(["a"], ["a", "b"])[1] == ("", "b", True)


def test_ours_against_ours_is_the_same(capsys: pytest.CaptureFixture[str]) -> None:
    ours = shlex.join([sys.executable, "-m", "ivhw.sw.server2"])
    only = "virtio,peer beyond max_peers,client dies before its INIT,no vectors (-V 0)"
    status = server2_compare.main(["--rfc-server", ours, "--only", only])
    out = capsys.readouterr().out
    assert status == 0, out
    assert "## virtio: same" in out
    assert "Z: INIT len=40 id=1 version=2/2 max_peers=2 vectors=3 protocol=0x8003" in out
    assert "A: PEER_GONE len=12 id=1 fds=0" in out
    assert out.count("kept serving") == 4, out
    refused = "refused at start-up: ivshmem2-server: error: argument -V: vectors must be 1..64"
    assert out.count(refused) == 2, out
    assert "0 of 1 scenario(s) differ" in out


def test_a_missing_binary_is_a_one_line_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert server2_compare.main(["--rfc-server", "/nonexistent/ivshmem2-server"]) == 2
    err = capsys.readouterr().err
    assert err.strip().count("\n") == 0 and "not executable" in err
