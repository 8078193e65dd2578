"""The PCI side of the bridge: a root-complex driver for the endpoint's transaction port.

:class:`TransactionPort` issues one-dword config and memory requests on the
endpoint's ``req`` stream and takes its ``cpl`` completions
(:mod:`ivhw.hdl.pci.tlp`). :func:`enumerate_endpoint` plays the firmware: it
checks the IDs, sizes and assigns the BARs, enables memory decode and bus
mastering, programs and unmasks every MSI-X table entry through BAR1 and
enables MSI-X. An MSI-X message then arrives on the endpoint's ``msi`` port as
a write of ``MSI_DATA_BASE + vector`` to ``MSI_ADDRESS``, which the bridge turns
into the guest's interrupt.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..hdl.pci.tlp import Completion, CplStatus, MsiMessage, ReqKind, Request
from ..sw.pcicfg import BARS, CFG, CMD, DEVICE_ID, MSIX_CAP, REV2_IDS, VENDOR_CAP, VENDOR_ID
from ..sw.regmap import MSIX_BAR, MSIX_ENTRY, PCI_REV2_REGS
from ..sw.sections import Layout

if TYPE_CHECKING:
    from .build import Revision2

__all__ = [
    "MSI_ADDRESS",
    "MSI_DATA_BASE",
    "PciLayout",
    "TransactionError",
    "TransactionPort",
    "enumerate_endpoint",
    "msi_vector",
    "pack",
    "unpack",
]

#: Where the firmware points every MSI-X entry (x86's interrupt window).
MSI_ADDRESS = 0xFEE0_0000
#: Message data of vector v: ``MSI_DATA_BASE + v``.
MSI_DATA_BASE = 0x4000
#: Bus addresses the firmware assigns: BAR0 and BAR1 below 4 GiB, BAR2 above.
_BAR0_BASE = 0xFE00_0000
_BAR1_BASE = 0xFE00_1000
_BAR2_BASE = 0x1_0000_0000


def pack(layout: Any, **fields: int) -> int:
    """The integer of a ``layout`` (``ivhw.hdl.pci.tlp``) with ``fields``, the rest 0."""
    value = 0
    for name, fld in layout:
        value |= (fields.get(name, 0) & ((1 << fld.width) - 1)) << fld.offset
    return value


def unpack(layout: Any, value: int, name: str) -> int:
    """Field ``name`` of the integer ``value`` laid out as ``layout``."""
    fld = layout[name]
    return (value >> fld.offset) & ((1 << fld.width) - 1)


def msi_vector(payload: int) -> int:
    """The vector of an MSI-X message on the ``msi`` port, as the firmware programmed it."""
    return unpack(MsiMessage, payload, "data") - MSI_DATA_BASE


class TransactionError(Exception):
    """A request was answered Unsupported Request."""


@dataclass(frozen=True)
class PciLayout:
    """Where the firmware put the endpoint."""

    bar0: int
    bar1: int
    bar2: int
    shm_size: int
    vectors: int
    #: revision 2: the endpoint's parameters (its sections checked against its capability)
    revision2: Revision2 | None = None


class TransactionPort:
    """One request at a time on ``req``, its completion from ``cpl``.

    Parameters
    ----------
    dut : cocotb handle
        The endpoint's top.
    tick : coroutine function
        Advances one clock cycle (and serves the transport in it).
    """

    def __init__(self, dut: Any, tick: Callable[[], Awaitable[None]]) -> None:
        self._tick = tick
        self._req_valid, self._req_payload = dut.req__valid, dut.req__payload
        self._req_ready = dut.req__ready._handle.get_signal_val_binstr
        self._cpl_valid = dut.cpl__valid._handle.get_signal_val_binstr
        self._cpl_payload = dut.cpl__payload._handle.get_signal_val_binstr
        self._req_valid.value = 0
        self._req_payload.value = 0
        dut.cpl__ready.value = 1

    async def request(self, kind: int, addr: int, be: int = 0xF, data: int = 0) -> int:
        """Issue one request; the completion's data (``TransactionError`` on UR)."""
        tick = self._tick
        self._req_payload.value = pack(Request, kind=kind, addr=addr & ~3, be=be, data=data)
        self._req_valid.value = 1
        while True:
            await tick()
            if self._req_ready() == "1":
                break
        self._req_valid.value = 0
        while True:
            await tick()
            if self._cpl_valid() == "1":
                break
        payload = int(self._cpl_payload(), 2)
        if unpack(Completion, payload, "status") == CplStatus.UR.value:
            raise TransactionError(f"request {kind} at {addr:#x} answered Unsupported Request")
        return unpack(Completion, payload, "data")

    async def cfg_read(self, offset: int) -> int:
        """Config dword at ``offset`` (rounded down to a dword)."""
        return await self.request(ReqKind.CFG_READ.value, offset)

    async def cfg_write(self, offset: int, value: int, be: int = 0xF) -> None:
        """Config write of the bytes ``be`` enables in the dword at ``offset``."""
        await self.request(ReqKind.CFG_WRITE.value, offset, be, value)

    async def read(self, addr: int) -> int:
        """Memory read of the dword at bus address ``addr``."""
        return await self.request(ReqKind.MEM_READ.value, addr)

    async def write(self, addr: int, value: int, strb: int = 0xF) -> None:
        """Memory write of the bytes ``strb`` enables at bus address ``addr``."""
        await self.request(ReqKind.MEM_WRITE.value, addr, strb, value)


