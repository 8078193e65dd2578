"""Register-accurate model of QEMU's ivshmem-flat (``hw/misc/ivshmem-flat.c``)."""

from __future__ import annotations

from collections.abc import Callable

from ..regmap import FLAT_REGS, MAX_VECTORS
from .common import Counters, DoorbellCallback, HasPeers, PeerTable, SharedMemory
from .registers import HasRegisters, RegisterFile

__all__ = ["DEFAULT_SHM_SIZE", "IvshmemFlatModel"]

#: QEMU's ``shmem-size`` default: the server's memory must be exactly this big
DEFAULT_SHM_SIZE = 4 << 20


class IvshmemFlatModel(HasRegisters, HasPeers):
    """ivshmem-flat: a sysbus ivshmem with a 16-byte register window and one IRQ.

    Register window (region 0, offsets and access from ``regmap.FLAT_REGS``)::

        31                              16 15                               0
        +----------------------------------+----------------------------------+
        |              INTMASK: reserved, reads 0, writes ignored             |  0x00
        +---------------------------------------------------------------------+
        |             INTSTATUS: reserved, reads 0, writes ignored            |  0x04
        +---------------------------------------------------------------------+
        |                     IVPOSITION (R): own peer ID                     |  0x08
        +----------------------------------+----------------------------------+
        |        DOORBELL (W): peer        |             vector               |  0x0C
        +----------------------------------+----------------------------------+

    Region 1 is the shared memory. Every inbound event, on any own vector,
    pulses the IRQ once (vectors are merged; a coalesced eventfd counter is
    one event, as QEMU reads the counter and pulses once). A doorbell to an
    unknown peer or to a vector that peer lacks is ignored and counted
    (upstream does not bounds-check the vector; this model and the HDL do).

    Access sizes (QEMU ``.impl`` 4..4, no ``.valid``; see ``registers``): an
    access of 1, 2, 4 or 8 bytes aligned to its size is valid, anything else
    reads 0 / is dropped and counts ``bad_access``. A 1- or 2-byte read returns
    the low bytes of the register at that exact offset (0 off a register
    boundary); a 1- or 2-byte write reaches a register only at its exact
    offset, zero-extended (a byte write of ``v`` to 0Ch rings peer 0, vector
    ``v``); 8 bytes are two dword accesses, low first.

    Parameters
    ----------
    vectors : int
        Own vector count, 1..64 (the server's ``-n``).
    shm : buffer or None
        The shared memory (e.g. the peer's ``mmap``); ``None`` allocates private memory.
    shm_size : int or None
        Window size, a power of two; default ``len(shm)``, or 4 MiB without ``shm``.
    on_irq : callable or None
        ``on_irq()``, called once per IRQ pulse.
    on_doorbell : callable or None
        ``on_doorbell(peer, vector)``, called for every valid doorbell write.

    Attributes
    ----------
    counters : Counters
        ``events``, ``irq_pulses``, ``rings``, ``bad_peer``, ``bad_vector``, ``bad_access``.
    shm : SharedMemory
        The shared-memory window (``shm.view`` is the buffer).
    regs : RegisterFile
        The register window, dispatched from ``FLAT_REGS``.

    Raises
    ------
    ValueError
        Bad vector count or shared-memory size.
    """

    def __init__(
        self,
        *,
        vectors: int = 1,
        shm: object | None = None,
        shm_size: int | None = None,
        on_irq: Callable[[], None] | None = None,
        on_doorbell: DoorbellCallback | None = None,
    ) -> None:
        if not isinstance(vectors, int) or not 1 <= vectors <= MAX_VECTORS:
            raise ValueError(f"vectors must be 1..{MAX_VECTORS}, not {vectors!r}")
        self._table = PeerTable(vectors)
        self.shm = SharedMemory(shm, shm_size, DEFAULT_SHM_SIZE)
        self.on_irq = on_irq
        self.on_doorbell = on_doorbell
        self.counters = Counters()
        self.regs = RegisterFile(
            FLAT_REGS,
            self.counters,
            sources={"IVPOSITION": self._ivposition},
            hooks={"doorbell": self._ring},
        )

    # -- inbound ----------------------------------------------------------------------------

    def event(self, vector: int) -> None:
        """An own eventfd ``vector`` became readable: pulse the IRQ once."""
        if not isinstance(vector, int) or not 0 <= vector < self.vectors:
            raise ValueError(f"vector must be 0..{self.vectors - 1}, not {vector!r}")
        self.counters.events += 1
        self.counters.irq_pulses += 1
        if self.on_irq is not None:
            self.on_irq()

    # -- register window --------------------------------------------------------------------

    def _ivposition(self) -> int:
        return FLAT_REGS.IVPOSITION.reset if self.id is None else self.id

    def _ring(self, word: int, _old: int) -> None:
        hit = self._table.decode(word, self.counters)
        if hit is not None and self.on_doorbell is not None:
            self.on_doorbell(*hit)

    def read(self, offset: int, size: int = 4) -> int:
        """Read ``size`` (1, 2, 4, 8) bytes of the register window at ``offset``."""
        return self.regs.read(offset, size)

    def write(self, offset: int, data: int, size: int = 4) -> None:
        """Write ``size`` (1, 2, 4, 8) bytes of the register window at ``offset``."""
        self.regs.write(offset, data, size)

    # -- shared memory ----------------------------------------------------------------------

    def shm_read(self, offset: int, size: int = 4) -> int:
        """Read ``size`` bytes of shared memory at ``offset`` (little-endian)."""
        return self.shm.read(offset, size)

    def shm_write(self, offset: int, data: int, size: int = 4) -> None:
        """Write ``size`` bytes of shared memory at ``offset`` (little-endian)."""
        self.shm.write(offset, data, size)
