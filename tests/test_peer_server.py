"""The peer library end to end against the real ``ivhw.sw.server``."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest
from conftest import StartServer
from fakeserver import open_fds

from ivhw.sw.peer import Doorbell, Peer, PeerJoined, PeerLeft, PeerVector, ServerGone
from ivhw.sw.server import IvshmemServer

VECTORS = 4


@pytest.fixture
def server(start_server: StartServer) -> IvshmemServer:
    return start_server(shm_size=1 << 16, vectors=VECTORS)


def _announced(peer: Peer, other: int) -> None:
    """Wait until ``peer`` knows every vector of ``other``."""
    while peer.peers.get(other, 0) < VECTORS:
        peer.wait(PeerVector, timeout=5)


def test_two_peers_ring_each_other_on_every_vector(server: IvshmemServer) -> None:
    with (
        Peer(server.socket_path, vectors=VECTORS) as a,
        Peer(server.socket_path, vectors=VECTORS) as b,
    ):
        assert a.id != b.id
        assert b.peers == {a.id: VECTORS}
        _announced(a, b.id)
        for vector in range(VECTORS):
            a.ring(b.id, vector)
            assert b.wait(Doorbell, timeout=5) == Doorbell(vector, 1)
            b.ring(a.id, vector)
            assert a.wait(Doorbell, timeout=5) == Doorbell(vector, 1)
        # rings that pile up before the receiver looks coalesce into one count
        for _ in range(3):
            a.ring(b.id, 2)
        assert b.wait(Doorbell, timeout=5) == Doorbell(2, 3)
        assert a.poll() == [PeerJoined(b.id)]  # left behind by wait(PeerVector)
        assert b.poll() == []


def test_join_and_leave_notifications(server: IvshmemServer) -> None:
    with Peer(server.socket_path, vectors=VECTORS) as a:
        assert a.peers == {}
        b = Peer(server.socket_path, vectors=VECTORS)
        with b:
            assert a.wait(timeout=5) == PeerJoined(b.id)
            for vector in range(VECTORS):
                assert a.wait(timeout=5) == PeerVector(b.id, vector)
            assert a.peers == {b.id: VECTORS}
            with Peer(server.socket_path, vectors=VECTORS) as c:
                assert c.peers == {a.id: VECTORS, b.id: VECTORS}
                _announced(b, c.id)
            assert a.wait(PeerLeft, timeout=5) == PeerLeft(c.id)
            assert b.wait(PeerLeft, timeout=5) == PeerLeft(c.id)
        assert a.wait(PeerLeft, timeout=5) == PeerLeft(b.id)
        assert a.peers == {}
        with pytest.raises(KeyError):
            a.ring(b.id, 0)


def test_shared_memory_seen_by_both(server: IvshmemServer) -> None:
    with (
        Peer(server.socket_path, vectors=VECTORS) as a,
        Peer(server.socket_path, vectors=VECTORS) as b,
    ):
        assert a.shm_size == b.shm_size == 1 << 16
        a.memory[0:4] = b"ping"
        a.memory[-4:] = b"tail"
        assert bytes(b.memory[0:4]) == b"ping"
        assert bytes(b.memory[-4:]) == b"tail"
        b.shm[8:12] = b"pong"
        assert a.shm[8:12] == b"pong"


def test_wait_async_with_real_server(server: IvshmemServer) -> None:
    async def main(a: Peer) -> None:
        loop = asyncio.get_running_loop()
        b = await loop.run_in_executor(None, lambda: Peer(server.socket_path, vectors=VECTORS))
        with b:
            assert await a.wait_async(PeerJoined, timeout=5) == PeerJoined(b.id)
            b.ring(a.id, 3)
            assert await a.wait_async(Doorbell, timeout=5) == Doorbell(3, 1)

    with Peer(server.socket_path, vectors=VECTORS) as a:
        asyncio.run(main(a))


def test_server_stop_is_server_gone(tmp_path: Path) -> None:
    srv = IvshmemServer(str(tmp_path / "s"), shm_size=4096, vectors=1)
    srv.serve_in_background()
    try:
        with Peer(srv.socket_path) as a, Peer(srv.socket_path) as b:
            _ = b.id
            srv.stop()
            with pytest.raises(ServerGone):
                while True:
                    a.wait(timeout=5)
            # the eventfds outlive the server
            b.ring(a.id, 0)
            assert a.wait(timeout=5) == Doorbell(0, 1)
    finally:
        srv.stop()


def test_no_fd_leak_with_real_server(tmp_path: Path) -> None:
    srv = IvshmemServer(str(tmp_path / "s"), shm_size=4096, vectors=VECTORS)
    srv.serve_in_background()
    try:
        with Peer(srv.socket_path, vectors=VECTORS):
            before = open_fds()
            for _ in range(5):
                with Peer(srv.socket_path, vectors=VECTORS) as b, Peer(srv.socket_path) as c:
                    b.wait(PeerJoined, timeout=5)
                    b.ring(c.id, 0)
                    assert c.wait(Doorbell, timeout=5) == Doorbell(0, 1)
            # the server thread's own fds for departed peers may take a moment to close
            for _ in range(100):
                if open_fds() <= before:
                    break
                os.sched_yield()
                asyncio.run(asyncio.sleep(0.01))
            assert open_fds() <= before, {fd: _link(fd) for fd in open_fds() - before}
    finally:
        srv.stop()


def _link(fd: int) -> str:
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return "?"
