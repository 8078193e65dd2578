"""The one register-map definition of every ivshmem register window.

The HDL decode (``ivhw.hdl``), the register-accurate models (``ivhw.sw.models``),
the docs and the tests all take offsets, access types and reset values from
here; no offset is written twice. Access types use amaranth-soc's vocabulary.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator
from dataclasses import dataclass

__all__ = [
    "DOORBELL",
    "FLAT_REGS",
    "MAX_VECTORS",
    "MSIX_BAR",
    "MSIX_ENTRY",
    "PCI_REV1_REGS",
    "Access",
    "BitField",
    "Register",
    "RegisterMap",
]


class Access(enum.Enum):
    """How software sees a register (amaranth-soc ``csr.action`` names)."""

    #: read-only
    R = "R"
    #: write-only, reads 0
    W = "W"
    #: read-write
    RW = "RW"
    #: read-write, a read returns the value and clears it
    RC = "RC"
    #: reserved: reads 0, writes ignored
    RSVD = "-"


@dataclass(frozen=True)
class BitField:
    """A field ``[lsb, lsb + width)`` of a 32-bit register word."""

    name: str
    lsb: int
    width: int

    @property
    def mask(self) -> int:
        return ((1 << self.width) - 1) << self.lsb

    def get(self, word: int) -> int:
        """Extract this field from ``word``."""
        return (word >> self.lsb) & ((1 << self.width) - 1)

    def put(self, value: int) -> int:
        """Place ``value`` (checked to fit) at this field's position."""
        if not 0 <= value < (1 << self.width):
            raise ValueError(f"{self.name} must fit in {self.width} bits, not {value!r}")
        return value << self.lsb


@dataclass(frozen=True)
class Register:
    """One 32-bit register of a window."""

    name: str
    offset: int
    access: Access
    reset: int
    doc: str


class _Doorbell:
    """Doorbell word (every ivshmem variant): bits 31:16 peer, bits 15:0 vector."""

    vector = BitField("vector", 0, 16)
    peer = BitField("peer", 16, 16)

    def pack(self, peer: int, vector: int) -> int:
        """The doorbell word that rings ``peer`` on ``vector``."""
        return self.peer.put(peer) | self.vector.put(vector)

    def unpack(self, word: int) -> tuple[int, int]:
        """``(peer, vector)`` of a doorbell word."""
        return self.peer.get(word), self.vector.get(word)


#: The doorbell word layout shared by PCI revision 1 and ivshmem-flat.
DOORBELL = _Doorbell()


class RegisterMap:
    """A register window: its size in bytes and its registers by offset.

    Offsets not named here are reserved: reads 0, writes ignored.
    """

    def __init__(self, name: str, size: int, registers: list[Register]) -> None:
        if size <= 0 or size & (size - 1):
            raise ValueError(f"window size must be a power of two, not {size!r}")
        seen: dict[int, Register] = {}
        for reg in registers:
            if reg.offset % 4 or not 0 <= reg.offset < size:
                raise ValueError(f"{reg.name}: offset {reg.offset:#x} is not a word in the window")
            if reg.offset in seen:
                raise ValueError(f"{reg.name} and {seen[reg.offset].name} share {reg.offset:#x}")
            seen[reg.offset] = reg
        self.name = name
        self.size = size
        self._by_offset = dict(sorted(seen.items()))
        self._by_name = {reg.name: reg for reg in registers}

    def __iter__(self) -> Iterator[Register]:
        return iter(self._by_offset.values())

    def __getitem__(self, name: str) -> Register:
        return self._by_name[name]

    def __getattr__(self, name: str) -> Register:
        try:
            return self.__dict__["_by_name"][name]
        except KeyError:
            raise AttributeError(name) from None

    def at(self, offset: int) -> Register | None:
        """The register at byte ``offset`` (word-aligned), or ``None`` if reserved."""
        return self._by_offset.get(offset)

    def table(self) -> str:
        """The map as a Markdown table, for docs."""
        rows = ["| off | name | access | reset | behaviour |", "|---:|---|---|---:|---|"]
        for reg in self:
            rows.append(
                f"| {reg.offset:02X}h | {reg.name} | {reg.access.value} | "
                f"{reg.reset:08X}h | {reg.doc} |"
            )
        return "\n".join(rows)


