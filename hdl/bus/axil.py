"""AXI4-Lite slave front-end for an ivshmem device's internal bus.

One AXI4-Lite slave port carries both windows of the device, at the device's
own bus addresses (for ivshmem-flat: registers at 0, shared memory at
``shm_size``, DECERR in between; see :mod:`ivhw.hdl.flat`). ``AWADDR`` and
``ARADDR`` are byte addresses as wide as the device's bus; a board top that
places the device elsewhere strips its base address first.

Accesses: AXI says ``WSTRB`` names the bytes written and an AXI4-Lite read
is always full width, so the front-end drops bits 1:0 of ``AWADDR`` and
``ARADDR`` and hands the device the word with its byte enables (reads: all
four). A sub-word write is thus judged by its strobes alone, like a PCIe
write by its byte enables: the strobe patterns a CPU access produces (1, 2 or
4 bytes aligned to their size) are done, the others (three bytes, holes, two
bytes at lane 1) are QEMU's unaligned accesses and answered SLVERR. A
sub-word read returns the whole word, so a master that extracts byte 1 of
IVPOSITION sees that byte, where QEMU's byte read at 09h returns 0 (AXI4-Lite
carries no read size to tell the two apart). An address outside both windows
is answered DECERR.

The slave takes a write when ``AWVALID`` and ``WVALID`` are both high (AXI
lets a slave wait for both before raising either ready) and alternates
priority between reads and writes when both are pending, so neither starves.
One transaction is in flight at a time.
"""

# Nested `with m.State(...)` / `with m.If(...)` blocks mirror the hardware's decision tree.
# ruff: noqa: SIM117

from __future__ import annotations

from amaranth.hdl import Cat, Const, Module, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from ..transport import AddressedSignature
from . import FrontEnd

__all__ = ["AXI4LiteFrontEnd", "AXI4LiteSignature"]


class AXI4LiteSignature(AddressedSignature):
    """AXI4-Lite, 32-bit data, master side (``In(AXI4LiteSignature(n))`` on a slave).

    Members are AXI's signal names in lower case (``awaddr``, ``wstrb``,
    ``bresp``, ...), so cocotbext-axi's ``AxiLiteBus.from_prefix(dut, "axil_")``
    and cocotb-bus's ``AXI4LiteMaster(dut, "axil_", clk)`` find them in the
    generated Verilog (``axil__awaddr``).

    Parameters
    ----------
    addr_width : int
        Width of ``awaddr`` / ``araddr`` (byte addresses).
    """

    def __init__(self, addr_width: int) -> None:
        self.check_width(addr_width, 2)
        super().__init__(addr_width, {
            "awaddr": Out(addr_width), "awprot": Out(3), "awvalid": Out(1), "awready": In(1),
            "wdata": Out(32), "wstrb": Out(4), "wvalid": Out(1), "wready": In(1),
            "bresp": In(2), "bvalid": In(1), "bready": Out(1),
            "araddr": Out(addr_width), "arprot": Out(3), "arvalid": Out(1), "arready": In(1),
            "rdata": In(32), "rresp": In(2), "rvalid": In(1), "rready": Out(1),
        })  # fmt: skip


class AXI4LiteFrontEnd(FrontEnd):
    """A device with its internal bus behind an AXI4-Lite slave port ``axil``.

    Parameters
    ----------
    device : wiring.Component
        Any ivshmem device with a ``bus: In(BusSignature(n))`` member. Every
        other member of the device appears unchanged on this component.

    Raises
    ------
    TypeError
        If ``device`` has no internal bus port.
    """

    def __init__(self, device: wiring.Component) -> None:
        super().__init__(device, "axil", AXI4LiteSignature)

    def elaborate(self, platform: object) -> Module:
        m, device = self._wrap()
        axil, bus = self.axil, device.bus

        write_first = Signal()  # alternates when reads and writes compete
        resp = Signal(2)
        r_data = Signal(32)

        with m.FSM(name="axil"):
            with m.State("IDLE"):
                can_write = axil.awvalid & axil.wvalid
                take_write = can_write & (write_first | ~axil.arvalid)
                take_read = axil.arvalid & ~take_write
                m.d.comb += [
                    axil.awready.eq(take_write),
                    axil.wready.eq(take_write),
                    axil.arready.eq(take_read),
                ]
                with m.If(take_write):
                    m.d.sync += [
                        bus.stb.eq(1),
                        bus.we.eq(1),
                        bus.addr.eq(Cat(Const(0, 2), axil.awaddr[2:])),
                        bus.w_data.eq(axil.wdata),
                        bus.sel.eq(axil.wstrb),
                        write_first.eq(0),
                    ]
                    m.next = "WRITE"
                with m.Elif(take_read):
                    m.d.sync += [
                        bus.stb.eq(1),
                        bus.we.eq(0),
                        bus.addr.eq(Cat(Const(0, 2), axil.araddr[2:])),
                        bus.sel.eq(0b1111),
                        write_first.eq(1),
                    ]
                    m.next = "READ"
            with m.State("WRITE"):
                with m.If(bus.ack):
                    m.d.sync += [bus.stb.eq(0), resp.eq(bus.resp)]
                    m.next = "B"
            with m.State("READ"):
                with m.If(bus.ack):
                    m.d.sync += [bus.stb.eq(0), resp.eq(bus.resp), r_data.eq(bus.r_data)]
                    m.next = "R"
            with m.State("B"):
                m.d.comb += [axil.bvalid.eq(1), axil.bresp.eq(resp)]
                with m.If(axil.bready):
                    m.next = "IDLE"
            with m.State("R"):
                m.d.comb += [axil.rvalid.eq(1), axil.rresp.eq(resp), axil.rdata.eq(r_data)]
                with m.If(axil.rready):
                    m.next = "IDLE"
        return m
