"""Register-accurate models of the ivshmem devices: the oracle the HDL is checked against.

* :class:`IvshmemFlatModel` -- ivshmem-flat (sysbus, 16-byte registers, one IRQ);
* :class:`IvshmemPciModel` -- ivshmem PCI revision 1 (``ivshmem-doorbell`` with MSI-X or
  legacy INTx, ``ivshmem-plain``);
* :mod:`.attach` -- a model bound to a real ``ivhw.sw.peer.Peer``: a working peer.

Every offset, access type and reset value comes from ``ivhw.sw.regmap`` (register
windows, MSI-X table) and ``ivhw.sw.pcicfg`` (config space).
"""

from __future__ import annotations

from .common import Counters, PeerTable, SharedMemory
from .flat import IvshmemFlatModel
from .pci import IvshmemPciModel

__all__ = ["Counters", "IvshmemFlatModel", "IvshmemPciModel", "PeerTable", "SharedMemory"]
