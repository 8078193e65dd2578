"""The one register-map definition of every ivshmem register window.

A register is declared once, with the action of each of its fields, and
everything else is derived from that declaration: the HDL decode
(:mod:`ivhw.hdl.regs`), the model's register dispatch
(:mod:`ivhw.sw.models.registers`), the docs' register tables and the tests.
No device writes its own decode. The vocabulary is amaranth-soc's
(``csr/reg.py`` fields that carry ``csr/action.py`` actions)::

    R      read-only: the device supplies the value (a signal in the HDL, a
           callable in the model); writes ignored
    W      write-only: reads 0; the written bits go to the register's hook
    RW     read-write storage; reads back what was written
    RC     read-to-clear storage: a read returns the value and clears it; a
           write stores (QEMU's IntrStatus)
    RW1C   storage, a write of 1 clears that bit, 0 leaves it (the device sets bits)
    RW1S   storage, a write of 1 sets that bit, 0 leaves it (the device clears bits)
    RSVD   reserved: reads 0, writes ignored (amaranth-soc ``ResR0W0``)

A register whose effect is more than storage names a **hook**: a write to it
calls the device's hook of that name with the value written (its writable
bits) after the storage took it, plus the value stored before. The device may
also change any stored field itself (set IntrStatus on an event, clear a
one-shot enable on delivery), through the same storage the bus uses.

Example, a window with an ID, an interrupt control bit that the device clears
on delivery in one-shot mode, a doorbell and a state word that software
writes and the device mirrors into shared memory::

    REGS = RegisterMap("example", 0x1000, [
        Register("ID", 0x00, R, doc="own peer ID"),
        Register("IntrCtrl", 0x08, fields=[Field("enable", 1, RW)],
                 doc="bit 0 gates delivery; one-shot mode clears it on delivery"),
        Register("Doorbell", 0x0C, fields=[Field("vector", 16, W), Field("peer", 16, W)],
                 hook="doorbell", doc="rings peer 31:16 on vector 15:0"),
        Register("State", 0x10, RW, hook="state",
                 doc="stored; a change is written to shared memory and rings the peers"),
    ], min_access=4)

The model binds the sources and hooks by name::

    regs = RegisterFile(REGS, sources={"ID": lambda: self.id},
                        hooks={"doorbell": self._ring, "state": self._state})
    regs.set("IntrCtrl", regs.get("IntrCtrl") & ~1)    # one-shot: delivered

and the gateware the same way (``RegisterDecode(REGS, sources={"ID": ident.id},
hooks={"doorbell": ..., "state": ...})``; a hook there emits the statements of
the write cycle and may take over the bus cycle with ``m.next``).
"""

from __future__ import annotations

import enum
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Literal

# Most vectors a peer has: the server protocol's limit (QEMU's ``-n``), ivshmem-flat's
# array and the MSI-X table size of the PCI device; defined once, with the protocol.
from .protocol import MAX_VECTORS

__all__ = [
    "CPU_MASKS",
    "DOORBELL",
    "FLAT_REGS",
    "MAX_VECTORS",
    "MSIX_BAR",
    "MSIX_ENTRY",
    "PCI_REV1_REGS",
    "PCI_REV2_REGS",
    "RC",
    "REV2_LAYOUTS",
    "RSVD",
    "RW",
    "RW1C",
    "RW1S",
    "Action",
    "BitField",
    "Field",
    "PlacedField",
    "R",
    "Register",
    "RegisterMap",
    "W",
]


class Action(enum.Enum):
    """What a bus access does to a register field (amaranth-soc ``csr.action`` names)."""

    #: read-only: the device supplies the value; writes ignored
    R = "R"
    #: write-only: reads 0, the written bits go to the register's hook
    W = "W"
    #: read-write storage
    RW = "RW"
    #: read-to-clear storage: a read returns the value and clears it, a write stores
    RC = "RC"
    #: storage; writing 1 clears the bit
    RW1C = "RW1C"
    #: storage; writing 1 sets the bit
    RW1S = "RW1S"
    #: reserved: reads 0, writes ignored
    RSVD = "-"

    @property
    def stored(self) -> bool:
        """The field has storage (a flip-flop per bit in the HDL)."""
        return self in (Action.RW, Action.RC, Action.RW1C, Action.RW1S)

    @property
    def readable(self) -> bool:
        """A read returns the field's value (not 0)."""
        return self is Action.R or self.stored

    @property
    def writable(self) -> bool:
        """A write has an effect on the field (storage or the hook)."""
        return self is Action.W or self.stored


