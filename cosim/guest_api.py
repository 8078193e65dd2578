"""The guest API: a Python coroutine plays the CPU and driver of the simulated device.

A guest is ``async def guest(g: Guest) -> None``. Everything it does goes through
the simulated hardware: register reads and writes are bus transactions on the
device's bus (AXI4-Lite for ivshmem-flat), shared-memory reads and writes go
through the device's shared-memory window and so through its ``mem`` port into
the real mapping every other peer sees, and :meth:`Guest.wait_irq` returns when
the device raised its interrupt. Time spent inside a guest is simulated time;
the bridge (``ivhw.cosim.bridge``) lets the simulator sleep while the guest
waits for an interrupt and the device is idle.

A guest ends by returning (the bridge then leaves the domain, status 0) or by
raising (status 1, the exception is reported).
"""

from __future__ import annotations

import struct
import sys
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import NamedTuple, Protocol

from ..sw.memmap import MemoryMap
from ..sw.regmap import DOORBELL, RegisterMap
from ..sw.sections import Layout

__all__ = ["BusError", "BusWrite", "Guest", "GuestFunction", "RegisterBus", "SharedWindow"]


class BusError(Exception):
    """A bus access ended with an error response (SLVERR or DECERR)."""


class BusWrite(NamedTuple):
    """One bus write a guest has built and not yet made (:meth:`Guest.write_all`)."""

    addr: int
    value: int
    strb: int


class RegisterBus(Protocol):
    """What a guest needs from the device's bus: 32-bit word reads and writes.

    A bus may also have ``read_words(addrs)`` and ``write_words([(addr, value, strb)])``:
    the same transactions in the same order, in one call (the native engine's, so that a
    block of shared memory crosses from Python into the simulator once).
    """

    async def read(self, addr: int) -> int: ...

    async def write(self, addr: int, value: int, strb: int = 0xF) -> None: ...


class _Host(Protocol):
    """The part of the bridge a guest talks to directly (interrupts, membership)."""

    @property
    def cycles(self) -> int: ...

    def known_peers(self) -> dict[int, int]: ...

    async def wait_irq(self, timeout: float | None) -> int: ...


