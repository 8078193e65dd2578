"""Register-accurate model of the ivshmem PCI device, revision 2, in both layouts (docs/rev2.md).

The oracle of the revision 2 HDL endpoint. It shares the PCI function of the revision
1 model (config-space writes under write masks, BAR decode, the MSI-X table) and
differs where revision 2 does: IDs, class code and capabilities, a 4 KiB BAR0 with
the ID / Maximum Peers / Interrupt Control / Doorbell / State registers, the vendor
capability with its one-shot bit, interrupt gating, state changes written to the
State Table and broadcast, and the shared-memory window's write protection.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

from ..memmap import BarMap, pci2_memory_map
from ..pcicfg import BARS, CMD, REV2_IDS, VENDOR_CAP, BarLayout, rev2_config
from ..regmap import MSIX_BAR, PCI_REV2_REGS, REV2_LAYOUTS
from ..sections import STATE_ENTRY_SIZE, STATE_TABLE_SIZE, Layout
from .common import DoorbellCallback
from .pci import DEFAULT_SHM_SIZE, IvshmemPciModel, MsiCallback
from .registers import RegisterFile

__all__ = ["LAYOUTS", "IvshmemPci2"]

#: The two register layouts.
LAYOUTS = REV2_LAYOUTS
_MSIX_CONTROL = 2  # Message Control, from the MSI-X capability's start


class IvshmemPci2(IvshmemPciModel):
    """ivshmem revision 2: layout ``final`` (Jailhouse, drivers) or ``rfc`` (QEMU RFC v1).

    Configuration header (``ivhw.sw.pcicfg.rev2_config``; layout ``final``, MSI-X)::

        +-------------------+----------------------------------------+
        |   Device 4106h    |          Vendor 110Ah                  |  00h
        |   Status 0010h    |  Command (MEM MASTER INTXDIS)          |  04h
        |  Class FFh | protocol 15:8 | protocol 7:0 | Revision 00h   |  08h
        |  BAR0: registers, 4 KiB, 32-bit memory                     |  10h
        |  BAR1: MSI-X table + PBA (PBA reads 0), 4 KiB (MSI-X only) |  14h
        |  BAR2: shared memory, 64-bit prefetchable (unless no BAR2) |  18h
        |  Subsystem 4106h   |  Subsystem vendor 110Ah                |  2Ch
        |  Cap ptr 40h; pin 0 (MSI-X) or 1 (INTA)                    |  34h/3Ch
        +------------------------------------------------------------+
        |  40h vendor cap 09h: next, length 18h/20h, Privileged      |
        |      Control (bit 0 one-shot, RW), State Table size,       |
        |      R/W section size, output section size, [base]         |
        |  60h MSI-X capability                                      |
        +------------------------------------------------------------+

    Layout ``rfc``: IDs 1AF4:1110 revision 02h, subsystem 1AF4:1100, MSI-X
    capability at 40h and the vendor capability at 4Ch at the head of the list.

    BAR0 (``regmap.PCI_REV2_REGS[layout]``, aligned dwords only; anything else
    reads 0 and is dropped, counted in ``bad_access``)::

        final   rfc
        00h     00h   ID (R): own peer ID
        04h     04h   MaxPeers (R)
        -       08h   Features (reads 0)
        08h     0Ch   IntCtrl: bit 0 enable (RW, reset 0)
        0Ch     10h   Doorbell (W): target 31:16, vector 15:0 (rfc: 7:0)
        10h     14h   State (RW, reset 0)

    **Delivery.** An event on an own vector (:meth:`event`) is delivered only
    while IntCtrl bit 0 is set (else ``events_dropped``). MSI-X: MSI-X enabled,
    function and vector unmasked, bus master on: the message goes out
    (``msi_sent``); masked: dropped (``msi_masked``: there is no pending bit,
    the PBA reads 0); bus master off: ``msi_lost``; MSI-X disabled:
    ``events_dropped``. INTx: a pulse on the line (``on_intx(True)`` then
    ``on_intx(False)``, ``intx_pulses``) unless Command INTX_DISABLE; Status
    bit 3 is never set. After a delivery, one-shot mode (Privileged Control bit
    0) clears IntCtrl bit 0. A peer leaving (:meth:`peer_gone`) is an event on
    own vector 0.

    **State.** A write stores the value, writes it to the own State Table
    entry, and if it differs from the previous value rings vector 0 of every
    other known peer (``on_doorbell(peer, 0)``, ``state_changes``). A PCI reset
    sets the state to 0 the same way.

    **Shared memory** (BAR2, or without BAR2 a fixed window at ``shm_address``
    that always decodes): reads anywhere; a write is dropped
    (``protected_writes``) unless every byte lies in the R/W section or the own
    output section.

    Parameters
    ----------
    layout : "final" or "rfc"
    interrupts : "msix" or "intx"
    vectors : int
        Own vectors, 1..64.
    max_peers : int
        The Maximum Peers register, 2..65536.
    output_section_size : int
        Size of each output section, a page multiple (0: none).
    state_table_size : int
        A page multiple of at least 4 x ``max_peers`` (default one page).
    protocol : int
        The 16-bit protocol in the class code.
    shm, shm_size
        As :class:`~ivhw.sw.models.pci.IvshmemPciModel` (the size a power of two).
    bar2 : bool
        ``False``: no BAR2; the vendor capability carries ``shm_address``.
    shm_address : int or None
        Without BAR2: where the shared memory is (page-aligned).
    on_msi, on_doorbell, on_intx
        As :class:`~ivhw.sw.models.pci.IvshmemPciModel`; ``on_intx`` sees each pulse.

    Attributes
    ----------
    layout_name : str
    sections : Layout
        The shared-memory layout the vendor capability describes.
    regs : RegisterFile
        BAR0, dispatched from ``PCI_REV2_REGS[layout]``.

    Raises
    ------
    ValueError
        On out-of-range parameters or a layout that does not fit.
    """

    def __init__(
        self,
        *,
        layout: Literal["final", "rfc"] = "final",
        interrupts: Literal["msix", "intx"] = "msix",
        vectors: int = 1,
        max_peers: int = 2,
        output_section_size: int = 0,
        state_table_size: int = STATE_TABLE_SIZE,
        protocol: int = 0,
        shm: object | None = None,
        shm_size: int | None = None,
        bar2: bool = True,
        shm_address: int | None = None,
        on_msi: MsiCallback | None = None,
        on_doorbell: DoorbellCallback | None = None,
        on_intx: Callable[[bool], None] | None = None,
    ) -> None:
        if layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {', '.join(LAYOUTS)}, not {layout!r}")
        if interrupts not in ("msix", "intx"):
            raise ValueError(f"interrupts must be 'msix' or 'intx', not {interrupts!r}")
        if bar2 and shm_address is not None:
            raise ValueError("shm_address is for a device without BAR2 (bar2=False)")
        if not bar2 and (shm_address is None or shm_address < 0 or shm_address % 4096):
            raise ValueError(f"without BAR2 give a page-aligned shm_address, not {shm_address!r}")
        self.layout_name = layout
        self.max_peers = max_peers
        self.protocol = protocol
        self.bar2 = bar2
        self.shm_address = shm_address
        self._ids = REV2_IDS[layout]
        self._regmap = PCI_REV2_REGS[layout]
        self._msix_ctrl_offset = self._ids.msix_cap + _MSIX_CONTROL
        # the layout is checked against the memory before anything else is built
        size = shm_size
        if size is None:
            size = DEFAULT_SHM_SIZE if shm is None else len(memoryview(shm))  # type: ignore[arg-type]
        self.sections = Layout(size, max_peers, output_section_size, state_table_size)
        self._state_cap = state_table_size
        super().__init__(
            doorbell=True,
            vectors=vectors,
            shm=shm,
            shm_size=shm_size,
            interrupts=interrupts,
            on_msi=on_msi,
            on_doorbell=on_doorbell,
            on_intx=on_intx,
        )

    # -- the parts that differ from revision 1 -----------------------------------------------

    def _make_registers(self) -> RegisterFile:
        sources: dict[str, object] = {
            "ID": lambda: 0 if self.id is None else self.id,
            "MaxPeers": self.max_peers,
        }
        return RegisterFile(
            self._regmap,
            self.counters,
            sources=sources,  # type: ignore[arg-type]
            hooks={"doorbell": self._ring, "state": self._state_written},
        )

    @property
    def bars(self) -> list[tuple[BarLayout, int]]:
        """The BARs: BAR0 (4 KiB), BAR1 with MSI-X, BAR2 unless the memory has a fixed place."""
        return self._bar_list

    @property
    def memory_map(self) -> BarMap:
        """The BARs' maps: each BAR's windows and holes, and the miss."""
        return pci2_memory_map(
            layout=self.layout_name, msix=self.msix, vectors=self.vectors,
            sections=self.sections, bar2=self.bar2,
        )  # fmt: skip

    def decode(self, address: int, size: int = 4) -> tuple[int, int] | None:
        """``(BAR index, offset)`` of a memory access; without BAR2 the fixed window is
        reported as BAR2's index."""
        offset = self._fixed_window(address, size)
        if offset is not None:
            return BARS.shm.index, offset
        return super().decode(address, size)

    def _build_config(self) -> None:
        header, bars = rev2_config(
            layout=self.layout_name,  # type: ignore[arg-type]
            msix=self.msix,
            vectors=self.vectors,
            protocol=self.protocol,
            state_table_size=self.sections.state_table.size,
            rw_size=self.sections.rw.size,
            output_size=self.sections.output_section_size,
            shm_size=self.shm.size if self.bar2 else None,
            shm_address=self.shm_address,
        )
        self._cfg_init = header.init
        self._wmask = header.wmask
        self._w1cmask = header.w1cmask  # none: Status is static
        self._bar_list = bars

    @property
    def vendor_cap(self) -> int:
        """Config offset of the vendor capability."""
        return self._ids.vendor_cap if self.msix else 0x40

    @property
    def oneshot(self) -> bool:
        """Privileged Control bit 0: one-shot interrupt mode."""
        return bool(self._cfg[self.vendor_cap + VENDOR_CAP.PRIV_CTRL] & VENDOR_CAP.ONESHOT)

    def reset(self) -> None:
        """PCI reset: config, MSI-X table, registers; the state returns to 0 as if written."""
        old = self.regs.get("State") if hasattr(self, "regs") and hasattr(self, "_cfg") else 0
        super().reset()
        self._state_written(0, old)

    def _intx_state(self) -> bool:
        return False  # revision 2 has no interrupt status: Status bit 3 is never set

    def _update_intx(self) -> None:
        pass  # the line only pulses, in _deliver

    def _notify(self, vector: int) -> None:
        if self._masked(vector):
            self.counters.msi_masked += 1  # no pending bits in revision 2
            return
        super()._notify(vector)

    def _msix_read32(self, offset: int) -> int:
        if MSIX_BAR.pba <= offset < MSIX_BAR.pba + MSIX_BAR.pba_size(self.vectors):
            return 0
        return super()._msix_read32(offset)

    # -- registers -----------------------------------------------------------------------------

    @property
    def state(self) -> int:
        """The State register."""
        return self.regs.get("State")

    @property
    def int_enabled(self) -> bool:
        """Interrupt Control bit 0."""
        return bool(self.regs.get("IntCtrl") & 1)

    def _state_written(self, value: int, old: int) -> None:
        if self.id is not None and self.id < self.max_peers:
            self.shm.write(self.sections.state_offset(self.id), value, STATE_ENTRY_SIZE)
        if value != old:
            self.counters.state_changes += 1
            for peer in sorted(self.peers):
                if peer != self.id and self.on_doorbell is not None:
                    self.on_doorbell(peer, 0)

    def state_of(self, peer: int) -> int:
        """``peer``'s State Table entry."""
        return self.shm.read(self.sections.state_offset(peer), STATE_ENTRY_SIZE)

    # -- inbound -------------------------------------------------------------------------------

    def event(self, vector: int) -> None:
        """An own eventfd ``vector`` became readable: deliver it if enabled."""
        if not isinstance(vector, int) or not 0 <= vector < self.vectors:
            raise ValueError(f"vector must be 0..{self.vectors - 1}, not {vector!r}")
        self.counters.events += 1
        if not self.int_enabled:
            self.counters.events_dropped += 1
            return
        if self._deliver(vector) and self.oneshot:
            self.regs.set("IntCtrl", 0)

    def _deliver(self, vector: int) -> bool:
        """Signal ``vector``; whether an interrupt went out."""
        if self.interrupts == "intx":
            if self.command & CMD.INTX_DISABLE:
                self.counters.events_dropped += 1
                return False
            self.counters.intx_pulses += 1
            if self.on_intx is not None:
                self.on_intx(True)
                self.on_intx(False)
            return True
        if not self.msix_enabled:
            self.counters.events_dropped += 1
            return False
        sent = self.counters.msi_sent
        self._notify(vector)
        return self.counters.msi_sent != sent

    def peer_gone(self, peer: int) -> None:
        """``peer`` left (PEER_GONE): forget it and raise own vector 0."""
        self.remove_peer(peer)
        self.event(0)

    # -- shared memory -------------------------------------------------------------------------

    def _writable(self, offset: int, size: int) -> bool:
        own = -1 if self.id is None else self.id
        sections = self.sections
        return sections.writable(own, offset) and sections.writable(own, offset + size - 1)

    def bar_write(self, index: int, offset: int, data: int, size: int = 4) -> None:
        """Write through BAR ``index``; shared-memory writes obey the sections."""
        bar, _size = self._bar(index)
        if bar is BARS.shm and not self._writable(offset, size):
            self.counters.protected_writes += 1
            return
        super().bar_write(index, offset, data, size)

    def _fixed_window(self, address: int, size: int) -> int | None:
        base = self.shm_address
        if base is None or not base <= address or address + size > base + self.shm.size:
            return None
        return address - base

    def mem_read(self, address: int, size: int = 4) -> int | None:
        """A memory read from the bus; without BAR2 the fixed shared-memory window first."""
        offset = self._fixed_window(address, size)
        if offset is not None:
            return self.shm.read(offset, size)
        return super().mem_read(address, size)

    def mem_write(self, address: int, data: int, size: int = 4) -> bool:
        """A memory write from the bus; ``False`` if nothing claims it."""
        offset = self._fixed_window(address, size)
        if offset is None:
            return super().mem_write(address, data, size)
        if self._writable(offset, size):
            self.shm.write(offset, data, size)
        else:
            self.counters.protected_writes += 1
        return True
