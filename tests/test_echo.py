"""The echo protocol in software: requests, replies, several requesters at once."""

from __future__ import annotations

import struct
import threading
import time

import pytest
from conftest import StartServer

from ivhw.sw import echo
from ivhw.sw.peer import Peer
from ivhw.sw.server import IvshmemServer


@pytest.fixture
def server(start_server: StartServer) -> IvshmemServer:
    """An in-process server with 2 vectors and 64 KiB of memfd shared memory."""
    return start_server(shm_size=0x20000, vectors=2)


def _responder(peer: Peer, stop: threading.Event) -> threading.Thread:
    responder = echo.EchoResponder(peer)

    def run() -> None:
        while not stop.is_set():
            responder.run(until=time.monotonic() + 0.05)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_layout_matches_the_protocol() -> None:
    assert echo.outbox(0) == 0x1000 and echo.outbox(3) == 0x10C0
    assert echo.inbox(0) == 0x9000 and echo.inbox(3) == 0x90C0
    assert echo.MAX_PAYLOAD == 56
    assert echo.invert(b"\x00\x0f\xff") == b"\xff\xf0\x00"
    with pytest.raises(ValueError, match="mailboxes"):
        echo.outbox(echo.MAX_PEERS)


def test_request_gets_the_inverted_payload(server: IvshmemServer) -> None:
    stop = threading.Event()
    with Peer(server.socket_path, vectors=2) as responder_peer:
        thread = _responder(responder_peer, stop)
        with Peer(server.socket_path, vectors=2) as host:
            for payload in (b"x", b"hello", bytes(range(56))):
                reply = echo.request(host, responder_peer.id, payload)
                assert reply.source == responder_peer.id
                assert reply.payload == echo.invert(payload)
                assert reply.rtt > 0
            # the outbox is emptied by the responder
            _target, length = struct.unpack_from("<II", host.memory, echo.outbox(host.id))
            assert length == 0
        stop.set()
        thread.join(timeout=5)


def test_every_simultaneous_requester_is_served(server: IvshmemServer) -> None:
    """Requests written by several peers before one doorbell are all answered."""
    with Peer(server.socket_path, vectors=2) as responder_peer:
        hosts = [Peer(server.socket_path, vectors=2) for _ in range(4)]
        try:
            deadline = time.monotonic() + 10
            while len(responder_peer.peers) < len(hosts):  # learn about every host
                responder_peer.poll(max(0.0, deadline - time.monotonic()))
                assert time.monotonic() < deadline, "the responder never saw every host join"
            for n, host in enumerate(hosts):
                box = echo.outbox(host.id)
                struct.pack_into("<I", host.memory, box, responder_peer.id)
                host.memory[box + 8 : box + 8 + 3] = bytes([n, n, n])
                struct.pack_into("<I", host.memory, box + 4, 3)
            hosts[0].ring(responder_peer.id, 1)
            served = echo.EchoResponder(responder_peer)
            responder_peer.wait(timeout=5)
            assert served.serve_pending() == len(hosts)
            for n, host in enumerate(hosts):
                source, length = struct.unpack_from("<II", host.memory, echo.inbox(host.id))
                assert (source, length) == (responder_peer.id, 3)
                got = bytes(host.memory[echo.inbox(host.id) + 8 : echo.inbox(host.id) + 11])
                assert got == bytes([n ^ 0xFF] * 3)
                host.wait(timeout=5)  # each requester was rung on vector 0
        finally:
            for host in hosts:
                host.close()


def test_request_validation_and_timeout(server: IvshmemServer) -> None:
    with Peer(server.socket_path) as silent, Peer(server.socket_path) as host:
        with pytest.raises(ValueError, match=r"1\.\.56"):
            echo.request(host, silent.id, b"")
        with pytest.raises(ValueError, match=r"1\.\.56"):
            echo.request(host, silent.id, bytes(57))
        with pytest.raises(TimeoutError, match=f"no echo from peer {silent.id}"):
            echo.request(host, silent.id, b"anyone?", timeout=0.2)
        _target, length = struct.unpack_from("<II", host.memory, echo.outbox(host.id))
        assert length == 0  # a late echo cannot answer the abandoned request
