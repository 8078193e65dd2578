"""A register-level differential script for the ivshmem PCI device, revision 1.

The script is data: a list of :class:`Op` (config-space and BAR accesses,
incoming events, "which MSI-X messages arrived"). :func:`run` plays it against
any :class:`Target` and records one result per operation; :func:`compare`
lists every operation whose results differ between two targets. The same
script runs against QEMU 7.2's ``ivshmem-doorbell`` (:class:`QemuTarget`, via
``ivhw.sw.qtest``), against our PCI model, and against the HDL endpoint.

What the script covers, in order: the whole config header and the MSI-X
capability (dword, word and byte reads), writes to read-only header fields,
command/status/interrupt-line behaviour, BAR sizing of BAR0..5 including the
64-bit high dword and the ROM BAR, BAR assignment, every BAR0 register and
reserved offset (reads, writes, sub-dword and 64-bit accesses), the MSI-X
table and PBA (reads, writes, reserved control bits, entries past the table),
and interrupt delivery: MSI-X disabled, enabled, per-vector mask with PBA and
delivery on unmask, function mask, bus mastering off.

BARs are placed at fixed addresses (:data:`BAR_ADDRESSES`) and MSI-X messages
point into a fixed RAM window (:data:`MSG_BASE`), so every target sees the
same numbers.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

from .pcicfg import MSIX_CAP
from .qtest import PCI, QemuIvshmem
from .regmap import DOORBELL, MAX_VECTORS, MSIX_BAR, MSIX_ENTRY, PCI_REV1_REGS

__all__ = [
    "BAR_ADDRESSES",
    "MSG_BASE",
    "MSG_DATA",
    "Kind",
    "ModelTarget",
    "Op",
    "QemuTarget",
    "Result",
    "Target",
    "compare",
    "doorbell_script",
    "format_results",
    "plain_script",
    "run",
]

#: Where the script places the BARs (BAR2 above 4 GiB: the high dword matters).
BAR_ADDRESSES = {0: 0xE000_1000, 1: 0xE000_0000, 2: 0x80_0000_0000}
#: MSI-X message of table entry ``v`` goes to ``MSG_BASE + 16 * v`` ...
MSG_BASE = 0x0020_0000
#: ... with data ``MSG_DATA | v``.
MSG_DATA = 0x5EED_0000
#: Largest table the message window is scanned for.
_MSG_WINDOW_VECTORS = MAX_VECTORS

_MSIX_CAP = MSIX_CAP.offset  # where QEMU puts it; the script reads the pointer too


class Kind(enum.Enum):
    """What an operation does."""

    #: read ``size`` bytes of config space at ``offset``
    CONFIG_READ = "cfg_rd"
    #: write ``value`` (``size`` bytes) to config space at ``offset``
    CONFIG_WRITE = "cfg_wr"
    #: read ``size`` bytes at ``offset`` of BAR ``bar``
    BAR_READ = "bar_rd"
    #: write ``value`` (``size`` bytes) at ``offset`` of BAR ``bar``
    BAR_WRITE = "bar_wr"
    #: another peer rings this device's own vector ``vector``
    EVENT = "event"
    #: the MSI-X messages ``(address, data)`` delivered since the last MESSAGES, sorted
    MESSAGES = "msgs"


@dataclass(frozen=True)
class Op:
    """One step of the script; ``name`` is unique within a script (differences cite it)."""

    kind: Kind
    name: str
    offset: int = 0
    size: int = 4
    value: int = 0
    bar: int = 0
    vector: int = 0

    @property
    def observes(self) -> bool:
        """Whether the operation has a result to compare."""
        return self.kind in (Kind.CONFIG_READ, Kind.BAR_READ, Kind.MESSAGES)

    def __str__(self) -> str:
        k = self.kind
        if k is Kind.CONFIG_READ:
            what = f"cfg_rd{self.size * 8} {self.offset:#04x}"
        elif k is Kind.CONFIG_WRITE:
            what = f"cfg_wr{self.size * 8} {self.offset:#04x} <- {self.value:#x}"
        elif k is Kind.BAR_READ:
            what = f"bar{self.bar}_rd{self.size * 8} {self.offset:#05x}"
        elif k is Kind.BAR_WRITE:
            what = f"bar{self.bar}_wr{self.size * 8} {self.offset:#05x} <- {self.value:#x}"
        elif k is Kind.EVENT:
            what = f"event vector {self.vector}"
        else:
            what = "messages"
        return f"{self.name}: {what}"


#: The result of one operation: an integer read, the sorted messages, or ``None``.
Result = int | tuple[tuple[int, int], ...] | None


class _Model(Protocol):
    """What :class:`ModelTarget` needs of a register model."""

    on_msi: Callable[[int, int], None] | None

    def config_read(self, offset: int, size: int = 4) -> int: ...
    def config_write(self, offset: int, data: int, size: int = 4) -> None: ...
    def mem_read(self, address: int, size: int = 4) -> int | None: ...
    def mem_write(self, address: int, data: int, size: int = 4) -> bool: ...
    def event(self, vector: int) -> None: ...


class Target(Protocol):
    """What a device under test offers the script (QEMU, the model, the HDL endpoint)."""

    def config_read(self, offset: int, size: int) -> int:
        """Read config space."""
        ...

    def config_write(self, offset: int, value: int, size: int) -> None:
        """Write config space."""
        ...

    def bar_read(self, bar: int, offset: int, size: int) -> int:
        """Read ``size`` bytes at ``offset`` within BAR ``bar`` (placed at BAR_ADDRESSES)."""
        ...

    def bar_write(self, bar: int, offset: int, value: int, size: int) -> None:
        """Write ``size`` bytes at ``offset`` within BAR ``bar``."""
        ...

    def event(self, vector: int) -> None:
        """A peer rings the device's own ``vector``; return once the device has handled it."""
        ...

    def messages(self) -> list[tuple[int, int]]:
        """MSI-X messages ``(address, data)`` written since the last call."""
        ...