#: BAR0 of the ivshmem PCI device, revision 1 (``ivshmem-doorbell`` / ``ivshmem-plain``).
#: The BAR is exactly 256 bytes: Windows drivers depend on it.
PCI_REV1_REGS = RegisterMap("ivshmem-pci-bar0", 256, [
    Register("IntrMask", 0x00, Access.RW, 0x00000000,
             "INTx mask, all 32 bits read back"),
    Register("IntrStatus", 0x04, Access.RC, 0x00000000,
             "a read returns the value and clears it; INTx = IntrStatus & IntrMask != 0"),
    Register("IVPosition", 0x08, Access.R, 0xFFFFFFFF,
             "own peer ID; FFFFFFFFh until the server assigned one (0 on ivshmem-plain)"),
    Register("Doorbell", 0x0C, Access.W, 0x00000000,
             "bits 31:16 peer, 15:0 vector; unknown peer or vector ignored; reads 0"),
])  # fmt: skip

#: Register window of ivshmem-flat (QEMU ``hw/misc/ivshmem-flat.c``): 16 bytes.
FLAT_REGS = RegisterMap("ivshmem-flat", 16, [
    Register("INTMASK", 0x00, Access.RSVD, 0x00000000, "reserved: reads 0, writes ignored"),
    Register("INTSTATUS", 0x04, Access.RSVD, 0x00000000, "reserved: reads 0, writes ignored"),
    Register("IVPOSITION", 0x08, Access.R, 0x00000000, "own peer ID"),
    Register("DOORBELL", 0x0C, Access.W, 0x00000000,
             "bits 31:16 peer, 15:0 vector; unknown peer or vector ignored and counted; reads 0"),
])  # fmt: skip

#: Most vectors a peer has (QEMU's ivshmem-server ``-n`` limit, ivshmem-flat's array).
MAX_VECTORS = 64

#: One 16-byte MSI-X table entry (PCI Local Bus 3.0 sec. 6.8.2). Reset: address and
#: data 0, the vector masked. QEMU stores all 32 bits of Vector Control; here only the
#: mask bit exists and bits 31:1 read 0, as the PCI specification reserves them.
MSIX_ENTRY = RegisterMap("msix-table-entry", 16, [
    Register("MsgAddrLo", 0x0, Access.RW, 0x00000000, "message address bits 31:0"),
    Register("MsgAddrHi", 0x4, Access.RW, 0x00000000, "message address bits 63:32"),
    Register("MsgData", 0x8, Access.RW, 0x00000000, "message data"),
    Register("VectorCtrl", 0xC, Access.RW, 0x00000001, "bit 0: vector masked; 31:1 read 0"),
])  # fmt: skip


@dataclass(frozen=True)
class _MsixBar:
    """Layout of the MSI-X BAR (QEMU ``msix_init_exclusive_bar`` for <= 128 vectors)."""

    #: the BAR's size in bytes
    size: int = 0x1000
    #: byte offset of entry 0 of the table (BIR offset field in the capability)
    table: int = 0x000
    #: byte offset of the Pending Bit Array: one bit per vector, in 64-bit words
    pba: int = 0x800
    #: the entry's mask bit in VectorCtrl
    mask = BitField("mask", 0, 1)

    def entry(self, vector: int) -> int:
        """Byte offset of ``vector``'s table entry."""
        return self.table + vector * MSIX_ENTRY.size

    def pba_size(self, vectors: int) -> int:
        """Bytes of PBA that back ``vectors`` vectors (whole 64-bit words)."""
        return (vectors + 63) // 64 * 8


#: MSI-X table and PBA layout of BAR1 (doorbell variant). Outside the ``vectors``
#: table entries and the PBA words: reads 0, writes ignored.
MSIX_BAR = _MsixBar()
