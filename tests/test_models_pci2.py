"""The ivshmem revision 2 model: both layouts, both interrupt modes, sections, state, one-shot."""

from __future__ import annotations

import pytest

from ivhw.sw.models.pci2 import IvshmemPci2
from ivhw.sw.pcicfg import BARS, CFG, CMD, MSIX_CAP, REV2_IDS, STATUS, VENDOR_CAP
from ivhw.sw.regmap import DOORBELL, MSIX_BAR, MSIX_ENTRY, PCI_REV2_REGS
from ivhw.sw.sections import Layout

SHM = 1 << 16
OUT = 4096
BAR0, BAR2 = 0x1000_0000, 0x2_0000_0000


class Bus:
    def __init__(self) -> None:
        self.msi: list[tuple[int, int]] = []
        self.rings: list[tuple[int, int]] = []
        self.intx: list[bool] = []


def make(
    layout: str = "final", interrupts: str = "msix", **kwargs: object
) -> tuple[IvshmemPci2, Bus]:
    bus = Bus()
    kwargs.setdefault("shm_size", SHM)
    kwargs.setdefault("max_peers", 4)
    kwargs.setdefault("output_section_size", OUT)
    kwargs.setdefault("vectors", 4)
    dev = IvshmemPci2(
        layout=layout,  # type: ignore[arg-type]
        interrupts=interrupts,  # type: ignore[arg-type]
        on_msi=lambda a, d: bus.msi.append((a, d)),
        on_doorbell=lambda p, v: bus.rings.append((p, v)),
        on_intx=bus.intx.append,
        **kwargs,  # type: ignore[arg-type]
    )
    return dev, bus


def reg(dev: IvshmemPci2, name: str) -> int:
    return PCI_REV2_REGS[dev.layout_name][name].offset


def caps(dev: IvshmemPci2) -> list[tuple[int, int]]:
    """The capability list as (offset, ID)."""
    out, ptr = [], dev.config_read(CFG.CAPABILITY_LIST, 1)
    while ptr:
        out.append((ptr, dev.config_read(ptr, 1)))
        ptr = dev.config_read(ptr + 1, 1)
    return out


def enable(dev: IvshmemPci2, *, master: bool = True) -> None:
    """Map BAR0/BAR2, memory and bus master on, MSI-X enabled, Interrupt Control on."""
    dev.config_write(BARS.regs.offset, BAR0)
    if dev.bar2:
        dev.config_write(BARS.shm.offset, BAR2 & 0xFFFFFFFF)
        dev.config_write(BARS.shm.offset + 4, BAR2 >> 32)
    dev.config_write(CFG.COMMAND, CMD.MEMORY | (CMD.MASTER if master else 0), 2)
    if dev.msix:
        cap = caps(dev)[[i for _, i in caps(dev)].index(MSIX_CAP.id)][0]
        dev.config_write(cap + MSIX_CAP.CONTROL, MSIX_CAP.ENABLE, 2)
        for v in range(dev.vectors):
            base = MSIX_BAR.entry(v)
            dev.bar_write(BARS.msix.index, base + MSIX_ENTRY.MsgAddrLo.offset, 0xFEE00000)
            dev.bar_write(BARS.msix.index, base + MSIX_ENTRY.MsgData.offset, 0x40 + v)
            dev.bar_write(BARS.msix.index, base + MSIX_ENTRY.VectorCtrl.offset, 0)
    dev.write_register(reg(dev, "IntCtrl"), 1)


# -- configuration space --------------------------------------------------------------------


