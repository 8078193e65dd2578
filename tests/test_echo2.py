"""The revision 2 echo protocol in software: output-section slots, readiness, several requesters."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest
from conftest import StartServer
from support import wait_for

from ivhw.sw import echo2
from ivhw.sw.peer import Peer, PeerJoined
from ivhw.sw.server2 import Ivshmem2Server


@pytest.fixture
def server(start_server: StartServer) -> Ivshmem2Server:
    return start_server(  # type: ignore[return-value]
        Ivshmem2Server, shm_size=1 << 16, output_section_size=4096, max_peers=4, vectors=1
    )


@pytest.fixture
def responder(server: Ivshmem2Server) -> Iterator[echo2.Echo2Responder]:
    stop = threading.Event()
    with Peer(server.socket_path) as peer:
        serving = echo2.Echo2Responder(peer)

        def run() -> None:
            while not stop.is_set():
                serving.run(until=time.monotonic() + 0.05)

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        yield serving
        stop.set()
        thread.join(5)


def test_slots() -> None:
    assert echo2.slot(0) == 0 and echo2.slot(3) == 0xC0
    assert echo2.max_peers_for(4096) == 64


def test_request_and_reply_in_the_output_sections(
    server: Ivshmem2Server, responder: echo2.Echo2Responder
) -> None:
    with Peer(server.socket_path) as a:
        for i in range(20):
            payload = bytes([i, 0x0F, 0xFF]) * (1 + i % 18)
            reply = echo2.request2(a, responder.peer.id, payload, timeout=5)
            assert reply.source == responder.peer.id and reply.payload == echo2.invert(payload)
        assert a.state == echo2.READY
        # the request sits in our own output section, the reply in the responder's
        assert bytes(a.output[8:11]) == bytes([19, 0x0F, 0xFF])
        reply_slot = a.output_of(responder.peer.id)[echo2.slot(a.id) :]
        assert bytes(reply_slot[8:11]) == echo2.invert(bytes([19, 0x0F, 0xFF]))
    # the responder counts a request after it has rung the reply: the last one may lag
    wait_for(lambda: responder.served == 20, timeout=5)


def test_two_requesters_at_once(server: Ivshmem2Server, responder: echo2.Echo2Responder) -> None:
    results: dict[int, list[bytes]] = {}

    def client(tag: int) -> None:
        with Peer(server.socket_path) as peer:
            results[tag] = [
                echo2.request2(peer, responder.peer.id, bytes([tag, n]), timeout=5).payload
                for n in range(50)
            ]

    threads = [threading.Thread(target=client, args=(t,)) for t in (1, 2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    for tag in (1, 2):
        assert results[tag] == [echo2.invert(bytes([tag, n])) for n in range(50)]


def test_a_peer_that_is_not_ready_is_not_sent_to(server: Ivshmem2Server) -> None:
    with Peer(server.socket_path) as a, Peer(server.socket_path) as b:
        with pytest.raises(ConnectionError, match="not known"):
            echo2.request2(a, b.id, b"x")
        assert a.wait(PeerJoined, timeout=2) == PeerJoined(b.id)
        with pytest.raises(ConnectionError, match="not a ready echo peer"):
            echo2.request2(a, b.id, b"x")
        b.state = echo2.READY  # claims to serve, but does not
        with pytest.raises(TimeoutError, match="no echo"):
            echo2.request2(a, b.id, b"x", timeout=0.2)


def test_requests_of_a_peer_that_is_not_ready_are_not_served(server: Ivshmem2Server) -> None:
    with Peer(server.socket_path) as e, Peer(server.socket_path) as r:
        serving = echo2.Echo2Responder(e)
        r.output[echo2.slot(e.id) : echo2.slot(e.id) + 9] = b"\1\0\0\0\1\0\0\0x"
        assert serving.serve_pending() == 0  # r's state is 0
        r.state = echo2.READY
        assert serving.serve_pending() == 1
        assert serving.serve_pending() == 0  # answered: no longer pending


def test_too_small_output_sections_and_revision_1(start_server: StartServer) -> None:
    small = start_server(Ivshmem2Server, shm_size=1 << 16, max_peers=4)
    with Peer(small.socket_path) as peer, pytest.raises(ValueError, match="-o 256"):
        echo2.Echo2Responder(peer)
    one = start_server(vectors=1)
    with Peer(one.socket_path) as peer, pytest.raises(ValueError, match="revision 2 peer"):
        echo2.request2(peer, 0, b"x")


def test_payload_bounds(server: Ivshmem2Server, responder: echo2.Echo2Responder) -> None:
    with Peer(server.socket_path) as a:
        for bad in (b"", bytes(57)):
            with pytest.raises(ValueError, match=r"1\.\.56"):
                echo2.request2(a, responder.peer.id, bad)
