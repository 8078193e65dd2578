"""The in-process ivshmem server speaks QEMU's protocol, message by message.

The protocol: ``docs/protocol-rev1.md``.
"""

from __future__ import annotations

import mmap
import os
import select
import threading
from pathlib import Path

import pytest
from conftest import StartServer, shm_name

from ivhw.sw.protocol import MAX_PEER_ID
from ivhw.sw.server import IvshmemServer, pow2ceil
from ivhw.sw.server_probe import RawClient


def connect(server: IvshmemServer, clients: list[RawClient]) -> RawClient:
    client = RawClient(server.socket_path)
    clients.append(client)
    return client


@pytest.mark.parametrize("vectors", [1, 2, 64])
def test_join_and_leave_order_matches_qemu(
    start_server: StartServer, clients: list[RawClient], vectors: int
) -> None:
    server = start_server(vectors=vectors)
    n = vectors
    a = connect(server, clients)
    assert a.recv_n(3 + n) == [(0, 0), (0, 0), (-1, 1)] + [(0, 1)] * n
    b = connect(server, clients)
    # new peer: version, ID, shm, the existing peer's vectors, then its own
    assert b.recv_n(3 + 2 * n) == [(0, 0), (1, 0), (-1, 1)] + [(0, 1)] * n + [(1, 1)] * n
    assert a.recv_n(n) == [(1, 1)] * n
    c = connect(server, clients)
    assert c.recv_n(3 + 3 * n) == (
        [(0, 0), (2, 0), (-1, 1)] + [(0, 1)] * n + [(1, 1)] * n + [(2, 1)] * n
    )
    assert a.recv_n(n) == [(2, 1)] * n
    assert b.recv_n(n) == [(2, 1)] * n
    b.close()
    # a departure: the ID without an fd, to every remaining peer
    assert a.recv_n(1) == [(1, 0)]
    assert c.recv_n(1) == [(1, 0)]
    assert server.peer_ids == [0, 2]


def test_eventfds_ring_across_peers(start_server: StartServer, clients: list[RawClient]) -> None:
    server = start_server(vectors=2)
    a, b = connect(server, clients), connect(server, clients)
    a.handshake()
    a_own = [a.recv()[1][0] for _ in range(2)]  # type: ignore[index]
    b.handshake()
    b_sees_a = [b.recv()[1][0] for _ in range(2)]  # type: ignore[index]
    b.recv_n(2)
    os.write(b_sees_a[1], (1).to_bytes(8, "little"))
    readable, _, _ = select.select(a_own, [], [], 5.0)
    assert readable == [a_own[1]]
    assert int.from_bytes(os.read(a_own[1], 8), "little") == 1


def test_zero_vectors_sends_only_handshake_and_departures(
    start_server: StartServer, clients: list[RawClient]
) -> None:
    server = start_server(vectors=0)
    a = connect(server, clients)
    assert a.handshake()[0] == 0
    b = connect(server, clients)
    assert b.handshake()[0] == 1
    b.close()
    assert a.recv_n(1) == [(1, 0)]


def test_ids_come_from_a_counter_that_skips_ids_in_use(
    start_server: StartServer, clients: list[RawClient]
) -> None:
    server = start_server(vectors=0)
    ids = [connect(server, clients).handshake()[0] for _ in range(3)]
    assert ids == [0, 1, 2]
    clients[0].close()
    assert clients[1].recv_n(1) == [(0, 0)]
    # a freed ID is not reused at once
    assert connect(server, clients).handshake()[0] == 3
    # the counter skips IDs still in use and wraps at 16 bits
    server._next_id = 1
    assert connect(server, clients).handshake()[0] == 4
    server._next_id = MAX_PEER_ID
    assert connect(server, clients).handshake()[0] == MAX_PEER_ID
    assert connect(server, clients).handshake()[0] == 0


@pytest.mark.parametrize(
    ("size", "expected"), [(1, 1), (3000, 4096), (4096, 4096), (5 << 20, 8 << 20)]
)
def test_shm_size_is_rounded_up_to_a_power_of_two(
    start_server: StartServer, clients: list[RawClient], size: int, expected: int
) -> None:
    assert pow2ceil(size) == expected
    server = start_server(shm_size=size)
    assert server.shm_size == expected
    _id, shm_fd = connect(server, clients).handshake()
    assert os.fstat(shm_fd).st_size == expected