class Guest:
    """The CPU's view of one simulated ivshmem device.

    Parameters
    ----------
    bus : RegisterBus
        The device's bus (registers and shared-memory window).
    regs : RegisterMap
        The device's register map (``FLAT_REGS``, ``PCI_REV1_REGS``).
    regs_base, shm_base : int
        Bus addresses of the register window and of the shared-memory window.
    shm_size : int
        Size of the shared memory in bytes.
    host : object
        The bridge (interrupts and the peer list).
    args : dict[str, str]
        ``--guest-arg KEY=VALUE`` options of ``ivshmem-cosim``.
    memory_map : MemoryMap, optional
        Revision 2: the placed map of the endpoint; its BAR2 windows (``state_table``,
        ``rw``, ``outputs``) become the guest's section windows.
    sections : Layout, optional
        Revision 2: the shared-memory layout (which output section is whose).

    Attributes
    ----------
    id : int
        Own peer ID, read from the device's IVPosition register (revision 2: ID) by
        :meth:`start`.
    revision : int
        1, or 2 for the revision 2 endpoint (state and sections).
    """

    def __init__(
        self,
        bus: RegisterBus,
        regs: RegisterMap,
        *,
        regs_base: int,
        shm_base: int,
        shm_size: int,
        host: _Host,
        args: dict[str, str] | None = None,
        memory_map: MemoryMap | None = None,
        sections: Layout | None = None,
    ) -> None:
        self._bus = bus
        self._regs = regs
        self._regs_base = regs_base
        self._shm_base = shm_base
        self.shm_size = shm_size
        self._host = host
        self.args = dict(args or {})
        self.id = -1
        # names as in ivhw.sw.regmap, in any case (IVPOSITION on flat, IVPosition on PCI)
        self._by_name = {r.name.lower(): r for r in regs}
        self._doorbell = "doorbell"
        self._ivposition = "ivposition"
        self.revision = 1 if sections is None else 2
        self._sections = sections
        self._windows: dict[str, SharedWindow] = {}
        if sections is not None:
            assert memory_map is not None
            self._ivposition = "id"
            for name in ("state_table", "rw", "outputs"):
                if name in memory_map:
                    window = memory_map[name]
                    self._windows[name] = SharedWindow(
                        self, name, window.base - shm_base, window.size
                    )

    async def start(self) -> None:
        """Read the own peer ID from the device (called by the bridge before the guest runs)."""
        self.id = await self.read(self._ivposition)
        if self._sections is not None and self._sections.output_section_size:
            self._windows["output"] = self.output_of(self.id, "output")

    # -- registers -------------------------------------------------------------------------

    def _register(self, name: str) -> int:
        try:
            return self._regs_base + self._by_name[name.lower()].offset
        except KeyError:
            names = ", ".join(r.name for r in self._regs)
            raise ValueError(f"no register {name!r} on this device ({names})") from None

    async def read(self, name: str) -> int:
        """Read register ``name`` (names from ``ivhw.sw.regmap``, any case)."""
        return await self._bus.read(self._register(name))

    async def write(self, name: str, value: int) -> None:
        """Write register ``name``."""
        await self._bus.write(self._register(name), value & 0xFFFF_FFFF)

    async def ring(self, peer: int, vector: int) -> None:
        """Ring ``peer`` on ``vector`` through the Doorbell register."""
        await self.write(self._doorbell, DOORBELL.pack(peer, vector))

    # -- shared memory ---------------------------------------------------------------------

    def _check(self, offset: int, size: int) -> None:
        if offset < 0 or size < 0 or offset + size > self.shm_size:
            raise ValueError(
                f"shared-memory access {offset:#x}+{size} outside 0..{self.shm_size:#x}"
            )

    async def shm_read32(self, offset: int) -> int:
        """One aligned 32-bit word of shared memory, through the device."""
        self._check(offset, 4)
        return await self._bus.read(self._shm_base + offset)

    async def shm_write32(self, offset: int, value: int, strb: int = 0xF) -> None:
        """Write one aligned 32-bit word (``strb``: byte enables) through the device."""
        self._check(offset, 4)
        await self._bus.write(self._shm_base + offset, value & 0xFFFF_FFFF, strb)

    async def shm_read(self, offset: int, size: int) -> bytes:
        """``size`` bytes of shared memory from ``offset`` (word accesses underneath)."""
        self._check(offset, size)
        start, end = offset & ~3, (offset + size + 3) & ~3
        addrs = [self._shm_base + a for a in range(start, end, 4)]
        burst = getattr(self._bus, "read_words", None)  # one crossing for all (native engine)
        words = await burst(addrs) if burst else [await self._bus.read(a) for a in addrs]
        data = struct.pack(f"<{len(words)}I", *words)
        return data[offset - start : offset - start + size]

    async def shm_write(self, offset: int, data: bytes) -> None:
        """Write ``data`` at ``offset``; partial words use byte enables, never read-modify-write."""
        await self.write_all(self.shm_data(offset, data))

    # -- a sequence of writes in one go ----------------------------------------------------

    def shm_word(self, offset: int, value: int, strb: int = 0xF) -> BusWrite:
        """The write :meth:`shm_write32` makes, not yet made (for :meth:`write_all`)."""
        self._check(offset, 4)
        return BusWrite(self._shm_base + offset, value & 0xFFFF_FFFF, strb)

    def register_write(self, name: str, value: int) -> BusWrite:
        """The write :meth:`write` makes to register ``name``, not yet made."""
        return BusWrite(self._register(name), value & 0xFFFF_FFFF, 0xF)

    def doorbell(self, peer: int, vector: int) -> BusWrite:
        """The write :meth:`ring` makes, not yet made."""
        return self.register_write(self._doorbell, DOORBELL.pack(peer, vector))

    def shm_data(self, offset: int, data: bytes) -> list[BusWrite]:
        """The writes :meth:`shm_write` makes, in its order, not yet made."""
        self._check(offset, len(data))
        writes = []
        position = offset
        end = offset + len(data)
        while position < end:
            word_base = position & ~3
            lane = position - word_base
            count = min(4 - lane, end - position)
            chunk = data[position - offset : position - offset + count]
            value = int.from_bytes(chunk, "little") << (8 * lane)
            writes.append(BusWrite(self._shm_base + word_base, value, ((1 << count) - 1) << lane))
            position += count
        return writes

    async def write_all(self, writes: Iterable[BusWrite]) -> None:
        """Make ``writes`` in order, each its own bus transaction, as that many calls would.

        A reply published in one go, say: ``await g.write_all([g.shm_word(reply, g.id),
        *g.shm_data(reply + 8, payload), g.shm_word(reply + 4, len(payload)),
        g.doorbell(peer, 0)])``. On the native engine the whole sequence is one
        crossing into the simulator. A write answered with an error raises, as
        :meth:`write` does, and the writes after it are not made.
        """
        writes = list(writes)
        burst = getattr(self._bus, "write_words", None)  # one crossing for all (native engine)
        if burst:
            await burst(writes)
        else:
            for addr, value, strb in writes:
                await self._bus.write(addr, value, strb)

    # -- revision 2: state and sections --------------------------------------------------------

    def _rev2(self) -> Layout:
        if self._sections is None:
            raise ValueError("states and sections exist on the revision 2 device only")
        return self._sections

    @property
    def sections(self) -> Layout:
        """Revision 2: the shared-memory layout (``ValueError`` on revision 1)."""
        return self._rev2()

    async def state(self) -> int:
        """The own state: a read of the State register."""
        self._rev2()
        return await self.read("State")

    async def set_state(self, value: int) -> None:
        """Write the State register: the device stores it in the own State Table entry and,
        if it changed, rings vector 0 of every other peer."""
        self._rev2()
        await self.write("State", value)

    async def state_of(self, peer: int) -> int:
        """``peer``'s State Table entry, read through the device's BAR2."""
        offset = self._rev2().state_offset(peer)
        return await self.window("state_table").read32(offset)

    async def wait_state(
        self, peer: int, condition: Callable[[int], bool], timeout: float | None = None
    ) -> int | None:
        """Wait until ``condition(state of peer)`` holds; the state (``None`` at ``timeout``).

        A state change rings vector 0 of every other peer, so this looks again after
        every interrupt (and once at once).
        """
        deadline = None if timeout is None else self.now() + timeout
        while True:
            value = await self.state_of(peer)
            if condition(value):
                return value
            remaining = None if deadline is None else deadline - self.now()
            if remaining is not None and remaining <= 0:
                return None
            await self.wait_irq(remaining)

    def window(self, name: str) -> SharedWindow:
        """A section window: ``state_table``, ``rw``, ``outputs`` (all output sections),
        ``output`` (the own one, once the ID is known)."""
        self._rev2()
        try:
            return self._windows[name]
        except KeyError:
            raise ValueError(
                f"no window {name!r} on this device ({', '.join(self._windows)})"
            ) from None

    @property
    def state_table(self) -> SharedWindow:
        """The State Table (read-only: the device drops writes)."""
        return self.window("state_table")

    @property
    def rw(self) -> SharedWindow:
        """The R/W section."""
        return self.window("rw")

    @property
    def output(self) -> SharedWindow:
        """The own output section (writable)."""
        return self.window("output")

    def output_of(self, peer: int, name: str = "") -> SharedWindow:
        """``peer``'s output section (another peer's: read-only, the device drops writes)."""
        section = self._rev2().output(peer)
        outputs = self.window("outputs")
        start = outputs.offset + section.offset - self._rev2().outputs.offset
        return SharedWindow(self, name or f"output of {peer}", start, section.size)

    # -- interrupts, membership, time --------------------------------------------------------

    async def wait_irq(self, timeout: float | None = None) -> int:
        """Wait for the device's interrupt; return how many arrived (0 after ``timeout`` s)."""
        return await self._host.wait_irq(timeout)

    def peers(self) -> dict[int, int]:
        """Other peers and their vector counts, as the driver learnt them from the transport."""
        return self._host.known_peers()

    @property
    def cycles(self) -> int:
        """Simulated clock cycles so far."""
        return self._host.cycles

    @staticmethod
    def now() -> float:
        """Wall-clock time in seconds (``time.perf_counter``), for round-trip measurements."""
        return time.perf_counter()

    def log(self, text: str) -> None:
        """Print one line of the guest's transcript."""
        print(f"[   sim] {text}", flush=True)
        sys.stdout.flush()


