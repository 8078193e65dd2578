"""The server survives misbehaving clients, back-pressure, fd exhaustion; refusals are logged."""

from __future__ import annotations

import errno
import logging
import os
import resource
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import StartServer
from support import require_tool

import ivhw.sw.server as server_module
from ivhw.sw.server import IvshmemServer
from ivhw.sw.server_probe import CountingSwarm, RawClient, ServerProcess, fd_count


def connect(server: IvshmemServer, clients: list[RawClient]) -> RawClient:
    client = RawClient(server.socket_path)
    clients.append(client)
    return client


def wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.01)


def visit(server: IvshmemServer) -> int:
    """A peer joins, reads its handshake and leaves; returns its ID."""
    with RawClient(server.socket_path) as c:
        return c.handshake()[0]


def check_visits(messages: list[tuple[int, int]], vectors: int) -> list[int]:
    """Check a stream of visitors' announcements; returns the IDs in order of arrival.

    A departure may overtake the next arrival (the server sees the next connect
    before the previous close), but each visitor's vectors come in one run and
    before its departure.
    """
    seen: list[int] = []
    gone: set[int] = set()
    i = 0
    while i < len(messages):
        value, fds = messages[i]
        if fds:
            assert messages[i : i + vectors] == [(value, 1)] * vectors, messages[i : i + vectors]
            assert value not in seen
            seen.append(value)
            i += vectors
        else:
            assert value in seen and value not in gone, (value, messages)
            gone.add(value)
            i += 1
    assert gone == set(seen)
    return seen


def test_client_that_sends_data_is_disconnected(
    start_server: StartServer, clients: list[RawClient]
) -> None:
    server = start_server(vectors=1)
    a, b = connect(server, clients), connect(server, clients)
    assert a.recv_n(5) == [(0, 0), (0, 0), (-1, 1), (0, 1), (1, 1)]
    b.recv_n(5)
    b.sock.sendall(b"hello, server")
    # the protocol is one-way: data from a client means it is gone
    assert a.recv_n(1) == [(1, 0)]
    assert b.at_eof()
    c = connect(server, clients)
    assert c.recv_n(5) == [(0, 0), (2, 0), (-1, 1), (0, 1), (2, 1)]
    assert a.recv_n(1) == [(2, 1)]


def test_killed_peer_is_announced_and_others_keep_working(
    start_server: StartServer, clients: list[RawClient]
) -> None:
    server = start_server(vectors=2)
    a = connect(server, clients)
    a.recv_n(5)
    code = (
        "import sys, time; from ivhw.sw.server_probe import RawClient;"
        f"c = RawClient({server.socket_path!r}); c.recv_n(7); print('ready', flush=True);"
        "time.sleep(60)"
    )
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "ready"
        assert a.recv_n(2) == [(1, 1), (1, 1)]
        child.send_signal(signal.SIGKILL)
        child.wait(10)
    finally:
        child.kill()
        child.wait()
    assert a.recv_n(1) == [(1, 0)]
    assert server.peer_ids == [0]
    b = connect(server, clients)
    assert b.handshake()[0] == 2


def test_connect_and_leave_does_not_leak(
    start_server: StartServer, clients: list[RawClient]
) -> None:
    server = start_server(vectors=4)
    watcher = connect(server, clients)
    watcher.recv_n(3 + 4)

    def visits(times: int) -> None:
        for _ in range(times):
            visitor = visit(server)
            # wait for its departure, so that the next visit cannot overtake it
            assert watcher.recv_n(5) == [(visitor, 1)] * 4 + [(visitor, 0)]
            for fd in watcher.fds[5:]:
                os.close(fd)
            del watcher.fds[5:]

    visits(5)
    wait_for(lambda: server.peer_ids == [0] and not server._zombies)
    baseline = fd_count()
    visits(200)
    wait_for(lambda: server.peer_ids == [0] and not server._zombies and server.pending() == 0)
    wait_for(lambda: fd_count() == baseline)  # the last visitor's eventfds close just after
    assert server._dirty == set() and server._retry == set()


