"""What real revision 2 drivers do to the device at init, as replayable access scripts.

Zephyr's ``drivers/virtualization/virt_ivshmem.c`` (its ivshmem v2 path) and Linux's
``uio_ivshmem`` (Jailhouse's tree) bring a revision 2 function up with particular
sequences of config and memory accesses and expect particular answers. Each is
written here once, as a generator of accesses (:class:`Op`), so that the same
script drives the model (:func:`run`) and the HDL in a cocotb testbench
(:func:`run_async`). A script raises :class:`DriverError` where the driver would
refuse the device, and returns what the driver learned (:class:`Probe`).

The BARs are assigned before a script runs (firmware's job): BAR0 at
``regs_base``, BAR1 at ``msix_base``, BAR2 (if present) at ``shm_base``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Generator
from dataclasses import dataclass, field
from typing import Literal

from .pcicfg import BARS, CFG, CMD, MSIX_CAP, VENDOR_CAP
from .regmap import DOORBELL, MSIX_BAR, MSIX_ENTRY, PCI_REV2_REGS

__all__ = [
    "DriverError",
    "Op",
    "Probe",
    "linux_uio_ivshmem",
    "run",
    "run_async",
    "zephyr_ivshmem_v2",
]

_REGS = PCI_REV2_REGS["final"]  # both drivers know the final layout only


class DriverError(Exception):
    """The driver refuses the device (the message says why, as the driver's log would)."""


@dataclass(frozen=True)
class Op:
    """One access: ``kind`` is ``cfg_read``/``cfg_write`` (``addr`` a config offset,
    ``size`` 1, 2 or 4) or ``mem_read``/``mem_write`` (a bus address, one dword)."""

    kind: Literal["cfg_read", "cfg_write", "mem_read", "mem_write"]
    addr: int
    data: int = 0
    size: int = 4


@dataclass
class Probe:
    """What a driver learned and set up."""

    id: int = 0
    max_peers: int = 0
    protocol: int = 0
    shm_base: int = 0
    state_table: tuple[int, int] = (0, 0)  #: (address, size)
    rw: tuple[int, int] = (0, 0)
    outputs: tuple[int, int] = (0, 0)  #: all output sections
    output: tuple[int, int] = (0, 0)  #: the own one
    vectors: int = 0  #: MSI-X vectors taken (0: INTx)
    intx_pin: int = 0
    oneshot: bool = False
    accesses: list[Op] = field(default_factory=list)


Script = Generator[Op, int, Probe]


def _cfg_read(off: int, size: int = 4) -> Generator[Op, int, int]:
    return (yield Op("cfg_read", off, size=size))


def _cfg_write(off: int, data: int, size: int = 4) -> Generator[Op, int, None]:
    yield Op("cfg_write", off, data, size)


def _mem_read(addr: int) -> Generator[Op, int, int]:
    return (yield Op("mem_read", addr))


def _mem_write(addr: int, data: int) -> Generator[Op, int, None]:
    yield Op("mem_write", addr, data)


def _bar(index: int) -> Generator[Op, int, tuple[int, int]]:
    """Address and size of BAR ``index`` (0, 0 if absent), sized as every OS does."""
    off = CFG.BAR0 + 4 * index
    low = yield from _cfg_read(off)
    yield from _cfg_write(off, 0xFFFFFFFF)
    mask = yield from _cfg_read(off)
    yield from _cfg_write(off, low)
    if mask == 0:
        return 0, 0
    is64 = low & 0x6 == 0x4
    base, size_mask = low & ~0xF, mask & ~0xF
    if is64:
        high = yield from _cfg_read(off + 4)
        yield from _cfg_write(off + 4, 0xFFFFFFFF)
        high_mask = yield from _cfg_read(off + 4)
        yield from _cfg_write(off + 4, high)
        base |= high << 32
        size_mask |= high_mask << 32
        return base, (~size_mask & ((1 << 64) - 1)) + 1
    return base, (~size_mask & 0xFFFFFFFF) + 1


def _find_cap(cap_id: int) -> Generator[Op, int, int]:
    """Config offset of the first capability ``cap_id`` (0 if none)."""
    ptr = (yield from _cfg_read(CFG.CAPABILITY_LIST, 1)) & 0xFC
    for _ in range(48):  # a list longer than config space is a loop
        if ptr == 0:
            return 0
        header = yield from _cfg_read(ptr, 2)
        if header & 0xFF == cap_id:
            return ptr
        ptr = (header >> 8) & 0xFC
    return 0


def _u64(off: int) -> Generator[Op, int, int]:
    low = yield from _cfg_read(off)
    high = yield from _cfg_read(off + 4)
    return low | high << 32


def _msix_enable(
    regs_msix: int, vectors: int, msg_addr: int, msg_data: int
) -> Generator[Op, int, int]:
    """Program and unmask ``vectors`` table entries and enable MSI-X; returns the count."""
    cap = yield from _find_cap(MSIX_CAP.id)
    if cap == 0:
        raise DriverError("no MSI-X capability")
    control = yield from _cfg_read(cap + MSIX_CAP.CONTROL, 2)
    table_size = (control & MSIX_CAP.TABLE_SIZE) + 1
    count = min(vectors, table_size)
    for v in range(count):
        entry = regs_msix + MSIX_BAR.entry(v)
        yield from _mem_write(entry + MSIX_ENTRY.MsgAddrLo.offset, msg_addr & 0xFFFFFFFF)
        yield from _mem_write(entry + MSIX_ENTRY.MsgAddrHi.offset, msg_addr >> 32)
        yield from _mem_write(entry + MSIX_ENTRY.MsgData.offset, msg_data + v)
        yield from _mem_write(entry + MSIX_ENTRY.VectorCtrl.offset, 0)
    yield from _cfg_write(
        cap + MSIX_CAP.CONTROL, (control | MSIX_CAP.ENABLE) & ~MSIX_CAP.MASKALL, 2
    )
    return count


def _probe_bars() -> Generator[Op, int, tuple[int, int, int, int, int]]:
    """BAR0, BAR1 and BAR2 as both drivers size them: regs, regs size, MSI-X, shm, shm size."""
    regs, regs_size = yield from _bar(BARS.regs.index)
    msix, _ = yield from _bar(BARS.msix.index)
    shm, shm_size = yield from _bar(BARS.shm.index)
    return regs, regs_size, msix, shm, shm_size


def _vendor_cap(shm: int, shm_size: int) -> Generator[Op, int, tuple[int, int]]:
    """The vendor capability's offset, and the shared memory's address (the capability's
    when there is no BAR2)."""
    cap = yield from _find_cap(VENDOR_CAP.id)
    if cap == 0:
        raise DriverError("vendor capability not found")
    if shm_size == 0:
        shm = yield from _u64(cap + VENDOR_CAP.BASE)
    return cap, shm


def zephyr_ivshmem_v2(
    *, msi_vectors: int = 16, msg_addr: int = 0xFEE0_0000, msg_data: int = 0x40
) -> Script:
    """Zephyr's v2 bring-up: the order, the checks and the one-shot clear of ``virt_ivshmem.c``."""
    probe = Probe()
    command = yield from _cfg_read(CFG.COMMAND, 2)
    yield from _cfg_write(CFG.COMMAND, command | CMD.MEMORY | CMD.MASTER, 2)
    regs, regs_size, msix, shm, shm_size = yield from _probe_bars()
    if regs_size < _REGS.State.offset + 4:
        raise DriverError(f"register BAR of {regs_size} bytes is too small")
    probe.max_peers = yield from _mem_read(regs + _REGS.MaxPeers.offset)
    if not 2 <= probe.max_peers <= 0x10000:
        raise DriverError(f"invalid max peers {probe.max_peers}")
    cap, shm = yield from _vendor_cap(shm, shm_size)
    state_size = yield from _cfg_read(cap + VENDOR_CAP.STATE_TABLE_SIZE)
    if state_size < 4 * probe.max_peers:
        raise DriverError(f"state table of {state_size} bytes is too small")
    rw_size = yield from _u64(cap + VENDOR_CAP.RW_SIZE)
    out_size = yield from _u64(cap + VENDOR_CAP.OUTPUT_SIZE)
    priv = yield from _cfg_read(cap, 4)
    yield from _cfg_write(cap, priv & ~(VENDOR_CAP.ONESHOT << 8 * VENDOR_CAP.PRIV_CTRL), 4)
    class_rev = yield from _cfg_read(CFG.REVISION_ID, 4)
    probe.protocol = (class_rev >> 8) & 0xFFFF
    if msix:
        probe.vectors = yield from _msix_enable(msix, msi_vectors, msg_addr, msg_data)
    else:
        probe.intx_pin = yield from _cfg_read(CFG.INTERRUPT_PIN, 1)
        if not 1 <= probe.intx_pin <= 4:
            raise DriverError(f"no interrupt: pin {probe.intx_pin}")
        command = yield from _cfg_read(CFG.COMMAND, 2)
        yield from _cfg_write(CFG.COMMAND, command & ~CMD.INTX_DISABLE, 2)
    probe.id = yield from _mem_read(regs + _REGS.ID.offset)
    _sections(probe, shm, state_size, rw_size, out_size)
    oneshot = yield from _cfg_read(cap + VENDOR_CAP.PRIV_CTRL, 1)
    probe.oneshot = bool(oneshot & VENDOR_CAP.ONESHOT)
    return probe


def linux_uio_ivshmem() -> Script:
    """Linux ``uio_ivshmem`` probe: sections from BAR2 (or the capability), one-shot set,
    all MSI-X vectors (or one legacy IRQ), bus master last."""
    probe = Probe()
    command = yield from _cfg_read(CFG.COMMAND, 2)
    yield from _cfg_write(CFG.COMMAND, command | CMD.MEMORY, 2)  # pcim_enable_device
    regs, _regs_size, msix, shm, shm_size = yield from _probe_bars()
    cap, shm = yield from _vendor_cap(shm, shm_size)
    state_size = yield from _cfg_read(cap + VENDOR_CAP.STATE_TABLE_SIZE)
    rw_size = yield from _u64(cap + VENDOR_CAP.RW_SIZE)
    out_size = yield from _u64(cap + VENDOR_CAP.OUTPUT_SIZE)
    probe.id = yield from _mem_read(regs + _REGS.ID.offset)
    probe.max_peers = yield from _mem_read(regs + _REGS.MaxPeers.offset)
    _sections(probe, shm, state_size, rw_size, out_size)
    yield from _cfg_write(cap + VENDOR_CAP.PRIV_CTRL, VENDOR_CAP.ONESHOT, 1)
    if msix:
        cap_msix = yield from _find_cap(MSIX_CAP.id)
        control = yield from _cfg_read(cap_msix + MSIX_CAP.CONTROL, 2)
        probe.vectors = yield from _msix_enable(
            msix, (control & MSIX_CAP.TABLE_SIZE) + 1, 0xFEE0_0000, 0x60
        )
    else:
        probe.intx_pin = yield from _cfg_read(CFG.INTERRUPT_PIN, 1)
    command = yield from _cfg_read(CFG.COMMAND, 2)
    yield from _cfg_write(CFG.COMMAND, command | CMD.MASTER, 2)  # pci_set_master
    oneshot = yield from _cfg_read(cap + VENDOR_CAP.PRIV_CTRL, 1)
    probe.oneshot = bool(oneshot & VENDOR_CAP.ONESHOT)
    return probe


def _sections(probe: Probe, shm: int, state: int, rw: int, out: int) -> None:
    probe.shm_base = shm
    probe.state_table = (shm, state)
    probe.rw = (shm + state, rw)
    outputs = shm + state + rw
    probe.outputs = (outputs, out * probe.max_peers)
    probe.output = (outputs + out * probe.id, out)


def run(script: Script, access: Callable[[Op], int]) -> Probe:
    """Run ``script``, each access through ``access(op)`` (which returns what a read read)."""
    ops: list[Op] = []
    try:
        op = next(script)
        while True:
            ops.append(op)
            op = script.send(access(op))
    except StopIteration as done:
        probe: Probe = done.value
        probe.accesses = ops
        return probe


async def run_async(script: Script, access: Callable[[Op], Awaitable[int]]) -> Probe:
    """:func:`run` for a simulator: ``access`` is a coroutine."""
    ops: list[Op] = []
    try:
        op = next(script)
        while True:
            ops.append(op)
            op = script.send(await access(op))
    except StopIteration as done:
        probe: Probe = done.value
        probe.accesses = ops
        return probe


def doorbell_word(peer: int, vector: int) -> int:
    """What Zephyr's ``ivshmem_int_peer`` writes: ``peer << 16 | vector``."""
    return DOORBELL.pack(peer, vector)
