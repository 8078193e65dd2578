"""Memory maps: complete, carried by every device bus, the same for gateware and model."""

from __future__ import annotations

import pytest

from ivhw.hdl.bus.axil import AXI4LiteFrontEnd
from ivhw.hdl.bus.wishbone import WishboneFrontEnd
from ivhw.hdl.flat import IvshmemFlat
from ivhw.hdl.pci import IvshmemPci
from ivhw.sw.memmap import Kind, MemoryMap, Window, flat_memory_map, pci_memory_map
from ivhw.sw.models.pci import IvshmemPciModel
from ivhw.sw.pcicfg import BARS
from ivhw.sw.regmap import FLAT_REGS, MSIX_BAR, PCI_REV1_REGS


def _covers(space: MemoryMap) -> None:
    at = 0
    for window in space:
        assert window.base == at, f"{space.name}: gap or overlap at {at:#x}"
        at = window.end
    assert at == space.size


def test_flat_map() -> None:
    space = flat_memory_map(4096)
    _covers(space)
    assert [(w.name, w.base, w.size, w.kind) for w in space] == [
        ("regs", 0, FLAT_REGS.size, Kind.REGISTERS),
        ("", FLAT_REGS.size, 4096 - FLAT_REGS.size, Kind.HOLE),
        ("shm", 4096, 4096, Kind.MEMORY),
    ]
    assert space.find(0x20).response == "DECERR" and space["regs"].refused == "SLVERR"
    assert space["regs"].register("DOORBELL") == FLAT_REGS.DOORBELL.offset
    assert space["shm"].address(8) == 4096 + 8
    with pytest.raises(ValueError, match="outside"):
        space["shm"].address(4096)
    with pytest.raises(ValueError, match="outside"):
        space.find(8192)
    with pytest.raises(KeyError, match="no window 'msix'"):
        space["msix"]


def test_every_flat_bus_carries_the_map() -> None:
    device = IvshmemFlat(vectors=2, shm_size=1 << 16)
    space = device.bus.memory_map
    assert device.memory_map is space and device.shm_base == space["shm"].base == 1 << 16
    assert [w.name for w in space] == ["regs", "", "shm"]
    for front_end, name in ((AXI4LiteFrontEnd, "axil"), (WishboneFrontEnd, "wb")):
        wrapped = front_end(IvshmemFlat(vectors=2, shm_size=1 << 16))
        assert getattr(wrapped, name).memory_map.table() == space.table()
        wrapped._MustUse__used = True  # type: ignore[attr-defined]  # inspected, not elaborated
        wrapped.device._MustUse__used = True  # type: ignore[attr-defined]
    device._MustUse__used = True  # type: ignore[attr-defined]


@pytest.mark.parametrize("interrupts", ["msix", "intx"])
def test_pci_map_is_the_models(interrupts: str) -> None:
    device = IvshmemPci(vectors=3, shm_size=1 << 20, interrupts=interrupts)
    device._MustUse__used = True  # type: ignore[attr-defined]
    model = IvshmemPciModel(vectors=3, shm_size=1 << 20, interrupts=interrupts)
    bars = device.memory_map
    assert bars is device.req.memory_map
    assert bars.table() == model.memory_map.table()
    assert list(bars.bars) == [bar.index for bar, _ in model.bars]
    for bar, size in model.bars:
        assert bars[bar.index].size == size
        _covers(bars[bar.index])
    assert bars.window("regs") == (BARS.regs.index, bars[0]["regs"])
    assert bars[0]["regs"].regs is PCI_REV1_REGS
    if interrupts == "msix":
        index, table = bars.window("msix_table")
        assert (index, table.size) == (BARS.msix.index, MSIX_BAR.entry(3))
    else:
        assert BARS.msix.index not in bars.bars


def test_placed_pci_map() -> None:
    bars = pci_memory_map(msix=True, vectors=2, shm_size=1 << 20)
    space = bars.placed({0: 0xFE00_0000, 1: 0xFE00_1000, 2: 0x1_0000_0000})
    _covers(space)
    assert space["regs"].register("Doorbell") == 0xFE00_000C
    assert space["shm"].base == 0x1_0000_0000
    assert space.find(0xFE00_0100).response == "UR"  # between BAR0 and BAR1
    assert space.find(0xFE00_1040).response == "SC, reads 0"  # BAR1 past the table
    with pytest.raises(ValueError, match="not aligned"):
        bars.placed({0: 0xFE00_0080, 1: 0xFE00_1000, 2: 0x1_0000_0000})
    with pytest.raises(ValueError, match="no base for BAR2"):
        bars.placed({0: 0xFE00_0000, 1: 0xFE00_1000})


def test_overlapping_windows_are_refused() -> None:
    with pytest.raises(ValueError, match="does not fit"):
        MemoryMap("m", 0x100, [
            Window("a", 0, 0x80, Kind.MEMORY, "OKAY"), Window("b", 0x40, 0x80, Kind.MEMORY, "OKAY"),
        ], miss="DECERR")  # fmt: skip