R, W, RW, RC, RW1C, RW1S, RSVD = Action


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
class Field:
    """A field of a register, as declared: name, width in bits, action, reset value.

    A register lists its fields from bit 0 upwards; bits above the last field
    are reserved (read 0, writes ignored). ``Field.reserved(n)`` skips ``n`` bits.
    """

    name: str
    width: int
    action: Action
    reset: int = 0
    doc: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.width, int) or not 1 <= self.width <= 32:
            raise ValueError(f"field {self.name}: width must be 1..32, not {self.width!r}")
        if not isinstance(self.action, Action):
            raise TypeError(f"field {self.name}: action must be an Action, not {self.action!r}")
        if not 0 <= self.reset < 1 << self.width:
            raise ValueError(f"field {self.name}: reset {self.reset!r} does not fit")
        if self.reset and not (self.action.stored or self.action is Action.R):
            raise ValueError(f"field {self.name}: a {self.action.name} field has no reset value")

    @staticmethod
    def reserved(width: int) -> Field:
        """``width`` reserved bits (read 0, writes ignored)."""
        return Field("", width, Action.RSVD)


@dataclass(frozen=True)
class PlacedField:
    """A field of a register with its position and its name within the window."""

    field: Field
    lsb: int
    #: ``"Reg"`` for a register of one field, ``"Reg.field"`` otherwise: the key
    #: under which a device binds an R field's source
    path: str

    @property
    def action(self) -> Action:
        return self.field.action

    @property
    def width(self) -> int:
        return self.field.width

    @property
    def mask(self) -> int:
        return ((1 << self.field.width) - 1) << self.lsb


