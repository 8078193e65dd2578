"""QEMU 7.2 ``ivshmem-plain`` through qtest: config space, BARs, registers, shared memory.

No server is needed: BAR2 is a host file mapped with ``share=on``, so what the
"guest" writes through BAR2 shows in the host's mmap and vice versa.
"""

from __future__ import annotations

import mmap
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import require_tool

from ivhw.sw.qtest import PCI, QemuIvshmem, QtestError
from ivhw.sw.regmap import PCI_REV1_REGS

pytestmark = pytest.mark.qemu

SHM_SIZE = 1 << 20


@pytest.fixture(scope="module")
def plain(tmp_path_factory: pytest.TempPathFactory) -> Iterator[QemuIvshmem]:
    require_tool("qemu-system-x86_64")
    shm = tmp_path_factory.mktemp("plain") / "shm"
    with QemuIvshmem(shm_path=shm, shm_size=SHM_SIZE, timeout=10) as vm:
        vm.assign_bars()
        yield vm


def test_identity(plain: QemuIvshmem) -> None:
    assert plain.config_read(PCI.VENDOR_ID, 2) == 0x1AF4
    assert plain.config_read(PCI.DEVICE_ID, 2) == 0x1110
    assert plain.config_read(PCI.REVISION, 1) == 0x01
    assert plain.config_read(PCI.REVISION) >> 8 == 0x050000
    assert plain.config_read(PCI.SUBSYSTEM_VENDOR_ID, 2) == 0x1AF4
    assert plain.config_read(PCI.SUBSYSTEM_ID, 2) == 0x1100
    assert plain.config_read(PCI.HEADER_TYPE, 1) == 0
    # no capabilities (no MSI-X without a server) and no interrupt pin
    assert plain.config_read(PCI.STATUS, 2) & 0x10 == 0
    assert plain.find_capability(PCI.CAP_ID_MSIX) is None
    assert plain.config_read(PCI.INTERRUPT_PIN, 1) == 0


def test_bars(plain: QemuIvshmem) -> None:
    bars = plain.bars
    assert sorted(bars) == [0, 2], "ivshmem-plain has BAR0 and BAR2 only"
    assert bars[0].size == PCI_REV1_REGS.size == 256
    assert not bars[0].is_64 and not bars[0].prefetchable
    assert bars[2].size == SHM_SIZE
    assert bars[2].is_64 and bars[2].prefetchable
    assert plain.config_read(PCI.BAR0 + 8) & 0xF == 0xC
    # the addresses read back as assigned, the 64-bit one in two dwords
    assert plain.config_read(PCI.BAR0) == bars[0].address
    address2 = bars[2].address
    assert address2 is not None and address2 >> 32
    assert plain.config_read(PCI.BAR0 + 8) & ~0xF == address2 & 0xFFFF_FFF0
    assert plain.config_read(PCI.BAR0 + 12) == address2 >> 32
    command = plain.config_read(PCI.COMMAND, 2)
    assert command & (PCI.COMMAND_MEMORY | PCI.COMMAND_MASTER) == 6


def test_registers(plain: QemuIvshmem) -> None:
    # IVPosition of a plain device is 0 (there is no server to assign an ID)
    assert plain.reg_read("IVPosition") == 0
    assert plain.reg_read("Doorbell") == 0
    for value in (0xFFFF_FFFF, 0x5A5A_A5A5, 0):
        plain.reg_write("IntrMask", value)
        assert plain.reg_read("IntrMask") == value
    plain.reg_write("IntrStatus", 0x1234_5678)
    assert plain.reg_read("IntrStatus") == 0x1234_5678
    assert plain.reg_read("IntrStatus") == 0, "IntrStatus is read-to-clear"
    plain.reg_write("IVPosition", 0x55)
    assert plain.reg_read("IVPosition") == 0, "IVPosition is read-only"
    plain.reg_write("Doorbell", 0x0000_0000)  # ring peer 0: nobody is there; ignored
    for offset in range(0, PCI_REV1_REGS.size, 4):
        if PCI_REV1_REGS.at(offset) is None:
            plain.bar_write(0, offset, 0xFFFF_FFFF)
            assert plain.bar_read(0, offset) == 0, f"reserved BAR0 offset {offset:#x}"


def test_shared_memory_both_ways(plain: QemuIvshmem) -> None:
    assert plain.shm_path is not None
    with open(Path(plain.shm_path), "r+b") as f, mmap.mmap(f.fileno(), SHM_SIZE) as host:
        plain.shm_write(0x100, b"from the guest")
        assert host[0x100 : 0x100 + 14] == b"from the guest"
        host[SHM_SIZE - 16 : SHM_SIZE] = b"from the host!!!"
        assert plain.shm_read(SHM_SIZE - 16, 16) == b"from the host!!!"
        plain.bar_write(2, 0x2000, 0x1122_3344_5566_7788, 8)
        assert host[0x2000:0x2008] == (0x1122_3344_5566_7788).to_bytes(8, "little")


def test_harness_reports_qemu_errors(tmp_path: Path) -> None:
    """A QEMU that refuses its command line fails fast with its stderr, never hangs."""
    require_tool("qemu-system-x86_64")
    vm = QemuIvshmem(shm_path=tmp_path / "shm", extra_args=("-device", "no-such-device"))
    with pytest.raises(QtestError, match="no-such-device"):
        vm.start()
    assert not vm.running
