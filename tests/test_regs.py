"""The register vocabulary, the model's dispatch and the generated gateware agree, action by action.

A window that declares every action (R, W, RW, RC, RW1C, RW1S, reserved, a
hook that completes at once and one that takes over the bus cycle) is built
twice from one :class:`RegisterMap`: as the model's :class:`RegisterFile` and
as :class:`ivhw.hdl.regs.RegisterDecode` in Amaranth's simulator. Random
accesses with every byte-enable pattern must give the same read data, the same
refusals and the same hook calls.
"""

# Nested `with m.State(...)` / `with m.If(...)` blocks mirror the hardware's decision tree.
# ruff: noqa: SIM117

from __future__ import annotations

import random

import pytest
from amaranth.hdl import Module
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out
from amaranth.sim import Simulator

from ivhw.hdl.regs import RegisterDecode
from ivhw.sw.models.common import Counters
from ivhw.sw.models.registers import RegisterFile
from ivhw.sw.regmap import (
    CPU_MASKS,
    RC,
    RSVD,
    RW,
    RW1C,
    RW1S,
    Field,
    R,
    Register,
    RegisterMap,
    W,
)

IDENT = 0x1234_5678


def _map(narrow_writes: str = "exact", min_access: int = 1) -> RegisterMap:
    return RegisterMap("test", 32, [
        Register("Ctrl", 0x00, fields=[
            Field("enable", 1, RW, reset=1), Field.reserved(3), Field("mode", 4, RW, reset=5),
            Field("status", 8, RC), Field("sticky", 8, RW1C, reset=0xA5),
            Field("set", 8, RW1S),
        ]),
        Register("ID", 0x04, R, doc="a constant"),
        Register("Kick", 0x08, fields=[
            Field("vector", 8, W), Field.reserved(8), Field("peer", 16, W),
        ], hook="kick"),
        Register("State", 0x0C, RW, hook="state"),
        Register("Hole", 0x10, RSVD),
    ], narrow_writes=narrow_writes, min_access=min_access)  # fmt: skip


