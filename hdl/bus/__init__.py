"""The devices' internal register bus and its front-ends (AXI4-Lite, Wishbone).

Every ivshmem device exposes one :class:`BusSignature` port; a front-end
(:mod:`ivhw.hdl.bus.axil`, :mod:`ivhw.hdl.bus.wishbone`) adapts a standard bus
to it. The internal bus is a byte-addressed, single-outstanding
request/acknowledge bus in the style of Wishbone classic:

- the master raises ``stb`` with ``addr``, ``we``, ``w_data`` and ``sel`` and
  holds them until the cycle in which the slave raises ``ack``;
- ``ack`` lasts one cycle and comes at the earliest one cycle after ``stb``
  (the slave registers it), so the master may present the next request in the
  cycle after ``ack``;
- with ``ack`` come ``r_data`` (reads) and ``resp`` (every access), a
  :class:`Response` in AXI's vocabulary so that AXI4-Lite can pass it through
  and Wishbone can fold the errors into ``err``.
"""

from __future__ import annotations

from amaranth.hdl import Module, unsigned
from amaranth.lib import enum, wiring
from amaranth.lib.wiring import In, Out

from ..transport import AddressedSignature, checking

__all__ = [
    "BusSignature",
    "FrontEnd",
    "Response",
    "carry_memory_map",
    "device_bus",
    "forward_ports",
    "front_end_members",
]


class Response(enum.Enum, shape=unsigned(2)):
    """How an access ended (the values of AXI's ``BRESP``/``RRESP``)."""

    #: done as asked
    OKAY = 0
    #: the slave exists but refuses the access (an unaligned address)
    SLVERR = 2
    #: no slave at this address
    DECERR = 3


class BusSignature(AddressedSignature):
    """Internal register bus, master side (use ``In(BusSignature(n))`` on a device).

    Parameters
    ----------
    addr_width : int
        Width of the byte address.

    Members
    -------
    stb : ``Out(1)``
        A request is presented; held with the fields below until ``ack``.
    addr : ``Out(addr_width)``
        Byte address; bits 1:0 not zero make the access unaligned.
    we : ``Out(1)``
        Write (1) or read (0).
    w_data : ``Out(32)``
        Write data, little-endian byte lanes.
    sel : ``Out(4)``
        Byte enables (bit i = byte lane i). Reads always return the whole word.
    ack : ``In(1)``
        The request is done (one cycle).
    resp : ``In(Response)``
        With ``ack``: how it ended.
    r_data : ``In(32)``
        With ``ack`` on a read: the word read.
    """

    def __init__(self, addr_width: int) -> None:
        self.check_width(addr_width, 2)
        super().__init__(addr_width, {
            "stb": Out(1),
            "addr": Out(addr_width),
            "we": Out(1),
            "w_data": Out(32),
            "sel": Out(4),
            "ack": In(1),
            "resp": In(Response),
            "r_data": In(32),
        })  # fmt: skip


def device_bus(device: wiring.Component) -> BusSignature:
    """The internal bus signature of ``device``; ``TypeError`` if it has none (front-ends)."""
    bus_member = getattr(device, "signature", None) and device.signature.members.get("bus")
    if bus_member is None or not isinstance(bus_member.signature, BusSignature):
        raise TypeError(f"device must have a bus: In(BusSignature(...)) member, not {device!r}")
    return bus_member.signature


def forward_ports(m: Module, outer: wiring.Component, inner: wiring.Component, skip: str) -> None:
    """Wire every member of ``inner`` except ``skip`` to the same-named member of ``outer``.

    For front-end wrappers, whose signature is the device's with its ``bus``
    replaced by a standard bus.
    """
    for name, member in inner.signature.members.items():
        if name == skip:
            continue
        if member.is_port:
            inner_port, outer_port = getattr(inner, name), getattr(outer, name)
            if member.flow is Out:
                m.d.comb += outer_port.eq(inner_port)
            else:
                m.d.comb += inner_port.eq(outer_port)
        else:
            wiring.connect(m, wiring.flipped(getattr(outer, name)), getattr(inner, name))


def front_end_members(device: wiring.Component, name: str, bus: wiring.Member) -> dict:
    """``device``'s signature members with ``bus`` standing in for its internal bus."""
    members = {name: bus}
    for member_name, member in device.signature.members.items():
        if member_name != "bus":
            members[member_name] = member
    return members


class FrontEnd(wiring.Component):
    """A device with its internal bus replaced by a standard bus port (the front-ends' base).

    Parameters
    ----------
    device : wiring.Component
        Any ivshmem device with a ``bus: In(BusSignature(n))`` member. Every
        other member of the device appears unchanged on the front-end.
    name : str
        Name of the standard bus member.
    signature : callable
        ``signature(n)``: the standard bus's signature for a device bus of ``n``
        address bits. The member carries the device's ``memory_map``.

    Raises
    ------
    TypeError
        If ``device`` has no internal bus port.
    """

    def __init__(self, device: wiring.Component, name: str, signature) -> None:  # type: ignore[no-untyped-def]
        with checking(self):
            addr_width = device_bus(device).addr_width
        self._device = device
        super().__init__(front_end_members(device, name, In(signature(addr_width))))
        carry_memory_map(getattr(self, name), device)

    @property
    def device(self) -> wiring.Component:
        return self._device

    def _wrap(self) -> tuple[Module, wiring.Component]:
        """A module with the device in it and every port but the bus passed through."""
        m = Module()
        m.submodules.device = device = self._device
        forward_ports(m, self, device, skip="bus")
        return m, device


def carry_memory_map(interface: object, device: wiring.Component) -> None:
    """Give a front-end's bus ``interface`` the memory map of ``device``'s bus, if it has one.

    The map is in byte addresses on every bus (Wishbone's ``adr`` is the word
    address: byte address >> 2).
    """
    memory_map = getattr(device.bus, "memory_map", None)  # type: ignore[attr-defined]
    if memory_map is not None:
        interface.memory_map = memory_map  # type: ignore[attr-defined]
