"""ivshmem-flat (QEMU ``hw/misc/ivshmem-flat.c``) as an Amaranth component.

Address map of the device's bus port (byte addresses; ``S`` = ``shm_size``,
the port is ``log2(S) + 1`` bits wide)::

    0      .. 0Fh      registers (FLAT_REGS in ivhw.sw.regmap)
    10h    .. S-1      unmapped: DECERR
    S      .. 2S-1     shared memory, forwarded to the ``mem`` port

Placing the shared memory at ``S`` keeps it naturally aligned, so its offset
is just the low address bits. A board top that wants two separate regions
(QEMU's sysbus MMIO 0 and 1) decodes the top bit itself.

Accesses follow QEMU's memory core for a window registered with ``.impl``
4..4 bytes and no ``.valid`` (``ivhw.sw.models.registers``, the model's
rules; the register decode is generated from ``FLAT_REGS`` by
:mod:`ivhw.hdl.regs`), with the byte enables standing for the access size:

- outside both windows: DECERR, no effect, reads 0;
- register window, address bits 1:0 not zero (neither front-end produces
  this; a future one might), or byte enables that no CPU
  access produces (three bytes, holes, two bytes at lane 1): the access QEMU
  rejects as unaligned. SLVERR, no effect, reads 0, counted in ``bad_access``;
- register window, byte enables 0: OKAY, no effect;
- register window, a 1-, 2- or 4-byte access that starts at a register
  (byte lane 0 enabled): reads return the register's enabled bytes; writes
  act with the bytes not enabled taken as zero, as QEMU zero-extends a
  narrower write (a byte write of ``v`` to DOORBELL rings peer 0, vector
  ``v``, as in QEMU). OKAY;
- register window, a 1- or 2-byte access that starts elsewhere in the word:
  QEMU calls the handler at that odd offset, which matches no register, so
  reads return 0 and writes do nothing. OKAY;
- shared memory: address bits 1:0 not zero: SLVERR, no effect; otherwise
  reads return the whole word, writes pass the byte enables. OKAY.

AXI4-Lite reads carry no byte enables and its addresses' bits 1:0 are dropped
by the front-end (WSTRB decides a write): the AXI front-end reads the whole
word, so a master that extracts byte 1 of IVPOSITION sees that byte, where
QEMU's byte read at 09h returns 0 (see :mod:`ivhw.hdl.bus.axil`).

DOORBELL writes are validated before they reach the transport: the peer must
be known (the ``peers`` port answers a non-zero vector count; the transport
answers for the own ID too, since a device may ring itself) and the vector
below that count. Anything else is dropped and counted in
``doorbell_bad_peer`` / ``doorbell_bad_vector`` (upstream QEMU does not check
the vector at all). The bus write is acknowledged once the doorbell is in the
outbound FIFO; a full FIFO holds the write (back-pressure, never a lost
doorbell).

Each inbound event on an own vector (``vector < vectors``) gives one pulse of
``irq``: one cycle high, then at least one cycle low, so an edge-triggered
interrupt controller sees every event. Events are counted in a backlog of
``irq_backlog`` pulses; the event stream's ``ready`` drops only when that is
full. Events on vectors out of range are dropped and counted in
``events_dropped``.
"""

# Nested `with m.State(...)` / `with m.If(...)` blocks mirror the hardware's decision tree.
# ruff: noqa: SIM117

from __future__ import annotations

from amaranth.hdl import Module, Mux, Shape, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from ..sw.memmap import MemoryMap, flat_memory_map
from ..sw.regmap import DOORBELL, FLAT_REGS, MAX_VECTORS, BitField
from .bus import BusSignature, Response
from .regs import RegisterDecode
from .transport import (
    Doorbell,
    add_doorbell_queue,
    check_int,
    check_shm_size,
    checking,
    transport_members,
)

__all__ = ["IvshmemFlat"]


_MiB = 1 << 20


def _field(word: object, field: BitField) -> object:
    return word[field.lsb : field.lsb + field.width]  # type: ignore[index]


