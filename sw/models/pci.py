"""Register-accurate model of QEMU 7.2's ivshmem PCI device, revision 1.

``ivshmem-doorbell`` (server, doorbells, MSI-X; or, by parameter, the legacy
INTx interrupt of QEMU's older ``ivshmem``) and ``ivshmem-plain`` (shared memory
only). The registers and variants: ``docs/registers.md``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from ..memmap import BarMap, pci_memory_map
from ..pcicfg import (
    BARS,
    CFG,
    CMD,
    CONFIG_SIZE,
    MSIX_CAP,
    STATUS,
    BarLayout,
    bars_of,
    check_interrupts,
    config_header,
)
from ..regmap import MSIX_BAR, MSIX_ENTRY, PCI_REV1_REGS
from .common import Counters, DoorbellCallback, HasPeers, PeerTable, SharedMemory
from .registers import HasRegisters, MmioWindow, RegisterFile

__all__ = ["DEFAULT_SHM_SIZE", "EXTENDED_CONFIG_SIZE", "IvshmemPciModel", "MsiCallback"]

#: QEMU's ivshmem-server default ``-l``
DEFAULT_SHM_SIZE = 4 << 20
#: config offsets 100h..FFFh exist on the link (PCIe ECAM) but not in a conventional
#: function; QEMU's host bridge answers all-ones there and drops writes
EXTENDED_CONFIG_SIZE = 0x1000

#: ``on_msi(address, data)``: the device writes the 32-bit ``data`` to ``address``
MsiCallback = Callable[[int, int], None]

_M32 = 0xFFFF_FFFF
_REG = PCI_REV1_REGS


@dataclass
class _MsixEntry:
    addr_lo: int = MSIX_ENTRY.MsgAddrLo.reset
    addr_hi: int = MSIX_ENTRY.MsgAddrHi.reset
    data: int = MSIX_ENTRY.MsgData.reset
    masked: bool = bool(MSIX_BAR.mask.get(MSIX_ENTRY.VectorCtrl.reset))


class IvshmemPciModel(HasRegisters, HasPeers):
    """ivshmem PCI revision 1: ``ivshmem-doorbell`` or ``ivshmem-plain``, as QEMU 7.2.

    Configuration header (values from ``ivhw.sw.pcicfg``; MSI-X variant)::

        31                16 15                 8 7                  0
        +-------------------+--------------------+-------------------+
        |   Device 1110h    |          Vendor 1AF4h                  |  00h
        +-------------------+--------------------+-------------------+
        |  Status 0010h     |  Command (IO MEM MASTER SERR INTXDIS)  |  04h
        +-------------------+--------------------+-------------------+
        |          Class 050000h                 |  Revision 01h     |  08h
        +---------+---------+--------------------+-------------------+
        |  BIST 0 | Hdr 00h | Latency 0          |  Cache line (RW)  |  0Ch
        +---------+---------+--------------------+-------------------+
        |  BAR0: registers, 256 B, 32-bit memory                     |  10h
        |  BAR1: MSI-X table + PBA, 4 KiB, 32-bit (MSI-X only)       |  14h
        |  BAR2: shared memory, 64-bit prefetchable (type Ch) ...    |  18h
        |  ... BAR2 high dword                                       |  1Ch
        +-------------------+----------------------------------------+
        |  Subsystem 1100h  |  Subsystem vendor 1AF4h                |  2Ch
        +-------------------+--------------------+-------------------+
        |                                        |  Cap ptr 40h      |  34h
        +-------------------+--------------------+-------------------+
        |  Max lat / Min gnt 0                   | Pin 0  | Line (RW)|  3Ch
        +-------------------+--------------------+-------------------+
        |  Msg Control: EN(15) MASK(14) N-1      | next 0 | ID 11h   |  40h
        |  Table offset 0, BIR 1                                     |  44h
        |  PBA offset 800h, BIR 1                                    |  48h
        +------------------------------------------------------------+

    BAR0 (offsets and access from ``regmap.PCI_REV1_REGS``)::

        +------------------------------------------------------------+
        |  IntrMask (RW)                                             |  00h
        |  IntrStatus (RW, a read returns it and clears it)          |  04h
        |  IVPosition (R): own ID, FFFFFFFFh until known (plain: 0)  |  08h
        |  Doorbell (W): peer 31:16 | vector 15:0 (bits 7:0 decoded) |  0Ch
        |  10h..FFh: read 0, writes ignored                          |
        +------------------------------------------------------------+

    BAR1 (``regmap.MSIX_BAR``): 16-byte table entries from 0 (address low/high,
    data, vector control bit 0 = masked, reset masked), the PBA from 800h
    (read-only); the rest reads 0.

    **Variants.** ``doorbell=False`` is ivshmem-plain: BAR0 + BAR2, status 0,
    no capability, pin 0, IVPosition 0, doorbells ignored, no events.
    ``interrupts="msix"`` (default) is QEMU 7.2's ivshmem-doorbell. With
    ``interrupts="intx"`` it is QEMU's older ``ivshmem`` (the device that
    ivshmem-plain and ivshmem-doorbell replaced) with ``msi=off`` (its
    ``pci_ivshmem_realize`` set interrupt pin 1 and never ran
    ``msix_init_exclusive_bar``): pin INTA, no BAR1, no capability (status
    bit 4 clear, capability pointer 0).

    **Inbound events** (:meth:`event`, one per readable own eventfd: QEMU reads
    the counter and signals once, so coalesced rings are one event):

    * MSI-X variant (``ivshmem_vector_notify``): MSI-X disabled -> dropped
      (no message, no PBA bit; ``events_dropped``). Enabled: ``msix_notify``:
      vector or function masked -> PBA bit set (``pending_set``); else the
      message is written through the bus-master address space. QEMU calls
      ``msix_notify`` whatever Bus Master Enable says; with it clear the
      device's bus-master region is disabled and the write is lost
      (``msi_lost``, no PBA bit). A pending bit is delivered (and cleared)
      when the vector becomes unmasked: vector-control write, function-mask
      clear, or MSI-X enable.
    * INTx variant: IntrStatus := 1 (the oldest ``ivshmem`` wrote the eventfd
      counter's first byte; later ones write 1), and the interrupt state is
      ``IntrStatus & IntrMask != 0``, recomputed on every change of either
      (the older device's ``ivshmem_update_irq``; QEMU 7.2 no longer drives INTx
      at all). The state is Status bit 3; the pin (:attr:`intx`) is the state
      unless Command INTX_DISABLE is set (gated combinationally; QEMU only
      re-evaluates when a write covers the command's low byte).

    **Config space.** 8/16/32-bit accesses aligned to their size; per byte,
    ``new = old & ~wmask | data & wmask`` as ``pci_default_write_config``.
    Writable: command bits in ``CMD_WMASK`` (reset 0), cache line size,
    interrupt line, BAR address bits (``~(size - 1)``, so writing all-ones
    sizes the BAR), MSI-X Message Control bits 15:14. Everything else reads
    its fixed value; 40h..FFh outside the capability reads 0 and ignores
    writes (QEMU makes those bytes scratch RAM; real functions do not).
    Offsets 100h..FFFh read all-ones (QEMU's limit for a conventional function).

    **Memory decode** (``pci_bar_address``): a BAR decodes only with Command
    MEMORY set, a non-zero base, and an end below the top of its 32/64-bit
    space (so a BAR still holding the all-ones sizing pattern decodes nothing).
    :meth:`mem_read` / :meth:`mem_write` go through the decode; :meth:`bar_read`
    / :meth:`bar_write` address a BAR directly.

    **Register access sizes** (BAR0; QEMU ``.impl`` 4..4, no ``.valid``; see
    ``registers``): 1/2/4/8 bytes aligned to the size; unaligned reads 0 / drops
    (``bad_access``). 1- and 2-byte reads reach a register only at its own
    offset (low bytes, side effects included: IntrStatus clears); 1- and
    2-byte writes go to the register of ``offset & FCh`` with the value
    zero-extended (``ivshmem_io_write`` masks the offset). 8 bytes = two
    dwords, low first. BAR1 (QEMU ``.valid`` 4..8): only aligned 4/8-byte
    accesses; others read 0 / drop. BAR2 is RAM: any size and alignment.

    Parameters
    ----------
    doorbell : bool
        ``True``: ivshmem-doorbell; ``False``: ivshmem-plain.
    vectors : int
        Own vectors, 1..64 (doorbell only; MSI-X table size).
    shm : buffer or None
        The shared memory (e.g. a peer's ``mmap``); ``None`` allocates private memory.
    shm_size : int or None
        BAR2 size, a power of two >= 16; default ``len(shm)`` or 4 MiB.
    interrupts : "msix", "intx" or None
        Doorbell only: interrupt mechanism (default ``"msix"``).
    on_msi : callable or None
        ``on_msi(address, data)`` for every MSI-X message.
    on_doorbell : callable or None
        ``on_doorbell(peer, vector)`` for every valid doorbell write.
    on_intx : callable or None
        ``on_intx(level)`` whenever the INTx pin changes.

    Attributes
    ----------
    counters : Counters
        Event counters (``events``, ``msi_sent``, ``msi_lost``, ``pending_set``,
        ``events_dropped``, ``rings``, ``bad_peer``, ``bad_vector``, ``bad_access``).
    shm : SharedMemory
        The BAR2 window.
    regs : RegisterFile
        BAR0, dispatched from ``PCI_REV1_REGS``.

    Raises
    ------
    ValueError
        Bad vectors, interrupts or shared-memory size.
    """

    def __init__(
        self,
        *,
        doorbell: bool = True,
        vectors: int = 1,
        shm: object | None = None,
        shm_size: int | None = None,
        interrupts: Literal["msix", "intx"] | None = None,
        on_msi: MsiCallback | None = None,
        on_doorbell: DoorbellCallback | None = None,
        on_intx: Callable[[bool], None] | None = None,
    ) -> None:
        interrupts = check_interrupts(doorbell, interrupts)  # type: ignore[assignment]
        self.doorbell = doorbell
        self.interrupts = interrupts
        self._table = PeerTable(vectors)
        self.shm = SharedMemory(shm, shm_size, DEFAULT_SHM_SIZE)
        self.on_msi = on_msi
        self.on_doorbell = on_doorbell
        self.on_intx = on_intx
        self.counters = Counters()
        self.regs = self._make_registers()
        self._msix_bar = MmioWindow(
            MSIX_BAR.size, self.counters, self._msix_read32, self._msix_write32,
            MSIX_ENTRY.min_access,
        )  # fmt: skip
        self._pin = False
        self._build_config()
        self.reset()

    # -- variant ----------------------------------------------------------------------------

    #: config offset of MSI-X Message Control (a revision 2 layout moves the capability)
    _msix_ctrl_offset = MSIX_CAP.control_offset

    def _make_registers(self) -> RegisterFile:
        """BAR0: the register file of this variant, bound to its sources and hooks."""
        return RegisterFile(
            _REG,
            self.counters,
            sources={"IVPosition": self._ivposition},
            hooks={"doorbell": self._ring},
            on_change=self._update_intx,
        )

    @property
    def msix(self) -> bool:
        """The MSI-X capability and BAR1 exist."""
        return self.interrupts == "msix"

    @property
    def bars(self) -> list[tuple[BarLayout, int]]:
        """The BARs of this variant with their sizes, in decode order."""
        return bars_of(msix=self.msix, shm_size=self.shm.size)

    @property
    def memory_map(self) -> BarMap:
        """Each BAR's windows and holes, as the gateware's ``memory_map``."""
        return pci_memory_map(msix=self.msix, vectors=self.vectors, shm_size=self.shm.size)

    def _build_config(self) -> None:
        header = config_header(
            msix=self.msix, intx=self.interrupts == "intx", vectors=self.vectors,
            bars=self.bars,
        )  # fmt: skip
        self._cfg_init = header.init
        self._wmask = header.wmask
        self._w1cmask = header.w1cmask

    def reset(self) -> None:
        """PCI reset: config, MSI-X table and PBA, IntrMask/IntrStatus (not ID nor peers)."""
        self._cfg = bytearray(self._cfg_init)
        self._msix_table = [_MsixEntry() for _ in range(self.vectors)]
        self._pba = 0
        self.regs.reset()
        self._update_intx()

    def _need_server(self) -> None:
        if not self.doorbell:
            raise ValueError("ivshmem-plain has no server: no ID, peers or events")

    # -- config space -----------------------------------------------------------------------

    @property
    def command(self) -> int:
        """The Command register."""
        return int.from_bytes(self._cfg[CFG.COMMAND : CFG.COMMAND + 2], "little")

    def _cfg_byte(self, off: int) -> int:
        value = self._cfg[off]
        if off == CFG.STATUS and self._intx_state():
            value |= STATUS.INTERRUPT
        return value

    @staticmethod
    def _check_cfg(offset: int, size: int) -> None:
        if size not in (1, 2, 4):
            raise ValueError(f"config access size must be 1, 2 or 4, not {size!r}")
        if offset % size or not 0 <= offset <= EXTENDED_CONFIG_SIZE - size:
            raise ValueError(
                f"config access of {size} bytes at {offset:#x} is not aligned/in range"
            )

    def config_read(self, offset: int, size: int = 4) -> int:
        """Read ``size`` (1, 2, 4) config bytes at ``offset`` (aligned to ``size``)."""
        self._check_cfg(offset, size)
        if offset >= CONFIG_SIZE:
            return (1 << (8 * size)) - 1
        return sum(self._cfg_byte(offset + i) << (8 * i) for i in range(size))

    def config_write(self, offset: int, data: int, size: int = 4) -> None:
        """Write ``size`` (1, 2, 4) config bytes at ``offset`` (aligned to ``size``)."""
        self._check_cfg(offset, size)
        if not 0 <= data < 1 << (8 * size):
            raise ValueError(f"data {data!r} does not fit in {size} bytes")
        self._config_write_bytes({offset + i: (data >> (8 * i)) & 0xFF for i in range(size)})

    def config_write_mask(self, offset: int, data: int, mask: int) -> None:
        """Write config dword ``offset`` with byte enables ``mask`` (any pattern, as on PCIe)."""
        self._check_cfg(offset, 4)
        if not 0 <= mask <= 0xF:
            raise ValueError(f"byte-enable mask must be 4 bits, not {mask!r}")
        data &= _M32
        self._config_write_bytes(
            {offset + i: (data >> (8 * i)) & 0xFF for i in range(4) if mask >> i & 1}
        )

    def read_config_register(self, reg: int) -> int:
        """Config dword number ``reg`` (cocotbext-pcie style)."""
        return self.config_read(4 * reg, 4)

    def write_config_register(self, reg: int, data: int, mask: int = 0xF) -> None:
        """Write config dword number ``reg`` with byte enables ``mask``."""
        self.config_write_mask(4 * reg, data, mask)

    def _config_write_bytes(self, data: dict[int, int]) -> None:
        data = {off: byte for off, byte in data.items() if off < CONFIG_SIZE}
        was_fmasked = self._function_masked()
        for off, byte in data.items():
            wm, w1c = self._wmask[off], self._w1cmask[off]
            self._cfg[off] = (self._cfg[off] & ~wm | byte & wm) & ~(byte & w1c) & 0xFF
        if self.msix and self._msix_ctrl_offset + 1 in data:
            self._msix_control_written(was_fmasked)
        self._update_intx()

    # -- BAR decode -------------------------------------------------------------------------

    def _bar(self, index: int) -> tuple[BarLayout, int]:
        for bar, size in self.bars:
            if bar.index == index:
                return bar, size
        raise ValueError(f"this device has no BAR{index}")

    def bar_address(self, index: int) -> int | None:
        """Where BAR ``index`` decodes, or ``None`` if it does not (QEMU ``pci_bar_address``)."""
        bar, size = self._bar(index)
        if not self.command & CMD.MEMORY:
            return None
        width = 64 if bar.is64 else 32
        raw = int.from_bytes(self._cfg[bar.offset : bar.offset + width // 8], "little")
        base = raw & ~(size - 1) & ~0xF
        last = base + size - 1
        if base == 0 or last >= (1 << width) - 1:
            return None
        return base

    def decode(self, address: int, size: int = 4) -> tuple[int, int] | None:
        """``(BAR index, offset)`` of a memory access, or ``None``: no BAR claims it."""
        for bar, bar_size in self.bars:
            base = self.bar_address(bar.index)
            if base is not None and base <= address and address + size <= base + bar_size:
                return bar.index, address - base
        return None

    def mem_read(self, address: int, size: int = 4) -> int | None:
        """A memory read from the bus; ``None`` if no BAR claims it (unsupported request)."""
        hit = self.decode(address, size)
        return None if hit is None else self.bar_read(hit[0], hit[1], size)

    def mem_write(self, address: int, data: int, size: int = 4) -> bool:
        """A memory write from the bus; ``False`` if no BAR claims it."""
        hit = self.decode(address, size)
        if hit is not None:
            self.bar_write(hit[0], hit[1], data, size)
        return hit is not None

    def _window(self, index: int) -> MmioWindow | SharedMemory:
        bar, _ = self._bar(index)
        if bar.index == BARS.shm.index:
            return self.shm
        return self.regs if bar.index == BARS.regs.index else self._msix_bar

    def bar_read(self, index: int, offset: int, size: int = 4) -> int:
        """Read ``size`` bytes at ``offset`` of BAR ``index``, whatever the decode says."""
        return self._window(index).read(offset, size)

    def bar_write(self, index: int, offset: int, data: int, size: int = 4) -> None:
        """Write ``size`` bytes at ``offset`` of BAR ``index``, whatever the decode says."""
        self._window(index).write(offset, data, size)

    def _dword_window(self, index: int) -> MmioWindow:
        window = self._window(index)
        if isinstance(window, SharedMemory):
            raise ValueError("BAR2 is RAM: use bar_read/bar_write with a size")
        return window

    def bar_read_mask(self, index: int, offset: int, mask: int = 0xF) -> int:
        """Read dword ``offset`` of BAR ``index`` with byte enables ``mask`` (as on PCIe).

        The mask must be one a CPU access produces (``regmap.CPU_MASKS``); any
        other non-empty mask is an invalid access: reads 0, counted.
        """
        return self._dword_window(index).read_mask(offset, mask)

    def bar_write_mask(self, index: int, offset: int, data: int, mask: int) -> None:
        """Write dword ``offset`` of BAR ``index`` with byte enables ``mask``.

        The mask must be one a CPU access produces (``regmap.CPU_MASKS``); any
        other non-empty mask is an invalid access: dropped and counted.
        """
        self._dword_window(index).write_mask(offset, data, mask)

    # -- BAR0 registers ---------------------------------------------------------------------

    @property
    def intrmask(self) -> int:
        return self.regs.get("IntrMask")

    @property
    def intrstatus(self) -> int:
        return self.regs.get("IntrStatus")

    def _ivposition(self) -> int:
        if not self.doorbell:
            return 0
        return _REG.IVPosition.reset if self.id is None else self.id

    def _ring(self, word: int, _old: int) -> None:
        hit = self._table.decode(word, self.counters)
        if hit is not None and self.on_doorbell is not None:
            self.on_doorbell(*hit)

    # -- INTx -------------------------------------------------------------------------------

    def _intx_state(self) -> bool:
        return self.interrupts == "intx" and bool(self.intrstatus & self.intrmask)

    @property
    def intx(self) -> bool:
        """The INTx pin: interrupt state unless Command INTX_DISABLE is set."""
        return self._intx_state() and not self.command & CMD.INTX_DISABLE

    def _update_intx(self) -> None:
        pin = self.intx
        if pin != self._pin:
            self._pin = pin
            if self.on_intx is not None:
                self.on_intx(pin)

    # -- MSI-X ------------------------------------------------------------------------------

    @property
    def msix_control(self) -> int:
        """MSI-X Message Control (0 without MSI-X)."""
        if not self.msix:
            return 0
        off = self._msix_ctrl_offset
        return int.from_bytes(self._cfg[off : off + 2], "little")

    @property
    def msix_enabled(self) -> bool:
        return bool(self.msix_control & MSIX_CAP.ENABLE)

    def _function_masked(self) -> bool:
        # QEMU msix_update_function_masked: disabled counts as masked
        return not self.msix_enabled or bool(self.msix_control & MSIX_CAP.MASKALL)

    def _masked(self, vector: int) -> bool:
        return self._function_masked() or self._msix_table[vector].masked

    @property
    def pending(self) -> int:
        """The PBA as an integer, bit ``v`` for vector ``v``."""
        return self._pba

    def _msix_control_written(self, was_fmasked: bool) -> None:
        # msix_write_config: nothing happens while disabled; otherwise a change of
        # the function mask re-evaluates every vector
        if not self.msix_enabled or self._function_masked() == was_fmasked:
            return
        for vector, entry in enumerate(self._msix_table):
            self._mask_changed(vector, was_fmasked or entry.masked)

    def _mask_changed(self, vector: int, was_masked: bool) -> None:
        # msix_handle_mask_update: a newly unmasked pending vector fires now
        if self._masked(vector) == was_masked or self._masked(vector):
            return
        if self._pba >> vector & 1:
            self._pba &= ~(1 << vector)
            self._notify(vector)

    def _notify(self, vector: int) -> None:
        # msix_notify
        if self._masked(vector):
            self._pba |= 1 << vector
            self.counters.pending_set += 1
            return
        if not self.command & CMD.MASTER:
            self.counters.msi_lost += 1
            return
        entry = self._msix_table[vector]
        self.counters.msi_sent += 1
        if self.on_msi is not None:
            self.on_msi(entry.addr_hi << 32 | entry.addr_lo, entry.data)

    def _msix_read32(self, offset: int) -> int:
        table_end = MSIX_BAR.entry(self.vectors)
        if MSIX_BAR.table <= offset < table_end:
            vector, field = divmod(offset - MSIX_BAR.table, MSIX_ENTRY.size)
            entry = self._msix_table[vector]
            reg = MSIX_ENTRY.at(field)
            if reg is MSIX_ENTRY.MsgAddrLo:
                return entry.addr_lo
            if reg is MSIX_ENTRY.MsgAddrHi:
                return entry.addr_hi
            if reg is MSIX_ENTRY.MsgData:
                return entry.data
            return MSIX_BAR.mask.put(int(entry.masked))
        pba_end = MSIX_BAR.pba + MSIX_BAR.pba_size(self.vectors)
        if MSIX_BAR.pba <= offset < pba_end:
            return (self._pba >> (8 * (offset - MSIX_BAR.pba))) & _M32
        return 0

    def _msix_write32(self, offset: int, data: int) -> None:
        if not MSIX_BAR.table <= offset < MSIX_BAR.entry(self.vectors):
            return  # PBA is read-only, the rest is a hole
        vector, field = divmod(offset - MSIX_BAR.table, MSIX_ENTRY.size)
        entry = self._msix_table[vector]
        was_masked = self._masked(vector)
        reg = MSIX_ENTRY.at(field)
        if reg is MSIX_ENTRY.MsgAddrLo:
            entry.addr_lo = data
        elif reg is MSIX_ENTRY.MsgAddrHi:
            entry.addr_hi = data
        elif reg is MSIX_ENTRY.MsgData:
            entry.data = data
        else:
            entry.masked = bool(MSIX_BAR.mask.get(data))
        self._mask_changed(vector, was_masked)

    # -- inbound ----------------------------------------------------------------------------

    def event(self, vector: int) -> None:
        """An own eventfd ``vector`` became readable (one event, whatever its counter)."""
        self._need_server()
        if not isinstance(vector, int) or not 0 <= vector < self.vectors:
            raise ValueError(f"vector must be 0..{self.vectors - 1}, not {vector!r}")
        self.counters.events += 1
        if self.interrupts == "intx":
            self.regs.set("IntrStatus", 1)
        elif self.msix_enabled:
            self._notify(vector)
        else:
            self.counters.events_dropped += 1

    # -- shared memory ----------------------------------------------------------------------

    def shm_read(self, offset: int, size: int = 4) -> int:
        """Read ``size`` bytes of shared memory at ``offset`` (little-endian)."""
        return self.shm.read(offset, size)

    def shm_write(self, offset: int, data: int, size: int = 4) -> None:
        """Write ``size`` bytes of shared memory at ``offset`` (little-endian)."""
        self.shm.write(offset, data, size)
