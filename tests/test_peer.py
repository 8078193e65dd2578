"""The peer library against a scripted fake server: handshake, events, ringing, fd hygiene."""

from __future__ import annotations

import asyncio
import os
import select
import time
from pathlib import Path

import pytest
from fakeserver import FakeConn, FakeServer, open_fds

from ivhw.sw.peer import (
    Doorbell,
    Peer,
    PeerJoined,
    PeerLeft,
    PeerVector,
    ServerGone,
)


@pytest.fixture
def sock_path(tmp_path: Path) -> str:
    return str(tmp_path / "ivshmem.sock")


@pytest.fixture
def no_leak():
    """Fail the test if it leaves fds open (the fake server is stopped inside the test)."""
    before = open_fds()
    yield
    leaked = open_fds() - before
    assert not leaked, {fd: _link(fd) for fd in leaked}


def _link(fd: int) -> str:
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return "?"


def test_handshake_maps_shm_and_learns_peers(sock_path: str, no_leak: None) -> None:
    def script(conn: FakeConn, index: int) -> None:
        conn.handshake(3, vectors=2, peers={1: 2, 2: 1}, shm_size=1 << 16)

    with FakeServer(sock_path, script) as server, Peer(sock_path, vectors=2) as peer:
        assert peer.id == 3
        assert peer.vectors == 2
        assert peer.shm_size == 1 << 16
        assert len(peer.shm) == 1 << 16
        assert peer.peers == {1: 2, 2: 1}
        assert peer.poll() == []  # the initial state is no event
        # the mapping is shared with the server's file
        peer.memory[100:105] = b"hello"
        conn = server.conn()
        shm_fd = conn._fds[0]
        assert os.pread(shm_fd, 5, 100) == b"hello"
        os.pwrite(shm_fd, b"world", 200)
        assert bytes(peer.memory[200:205]) == b"world"
        assert len(peer.eventfds(1)) == 2
        assert len(peer.eventfds(peer.id)) == 2
    assert not server.errors


def test_vectors_none_takes_the_whole_burst(sock_path: str, no_leak: None) -> None:
    def script(conn: FakeConn, index: int) -> None:
        conn.handshake(0, vectors=4, peers={5: 4})

    with FakeServer(sock_path, script) as server, Peer(sock_path) as peer:
        # existing peers come before own vectors, so they are all there
        assert peer.peers == {5: 4}
        assert peer.vectors >= 1
        server.conn()  # the burst is sent
        # own vectors trailing behind the handshake are still taken
        assert peer.poll() == []
        assert peer.vectors == 4


def test_settle_waits_for_a_slow_burst(sock_path: str, no_leak: None) -> None:
    def script(conn: FakeConn, index: int) -> None:
        conn.preamble(0)
        conn.own_vectors(0, 1)
        time.sleep(0.05)
        conn.own_vectors(0, 1)

    with FakeServer(sock_path, script), Peer(sock_path, settle=1) as peer:
        assert peer.vectors == 2


def test_vectors_zero_stops_after_shm(sock_path: str, no_leak: None) -> None:
    with FakeServer(sock_path, lambda c, i: c.preamble(9)), Peer(sock_path, vectors=0) as peer:
        assert (peer.id, peer.vectors) == (9, 0)


def test_extra_own_vectors_are_closed(sock_path: str, no_leak: None) -> None:
    def script(conn: FakeConn, index: int) -> None:
        conn.handshake(1, vectors=3)

    with FakeServer(sock_path, script) as server, Peer(sock_path, vectors=1) as peer:
        assert peer.vectors == 1
        conn = server.conn()  # the burst is sent
        before = open_fds()
        assert peer.poll() == []  # the two extra fds arrive and are closed
        assert open_fds() == before
        assert peer.vectors == 1
        conn.ring_client(0)
        assert peer.wait(timeout=2) == Doorbell(0, 1)
        with pytest.raises(ValueError, match="no vector 1"):
            peer.ring(peer.id, 1)


def test_doorbells_coalesce_and_ring_self(sock_path: str, no_leak: None) -> None:
    with (
        FakeServer(sock_path, lambda c, i: c.handshake(0, vectors=2)) as server,
        Peer(sock_path, vectors=2) as peer,
    ):
        conn = server.conn()
        conn.ring_client(1, times=3)
        assert peer.wait(timeout=2) == Doorbell(1, 3)
        peer.ring(peer.id, 0)
        assert peer.wait(timeout=2) == Doorbell(0, 1)
        assert peer.poll() == []


def test_ring_other_peer_and_bad_targets(sock_path: str, no_leak: None) -> None:
    def script(conn: FakeConn, index: int) -> None:
        conn.handshake(0, peers={4: 2})

    with FakeServer(sock_path, script) as server, Peer(sock_path) as peer:
        conn = server.conn()
        peer.ring(4, 1)
        peer.ring(4, 1)
        assert conn.rung(4, 1) == 2
        assert conn.rung(4, 0) == 0
        with pytest.raises(KeyError, match="no peer 5"):
            peer.ring(5, 0)
        with pytest.raises(ValueError, match="peer 4 has no vector 2"):
            peer.ring(4, 2)
        with pytest.raises(ValueError, match="no vector -1"):
            peer.ring(4, -1)


