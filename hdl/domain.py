"""An on-chip ivshmem domain: what the server and its eventfds are to VMs, for tiles on a chip.

``IvshmemDomain(ports=[(id, vectors), ...], shm_size=...)`` has one transport
port per device (``domain.ports[i]``, the transport side of the ports in
:mod:`ivhw.hdl.transport`), connected with :meth:`IvshmemDomain.connect` (or
:func:`ivhw.hdl.transport.connect_transport`). Any device with those ports
fits: ivshmem-flat now, the PCI endpoint or a revision 2 device later.

Peer table
    Fixed at build time: port ``i`` has peer ID ``ports[i][0]`` and
    ``ports[i][1]`` vectors. ``ident`` shows the port's ID, valid from reset.
    The known-peer query of every port is answered from the table, one cycle
    after ``req`` (the own ID included: a device may ring itself).
Doorbell crossbar
    Each port's outbound doorbell enters a one-word stage (taken when the
    stage is empty or leaves in the same cycle). A doorbell to an ID no port
    has, or to a vector the target lacks, is taken and dropped there, and
    counted in ``doorbell_bad_peer`` / ``doorbell_bad_vector``. A valid one
    waits in the stage for its target: each target has a round-robin arbiter
    over the sources and an event FIFO of ``event_depth`` words feeding its
    inbound ``event`` stream. A full FIFO (a slow sink) holds the stage, the
    stage holds the source's stream, and the device holds its bus write:
    back-pressure all the way to the CPU, no doorbell is lost. Events from one
    source reach a target in the order rung; sources interleave round-robin.
Shared memory
    One RAM, one access per cycle. The ports' requests are arbitrated
    round-robin (a waiting port is served within ``len(ports) - 1`` other
    accesses); ``ready`` is the grant, in the cycle of the request. A read's
    word comes back with ``r_valid`` in the next cycle. ``ram`` picks the RAM:
    ``"bram"`` (an :class:`amaranth.lib.memory.Memory`, block RAM on FPGAs),
    ``"spram"`` (iCE40UP5K single-port RAMs, ``SB_SPRAM256KA``: two for up to
    64 KiB, four for 128 KiB), or ``"external"`` (a :class:`RamSignature` port
    ``ram`` the board top connects to a RAM of its choice).

See ``docs/domain.md`` for the cycle-by-cycle behaviour.
"""

from __future__ import annotations

from amaranth.hdl import Cat, ClockSignal, Const, Instance, Module, Mux, Signal, unsigned
from amaranth.lib import wiring
from amaranth.lib.fifo import SyncFIFO
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from ..sw.models.domain import check_ports
from ..sw.regmap import DOORBELL
from .transport import (
    AddressedSignature,
    check_int,
    check_shm_size,
    connect_transport,
    transport_ports,
)

__all__ = [
    "RAM_KINDS",
    "BlockRam",
    "Ice40Spram",
    "IvshmemDomain",
    "RamSignature",
    "domain_port_signature",
]

#: What ``IvshmemDomain(ram=...)`` accepts.
RAM_KINDS = ("bram", "spram", "external")
#: An SB_SPRAM256KA holds 16K words of 16 bits.
_SPRAM_WORDS = 1 << 14


def domain_port_signature(shm_size: int) -> wiring.Signature:
    """The transport side of a device's ports (``doorbell`` in, ``event`` out, ...)."""
    return wiring.Signature(transport_ports(shm_size)).flip()


class RamSignature(AddressedSignature):
    """A single-port synchronous RAM of 32-bit words, controller side.

    One access per cycle: ``w_en`` (byte lanes) writes ``w_data`` at ``addr``;
    ``r_en`` reads ``addr``, and ``r_data`` holds the word in the next cycle.
    ``w_en`` and ``r_en`` are never both set.

    Parameters
    ----------
    addr_width : int
        Width of the word address.

    Members
    -------
    addr : ``Out(addr_width)``
    w_en : ``Out(4)``
    w_data : ``Out(32)``
    r_en : ``Out(1)``
    r_data : ``In(32)``
    """

    def __init__(self, addr_width: int) -> None:
        self.check_width(addr_width)
        super().__init__(addr_width, {
            "addr": Out(addr_width),
            "w_en": Out(4),
            "w_data": Out(32),
            "r_en": Out(1),
            "r_data": In(32),
        })  # fmt: skip


