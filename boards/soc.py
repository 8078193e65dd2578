"""The SoC tile: a sentinel-cpu RISC-V core, RAM, UART, timer and an ivshmem-flat device.

One tile is what a VM is to QEMU's ivshmem: a CPU running firmware that drives an
ivshmem device. The device's transport ports (:mod:`ivhw.hdl.transport`: outbound
doorbells, inbound events, own ID, known-peer query, shared-memory master port)
are the tile's own, so a tile joins an on-chip domain on a board or, in
co-simulation, a real ivshmem server, without any change.

The CPU's Wishbone classic bus (word addresses, no ``err``) reaches the slaves
through a decoder on address bits 31:28 (:mod:`ivhw.boards.memmap`) whose select is
registered, so the decode is not on the CPU's load path (RAM, UART and SYS answer
as fast as before, the flat device with one wait state: docs/soc.md); the flat
device's ``err`` (an access to the gap between its two windows) is acknowledged
like ``ack`` so the CPU never hangs, and reads 0. The flat device's IRQ pulse sets
the SYS interrupt latch, whose output is the CPU's level-sensitive ``irq``.
"""

from __future__ import annotations

from functools import reduce
from operator import or_

from amaranth.hdl import Cat, Module, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from ..hdl.bus.wishbone import WishboneFrontEnd
from ..hdl.flat import IvshmemFlat
from ..hdl.transport import check_int, transport_members
from .memmap import FLAT, RAM, SYS, UART
from .periph import Ram, Sys, Uart

__all__ = ["Soc", "Tile"]

_MiB = 1 << 20


def _words(image: bytes) -> list[int]:
    padded = image + bytes(-len(image) % 4)
    return [int.from_bytes(padded[i : i + 4], "little") for i in range(0, len(padded), 4)]


class Tile(wiring.Component):
    """CPU + RAM (with the firmware) + UART + SYS timer + ivshmem-flat, on one Wishbone bus.

    Parameters
    ----------
    firmware : bytes
        The RAM's initial contents (a flat binary linked at address 0).
    ram_size : int
        RAM bytes, a power of two.
    shm_size : int
        The flat device's shared-memory window (the domain's size).
    vectors : int
        Own vectors of the flat device.
    clock_hz : int
        Clock frequency (for CLOCK_HZ and the UART's divisor).
    baud : int
        UART bit rate; ``clock_hz / baud`` clocks per bit, rounded.

    Attributes
    ----------
    doorbell, event, ident, peers, mem, doorbell_bad_peer, doorbell_bad_vector, bad_access, \
events_dropped
        The flat device's transport ports and counters (:mod:`ivhw.hdl.transport`).
    uart_tx : ``Out(1)``, uart_rx : ``In(1)``
        The serial console (idle high).
    led : ``Out(1)``
        Toggles on every ivshmem event received.
    sleeping : ``Out(1)``
        The CPU waits for an interrupt with no alarm armed (see :class:`~.periph.Sys`)
        and the UART is idle: nothing in the tile changes until an event arrives.
    """

    def __init__(
        self,
        firmware: bytes,
        *,
        ram_size: int = 4096,
        shm_size: int = 64 << 10,
        vectors: int = 1,
        clock_hz: int = 12_000_000,
        baud: int = 115_200,
    ) -> None:
        check_int("baud", baud, 1)
        self._vectors = vectors
        self._shm_size = shm_size
        self._words = _words(firmware)
        self._ram_size = ram_size
        self._clock_hz = clock_hz
        self._divisor = max(4, round(clock_hz / baud))
        # construct the parts now, so that bad parameters fail here, not at elaboration
        self._ram = Ram(ram_size, self._words)
        self._uart = Uart(self._divisor)
        self._sys = Sys(clock_hz)
        self._flat = WishboneFrontEnd(IvshmemFlat(vectors=vectors, shm_size=shm_size))
        self._transport = transport_members(shm_size)
        super().__init__({
            **self._transport,
            "uart_tx": Out(1, init=1),
            "uart_rx": In(1, init=1),
            "led": Out(1),
            "sleeping": Out(1),
        })  # fmt: skip

    @property
    def divisor(self) -> int:
        """UART clocks per bit."""
        return self._divisor

    @property
    def vectors(self) -> int:
        return self._vectors

    @property
    def shm_size(self) -> int:
        return self._shm_size

    def elaborate(self, platform: object) -> Module:
        from sentinel_cpu.top import Top

        m = Module()
        m.submodules.cpu = cpu = Top()
        m.submodules.ram = ram = self._ram
        m.submodules.uart = uart = self._uart
        m.submodules.sys = sys = self._sys
        m.submodules.flat = flat = self._flat
        # the transport ports and counters are the tile's; `irq` stays inside
        for name in self._transport:
            member = flat.signature.members[name]
            if member.is_port:
                inner, outer = getattr(flat, name), getattr(self, name)
                m.d.comb += outer.eq(inner) if member.flow is Out else inner.eq(outer)
            else:
                wiring.connect(m, wiring.flipped(getattr(self, name)), getattr(flat, name))
        m.d.comb += [
            uart.rx.eq(self.uart_rx),
            self.uart_tx.eq(uart.tx),
            sys.event.eq(flat.irq),
            cpu.irq.eq(sys.irq),
            # the console's last byte still leaves while the CPU sleeps
            self.sleeping.eq(sys.sleeping & ~uart.busy),
        ]
        with m.If(flat.irq):
            m.d.sync += self.led.eq(~self.led)

        bus = cpu.bus
        region = bus.adr[26:30]
        slaves = {RAM: ram.wb, UART: uart.wb, SYS: sys.wb, FLAT: flat.wb}
        acks, reads = [], []
        for reg_map, wb in slaves.items():
            hit = region == reg_map.index
            # `selected`: the slave that answers, registered so that the decoder stays off
            # the acknowledge and read-data paths into the CPU (see docs/soc.md, "Bus").
            selected = Signal(name=f"selected_{reg_map.name.lower()}")
            if reg_map is FLAT:
                # The Wishbone front-end gates its ack/err with its strobe, so the request
                # itself is registered: the device sees the CPU's strobe a cycle later, held
                # until its ack/err (sentinel-cpu never abandons a cycle), and its answer
                # comes from registers only. One wait state on the device's accesses.
                m.d.sync += selected.eq(bus.cyc & bus.stb & hit & ~wb.ack & ~wb.err)
                m.d.comb += [wb.cyc.eq(selected), wb.stb.eq(selected)]
            else:
                # RAM, UART and SYS acknowledge (a register) a cycle after their strobe at
                # the earliest and the CPU holds the address until then: the address's
                # select of a cycle ago is the one that answers, at no cost in cycles.
                m.d.sync += selected.eq(hit)
                m.d.comb += [wb.cyc.eq(bus.cyc & hit), wb.stb.eq(bus.stb & hit)]
            m.d.comb += [
                wb.we.eq(bus.we),
                wb.adr.eq(bus.adr[: len(wb.adr)]),
                wb.dat_w.eq(bus.dat_w),
                wb.sel.eq(bus.sel),
            ]
            # every slave acknowledges only its own strobe; the read data is an AND-OR
            # multiplexer on the one-hot selects (no priority chain)
            acks.append(wb.ack | wb.err)
            reads.append((selected & ~wb.err).replicate(32) & wb.dat_r)
        # nothing mapped: acknowledged, reads 0
        unmapped = Signal()
        hit_none = bus.cyc & bus.stb
        for reg_map in slaves:
            hit_none &= region != reg_map.index
        m.d.sync += unmapped.eq(hit_none & ~unmapped)
        m.d.comb += [bus.ack.eq(Cat(*acks, unmapped).any()), bus.dat_r.eq(reduce(or_, reads))]
        return m


