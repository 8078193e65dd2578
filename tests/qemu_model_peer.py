"""Our PCI register model (``IvshmemPciModel``) as a peer of a real ivshmem domain.

A :class:`ModelPeer` joins the server with our peer library and binds the model
to it with ``ivhw.sw.models.attach`` (BAR2 is the peer's mmap, Doorbell writes
ring real eventfds, own eventfds become ``model.event``, joins and departures
reach the model's peer table). The test plays firmware: BARs assigned, bus
master on, MSI-X vectors programmed and enabled; delivered MSI-X messages are
collected as ``(address, data)``.
"""

from __future__ import annotations

import time

from ivhw.sw.models.attach import attach_pci
from ivhw.sw.peer import Event, Peer
from ivhw.sw.qtest import MSIX_DATA_BASE, MSIX_RAM_BASE, PCI
from ivhw.sw.regmap import DOORBELL, MSIX_BAR, MSIX_ENTRY, PCI_REV1_REGS
from ivhw.sw.regscript import BAR_ADDRESSES

__all__ = ["ModelPeer"]

#: where the model's BARs are placed (the differential script's places: BAR2 above 4 GiB)
_BARS = BAR_ADDRESSES


class ModelPeer:
    """An ``IvshmemPciModel`` model joined to the server at ``socket_path`` through a ``Peer``."""

    def __init__(self, socket_path: str, vectors: int, timeout: float = 5.0) -> None:
        self.peer = Peer(socket_path, vectors=vectors, timeout=timeout)
        self.messages: list[tuple[int, int]] = []
        self.attached = attach_pci(
            self.peer, on_msi=lambda address, data: self.messages.append((address, data))
        )
        self.model = self.attached.model
        self._firmware()

    def _firmware(self) -> None:
        m = self.model
        for bar, address in _BARS.items():
            m.config_write(PCI.BAR0 + 4 * bar, address & 0xFFFF_FFFF)
            if bar == 2:
                m.config_write(PCI.BAR0 + 4 * bar + 4, address >> 32)
        m.config_write(PCI.COMMAND, PCI.COMMAND_MEMORY | PCI.COMMAND_MASTER, 2)
        for vector in range(m.vectors):
            entry = _BARS[1] + MSIX_BAR.entry(vector)
            address = MSIX_RAM_BASE + PCI.MSIX_ENTRY_SIZE * vector
            m.mem_write(entry + MSIX_ENTRY.MsgAddrLo.offset, address)
            m.mem_write(entry + MSIX_ENTRY.MsgAddrHi.offset, 0)
            m.mem_write(entry + MSIX_ENTRY.MsgData.offset, MSIX_DATA_BASE | vector)
            m.mem_write(entry + MSIX_ENTRY.VectorCtrl.offset, 0)
        cap = m.config_read(PCI.CAPABILITY_LIST, 1)
        m.config_write(cap + PCI.MSIX_FLAGS, PCI.MSIX_FLAGS_ENABLE, 2)

    @property
    def id(self) -> int:
        """The model's IVPosition, read through BAR0."""
        return self.reg_read("IVPosition")

    def reg_read(self, name: str) -> int:
        """Read a BAR0 register of the model through its memory decode."""
        value = self.model.mem_read(_BARS[0] + PCI_REV1_REGS[name].offset)
        assert value is not None
        return value

    def ring(self, peer: int, vector: int) -> None:
        """The model's driver writes its Doorbell register."""
        self.model.mem_write(_BARS[0] + PCI_REV1_REGS.Doorbell.offset, DOORBELL.pack(peer, vector))

    def shm_write(self, offset: int, data: int, size: int = 8) -> None:
        """Write through the model's BAR2."""
        self.model.mem_write(_BARS[2] + offset, data, size)

    def shm_read(self, offset: int, size: int = 8) -> int:
        """Read through the model's BAR2."""
        value = self.model.mem_read(_BARS[2] + offset, size)
        assert value is not None
        return value

    def pump(self, timeout: float = 0.0) -> list[Event]:
        """Feed what the peer saw into the model; the peer's events are returned."""
        return self.attached.pump(timeout)

    def wait_message(self, vector: int, timeout: float = 5.0) -> bool:
        """Pump until the model delivered MSI-X ``vector`` (taken from :attr:`messages`)."""
        wanted = (MSIX_RAM_BASE + PCI.MSIX_ENTRY_SIZE * vector, MSIX_DATA_BASE | vector)
        deadline = time.monotonic() + timeout
        while wanted not in self.messages:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            self.pump(min(remaining, 0.05))
        self.messages.remove(wanted)
        return True

    def wait_peer(self, peer: int, timeout: float = 5.0) -> None:
        """Pump until the model knows every vector of ``peer``."""
        deadline = time.monotonic() + timeout
        while self.model.peers.get(peer, 0) != self.model.vectors:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"model peer did not learn peer {peer}: {self.model.peers}")
            self.pump(min(remaining, 0.05))

    def close(self) -> None:
        """Leave the domain."""
        self.attached.close()