def run(script: Iterable[Op], target: Target) -> list[Result]:
    """Play ``script`` against ``target``; one result per operation."""
    results: list[Result] = []
    for op in script:
        k = op.kind
        if k is Kind.CONFIG_READ:
            results.append(target.config_read(op.offset, op.size))
        elif k is Kind.CONFIG_WRITE:
            target.config_write(op.offset, op.value, op.size)
            results.append(None)
        elif k is Kind.BAR_READ:
            results.append(target.bar_read(op.bar, op.offset, op.size))
        elif k is Kind.BAR_WRITE:
            target.bar_write(op.bar, op.offset, op.value, op.size)
            results.append(None)
        elif k is Kind.EVENT:
            target.event(op.vector)
            results.append(None)
        else:
            results.append(tuple(sorted(target.messages())))
    return results


def _show(result: Result) -> str:
    if result is None:
        return "-"
    if isinstance(result, int):
        return f"{result:#010x}"
    return "[" + ", ".join(f"{a:#x}={d:#x}" for a, d in result) + "]"


def compare(
    script: Sequence[Op],
    left: Sequence[Result],
    right: Sequence[Result],
    names: tuple[str, str] = ("qemu", "model"),
) -> list[str]:
    """Every operation whose results differ, one line each (empty: identical)."""
    if not len(script) == len(left) == len(right):
        raise ValueError("script and results differ in length")
    lines = []
    for op, a, b in zip(script, left, right, strict=True):
        if a != b:
            lines.append(f"{op}: {names[0]}={_show(a)} {names[1]}={_show(b)}")
    return lines


def format_results(script: Sequence[Op], results: Sequence[Result]) -> str:
    """The script with its results, one line per observing operation (for recording)."""
    return "\n".join(
        f"{op} = {_show(r)}" for op, r in zip(script, results, strict=True) if op.observes
    )


