"""The SoC tile's peripherals, each a Wishbone classic slave (:mod:`ivhw.boards.memmap`).

Every slave answers one access per request, registered: ``ack`` one cycle after
``stb`` at the earliest, then low for a cycle (the CPU drops ``stb`` after ``ack``).
"""

# Nested `with m.If(...)` blocks mirror the hardware's decision tree.
# ruff: noqa: SIM117

from __future__ import annotations

from amaranth.hdl import Cat, Module, Mux, Signal
from amaranth.lib import wiring
from amaranth.lib.cdc import FFSynchronizer
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from ..hdl.bus.wishbone import WishboneSignature
from ..hdl.transport import check_int
from .memmap import IRQ_ALARM, IRQ_IVSHMEM, SYS, UART

__all__ = ["Ram", "Sys", "Uart"]


def _reg_index(offset: int) -> int:
    return offset >> 2


def _word_bits(region: object) -> int:
    """Width of the word address that reaches every register of ``region``."""
    return max(1, max(_reg_index(reg.offset) for reg in region.regs).bit_length())  # type: ignore[attr-defined]


class Ram(wiring.Component):
    """Single-port RAM initialised with ``init`` (the firmware image), one word per access.

    Parameters
    ----------
    size : int
        Bytes, a power of two >= 64.
    init : sequence of int
        Initial 32-bit words (at most ``size // 4``); the rest is zero.
    """

    def __init__(self, size: int, init: list[int] = ()) -> None:  # type: ignore[assignment]
        size = check_int("ram_size", size, 64)
        if size & (size - 1):
            raise ValueError(f"ram_size must be a power of two, not {size}")
        if len(init) > size // 4:
            raise ValueError(f"the firmware image ({4 * len(init)} bytes) exceeds the RAM "
                             f"({size} bytes)")  # fmt: skip
        self._size = size
        self._init = list(init)
        super().__init__({"wb": In(WishboneSignature((size // 4 - 1).bit_length()))})

    def elaborate(self, platform: object) -> Module:
        m = Module()
        depth = self._size // 4
        m.submodules.mem = mem = Memory(shape=32, depth=depth, init=self._init)
        rd = mem.read_port()
        wr = mem.write_port(granularity=8)
        wb = self.wb
        go = wb.cyc & wb.stb & ~wb.ack
        m.d.comb += [
            rd.addr.eq(wb.adr),
            wr.addr.eq(wb.adr),
            wr.data.eq(wb.dat_w),
            wr.en.eq(Mux(go & wb.we, wb.sel, 0)),
            wb.dat_r.eq(rd.data),
        ]
        m.d.sync += wb.ack.eq(go)
        return m


class Uart(wiring.Component):
    """8N1 UART, transmit and receive, ``divisor`` clocks per bit (registers: memmap.UART).

    Parameters
    ----------
    divisor : int
        Clocks per bit, >= 4 (e.g. 12 MHz / 115200 = 104).

    Attributes
    ----------
    tx : ``Out(1)``, rx : ``In(1)``
        The serial lines (idle high).
    busy : ``Out(1)``
        A byte is being sent.
    """

    def __init__(self, divisor: int) -> None:
        self._divisor = check_int("uart divisor", divisor, 4)
        super().__init__({
            "wb": In(WishboneSignature(_word_bits(UART))),
            "tx": Out(1, init=1),
            "rx": In(1, init=1),
            "busy": Out(1),
        })  # fmt: skip

    @property
    def divisor(self) -> int:
        return self._divisor

    def elaborate(self, platform: object) -> Module:
        m = Module()
        div = self._divisor
        wb = self.wb
        go = wb.cyc & wb.stb & ~wb.ack
        index = wb.adr

        # -- transmitter: a 10-bit shift register (start, 8 data, stop) ------------------
        tx_shift = Signal(10, init=0x3FF)
        tx_bits = Signal(range(11))
        tx_timer = Signal(range(div))
        tx_idle = tx_bits == 0
        m.d.comb += [self.tx.eq(tx_shift[0]), self.busy.eq(~tx_idle)]
        with m.If(~tx_idle):
            with m.If(tx_timer == div - 1):
                m.d.sync += [
                    tx_timer.eq(0),
                    tx_shift.eq(Cat(tx_shift[1:], 1)),
                    tx_bits.eq(tx_bits - 1),
                ]
            with m.Else():
                m.d.sync += tx_timer.eq(tx_timer + 1)

        # -- receiver: synchronise, find the start bit, sample each bit in its middle ----
        rx = Signal(init=1)
        m.submodules.rx_sync = FFSynchronizer(self.rx, rx, init=1)
        rx_shift = Signal(8)
        rx_timer = Signal(range(div + div // 2 + 1))
        rx_bits = Signal(range(10))
        rx_data = Signal(8)
        rx_valid = Signal()
        rx_overrun = Signal()
        take_rx = Signal()
        with m.If(rx_bits == 0):
            with m.If(~rx):
                # first sample in the middle of data bit 0: 1.5 bit times after the edge
                m.d.sync += [rx_bits.eq(9), rx_timer.eq(div + div // 2 - 1)]
        with m.Elif(rx_timer == 0):
            m.d.sync += [rx_bits.eq(rx_bits - 1), rx_timer.eq(div - 1)]
            with m.If(rx_bits == 1):
                # the stop bit: a byte is complete if it is high (else a framing error)
                with m.If(rx):
                    m.d.sync += [rx_data.eq(rx_shift), rx_valid.eq(1)]
                    with m.If(rx_valid & ~take_rx):
                        m.d.sync += rx_overrun.eq(1)
            with m.Else():
                m.d.sync += rx_shift.eq(Cat(rx_shift[1:], rx))
        with m.Else():
            m.d.sync += rx_timer.eq(rx_timer - 1)

        # -- bus -------------------------------------------------------------------------
        m.d.sync += wb.ack.eq(0)
        with m.If(go):
            with m.Switch(index):
                with m.Case(_reg_index(UART["TX"].offset)):
                    with m.If(~wb.we):
                        m.d.sync += [wb.ack.eq(1), wb.dat_r.eq(0)]
                    with m.Elif(tx_idle):
                        m.d.sync += [
                            wb.ack.eq(1),
                            tx_shift.eq(Cat(0, wb.dat_w[:8], 1)),
                            tx_bits.eq(10),
                            tx_timer.eq(0),
                        ]
                    # else: hold the write until the transmitter is idle
                with m.Case(_reg_index(UART["RX"].offset)):
                    m.d.sync += wb.ack.eq(1)
                    with m.If(~wb.we):
                        m.d.comb += take_rx.eq(1)
                        m.d.sync += [
                            wb.dat_r.eq(Cat(rx_data, rx_valid)),
                            rx_valid.eq(0),
                            rx_overrun.eq(0),
                        ]
                with m.Case(_reg_index(UART["STATUS"].offset)):
                    m.d.sync += [wb.ack.eq(1), wb.dat_r.eq(Cat(tx_idle, rx_valid, rx_overrun))]
                with m.Default():
                    m.d.sync += [wb.ack.eq(1), wb.dat_r.eq(0)]
        return m


class Sys(wiring.Component):
    """Cycle counter, alarm, interrupt latch and wait-for-interrupt (registers: memmap.SYS).

    Parameters
    ----------
    clock_hz : int
        The tile's clock frequency, shown in CLOCK_HZ.

    Attributes
    ----------
    event : ``In(1)``
        One pulse per ivshmem event (the flat device's ``irq``): sets PENDING bit 0.
    irq : ``Out(1)``
        The CPU's interrupt line: ``PENDING & ENABLE != 0``.
    sleeping : ``Out(1)``
        The CPU waits in SLEEP and no alarm is armed: nothing inside the tile changes
        until an event arrives (a co-simulation may stop the clock meanwhile).
    """

    def __init__(self, clock_hz: int) -> None:
        self._clock_hz = check_int("clock_hz", clock_hz, 1, (1 << 32) - 1)
        super().__init__({
            "wb": In(WishboneSignature(_word_bits(SYS))),
            "event": In(1),
            "irq": Out(1),
            "sleeping": Out(1),
        })  # fmt: skip

    def elaborate(self, platform: object) -> Module:
        m = Module()
        wb = self.wb
        go = wb.cyc & wb.stb & ~wb.ack

        cycles = Signal(32)
        pending = Signal(2)
        enable = Signal(2)
        alarm = Signal(32)
        armed = Signal()
        m.d.sync += cycles.eq(cycles + 1)
        wake = (pending & enable) != 0
        m.d.comb += self.irq.eq(wake)

        set_bits = Signal(2)
        clear_bits = Signal(2)
        m.d.comb += set_bits[IRQ_IVSHMEM].eq(self.event)
        with m.If(armed & (cycles == alarm)):
            m.d.comb += set_bits[IRQ_ALARM].eq(1)
            m.d.sync += armed.eq(0)
        m.d.sync += pending.eq((pending & ~clear_bits) | set_bits)

        reads = {
            "CYCLE": cycles,
            "PENDING": pending,
            "ENABLE": enable,
            "ALARM": alarm,
            "CLOCK_HZ": self._clock_hz,
        }
        m.d.sync += wb.ack.eq(0)
        with m.If(go):
            with m.Switch(wb.adr):
                for reg in SYS.regs:
                    with m.Case(_reg_index(reg.offset)):
                        if reg.name == "SLEEP":
                            with m.If(~wb.we | wake):
                                m.d.sync += [wb.ack.eq(1), wb.dat_r.eq(0)]
                            with m.Else():
                                m.d.comb += self.sleeping.eq(~armed)
                            continue
                        m.d.sync += [wb.ack.eq(1), wb.dat_r.eq(reads.get(reg.name, 0))]
                        with m.If(wb.we):
                            if reg.name == "PENDING":
                                m.d.comb += clear_bits.eq(wb.dat_w[: len(pending)])
                            elif reg.name == "ENABLE":
                                m.d.sync += enable.eq(wb.dat_w[: len(enable)])
                            elif reg.name == "ALARM":
                                m.d.sync += [alarm.eq(wb.dat_w), armed.eq(1)]
                with m.Default():
                    m.d.sync += [wb.ack.eq(1), wb.dat_r.eq(0)]
        return m