class BlockRam(wiring.Component):
    """The shared memory as an Amaranth memory: block RAM where the FPGA has it.

    What ``ram="bram"`` uses inside the domain; a board top may also put it (or
    any RAM with the same port) on the ``ram`` port of a ``ram="external"`` domain.
    """

    def __init__(self, addr_width: int) -> None:
        self._depth = 1 << addr_width
        super().__init__({"port": In(RamSignature(addr_width))})

    def elaborate(self, platform: object) -> Module:
        m = Module()
        m.submodules.memory = memory = Memory(shape=unsigned(32), depth=self._depth, init=[])
        write = memory.write_port(granularity=8)
        read = memory.read_port()
        m.d.comb += [
            write.addr.eq(self.port.addr),
            write.data.eq(self.port.w_data),
            write.en.eq(self.port.w_en),
            read.addr.eq(self.port.addr),
            read.en.eq(self.port.r_en),
            self.port.r_data.eq(read.data),
        ]
        return m


class Ice40Spram(wiring.Component):
    """The shared memory in iCE40UP5K single-port RAMs (``SB_SPRAM256KA``, 16K x 16 each).

    Two RAMs side by side make 16K words of 32 bits (64 KiB); with a 15-bit
    address, two pairs make 128 KiB. Byte enables map to the RAMs' nibble
    write masks. Only iCE40 UltraPlus toolchains know the primitive.
    """

    def __init__(self, addr_width: int) -> None:
        check_int("SPRAM word address width", addr_width, 0, 15)
        self._addr_width = addr_width
        super().__init__({"port": In(RamSignature(addr_width))})

    def elaborate(self, platform: object) -> Module:
        m = Module()
        port = self.port
        banks = 2 if self._addr_width > 14 else 1
        address = Signal(14)
        m.d.comb += address.eq(port.addr[:14])
        bank = port.addr[14] if banks == 2 else Const(0, 1)
        bank_read = Signal()
        m.d.sync += bank_read.eq(bank)
        outputs = []
        for b in range(banks):
            selected = bank == b
            halves = []
            for half in range(2):
                data_out = Signal(16, name=f"spram{b}_{half}_data")
                lanes = port.w_en[2 * half : 2 * half + 2]
                m.submodules[f"spram{b}_{half}"] = Instance(
                    "SB_SPRAM256KA",
                    i_ADDRESS=address,
                    i_DATAIN=port.w_data[16 * half : 16 * half + 16],
                    i_MASKWREN=Cat(lanes[0], lanes[0], lanes[1], lanes[1]),
                    i_WREN=lanes.any(),
                    i_CHIPSELECT=selected & (port.r_en | port.w_en.any()),
                    i_CLOCK=ClockSignal(),
                    i_STANDBY=0,
                    i_SLEEP=0,
                    i_POWEROFF=1,
                    o_DATAOUT=data_out,
                )
                halves.append(data_out)
            outputs.append(halves[0] | (halves[1] << 16))
        m.d.comb += port.r_data.eq(outputs[0] if banks == 1 else Mux(bank_read, *outputs[::-1]))
        return m


def _round_robin(m: Module, requests: list[object], name: str) -> tuple[Signal, Signal]:
    """A round-robin arbiter: ``(grant, last)``.

    ``grant`` (one-hot) picks the first request after ``last``, the port granted
    most recently; the caller updates ``last`` when a grant is used.
    """
    count = len(requests)
    grant = Signal(count, name=f"{name}_grant")
    last = Signal(range(count), name=f"{name}_last", init=count - 1)
    if count == 1:
        m.d.comb += grant.eq(requests[0])
        return grant, last
    with m.Switch(last):
        for previous in range(count):
            with m.Case(previous):
                order = [(previous + k) % count for k in range(1, count + 1)]
                for rank, index in enumerate(order):
                    branch = m.If if rank == 0 else m.Elif
                    with branch(requests[index]):
                        m.d.comb += grant[index].eq(1)
    return grant, last


def _select(grant: Signal, values: list[object], width: int) -> object:
    """The value of the granted one among ``values`` (AND-OR over a one-hot grant)."""
    result = Const(0, width)
    for i, value in enumerate(values):
        result = result | (grant[i].replicate(width) & value)
    return result