class _Builder:
    def __init__(self) -> None:
        self.ops: list[Op] = []
        self._names: set[str] = set()

    def _add(self, kind: Kind, name: str, **fields: int) -> None:
        if name in self._names:
            raise ValueError(f"duplicate operation name {name!r}")
        self._names.add(name)
        self.ops.append(Op(kind, name, **fields))

    def cfg_rd(self, name: str, offset: int, size: int = 4) -> None:
        self._add(Kind.CONFIG_READ, name, offset=offset, size=size)

    def cfg_wr(self, name: str, offset: int, value: int, size: int = 4) -> None:
        self._add(Kind.CONFIG_WRITE, name, offset=offset, value=value, size=size)

    def bar_rd(self, name: str, bar: int, offset: int, size: int = 4) -> None:
        self._add(Kind.BAR_READ, name, bar=bar, offset=offset, size=size)

    def bar_wr(self, name: str, bar: int, offset: int, value: int, size: int = 4) -> None:
        self._add(Kind.BAR_WRITE, name, bar=bar, offset=offset, value=value, size=size)

    def event(self, name: str, vector: int) -> None:
        self._add(Kind.EVENT, name, vector=vector)

    def messages(self, name: str) -> None:
        self._add(Kind.MESSAGES, name)


def doorbell_script(vectors: int = 2, peer_id: int = 0) -> list[Op]:
    """The differential script for ``ivshmem-doorbell`` with ``vectors`` MSI-X vectors.

    ``peer_id`` is the device's own ID (the value IVPosition reads). Starts from
    a device just out of reset (BARs unassigned, command 0) and leaves it with
    BARs assigned, MSI-X enabled and every vector unmasked.
    """
    if not 1 <= vectors <= _MSG_WINDOW_VECTORS:
        raise ValueError(f"vectors must be 1..{_MSG_WINDOW_VECTORS}, not {vectors!r}")
    return _pci_script(vectors, peer_id, doorbell=True)


def plain_script() -> list[Op]:
    """The differential script for ``ivshmem-plain``: config space, BARs, BAR0 registers.

    The MSI-X table and interrupt sections are left out (the device has neither);
    IVPosition reads 0 and doorbells go nowhere.
    """
    return _pci_script(1, 0, doorbell=False)


