"""The configuration header of the ivshmem PCI endpoint as constants for the gateware.

:func:`config_layout` turns the definitions of :mod:`ivhw.sw.pcicfg` (IDs,
BAR layout, MSI-X capability, writable bits) into per-dword reset values and
write masks. The endpoint stores only dwords with writable bits; the rest
read as constants, so the header costs a handful of registers.
"""

from __future__ import annotations

from dataclasses import dataclass

from ...sw.pcicfg import (
    CFG,
    CLASS_CODE,
    CMD_WMASK,
    CONFIG_SIZE,
    DEVICE_ID,
    MSIX_CAP,
    REVISION_ID,
    STATUS,
    SUBSYSTEM_ID,
    SUBSYSTEM_VENDOR_ID,
    VENDOR_ID,
    BarLayout,
    InterruptPin,
)

__all__ = ["ConfigLayout", "config_layout"]


@dataclass(frozen=True)
class ConfigLayout:
    """Reset value and write mask of each config dword (index = offset / 4)."""

    init: tuple[int, ...]
    wmask: tuple[int, ...]

    def writable(self) -> list[int]:
        """Indices of the dwords that have writable bits."""
        return [i for i, mask in enumerate(self.wmask) if mask]


def config_layout(
    *, msix: bool, intx: bool, vectors: int, bars: list[tuple[BarLayout, int]]
) -> ConfigLayout:
    """The header of a variant: MSI-X capability or not, INTA pin or not, its BARs and sizes."""
    init = bytearray(CONFIG_SIZE)
    wmask = bytearray(CONFIG_SIZE)

    def put(off: int, value: int, size: int, buf: bytearray = init) -> None:
        buf[off : off + size] = int(value).to_bytes(size, "little")

    put(CFG.VENDOR_ID, VENDOR_ID, 2)
    put(CFG.DEVICE_ID, DEVICE_ID, 2)
    put(CFG.REVISION_ID, REVISION_ID, 1)
    put(CFG.CLASS_PROG, CLASS_CODE, 3)
    put(CFG.SUBSYSTEM_VENDOR_ID, SUBSYSTEM_VENDOR_ID, 2)
    put(CFG.SUBSYSTEM_ID, SUBSYSTEM_ID, 2)
    put(CFG.COMMAND, CMD_WMASK, 2, wmask)
    wmask[CFG.CACHE_LINE_SIZE] = 0xFF
    wmask[CFG.INTERRUPT_LINE] = 0xFF
    put(CFG.INTERRUPT_PIN, InterruptPin.INTA if intx else InterruptPin.NONE, 1)
    for bar, size in bars:
        put(bar.offset, bar.type, 4)
        put(bar.offset, BarLayout.wmask(size, bar.is64), 8 if bar.is64 else 4, wmask)
        wmask[bar.offset] &= 0xF0  # the type bits are read-only
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

    def dwords(buf: bytearray) -> tuple[int, ...]:
        return tuple(int.from_bytes(buf[i : i + 4], "little") for i in range(0, len(buf), 4))

    return ConfigLayout(dwords(init), dwords(wmask))
