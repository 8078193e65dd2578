"""The echo protocol: a request/reply mailbox in shared memory (docs/echo-protocol.md).

Peer P's *outbox* is 64 bytes at ``0x1000 + 0x40*P``: u32 target ID, u32 length
(0 = empty, at most 56), 56 bytes of payload. Peer P's *inbox* is 64 bytes at
``0x9000 + 0x40*P``: u32 source ID, u32 length, payload. A requester writes
target, payload and then the length last into its own outbox and rings the
echo peer on any vector. On every interrupt the echo peer serves every outbox
whose target is itself and whose length is non-zero: it writes its ID, the
length and the payload with every byte XOR 0xFF into the requester's inbox,
sets the outbox length to 0 and rings the requester on vector 0.

This module is the software side of the protocol: :class:`EchoResponder`
(the reference the HDL echo guest is checked against) and :func:`request`.
"""

from __future__ import annotations

import struct
import time
from collections.abc import Iterable
from dataclasses import dataclass

from ivhw.sw.peer import Doorbell, Peer

__all__ = [
    "INBOX_BASE",
    "LENGTH_OFFSET",
    "MAX_PAYLOAD",
    "MAX_PEERS",
    "OUTBOX_BASE",
    "PAYLOAD_OFFSET",
    "SLOT_SIZE",
    "EchoResponder",
    "Reply",
    "inbox",
    "invert",
    "outbox",
    "request",
]

OUTBOX_BASE = 0x1000
INBOX_BASE = 0x9000
SLOT_SIZE = 0x40
_HEADER = struct.Struct("<II")  # target/source ID, length
MAX_PAYLOAD = SLOT_SIZE - _HEADER.size
#: Outboxes end where the inboxes begin.
MAX_PEERS = (INBOX_BASE - OUTBOX_BASE) // SLOT_SIZE
#: Offsets in a slot: the length word, and the payload after the two header words.
LENGTH_OFFSET = 4
PAYLOAD_OFFSET = _HEADER.size
_LENGTH = LENGTH_OFFSET


def outbox(peer: int) -> int:
    """Shared-memory offset of ``peer``'s outbox."""
    return OUTBOX_BASE + SLOT_SIZE * _check_peer(peer)


def inbox(peer: int) -> int:
    """Shared-memory offset of ``peer``'s inbox."""
    return INBOX_BASE + SLOT_SIZE * _check_peer(peer)


def invert(payload: bytes) -> bytes:
    """The echo of ``payload``: every byte XOR 0xFF."""
    return bytes(b ^ 0xFF for b in payload)


def _check_peer(peer: int) -> int:
    if not 0 <= peer < MAX_PEERS:
        raise ValueError(f"echo mailboxes exist for peers 0..{MAX_PEERS - 1}, not {peer}")
    return peer


def _check_room(memory: memoryview, peer: int) -> None:
    end = inbox(peer) + SLOT_SIZE
    if len(memory) < end:
        raise ValueError(
            f"shared memory of {len(memory)} bytes has no inbox for peer {peer} "
            f"(needs {end:#x} bytes)"
        )


@dataclass(frozen=True)
class Reply:
    """An echo reply: who answered, what, and the round trip in seconds."""

    source: int
    payload: bytes
    rtt: float


def request(
    peer: Peer, target: int, payload: bytes, *, vector: int = 0, timeout: float = 5.0
) -> Reply:
    """Send ``payload`` to the echo peer ``target`` and wait for its reply.

    Raises ``ValueError`` for a payload over 56 bytes, ``TimeoutError`` when no
    reply arrives in time (the outbox is emptied again so a late echo cannot
    answer a stale request).
    """
    if not 1 <= len(payload) <= MAX_PAYLOAD:
        raise ValueError(f"an echo payload is 1..{MAX_PAYLOAD} bytes, not {len(payload)}")
    memory = peer.memory
    _check_room(memory, peer.id)
    box, reply_box = outbox(peer.id), inbox(peer.id)
    struct.pack_into("<I", memory, reply_box + _LENGTH, 0)
    struct.pack_into("<I", memory, box, target)
    memory[box + _HEADER.size : box + _HEADER.size + len(payload)] = payload
    start = time.perf_counter()
    struct.pack_into("<I", memory, box + _LENGTH, len(payload))  # the length goes last
    peer.ring(target, vector)
    deadline = start + timeout
    while True:
        # The doorbell first, then the inbox (protocol step 5): the responder publishes the
        # reply length before it clears our outbox, so a reply seen before its doorbell
        # could let our next request be cleared by this one's outbox write.
        remaining = deadline - time.perf_counter()
        if remaining <= 0:
            struct.pack_into("<I", memory, box + _LENGTH, 0)
            raise TimeoutError(f"no echo from peer {target} within {timeout:g} s")
        try:
            peer.wait(lambda e: isinstance(e, Doorbell) and e.vector == 0, remaining)
        except TimeoutError:
            continue
        source, length = _HEADER.unpack_from(memory, reply_box)
        if length:
            rtt = time.perf_counter() - start
            data = bytes(memory[reply_box + _HEADER.size : reply_box + _HEADER.size + length])
            return Reply(source, data, rtt)


class EchoResponder:
    """The echo peer in software: serves every pending request of the known peers.

    Parameters
    ----------
    peer : Peer
        The connection the responder answers on.

    Attributes
    ----------
    served : int
        Requests answered so far.
    """

    def __init__(self, peer: Peer) -> None:
        self.peer = peer
        self.served = 0

    def serve_pending(self, requesters: Iterable[int] | None = None) -> int:
        """Answer every outbox addressed to this peer; return how many were answered."""
        peer, memory = self.peer, self.peer.memory
        answered = 0
        for requester in sorted(peer.peers if requesters is None else requesters):
            if requester >= MAX_PEERS or len(memory) < inbox(requester) + SLOT_SIZE:
                continue
            box = outbox(requester)
            target, length = _HEADER.unpack_from(memory, box)
            if target != peer.id or not length:
                continue
            length = min(length, MAX_PAYLOAD)
            payload = memory[box + _HEADER.size : box + _HEADER.size + length]
            reply = inbox(requester)
            struct.pack_into("<I", memory, reply, peer.id)
            memory[reply + _HEADER.size : reply + _HEADER.size + length] = invert(payload)
            struct.pack_into("<I", memory, reply + _LENGTH, length)
            struct.pack_into("<I", memory, box + _LENGTH, 0)
            try:
                peer.ring(requester, 0)
            except (KeyError, ValueError):
                pass  # the requester left, or has no vector 0: nobody to tell
            answered += 1
        self.served += answered
        return answered

    def run(self, until: float | None = None) -> None:
        """Serve requests on every doorbell until ``until`` (a ``time.monotonic()``) or forever."""
        self.serve_pending()  # requests made before we listened
        while until is None or time.monotonic() < until:
            remaining = None if until is None else max(0.0, until - time.monotonic())
            events = self.peer.poll(remaining)
            if any(isinstance(e, Doorbell) for e in events):
                self.serve_pending()