async def _size_bar(port: TransactionPort, offset: int, is64: bool) -> int:
    original = await port.cfg_read(offset)
    await port.cfg_write(offset, 0xFFFF_FFFF)
    low = await port.cfg_read(offset) & ~0xF
    mask = low
    if is64:
        await port.cfg_write(offset + 4, 0xFFFF_FFFF)
        mask |= (await port.cfg_read(offset + 4)) << 32
        width = 64
    else:
        width = 32
    await port.cfg_write(offset, original)
    return ((~mask) & ((1 << width) - 1)) + 1 if mask else 0


async def enumerate_endpoint(
    port: TransactionPort, revision2: Revision2 | None = None, sections: Layout | None = None
) -> PciLayout:
    """Firmware: IDs, BARs, command register, MSI-X table and enable; the layout.

    Revision 2 (``revision2``, with the ``sections`` the device was built for): its IDs,
    the MSI-X capability found through the capability list, the vendor capability's
    section sizes checked against ``sections``, and Interrupt Control enabled (one-shot
    stays off), as a driver leaves the function.
    """
    ids = await port.cfg_read(CFG.VENDOR_ID)
    if revision2 is None:
        vendor, device = VENDOR_ID, DEVICE_ID
    else:
        rev2_ids = REV2_IDS[revision2.layout]
        vendor, device = rev2_ids.vendor, rev2_ids.device
    if ids != (device << 16 | vendor):
        raise TransactionError(f"not an ivshmem function: IDs {ids:#010x}")
    sizes = {}
    for bar in BARS:
        sizes[bar.index] = await _size_bar(port, bar.offset, bar.is64)
    await port.cfg_write(BARS.regs.offset, _BAR0_BASE)
    if sizes[BARS.msix.index]:
        await port.cfg_write(BARS.msix.offset, _BAR1_BASE)
    await port.cfg_write(BARS.shm.offset, _BAR2_BASE & 0xFFFF_FFFF)
    await port.cfg_write(BARS.shm.offset + 4, _BAR2_BASE >> 32)
    await port.cfg_write(CFG.COMMAND, CMD.MEMORY | CMD.MASTER, be=0b0011)
    vectors = 0
    if revision2 is None:
        control_dword = MSIX_CAP.offset & ~3
    else:
        assert sections is not None
        await _check_sections(port, sections)
        msix = await _find_capability(port, MSIX_CAP.id)
        control_dword = msix if msix else -1
    cap = await port.cfg_read(control_dword) if control_dword >= 0 else 0
    if cap & 0xFF == MSIX_CAP.id:
        vectors = ((cap >> 16) & MSIX_CAP.TABLE_SIZE) + 1
        for v in range(vectors):
            entry = _BAR1_BASE + MSIX_BAR.entry(v)
            await port.write(entry + MSIX_ENTRY["MsgAddrLo"].offset, MSI_ADDRESS)
            await port.write(entry + MSIX_ENTRY["MsgAddrHi"].offset, 0)
            await port.write(entry + MSIX_ENTRY["MsgData"].offset, MSI_DATA_BASE + v)
            await port.write(entry + MSIX_ENTRY["VectorCtrl"].offset, 0)  # unmasked
        # Message Control is the upper half of the capability's first dword
        await port.cfg_write(control_dword, MSIX_CAP.ENABLE << 16, be=0b1100)
    if revision2 is not None:
        regs = PCI_REV2_REGS[revision2.layout]
        await port.write(_BAR0_BASE + regs["IntCtrl"].offset, 1)  # deliver interrupts
    return PciLayout(_BAR0_BASE, _BAR1_BASE, _BAR2_BASE, sizes[BARS.shm.index], vectors, revision2)


async def _find_capability(port: TransactionPort, cap_id: int) -> int:
    """Config offset of capability ``cap_id`` on the capability list (0: none)."""
    pointer = (await port.cfg_read(CFG.CAPABILITY_LIST & ~3)) >> 8 * (CFG.CAPABILITY_LIST % 4)
    pointer &= 0xFC
    for _ in range(48):  # longer than config space holds: a loop
        if not pointer:
            return 0
        header = await port.cfg_read(pointer)
        if header & 0xFF == cap_id:
            return pointer
        pointer = (header >> 8) & 0xFC
    return 0


async def _check_sections(port: TransactionPort, sections: Layout) -> None:
    """The vendor capability must describe ``sections`` (what a driver reads)."""
    cap = await _find_capability(port, VENDOR_CAP.id)
    if not cap:
        raise TransactionError("no revision 2 vendor capability")

    async def u64(offset: int) -> int:
        return await port.cfg_read(cap + offset) | await port.cfg_read(cap + offset + 4) << 32

    found = (
        await port.cfg_read(cap + VENDOR_CAP.STATE_TABLE_SIZE),
        await u64(VENDOR_CAP.RW_SIZE),
        await u64(VENDOR_CAP.OUTPUT_SIZE),
    )
    wanted = (sections.state_table.size, sections.rw.size, sections.output_section_size)
    if found != wanted:
        raise TransactionError(
            f"the vendor capability describes sections {found} (State Table, R/W, output), "
            f"not {wanted}"
        )