class Register:
    """One 32-bit register of a window.

    Parameters
    ----------
    name : str
        Register name, as drivers and the docs spell it.
    offset : int
        Byte offset in the window, a multiple of 4.
    action : Action or None
        The action of a register that is one 32-bit field.
    fields : sequence of Field or None
        Or the register's fields from bit 0 upwards (exactly one of ``action`` and
        ``fields``).
    reset : int
        Reset value of a one-field register (``fields`` carry their own).
    hook : str or None
        Name of the device behaviour a write triggers (see the module docs).
    doc : str
        One line of behaviour, for the docs' register tables.
    """

    def __init__(
        self,
        name: str,
        offset: int,
        action: Action | None = None,
        *,
        fields: Sequence[Field] | None = None,
        reset: int = 0,
        hook: str | None = None,
        doc: str = "",
    ) -> None:
        if (action is None) == (fields is None):
            raise ValueError(f"{name}: give either action or fields, not both or neither")
        if fields is None:
            fields = [Field(name, 32, action, reset)]  # type: ignore[arg-type]
            single = True
        else:
            if reset:
                raise ValueError(f"{name}: fields carry their own reset values")
            single = False
        placed, lsb = [], 0
        for f in fields:
            if f.action is not Action.RSVD:
                if not f.name or not f.name.isidentifier():
                    raise ValueError(f"{name}: field name {f.name!r} is not an identifier")
                path = name if single else f"{name}.{f.name}"
                placed.append(PlacedField(f, lsb, path))
            lsb += f.width
        if lsb > 32:
            raise ValueError(f"{name}: fields take {lsb} bits, a register has 32")
        names = [p.field.name for p in placed]
        if len(set(names)) != len(names):
            raise ValueError(f"{name}: two fields share a name")
        if hook is not None and not hook.isidentifier():
            raise ValueError(f"{name}: hook name {hook!r} is not an identifier")
        if hook is None and any(p.action is Action.W for p in placed):
            raise ValueError(f"{name}: a W field does nothing without a hook")
        self.name = name
        self.offset = offset
        self.hook = hook
        self.doc = doc
        self.fields: tuple[PlacedField, ...] = tuple(placed)

    def __repr__(self) -> str:
        return f"Register({self.name!r}, {self.offset:#x})"

    def _mask(self, test) -> int:  # type: ignore[no-untyped-def]
        return sum(p.mask for p in self.fields if test(p.action))

    @property
    def reset(self) -> int:
        """The word a read returns after reset (R fields: their declared reset value)."""
        return sum(p.field.reset << p.lsb for p in self.fields if p.action.readable)

    @property
    def stored_mask(self) -> int:
        """Bits with storage."""
        return self._mask(lambda a: a.stored)

    @property
    def write_mask(self) -> int:
        """Bits a write acts on (storage or hook): what a hook is given."""
        return self._mask(lambda a: a.writable)

    @property
    def read_mask(self) -> int:
        """Bits a read returns (the rest read 0)."""
        return self._mask(lambda a: a.readable)

    @property
    def action(self) -> Action:
        """The action of a one-field register; for several fields, of the widest."""
        return max(self.fields, key=lambda p: p.width).action if self.fields else Action.RSVD

    def field(self, name: str) -> PlacedField:
        """The field ``name`` of this register."""
        for p in self.fields:
            if p.field.name == name:
                return p
        raise KeyError(f"{self.name} has no field {name!r}")

    def bits(self) -> str:
        """The field layout for the docs, e.g. ``31:16 peer (W), 15:0 vector (W)``."""
        parts = []
        for p in reversed(self.fields):
            top = p.lsb + p.width - 1
            span = f"{top}:{p.lsb}" if p.width > 1 else f"{p.lsb}"
            label = "" if p.path == self.name else f" {p.field.name}"
            parts.append(f"{span}{label} ({p.action.name})")
        return ", ".join(parts) if parts else "31:0 (RSVD)"


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

#: Byte-enable mask of one dword -> ``(byte offset, size)`` of the accesses a CPU
#: makes: 1, 2 or 4 bytes aligned to their size. Any other non-zero mask is an
#: access QEMU refuses as unaligned. The model and the gateware both decode by it.
CPU_MASKS: dict[int, tuple[int, int]] = {
    ((1 << size) - 1) << lane: (lane, size) for size in (1, 2, 4) for lane in range(0, 4, size)
}