def _pci_script(vectors: int, peer_id: int, *, doorbell: bool) -> list[Op]:
    s = _Builder()
    regs = PCI_REV1_REGS
    cap = _MSIX_CAP
    ctrl = cap + PCI.MSIX_FLAGS

    # -- config space after reset ----------------------------------------------------------
    for off in range(0, 0x100, 4):
        s.cfg_rd(f"reset.cfg{off:02x}", off)
    for off in range(0, PCI.HEADER_SIZE, 2):
        s.cfg_rd(f"reset.cfg{off:02x}.w", off, 2)
    for off in range(0, PCI.HEADER_SIZE):
        s.cfg_rd(f"reset.cfg{off:02x}.b", off, 1)
    for off in range(cap, cap + 12, 2):
        s.cfg_rd(f"reset.msix{off - cap:x}.w", off, 2)
    for off in range(cap, cap + 12):
        s.cfg_rd(f"reset.msix{off - cap:x}.b", off, 1)

    # -- read-only header fields ignore writes ----------------------------------------------
    for off, what in (
        (PCI.VENDOR_ID, "id"),
        (PCI.REVISION, "class"),
        (0x0C, "bist_hdr"),
        (PCI.SUBSYSTEM_VENDOR_ID, "subsys"),
        (PCI.CAPABILITY_LIST, "cap_ptr"),
        (0x38, "rsvd38"),
        (cap, "msix_hdr"),
        (cap + PCI.MSIX_TABLE, "msix_table"),
        (cap + PCI.MSIX_PBA, "msix_pba"),
        (0x80, "rsvd80"),
        (0xFC, "rsvdfc"),
    ):
        s.cfg_wr(f"ro.{what}.wr", off, 0xFFFF_FFFF)
        s.cfg_rd(f"ro.{what}.rd", off)
        s.cfg_wr(f"ro.{what}.wr0", off, 0)
        s.cfg_rd(f"ro.{what}.rd0", off)

    # -- command, status, interrupt line/pin -----------------------------------------------
    s.cfg_wr("command.all", PCI.COMMAND, 0xFFFF, 2)
    s.cfg_rd("command.all.rd", PCI.COMMAND, 2)
    s.cfg_rd("command.all.status", PCI.STATUS, 2)
    s.cfg_wr("command.zero", PCI.COMMAND, 0, 2)
    s.cfg_rd("command.zero.rd", PCI.COMMAND, 2)
    s.cfg_wr("status.w1c", PCI.STATUS, 0xFFFF, 2)
    s.cfg_rd("status.w1c.rd", PCI.STATUS, 2)
    s.cfg_wr("intline.wr", PCI.INTERRUPT_LINE, 0xAB, 1)
    s.cfg_rd("intline.rd", PCI.INTERRUPT_LINE, 1)
    s.cfg_wr("intpin.wr", PCI.INTERRUPT_PIN, 0x01, 1)
    s.cfg_rd("intpin.rd", PCI.INTERRUPT_LINE)
    s.cfg_wr("latency.wr", 0x0C, 0xFFFF, 2)  # cache line size, latency timer
    s.cfg_rd("latency.rd", 0x0C)
    s.cfg_wr("intline.wr0", PCI.INTERRUPT_LINE, 0, 1)
    s.cfg_wr("latency.wr0", 0x0C, 0, 2)

    # -- BAR sizing, as firmware does it ----------------------------------------------------
    for bar in range(6):
        reg = PCI.BAR0 + 4 * bar
        s.cfg_wr(f"size.bar{bar}.ones", reg, 0xFFFF_FFFF)
        s.cfg_rd(f"size.bar{bar}.mask", reg)
        s.cfg_wr(f"size.bar{bar}.zero", reg, 0)
        s.cfg_rd(f"size.bar{bar}.rd0", reg)
    s.cfg_wr("size.bar2.pattern", PCI.BAR0 + 8, 0x1234_5678)
    s.cfg_rd("size.bar2.pattern.rd", PCI.BAR0 + 8)
    s.cfg_wr("size.bar2hi.pattern", PCI.BAR0 + 12, 0x8765_4321)
    s.cfg_rd("size.bar2hi.pattern.rd", PCI.BAR0 + 12)
    s.cfg_wr("size.bar2.zero2", PCI.BAR0 + 8, 0)
    s.cfg_wr("size.bar2hi.zero2", PCI.BAR0 + 12, 0)
    s.cfg_wr("size.bar0.word", PCI.BAR0, 0xFFFF, 2)
    s.cfg_rd("size.bar0.word.rd", PCI.BAR0)
    s.cfg_wr("size.bar0.word0", PCI.BAR0, 0, 2)
    s.cfg_wr("size.rom.ones", PCI.ROM_ADDRESS, 0xFFFF_FFFF)
    s.cfg_rd("size.rom.mask", PCI.ROM_ADDRESS)
    s.cfg_wr("size.rom.zero", PCI.ROM_ADDRESS, 0)

    # -- BAR assignment, decode on ----------------------------------------------------------
    for bar, address in sorted(BAR_ADDRESSES.items()):
        s.cfg_wr(f"assign.bar{bar}", PCI.BAR0 + 4 * bar, address & 0xFFFF_FFFF)
        if address >> 32 or bar == 2:
            s.cfg_wr(f"assign.bar{bar}hi", PCI.BAR0 + 4 * bar + 4, address >> 32)
    for bar in range(6):
        s.cfg_rd(f"assign.bar{bar}.rd", PCI.BAR0 + 4 * bar)
    s.cfg_wr("assign.command", PCI.COMMAND, PCI.COMMAND_MEMORY | PCI.COMMAND_MASTER, 2)
    s.cfg_rd("assign.command.rd", PCI.COMMAND)

    # -- BAR0 registers ---------------------------------------------------------------------
    for off in range(0, regs.size, 4):
        s.bar_rd(f"bar0.reset.{off:02x}", 0, off)
    intr_mask = regs.IntrMask.offset
    intr_status = regs.IntrStatus.offset
    ivposition = regs.IVPosition.offset
    doorbell_reg = regs.Doorbell.offset
    for value in (0xFFFF_FFFF, 0xA5A5_5A5A, 0x0000_0001):
        s.bar_wr(f"intrmask.{value:08x}", 0, intr_mask, value)
        s.bar_rd(f"intrmask.{value:08x}.rd", 0, intr_mask)
    s.bar_wr("intrstatus.wr", 0, intr_status, 0x8000_0001)
    s.bar_rd("intrstatus.rd", 0, intr_status)
    s.bar_rd("intrstatus.rd.cleared", 0, intr_status)
    s.bar_wr("ivposition.wr", 0, ivposition, 0x1234)
    s.bar_rd("ivposition.rd", 0, ivposition)
    s.bar_rd("doorbell.rd", 0, doorbell_reg)
    s.bar_wr("doorbell.unknown_peer", 0, doorbell_reg, DOORBELL.pack((peer_id + 77) & 0xFFFF, 0))
    s.bar_wr("doorbell.bad_vector", 0, doorbell_reg, DOORBELL.pack(peer_id, vectors))
    s.bar_rd("doorbell.rd.after", 0, doorbell_reg)
    s.messages("doorbell.no_messages")
    for off in (0x10, 0x14, 0x40, 0x80, 0xFC):
        s.bar_wr(f"bar0.rsvd{off:02x}.wr", 0, off, 0xFFFF_FFFF)
        s.bar_rd(f"bar0.rsvd{off:02x}.rd", 0, off)
    # sub-dword and 64-bit accesses (QEMU: 4-byte handlers behind the memory core).
    # Only naturally aligned ones: qtest splits a misaligned access into bytes where
    # a CPU's access would be dropped, so QEMU's answer there says nothing about the
    # device (docs/differential.md).
    s.bar_wr("sub.intrmask", 0, intr_mask, 0x8765_4321)
    for off in range(4):
        s.bar_rd(f"sub.intrmask.b{off}", 0, intr_mask + off, 1)
    for off in (0, 2):
        s.bar_rd(f"sub.intrmask.w{off}", 0, intr_mask + off, 2)
    s.bar_rd("sub.ivposition.b0", 0, ivposition, 1)
    s.bar_rd("sub.ivposition.w0", 0, ivposition, 2)
    s.bar_rd("sub.ivposition.b1", 0, ivposition + 1, 1)
    s.bar_wr("sub.intrmask.wb1", 0, intr_mask + 1, 0xCC, 1)
    s.bar_rd("sub.intrmask.wb1.rd", 0, intr_mask)
    s.bar_wr("sub.intrmask.ww2", 0, intr_mask + 2, 0xBEEF, 2)
    s.bar_rd("sub.intrmask.ww2.rd", 0, intr_mask)
    s.bar_wr("q.intrmask", 0, intr_mask, 0x0000_0042_1111_2222, 8)
    s.bar_rd("q.intrmask.rd", 0, intr_mask)
    s.bar_rd("q.intrstatus.rd", 0, intr_status)
    s.bar_wr("q.intrstatus", 0, intr_status, 0x0000_0000_0000_0003, 4)
    s.bar_rd("q.read0", 0, intr_mask, 8)
    s.bar_rd("q.read8", 0, ivposition, 8)
    s.bar_wr("q.intrmask.zero", 0, intr_mask, 0)

    if not doorbell:
        return s.ops

    # -- MSI-X table and PBA ----------------------------------------------------------------
    entry_size = MSIX_ENTRY.size
    addr_lo = MSIX_ENTRY.MsgAddrLo.offset
    addr_hi = MSIX_ENTRY.MsgAddrHi.offset
    data = MSIX_ENTRY.MsgData.offset
    vctrl = MSIX_ENTRY.VectorCtrl.offset
    for vector in range(vectors + 1):
        for field in range(0, entry_size, 4):
            s.bar_rd(f"msix.reset.e{vector}.{field:x}", 1, vector * entry_size + field)
    pba = MSIX_BAR.pba
    for off in (0x100, pba - 4, pba, pba + 4, pba + 8, MSIX_BAR.size - 4):
        s.bar_rd(f"bar1.reset.{off:03x}", 1, off)
    s.bar_wr("msix.e0.addr.ones", 1, addr_lo, 0xFFFF_FFFF)
    s.bar_rd("msix.e0.addr.ones.rd", 1, addr_lo)
    s.bar_wr("msix.e0.ctrl.ones", 1, vctrl, 0xFFFF_FFFF)
    s.bar_rd("msix.e0.ctrl.ones.rd", 1, vctrl)
    s.bar_wr("msix.e0.ctrl.one", 1, vctrl, 1)
    s.bar_wr("msix.past_table.wr", 1, vectors * entry_size, 0xFFFF_FFFF)
    s.bar_rd("msix.past_table.rd", 1, vectors * entry_size)
    s.bar_wr("msix.pba.wr", 1, pba, 0xFFFF_FFFF)
    s.bar_rd("msix.pba.wr.rd", 1, pba)
    s.bar_wr("msix.e0.data.b", 1, data + 1, 0x77, 1)
    s.bar_rd("msix.e0.data.b.rd", 1, data)
    s.bar_rd("msix.e0.data.b1", 1, data + 1, 1)
    s.bar_wr("msix.e0.q", 1, addr_lo, 0x0000_0001_DEAD_BEE0, 8)
    s.bar_rd("msix.e0.q.rd", 1, addr_lo, 8)
    for vector in range(vectors):
        base = vector * entry_size
        s.bar_wr(f"msix.e{vector}.lo", 1, base + addr_lo, MSG_BASE + entry_size * vector)
        s.bar_wr(f"msix.e{vector}.hi", 1, base + addr_hi, 0)
        s.bar_wr(f"msix.e{vector}.data", 1, base + data, MSG_DATA | vector)
        for field in range(0, entry_size, 4):
            s.bar_rd(f"msix.prog.e{vector}.{field:x}", 1, base + field)

    # -- interrupts -------------------------------------------------------------------------
    def observe(tag: str) -> None:
        s.messages(f"{tag}.msgs")
        s.bar_rd(f"{tag}.pba", 1, pba)
        s.bar_rd(f"{tag}.intrstatus", 0, intr_status)

    s.messages("irq.start.msgs")
    # MSI-X disabled (entries still masked): QEMU 7.2 drops the event
    for vector in range(vectors):
        s.event(f"irq.disabled.ev{vector}", vector)
    observe("irq.disabled")
    # entries unmasked but MSI-X disabled: still dropped
    for vector in range(vectors):
        s.bar_wr(f"irq.unmask.e{vector}", 1, vector * entry_size + vctrl, 0)
    s.event("irq.disabled_unmasked.ev0", 0)
    observe("irq.disabled_unmasked")
    # enable MSI-X: every vector delivers
    s.cfg_wr("irq.enable", ctrl, PCI.MSIX_FLAGS_ENABLE, 2)
    s.cfg_rd("irq.enable.rd", cap)
    for vector in range(vectors):
        s.event(f"irq.enabled.ev{vector}", vector)
        observe(f"irq.enabled.v{vector}")
    # a masked vector: the PBA bit is set, the message comes on unmask
    last = vectors - 1
    s.bar_wr("irq.mask", 1, last * entry_size + vctrl, 1)
    s.event("irq.masked.ev", last)
    observe("irq.masked")
    s.event("irq.masked.ev_again", last)
    observe("irq.masked_again")
    s.bar_wr("irq.unmask", 1, last * entry_size + vctrl, 0)
    observe("irq.unmasked")
    # function mask: the same through Message Control
    s.cfg_wr("irq.fmask", ctrl, PCI.MSIX_FLAGS_ENABLE | PCI.MSIX_FLAGS_MASKALL, 2)
    s.cfg_rd("irq.fmask.rd", cap)
    s.event("irq.fmask.ev0", 0)
    observe("irq.fmask")
    s.cfg_wr("irq.funmask", ctrl, PCI.MSIX_FLAGS_ENABLE, 2)
    observe("irq.funmask")
    # masked when MSI-X gets disabled: the pending message is not delivered
    s.bar_wr("irq.mask_then_disable.mask", 1, vctrl, 1)
    s.event("irq.mask_then_disable.ev0", 0)
    observe("irq.mask_then_disable.pending")
    s.cfg_wr("irq.mask_then_disable.off", ctrl, 0, 2)
    s.bar_wr("irq.mask_then_disable.unmask", 1, vctrl, 0)
    observe("irq.mask_then_disable.unmasked")
    s.cfg_wr("irq.mask_then_disable.on", ctrl, PCI.MSIX_FLAGS_ENABLE, 2)
    observe("irq.mask_then_disable.reenabled")
    # bus mastering off: the message cannot be sent
    s.cfg_wr("irq.nomaster", PCI.COMMAND, PCI.COMMAND_MEMORY, 2)
    s.event("irq.nomaster.ev0", 0)
    observe("irq.nomaster")
    s.cfg_wr("irq.master", PCI.COMMAND, PCI.COMMAND_MEMORY | PCI.COMMAND_MASTER, 2)
    observe("irq.master")
    # IntrMask does not matter with MSI-X
    s.bar_wr("irq.intrmask", 0, intr_mask, 0xFFFF_FFFF)
    s.event("irq.intrmask.ev0", 0)
    observe("irq.intrmask")
    s.bar_wr("irq.intrmask0", 0, intr_mask, 0)
    # a message address rewritten while enabled takes effect for the next message
    s.bar_wr("irq.retarget", 1, addr_lo, MSG_BASE + entry_size * _MSG_WINDOW_VECTORS - 4)
    s.event("irq.retarget.ev0", 0)
    observe("irq.retarget")
    s.bar_wr("irq.retarget.back", 1, addr_lo, MSG_BASE)
    for off in range(cap, cap + 12, 4):
        s.cfg_rd(f"end.msix{off - cap:x}", off)
    s.cfg_rd("end.command", PCI.COMMAND)
    return s.ops


