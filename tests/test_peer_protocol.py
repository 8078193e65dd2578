"""Every way a server can break protocol revision 1: a clear exception, no hang, no fd leak."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from fakeserver import PACK, FakeConn, FakeServer, check_error_after_handshake, open_fds

from ivhw.sw.peer import Peer, ProtocolError, ServerGone


def _bad_vector_fds(conn: FakeConn) -> None:
    conn.preamble(0)
    conn.raw(PACK(0), [conn.eventfd(), conn.eventfd()])


def _peer_fd_is_shm(conn: FakeConn) -> None:
    conn.preamble(0)
    conn.send(1, conn.memfd(4096))


def _own_fd_is_shm(conn: FakeConn) -> None:
    conn.preamble(0)
    conn.send(0, conn.memfd(4096))


def _close(conn: FakeConn) -> None:
    conn.sock.close()


def _then_close(*values: int) -> Callable[[FakeConn], None]:
    def script(conn: FakeConn) -> None:
        for value in values:
            conn.send(value)
        conn.sock.close()

    return script


HANDSHAKE_ERRORS: dict[str, tuple[Callable[[FakeConn], None], type[Exception], str]] = {
    "closed-at-once": (_close, ServerGone, "before sending the protocol version"),
    "closed-after-version": (_then_close(0), ServerGone, "after the version"),
    "closed-after-id": (_then_close(0, 3), ServerGone, "after the peer ID"),
    "closed-mid-message": (
        lambda c: (c.raw(PACK(0)[:3]), c.sock.close()),
        ServerGone,
        "inside a message",
    ),
    "closed-after-shm": (
        lambda c: (c.preamble(0), c.sock.close()),
        ServerGone,
        "before sending any own vector",
    ),
    "closed-mid-vectors": (
        lambda c: (c.preamble(0), c.add_peer(2), c.sock.close()),
        ServerGone,
        "closed the connection",
    ),
    "version-1": (lambda c: c.send(1), ProtocolError, "protocol version 1"),
    "version-with-fd": (lambda c: c.send(0, c.eventfd()), ProtocolError, "fd with the protocol"),
    "id-too-big": (lambda c: (c.send(0), c.send(65536)), ProtocolError, "peer ID 65536"),
    "id-negative": (lambda c: (c.send(0), c.send(-1)), ProtocolError, "peer ID -1"),
    "id-with-fd": (
        lambda c: (c.send(0), c.send(2, c.eventfd())),
        ProtocolError,
        "fd with the own peer ID",
    ),
    "shm-without-fd": (
        lambda c: (c.send(0), c.send(2), c.send(-1)),
        ProtocolError,
        "carried 0 fds",
    ),
    "shm-two-fds": (
        lambda c: (c.send(0), c.send(2), c.raw(PACK(-1), [c.memfd(4096), c.memfd(4096)])),
        ProtocolError,
        "carried 2 fds",
    ),
    "shm-wrong-value": (
        lambda c: (c.send(0), c.send(2), c.send(2, c.memfd(4096))),
        ProtocolError,
        "shared-memory message",
    ),
    "shm-not-power-of-two": (
        lambda c: (c.send(0), c.send(2), c.send(-1, c.memfd(3000))),
        ProtocolError,
        "3000 bytes, not a power of two",
    ),
    "shm-size-0": (
        lambda c: (c.send(0), c.send(2), c.send(-1, c.memfd(0))),
        ProtocolError,
        "size 0",
    ),
    "shm-is-eventfd": (
        lambda c: (c.send(0), c.send(2), c.send(-1, c.eventfd())),
        ProtocolError,
        "not a memory file",
    ),
    "own-vector-without-fd": (
        lambda c: (c.preamble(0), c.send(0)),
        ProtocolError,
        "this peer \\(0\\) left",
    ),
    "own-vector-is-shm": (_own_fd_is_shm, ProtocolError, "not an eventfd"),
    "peer-vector-is-shm": (_peer_fd_is_shm, ProtocolError, "not an eventfd"),
    "two-fds-on-vector": (_bad_vector_fds, ProtocolError, "2 fds in one message"),
    "second-shm": (
        lambda c: (c.preamble(0), c.send(-1, c.memfd(4096))),
        ProtocolError,
        "second shared-memory",
    ),
    "vector-peer-id-too-big": (
        lambda c: (c.preamble(0), c.send(70000, c.eventfd())),
        ProtocolError,
        "peer ID 70000",
    ),
    "vector-peer-id-negative": (
        lambda c: (c.preamble(0), c.send(-5, c.eventfd())),
        ProtocolError,
        "peer ID -5",
    ),
    "own-vectors-beyond-64": (
        lambda c: (c.preamble(0), c.own_vectors(0, 65)),
        ProtocolError,
        "more than 64 own vectors",
    ),
    "peer-vectors-beyond-64": (
        lambda c: (c.preamble(0), c.add_peer(1, 65)),
        ProtocolError,
        "more than 64 vectors of 1",
    ),
    "silent": (lambda c: None, TimeoutError, "before sending the protocol version"),
    "stalls-mid-message": (lambda c: c.raw(PACK(0)[:5]), TimeoutError, "timed out"),
    "stalls-after-shm": (lambda c: c.preamble(0), TimeoutError, "own vector"),
    "fewer-vectors-than-asked": (
        lambda c: c.handshake(0, vectors=2),
        TimeoutError,
        "after 2 of 4 own vectors",
    ),
}


@pytest.mark.parametrize("case", list(HANDSHAKE_ERRORS))
def test_handshake_error(case: str, tmp_path: Path) -> None:
    script, error, message = HANDSHAKE_ERRORS[case]
    path = str(tmp_path / "s")
    vectors = 4 if case == "fewer-vectors-than-asked" else None
    # a burst trailing behind the handshake is taken later: wait for all of it here
    settle = 1.0 if case == "own-vectors-beyond-64" else 0.0
    before = open_fds()
    with FakeServer(path, lambda conn, index: script(conn)) as server:
        start = time.monotonic()
        with pytest.raises(error, match=message) as info:
            Peer(path, vectors=vectors, timeout=0.3, settle=settle)
        assert time.monotonic() - start < 2
        if error is ProtocolError:
            assert not isinstance(info.value, ServerGone)
    assert not server.errors
    assert open_fds() == before


AFTER_HANDSHAKE_ERRORS: dict[str, tuple[Callable[[FakeConn], None], type[Exception], str]] = {
    "own-left": (lambda c: c.send(0), ProtocolError, "this peer"),
    "second-shm": (lambda c: c.send(-1, c.memfd(4096)), ProtocolError, "second shared-memory"),
    "id-out-of-range": (lambda c: c.send(1 << 20, c.eventfd()), ProtocolError, "outside"),
    "two-fds": (lambda c: c.raw(PACK(3), [c.eventfd(), c.eventfd()]), ProtocolError, "2 fds"),
    "vector-is-shm": (lambda c: c.send(3, c.memfd(4096)), ProtocolError, "not an eventfd"),
    "closed-mid-message": (lambda c: (c.raw(b"\1\2"), c.sock.close()), ServerGone, "inside"),
    "stalls-mid-message": (lambda c: c.raw(b"\1\2"), ProtocolError, "partial message"),
}


@pytest.mark.parametrize("case", list(AFTER_HANDSHAKE_ERRORS))
def test_error_after_handshake(case: str, tmp_path: Path) -> None:
    action, error, message = AFTER_HANDSHAKE_ERRORS[case]
    check_error_after_handshake(
        str(tmp_path / "s"), lambda conn: conn.handshake(0), action, error, message
    )


def test_unknown_peer_leaving_is_tolerated(tmp_path: Path) -> None:
    """A peer of a server with 0 vectors leaves without having sent any."""
    path = str(tmp_path / "s")
    with (
        FakeServer(path, lambda conn, index: conn.preamble(0)) as server,
        Peer(path, vectors=0) as peer,
    ):
        server.conn().send(5)
        assert [type(e).__name__ for e in [peer.wait(timeout=2)]] == ["PeerLeft"]


def test_fds_are_cloexec(tmp_path: Path) -> None:
    path = str(tmp_path / "s")
    with FakeServer(path, lambda conn, index: conn.handshake(0, peers={1: 1})), Peer(path) as peer:
        fds = [peer.fileno(), peer.shm_fd, *peer.eventfds(0), *peer.eventfds(1)]
        assert all(not os.get_inheritable(fd) for fd in fds)


def test_own_vectors_beyond_64_after_handshake(tmp_path: Path) -> None:
    path = str(tmp_path / "s")
    before = open_fds()
    with (
        FakeServer(path, lambda conn, index: (conn.preamble(0), conn.own_vectors(0, 65))),
        pytest.raises(ProtocolError, match="more than 64 own vectors"),
        Peer(path, vectors=64) as peer,
    ):
        for _ in range(10):
            peer.poll(0.5)
    assert open_fds() == before