class IvshmemDomain(wiring.Component):
    """N transport ports, a fixed peer table, a doorbell crossbar and one shared RAM.

    Parameters
    ----------
    ports : sequence of (int, int)
        Peer ID (0..65535, distinct) and vector count (1..64) of each port.
    shm_size : int
        Shared memory in bytes, a power of two >= 16 (default 4 KiB); the
        devices must be built with the same size.
    ram : str
        ``"bram"`` (default), ``"spram"`` (iCE40UP5K, up to 128 KiB) or
        ``"external"`` (a ``ram`` port for the board top).
    event_depth : int
        Events buffered per target port before its sources wait (>= 1).

    Attributes
    ----------
    ports : array of ``Out(domain_port_signature(shm_size))``
        ``ports[i]`` connects to device ``i``'s transport ports.
    ram : ``Out(RamSignature(log2(shm_size) - 2))``
        Only with ``ram="external"``.
    doorbell_bad_peer, doorbell_bad_vector : ``Out(32)``
        Wrapping counts of doorbells dropped: no port has the ID; the target
        has no such vector.

    Raises
    ------
    TypeError, ValueError
        On a parameter of the wrong type or out of range.
    """

    def __init__(
        self,
        ports: object,
        *,
        shm_size: int = 4096,
        ram: str = "bram",
        event_depth: int = 2,
    ) -> None:
        try:
            self._ports = check_ports(ports)
            self._shm_size = check_shm_size(shm_size, 16)
            if ram not in RAM_KINDS:
                raise ValueError(f"ram must be one of {', '.join(RAM_KINDS)}, not {ram!r}")
            if ram == "spram" and shm_size > 4 * 2 * _SPRAM_WORDS:
                raise ValueError(f"ram='spram' holds at most 128 KiB, not shm_size={shm_size}")
            self._ram = ram
            self._event_depth = check_int("event_depth", event_depth, 1)
        except (TypeError, ValueError):
            self._MustUse__used = True  # refused at construction: not an unused elaboratable
            raise
        members: dict[str, wiring.Member] = {
            "ports": Out(domain_port_signature(shm_size)).array(len(self._ports)),
            "doorbell_bad_peer": Out(32),
            "doorbell_bad_vector": Out(32),
        }
        if ram == "external":
            members["ram"] = Out(RamSignature(self.word_bits))
        super().__init__(members)

    @property
    def table(self) -> tuple[tuple[int, int], ...]:
        """The peer table: ``(id, vectors)`` per port."""
        return self._ports

    @property
    def shm_size(self) -> int:
        return self._shm_size

    @property
    def word_bits(self) -> int:
        """Width of a word address in the shared memory."""
        return self._shm_size.bit_length() - 1 - 2

    def connect(self, m: Module, index: int, device: object) -> None:
        """Connect ``device``'s transport ports to ``ports[index]``, checking it fits.

        ``device`` is a device or a bus front-end around one; its vector count
        (if it says) must be the table's, its shared memory the domain's.
        """
        check_int("port index", index, 0, len(self._ports) - 1)
        inner = getattr(device, "device", device)
        peer, vectors = self._ports[index]
        own = getattr(inner, "vectors", vectors)
        if own != vectors:
            raise ValueError(f"port {index} (id {peer}) has {vectors} vectors, the device {own}")
        size = getattr(inner, "shm_size", self._shm_size)
        if size != self._shm_size:
            raise ValueError(f"the domain has {self._shm_size} bytes of memory, the device {size}")
        connect_transport(m, device, self.ports[index])

    def elaborate(self, platform: object) -> Module:
        m = Module()
        n = len(self._ports)
        ids = [peer for peer, _ in self._ports]
        counts = [vectors for _, vectors in self._ports]
        # A routed vector is below its target's count: the stages and FIFOs keep only those bits.
        vector_bits = max(1, (max(counts) - 1).bit_length())

        # Peer table: identity and the known-peer query (answered one cycle after req).
        for i, port in enumerate(self.ports):
            ack = Signal(name=f"query{i}_ack")
            answer = Signal.like(port.peers.vectors, name=f"query{i}_vectors")
            m.d.sync += ack.eq(port.peers.req & ~ack)
            with m.Switch(port.peers.peer):
                for peer, vectors in self._ports:
                    with m.Case(peer):
                        m.d.sync += answer.eq(vectors)
                with m.Default():
                    m.d.sync += answer.eq(0)
            m.d.comb += [
                port.ident.id.eq(ids[i]),
                port.ident.valid.eq(1),
                port.peers.ack.eq(ack),
                port.peers.vectors.eq(answer),
            ]

        # Doorbell stages: decode against the table, drop (counted) or hold for the target.
        stage_valid = [Signal(name=f"stage{i}_valid") for i in range(n)]
        stage_target = [Signal(n, name=f"stage{i}_target") for i in range(n)]
        stage_vector = [Signal(vector_bits, name=f"stage{i}_vector") for i in range(n)]
        stage_leaves = [Signal(name=f"stage{i}_leaves") for i in range(n)]
        drop_peer = [Signal(name=f"stage{i}_drop_peer") for i in range(n)]
        drop_vector = [Signal(name=f"stage{i}_drop_vector") for i in range(n)]
        for i, port in enumerate(self.ports):
            stream = port.doorbell
            word = stream.payload.as_value()
            peer = word[DOORBELL.peer.lsb : DOORBELL.peer.lsb + DOORBELL.peer.width]
            vector = word[DOORBELL.vector.lsb : DOORBELL.vector.lsb + DOORBELL.vector.width]
            match = Signal(n, name=f"stage{i}_match")
            fits = Signal(n, name=f"stage{i}_fits")
            for j in range(n):
                m.d.comb += [match[j].eq(peer == ids[j]), fits[j].eq(vector < counts[j])]
            take = stream.valid & stream.ready
            m.d.comb += [
                stream.ready.eq(~stage_valid[i] | stage_leaves[i]),
                drop_peer[i].eq(take & ~match.any()),
                drop_vector[i].eq(take & match.any() & ~(match & fits).any()),
            ]
            with m.If(take & (match & fits).any()):
                m.d.sync += [
                    stage_valid[i].eq(1),
                    stage_target[i].eq(match),
                    stage_vector[i].eq(vector[:vector_bits]),
                ]
            with m.Elif(stage_leaves[i]):
                m.d.sync += stage_valid[i].eq(0)

        bad_peer = Signal(32)
        bad_vector = Signal(32)
        m.d.sync += [
            bad_peer.eq(bad_peer + sum(drop_peer)),
            bad_vector.eq(bad_vector + sum(drop_vector)),
        ]
        m.d.comb += [self.doorbell_bad_peer.eq(bad_peer), self.doorbell_bad_vector.eq(bad_vector)]

        # Crossbar: per target, a round-robin arbiter over the stages and an event FIFO.
        for j, port in enumerate(self.ports):
            fifo = SyncFIFO(width=vector_bits, depth=self._event_depth)
            m.submodules[f"events{j}"] = fifo
            requests = [stage_valid[i] & stage_target[i][j] for i in range(n)]
            grant, last = _round_robin(m, requests, f"target{j}")
            m.d.comb += [
                fifo.w_en.eq(grant.any()),
                fifo.w_data.eq(_select(grant, stage_vector, vector_bits)),
                port.event.payload.vector.eq(fifo.r_data),
                port.event.valid.eq(fifo.r_rdy),
                fifo.r_en.eq(port.event.ready),
            ]
            with m.If(fifo.w_rdy):
                for i in range(n):
                    with m.If(grant[i]):
                        m.d.comb += stage_leaves[i].eq(1)
                        m.d.sync += last.eq(i)

        # Shared memory: round-robin over the ports' requests, one access per cycle.
        if self._ram == "external":
            ram = self.ram
        else:
            store = BlockRam(self.word_bits) if self._ram == "bram" else Ice40Spram(self.word_bits)
            m.submodules.ram = store
            ram = store.port
        mems = [port.mem for port in self.ports]
        grant, last = _round_robin(m, [mem.valid for mem in mems], "mem")
        reading = Signal(n)
        writing = grant.any() & _select(grant, [mem.we for mem in mems], 1)
        m.d.comb += [
            ram.addr.eq(_select(grant, [mem.addr for mem in mems], self.word_bits)),
            ram.w_data.eq(_select(grant, [mem.w_data for mem in mems], 32)),
            ram.w_en.eq(writing.replicate(4) & _select(grant, [mem.sel for mem in mems], 4)),
            ram.r_en.eq(grant.any() & ~writing),
        ]
        m.d.sync += reading.eq(grant & ~writing.replicate(n))
        for i, mem in enumerate(mems):
            m.d.comb += [
                mem.ready.eq(grant[i]),
                mem.r_data.eq(ram.r_data),
                mem.r_valid.eq(reading[i]),
            ]
            with m.If(grant[i]):
                m.d.sync += last.eq(i)
        return m