class QemuTarget:
    """Runs the script against a QEMU device started with :class:`~ivhw.sw.qtest.QemuIvshmem`.

    Parameters
    ----------
    vm:
        A started ``ivshmem-doorbell`` with untouched config space.
    inject:
        Rings the device's own vector from outside (a host peer writing the
        device's eventfd). Default: the device rings itself through its
        Doorbell register (needs memory decode on, as in the script's events).
    """

    def __init__(self, vm: QemuIvshmem, inject: Callable[[int], None] | None = None) -> None:
        self.vm = vm
        self._inject = inject
        self._own_id: int | None = None

    def config_read(self, offset: int, size: int) -> int:
        """Read config space through 0xCF8/0xCFC."""
        return self.vm.config_read(offset, size)

    def config_write(self, offset: int, value: int, size: int) -> None:
        """Write config space through 0xCF8/0xCFC."""
        self.vm.config_write(offset, value, size)

    def bar_read(self, bar: int, offset: int, size: int) -> int:
        """Read guest physical memory at the script's BAR address."""
        return self.vm.mem_read(BAR_ADDRESSES[bar] + offset, size)

    def bar_write(self, bar: int, offset: int, value: int, size: int) -> None:
        """Write guest physical memory at the script's BAR address."""
        self.vm.mem_write(BAR_ADDRESSES[bar] + offset, value, size)

    def event(self, vector: int) -> None:
        """Ring the device's vector, then let QEMU's main loop handle the eventfd."""
        if self._inject is not None:
            self._inject(vector)
        else:
            if self._own_id is None:
                self._own_id = self.bar_read(0, PCI_REV1_REGS.IVPosition.offset, 4)
            word = DOORBELL.pack(self._own_id & 0xFFFF, vector)
            self.bar_write(0, PCI_REV1_REGS.Doorbell.offset, word, 4)
        self.settle()

    def settle(self) -> None:
        """Give QEMU's main loop a few turns (each qtest command is one)."""
        # The eventfd is already readable when the next command is sent, so the
        # main loop sees both in the same poll; a few extra turns and a short
        # sleep make it certain for an injection from another thread.
        time.sleep(0.002)
        for _ in range(3):
            self.vm.command("endianness")

    def messages(self) -> list[tuple[int, int]]:
        """Every non-zero dword in the message window, cleared afterwards."""
        self.settle()
        size = PCI.MSIX_ENTRY_SIZE * _MSG_WINDOW_VECTORS
        raw = self.vm.read(MSG_BASE, size)
        found = []
        for off in range(0, size, 4):
            data = int.from_bytes(raw[off : off + 4], "little")
            if data:
                found.append((MSG_BASE + off, data))
                self.vm.writel(MSG_BASE + off, 0)
        return found


