"""Built-in guests of ``ivshmem-cosim``: ``echo`` and ``ping``; ``echo2`` on revision 2.

``echo`` is the echo protocol (docs/echo-protocol.md) run by the simulated
CPU, behaving exactly like :class:`ivhw.sw.echo.EchoResponder`: on every
interrupt it serves every pending outbox addressed to it, in ascending peer
order, each through the device's shared-memory window and Doorbell register.

``ping`` sends echo requests to another echo peer (a host ``EchoResponder``,
QEMU, or another simulated echo device) and prints the round-trip
distribution. Options (``--guest-arg KEY=VALUE``): ``target`` (peer ID;
default the lowest other peer), ``count`` (default 10), ``size`` (payload
bytes, default 16), ``timeout`` (seconds per request, default 5), ``wait``
(seconds to wait for a target to join, default 10).

``echo2`` is the revision 2 echo protocol (docs/echo2-protocol.md) run by the
simulated CPU of the revision 2 endpoint, exactly as
:class:`ivhw.sw.echo2.Echo2Responder` does in software: READY through the State
register, then on every interrupt every pending request of a READY peer, in
ascending peer order, read from the requester's output section and answered in
its own, each through the device's BAR2 window and Doorbell register.
"""

from __future__ import annotations

import statistics
import struct
from collections.abc import Callable

from ..sw import echo2 as protocol2
from ..sw.echo import LENGTH_OFFSET as _LENGTH
from ..sw.echo import MAX_PAYLOAD, MAX_PEERS, SLOT_SIZE, inbox, invert, outbox
from ..sw.echo import PAYLOAD_OFFSET as _PAYLOAD
from .guest_api import Guest, GuestFunction

__all__ = ["BUILTINS", "REVISIONS", "echo", "echo2", "ping", "serve_pending", "serve_pending2"]


async def serve_pending(g: Guest, stamp: Callable[[str], None] | None = None) -> int:
    """Answer every outbox addressed to this device; return how many were answered.

    ``stamp`` (for benchmarks) is called with ``"header"``, ``"payload"`` and ``"reply"``
    after each of a request's three calls into the device returned.
    """
    answered = 0
    for requester in sorted(g.peers()):
        if requester >= MAX_PEERS or g.shm_size < inbox(requester) + SLOT_SIZE:
            continue
        box = outbox(requester)
        # target and length in one block (one crossing into the simulator on the native engine)
        target, length = struct.unpack("<II", await g.shm_read(box, _PAYLOAD))
        if target != g.id or not length:
            continue
        if stamp:
            stamp("header")
        length = min(length, MAX_PAYLOAD)
        payload = await g.shm_read(box + _PAYLOAD, length)
        if stamp:
            stamp("payload")
        reply = inbox(requester)
        # one sequence of writes (one crossing into the simulator on the native engine); the
        # device drops a doorbell to a peer that left or has no vector 0 (and counts it)
        await g.write_all([
            g.shm_word(reply, g.id),
            *g.shm_data(reply + _PAYLOAD, invert(payload)),
            g.shm_word(reply + _LENGTH, length),  # the length goes last
            g.shm_word(box + _LENGTH, 0),
            g.doorbell(requester, 0),
        ])  # fmt: skip
        if stamp:
            stamp("reply")
        answered += 1
    return answered


async def echo(g: Guest) -> None:
    """The echo device: serve pending requests on every interrupt, forever."""
    g.log(f"echo device up as peer {g.id}; serving echo requests")
    served = await serve_pending(g)  # requests made before we listened
    while True:
        await g.wait_irq()
        served += await serve_pending(g)


async def _request(g: Guest, target: int, payload: bytes, timeout: float) -> float | None:
    """One echo round trip in seconds, ``None`` on timeout; checks the reply."""
    box, reply = outbox(g.id), inbox(g.id)
    await g.shm_write32(reply + _LENGTH, 0)
    await g.shm_write32(box, target)
    await g.shm_write(box + _PAYLOAD, payload)
    start = g.now()
    await g.shm_write32(box + _LENGTH, len(payload))
    await g.ring(target, 0)
    deadline = start + timeout
    while True:
        # the interrupt first, then the inbox (protocol step 5): the echo peer publishes the
        # reply before it clears our outbox, so reading early could race the next request
        remaining = deadline - g.now()
        if remaining <= 0:
            await g.shm_write32(box + _LENGTH, 0)
            return None
        if not await g.wait_irq(remaining):
            continue
        length = await g.shm_read32(reply + _LENGTH)
        if length:
            rtt = g.now() - start
            source = await g.shm_read32(reply)
            data = await g.shm_read(reply + _PAYLOAD, length)
            if source != target or data != invert(payload):
                raise AssertionError(
                    f"wrong echo from peer {source}: {data.hex()} for {payload.hex()}"
                )
            return rtt


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