class RegisterMap:
    """A register window: its size in bytes, its registers by offset, its access rules.

    Offsets not named here are reserved: reads 0, writes ignored.

    Parameters
    ----------
    name : str
        The window's name (docs, generated signal names).
    size : int
        Window size in bytes, a power of two.
    registers : list of Register
    min_access : int
        Smallest access the device accepts (QEMU ``.valid.min_access_size``):
        1 (every CPU access) or 4 (whole dwords only). Smaller ones read 0, are
        dropped and are counted as bad accesses.
    narrow_writes : "exact" or "dword"
        Where a 1- or 2-byte write lands. ``"exact"``: only a write that starts at
        a register's offset reaches it (the device's switch sees the exact offset,
        ivshmem-flat). ``"dword"``: a write at any lane reaches the register of its
        dword, with its bytes moved down to bit 0 (the handler masks the offset,
        PCI ivshmem). Narrow reads reach a register only at its offset, always.
    """

    def __init__(
        self,
        name: str,
        size: int,
        registers: list[Register],
        *,
        min_access: Literal[1, 4] = 1,
        narrow_writes: Literal["exact", "dword"] = "exact",
    ) -> None:
        if size <= 0 or size & (size - 1):
            raise ValueError(f"window size must be a power of two, not {size!r}")
        if min_access not in (1, 4):
            raise ValueError(f"min_access must be 1 or 4, not {min_access!r}")
        if narrow_writes not in ("exact", "dword"):
            raise ValueError(f"narrow_writes must be 'exact' or 'dword', not {narrow_writes!r}")
        seen: dict[int, Register] = {}
        for reg in registers:
            if reg.offset % 4 or not 0 <= reg.offset < size:
                raise ValueError(f"{reg.name}: offset {reg.offset:#x} is not a word in the window")
            if reg.offset in seen:
                raise ValueError(f"{reg.name} and {seen[reg.offset].name} share {reg.offset:#x}")
            seen[reg.offset] = reg
        self.name = name
        self.size = size
        self.min_access = min_access
        self.narrow_writes = narrow_writes
        self._by_offset = dict(sorted(seen.items()))
        self._by_name = {reg.name: reg for reg in registers}
        if len(self._by_name) != len(registers):
            raise ValueError(f"{name}: two registers share a name")

    def __iter__(self) -> Iterator[Register]:
        return iter(self._by_offset.values())

    def __len__(self) -> int:
        return len(self._by_offset)

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

    def sources(self) -> list[str]:
        """Paths of the R fields: what a device must supply (see :class:`PlacedField`)."""
        return [p.path for reg in self for p in reg.fields if p.action is Action.R]

    def hooks(self) -> list[str]:
        """Names of the hooks the registers trigger: what a device must implement."""
        return sorted({reg.hook for reg in self if reg.hook is not None})

    def check_bindings(self, sources: object, hooks: object) -> None:
        """Raise ``ValueError`` unless ``sources`` and ``hooks`` name exactly what the map needs."""
        for what, want, got in (("source", self.sources(), sources), ("hook", self.hooks(), hooks)):
            missing = sorted(set(want) - set(got))  # type: ignore[call-overload]
            extra = sorted(set(got) - set(want))  # type: ignore[call-overload]
            if missing or extra:
                raise ValueError(
                    f"{self.name}: {what}s missing {missing}, unknown {extra}"
                    if missing
                    else f"{self.name}: unknown {what}s {extra}"
                )

    def table(self) -> str:
        """The map as a Markdown table, for docs."""
        rows = [
            "| off | name | bits (action) | reset | behaviour |",
            "|---:|---|---|---:|---|",
        ]
        for reg in self:
            hook = f"; hook `{reg.hook}`" if reg.hook else ""
            rows.append(
                f"| {reg.offset:02X}h | {reg.name} | {reg.bits()} | "
                f"{reg.reset:08X}h | {reg.doc}{hook} |"
            )
        return "\n".join(rows)


#: BAR0 of the ivshmem PCI device, revision 1 (``ivshmem-doorbell`` / ``ivshmem-plain``).
#: The BAR is exactly 256 bytes: Windows drivers depend on it.
PCI_REV1_REGS = RegisterMap("ivshmem-pci-bar0", 256, [
    Register("IntrMask", 0x00, RW,
             doc="INTx mask, all 32 bits read back"),
    Register("IntrStatus", 0x04, RC,
             doc="a read returns the value and clears it; INTx = IntrStatus & IntrMask != 0"),
    Register("IVPosition", 0x08, R, reset=0xFFFFFFFF,
             doc="own peer ID; FFFFFFFFh until the server assigned one (0 on ivshmem-plain)"),
    Register("Doorbell", 0x0C, fields=[
        Field("vector", 8, W), Field.reserved(8), Field("peer", 16, W),
    ], hook="doorbell",
             doc="rings the peer on the vector (QEMU decodes vector bits 7:0); "
                 "unknown peer or vector ignored; reads 0"),
], narrow_writes="dword")  # fmt: skip


