"""Scale and soak: 256 peers x 8 vectors get every message; 1,000 visits leak nothing."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ivhw.sw.server_probe import CountingSwarm, RawClient, ServerProcess


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


def settle(server: ServerProcess, fds: int, timeout: float = 10.0) -> int:
    """Wait until the server holds ``fds`` descriptors (it closes them asynchronously)."""
    deadline = time.monotonic() + timeout
    while (count := server.fd_count()) != fds and time.monotonic() < deadline:
        time.sleep(0.02)
    return count


@pytest.mark.slow
@pytest.mark.parametrize(("peers", "vectors"), [(256, 8)])
def test_every_peer_receives_every_message(
    tmp_path: Path, shm: str, peers: int, vectors: int
) -> None:
    path = tmp_path / "scale.sock"
    args = ["-M", shm, "-l", "64K", "-n", str(vectors)]
    with ServerProcess(path, args, tmp_path / "log") as server:
        idle = server.fd_count()
        swarm = CountingSwarm(path, peers, vectors)
        try:
            result = swarm.run(timeout=120)
            assert result.complete, result.errors[:5]
            # each peer: handshake, then every peer's vectors (its own included)
            assert result.messages == peers * (3 + peers * vectors)
            # per peer: its connection and its eventfds
            assert server.fd_count() == idle + peers * (1 + vectors)
        finally:
            swarm.close()
        assert settle(server, idle) == idle
        assert server.stop() == 0
        assert "WARNING" not in server.log()


@pytest.mark.slow
def test_thousand_visits_leak_no_fds_or_memory(tmp_path: Path, shm: str) -> None:
    path = tmp_path / "soak.sock"
    vectors = 2
    with (
        ServerProcess(path, ["-M", shm, "-l", "64K", "-n", str(vectors)], tmp_path / "log") as srv,
        RawClient(path) as watcher,
    ):
        watcher.recv_n(3 + vectors)
        kept = len(watcher.fds)

        def visits(times: int) -> None:
            for _ in range(times):
                with RawClient(path) as visitor:
                    visitor.handshake()
                got = watcher.recv_n(vectors + 1)
                visitor_id = got[0][0]
                assert got == [(visitor_id, 1)] * vectors + [(visitor_id, 0)]
                for fd in watcher.fds[kept:]:
                    os.close(fd)
                del watcher.fds[kept:]

        visits(50)  # warm up allocator and caches
        fds = settle(srv, srv.fd_count())
        rss = rss_kib(srv.pid)
        visits(1000)
        assert settle(srv, fds) == fds
        assert rss_kib(srv.pid) - rss < 2048, "server memory grew by more than 2 MiB"
        # the one long-lived peer never noticed anything but visitors
        with RawClient(path) as last:
            assert last.handshake()[0] == 1051


def test_join_benchmark_runs() -> None:
    root = Path(__file__).resolve().parent.parent
    result = subprocess.run(
        [sys.executable, "-m", "bench.server_join", "--peers", "4", "--vectors", "1,2"],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    rows = [line for line in result.stdout.splitlines() if line.startswith("| ivhw")]
    assert [row[:16] for row in rows] == ["| ivhw | 4 | 1 |", "| ivhw | 4 | 2 |"]
    # 4 peers: 4 x (3 + 4 x V) messages, all verified
    assert "| 28 / 28 | yes |" in rows[0] and "| 44 / 44 | yes |" in rows[1]
    assert "| qemu-style | 4 | 2 |" in result.stdout
