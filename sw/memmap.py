"""Machine-readable memory maps of the devices' buses.

Every device bus carries one (``device.bus.memory_map`` on ivshmem-flat and
its AXI4-Lite / Wishbone front-ends, ``device.memory_map`` on the PCI
endpoint), built here from the register maps of :mod:`ivhw.sw.regmap`, so
testbenches, the co-simulation bridge, the guest API and the docs read
addresses and error responses instead of re-deriving them.

A :class:`MemoryMap` covers one address space completely: its windows
(registers, shared memory, tables) and the holes between them, each with the
response an access there gets. A PCI function's BARs are relocatable, so the
endpoint's map is a :class:`BarMap` (one map per BAR, offsets from the BAR's
base, plus what a request no BAR claims gets); :meth:`BarMap.placed` turns it
into the absolute map once enumeration has assigned the bases.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

from .pcicfg import BARS, bars_of, rev2_bars
from .regmap import FLAT_REGS, MSIX_BAR, MSIX_ENTRY, PCI_REV1_REGS, PCI_REV2_REGS, RegisterMap
from .sections import Layout

__all__ = [
    "BarMap",
    "Kind",
    "MemoryMap",
    "Window",
    "flat_memory_map",
    "pci2_memory_map",
    "pci_memory_map",
]


class Kind(enum.Enum):
    """What a window is."""

    #: a register window (its :class:`RegisterMap` says the rest)
    REGISTERS = "registers"
    #: RAM (the shared memory): any byte, read and write
    MEMORY = "memory"
    #: an array of register blocks (the MSI-X table: ``regs`` per entry)
    TABLE = "table"
    #: read-only words kept by the device (the MSI-X PBA)
    STATUS = "status"
    #: nothing there: every access gets ``response``
    HOLE = "hole"


@dataclass(frozen=True)
class Window:
    """One window of an address space: ``[base, base + size)``.

    Attributes
    ----------
    name : str
        ``"regs"``, ``"shm"``, ``"msix_table"``, ``"msix_pba"``; holes are ``""``.
    response : str
        What an access gets: ``"OKAY"`` (AXI) / ``"SC"`` (PCIe) where it is served,
        the error (``"DECERR"``, ``"UR"``) in a hole that answers one, or
        ``"OKAY, reads 0"`` / ``"SC, reads 0"`` in a hole that does not.
    refused : str or None
        The response of an access the window refuses (ivshmem-flat: ``"SLVERR"``
        for an address that is not word-aligned, and in the register window for
        byte enables no CPU access makes); ``None`` where refusals complete
        normally (PCI: ``SC``, reading 0).
    regs : RegisterMap or None
        The registers of a REGISTERS window, the entry layout of a TABLE.
    """

    name: str
    base: int
    size: int
    kind: Kind
    response: str
    refused: str | None = None
    regs: RegisterMap | None = None
    doc: str = ""

    @property
    def end(self) -> int:
        """First byte after the window."""
        return self.base + self.size

    def __contains__(self, address: object) -> bool:
        return isinstance(address, int) and self.base <= address < self.end

    def address(self, offset: int = 0) -> int:
        """Bus address of byte ``offset`` of the window (checked to be inside)."""
        if not 0 <= offset < self.size:
            raise ValueError(f"offset {offset:#x} is outside {self.name} ({self.size:#x} bytes)")
        return self.base + offset

    def register(self, name: str) -> int:
        """Bus address of register ``name`` of this REGISTERS window."""
        if self.regs is None or self.kind is not Kind.REGISTERS:
            raise ValueError(f"{self.name or 'a hole'} is not a register window")
        return self.base + self.regs[name].offset


class MemoryMap:
    """An address space of ``size`` bytes: its windows, holes filled in with ``miss``.

    Parameters
    ----------
    name : str
    size : int
        Bytes of the space (the bus's address range).
    windows : list of Window
        Non-overlapping, inside the space; gaps become holes answered ``miss``.
    miss : str
        The response of an access that no window claims.

    Raises
    ------
    ValueError
        Windows overlap or leave the space.
    """

    def __init__(self, name: str, size: int, windows: list[Window], miss: str) -> None:
        filled: list[Window] = []
        at = 0
        for window in sorted(windows, key=lambda w: w.base):
            if window.size <= 0 or window.base < at or window.end > size:
                raise ValueError(f"{name}: window {window.name} at {window.base:#x} does not fit")
            if window.base > at:
                filled.append(Window("", at, window.base - at, Kind.HOLE, miss))
            filled.append(window)
            at = window.end
        if at < size:
            filled.append(Window("", at, size - at, Kind.HOLE, miss))
        self.name = name
        self.size = size
        self.miss = miss
        self._windows = tuple(filled)
        self._by_name = {w.name: w for w in filled if w.name}

    def __iter__(self) -> Iterator[Window]:
        return iter(self._windows)

    def __getitem__(self, name: str) -> Window:
        try:
            return self._by_name[name]
        except KeyError:
            raise KeyError(f"{self.name} has no window {name!r}") from None

    def __contains__(self, name: object) -> bool:
        return name in self._by_name

    def find(self, address: int) -> Window:
        """The window (or hole) that holds byte ``address``."""
        for window in self._windows:
            if address in window:
                return window
        raise ValueError(f"address {address:#x} is outside {self.name} ({self.size:#x} bytes)")

    def table(self) -> str:
        """The map as a Markdown table, for docs."""
        rows = ["| from | to | window | kind | response | notes |", "|---:|---:|---|---|---|---|"]
        for w in self._windows:
            response = w.response + (f"; refused: {w.refused}" if w.refused else "")
            label = w.name or "(hole)"
            if w.regs is not None:
                label += f" ({w.regs.name})"
            cells = (f"{w.base:X}h", f"{w.end - 1:X}h", label, w.kind.value, response, w.doc)
            rows.append("| " + " | ".join(cells) + " |")
        return "\n".join(rows)


class BarMap:
    """The memory map of a PCI function: one :class:`MemoryMap` per BAR, offsets from its base.

    Parameters
    ----------
    name : str
    bars : mapping
        BAR index -> its map (the map's size is the BAR's size).
    miss : str
        The completion of a request no BAR claims.
    """

    def __init__(self, name: str, bars: Mapping[int, MemoryMap], miss: str) -> None:
        self.name = name
        self.bars = dict(sorted(bars.items()))
        self.miss = miss

    def __getitem__(self, index: int) -> MemoryMap:
        try:
            return self.bars[index]
        except KeyError:
            raise KeyError(f"{self.name} has no BAR{index}") from None

    def window(self, name: str) -> tuple[int, Window]:
        """``(BAR index, window)`` of the window ``name``."""
        for index, bar in self.bars.items():
            if name in bar:
                return index, bar[name]
        raise KeyError(f"{self.name} has no window {name!r}")

    def placed(self, bases: Mapping[int, int], space: int = 1 << 64) -> MemoryMap:
        """The absolute map once each BAR ``i`` decodes at ``bases[i]`` (every BAR needed)."""
        windows = []
        for index, bar in self.bars.items():
            if index not in bases:
                raise ValueError(f"no base for BAR{index}")
            base = bases[index]
            if base % bar.size:
                raise ValueError(f"BAR{index} base {base:#x} is not aligned to {bar.size:#x}")
            for w in bar:
                name = w.name or f"bar{index}_hole_{w.base:x}"
                windows.append(
                    Window(name, base + w.base, w.size, w.kind, w.response, w.refused,
                           w.regs, w.doc)
                )  # fmt: skip
        return MemoryMap(self.name, space, windows, self.miss)

    def table(self) -> str:
        """Every BAR's map as Markdown, for docs."""
        parts = []
        for index, bar in self.bars.items():
            parts.append(f"BAR{index} ({bar.size:#x} bytes):\n\n{bar.table()}")
        parts.append(f"Outside every BAR (or with Memory Space off): {self.miss}.")
        return "\n\n".join(parts)


def flat_memory_map(shm_size: int) -> MemoryMap:
    """The bus of ivshmem-flat: registers at 0, shared memory at ``shm_size`` (its alignment)."""
    return MemoryMap("ivshmem-flat", 2 * shm_size, [
        Window("regs", 0, FLAT_REGS.size, Kind.REGISTERS, "OKAY", "SLVERR", FLAT_REGS,
               "unaligned or no CPU access: refused, counted in bad_access"),
        Window("shm", shm_size, shm_size, Kind.MEMORY, "OKAY", "SLVERR",
               doc="forwarded to the mem port"),
    ], miss="DECERR")  # fmt: skip


def pci_memory_map(*, msix: bool, vectors: int, shm_size: int) -> BarMap:
    """The BARs of the ivshmem PCI function (revision 1): BAR0, BAR1 with MSI-X, BAR2."""
    windows = {
        BARS.regs.index: [
            Window("regs", 0, PCI_REV1_REGS.size, Kind.REGISTERS, "SC", regs=PCI_REV1_REGS),
        ],
        BARS.msix.index: [
            Window("msix_table", MSIX_BAR.table, MSIX_BAR.entry(vectors) - MSIX_BAR.table,
                   Kind.TABLE, "SC", regs=MSIX_ENTRY, doc="one entry per vector"),
            Window("msix_pba", MSIX_BAR.pba, MSIX_BAR.pba_size(vectors), Kind.STATUS, "SC",
                   doc="pending bits, read-only"),
        ],
        BARS.shm.index: [Window("shm", 0, shm_size, Kind.MEMORY, "SC")],
    }  # fmt: skip
    bars = {
        bar.index: MemoryMap(f"bar{bar.index}", size, windows[bar.index], miss="SC, reads 0")
        for bar, size in bars_of(msix=msix, shm_size=shm_size)
    }
    return BarMap("ivshmem-pci", bars, miss="UR")


def pci2_memory_map(
    *, layout: str, msix: bool, vectors: int, sections: Layout, bar2: bool = True
) -> BarMap:
    """The BARs of a revision 2 function: 4 KiB registers, MSI-X, the sections in BAR2.

    Without BAR2 the shared memory is at a fixed address (the vendor capability's), not
    in a BAR; the map then has BAR0 (and BAR1) only.
    """
    regs = PCI_REV2_REGS[layout]
    windows = {
        BARS.regs.index: [Window("regs", 0, regs.size, Kind.REGISTERS, "SC", regs=regs,
                                 doc="aligned dwords only; anything else reads 0")],
        BARS.msix.index: [
            Window("msix_table", MSIX_BAR.table, MSIX_BAR.entry(vectors) - MSIX_BAR.table,
                   Kind.TABLE, "SC", regs=MSIX_ENTRY, doc="one entry per vector"),
            Window("msix_pba", MSIX_BAR.pba, MSIX_BAR.pba_size(vectors), Kind.STATUS, "SC",
                   doc="no pending bits in revision 2: reads 0"),
        ],
        BARS.shm.index: [
            Window("state_table", 0, sections.state_table.size, Kind.MEMORY, "SC",
                   doc="read-only: writes dropped, counted in protected_writes"),
            *([Window("rw", sections.rw.offset, sections.rw.size, Kind.MEMORY, "SC")]
              if sections.rw.size else []),
            *([Window("outputs", sections.outputs.offset, sections.outputs.size, Kind.MEMORY,
                      "SC", doc="writable only in the own output section")]
              if sections.outputs.size else []),
        ],
    }  # fmt: skip
    bars = {
        bar.index: MemoryMap(f"bar{bar.index}", size, windows[bar.index], miss="SC, reads 0")
        for bar, size in rev2_bars(msix=msix, shm_size=sections.shm_size if bar2 else None)
    }
    return BarMap(f"ivshmem2-{layout}", bars, miss="UR")
