"""The one definition of the ivshmem PCI configuration space (revision 1).

Standard type-0 header offsets and bits (PCI Local Bus 3.0, ch. 6), the IDs of
QEMU 7.2's ``ivshmem-doorbell`` / ``ivshmem-plain``, which bits are writable
(QEMU's ``pci_init_wmask``), the BAR layout and the MSI-X capability. The model
(``ivhw.sw.models.pci``), the HDL and the tests take these from here, and
:func:`config_header` is the one builder of a variant's header.
:data:`QEMU_DOORBELL_HEADER` is what QEMU itself shows: the model, the
gateware and (in the differential test) QEMU are checked against it.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from .regmap import MSIX_BAR, PCI_REV1_REGS

__all__ = [
    "BARS",
    "CFG",
    "CLASS_CODE",
    "CMD",
    "CMD_WMASK",
    "CONFIG_SIZE",
    "DEVICE_ID",
    "MSIX_CAP",
    "QEMU_DOORBELL_HEADER",
    "REV2_CLASS_BASE",
    "REV2_CMD_WMASK",
    "REV2_IDS",
    "REV2_REGS_BAR",
    "REVISION_ID",
    "STATUS",
    "SUBSYSTEM_ID",
    "SUBSYSTEM_VENDOR_ID",
    "VENDOR_CAP",
    "VENDOR_ID",
    "BarLayout",
    "BarType",
    "ConfigHeader",
    "InterruptPin",
    "Rev2Ids",
    "bars_of",
    "check_interrupts",
    "config_header",
    "rev2_bars",
    "rev2_config",
    "rev2_protocol_class",
]

#: Red Hat / Qumranet
VENDOR_ID = 0x1AF4
#: ivshmem
DEVICE_ID = 0x1110
#: revision 1: the QEMU ivshmem register interface
REVISION_ID = 0x01
#: base class 05h memory controller, sub-class 00h RAM, prog-if 00h
CLASS_CODE = 0x050000
#: QEMU's default subsystem IDs (``pci_init``: PCI_SUBSYSTEM_VENDOR_ID_REDHAT_QUMRANET)
SUBSYSTEM_VENDOR_ID = 0x1AF4
SUBSYSTEM_ID = 0x1100

#: size of a conventional function's configuration space
CONFIG_SIZE = 0x100

#: QEMU 7.2 on q35, ``ivshmem-doorbell`` with 2 vectors: config dwords 00h..4Ch
#: after reset (BARs unassigned, so BAR2 shows only its type bits).
QEMU_DOORBELL_HEADER = (
    0x11101AF4, 0x00100000, 0x05000001, 0x00000000,  # 00h
    0x00000000, 0x00000000, 0x0000000C, 0x00000000,  # 10h
    0x00000000, 0x00000000, 0x00000000, 0x11001AF4,  # 20h
    0x00000000, 0x00000040, 0x00000000, 0x00000000,  # 30h
    0x00010011, 0x00000001, 0x00000801, 0x00000000,  # 40h
)  # fmt: skip


class CFG(enum.IntEnum):
    """Byte offsets in the type-0 configuration header."""

    VENDOR_ID = 0x00  #: 16 bits
    DEVICE_ID = 0x02  #: 16 bits
    COMMAND = 0x04  #: 16 bits
    STATUS = 0x06  #: 16 bits
    REVISION_ID = 0x08  #: 8 bits
    CLASS_PROG = 0x09  #: 8 bits; CLASS_CODE is 24 bits at 09h
    CLASS_SUB = 0x0A  #: 8 bits
    CLASS_BASE = 0x0B  #: 8 bits
    CACHE_LINE_SIZE = 0x0C  #: 8 bits, RW
    LATENCY_TIMER = 0x0D  #: 8 bits, 0 (RO on a type-0 function in QEMU)
    HEADER_TYPE = 0x0E  #: 8 bits, 00h: type 0, single function
    BIST = 0x0F  #: 8 bits, 0
    BAR0 = 0x10  #: BARn at 10h + 4n
    BAR1 = 0x14
    BAR2 = 0x18
    BAR3 = 0x1C
    BAR4 = 0x20
    BAR5 = 0x24
    CARDBUS_CIS = 0x28
    SUBSYSTEM_VENDOR_ID = 0x2C  #: 16 bits
    SUBSYSTEM_ID = 0x2E  #: 16 bits
    ROM_ADDRESS = 0x30  #: no expansion ROM: 0, RO
    CAPABILITY_LIST = 0x34  #: 8 bits
    INTERRUPT_LINE = 0x3C  #: 8 bits, RW
    INTERRUPT_PIN = 0x3D  #: 8 bits
    MIN_GNT = 0x3E
    MAX_LAT = 0x3F
    HEADER_END = 0x40  #: first byte after the header


class CMD(enum.IntFlag):
    """Command register bits."""

    IO = 0x0001  #: I/O space enable (writable in QEMU though there is no I/O BAR)
    MEMORY = 0x0002  #: memory space enable: gates every BAR's decode
    MASTER = 0x0004  #: bus master enable: gates the MSI-X memory write
    SPECIAL = 0x0008
    INVALIDATE = 0x0010
    VGA_PALETTE = 0x0020
    PARITY = 0x0040
    WAIT = 0x0080
    SERR = 0x0100
    FAST_BACK = 0x0200
    INTX_DISABLE = 0x0400  #: gates the INTx pin (not the internal interrupt status)


#: Command bits QEMU 7.2 lets software write (``pci_init_wmask``); the rest read 0.
CMD_WMASK = CMD.IO | CMD.MEMORY | CMD.MASTER | CMD.SERR | CMD.INTX_DISABLE


class STATUS(enum.IntFlag):
    """Status register bits."""

    INTERRUPT = 0x0008  #: RO: the function's INTx state (before INTX_DISABLE)
    CAP_LIST = 0x0010  #: RO: a capability list exists (MSI-X variant only)
    #: error bits, write-1-to-clear in QEMU (``pci_init_w1cmask``); never set here
    W1C = 0xF900


class BarType(enum.IntFlag):
    """Low bits of a memory BAR."""

    MEM32 = 0x0
    MEM64 = 0x4
    PREFETCH = 0x8


@dataclass(frozen=True)
class BarLayout:
    """One BAR of the device: its index, fixed size (``None``: configured) and type bits."""

    index: int
    name: str
    size: int | None
    type: BarType

    @property
    def offset(self) -> int:
        """Config-space offset of the BAR's (low) dword."""
        return CFG.BAR0 + 4 * self.index

    @property
    def is64(self) -> bool:
        return bool(self.type & BarType.MEM64)

    @staticmethod
    def wmask(size: int, is64: bool) -> int:
        """Writable address bits of a BAR of ``size`` bytes (64 bits wide when ``is64``)."""
        return ~(size - 1) & ((1 << (64 if is64 else 32)) - 1)


