"""Zephyr's and Linux uio_ivshmem's bring-up of a revision 2 function, against the model."""

from __future__ import annotations

import pytest

from ivhw.sw import drivers2
from ivhw.sw.drivers2 import DriverError, Op
from ivhw.sw.models.pci2 import IvshmemPci2
from ivhw.sw.pcicfg import BARS, CFG
from ivhw.sw.regmap import PCI_REV2_REGS

REGS = PCI_REV2_REGS["final"]
BAR0, BAR1, BAR2, FIXED = 0xE000_0000, 0xE000_1000, 0x8_0000_0000, 0x4000_0000


def assigned(**kwargs: object) -> IvshmemPci2:
    """A function whose BARs firmware has assigned (Command still 0)."""
    kwargs.setdefault("shm_size", 1 << 16)
    dev = IvshmemPci2(max_peers=4, output_section_size=4096, vectors=8, **kwargs)  # type: ignore[arg-type]
    dev.set_id(2)
    dev.config_write(BARS.regs.offset, BAR0)
    if dev.msix:
        dev.config_write(BARS.msix.offset, BAR1)
    if dev.bar2:
        dev.config_write(BARS.shm.offset, BAR2 & 0xFFFFFFFF)
        dev.config_write(BARS.shm.offset + 4, BAR2 >> 32)
    return dev


def access(dev: IvshmemPci2, msi: list[tuple[int, int]]):  # type: ignore[no-untyped-def]
    def do(op: Op) -> int:
        if op.kind == "cfg_read":
            return dev.config_read(op.addr, op.size)
        if op.kind == "cfg_write":
            dev.config_write(op.addr, op.data, op.size)
            return 0
        if op.kind == "mem_read":
            value = dev.mem_read(op.addr)
            return 0xFFFFFFFF if value is None else value
        dev.mem_write(op.addr, op.data)
        return 0

    dev.on_msi = lambda a, d: msi.append((a, d))
    return do


@pytest.mark.parametrize("interrupts", ["msix", "intx"])
@pytest.mark.parametrize("bar2", [True, False])
def test_zephyr(interrupts: str, bar2: bool) -> None:
    kwargs: dict[str, object] = {"interrupts": interrupts, "protocol": 0x4002}
    if not bar2:
        kwargs.update(bar2=False, shm_address=FIXED)
    dev = assigned(**kwargs)
    dev.config_write(dev.vendor_cap + 3, 1, 1)  # left set by a previous driver
    msi: list[tuple[int, int]] = []
    probe = drivers2.run(drivers2.zephyr_ivshmem_v2(msi_vectors=4), access(dev, msi))
    base = BAR2 if bar2 else FIXED
    layout = dev.sections
    assert (probe.id, probe.max_peers, probe.protocol) == (2, 4, 0x4002)
    assert probe.state_table == (base, 4096)
    assert probe.rw == (base + layout.rw.offset, layout.rw.size)
    assert probe.output == (base + layout.output(2).offset, 4096)
    assert not probe.oneshot and not dev.oneshot  # Zephyr clears it
    assert probe.vectors == (4 if interrupts == "msix" else 0)
    assert probe.intx_pin == (0 if interrupts == "msix" else 1)
    # run time: enable interrupts, then an event arrives as the MSI-X message it set up
    dev.mem_write(BAR0 + REGS.IntCtrl.offset, 1)
    dev.event(3)
    if interrupts == "msix":
        assert msi == [(0xFEE0_0000, 0x43)]
    else:
        assert dev.counters.intx_pulses == 1
    assert dev.int_enabled  # no one-shot


@pytest.mark.parametrize("interrupts", ["msix", "intx"])
def test_linux_uio_ivshmem(interrupts: str) -> None:
    dev = assigned(interrupts=interrupts)
    dev.set_peer(0, 8)
    msi: list[tuple[int, int]] = []
    probe = drivers2.run(drivers2.linux_uio_ivshmem(), access(dev, msi))
    assert probe.oneshot and dev.oneshot  # Linux sets it
    assert probe.vectors == (8 if interrupts == "msix" else 0)
    assert dev.command & 0x6 == 0x6
    assert probe.output == (BAR2 + dev.sections.output(2).offset, 4096)
    # the user side enables, one interrupt arrives, one-shot turns delivery off again
    dev.mem_write(BAR0 + REGS.IntCtrl.offset, 1)
    dev.event(0)
    dev.event(0)
    if interrupts == "msix":
        assert msi == [(0xFEE0_0000, 0x60)]
    assert not dev.int_enabled and dev.counters.events_dropped == 1
    # release writes State 0, remove writes Interrupt Control 0
    dev.mem_write(BAR0 + REGS.State.offset, 5)
    dev.mem_write(BAR0 + REGS.State.offset, 0)
    dev.mem_write(BAR0 + REGS.IntCtrl.offset, 0)
    assert dev.state == 0 and dev.state_of(2) == 0


def test_zephyr_refuses_too_small_a_state_table() -> None:
    dev = assigned()
    real = access(dev, [])

    def lying(op: Op) -> int:
        if op.kind == "mem_read" and op.addr == BAR0 + REGS.MaxPeers.offset:
            return 4096  # more peers than a one-page State Table holds
        return real(op)

    with pytest.raises(DriverError, match="state table of 4096 bytes is too small"):
        drivers2.run(drivers2.zephyr_ivshmem_v2(), lying)


def test_zephyr_sizes_bars_and_restores_them() -> None:
    dev = assigned()
    drivers2.run(drivers2.zephyr_ivshmem_v2(), access(dev, []))
    assert dev.config_read(CFG.BAR0) == BAR0 and dev.bar_address(BARS.shm.index) == BAR2