@pytest.mark.parametrize("layout", ["final", "rfc"])
@pytest.mark.parametrize("interrupts", ["msix", "intx"])
def test_header(layout: str, interrupts: str) -> None:
    dev, _ = make(layout, interrupts, protocol=0x4001)
    ids = REV2_IDS[layout]
    assert dev.config_read(CFG.VENDOR_ID, 2) == ids.vendor
    assert dev.config_read(CFG.DEVICE_ID, 2) == ids.device
    assert dev.config_read(CFG.REVISION_ID, 1) == ids.revision
    assert dev.config_read(CFG.CLASS_PROG, 1) == 0x01 and dev.config_read(CFG.CLASS_SUB, 1) == 0x40
    assert dev.config_read(CFG.CLASS_BASE, 1) == 0xFF
    assert dev.config_read(CFG.SUBSYSTEM_VENDOR_ID, 2) == ids.subsystem_vendor
    assert dev.config_read(CFG.SUBSYSTEM_ID, 2) == ids.subsystem
    assert dev.config_read(CFG.STATUS, 2) == STATUS.CAP_LIST
    assert dev.config_read(CFG.COMMAND, 2) == 0
    assert dev.config_read(CFG.INTERRUPT_PIN, 1) == (0 if interrupts == "msix" else 1)
    want = {
        ("final", "msix"): [(0x40, VENDOR_CAP.id), (0x60, MSIX_CAP.id)],
        ("rfc", "msix"): [(0x4C, VENDOR_CAP.id), (0x40, MSIX_CAP.id)],
    }.get((layout, interrupts), [(0x40, VENDOR_CAP.id)])
    assert caps(dev) == want
    if interrupts == "msix":
        assert dev.config_read(want[1][0] + MSIX_CAP.CONTROL, 2) == 3  # 4 vectors


@pytest.mark.parametrize("layout", ["final", "rfc"])
def test_vendor_capability_describes_the_sections(layout: str) -> None:
    dev, _ = make(layout)
    v = dev.vendor_cap
    assert dev.config_read(v + VENDOR_CAP.LENGTH, 1) == 0x18
    assert dev.config_read(v + VENDOR_CAP.STATE_TABLE_SIZE) == 4096
    rw = dev.config_read(v + VENDOR_CAP.RW_SIZE) | dev.config_read(v + VENDOR_CAP.RW_SIZE + 4) << 32
    out = dev.config_read(v + VENDOR_CAP.OUTPUT_SIZE)
    assert (rw, out) == (SHM - 4096 - 4 * OUT, OUT)
    assert dev.sections == Layout(SHM, 4, OUT)


def test_oneshot_is_the_only_writable_bit_of_the_capability() -> None:
    dev, _ = make()
    v = dev.vendor_cap
    before = [dev.config_read(v + i, 4) for i in range(0, 0x18, 4)]
    for off in range(0, 0x18, 4):
        dev.config_write(v + off, 0xFFFFFFFF)
    after = [dev.config_read(v + i, 4) for i in range(0, 0x18, 4)]
    assert after[0] == before[0] | VENDOR_CAP.ONESHOT << 24 and after[1:] == before[1:]
    assert dev.oneshot
    dev.config_write(v + VENDOR_CAP.PRIV_CTRL, 0, 1)  # Zephyr clears it
    assert not dev.oneshot and dev.config_read(v, 4) == before[0]


def test_command_implements_memory_master_intx_disable() -> None:
    dev, _ = make()
    dev.config_write(CFG.COMMAND, 0xFFFF, 2)
    assert dev.config_read(CFG.COMMAND, 2) == CMD.MEMORY | CMD.MASTER | CMD.INTX_DISABLE
    dev.config_write(CFG.STATUS, 0xFFFF, 2)  # static
    assert dev.config_read(CFG.STATUS, 2) == STATUS.CAP_LIST


@pytest.mark.parametrize("bar2", [True, False])
def test_bar_sizes(bar2: bool) -> None:
    kwargs: dict[str, object] = {} if bar2 else {"bar2": False, "shm_address": 0x4000_0000}
    dev, _ = make(**kwargs)
    sizes = {}
    for i in range(6):
        dev.config_write(CFG.BAR0 + 4 * i, 0xFFFFFFFF)
        sizes[i] = dev.config_read(CFG.BAR0 + 4 * i)
    assert sizes[0] == 0xFFFFF000  # 4 KiB registers
    assert sizes[1] == 0xFFFFF000  # MSI-X
    if bar2:
        assert sizes[2] == (~(SHM - 1) & 0xFFFFFFFF) | 0xC and sizes[3] == 0xFFFFFFFF
    else:
        assert sizes[2] == sizes[3] == 0
        v = dev.vendor_cap
        assert dev.config_read(v + VENDOR_CAP.LENGTH, 1) == 0x20
        assert dev.config_read(v + VENDOR_CAP.BASE) == 0x4000_0000
    assert sizes[4] == sizes[5] == 0


# -- BAR0 -----------------------------------------------------------------------------------