class _Bars:
    #: BAR0: the registers, exactly 256 bytes, 32-bit non-prefetchable
    regs = BarLayout(0, "regs", PCI_REV1_REGS.size, BarType.MEM32)
    #: BAR1: MSI-X table + PBA, 4 KiB, 32-bit non-prefetchable (MSI-X variant only)
    msix = BarLayout(1, "msix", MSIX_BAR.size, BarType.MEM32)
    #: BAR2+3: the shared memory, 64-bit prefetchable, size a power of two
    shm = BarLayout(2, "shm", None, BarType.MEM64 | BarType.PREFETCH)

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter((self.regs, self.msix, self.shm))


#: the three BARs
BARS = _Bars()


def check_interrupts(doorbell: bool, interrupts: str | None) -> str | None:
    """The interrupt mechanism of a variant: ``"msix"`` (default) or ``"intx"``, ``None`` if plain.

    Raises ``ValueError`` for any other value, or for interrupts on ivshmem-plain.
    """
    if doorbell:
        interrupts = "msix" if interrupts is None else interrupts
        if interrupts not in ("msix", "intx"):
            raise ValueError(f"interrupts must be 'msix' or 'intx', not {interrupts!r}")
        return interrupts
    if interrupts is not None:
        raise ValueError("ivshmem-plain has no interrupts; leave interrupts unset")
    return None


def bars_of(*, msix: bool, shm_size: int) -> list[tuple[BarLayout, int]]:
    """The BARs a variant has, in decode order, with their sizes: BAR0, BAR1 with MSI-X, BAR2."""
    bars = [(BARS.regs, BARS.regs.size)]
    if msix:
        bars.append((BARS.msix, BARS.msix.size))
    bars.append((BARS.shm, shm_size))
    return bars  # type: ignore[return-value]


