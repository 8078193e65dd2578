"""How QEMU turns one guest access into calls of a device's 32-bit register handlers.

Both ivshmem register windows (PCI BAR0, ivshmem-flat region 0) register
``MemoryRegionOps`` with ``.impl.min_access_size = .impl.max_access_size = 4``
and no ``.valid`` limits. QEMU's memory core (``memory_region_access_valid``,
``access_with_adjusted_size``) then does, for an access of ``size`` bytes at
window offset ``offset``:

* ``offset % size != 0``: invalid (``.valid.unaligned`` is false): a read
  returns 0, a write is dropped, the handler is not called;
* ``size`` 1 or 2: the handler is called once, as a 4-byte access **at the
  unaligned offset itself**; a read keeps the low ``size`` bytes of what it
  returns (so only the low byte/half of a register can be read, with the full
  side effect, e.g. IntrStatus still clears); a write passes the value
  zero-extended to 32 bits (what the handler then does with the offset is the
  device's business: the PCI device masks it with ``0xFC``, ivshmem-flat does not);
* ``size`` 4: one handler call;
* ``size`` 8: two handler calls, at ``offset`` (low dword) then ``offset + 4``.

A bus with byte enables (PCIe, AXI) carries such an access as one dword plus a
byte mask; :func:`access_of_mask` maps the masks a CPU can produce back to
``(offset, size)``.
"""

from __future__ import annotations

from collections.abc import Callable

__all__ = ["SIZES", "access_of_mask", "dispatch_read", "dispatch_write"]

#: access sizes a CPU issues
SIZES = (1, 2, 4, 8)

_M32 = 0xFFFF_FFFF

# byte-enable mask of one dword -> (byte offset in the dword, size): the naturally
# aligned accesses; any other mask is an access QEMU would reject as unaligned.
_MASKS = {
    0b0001: (0, 1), 0b0010: (1, 1), 0b0100: (2, 1), 0b1000: (3, 1),
    0b0011: (0, 2), 0b1100: (2, 2),
    0b1111: (0, 4),
}  # fmt: skip


def access_of_mask(mask: int) -> tuple[int, int] | None:
    """``(byte offset in the dword, size)`` of a 4-bit byte-enable mask, or ``None``.

    ``None`` means no CPU access of that shape is valid (empty mask, three bytes,
    holes, or a 2-byte access at byte 1).
    """
    if not 0 <= mask <= 0xF:
        raise ValueError(f"byte-enable mask must be 4 bits, not {mask!r}")
    return _MASKS.get(mask)


def _check(offset: int, size: int, window: int) -> None:
    if size not in SIZES:
        raise ValueError(f"access size must be one of {SIZES}, not {size!r}")
    if offset < 0 or offset + size > window:
        raise ValueError(
            f"access of {size} bytes at {offset:#x} is outside the {window}-byte window"
        )


def dispatch_read(
    read32: Callable[[int], int], offset: int, size: int, window: int, min_size: int = 1
) -> int | None:
    """Read ``size`` bytes at ``offset`` through a 4-byte-only handler; ``None`` if invalid.

    An invalid access (unaligned, or smaller than ``min_size``: QEMU
    ``.valid.min_access_size``) reads 0 on the bus; the caller counts it.
    """
    _check(offset, size, window)
    if offset % size or size < min_size:
        return None
    if size == 8:
        return (read32(offset) & _M32) | (read32(offset + 4) & _M32) << 32
    return read32(offset) & ((1 << (8 * size)) - 1)


def dispatch_write(
    write32: Callable[[int, int], None],
    offset: int,
    data: int,
    size: int,
    window: int,
    min_size: int = 1,
) -> bool:
    """Write ``size`` bytes at ``offset`` through a 4-byte-only handler; ``False`` if dropped."""
    _check(offset, size, window)
    if not 0 <= data < 1 << (8 * size):
        raise ValueError(f"data {data!r} does not fit in {size} bytes")
    if offset % size or size < min_size:
        return False
    if size == 8:
        write32(offset, data & _M32)
        write32(offset + 4, data >> 32)
    else:
        write32(offset, data)
    return True
