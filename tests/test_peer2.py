"""The peer library on protocol revision 2: sections, state, and every way a server can break it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import StartServer
from fakeserver import FakeConn, FakeServer, check_error_after_handshake, open_fds
from support import wait_for

from ivhw.sw.peer import Doorbell, Peer, PeerJoined, PeerLeft, PeerVector, ProtocolError, ServerGone
from ivhw.sw.protocol import EVENT_FD2, INIT2, MSG2_EVENT_FD, MSG2_HEADER, MSG2_INIT, MSG2_PEER_GONE
from ivhw.sw.server import IvshmemServer
from ivhw.sw.server2 import Ivshmem2Server

Script = Callable[[FakeConn], None]


def _init_body(peer=0, max_peers=4, vectors=1, protocol=0, out=4096, compat=2) -> bytes:
    return INIT2.pack(2, compat, peer, max_peers, vectors, protocol, out)


def _init_then(*steps: Callable[[FakeConn], object]) -> Script:
    def script(conn: FakeConn) -> None:
        conn.init2(0)
        for step in steps:
            step(conn)

    return script


def _event(
    peer: int, vector: int, fds: Callable[[FakeConn], list[int]]
) -> Callable[[FakeConn], None]:
    return lambda c: c.frame(MSG2_EVENT_FD, EVENT_FD2.pack(peer, vector), fds(c))


def _one_eventfd(c: FakeConn) -> list[int]:
    return [c.eventfd()]


HANDSHAKE_ERRORS: dict[str, tuple[Script, type[Exception], str]] = {
    "closed-at-once": (lambda c: c.sock.close(), ServerGone, "before sending the protocol"),
    "closed-inside-init": (
        lambda c: (c.raw(MSG2_HEADER.pack(MSG2_INIT, 40) + b"\0" * 8), c.sock.close()),
        ServerGone,
        "inside a message of type 0",
    ),
    "closed-after-init": (_init_then(lambda c: c.sock.close()), ServerGone, "0 of 1 own vectors"),
    "silent": (lambda c: None, TimeoutError, "before sending the protocol"),
    "stalls-inside-init": (
        lambda c: c.raw(MSG2_HEADER.pack(MSG2_INIT, 40) + b"\0" * 8),
        TimeoutError,
        "inside INIT",
    ),
    "stalls-after-init": (_init_then(), TimeoutError, "0 of 1 own vectors"),
    "first-is-event-fd": (
        lambda c: c.frame(MSG2_EVENT_FD, EVENT_FD2.pack(0, 0), [c.eventfd()]),
        ProtocolError,
        "type 1 where INIT",
    ),
    # the version message alone: the peer gives up on it and closes at once
    "first-is-rev1": (lambda c: c.send(0), ProtocolError, "this is a revision 1 server"),
    "init-too-short": (
        lambda c: c.frame(MSG2_INIT, _init_body()[:20], [c.memfd(1 << 16)]),
        ProtocolError,
        "INIT is 28 bytes, shorter than 40",
    ),
    "init-len-below-header": (
        lambda c: c.raw(MSG2_HEADER.pack(MSG2_INIT, 4)),
        ServerGone,
        "length 4, outside 8..4096",
    ),
    "init-len-huge": (
        lambda c: c.raw(MSG2_HEADER.pack(MSG2_INIT, 1 << 30)),
        ServerGone,
        "length 1073741824",
    ),
    "init-without-fd": (lambda c: c.frame(MSG2_INIT, _init_body()), ProtocolError, "0 fds, not 1"),
    "init-two-fds": (
        lambda c: c.frame(MSG2_INIT, _init_body(), [c.memfd(1 << 16), c.memfd(1 << 16)]),
        ProtocolError,
        "2 fds, not 1",
    ),
    "init-fd-is-eventfd": (
        lambda c: c.frame(MSG2_INIT, _init_body(), [c.eventfd()]),
        ProtocolError,
        "not a memory file",
    ),
    "compatible-version-3": (
        lambda c: c.frame(MSG2_INIT, _init_body(compat=3), [c.memfd(1 << 16)]),
        ProtocolError,
        "compatible with 3",
    ),
    "max-peers-1": (
        lambda c: c.frame(MSG2_INIT, _init_body(max_peers=1), [c.memfd(1 << 16)]),
        ProtocolError,
        "1 max peers",
    ),
    "id-beyond-max-peers": (
        lambda c: c.frame(MSG2_INIT, _init_body(peer=4), [c.memfd(1 << 16)]),
        ProtocolError,
        "peer ID 4, not below its 4 max peers",
    ),
    "vectors-0": (
        lambda c: c.frame(MSG2_INIT, _init_body(vectors=0), [c.memfd(1 << 16)]),
        ProtocolError,
        "0 vectors",
    ),
    "vectors-65": (
        lambda c: c.frame(MSG2_INIT, _init_body(vectors=65), [c.memfd(1 << 16)]),
        ProtocolError,
        "65 vectors",
    ),
    "layout-does-not-fit": (
        lambda c: c.frame(MSG2_INIT, _init_body(out=1 << 16), [c.memfd(1 << 16)]),
        ProtocolError,
        "layout does not fit",
    ),
    "output-not-page-multiple": (
        lambda c: c.frame(MSG2_INIT, _init_body(out=100), [c.memfd(1 << 16)]),
        ProtocolError,
        "multiple of 4096",
    ),
    "event-fd-too-short": (
        _init_then(lambda c: c.frame(MSG2_EVENT_FD, b"\0\0\0\0", [c.eventfd()])),
        ProtocolError,
        "EVENT_FD of 12 bytes",
    ),
    "event-fd-without-fd": (
        _init_then(_event(0, 0, lambda c: [])),
        ProtocolError,
        "with 0 fds",
    ),
    "event-fd-two-fds": (
        _init_then(_event(0, 0, lambda c: [c.eventfd(), c.eventfd()])),
        ProtocolError,
        "with 2 fds",
    ),
    "event-fd-is-shm": (
        _init_then(_event(0, 0, lambda c: [c.memfd(4096)])),
        ProtocolError,
        "not an eventfd",
    ),
    "event-fd-out-of-order": (
        _init_then(_event(1, 1, _one_eventfd)),
        ProtocolError,
        "vector 1 of peer 1 where vector 0 was due",
    ),
    "event-fd-beyond-vectors": (
        _init_then(_event(1, 0, _one_eventfd), _event(1, 1, _one_eventfd)),
        ProtocolError,
        "beyond its 1 vectors",
    ),
    "event-fd-peer-beyond-max": (
        _init_then(_event(9, 0, _one_eventfd)),
        ProtocolError,
        "peer 9, not below",
    ),
    "own-peer-gone": (_init_then(lambda c: c.gone2(0)), ProtocolError, "this peer \\(0\\) left"),
    "peer-gone-with-fd": (
        _init_then(lambda c: c.frame(MSG2_PEER_GONE, b"\1\0\0\0", [c.eventfd()])),
        ProtocolError,
        "1 fds with a message of type 2",
    ),
    "peer-gone-too-short": (
        _init_then(lambda c: c.frame(MSG2_PEER_GONE, b"")),
        ProtocolError,
        "PEER_GONE of 8 bytes",
    ),
    "peer-gone-beyond-max": (
        _init_then(lambda c: c.gone2(100)),
        ProtocolError,
        "PEER_GONE for peer 100",
    ),
    "unknown-type": (_init_then(lambda c: c.frame(7, b"")), ProtocolError, "unknown type 7"),
    "second-init": (
        _init_then(lambda c: c.init2(0)),
        ProtocolError,
        "second INIT",
    ),
}


@pytest.mark.parametrize("case", list(HANDSHAKE_ERRORS))
def test_handshake_error(case: str, tmp_path: Path) -> None:
    script, error, message = HANDSHAKE_ERRORS[case]
    path = str(tmp_path / "s")
    before = open_fds()
    with FakeServer(path, lambda conn, index: script(conn)) as server:
        start = time.monotonic()
        with pytest.raises(error, match=message) as info:
            Peer(path, timeout=0.3, revision=2)
        assert time.monotonic() - start < 2
        if error is ProtocolError:
            assert not isinstance(info.value, ServerGone)
        assert "\n" not in str(info.value)
    assert not server.errors
    assert open_fds() == before


AFTER_HANDSHAKE_ERRORS: dict[str, tuple[Script, type[Exception], str]] = {
    "own-gone": (lambda c: c.gone2(0), ProtocolError, "this peer"),
    "second-init": (lambda c: c.init2(0), ProtocolError, "second INIT"),
    "unknown-type": (lambda c: c.frame(9, b"xyz"), ProtocolError, "unknown type 9"),
    "event-fd-no-fd": (_event(2, 0, lambda c: []), ProtocolError, "0 fds"),
    "event-fd-extra-fd": (
        _event(2, 0, lambda c: [c.eventfd(), c.eventfd()]),
        ProtocolError,
        "2 fds",
    ),
    "gone-with-fd": (
        lambda c: c.frame(MSG2_PEER_GONE, b"\2\0\0\0", [c.eventfd()]),
        ProtocolError,
        "fds with a message of type 2",
    ),
    "len-too-long": (
        lambda c: c.raw(MSG2_HEADER.pack(MSG2_PEER_GONE, 9999)),
        ServerGone,
        "length 9999",
    ),
    "closed-mid-message": (
        lambda c: (c.raw(MSG2_HEADER.pack(MSG2_PEER_GONE, 12)), c.sock.close()),
        ServerGone,
        "inside",
    ),
    "stalls-mid-message": (
        lambda c: c.raw(MSG2_HEADER.pack(MSG2_PEER_GONE, 12)),
        ProtocolError,
        "partial message",
    ),
}


@pytest.mark.parametrize("case", list(AFTER_HANDSHAKE_ERRORS))
def test_error_after_handshake(case: str, tmp_path: Path) -> None:
    action, error, message = AFTER_HANDSHAKE_ERRORS[case]
    check_error_after_handshake(
        str(tmp_path / "s"), lambda conn: conn.handshake2(0, peers=(1,)), action, error, message
    )


def test_longer_messages_are_taken_for_later_revisions(tmp_path: Path) -> None:
    # as the RFC's device does: a message may grow, its known fields stay in front
    path = str(tmp_path / "s")

    def script(conn: FakeConn) -> None:
        conn.frame(MSG2_INIT, _init_body(vectors=1) + b"future", [conn.memfd(1 << 16)])
        conn.frame(MSG2_EVENT_FD, EVENT_FD2.pack(0, 0) + b"\0" * 8, [conn.eventfd()])

    with FakeServer(path, lambda conn, index: script(conn)), Peer(path, timeout=1) as peer:
        assert (peer.revision, peer.id, peer.vectors) == (2, 0, 1)


# -- against the real servers ---------------------------------------------------------------


@pytest.fixture
def server2(start_server: StartServer) -> Ivshmem2Server:
    return start_server(  # type: ignore[return-value]
        Ivshmem2Server, shm_size=1 << 20, output_section_size=1 << 16, max_peers=4, vectors=2
    )


def test_sections_are_separate_and_protected(server2: Ivshmem2Server) -> None:
    with Peer(server2.socket_path) as a, Peer(server2.socket_path) as b:
        assert (a.revision, a.id, b.id, a.vectors, a.max_peers) == (2, 0, 1, 2, 4)
        layout = a.layout
        assert layout is not None and layout == server2.layout
        assert len(a.state_table) == 4096 and len(a.rw) == (1 << 20) - 4096 - 4 * (1 << 16)
        assert len(a.output) == 1 << 16 and len(a.outputs) == 4 << 16
        a.rw[0:4] = b"ping"
        assert bytes(b.rw[0:4]) == b"ping"
        a.output[0:5] = b"hello"
        assert bytes(b.output_of(0)[0:5]) == b"hello"
        assert bytes(a.output_of(0)[0:5]) == b"hello"
        for read_only in (b.output_of(0), b.state_table, b.outputs, b.memory):
            with pytest.raises(TypeError):
                read_only[0] = 1
        # each section maps to its place: the own output section is where the layout says
        assert bytes(a.memory[layout.output(0).offset : layout.output(0).offset + 5]) == b"hello"
        assert bytes(a.memory[layout.rw.offset : layout.rw.offset + 4]) == b"ping"


def test_state_goes_to_the_table_and_rings_vector_0_on_change(server2: Ivshmem2Server) -> None:
    with Peer(server2.socket_path) as a, Peer(server2.socket_path) as b:
        assert a.wait(PeerJoined, timeout=2) == PeerJoined(1)
        assert a.state == 0 and b.state_of(0) == 0
        a.state = 0xDEADBEEF
        assert b.wait(Doorbell, timeout=2) == Doorbell(0, 1)
        assert b.state_of(0) == 0xDEADBEEF and a.state == 0xDEADBEEF
        a.state = 0xDEADBEEF  # unchanged: stored, but nobody is rung
        with pytest.raises(TimeoutError):
            b.wait(Doorbell, timeout=0.2)
        with pytest.raises(ValueError, match="u32"):
            a.state = -1
        b.state = 3
        assert a.wait(Doorbell, timeout=2) == Doorbell(0, 1)
        assert a.state_of(1) == 3


def test_revision_2_only_api_on_revision_1(start_server: StartServer) -> None:
    server = start_server(vectors=1)
    with Peer(server.socket_path) as peer:
        assert peer.revision == 1 and peer.layout is None
        with pytest.raises(ValueError, match="revision 2 only"):
            _ = peer.state


def test_revision_forced_against_the_other_server(start_server: StartServer) -> None:
    one: IvshmemServer = start_server(vectors=1)
    two = start_server(Ivshmem2Server)
    before = open_fds()
    with pytest.raises(ProtocolError, match="revision 1 server"):
        Peer(one.socket_path, revision=2)
    with pytest.raises(ProtocolError, match="speaks protocol revision 2"):
        Peer(two.socket_path, revision=1)
    # the servers close what they made for the refused peers once they see them go
    wait_for(lambda: not one.peer_ids and not two.peer_ids and open_fds() == before)


def test_max_peers_reached(start_server: StartServer) -> None:
    server = start_server(Ivshmem2Server, max_peers=2)
    with (
        Peer(server.socket_path),
        Peer(server.socket_path),
        pytest.raises(ServerGone, match="refuse more peers"),
    ):
        Peer(server.socket_path, timeout=2)
    wait_for(lambda: server.peer_ids == [])  # the server has seen both leave
    with Peer(server.socket_path) as again:
        assert again.id == 0


def test_thousand_join_leave_cycles(server2: Ivshmem2Server) -> None:
    with Peer(server2.socket_path) as stay:
        baseline = open_fds()
        for _ in range(1000):
            with Peer(server2.socket_path) as visitor:
                assert visitor.id == 1
            assert stay.wait(PeerLeft, timeout=5) == PeerLeft(1)
        events = stay.poll()
        assert {type(e) for e in events} <= {PeerJoined, PeerVector}
        assert stay.peers == {}
        assert open_fds() == baseline


_CHILD = """
import sys, time
from ivhw.sw.peer import Peer
peer = Peer(sys.argv[1])
peer.state = 0x5EED
print(peer.id, flush=True)
time.sleep(60)
"""


def test_killed_peer_state_is_zero_before_its_peer_gone(server2: Ivshmem2Server) -> None:
    with Peer(server2.socket_path) as watcher:
        child = subprocess.Popen(
            [sys.executable, "-c", _CHILD, server2.socket_path], stdout=subprocess.PIPE, text=True
        )
        try:
            assert child.stdout is not None
            child_id = int(child.stdout.readline())
            assert watcher.wait(Doorbell, timeout=5) == Doorbell(0, 1)
            assert watcher.state_of(child_id) == 0x5EED
            os.kill(child.pid, signal.SIGKILL)
            assert watcher.wait(PeerLeft, timeout=5) == PeerLeft(child_id)
            assert watcher.state_of(child_id) == 0
        finally:
            child.kill()
            child.wait()
            child.stdout.close()  # type: ignore[union-attr]