def test_vocabulary_layout() -> None:
    regs = _map()
    ctrl = regs.Ctrl
    assert [(f.path, f.lsb, f.width) for f in ctrl.fields] == [
        ("Ctrl.enable", 0, 1), ("Ctrl.mode", 4, 4), ("Ctrl.status", 8, 8),
        ("Ctrl.sticky", 16, 8), ("Ctrl.set", 24, 8),
    ]  # fmt: skip
    assert ctrl.reset == 0x00A5_0051
    assert ctrl.stored_mask == 0xFFFF_FFF1
    assert regs.Kick.write_mask == 0xFFFF_00FF and regs.Kick.read_mask == 0
    assert regs.sources() == ["ID"] and regs.hooks() == ["kick", "state"]
    assert regs.Kick.bits() == "31:16 peer (W), 7:0 vector (W)"
    assert "| 0Ch | State | 31:0 (RW) |" in regs.table()


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: Register("X", 0, R, fields=[Field("a", 1, R)]), "either action or fields"),
        (lambda: Register("X", 0, fields=[Field("a", 31, RW), Field("b", 2, RW)]), "33 bits"),
        (lambda: Register("X", 0, fields=[Field("a", 1, W)]), "without a hook"),
        (lambda: Register("X", 0, fields=[Field("a", 1, RW), Field("a", 1, RW)]), "share"),
        (lambda: Field("a", 2, RW, reset=4), "does not fit"),
        (lambda: Field("a", 2, W, reset=1), "no reset"),
        (lambda: RegisterMap("m", 8, [Register("X", 8, RW)]), "not a word"),
        (lambda: RegisterMap("m", 8, [Register("X", 0, RW), Register("Y", 0, RW)]), "share"),
    ],
)
def test_bad_declarations_are_refused(make: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make()  # type: ignore[operator]


def test_bindings_must_match_the_map() -> None:
    with pytest.raises(ValueError, match=r"sources missing \['ID'\]"):
        RegisterFile(_map(), Counters(), hooks={"kick": print, "state": print})
    with pytest.raises(ValueError, match=r"unknown hooks \['ring'\]"):
        RegisterFile(
            _map(), Counters(), sources={"ID": 1},
            hooks={"kick": print, "state": print, "ring": print},
        )  # fmt: skip
    with pytest.raises(ValueError, match="hooks missing"):
        RegisterDecode(_map(), sources={"ID": 1}, hooks={})


def test_model_actions() -> None:
    calls: list[tuple[str, int, int]] = []
    regs = RegisterFile(
        _map(), Counters(), sources={"ID": lambda: IDENT},
        hooks={"kick": lambda v, o: calls.append(("kick", v, o)),
               "state": lambda v, o: calls.append(("state", v, o))},
    )  # fmt: skip
    assert regs.read_mask(0) == 0x00A5_0051
    regs.write_mask(0, 0xFFFF_FFFF)  # RW takes, RC stores, RW1C clears, RW1S sets
    assert regs.read_mask(0) == 0xFF00_FFF1
    assert regs.read_mask(0) == 0xFF00_00F1  # the RC field cleared on the read
    regs.set("Ctrl", regs.get("Ctrl") & ~1)  # the device clears "enable" (one-shot)
    assert regs.read_mask(0) & 1 == 0
    regs.write_mask(8, 0xFFFF_FFFF)
    regs.write_mask(0xC, 7)
    regs.write_mask(0xC, 9)
    assert calls == [("kick", 0xFFFF_00FF, 0), ("state", 7, 0), ("state", 9, 7)]
    assert regs.read_mask(4) == IDENT and regs.read_mask(8) == 0 and regs.read_mask(0x10) == 0


class _Harness(wiring.Component):
    """One :class:`RegisterDecode` behind a request/ack port, as a device puts it."""

    def __init__(self, regmap: RegisterMap) -> None:
        self._map = regmap
        super().__init__({
            "stb": In(1), "addr": In(5), "we": In(1), "be": In(4), "w_data": In(32),
            "ack": Out(1), "refused": Out(1), "r_data": Out(32),
            "hook_name": Out(2), "hook_value": Out(32), "hook_old": Out(32),
        })  # fmt: skip

    def elaborate(self, platform: object) -> Module:
        m = Module()
        m.d.sync += [self.ack.eq(0), self.hook_name.eq(0)]

        def done(data: object = 0) -> None:
            m.d.sync += [self.ack.eq(1), self.refused.eq(0), self.r_data.eq(data)]

        def refuse() -> None:
            m.d.sync += [self.ack.eq(1), self.refused.eq(1), self.r_data.eq(0)]

        def hook(code: int, take_over: bool):  # type: ignore[no-untyped-def]
            def run(m: Module, value: object, old: object) -> bool:
                m.d.sync += [
                    self.hook_name.eq(code), self.hook_value.eq(value), self.hook_old.eq(old)
                ]  # fmt: skip
                if take_over:
                    m.next = "LATE"
                return take_over

            return run

        decode = RegisterDecode(
            self._map, sources={"ID": IDENT},
            hooks={"kick": hook(1, True), "state": hook(2, False)},
        )  # fmt: skip
        with m.FSM():
            with m.State("IDLE"):
                with m.If(self.stb & ~self.ack):
                    decode.access(
                        m, addr=self.addr, write=self.we, be=self.be, data=self.w_data,
                        done=done, refuse=refuse,
                    )  # fmt: skip
            with m.State("LATE"):  # a hook that needs a cycle more, as a doorbell does
                done()
                m.next = "IDLE"
        return m


@pytest.mark.parametrize(
    ("narrow_writes", "min_access"), [("exact", 1), ("dword", 1), ("dword", 4)]
)
def test_gateware_matches_model(narrow_writes: str, min_access: int) -> None:
    regmap = _map(narrow_writes, min_access)
    calls: list[tuple[int, int, int]] = []
    model = RegisterFile(
        regmap, Counters(), sources={"ID": IDENT},
        hooks={"kick": lambda v, o: calls.append((1, v, o)),
               "state": lambda v, o: calls.append((2, v, o))},
    )  # fmt: skip
    dut = _Harness(regmap)
    rng = random.Random(f"{narrow_writes}{min_access}")
    masks = [*CPU_MASKS, 0, 0b0111, 0b0101, 0b0110, 0b1110]
    offsets = [reg.offset for reg in regmap] + [0x14, 0x1C]  # and two unmapped words

    def mask() -> int:
        return 0xF if rng.random() < 0.4 else rng.choice(masks)

    ops = [
        (rng.choice(offsets), rng.random() < 0.5, mask(), rng.getrandbits(32)) for _ in range(1000)
    ]
    seen: list[tuple[int, int, int]] = []
    checked = []

    async def bench(ctx) -> None:  # type: ignore[no-untyped-def]
        for n, (offset, write, mask, data) in enumerate(ops):
            before = model.counters.bad_access
            if write:
                model.write_mask(offset, data, mask)
                want = 0
            else:
                want = model.read_mask(offset, mask)
            want_refused = model.counters.bad_access != before
            ctx.set(dut.stb, 1)
            ctx.set(dut.addr, offset)
            ctx.set(dut.we, write)
            ctx.set(dut.be, mask)
            ctx.set(dut.w_data, data)
            while True:
                await ctx.tick()
                if ctx.get(dut.hook_name):
                    seen.append((ctx.get(dut.hook_name), ctx.get(dut.hook_value),
                                 ctx.get(dut.hook_old)))  # fmt: skip
                if ctx.get(dut.ack):
                    break
            where = f"op {n} {'W' if write else 'R'} {offset:#x} be={mask:#06b} {data:#x}"
            assert ctx.get(dut.refused) == want_refused, where
            assert ctx.get(dut.r_data) == want, f"{where}: {ctx.get(dut.r_data):#x} vs {want:#x}"
            assert seen == calls, where
            checked.append(n)
            ctx.set(dut.stb, 0)
            await ctx.tick()

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    assert len(checked) == len(ops)
    assert calls and any(kind == 1 for kind, _, _ in calls), "no hook ran: the ops are too few"