class InterruptPin(enum.IntEnum):
    """Interrupt Pin register values."""

    NONE = 0  #: ivshmem-plain, and ivshmem-doorbell with MSI-X (QEMU 7.2)
    INTA = 1  #: QEMU's older ``ivshmem`` with ``msi=off``: legacy INTx (docs/registers.md)


@dataclass(frozen=True)
class _MsixCap:
    """The MSI-X capability: position, ID and its fields (offsets from the capability)."""

    #: config offset of the capability (QEMU's first free slot after the header)
    offset: int = 0x40
    #: capability ID
    id: int = 0x11
    #: bytes the capability occupies (QEMU MSIX_CAP_LENGTH)
    length: int = 12
    #: +0 ID, +1 next pointer (0: last), +2 Message Control (16 bits)
    NEXT: int = 0x1
    CONTROL: int = 0x2
    #: +4 table offset (bits 31:3) | BIR (bits 2:0); +8 the same for the PBA
    TABLE: int = 0x4
    PBA: int = 0x8
    #: Message Control: table size N-1 (RO)
    TABLE_SIZE: int = 0x07FF
    #: Message Control: function mask (RW)
    MASKALL: int = 0x4000
    #: Message Control: MSI-X enable (RW)
    ENABLE: int = 0x8000
    #: Message Control bits software may write
    CONTROL_WMASK: int = 0xC000
    BIR_MASK: int = 0x7

    @property
    def control_offset(self) -> int:
        """Config offset of Message Control."""
        return self.offset + self.CONTROL

    def table_word(self) -> int:
        """Value of the Table Offset/BIR dword (table in BAR1 at ``MSIX_BAR.table``)."""
        return MSIX_BAR.table | BARS.msix.index

    def pba_word(self) -> int:
        """Value of the PBA Offset/BIR dword (PBA in BAR1 at ``MSIX_BAR.pba``)."""
        return MSIX_BAR.pba | BARS.msix.index


#: the MSI-X capability of the doorbell variant
MSIX_CAP = _MsixCap()


@dataclass(frozen=True)
class ConfigHeader:
    """Reset value, write mask and write-1-to-clear mask of every config byte of a variant.

    Per byte, a write does ``new = old & ~wmask | data & wmask``, then clears the
    bits of ``data & w1cmask`` (QEMU ``pci_default_write_config``).
    """

    init: bytes
    wmask: bytes
    w1cmask: bytes

    @staticmethod
    def _dwords(buf: bytes) -> tuple[int, ...]:
        return tuple(int.from_bytes(buf[i : i + 4], "little") for i in range(0, len(buf), 4))

    @property
    def init_dwords(self) -> tuple[int, ...]:
        """Reset value of each dword (index = offset / 4)."""
        return self._dwords(self.init)

    @property
    def wmask_dwords(self) -> tuple[int, ...]:
        """Writable bits of each dword."""
        return self._dwords(self.wmask)

    def writable(self) -> list[int]:
        """Indices of the dwords that have writable bits."""
        return [i for i, mask in enumerate(self.wmask_dwords) if mask]


def _put(buf: bytearray, off: int, value: int, size: int) -> None:
    buf[off : off + size] = int(value).to_bytes(size, "little")


def _place_bars(init: bytearray, wmask: bytearray, bars: list[tuple[BarLayout, int]]) -> None:
    """Type bits and writable address bits of every BAR (writing all-ones sizes it)."""
    for bar, size in bars:
        _put(init, bar.offset, bar.type, 4)
        _put(wmask, bar.offset, BarLayout.wmask(size, bar.is64), 8 if bar.is64 else 4)
        wmask[bar.offset] &= 0xF0  # the type bits are read-only