@pytest.mark.parametrize("layout", ["final", "rfc"])
def test_registers(layout: str) -> None:
    dev, bus = make(layout)
    dev.set_id(2)
    dev.set_peer(1, 4)
    assert dev.read_register(reg(dev, "ID")) == 2
    assert dev.read_register(reg(dev, "MaxPeers")) == 4
    if layout == "rfc":
        assert dev.read_register(PCI_REV2_REGS["rfc"].Features.offset) == 0
    dev.write_register(reg(dev, "IntCtrl"), 0xFFFFFFFF)
    assert dev.read_register(reg(dev, "IntCtrl")) == 1
    dev.write_register(reg(dev, "Doorbell"), DOORBELL.pack(1, 3))
    assert dev.read_register(reg(dev, "Doorbell")) == 0
    assert bus.rings == [(1, 3)]
    # a vector above bit 7 reaches the rfc layout's decode as its low 8 bits only
    dev.write_register(reg(dev, "Doorbell"), DOORBELL.pack(1, 0x102))
    assert bus.rings[-1] == ((1, 2) if layout == "rfc" else (1, 3))
    assert dev.counters.bad_vector == (0 if layout == "rfc" else 1)
    for off in (0x14 if layout == "final" else 0x18, 0x100, 0xFFC):
        dev.write_register(off, 0xFFFFFFFF)
        assert dev.read_register(off) == 0


def test_only_aligned_dwords() -> None:
    dev, bus = make()
    dev.set_id(0)
    dev.set_peer(1, 1)
    dev.write_register(reg(dev, "State"), 0x1234, mask=0b0011)
    dev.write_register(reg(dev, "Doorbell"), DOORBELL.pack(1, 0), mask=0b1100)
    assert dev.read_register(reg(dev, "MaxPeers"), mask=0b0001) == 0
    assert dev.state == 0 and bus.rings == [] and dev.counters.bad_access == 3


def test_doorbell_to_unknown_peer_or_vector_has_no_effect() -> None:
    dev, bus = make()
    dev.set_id(0)
    dev.set_peer(1, 2)
    dev.write_register(reg(dev, "Doorbell"), DOORBELL.pack(3, 0))
    dev.write_register(reg(dev, "Doorbell"), DOORBELL.pack(1, 2))
    assert bus.rings == []
    assert (dev.counters.bad_peer, dev.counters.bad_vector) == (1, 1)
    dev.write_register(reg(dev, "Doorbell"), DOORBELL.pack(0, 3))  # ringing yourself works
    assert bus.rings == [(0, 3)]


def test_state_goes_to_the_table_and_rings_the_others_on_change() -> None:
    dev, bus = make()
    dev.set_id(1)
    dev.set_peer(0, 4)
    dev.set_peer(3, 1)
    dev.write_register(reg(dev, "State"), 7)
    assert dev.state == 7 and dev.state_of(1) == 7 and dev.shm.read(4) == 7
    assert bus.rings == [(0, 0), (3, 0)] and dev.counters.state_changes == 1
    dev.write_register(reg(dev, "State"), 7)
    assert bus.rings == [(0, 0), (3, 0)]
    dev.reset()  # a reset returns the state to 0, as if written
    assert dev.state == 0 and dev.state_of(1) == 0 and bus.rings[-2:] == [(0, 0), (3, 0)]


# -- delivery -------------------------------------------------------------------------------


def test_interrupt_control_gates_delivery() -> None:
    dev, bus = make()
    dev.set_id(0)
    enable(dev)
    dev.write_register(reg(dev, "IntCtrl"), 0)
    dev.event(1)
    assert bus.msi == [] and dev.counters.events_dropped == 1
    dev.write_register(reg(dev, "IntCtrl"), 1)
    dev.event(1)
    assert bus.msi == [(0xFEE00000, 0x41)]


def test_oneshot_clears_interrupt_control_on_delivery() -> None:
    dev, bus = make()
    dev.set_id(0)
    enable(dev)
    dev.config_write(dev.vendor_cap + VENDOR_CAP.PRIV_CTRL, VENDOR_CAP.ONESHOT, 1)
    dev.event(2)
    assert bus.msi == [(0xFEE00000, 0x42)] and not dev.int_enabled
    dev.event(2)
    assert len(bus.msi) == 1 and dev.counters.events_dropped == 1
    dev.write_register(reg(dev, "IntCtrl"), 1)  # the unprivileged side re-enables
    dev.event(3)
    assert bus.msi[-1] == (0xFEE00000, 0x43)


