"""``peek_shm_size``: the shared-memory size read without consuming the handshake.

``ivshmem-cosim`` uses it to build the device for the server's size before the
simulated peer takes over the same connection (one connection, one join).
"""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from conftest import StartServer
from fakeserver import FakeConn, FakeServer, open_fds

from ivhw.sw.peer import Peer, ProtocolError, ServerGone, peek_shm_size

__all__: list[str] = []


def _connect(path: str | Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(str(path))
    return sock


def test_peek_then_the_peer_takes_the_same_connection(
    start_server: StartServer, tmp_path: Path
) -> None:
    server = start_server(shm_size=1 << 20, vectors=2)
    with Peer(server.socket_path, vectors=2) as first:
        sock = _connect(server.socket_path)
        assert peek_shm_size(sock) == 1 << 20
        before = open_fds()  # the in-process server has made the new peer's eventfds
        assert peek_shm_size(sock) == 1 << 20  # nothing was consumed
        assert open_fds() == before  # the peeked fds were closed
        with Peer(server.socket_path, vectors=2, sock=sock) as peer:
            assert peer.shm_size == 1 << 20
            assert peer.peers == {first.id: 2}
            assert sorted(server.peer_ids) == sorted([first.id, peer.id])


@pytest.mark.parametrize(
    ("script", "error", "message"),
    [
        (lambda conn, i: conn.send(7), ProtocolError, "protocol version 7"),
        (lambda conn, i: conn.raw(b"garbage!" * 3), ProtocolError, "protocol version"),
        (lambda conn, i: (conn.send(0), conn.send(-5)), ProtocolError, "peer ID -5"),
        (lambda conn, i: conn.sock.close(), ServerGone, "closed the connection"),
        (lambda conn, i: (conn.send(0), conn.send(1), conn.send(-1)), ProtocolError, "0 fds"),
        (
            lambda conn, i: (conn.send(0), conn.send(1), conn.send(-1, conn.memfd(3000))),
            ProtocolError,
            "not a power of two",
        ),
    ],
)
def test_peek_rejects_what_is_not_an_ivshmem_server(
    tmp_path: Path, script: object, error: type, message: str
) -> None:
    path = str(tmp_path / "fake.sock")
    with FakeServer(path, script) as server:  # type: ignore[arg-type]
        sock = _connect(path)
        server.conn(0)  # its script has run: every fd it makes exists
        before = open_fds()
        with pytest.raises(error, match=message):
            peek_shm_size(sock, timeout=2)
        assert open_fds() == before
        sock.close()


def test_peek_times_out_on_a_silent_server(tmp_path: Path) -> None:
    def silent(conn: FakeConn, index: int) -> None:
        conn.send(0)  # the version, then nothing

    path = str(tmp_path / "fake.sock")
    with FakeServer(path, silent):
        sock = _connect(path)
        with pytest.raises(TimeoutError, match=r"no ivshmem handshake within 0\.3 s"):
            peek_shm_size(sock, timeout=0.3)
        sock.close()