def test_peer_that_stops_reading_is_disconnected(
    start_server: StartServer, clients: list[RawClient], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="ivhw.sw.server")
    server = start_server(vectors=8, stall_timeout=0.5)
    stalled = connect(server, clients)  # never reads
    reader = connect(server, clients)
    reader.recv_n(3 + 16)
    # each visit sends 9 messages to both: enough to fill the stalled peer's socket
    deadline = time.monotonic() + 20
    messages: list[tuple[int, int]] = []
    while (0, 0) not in messages:
        assert time.monotonic() < deadline, "stalled peer was never disconnected"
        visitor = visit(server)
        while (visitor, 0) not in messages[-9:]:
            messages += reader.recv_n(1)
            for fd in reader.fds[19:]:
                os.close(fd)
            del reader.fds[19:]
        if server.write_waits:
            time.sleep(0.05)
    messages.remove((0, 0))
    check_visits(messages, 8)
    assert server.write_waits > 0
    assert any("peer 0 stopped reading" in r.getMessage() for r in caplog.records)
    assert any(r.levelno == logging.WARNING for r in caplog.records)
    # the stalled client finds the connection closed after what had been delivered
    assert stalled.at_eof()
    c = connect(server, clients)
    c.handshake()
    assert reader.recv_n(8)[0][1] == 1


def test_departing_peer_is_announced_consistently_to_a_backlogged_reader(
    start_server: StartServer, clients: list[RawClient]
) -> None:
    server = start_server(vectors=8, stall_timeout=None)
    slow = connect(server, clients)  # reads only now and then
    wait_for(lambda: server.peer_ids == [0])
    slow_peer = server._peers[0]
    baseline = fd_count()
    stream: list[tuple[int, int]] = []

    def read(count: int) -> None:
        for _ in range(count):
            message = slow.recv()
            assert message is not None
            stream.append((message[0], len(message[1])))
            for fd in message[1]:
                os.close(fd)
        slow.fds.clear()

    def head_is_partly_sent() -> bool:
        queue = slow_peer.queue
        return bool(queue) and queue[0].kind == server_module._VECTORS and queue[0].next > 0

    # visitors come and go until the slow reader's socket is full in the middle of
    # a visitor's vectors (else read some and try again: the cut falls elsewhere)
    for _ in range(300):
        visit(server)
        wait_for(lambda: server.peer_ids == [0])
        if slow_peer.want_write:
            if head_is_partly_sent():
                break
            read(200)
    else:
        raise AssertionError("never caught the slow reader in the middle of a visitor's vectors")
    partly = slow_peer.queue[0].peer
    # the partly announced visitor has left: its eventfds wait for the rest to go out
    # (the server's thread drops a peer from peer_ids before it closes the peer's
    # eventfds, so the count is waited for: a leak never gets there)
    assert server._zombies == {partly}
    wait_for(lambda: fd_count() == baseline + 8)
    # a visitor the slow reader has not heard of yet: arrival and departure cancel out
    late = visit(server)
    wait_for(lambda: server.peer_ids == [0] and fd_count() == baseline + 8)
    assert server._zombies == {partly}
    # a marker peer that stays tells when the slow reader has caught up
    marker = connect(server, clients)
    marker_id = marker.handshake()[0]
    while stream[-8:] != [(marker_id, 1)] * 8:
        read(1)
    seen = check_visits(stream[3 + 8 : -8], 8)
    assert stream[: 3 + 8] == [(0, 0), (0, 0), (-1, 1)] + [(0, 1)] * 8
    assert partly.id in seen
    assert late not in seen
    assert not server._zombies
    marker.close()
    read(1)
    assert stream[-1] == (marker_id, 0)
    wait_for(lambda: server.peer_ids == [0] and server.pending() == 0)
    wait_for(lambda: fd_count() == baseline)