def config_header(
    *, msix: bool, intx: bool, vectors: int, bars: list[tuple[BarLayout, int]]
) -> ConfigHeader:
    """The header of a variant: MSI-X capability or not, INTA pin or not, its BARs and sizes.

    The one builder of the header: the model and the gateware both take it from here.
    """
    init = bytearray(CONFIG_SIZE)
    wmask = bytearray(CONFIG_SIZE)
    w1c = bytearray(CONFIG_SIZE)

    def put(off: int, value: int, size: int, buf: bytearray = init) -> None:
        _put(buf, off, value, size)

    put(CFG.VENDOR_ID, VENDOR_ID, 2)
    put(CFG.DEVICE_ID, DEVICE_ID, 2)
    put(CFG.REVISION_ID, REVISION_ID, 1)
    put(CFG.CLASS_PROG, CLASS_CODE, 3)
    put(CFG.SUBSYSTEM_VENDOR_ID, SUBSYSTEM_VENDOR_ID, 2)
    put(CFG.SUBSYSTEM_ID, SUBSYSTEM_ID, 2)
    put(CFG.COMMAND, CMD_WMASK, 2, wmask)
    put(CFG.STATUS, STATUS.W1C, 2, w1c)
    wmask[CFG.CACHE_LINE_SIZE] = 0xFF
    wmask[CFG.INTERRUPT_LINE] = 0xFF
    put(CFG.INTERRUPT_PIN, InterruptPin.INTA if intx else InterruptPin.NONE, 1)
    _place_bars(init, wmask, bars)
    if msix:
        cap = MSIX_CAP.offset
        put(CFG.STATUS, STATUS.CAP_LIST, 2)
        put(CFG.CAPABILITY_LIST, cap, 1)
        put(cap, MSIX_CAP.id, 1)
        put(cap + MSIX_CAP.NEXT, 0, 1)
        put(MSIX_CAP.control_offset, vectors - 1, 2)
        put(cap + MSIX_CAP.TABLE, MSIX_CAP.table_word(), 4)
        put(cap + MSIX_CAP.PBA, MSIX_CAP.pba_word(), 4)
        put(MSIX_CAP.control_offset, MSIX_CAP.CONTROL_WMASK, 2, wmask)
    return ConfigHeader(bytes(init), bytes(wmask), bytes(w1c))


# -- revision 2 ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Rev2Ids:
    """What a revision 2 layout puts in the header's ID registers."""

    vendor: int
    device: int
    revision: int
    subsystem_vendor: int
    subsystem: int
    #: config offset of the vendor capability and of the MSI-X capability (when present)
    vendor_cap: int
    msix_cap: int


#: The two revision 2 layouts. ``final``: Jailhouse's IDs (subsystem = vendor/device),
#: vendor capability at 40h, MSI-X at 60h (Jailhouse's places). ``rfc``: the QEMU RFC
#: device's IDs and QEMU's default subsystem; QEMU adds the MSI-X capability first
#: (40h, 12 bytes) and the vendor capability after it (4Ch), each new one at the head
#: of the list; without MSI-X the vendor capability is at 40h.
REV2_IDS = {
    "final": Rev2Ids(0x110A, 0x4106, 0x00, 0x110A, 0x4106, 0x40, 0x60),
    "rfc": Rev2Ids(VENDOR_ID, DEVICE_ID, 0x02, SUBSYSTEM_VENDOR_ID, SUBSYSTEM_ID, 0x4C, 0x40),
}
#: Base class FFh; sub-class and prog-if carry the 16-bit protocol.
REV2_CLASS_BASE = 0xFF
#: Command bits a revision 2 function implements: memory, bus master, INTx disable.
REV2_CMD_WMASK = CMD.MEMORY | CMD.MASTER | CMD.INTX_DISABLE
#: BAR0 of revision 2: one 4 KiB page of registers.
REV2_REGS_BAR = BarLayout(0, "regs", 0x1000, BarType.MEM32)


@dataclass(frozen=True)
class _VendorCap:
    """The revision 2 vendor-specific capability: its fields, offsets from its start."""

    id: int = 0x09
    NEXT: int = 0x01
    LENGTH: int = 0x02  #: 8 bits: 18h, or 20h with the base address
    PRIV_CTRL: int = 0x03  #: 8 bits: bit 0 one-shot (RW), the only writable bit
    STATE_TABLE_SIZE: int = 0x04  #: u32
    RW_SIZE: int = 0x08  #: u64
    OUTPUT_SIZE: int = 0x10  #: u64
    BASE: int = 0x18  #: u64, only without BAR2
    ONESHOT: int = 0x01
    #: length without and with the base address
    length: int = 0x18
    length_with_base: int = 0x20


#: the revision 2 vendor capability
VENDOR_CAP = _VendorCap()


def rev2_protocol_class(protocol: int) -> int:
    """The 24-bit class code of a revision 2 function advertising ``protocol``."""
    if not 0 <= protocol <= 0xFFFF:
        raise ValueError(f"the protocol is 16 bits, not {protocol!r}")
    return REV2_CLASS_BASE << 16 | protocol