class Soc(wiring.Component):
    """Tiles in one on-chip ivshmem domain: tile ``i`` is peer ``i`` with one vector.

    Parameters
    ----------
    firmware : sequence of bytes
        One RAM image per tile.
    ram : str
        The domain's shared RAM (:data:`ivhw.hdl.domain.RAM_KINDS`: ``"spram"`` on
        the iCE40UP5K, ``"bram"`` elsewhere).
    ram_size, shm_size, clock_hz, baud
        As for :class:`Tile` (every tile alike).

    Attributes
    ----------
    uart_tx : ``Out(len(firmware))``, uart_rx : ``In(len(firmware))``
        Each tile's console.
    led : ``Out(len(firmware))``
        Each tile's LED (toggles on every doorbell it receives).
    doorbell_bad_peer, doorbell_bad_vector : ``Out(32)``
        The domain's counts of doorbells dropped.
    """

    def __init__(
        self,
        firmware: list[bytes],
        *,
        ram: str = "bram",
        ram_size: int = 4096,
        shm_size: int = 64 << 10,
        clock_hz: int = 12_000_000,
        baud: int = 115_200,
    ) -> None:
        from ..hdl.domain import IvshmemDomain

        count = len(firmware)
        self._tiles = [
            Tile(image, ram_size=ram_size, shm_size=shm_size, vectors=1, clock_hz=clock_hz,
                 baud=baud)
            for image in firmware
        ]  # fmt: skip
        self._domain = IvshmemDomain([(i, 1) for i in range(count)], shm_size=shm_size, ram=ram)
        super().__init__({
            "uart_tx": Out(count, init=(1 << count) - 1),
            "uart_rx": In(count, init=(1 << count) - 1),
            "led": Out(count),
            "doorbell_bad_peer": Out(32),
            "doorbell_bad_vector": Out(32),
        })  # fmt: skip

    @property
    def tiles(self) -> list[Tile]:
        return list(self._tiles)

    def elaborate(self, platform: object) -> Module:
        m = Module()
        m.submodules.domain = domain = self._domain
        for index, tile in enumerate(self._tiles):
            m.submodules[f"tile{index}"] = tile
            domain.connect(m, index, tile)
            m.d.comb += [
                self.uart_tx[index].eq(tile.uart_tx),
                tile.uart_rx.eq(self.uart_rx[index]),
                self.led[index].eq(tile.led),
            ]
        m.d.comb += [
            self.doorbell_bad_peer.eq(domain.doorbell_bad_peer),
            self.doorbell_bad_vector.eq(domain.doorbell_bad_vector),
        ]
        return m