class SharedWindow:
    """A section of the shared memory as the guest sees it: accesses relative to its start,
    through the device (so the device's write protection applies).

    Attributes
    ----------
    name : str
    offset : int
        Where it starts in the shared memory.
    size : int
    """

    def __init__(self, guest: Guest, name: str, offset: int, size: int) -> None:
        self._guest = guest
        self.name = name
        self.offset = offset
        self.size = size

    def _at(self, offset: int, size: int) -> int:
        if offset < 0 or size < 0 or offset + size > self.size:
            raise ValueError(f"{self.name}: access {offset:#x}+{size} outside 0..{self.size:#x}")
        return self.offset + offset

    async def read32(self, offset: int) -> int:
        """The aligned word at ``offset``."""
        return await self._guest.shm_read32(self._at(offset, 4))

    async def write32(self, offset: int, value: int, strb: int = 0xF) -> None:
        """Write the aligned word at ``offset``."""
        await self._guest.shm_write32(self._at(offset, 4), value, strb)

    async def read(self, offset: int, size: int) -> bytes:
        """``size`` bytes from ``offset``."""
        return await self._guest.shm_read(self._at(offset, size), size)

    async def write(self, offset: int, data: bytes) -> None:
        """Write ``data`` at ``offset`` (byte enables for partial words)."""
        await self._guest.shm_write(self._at(offset, len(data)), data)

    def __repr__(self) -> str:
        return f"<SharedWindow {self.name} at {self.offset:#x}, {self.size:#x} bytes>"


#: What ``--guest NAME|module:function`` names.
GuestFunction = Callable[[Guest], Awaitable[None]]