def test_masked_vector_is_dropped_and_the_pba_reads_0() -> None:
    dev, bus = make()
    dev.set_id(0)
    enable(dev)
    dev.bar_write(BARS.msix.index, MSIX_BAR.entry(1) + MSIX_ENTRY.VectorCtrl.offset, 1)
    dev.event(1)
    assert bus.msi == [] and dev.counters.msi_masked == 1
    assert dev.bar_read(BARS.msix.index, MSIX_BAR.pba) == 0
    dev.bar_write(BARS.msix.index, MSIX_BAR.entry(1) + MSIX_ENTRY.VectorCtrl.offset, 0)
    assert bus.msi == []  # no pending bit: nothing on unmask
    assert dev.int_enabled  # nothing was delivered, so one-shot would not have cleared it


def test_no_bus_master_loses_the_message() -> None:
    dev, bus = make()
    dev.set_id(0)
    enable(dev, master=False)
    dev.event(0)
    assert bus.msi == [] and dev.counters.msi_lost == 1


def test_intx_pulses_unless_disabled() -> None:
    dev, bus = make(interrupts="intx")
    dev.set_id(0)
    enable(dev)
    dev.event(0)
    assert bus.intx == [True, False] and dev.counters.intx_pulses == 1
    assert not dev.config_read(CFG.STATUS, 2) & STATUS.INTERRUPT
    dev.config_write(CFG.COMMAND, CMD.MEMORY | CMD.INTX_DISABLE, 2)
    dev.event(0)
    assert bus.intx == [True, False] and dev.counters.events_dropped == 1


def test_peer_gone_raises_own_vector_0() -> None:
    dev, bus = make()
    dev.set_id(0)
    dev.set_peer(1, 4)
    enable(dev)
    dev.peer_gone(1)
    assert 1 not in dev.peers and bus.msi == [(0xFEE00000, 0x40)]


# -- shared memory --------------------------------------------------------------------------


def test_window_enforces_the_sections() -> None:
    dev, _ = make()
    dev.set_id(1)
    enable(dev)
    layout = dev.sections
    own, other = layout.output(1), layout.output(2)
    for offset, ok in [
        (0, False),  # State Table
        (layout.rw.offset, True),
        (layout.rw.end - 4, True),
        (own.offset, True),
        (own.end - 4, True),
        (other.offset, False),
    ]:
        before = dev.counters.protected_writes
        assert dev.mem_write(BAR2 + offset, 0xA5A5A5A5)
        assert dev.shm.read(offset) == (0xA5A5A5A5 if ok else 0), hex(offset)
        assert dev.counters.protected_writes == before + (not ok)
    straddle = layout.output(0).end - 2  # peer 0's last two bytes and our first two
    assert dev.mem_write(BAR2 + straddle, 0x5A5A5A5A)
    assert dev.shm.read(straddle, 2) == 0 and dev.counters.protected_writes == 3
    dev.shm.write(other.offset, 0x1234)  # what the other peer wrote
    assert dev.mem_read(BAR2 + other.offset) == 0x1234


def test_without_bar2_the_window_is_fixed() -> None:
    dev, _ = make(bar2=False, shm_address=0x4000_0000)
    dev.set_id(0)
    assert dev.mem_write(0x4000_0000 + dev.sections.rw.offset, 0x55)
    assert dev.mem_read(0x4000_0000 + dev.sections.rw.offset) == 0x55
    assert dev.mem_write(0x4000_0000, 1) and dev.counters.protected_writes == 1
    with pytest.raises(ValueError, match="no BAR2"):
        dev.bar_write(BARS.shm.index, 0, 0)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"output_section_size": SHM}, "needs at least"),
        ({"output_section_size": 100}, "multiple of 4096"),
        ({"max_peers": 1}, "max peers"),
        ({"max_peers": 2048}, "holds 1024 peers"),
        ({"layout": "v3"}, "layout must be"),
        ({"bar2": False}, "shm_address"),
        ({"protocol": 0x10000}, "16 bits"),
    ],
)
def test_bad_parameters(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make(**kwargs)  # type: ignore[arg-type]