def test_too_many_fds_in_flight_is_retried(
    start_server: StartServer, clients: list[RawClient], monkeypatch: pytest.MonkeyPatch
) -> None:
    real_send = server_module.send_message
    calls = {"fd": 0}

    def flaky_send(sock: socket.socket, value: int, fd: int | None = None) -> None:
        if fd is not None:
            calls["fd"] += 1
            if calls["fd"] % 3 == 0:
                raise OSError(errno.ETOOMANYREFS, os.strerror(errno.ETOOMANYREFS))
        real_send(sock, value, fd)

    monkeypatch.setattr(server_module, "send_message", flaky_send)
    server = start_server(vectors=3)
    a, b, c = (connect(server, clients) for _ in range(3))
    assert a.recv_n(3 + 9) == [(0, 0), (0, 0), (-1, 1)] + [(0, 1)] * 3 + [(1, 1)] * 3 + [(2, 1)] * 3
    assert b.recv_n(3 + 9) == [(0, 0), (1, 0), (-1, 1)] + [(0, 1)] * 3 + [(1, 1)] * 3 + [(2, 1)] * 3
    assert c.recv_n(3 + 9) == [(0, 0), (2, 0), (-1, 1)] + [(0, 1)] * 3 + [(1, 1)] * 3 + [(2, 1)] * 3
    assert server.fd_retries > 0


def test_max_peers_refuses_and_logs(
    start_server: StartServer, clients: list[RawClient], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="ivhw.sw.server")
    server = start_server(vectors=1, max_peers=2)
    a, b = connect(server, clients), connect(server, clients)
    a.recv_n(5)
    b.recv_n(5)
    refused = connect(server, clients)
    assert refused.recv() is None  # closed without a word
    assert server.refused == 1
    assert any("--max-peers" in r.getMessage() for r in caplog.records)
    b.close()
    assert a.recv_n(1) == [(1, 0)]
    assert connect(server, clients).handshake()[0] == 2


@pytest.mark.parametrize("allowed", [True, False])
def test_allow_uid_and_gid_use_peer_credentials(
    start_server: StartServer,
    clients: list[RawClient],
    caplog: pytest.LogCaptureFixture,
    allowed: bool,
) -> None:
    caplog.set_level(logging.INFO, logger="ivhw.sw.server")
    uid, gid = os.getuid(), os.getgid()
    if allowed:
        server = start_server(allow_uids=[uid + 1], allow_gids=[gid])
        assert connect(server, clients).handshake()[0] == 0
    else:
        server = start_server(allow_uids=[uid + 1], allow_gids=[gid + 1])
        assert connect(server, clients).recv() is None
        assert any(f"uid {uid} / gid {gid} not allowed" in r.getMessage() for r in caplog.records)


def _low_fd_limit(limit: int) -> Callable[[], None]:
    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))

    return apply


@pytest.mark.parametrize(
    ("vectors", "reason"),
    [(8, "cannot create its eventfds"), (0, "out of file descriptors")],
)
def test_out_of_fds_refuses_the_new_peer_only(
    tmp_path: Path, shm: str, vectors: int, reason: str
) -> None:
    path = tmp_path / "lim.sock"
    with ServerProcess(
        path, ["-M", shm, "-n", str(vectors)], tmp_path / "log", preexec_fn=_low_fd_limit(40)
    ) as server:
        admitted: list[RawClient] = []
        try:
            for _ in range(60):
                client = RawClient(path)
                first = client.recv()
                if first is None:
                    client.close()
                    break
                client.recv_n(2 + vectors * (len(admitted) + 1))
                for earlier in admitted:
                    assert earlier.recv_n(vectors) == [(len(admitted), 1)] * vectors
                admitted.append(client)
            else:
                raise AssertionError("the server never ran out of fds")
            assert len(admitted) >= 2
            wait_for(lambda: reason in server.log())
            assert "refused a connection" in server.log()
            # existing peers are unaffected: a departure reaches them, and a new peer fits
            admitted.pop().close()
            gone = len(admitted)
            for client in admitted:
                assert client.recv_n(1) == [(gone, 0)]
            newcomer = RawClient(path)
            new_id = newcomer.handshake()[0]
            assert new_id > gone
            for client in admitted:
                assert client.recv_n(vectors) == [(new_id, 1)] * vectors
            admitted.append(newcomer)
        finally:
            for client in admitted:
                client.close()
        assert server.stop() == 0
        assert "Traceback" not in server.log()


