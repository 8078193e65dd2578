"""Register decode generated from a register map: one generator for every device.

A device declares its registers once, in :mod:`ivhw.sw.regmap`, and builds a
:class:`RegisterDecode` from that map with its sources (the values of R
fields) and hooks (what a write to a register with a hook does). The decode
owns the storage of every stored field (RW, RC, RW1C, RW1S) and, for one bus
access, emits the whole behaviour the map declares, with the same rules as the
model (:class:`ivhw.sw.models.registers.RegisterFile`):

- byte enables 0: no effect, reads 0;
- byte enables no CPU access produces (``regmap.CPU_MASKS``, at least
  ``min_access`` bytes): refused, no effect (the device counts and answers it);
- a read reaches a register only if byte lane 0 is enabled (QEMU calls the
  handler at the access's own offset): the enabled bytes of the register, RC
  fields clear; otherwise 0;
- a write acts with the enabled bytes moved down to bit 0 (QEMU zero-extends a
  narrow write); with ``narrow_writes="exact"`` only if lane 0 is enabled;
- offsets the map leaves out: reads 0, writes ignored.

A hook is a function ``hook(m, value, old) -> bool`` that emits the statements
of the write cycle; ``value`` is the written word (the register's writable
bits), ``old`` its storage before the write (0 without storage). It returns
``True`` if it takes over the bus cycle (it set ``m.next`` to its own state and
completes the access itself, e.g. once a doorbell is queued), ``False`` if the
access completes now. The device may also assign the storage signals itself
(:meth:`RegisterDecode.storage`): set a status bit on an event, clear a
one-shot enable on delivery.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from amaranth.hdl import Cat, Const, Module, Mux, Signal, Value

from ..sw.regmap import CPU_MASKS, Action, RegisterMap

__all__ = ["HdlHook", "RegisterDecode", "cpu_access"]

#: ``hook(m, value, old) -> bool`` (see the module docs)
HdlHook = Callable[[Module, Value, Value], bool]


def cpu_access(m: Module, be: Value, min_access: int = 1) -> tuple[Signal, Signal]:
    """``(valid, lane)`` of the byte enables ``be``: a CPU access, and its first byte lane.

    ``valid`` is 1 when ``be`` is an access a CPU makes (``regmap.CPU_MASKS``) of
    at least ``min_access`` bytes; ``lane`` is the byte offset of that access in
    the word.
    """
    valid = Signal(name="cpu_access")
    lane = Signal(range(4), name="cpu_lane")
    with m.Switch(be):
        for mask, (at, size) in CPU_MASKS.items():
            if size >= min_access:
                with m.Case(mask):
                    m.d.comb += [valid.eq(1), lane.eq(at)]
    return valid, lane


class RegisterDecode:
    """The gateware of one register window, generated from its map.

    Parameters
    ----------
    regmap : RegisterMap
    sources : mapping
        R field path (``regmap.sources()``) -> a value (``Value`` or int).
    hooks : mapping
        Hook name (``regmap.hooks()``) -> :data:`HdlHook`.

    Raises
    ------
    ValueError
        ``sources`` or ``hooks`` do not name exactly what the map needs.
    """

    def __init__(
        self,
        regmap: RegisterMap,
        *,
        sources: Mapping[str, Value | int] | None = None,
        hooks: Mapping[str, HdlHook] | None = None,
    ) -> None:
        sources, hooks = dict(sources or {}), dict(hooks or {})
        regmap.check_bindings(sources, hooks)
        self.map = regmap
        self._sources = sources
        self._hooks = hooks
        self._storage = {
            reg.name: Signal(32, init=reg.reset & reg.stored_mask, name=f"reg_{reg.name}")
            for reg in regmap
            if reg.stored_mask
        }

    def storage(self, name: str) -> Signal:
        """The storage of register ``name`` (its stored bits; the others stay 0)."""
        try:
            return self._storage[name]
        except KeyError:
            raise KeyError(f"{self.map.name}: {name} has no stored field") from None

    def field(self, register: str, name: str) -> Value:
        """The storage of field ``name`` of ``register``."""
        placed = self.map[register].field(name)
        if not placed.action.stored:
            raise KeyError(f"{register}.{name} is {placed.action.name}, not stored")
        return self.storage(register)[placed.lsb : placed.lsb + placed.width]

    def _read_value(self, reg_name: str) -> Value:
        reg = self.map[reg_name]
        parts: list[Value] = []
        if reg.stored_mask:
            parts.append(self._storage[reg.name] & reg.read_mask)
        for f in reg.fields:
            if f.action is Action.R:
                source = Value.cast(self._sources[f.path])[: f.width]
                parts.append(Cat(Const(0, f.lsb), source) if f.lsb else source)
        value: Value = Const(0, 32)
        for part in parts:
            value = value | part
        return value

    def _store(self, m: Module, reg_name: str, value: Value) -> None:
        reg = self.map[reg_name]
        if not reg.stored_mask:
            return
        old = self._storage[reg.name]

        def mask(*actions: Action) -> int:
            return sum(f.mask for f in reg.fields if f.action in actions)

        take, clear, setb = mask(Action.RW, Action.RC), mask(Action.RW1C), mask(Action.RW1S)
        new = old & ~Const(take, 32) | value & take
        if clear:
            new = new & ~(value & clear)
        if setb:
            new = new | (value & setb)
        m.d.sync += old.eq(new)

    def access(
        self,
        m: Module,
        *,
        addr: Value,
        write: Value,
        be: Value,
        data: Value,
        done: Callable[..., None],
        refuse: Callable[[], None],
    ) -> None:
        """Emit one bus access to the window (inside the device's FSM state that serves it).

        Parameters
        ----------
        addr : Value
            Byte address; its bits below the window size select the register.
        write : Value
            1 for a write.
        be : Value
            The 4 byte enables.
        data : Value
            Write data (byte lanes as on the bus).
        done : callable
            ``done()`` completes a write, ``done(data)`` a read with ``data``.
        refuse : callable
            Completes an access whose byte enables no CPU access produces.
        """
        regmap = self.map
        valid, lane = cpu_access(m, be, regmap.min_access)
        lane_mask = Cat(*(be[i].replicate(8) for i in range(4)))
        shifted = Signal(32, name=f"{_ident(regmap.name)}_w_value")
        enabled = data & lane_mask
        with m.Switch(lane):
            for at in range(4):
                with m.Case(at):
                    m.d.comb += shifted.eq(enabled[8 * at :])
        index = addr[2 : (regmap.size - 1).bit_length()]
        at_register = be[0]
        with m.If(be == 0):
            done(0)
        with m.Elif(~valid):
            refuse()
        with m.Elif(write):
            reach = at_register if regmap.narrow_writes == "exact" else Const(1)
            with m.Switch(index):
                for reg in regmap:
                    if not reg.write_mask:
                        continue
                    with m.Case(reg.offset >> 2):
                        with m.If(reach):
                            value = shifted & reg.write_mask
                            self._store(m, reg.name, value)
                            took = False
                            if reg.hook is not None:
                                old = self._storage.get(reg.name, Const(0, 32))
                                took = bool(self._hooks[reg.hook](m, value, old))
                            if not took:
                                done()
                        with m.Else():
                            done()
                with m.Default():
                    done()
        with m.Else():
            r_value = Signal(32, name=f"{_ident(regmap.name)}_r_value")
            with m.Switch(index):
                for reg in regmap:
                    if not reg.read_mask:
                        continue
                    with m.Case(reg.offset >> 2):
                        m.d.comb += r_value.eq(self._read_value(reg.name))
                        rc = sum(f.mask for f in reg.fields if f.action is Action.RC)
                        if rc:
                            storage = self._storage[reg.name]
                            with m.If(at_register):
                                m.d.sync += storage.eq(storage & ~Const(rc, 32))
            done(Mux(at_register, r_value & lane_mask, 0))


def _ident(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name)