def test_shared_memory_survives_peers_leaving_and_joining(
    start_server: StartServer, clients: list[RawClient]
) -> None:
    server = start_server(shm_size=64 << 10)
    a = connect(server, clients)
    _id, fd = a.handshake()
    with mmap.mmap(fd, 64 << 10) as mem:
        mem[100:105] = b"hello"
    a.close()
    b = connect(server, clients)
    _id, fd = b.handshake()
    with mmap.mmap(fd, 64 << 10) as mem:
        assert mem[100:105] == b"hello"


def test_posix_shm_reuses_an_existing_object_and_unlinks_it_at_exit(
    start_server: StartServer, clients: list[RawClient]
) -> None:
    name = shm_name()
    path = Path("/dev/shm") / name
    try:
        path.write_bytes(b"kept" + bytes(4092))
        server = start_server(shm_name=name, shm_size=4096)
        _id, fd = connect(server, clients).handshake()
        assert os.fstat(fd).st_ino == path.stat().st_ino
        assert os.pread(fd, 4, 0) == b"kept"
        server.stop()
        assert not path.exists()  # as QEMU's server does on exit
    finally:
        path.unlink(missing_ok=True)


def test_posix_shm_of_another_size_is_resized(
    start_server: StartServer, clients: list[RawClient]
) -> None:
    name = shm_name()
    path = Path("/dev/shm") / name
    try:
        path.write_bytes(bytes(100))
        server = start_server(shm_name=name, shm_size=3 << 20)
        assert path.stat().st_size == 4 << 20
        _id, fd = connect(server, clients).handshake()
        assert os.fstat(fd).st_size == 4 << 20
    finally:
        path.unlink(missing_ok=True)


def test_shm_dir_gets_a_unique_unlinked_file(
    start_server: StartServer, clients: list[RawClient], tmp_path: Path
) -> None:
    shm_dir = tmp_path / "mem"
    shm_dir.mkdir()
    server = start_server(shm_dir=shm_dir, shm_size=8192)
    assert list(shm_dir.iterdir()) == []
    _id, fd = connect(server, clients).handshake()
    st = os.fstat(fd)
    assert st.st_size == 8192
    assert st.st_nlink == 0


def test_stop_closes_clients_and_removes_the_socket(
    start_server: StartServer, clients: list[RawClient]
) -> None:
    server = start_server(vectors=1)
    a = connect(server, clients)
    a.recv_n(4)
    server.stop()
    assert a.at_eof()
    assert not os.path.exists(server.socket_path)
    server.stop()  # idempotent


def test_context_manager_without_a_loop(tmp_path: Path) -> None:
    path = tmp_path / "ctx.sock"
    with IvshmemServer(path) as server:
        assert path.exists()
        assert server.shm_fd >= 0
    assert not path.exists()
    assert server.shm_fd == -1


def test_a_stop_requested_before_start_is_kept(tmp_path: Path) -> None:
    """A signal handler's request that lands during start-up ends the server cleanly."""
    path = tmp_path / "early.sock"
    server = IvshmemServer(path)
    server.request_stop()
    early = threading.Thread(target=server.serve_forever, daemon=True)
    early.start()
    early.join(10)
    if early.is_alive():
        server.stop()
        pytest.fail("start() forgot the stop request: the server kept serving")
    assert not path.exists()
    assert server.shm_fd == -1
    # and a later run serves again until asked to stop
    thread = server.serve_in_background()
    assert path.exists()
    server.request_stop()
    thread.join(10)
    assert not thread.is_alive()
    assert not path.exists()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"vectors": 65}, "vectors"),
        ({"vectors": -1}, "vectors"),
        ({"shm_size": 0}, "shm_size"),
        ({"shm_name": "a/b"}, "shm_name"),
        ({"shm_name": "x", "shm_dir": "/tmp"}, "not both"),
        ({"max_peers": 0}, "max_peers"),
    ],
)
def test_bad_parameters_raise_value_error(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        IvshmemServer("/nonexistent/x.sock", **kwargs)  # type: ignore[arg-type]


def test_peer_library_works_with_the_server(start_server: StartServer) -> None:
    from ivhw.sw.peer import Doorbell, Peer, PeerJoined, PeerLeft

    server = start_server(vectors=3, shm_size=1 << 16)
    with Peer(server.socket_path, vectors=3) as a:
        with Peer(server.socket_path, vectors=3) as b:
            assert (a.id, b.id) == (0, 1)
            assert b.peers == {0: 3} and b.shm_size == 1 << 16
            assert a.wait(PeerJoined, timeout=5) == PeerJoined(1)
            b.memory[0:4] = b"ring"
            b.ring(0, 2)
            assert a.wait(Doorbell, timeout=5) == Doorbell(2, 1)
            assert a.memory[0:4] == b"ring"
        assert a.wait(PeerLeft, timeout=5) == PeerLeft(1)
