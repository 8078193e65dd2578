"""The transaction interface between a PCIe core adapter and the ivshmem PCI endpoint.

A PCIe hard or soft core (or a cocotbext-pcie function in a test) turns the
TLPs addressed to this function into *requests* of one dword each, and the
endpoint answers every request with exactly one *completion*, in order:

``req`` (adapter -> endpoint), :func:`request_signature`
    A stream of :data:`Request`. ``kind`` is a :class:`ReqKind`; ``addr`` is
    a byte address whose bits 1:0 are ignored: for memory requests the full
    64-bit bus address (the endpoint decodes its BARs itself), for config
    requests the 12-bit ECAM offset (register number and extended register
    number; offsets 100h..FFFh read all-ones). ``be`` are the byte enables of
    the dword (PCIe's first/last DW BE; bit i = byte lane i), ``data`` is the
    write data in little-endian byte lanes. A multi-dword TLP is split by the
    adapter into one request per dword, lowest address first.
``cpl`` (endpoint -> adapter), :func:`completion_signature`
    A stream of :data:`Completion`: ``status`` (:class:`CplStatus`) and, for
    reads, ``data`` (the whole dword; lanes not enabled read as the device
    defines, see :mod:`ivhw.hdl.pci.device`). Every request gets one: config
    writes get the completion PCIe requires; memory writes, which are posted
    on PCIe, get one too so that the adapter knows the write took effect and
    can turn :attr:`CplStatus.UR` into an unsupported-request error message
    instead of a completion. A memory request that hits no BAR, or any memory
    request while the command register's memory-space enable is clear, is
    answered ``UR`` without effect.
``msi`` (endpoint -> adapter), :func:`msi_signature`
    A stream of :data:`MsiMessage`: an MSI-X message the adapter must send
    upstream as a one-dword memory write of ``data`` to ``addr``. The
    endpoint emits it only with bus mastering and MSI-X enabled.

One request is outstanding at a time: the endpoint takes the next request
only after the completion of the previous one was transferred. The adapter
keeps requester ID, tag and traffic class of a non-posted TLP itself.
"""

from __future__ import annotations

from amaranth.hdl import unsigned
from amaranth.lib import data, enum, stream

__all__ = [
    "Completion",
    "CplStatus",
    "MsiMessage",
    "ReqKind",
    "Request",
    "completion_signature",
    "msi_signature",
    "pack",
    "request_signature",
    "unpack",
]


class ReqKind(enum.Enum, shape=unsigned(2)):
    """What a request does."""

    #: configuration read (type 0) of the dword at ``addr``
    CFG_READ = 0
    #: configuration write (type 0), bytes enabled by ``be``
    CFG_WRITE = 1
    #: memory read of the dword at ``addr``
    MEM_READ = 2
    #: memory write (posted on PCIe), bytes enabled by ``be``
    MEM_WRITE = 3


class CplStatus(enum.Enum, shape=unsigned(1)):
    """How a request ended (PCIe completion status, the two this function uses)."""

    #: successful completion
    SC = 0
    #: unsupported request: no BAR claims the address, or memory decode is off
    UR = 1


#: One dword request.
Request = data.StructLayout({
    "kind": ReqKind,
    "addr": unsigned(64),
    "be": unsigned(4),
    "data": unsigned(32),
})  # fmt: skip

#: The answer to one request.
Completion = data.StructLayout({"status": CplStatus, "data": unsigned(32)})

#: An MSI-X message: write ``data`` (32 bits) to ``addr`` (64 bits).
MsiMessage = data.StructLayout({"addr": unsigned(64), "data": unsigned(32)})


def pack(layout: data.StructLayout, **fields: int) -> int:
    """The integer of ``layout`` (``Request``, ``Completion``, ``MsiMessage``) with ``fields``.

    Fields not given are 0; each value is truncated to its field. For drivers
    outside the gateware (testbenches, the co-simulation bridge), so that no
    bit offset is written twice.
    """
    value = 0
    for name, field in layout:
        value |= (int(fields.get(name, 0)) & ((1 << field.width) - 1)) << field.offset
    return value


def unpack(layout: data.StructLayout, value: int) -> dict[str, int]:
    """The fields of the integer ``value`` laid out as ``layout``."""
    return {name: (value >> f.offset) & ((1 << f.width) - 1) for name, f in layout}


def request_signature() -> stream.Signature:
    """Requests, adapter side is the source (``In(request_signature())`` on the endpoint)."""
    return stream.Signature(Request)


def completion_signature() -> stream.Signature:
    """Completions, endpoint side is the source (``Out(completion_signature())``)."""
    return stream.Signature(Completion)


def msi_signature() -> stream.Signature:
    """MSI-X memory writes, endpoint side is the source (``Out(msi_signature())``)."""
    return stream.Signature(MsiMessage)