def _rev2_regs(layout: str) -> RegisterMap:
    """BAR0 of ivshmem revision 2 in one of its two layouts (docs/rev2.md).

    ``"final"`` is Jailhouse's, RFC v2's and the drivers' (Zephyr, Linux uio_ivshmem);
    ``"rfc"`` is the 2019 QEMU RFC's, with a Features register at 08h and the doorbell
    vector decoded from bits 7:0 as its device does. Both: one 4 KiB page, aligned
    32-bit accesses only.
    """
    rfc = layout == "rfc"
    vector_bits = 8 if rfc else DOORBELL.vector.width
    base = 0x0C if rfc else 0x08  # where Interrupt Control begins
    registers = [
        Register("ID", 0x00, R, doc="own peer ID, unique in the domain"),
        Register("MaxPeers", 0x04, R, doc="Maximum Peers, 2..65536, the own one included"),
    ]
    if rfc:
        registers.append(
            Register("Features", 0x08, RSVD, doc="reads 0 (RFC v1; gone in the final layout)")
        )
    registers += [
        Register(
            "IntCtrl",
            base,
            fields=[Field("enable", 1, RW)],
            doc="bit 0 enables interrupt delivery; one-shot mode clears it on delivery",
        ),
        Register(
            "Doorbell",
            base + 4,
            fields=[
                Field("vector", vector_bits, W),
                *([Field.reserved(DOORBELL.vector.width - vector_bits)] if rfc else []),
                Field("peer", DOORBELL.peer.width, W),
            ],
            hook="doorbell",
            doc=f"rings the target peer (31:16) on the vector ({vector_bits - 1}:0) if it "
            "exists and has it, else no effect (counted); reads 0",
        ),
        Register(
            "State",
            base + 8,
            RW,
            hook="state",
            doc="own state: stored in the own State Table entry; a change rings vector 0 "
            "of every other peer",
        ),
    ]
    return RegisterMap(f"ivshmem2-{layout}-bar0", 0x1000, registers, min_access=4)


#: The register layouts of revision 2: the final one (Jailhouse, Zephyr, Linux) and the RFC's.
REV2_LAYOUTS = ("final", "rfc")
#: BAR0 of ivshmem revision 2 by layout (:data:`REV2_LAYOUTS`).
PCI_REV2_REGS: dict[str, RegisterMap] = {layout: _rev2_regs(layout) for layout in REV2_LAYOUTS}

#: Register window of ivshmem-flat (QEMU ``hw/misc/ivshmem-flat.c``): 16 bytes.
FLAT_REGS = RegisterMap("ivshmem-flat", 16, [
    Register("INTMASK", 0x00, RSVD, doc="reserved: reads 0, writes ignored"),
    Register("INTSTATUS", 0x04, RSVD, doc="reserved: reads 0, writes ignored"),
    Register("IVPOSITION", 0x08, R, doc="own peer ID"),
    Register("DOORBELL", 0x0C, fields=[
        Field("vector", DOORBELL.vector.width, W), Field("peer", DOORBELL.peer.width, W),
    ], hook="doorbell",
             doc="rings the peer on the vector; unknown peer or vector ignored and "
                 "counted; reads 0"),
])  # fmt: skip

#: One 16-byte MSI-X table entry (PCI Local Bus 3.0 sec. 6.8.2). Reset: address and
#: data 0, the vector masked. QEMU stores all 32 bits of Vector Control; here only the
#: mask bit exists and bits 31:1 read 0, as the PCI specification reserves them.
MSIX_ENTRY = RegisterMap("msix-table-entry", 16, [
    Register("MsgAddrLo", 0x0, RW, doc="message address bits 31:0"),
    Register("MsgAddrHi", 0x4, RW, doc="message address bits 63:32"),
    Register("MsgData", 0x8, RW, doc="message data"),
    Register("VectorCtrl", 0xC, fields=[Field("masked", 1, RW, reset=1)],
             doc="bit 0: vector masked; 31:1 read 0"),
], min_access=4)  # fmt: skip


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
    mask = BitField("mask", MSIX_ENTRY.VectorCtrl.field("masked").lsb, 1)

    def entry(self, vector: int) -> int:
        """Byte offset of ``vector``'s table entry."""
        return self.table + vector * MSIX_ENTRY.size

    def pba_size(self, vectors: int) -> int:
        """Bytes of PBA that back ``vectors`` vectors (whole 64-bit words)."""
        return (vectors + 63) // 64 * 8


#: MSI-X table and PBA layout of BAR1 (doorbell variant). Outside the ``vectors``
#: table entries and the PBA words: reads 0, writes ignored.
MSIX_BAR = _MsixBar()
