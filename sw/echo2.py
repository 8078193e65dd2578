"""The revision 2 echo protocol: requests and replies in output sections (docs/echo2-protocol.md).

Every output section begins with one 64-byte *slot* per peer: slot Y of peer X's
output section is X's message to Y: u32 sequence number (0: none yet), u32 length
(1..56), 56 bytes of payload. A requester R writes payload and length into slot E of
its own output section, then the sequence number last, and rings the echo peer E.
E answers into slot R of *its* output section (payload XOR 0xFF, the same sequence
number last) and rings R on vector 0. A request is pending while its sequence number
differs from the one in the reply slot. Both sides announce themselves through the
State register: only a peer whose State Table entry is :data:`READY` is sent to or
served.

This module is the software side: :class:`Echo2Responder` (the reference the HDL
echo guest is checked against) and :func:`request2`.
"""

from __future__ import annotations

import struct
import time

from ivhw.sw.echo import MAX_PAYLOAD, SLOT_SIZE, Reply, invert
from ivhw.sw.peer import Doorbell, Peer

__all__ = [
    "LENGTH",
    "PAYLOAD",
    "READY",
    "SEQ",
    "Echo2Responder",
    "Reply",
    "max_peers_for",
    "request2",
    "slot",
]

#: State of a peer that takes part in the protocol (responder serving, requester waiting).
READY = 1
_HEADER = struct.Struct("<II")  # sequence number, length
#: Offsets in a slot: sequence number, length, payload.
SEQ, LENGTH, PAYLOAD = 0, 4, _HEADER.size
_SEQ, _LENGTH = SEQ, LENGTH


def slot(peer: int) -> int:
    """Offset of the slot for ``peer`` within an output section."""
    return SLOT_SIZE * peer


def max_peers_for(output_section_size: int) -> int:
    """How many peers' slots an output section of that size holds."""
    return output_section_size // SLOT_SIZE


def _check(peer: Peer) -> None:
    if peer.revision != 2 or peer.output is None:
        raise ValueError("the revision 2 echo protocol needs a revision 2 peer")
    if max_peers_for(peer.output_section_size) < peer.max_peers:
        raise ValueError(
            f"output sections of {peer.output_section_size} bytes hold "
            f"{max_peers_for(peer.output_section_size)} slots, not {peer.max_peers}: "
            f"give the server -o {SLOT_SIZE * peer.max_peers} or more"
        )


def _next_seq(*seen: int) -> int:
    return (max(seen) % 0xFFFFFFFF) + 1  # 1..2^32-1, never 0


def request2(peer: Peer, target: int, payload: bytes, *, timeout: float = 5.0) -> Reply:
    """Send ``payload`` to echo peer ``target`` and wait for its reply.

    Sets this peer's state to :data:`READY` if it is not. Raises ``ValueError`` for
    a payload over 56 bytes, ``ConnectionError`` if ``target`` is unknown or not READY,
    ``TimeoutError`` when no reply arrives in time.
    """
    _check(peer)
    if not 1 <= len(payload) <= MAX_PAYLOAD:
        raise ValueError(f"an echo payload is 1..{MAX_PAYLOAD} bytes, not {len(payload)}")
    if target not in peer.peers:
        raise ConnectionError(f"peer {target} is not known (yet): poll for its PeerJoined first")
    if peer.state_of(target) != READY:
        raise ConnectionError(
            f"peer {target} is not a ready echo peer (state {peer.state_of(target)})"
        )
    if peer.state != READY:
        peer.state = READY
    out = peer.output
    assert out is not None
    mine, theirs = slot(target), slot(peer.id)
    reply_box = peer.output_of(target)
    seq = _next_seq(_HEADER.unpack_from(out, mine)[0], _HEADER.unpack_from(reply_box, theirs)[0])
    out[mine + _HEADER.size : mine + _HEADER.size + len(payload)] = payload
    struct.pack_into("<I", out, mine + _LENGTH, len(payload))
    start = time.perf_counter()
    struct.pack_into("<I", out, mine + _SEQ, seq)  # publishes the request
    peer.ring(target, 0)
    deadline = start + timeout
    while True:
        got, length = _HEADER.unpack_from(reply_box, theirs)
        if got == seq:
            rtt = time.perf_counter() - start
            length = min(length, MAX_PAYLOAD)
            data = bytes(reply_box[theirs + _HEADER.size : theirs + _HEADER.size + length])
            return Reply(target, data, rtt)
        remaining = deadline - time.perf_counter()
        if remaining <= 0:
            raise TimeoutError(f"no echo from peer {target} within {timeout:g} s")
        try:
            peer.wait(Doorbell, remaining)
        except TimeoutError:
            continue


class Echo2Responder:
    """The echo peer in software: serves every pending request of the READY peers.

    Parameters
    ----------
    peer : Peer
        A revision 2 connection; its state is set to :data:`READY`.

    Attributes
    ----------
    served : int
        Requests answered so far.
    """

    def __init__(self, peer: Peer) -> None:
        _check(peer)
        self.peer = peer
        self.served = 0
        peer.state = READY

    def serve_pending(self) -> int:
        """Answer every pending request addressed to this peer; return how many."""
        peer = self.peer
        out = peer.output
        assert out is not None
        me = slot(peer.id)
        answered = 0
        for requester in range(peer.max_peers):
            if requester == peer.id or peer.state_of(requester) != READY:
                continue
            request = peer.output_of(requester)
            seq, length = _HEADER.unpack_from(request, me)
            reply = slot(requester)
            if seq == 0 or seq == _HEADER.unpack_from(out, reply)[0]:
                continue
            length = min(length, MAX_PAYLOAD)
            payload = request[me + _HEADER.size : me + _HEADER.size + length]
            out[reply + _HEADER.size : reply + _HEADER.size + length] = invert(payload)
            struct.pack_into("<I", out, reply + _LENGTH, length)
            struct.pack_into("<I", out, reply + _SEQ, seq)  # publishes the reply
            try:
                peer.ring(requester, 0)
            except (KeyError, ValueError):
                pass  # it left between the check and the ring
            answered += 1
        self.served += answered
        return answered

    def run(self, until: float | None = None) -> None:
        """Serve on every doorbell until ``until`` (a ``time.monotonic()``) or forever."""
        self.serve_pending()  # requests made before we listened
        while until is None or time.monotonic() < until:
            remaining = None if until is None else max(0.0, until - time.monotonic())
            if any(isinstance(e, Doorbell) for e in self.peer.poll(remaining)):
                self.serve_pending()