class ModelTarget:
    """Runs the script against our register model (``ivhw.sw.models.pci.IvshmemPciModel``).

    Accesses go through the model's memory decode (``mem_read``/``mem_write`` at
    :data:`BAR_ADDRESSES`), as QEMU's do; MSI-X messages are collected through
    its ``on_msi`` hook. An access no BAR claims reads 0, as QEMU's unassigned
    memory does.
    """

    def __init__(self, model: _Model) -> None:
        self.model = model
        self._messages: list[tuple[int, int]] = []
        model.on_msi = self._on_msi

    def _on_msi(self, address: int, data: int) -> None:
        self._messages.append((address, data))

    def config_read(self, offset: int, size: int) -> int:
        """Read the model's config space."""
        return self.model.config_read(offset, size)

    def config_write(self, offset: int, value: int, size: int) -> None:
        """Write the model's config space."""
        self.model.config_write(offset, value, size)

    def bar_read(self, bar: int, offset: int, size: int) -> int:
        """A memory read at the script's BAR address, through the model's decode."""
        value = self.model.mem_read(BAR_ADDRESSES[bar] + offset, size)
        return 0 if value is None else value

    def bar_write(self, bar: int, offset: int, value: int, size: int) -> None:
        """A memory write at the script's BAR address, through the model's decode."""
        self.model.mem_write(BAR_ADDRESSES[bar] + offset, value, size)

    def event(self, vector: int) -> None:
        """Own eventfd ``vector`` became readable."""
        self.model.event(vector)

    def messages(self) -> list[tuple[int, int]]:
        """MSI-X messages the model sent since the last call."""
        found, self._messages = self._messages, []
        return found


