"""Register windows of the models: dispatch generated from ``ivhw.sw.regmap``, QEMU's access rules.

:class:`RegisterFile` is the model side of a :class:`~ivhw.sw.regmap.RegisterMap`:
storage for every stored field, the device's sources for R fields, its hooks
for the registers that name one, all dispatched from the map; no model writes
its own ``switch (offset)``. :class:`MmioWindow` is the access layer in front of
any 4-byte handler pair, as QEMU's memory core is.

How QEMU turns one guest access into calls of a device's 32-bit register handlers.

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
byte mask; :func:`access_of_mask` maps the masks a CPU can produce
(``regmap.CPU_MASKS``) back to ``(offset, size)``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from ..regmap import CPU_MASKS, Action, RegisterMap
from .common import Counters

__all__ = ["SIZES", "HasRegisters", "MmioWindow", "RegisterFile", "access_of_mask"]

#: access sizes a CPU issues
SIZES = (1, 2, 4, 8)

_M32 = 0xFFFF_FFFF

#: ``hook(value, old)``: a register naming the hook was written with ``value`` (its
#: writable bits, storage already updated); ``old`` is what its storage held before
Hook = Callable[[int, int], None]
#: an R field's value: a constant or a callable returning it
Source = Callable[[], int] | int


def access_of_mask(mask: int) -> tuple[int, int] | None:
    """``(byte offset in the dword, size)`` of a 4-bit byte-enable mask, or ``None``.

    ``None`` means no CPU access of that shape is valid (empty mask, three bytes,
    holes, or a 2-byte access at byte 1).
    """
    if not 0 <= mask <= 0xF:
        raise ValueError(f"byte-enable mask must be 4 bits, not {mask!r}")
    return CPU_MASKS.get(mask)


class MmioWindow:
    """QEMU's memory core in front of a 4-byte-only handler pair (see the module docs).

    Parameters
    ----------
    size : int
        Window size in bytes.
    counters : Counters
        ``bad_access`` counts every refused access.
    read32, write32 : callable
        The device's handlers: ``read32(offset) -> int``, ``write32(offset, data)``,
        called at the (possibly unaligned) offset QEMU calls them with.
    min_access : int
        QEMU ``.valid.min_access_size``: smaller accesses are refused.
    """

    def __init__(
        self,
        size: int,
        counters: Counters,
        read32: Callable[[int], int],
        write32: Callable[[int, int], None],
        min_access: int = 1,
    ) -> None:
        self.size = size
        self.counters = counters
        self._read32 = read32
        self._write32 = write32
        self._min = min_access

    def _valid(self, offset: int, size: int) -> bool:
        if size not in SIZES:
            raise ValueError(f"access size must be one of {SIZES}, not {size!r}")
        if offset < 0 or offset + size > self.size:
            raise ValueError(
                f"access of {size} bytes at {offset:#x} is outside the {self.size}-byte window"
            )
        if offset % size or size < self._min:
            self.counters.bad_access += 1
            return False
        return True

    def read(self, offset: int, size: int = 4) -> int:
        """Read ``size`` bytes at ``offset``; a refused access reads 0 (counted)."""
        if not self._valid(offset, size):
            return 0
        if size == 8:
            return (self._read32(offset) & _M32) | (self._read32(offset + 4) & _M32) << 32
        return self._read32(offset) & ((1 << (8 * size)) - 1)

    def write(self, offset: int, data: int, size: int = 4) -> None:
        """Write ``size`` bytes at ``offset``; a refused access is dropped (counted)."""
        if not 0 <= data < 1 << (8 * size):
            raise ValueError(f"data {data!r} does not fit in {size} bytes")
        if not self._valid(offset, size):
            return
        if size == 8:
            self._write32(offset, data & _M32)
            self._write32(offset + 4, data >> 32)
        else:
            self._write32(offset, data)

    @staticmethod
    def _dword(offset: int) -> None:
        if offset % 4:
            raise ValueError(f"dword offset must be a multiple of 4, not {offset:#x}")

    def read_mask(self, offset: int, mask: int = 0xF) -> int:
        """Read dword ``offset`` with byte enables ``mask``, as a bus with byte enables does.

        The enabled bytes of the result hold the access QEMU makes for ``mask``
        (``access_of_mask``); a mask no CPU makes is refused (reads 0, counted),
        mask 0 reads 0 without effect.
        """
        self._dword(offset)
        access = access_of_mask(mask)
        if access is None:
            if mask:
                self.counters.bad_access += 1
            return 0
        lane, size = access
        return self.read(offset + lane, size) << (8 * lane)

    def write_mask(self, offset: int, data: int, mask: int = 0xF) -> None:
        """Write dword ``offset`` with byte enables ``mask`` (bit n = byte n of ``data``)."""
        self._dword(offset)
        access = access_of_mask(mask)
        if access is None:
            if mask:
                self.counters.bad_access += 1
            return
        lane, size = access
        self.write(offset + lane, (data >> (8 * lane)) & ((1 << (8 * size)) - 1), size)


class RegisterFile(MmioWindow):
    """The registers of one window, their behaviour generated from its :class:`RegisterMap`.

    Stored fields (RW, RC, RW1C, RW1S) live here; R fields read the device's
    ``sources``; a write to a register with a hook calls the device's hook of
    that name. The handlers follow QEMU's: a read matches the exact offset; a
    narrow write matches the exact offset or its dword (``regmap.narrow_writes``).

    Parameters
    ----------
    regmap : RegisterMap
    counters : Counters
        The device's counters (``bad_access``).
    sources : mapping
        R field path (``regmap.sources()``) -> value or callable returning it.
    hooks : mapping
        Hook name (``regmap.hooks()``) -> ``hook(value, old)``.
    on_change : callable or None
        Called after any access that may have changed storage (e.g. to
        re-evaluate an interrupt line).

    Raises
    ------
    ValueError
        ``sources`` or ``hooks`` do not name exactly what the map needs.
    """

    def __init__(
        self,
        regmap: RegisterMap,
        counters: Counters,
        *,
        sources: Mapping[str, Source] | None = None,
        hooks: Mapping[str, Hook] | None = None,
        on_change: Callable[[], None] | None = None,
    ) -> None:
        sources, hooks = dict(sources or {}), dict(hooks or {})
        regmap.check_bindings(sources, hooks)
        super().__init__(regmap.size, counters, self.read32, self.write32, regmap.min_access)
        self.map = regmap
        self._sources = sources
        self._hooks = hooks
        self._on_change = on_change
        self._values: dict[str, int] = {}
        self.reset()

    def reset(self) -> None:
        """Every stored field to its reset value."""
        self._values = {
            reg.name: reg.reset & reg.stored_mask for reg in self.map if reg.stored_mask
        }

    def get(self, name: str) -> int:
        """The stored bits of register ``name`` (0 where it has no storage)."""
        return self._values.get(self.map[name].name, 0)

    def set(self, name: str, value: int) -> None:
        """Store ``value`` into register ``name``'s stored fields (the device's own update)."""
        reg = self.map[name]
        self._values[reg.name] = value & reg.stored_mask
        if self._on_change is not None:
            self._on_change()

    def _source(self, path: str) -> int:
        source = self._sources[path]
        return source() if callable(source) else source

    def read32(self, offset: int) -> int:
        """The handler's read at ``offset``: the register there, or 0."""
        reg = self.map.at(offset) if offset % 4 == 0 else None
        if reg is None:
            return 0
        stored = self._values.get(reg.name, 0)
        value = stored & reg.read_mask
        cleared = stored
        for f in reg.fields:
            if f.action is Action.R:
                value |= (self._source(f.path) << f.lsb) & f.mask
            elif f.action is Action.RC:
                cleared &= ~f.mask
        if cleared != stored:
            self._values[reg.name] = cleared
            if self._on_change is not None:
                self._on_change()
        return value

    def write32(self, offset: int, data: int) -> None:
        """The handler's write of ``data`` at ``offset``."""
        if self.map.narrow_writes == "dword":
            offset &= ~3
        reg = self.map.at(offset) if offset % 4 == 0 else None
        if reg is None:
            return
        data &= reg.write_mask
        old = self._values.get(reg.name, 0)
        new = old
        for f in reg.fields:
            bits = data & f.mask
            if f.action in (Action.RW, Action.RC):
                new = new & ~f.mask | bits
            elif f.action is Action.RW1C:
                new &= ~bits
            elif f.action is Action.RW1S:
                new |= bits
        if reg.stored_mask:
            self._values[reg.name] = new
        if reg.hook is not None:
            self._hooks[reg.hook](data, old)
        if self._on_change is not None:
            self._on_change()


class HasRegisters:
    """``read_register`` / ``write_register`` of a model whose main window is ``self.regs``."""

    regs: MmioWindow

    def read_register(self, offset: int, mask: int = 0xF) -> int:
        """Read the register dword at ``offset`` with byte enables ``mask``."""
        return self.regs.read_mask(offset, mask)

    def write_register(self, offset: int, data: int, mask: int = 0xF) -> None:
        """Write the register dword at ``offset`` with byte enables ``mask``."""
        self.regs.write_mask(offset, data, mask)
