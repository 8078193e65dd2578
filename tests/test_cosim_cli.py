"""``ivshmem-cosim`` on the command line: bad arguments, servers that are not ivshmem
servers, and the shared-memory size taken from the server.

Everything here fails before a simulator is built, except the last test, which
builds the flat device (Icarus) once for a size no other test uses.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fakeserver import FakeConn, FakeServer
from qemu_domain import Domain
from support import require_tool

from ivhw.cosim.process import CosimProcess
from ivhw.cosim.session import STATUS_JOIN_FAILED
from ivhw.sw.peer import PeerJoined, PeerLeft

__all__: list[str] = []

COSIM = [sys.executable, "-m", "ivhw.cosim.cli"]


def _cosim(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*COSIM, *args], capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
    )


def _one_error(result: subprocess.CompletedProcess[str]) -> str:
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert lines[0].startswith("ivshmem-cosim: error: ")
    return lines[0]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--seconds", "-1"], "--seconds: must be a positive number of seconds, not '-1'"),
        (["--seconds", "0"], "--seconds: must be a positive number of seconds, not '0'"),
        (["--seconds", "nan"], "--seconds: must be a positive number of seconds, not 'nan'"),
        (["--seconds", "inf"], "--seconds: must be a positive number of seconds, not 'inf'"),
        (["--seconds", "soon"], "--seconds: must be a number of seconds, not 'soon'"),
        (["--poll-cycles", "0"], "--poll-cycles: must be at least 1, not 0"),
        (["--shm-size", "3K"], "--shm-size: shm size must be a power of two"),
        (["--shm-size", "16E"], "--shm-size: shm size '16E' is too large"),
    ],
)
def test_bad_arguments_one_line_status_2(tmp_path: Path, args: list[str], message: str) -> None:
    result = _cosim("--socket", str(tmp_path / "s"), *args)
    assert result.returncode == 2
    assert message in _one_error(result)


def _not_ivshmem(kind: str):  # type: ignore[no-untyped-def]
    def script(conn: FakeConn, index: int) -> None:
        if kind == "garbage":
            conn.raw(b"HTTP/1.1 400 Bad Request\r\n\r\n")
        elif kind == "closes":
            conn.sock.close()
        elif kind == "bad fd":
            conn.send(0)
            conn.send(0)
            conn.send(-1, conn.eventfd())

    return script


@pytest.mark.parametrize(
    ("kind", "reason"),
    [
        ("garbage", "ivshmem server speaks protocol version"),
        ("closes", "ivshmem server closed the connection before sending the protocol version"),
        ("bad fd", "shared-memory fd is anon_inode:[eventfd], not a memory file"),
    ],
)
def test_not_an_ivshmem_server_is_a_join_failure(tmp_path: Path, kind: str, reason: str) -> None:
    path = str(tmp_path / "fake.sock")
    with FakeServer(path, _not_ivshmem(kind)):
        result = _cosim("--socket", path, "--build-dir", str(tmp_path / "build"))
    assert result.returncode == STATUS_JOIN_FAILED
    line = _one_error(result)
    assert line.startswith(f"ivshmem-cosim: error: cannot join the ivshmem server at {path}: ")
    assert reason in line
    assert not (tmp_path / "build").exists()  # nothing was built for it


def test_refused_connection_is_the_same_join_failure(tmp_path: Path) -> None:
    path = tmp_path / "stale.sock"
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(path))
    stale.close()  # the file stays, nobody listens
    result = _cosim("--socket", str(path))
    assert result.returncode == STATUS_JOIN_FAILED
    assert _one_error(result) == (
        f"ivshmem-cosim: error: cannot join the ivshmem server at {path}: Connection refused"
    )


@pytest.mark.icarus
def test_shm_size_given_must_match(tmp_path: Path) -> None:
    require_tool("iverilog")
    with Domain(vectors=1, shm_size=1 << 20) as domain:
        args = ["--socket", str(domain.socket_path), "--sim", "icarus", "--shm-size", "64K"]
        result = _cosim(*args, timeout=300)
        assert result.returncode == STATUS_JOIN_FAILED
        assert _one_error(result) == (
            f"ivshmem-cosim: error: the server at {domain.socket_path} has 1M of shared "
            "memory, not --shm-size 64K; leave --shm-size out to take the server's"
        )
        domain.wait_peer_count(0, timeout=10)


@pytest.mark.icarus
def test_takes_the_servers_size_and_joins_once(tmp_path: Path) -> None:
    require_tool("iverilog")
    size = 64 << 10  # no other test builds this size
    with Domain(vectors=1, shm_size=size) as domain:
        host = domain.peer()
        device = CosimProcess(
            domain.socket_path, tmp_path, sim="icarus", vectors=1, guest="none", seconds=1
        ).start()
        status = device.wait(300)
        output = device.output()
        assert status == 0, output
        assert "64 KiB shared memory" in output
        # one connection, one join: the peek and the simulator were the same peer
        events = []
        deadline = time.monotonic() + 10
        while not any(isinstance(e, PeerLeft) for e in events) and time.monotonic() < deadline:
            events += host.poll(timeout=0.1)
        joins = [e for e in events if isinstance(e, PeerJoined)]
        leaves = [e for e in events if isinstance(e, PeerLeft)]
        assert len(joins) == 1, events
        assert leaves == [PeerLeft(joins[0].peer)], events