def test_join_and_leave_events(sock_path: str, no_leak: None) -> None:
    with FakeServer(sock_path, lambda c, i: c.handshake(0)) as server, Peer(sock_path) as peer:
        conn = server.conn()
        conn.add_peer(7, 2)
        assert peer.wait(PeerVector, timeout=2) == PeerVector(7, 0)
        # the PeerJoined before it was kept for poll()
        assert peer.wait(lambda e: e == PeerVector(7, 1), timeout=2) == PeerVector(7, 1)
        assert peer.poll() == [PeerJoined(7)]
        assert peer.peers == {7: 2}
        conn.remove_peer(7)
        assert peer.wait(timeout=2) == PeerLeft(7)
        assert peer.peers == {}
        with pytest.raises(KeyError):
            peer.ring(7, 0)


def test_poll_collects_everything_pending(sock_path: str, no_leak: None) -> None:
    with (
        FakeServer(sock_path, lambda c, i: c.handshake(0, vectors=2)) as server,
        Peer(sock_path, vectors=2) as peer,
    ):
        conn = server.conn()
        conn.add_peer(2, 1)
        conn.ring_client(0)
        conn.ring_client(1)
        conn.remove_peer(2)
        time.sleep(0.05)
        events = peer.poll()
        assert sorted(map(repr, events)) == sorted(
            map(
                repr,
                [PeerJoined(2), PeerVector(2, 0), PeerLeft(2), Doorbell(0, 1), Doorbell(1, 1)],
            )
        )
        # server messages keep their order
        server_events = [e for e in events if not isinstance(e, Doorbell)]
        assert server_events == [PeerJoined(2), PeerVector(2, 0), PeerLeft(2)]


def test_wait_times_out_and_poll_waits(sock_path: str, no_leak: None) -> None:
    with FakeServer(sock_path, lambda c, i: c.handshake(0)) as server, Peer(sock_path) as peer:
        start = time.monotonic()
        with pytest.raises(TimeoutError):
            peer.wait(timeout=0.1)
        assert time.monotonic() - start >= 0.09
        assert peer.poll(0.05) == []
        server.conn().ring_client(0)
        assert peer.poll(None) == [Doorbell(0, 1)]


def test_fileno_is_selectable(sock_path: str, no_leak: None) -> None:
    with FakeServer(sock_path, lambda c, i: c.handshake(0)) as server, Peer(sock_path) as peer:
        assert select.select([peer], [], [], 0)[0] == []
        server.conn().ring_client(0)
        assert select.select([peer], [], [], 2)[0] == [peer]
        assert peer.poll() == [Doorbell(0, 1)]
        assert select.select([peer], [], [], 0)[0] == []
        server.conn().add_peer(1)
        assert select.select([peer], [], [], 2)[0] == [peer]


def test_wait_async(sock_path: str, no_leak: None) -> None:
    async def main(peer: Peer, conn: FakeConn) -> None:
        loop = asyncio.get_running_loop()
        loop.call_later(0.05, conn.ring_client, 0)
        loop.call_later(0.06, conn.add_peer, 3)
        assert await peer.wait_async(PeerJoined, timeout=2) == PeerJoined(3)
        assert await peer.wait_async(Doorbell, timeout=2) == Doorbell(0, 1)
        with pytest.raises(TimeoutError):
            await peer.wait_async(PeerLeft, timeout=0.05)
        assert peer.poll() == [PeerVector(3, 0)]

    with FakeServer(sock_path, lambda c, i: c.handshake(0)) as server, Peer(sock_path) as peer:
        asyncio.run(main(peer, server.conn()))


def test_server_gone_after_handshake(sock_path: str, no_leak: None) -> None:
    def script(conn: FakeConn, index: int) -> None:
        conn.handshake(0, peers={1: 1})

    with FakeServer(sock_path, script) as server, Peer(sock_path) as peer:
        conn = server.conn()
        conn.ring_client(0)
        time.sleep(0.05)
        conn.sock.close()
        with pytest.raises(ServerGone, match="closed"):
            peer.wait(PeerLeft, timeout=2)
        assert peer.server_gone
        # the doorbell received before is kept, and eventfds still work
        assert peer.poll() == [Doorbell(0, 1)]
        conn.ring_client(0)
        assert peer.wait(timeout=2) == Doorbell(0, 1)
        peer.ring(1, 0)


def test_connect_failure(tmp_path: Path, no_leak: None) -> None:
    with pytest.raises(FileNotFoundError):
        Peer(str(tmp_path / "missing.sock"))
    with pytest.raises(ValueError, match="vectors"):
        Peer(str(tmp_path / "missing.sock"), vectors=65)


def test_closed_peer(sock_path: str, no_leak: None) -> None:
    with FakeServer(sock_path, lambda c, i: c.handshake(0)):
        peer = Peer(sock_path)
        peer.close()
        peer.close()
        with pytest.raises(ValueError, match="closed"):
            peer.poll()
        with pytest.raises(ValueError, match="closed"):
            peer.ring(peer.id, 0)


def test_many_peers_and_vectors_no_leak(sock_path: str, no_leak: None) -> None:
    def script(conn: FakeConn, index: int) -> None:
        conn.handshake(10, vectors=64, peers={i: 64 for i in range(3)})

    with FakeServer(sock_path, script) as server:
        for _ in range(3):
            with Peer(sock_path, vectors=64) as peer:
                assert peer.vectors == 64
                assert peer.peers == {0: 64, 1: 64, 2: 64}
        assert len(server.conns) == 3