def record_qemu(
    vectors: int = 2, *, plain: bool = False, timeout: float = 10.0
) -> tuple[list[Op], list[Result]]:
    """Play the script against a fresh QEMU 7.2 and return ``(script, results)``.

    The doorbell device joins a private ``ivhw.sw.server.IvshmemServer`` and
    rings itself for the script's events; needs ``qemu-system-x86_64``.
    """
    import os
    import shutil
    import tempfile

    from .server import IvshmemServer

    if plain:
        script = plain_script()
        with QemuIvshmem(timeout=timeout) as vm:
            return script, run(script, QemuTarget(vm))
    workdir = tempfile.mkdtemp(prefix="ivhw-rs-")
    try:
        path = os.path.join(workdir, "ivs.sock")
        server = IvshmemServer(path, shm_size=1 << 20, vectors=vectors)
        server.serve_in_background()
        try:
            with QemuIvshmem(server_socket=path, vectors=vectors, timeout=timeout) as vm:
                script = doorbell_script(vectors, server.peer_ids[-1])
                return script, run(script, QemuTarget(vm))
        finally:
            server.stop()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m ivhw.sw.regscript``: print QEMU's results, or its differences to the model."""
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m ivhw.sw.regscript",
        description="Run the register differential script against QEMU 7.2 (qtest).",
    )
    parser.add_argument("--plain", action="store_true", help="ivshmem-plain instead of doorbell")
    parser.add_argument("--vectors", type=int, default=2, help="MSI-X vectors (default 2)")
    parser.add_argument(
        "--model", action="store_true", help="print only the differences to our PCI model"
    )
    args = parser.parse_args(argv)
    if not 1 <= args.vectors <= _MSG_WINDOW_VECTORS:
        parser.error(f"--vectors must be 1..{_MSG_WINDOW_VECTORS}")
    script, results = record_qemu(args.vectors, plain=args.plain)
    if not args.model:
        print(format_results(script, results))
        return 0
    from .models.pci import IvshmemPciModel

    model = IvshmemPciModel(doorbell=not args.plain, vectors=args.vectors, shm_size=1 << 20)
    if not args.plain:
        model.set_id(int(results[[op.name for op in script].index("bar0.reset.08")] or 0))
    differences = compare(script, results, run(script, ModelTarget(model)))
    print("\n".join(differences) if differences else "no differences")
    return 1 if differences else 0


if __name__ == "__main__":
    raise SystemExit(main())
