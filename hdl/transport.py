"""Transport ports: how an ivshmem device talks to whatever carries its doorbells.

Every ivshmem device (ivshmem-flat now, the PCI endpoint later) has the same
transport-facing ports, so that the co-simulation bridge (cocotb, talking to a
real ivshmem server) and FPGA board tops (a loopback, a serial link, ...) can
feed any of them:

``doorbell`` (device -> transport), :func:`doorbell_signature`
    Outbound doorbells, an :mod:`amaranth.lib.stream` of :class:`Doorbell`
    words (peer 16 bits, vector 16 bits: the register word as is, so one
    transport serves devices of any vector count). A payload is transferred
    when ``valid & ready``. Only validated doorbells appear here (known peer,
    vector in range). The device never loses one: it queues them in a small
    FIFO and, when that is full, holds the register write on the bus (no
    ack) until there is room. Back-pressure therefore reaches the CPU, never
    drops a doorbell.
``event`` (transport -> device), :func:`event_signature`
    Inbound events, a stream of :class:`Event` (the own vector that was
    rung). The device may deassert ``ready`` (e.g. while it has a backlog of
    interrupts to signal); the transport must then hold the event.
``ident`` (transport -> device), :class:`IdentSignature`
    Own peer ID, and ``valid`` once the server has assigned it.
``peers`` (device asks, transport answers), :class:`PeerQuerySignature`
    Known-peer lookup. The device drives ``peer`` and raises ``req``; the
    transport answers, any number of cycles later (zero included), with
    ``ack`` for one cycle and ``vectors`` = how many vectors that peer has
    (0: no such peer). ``peer`` and ``req`` are held until ``ack``. A
    request/acknowledge port rather than a bitmap because peer IDs span 16
    bits: a board top answers from a small table (registers or a block RAM,
    one cycle of latency), the co-simulation bridge from its Python view of
    the server's peers.
``mem`` (device -> memory), :class:`MemorySignature`
    The shared-memory master port: one 32-bit word per request, byte
    enables, posted writes, in-order read data.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from amaranth.hdl import Module, Shape, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.fifo import SyncFIFOBuffered
from amaranth.lib.wiring import In, Out

from ..sw.regmap import DOORBELL, MAX_VECTORS

__all__ = [
    "PEER_WIDTH",
    "TRANSPORT_PORTS",
    "VECTOR_COUNT_WIDTH",
    "VECTOR_WIDTH",
    "AddressedSignature",
    "Doorbell",
    "Event",
    "IdentSignature",
    "MemorySignature",
    "PeerQuerySignature",
    "add_doorbell_queue",
    "check_int",
    "check_shm_size",
    "checking",
    "connect_transport",
    "doorbell_signature",
    "event_signature",
    "transport_members",
    "transport_ports",
]

#: Width of a peer ID (the server hands out IDs 0..65535).
PEER_WIDTH = DOORBELL.peer.width
#: Width of a vector number on the transport: the doorbell word's full field.
VECTOR_WIDTH = DOORBELL.vector.width
#: Width of a vector *count*, 0..MAX_VECTORS (7 bits for QEMU's 64).
VECTOR_COUNT_WIDTH = MAX_VECTORS.bit_length()


# Layouts rather than ``data.Struct`` subclasses: a Struct reads its fields from class
# annotations, which ``from __future__ import annotations`` turns into strings.

#: An outbound doorbell, laid out as the DOORBELL register word.
Doorbell = data.StructLayout({
    field.name: unsigned(field.width)
    for field in sorted((DOORBELL.vector, DOORBELL.peer), key=lambda field: field.lsb)
})  # fmt: skip

#: An inbound event: one of the device's own vectors was rung.
Event = data.StructLayout({"vector": unsigned(VECTOR_WIDTH)})


def doorbell_signature() -> stream.Signature:
    """Stream signature of outbound doorbells (device side is the source)."""
    return stream.Signature(Doorbell)


def event_signature() -> stream.Signature:
    """Stream signature of inbound events (transport side is the source)."""
    return stream.Signature(Event)


class AddressedSignature(wiring.Signature):
    """A signature with one parameter, an address width: its check, equality, hash, repr.

    Subclasses check the width with :meth:`check_width`, then pass it and their
    members to ``super().__init__``.
    """

    def __init__(self, addr_width: int, members: dict[str, wiring.Member]) -> None:
        self._addr_width = addr_width
        super().__init__(members)

    @staticmethod
    def check_width(addr_width: object, minimum: int = 0) -> int:
        """``addr_width`` if it is an integer of at least ``minimum``; raises otherwise."""
        if not isinstance(addr_width, int) or isinstance(addr_width, bool):
            raise TypeError(f"address width must be an integer, not {addr_width!r}")
        if addr_width < minimum:
            bound = "non-negative" if minimum == 0 else f"at least {minimum}"
            raise ValueError(f"address width must be {bound}, not {addr_width!r}")
        return addr_width

    @property
    def addr_width(self) -> int:
        return self._addr_width

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and other.addr_width == self.addr_width  # type: ignore[attr-defined]

    def __hash__(self) -> int:
        return hash((type(self), self._addr_width))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._addr_width})"


class IdentSignature(wiring.Signature):
    """Own peer ID, driven by the transport (use ``In(IdentSignature())`` on a device).

    Members
    -------
    id : ``Out(16)``
        The peer ID the server assigned.
    valid : ``Out(1)``
        ``id`` is meaningful (the server has spoken).
    """

    def __init__(self) -> None:
        super().__init__({"id": Out(PEER_WIDTH), "valid": Out(1)})


class PeerQuerySignature(wiring.Signature):
    """Known-peer lookup, device side (use ``Out(PeerQuerySignature())`` on a device).

    Members
    -------
    req : ``Out(1)``
        A lookup of ``peer`` is wanted; held with ``peer`` until ``ack``.
    peer : ``Out(16)``
        The peer ID asked about.
    ack : ``In(1)``
        One cycle: ``vectors`` answers the current request.
    vectors : ``In(7)``
        Vectors of ``peer`` (0..64); 0 means the peer is not known.
    """

    def __init__(self) -> None:
        super().__init__({
            "req": Out(1),
            "peer": Out(PEER_WIDTH),
            "ack": In(1),
            "vectors": In(VECTOR_COUNT_WIDTH),
        })  # fmt: skip


class MemorySignature(AddressedSignature):
    """Shared-memory master port, device side (``Out(MemorySignature(n))`` on a device).

    A request (``addr``, ``we``, ``w_data``, ``sel``) is taken when
    ``valid & ready``. Writes are posted (no response). A read's word comes
    back later, in request order, with ``r_valid`` for one cycle; the device
    has at most one read outstanding.

    Parameters
    ----------
    addr_width : int
        Width of the *word* address (the shared memory holds ``2**addr_width``
        32-bit words).

    Members
    -------
    addr : ``Out(addr_width)``
        Word address inside the shared memory.
    we : ``Out(1)``
        Write (1) or read (0).
    w_data : ``Out(32)``
        Write data, little-endian byte lanes.
    sel : ``Out(4)``
        Byte enables of a write (bit i = byte lane i); reads fetch the whole word.
    valid : ``Out(1)``
        A request is presented.
    ready : ``In(1)``
        The request is taken this cycle.
    r_data : ``In(32)``
        Read data.
    r_valid : ``In(1)``
        ``r_data`` answers the oldest outstanding read.
    """

    def __init__(self, addr_width: int) -> None:
        self.check_width(addr_width)
        super().__init__(addr_width, {
            "addr": Out(addr_width),
            "we": Out(1),
            "w_data": Out(32),
            "sel": Out(4),
            "valid": Out(1),
            "ready": In(1),
            "r_data": In(32),
            "r_valid": In(1),
        })  # fmt: skip


@contextlib.contextmanager
def checking(component: object) -> Iterator[None]:
    """The parameter checks of ``component``'s constructor (``with checking(self): ...``).

    A component refused at construction (``TypeError``/``ValueError``) is marked
    used, so that Amaranth does not also warn about an unused elaboratable.
    """
    try:
        yield
    except (TypeError, ValueError):
        component._MustUse__used = True  # type: ignore[attr-defined]
        raise


def check_int(name: str, value: object, low: int, high: int | None = None) -> int:
    """``value`` if it is an integer in ``low..high``; ``TypeError``/``ValueError`` otherwise."""
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{name} must be an integer, not {value!r}")
    if value < low or (high is not None and value > high):
        bound = f"{low}..{high}" if high is not None else f">= {low}"
        raise ValueError(f"{name} must be {bound}, not {value!r}")
    return value


def check_shm_size(value: object, minimum: int) -> int:
    """A shared-memory size: a power of two of at least ``minimum`` bytes."""
    size = check_int("shm_size", value, minimum)
    if size & (size - 1):
        raise ValueError(f"shm_size must be a power of two, not {size!r}")
    return size


#: The transport ports of a device, by member name (the drop counters are not ports).
TRANSPORT_PORTS = ("doorbell", "event", "ident", "peers", "mem")


def transport_ports(shm_size: int) -> dict[str, wiring.Member]:
    """The transport ports of a device with ``shm_size`` bytes of shared memory, device side.

    ``wiring.Signature(transport_ports(n)).flip()`` is the transport's side of them.
    """
    word_bits = shm_size.bit_length() - 1 - 2
    return {
        "doorbell": Out(doorbell_signature()),
        "event": In(event_signature()),
        "ident": In(IdentSignature()),
        "peers": Out(PeerQuerySignature()),
        "mem": Out(MemorySignature(word_bits)),
    }


def transport_members(shm_size: int) -> dict[str, wiring.Member]:
    """The transport ports and drop counters every ivshmem device has, by name.

    ``doorbell``, ``event``, ``ident``, ``peers``, ``mem`` (see the module
    docstring) and the 32-bit counters ``doorbell_bad_peer``,
    ``doorbell_bad_vector``, ``bad_access`` and ``events_dropped``.
    """
    return {
        **transport_ports(shm_size),
        "doorbell_bad_peer": Out(32),
        "doorbell_bad_vector": Out(32),
        "bad_access": Out(32),
        "events_dropped": Out(32),
    }


def connect_transport(m: Module, device: object, transport: object) -> None:
    """Connect the :data:`TRANSPORT_PORTS` of ``device`` to those of ``transport``.

    ``wiring.connect`` wants the same members on both sides; a device has more
    (its bus, its counters, its interrupt), so the ports are connected one by one.
    """
    for name in TRANSPORT_PORTS:
        wiring.connect(m, getattr(device, name), getattr(transport, name))


def add_doorbell_queue(m: Module, device: wiring.Component, depth: int) -> SyncFIFOBuffered:
    """Queue validated doorbells between the register write and ``device.doorbell``.

    The caller writes ``w_data``/``w_en`` and holds the bus while ``w_rdy`` is
    low, so no doorbell is ever dropped.
    """
    m.submodules.doorbell_fifo = fifo = SyncFIFOBuffered(
        width=Shape.cast(Doorbell).width, depth=depth
    )
    m.d.comb += [
        device.doorbell.payload.eq(fifo.r_data),
        device.doorbell.valid.eq(fifo.r_rdy),
        fifo.r_en.eq(device.doorbell.ready),
    ]
    return fifo
