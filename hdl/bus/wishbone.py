"""Wishbone B4 *classic* slave front-end for an ivshmem device's internal bus.

Classic (not pipelined) cycles: no ``STALL``; the master holds ``CYC``,
``STB`` and the request until ``ACK`` or ``ERR`` and must not end a cycle
before that (an access already started completes inside the device anyway).
``ACK``/``ERR`` come at the earliest one clock after ``STB``, one per
request; registered feedback (``CTI``/``BTE``) is not supported, so a burst
is a sequence of single accesses. A B4 pipelined master connects through the
usual adapter (``STALL = !ACK``-style, one request outstanding).

32-bit port, 8-bit granularity: ``ADR`` is the *word* address (the device's
byte address bits n-1:2), ``SEL`` selects the byte lanes. Because ``ADR``
cannot express an unaligned address, the only error is an access outside both
windows (the device's DECERR), answered with ``ERR``; everything else
(including sub-word and reserved-register accesses) with ``ACK``.
"""

from __future__ import annotations

from amaranth.hdl import Cat, Const, Module
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from ..transport import AddressedSignature
from . import FrontEnd, Response

__all__ = ["WishboneFrontEnd", "WishboneSignature"]


class WishboneSignature(AddressedSignature):
    """Wishbone B4 classic, 32-bit data, byte granularity, master side.

    Members (lower case B4 names without ``_O``/``_I``): ``cyc``, ``stb``,
    ``we``, ``adr``, ``dat_w`` (master to slave), ``dat_r``, ``sel``, ``ack``,
    ``err``.

    Parameters
    ----------
    addr_width : int
        Width of ``adr`` (a word address).
    """

    def __init__(self, addr_width: int) -> None:
        self.check_width(addr_width)
        super().__init__(addr_width, {
            "cyc": Out(1), "stb": Out(1), "we": Out(1), "adr": Out(addr_width),
            "dat_w": Out(32), "sel": Out(4), "dat_r": In(32), "ack": In(1), "err": In(1),
        })  # fmt: skip


class WishboneFrontEnd(FrontEnd):
    """A device with its internal bus behind a Wishbone classic slave port ``wb``.

    Parameters
    ----------
    device : wiring.Component
        Any ivshmem device with a ``bus: In(BusSignature(n))`` member; the
        Wishbone address is ``n - 2`` bits wide. Every other member of the
        device appears unchanged on this component.

    Raises
    ------
    TypeError
        If ``device`` has no internal bus port.
    """

    def __init__(self, device: wiring.Component) -> None:
        # Wishbone addresses words: two address bits fewer than the byte-addressed bus.
        super().__init__(device, "wb", lambda width: WishboneSignature(width - 2))

    def elaborate(self, platform: object) -> Module:
        m, device = self._wrap()
        wb, bus = self.wb, device.bus
        active = wb.cyc & wb.stb
        okay = bus.resp == Response.OKAY
        m.d.comb += [
            bus.stb.eq(active),
            bus.we.eq(wb.we),
            bus.addr.eq(Cat(Const(0, 2), wb.adr)),
            bus.w_data.eq(wb.dat_w),
            bus.sel.eq(wb.sel),
            wb.dat_r.eq(bus.r_data),
            wb.ack.eq(active & bus.ack & okay),
            wb.err.eq(active & bus.ack & ~okay),
        ]
        return m