def _without_resource_caps() -> list[str]:
    """Prefix that runs a command without CAP_SYS_RESOURCE/CAP_SYS_ADMIN, as a user of its own.

    Only without those capabilities does the kernel limit the fds in flight and
    make sendmsg fail with ETOOMANYREFS; root in CI has both. The limit counts
    all fds in flight of the sender's real user, so an unused real uid keeps
    tests running in parallel out of each other's way (the effective uid stays 0
    so that the interpreter remains readable).
    """
    setpriv = require_tool("setpriv")
    ruid = 100_000 + uuid.uuid4().int % 1_000_000
    return [setpriv, f"--ruid={ruid}", "--bounding-set=-sys_resource,-sys_admin"]


def test_kernel_fd_in_flight_limit_is_waited_out(tmp_path: Path, shm: str) -> None:
    path = tmp_path / "inflight.sock"
    with ServerProcess(
        path,
        ["-v", "-M", shm, "-n", "8"],
        tmp_path / "log",
        preexec_fn=_low_fd_limit(300),
        prefix=_without_resource_caps(),
    ) as server:
        swarm = CountingSwarm(path, 24, 8)
        try:
            result = swarm.run(timeout=60)
        finally:
            swarm.close()
        assert result.complete, result.errors[:3]
        assert result.messages == 24 * (3 + 24 * 8)
        assert "too many fds in flight, retrying" in server.log()


def test_only_the_peer_that_stops_reading_is_blamed_for_the_fd_limit(
    start_server: StartServer,
    clients: list[RawClient],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # the kernel's limit counts all fds in flight of the user: while a stalled reader
    # holds them, every peer waits, but only the one with unread data is to blame
    caplog.set_level(logging.INFO, logger="ivhw.sw.server")
    real_send = server_module.send_message
    limit_hit = threading.Event()

    def send(sock: socket.socket, value: int, fd: int | None = None) -> None:
        if fd is not None and limit_hit.is_set():
            raise OSError(errno.ETOOMANYREFS, os.strerror(errno.ETOOMANYREFS))
        real_send(sock, value, fd)

    monkeypatch.setattr(server_module, "send_message", send)
    server = start_server(vectors=2, stall_timeout=0.3)
    reader = connect(server, clients)
    stalled = connect(server, clients)  # never reads
    assert reader.recv_n(3 + 2 + 2) == [(0, 0), (0, 0), (-1, 1)] + [(0, 1)] * 2 + [(1, 1)] * 2
    wait_for(lambda: server.pending() == 0)
    limit_hit.set()
    newcomer = connect(server, clients)
    assert newcomer.recv_n(2) == [(0, 0), (2, 0)]  # the shm fd has to wait
    time.sleep(1.0)  # several stall timeouts
    assert server.peer_ids == [0, 2]
    assert server.fd_retries > 0
    limit_hit.clear()
    assert reader.recv_n(3) == [(2, 1)] * 2 + [(1, 0)]
    # it never got the stalled peer's vectors, so it is not told of its departure either
    assert newcomer.recv_n(5) == [(-1, 1)] + [(0, 1)] * 2 + [(2, 1)] * 2
    stopped = [r.getMessage() for r in caplog.records if "stopped reading" in r.getMessage()]
    assert len(stopped) == 1 and stopped[0].startswith("peer 1 stopped reading")
    assert stalled.at_eof()