class IvshmemFlat(wiring.Component):
    """ivshmem-flat: a 16-byte register window, a shared-memory window and one IRQ.

    Parameters
    ----------
    vectors : int
        Own vectors, 1..64 (QEMU's limit); inbound events on other vectors are
        dropped and counted.
    shm_size : int
        Size of the shared-memory window in bytes, a power of two >= 16
        (default 4 MiB, QEMU's ``shmem-size`` default).
    doorbell_depth : int
        Outbound doorbell FIFO depth (>= 1); when full, DOORBELL writes stall.
    irq_backlog : int
        Inbound events waiting for their IRQ pulse before ``event.ready`` drops.

    Attributes
    ----------
    bus : ``In(BusSignature(log2(shm_size) + 1))``
        Register and shared-memory windows; ``bus.memory_map`` is the map
        (:func:`ivhw.sw.memmap.flat_memory_map`, drawn in the module docs).
    doorbell : ``Out(stream.Signature(Doorbell))``
        Validated outbound doorbells.
    event : ``In(stream.Signature(Event))``
        Inbound events (own vectors).
    ident : ``In(IdentSignature())``
        Own peer ID, shown in IVPOSITION once valid.
    peers : ``Out(PeerQuerySignature())``
        Known-peer lookup used to validate doorbells.
    mem : ``Out(MemorySignature(log2(shm_size) - 2))``
        Shared-memory master port.
    irq : ``Out(1)``
        One pulse per inbound event (vectors merged).
    doorbell_bad_peer, doorbell_bad_vector : ``Out(32)``
        Wrapping counts of DOORBELL writes ignored: unknown peer, vector out of range.
    bad_access : ``Out(32)``
        Wrapping count of register accesses refused as unaligned (SLVERR).
    events_dropped : ``Out(32)``
        Wrapping count of inbound events on vectors at or above ``vectors``.

    Raises
    ------
    TypeError, ValueError
        On a parameter of the wrong type or out of range.
    """

    def __init__(
        self,
        *,
        vectors: int = MAX_VECTORS,
        shm_size: int = 4 * _MiB,
        doorbell_depth: int = 4,
        irq_backlog: int = 15,
    ) -> None:
        with checking(self):
            self._vectors = check_int("vectors", vectors, 1, MAX_VECTORS)
            self._shm_size = check_shm_size(shm_size, FLAT_REGS.size)
            self._doorbell_depth = check_int("doorbell_depth", doorbell_depth, 1)
            self._irq_backlog = check_int("irq_backlog", irq_backlog, 1)
        shm_bits = shm_size.bit_length() - 1
        super().__init__({
            "bus": In(BusSignature(shm_bits + 1)),
            **transport_members(shm_size),
            "irq": Out(1),
        })  # fmt: skip
        self.bus.memory_map = flat_memory_map(shm_size)

    @property
    def vectors(self) -> int:
        return self._vectors

    @property
    def shm_size(self) -> int:
        return self._shm_size

    @property
    def memory_map(self) -> MemoryMap:
        """The map of ``bus`` (``bus.memory_map``): register window, hole, shared memory."""
        return self.bus.memory_map  # type: ignore[no-any-return]

    @property
    def regs_base(self) -> int:
        """Byte address of the register window on ``bus``."""
        return self.memory_map["regs"].base

    @property
    def shm_base(self) -> int:
        """Byte address of the shared-memory window on ``bus``."""
        return self.memory_map["shm"].base

    def elaborate(self, platform: object) -> Module:
        m = Module()
        bus = self.bus
        shm_bits = self._shm_size.bit_length() - 1

        # Outbound doorbells: a FIFO between the register write and the transport.
        db_width = Shape.cast(Doorbell).width
        fifo = add_doorbell_queue(m, self, self._doorbell_depth)

        # Decode.
        unaligned = bus.addr[:2] != 0
        in_regs = bus.addr < FLAT_REGS.size
        in_shm = bus.addr[shm_bits]

        pending_db = Signal(db_width)
        bad_peer = Signal(32)
        bad_vector = Signal(32)
        bad_access = Signal(32)
        m.d.comb += [
            self.doorbell_bad_peer.eq(bad_peer),
            self.doorbell_bad_vector.eq(bad_vector),
            self.bad_access.eq(bad_access),
            self.peers.peer.eq(_field(pending_db, DOORBELL.peer)),
        ]

        m.d.sync += bus.ack.eq(0)

        def finish(resp: Response, r_data: object = 0) -> None:
            m.d.sync += [bus.ack.eq(1), bus.resp.eq(resp), bus.r_data.eq(r_data)]

        def refuse() -> None:
            m.d.sync += bad_access.eq(bad_access + 1)
            finish(Response.SLVERR)

        def ring(m: Module, value: object, old: object) -> bool:
            # The write completes once the doorbell is validated and queued.
            m.d.sync += pending_db.eq(value)
            m.next = "QUERY"
            return True

        ivposition = Mux(self.ident.valid, self.ident.id, FLAT_REGS.IVPOSITION.reset)
        regs = RegisterDecode(
            FLAT_REGS, sources={"IVPOSITION": ivposition}, hooks={"doorbell": ring}
        )

        with m.FSM(name="bus"):
            with m.State("IDLE"):
                with m.If(bus.stb & ~bus.ack):
                    with m.If(~in_regs & ~in_shm):
                        finish(Response.DECERR)
                    with m.Elif(in_shm):
                        with m.If(unaligned):
                            finish(Response.SLVERR)
                        with m.Else():
                            m.next = "SHM_REQUEST"
                    with m.Elif(unaligned):
                        refuse()
                    with m.Else():
                        regs.access(
                            m, addr=bus.addr, write=bus.we, be=bus.sel, data=bus.w_data,
                            done=lambda data=0: finish(Response.OKAY, data), refuse=refuse,
                        )  # fmt: skip

            with m.State("QUERY"):
                m.d.comb += self.peers.req.eq(1)
                with m.If(self.peers.ack):
                    vector = _field(pending_db, DOORBELL.vector)
                    with m.If(self.peers.vectors == 0):
                        m.d.sync += bad_peer.eq(bad_peer + 1)
                        finish(Response.OKAY)
                        m.next = "IDLE"
                    with m.Elif(vector >= self.peers.vectors):
                        m.d.sync += bad_vector.eq(bad_vector + 1)
                        finish(Response.OKAY)
                        m.next = "IDLE"
                    with m.Else():
                        m.next = "PUSH"

            with m.State("PUSH"):
                m.d.comb += [fifo.w_en.eq(1), fifo.w_data.eq(pending_db)]
                with m.If(fifo.w_rdy):
                    finish(Response.OKAY)
                    m.next = "IDLE"

            with m.State("SHM_REQUEST"):
                m.d.comb += [
                    self.mem.valid.eq(1),
                    self.mem.addr.eq(bus.addr[2:shm_bits]),
                    self.mem.we.eq(bus.we),
                    self.mem.w_data.eq(bus.w_data),
                    self.mem.sel.eq(bus.sel),
                ]
                with m.If(self.mem.ready):
                    with m.If(bus.we):
                        finish(Response.OKAY)
                        m.next = "IDLE"
                    with m.Else():
                        m.next = "SHM_READ"

            with m.State("SHM_READ"):
                with m.If(self.mem.r_valid):
                    finish(Response.OKAY, self.mem.r_data)
                    m.next = "IDLE"

        # Inbound events: a backlog of IRQ pulses, each followed by a low cycle.
        backlog = Signal(range(self._irq_backlog + 1))
        events_dropped = Signal(32)
        m.d.comb += self.events_dropped.eq(events_dropped)
        own = self.event.payload.vector < self._vectors
        take = self.event.valid & self.event.ready
        fire = (backlog != 0) & ~self.irq
        m.d.comb += self.event.ready.eq(backlog != self._irq_backlog)
        m.d.sync += [
            self.irq.eq(fire),
            backlog.eq(backlog + (take & own) - fire),
        ]
        with m.If(take & ~own):
            m.d.sync += events_dropped.eq(events_dropped + 1)
        return m