def rev2_bars(*, msix: bool, shm_size: int | None) -> list[tuple[BarLayout, int]]:
    """The BARs of a revision 2 function: BAR0 (4 KiB), BAR1 with MSI-X, BAR2 unless ``None``."""
    bars: list[tuple[BarLayout, int]] = [(REV2_REGS_BAR, REV2_REGS_BAR.size)]  # type: ignore[list-item]
    if msix:
        bars.append((BARS.msix, BARS.msix.size))  # type: ignore[arg-type]
    if shm_size is not None:
        bars.append((BARS.shm, shm_size))  # type: ignore[arg-type]
    return bars


def rev2_config(
    *,
    layout: str,
    msix: bool,
    vectors: int,
    protocol: int,
    state_table_size: int,
    rw_size: int,
    output_size: int,
    shm_size: int | None,
    shm_address: int | None = None,
) -> tuple[ConfigHeader, list[tuple[BarLayout, int]]]:
    """The header of a revision 2 function (Status is static: no write-1-to-clear bits), and
    its BARs.

    ``shm_size`` ``None``: no BAR2, the vendor capability carries ``shm_address``.
    """
    ids = REV2_IDS[layout]
    init = bytearray(CONFIG_SIZE)
    wmask = bytearray(CONFIG_SIZE)

    def put(off: int, value: int, size: int, buf: bytearray = init) -> None:
        _put(buf, off, value, size)

    put(CFG.VENDOR_ID, ids.vendor, 2)
    put(CFG.DEVICE_ID, ids.device, 2)
    put(CFG.REVISION_ID, ids.revision, 1)
    put(CFG.CLASS_PROG, rev2_protocol_class(protocol), 3)
    put(CFG.SUBSYSTEM_VENDOR_ID, ids.subsystem_vendor, 2)
    put(CFG.SUBSYSTEM_ID, ids.subsystem, 2)
    put(CFG.COMMAND, REV2_CMD_WMASK, 2, wmask)
    put(CFG.STATUS, STATUS.CAP_LIST, 2)  # the vendor capability is always there
    wmask[CFG.CACHE_LINE_SIZE] = 0xFF
    wmask[CFG.INTERRUPT_LINE] = 0xFF
    put(CFG.INTERRUPT_PIN, InterruptPin.NONE if msix else InterruptPin.INTA, 1)
    bars = rev2_bars(msix=msix, shm_size=shm_size)
    _place_bars(init, wmask, bars)
    # final: 40h vendor -> 60h MSI-X; rfc: 4Ch vendor -> 40h MSI-X; no MSI-X: 40h vendor only
    vendor = ids.vendor_cap if msix else CFG.HEADER_END
    put(CFG.CAPABILITY_LIST, vendor, 1)
    put(vendor, VENDOR_CAP.id, 1)
    put(vendor + VENDOR_CAP.NEXT, ids.msix_cap if msix else 0, 1)
    with_base = shm_size is None
    put(
        vendor + VENDOR_CAP.LENGTH,
        VENDOR_CAP.length_with_base if with_base else VENDOR_CAP.length,
        1,
    )
    wmask[vendor + VENDOR_CAP.PRIV_CTRL] = VENDOR_CAP.ONESHOT
    put(vendor + VENDOR_CAP.STATE_TABLE_SIZE, state_table_size, 4)
    put(vendor + VENDOR_CAP.RW_SIZE, rw_size, 8)
    put(vendor + VENDOR_CAP.OUTPUT_SIZE, output_size, 8)
    if with_base:
        if shm_address is None:
            raise ValueError("without BAR2 the shared memory needs an address (shm_address)")
        put(vendor + VENDOR_CAP.BASE, shm_address, 8)
    if msix:
        cap = ids.msix_cap
        put(cap, MSIX_CAP.id, 1)
        put(cap + MSIX_CAP.NEXT, 0, 1)
        put(cap + MSIX_CAP.CONTROL, vectors - 1, 2)
        put(cap + MSIX_CAP.TABLE, MSIX_CAP.table_word(), 4)
        put(cap + MSIX_CAP.PBA, MSIX_CAP.pba_word(), 4)
        put(cap + MSIX_CAP.CONTROL, MSIX_CAP.CONTROL_WMASK, 2, wmask)
    return ConfigHeader(bytes(init), bytes(wmask), bytes(CONFIG_SIZE)), bars