async def ping(g: Guest) -> None:
    """Measure echo round trips to ``target`` and print their distribution."""
    count = int(g.args.get("count", "10"))
    size = int(g.args.get("size", "16"))
    timeout = float(g.args.get("timeout", "5"))
    wait = float(g.args.get("wait", "10"))
    if not 1 <= size <= MAX_PAYLOAD:
        raise ValueError(f"ping size must be 1..{MAX_PAYLOAD}, not {size}")
    target_arg = g.args.get("target")
    start = g.now()
    while True:
        peers = g.peers()
        if target_arg is not None:
            target = int(target_arg)
            if target in peers:
                break
        elif peers:
            target = min(peers)
            break
        if g.now() - start > wait:
            raise TimeoutError(f"no echo peer {target_arg or ''} joined within {wait:g} s")
        await g.wait_irq(0.05)
    g.log(f"ping: peer {g.id} -> echo peer {target}, {count} requests of {size} bytes")
    rtts: list[float] = []
    lost = 0
    for n in range(count):
        payload = struct.pack("<I", n) + bytes((n + i) & 0xFF for i in range(size - 4))
        payload = payload[:size]
        rtt = await _request(g, target, payload, timeout)
        if rtt is None:
            lost += 1
            g.log(f"ping {n}: no reply within {timeout:g} s")
        else:
            rtts.append(rtt)
    if rtts:
        us = [r * 1e6 for r in rtts]
        g.log(
            f"ping: {len(rtts)}/{count} replies, rtt us min {min(us):.0f} "
            f"median {statistics.median(us):.0f} p90 {_percentile(us, 0.9):.0f} "
            f"max {max(us):.0f}"
        )
    if lost:
        raise AssertionError(f"{lost} of {count} echo requests got no reply")


async def serve_pending2(g: Guest) -> int:
    """Answer every pending revision 2 echo request to this device; return how many."""
    sections = g.sections
    me = protocol2.slot(g.id)
    output = g.output
    answered = 0
    for requester in range(sections.max_peers):
        if requester == g.id or await g.state_of(requester) != protocol2.READY:
            continue
        request = g.output_of(requester)
        seq = await request.read32(me + protocol2.SEQ)
        reply = protocol2.slot(requester)
        if seq == 0 or seq == await output.read32(reply + protocol2.SEQ):
            continue
        length = min(await request.read32(me + protocol2.LENGTH), MAX_PAYLOAD)
        payload = await request.read(me + protocol2.PAYLOAD, length)
        await output.write(reply + protocol2.PAYLOAD, invert(payload))
        await output.write32(reply + protocol2.LENGTH, length)
        await output.write32(reply + protocol2.SEQ, seq)  # publishes the reply
        # the device drops a doorbell to a peer that left (and counts it)
        await g.ring(requester, 0)
        answered += 1
    return answered


async def echo2(g: Guest) -> None:
    """The revision 2 echo device: READY, then serve pending requests on every interrupt."""
    sections = g.sections
    slots = protocol2.max_peers_for(sections.output_section_size)
    if slots < sections.max_peers:
        raise ValueError(
            f"output sections of {sections.output_section_size} bytes hold {slots} echo "
            f"slots, not {sections.max_peers}: give the server -o "
            f"{SLOT_SIZE * sections.max_peers} or more"
        )
    await g.set_state(protocol2.READY)
    g.log(f"echo2 device up as peer {g.id} (state READY); serving revision 2 echo requests")
    await serve_pending2(g)  # requests made before we listened
    while True:
        await g.wait_irq()
        await serve_pending2(g)


#: Guests ``--guest NAME`` knows.
BUILTINS: dict[str, GuestFunction] = {"echo": echo, "ping": ping, "echo2": echo2}
#: The device revision (and so echo protocol) each built-in speaks.
REVISIONS = {"echo": 1, "ping": 1, "echo2": 2}
