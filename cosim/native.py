"""The native engine of the bridge: Verilator with the clock and the transport in C++.

``ivshmem-cosim`` runs ``python -m ivhw.cosim.native`` in place of the cocotb
simulator when the engine is ``native`` (the default on Verilator). This process
loads the device's engine library (``engine.cpp`` verilated with the device by
:func:`ivhw.cosim.build.build`, ``engine="native"``) with :mod:`ctypes`, joins the
server through :class:`ivhw.sw.peer.Peer`, and hands the engine the shared-memory
mapping, the own eventfds, the other peers' eventfds and the own ID. From then on
every clock cycle and the whole transport run in C++; Python comes back:

- once per guest transaction: each register or shared-memory access of a Python
  guest is one call that runs the cycles of that bus transaction (a block of
  shared memory, ``shm_read``/``shm_write``, one call for all its words), and
  ``wait_irq`` is one call that runs the device while it drains and sleeps in
  ``epoll`` while it is idle;
- on a server message (a peer joins or leaves): the engine returns, Python lets
  the peer library read the message and updates the engine's peer table;
- on a stop request (the CLI's stop FIFO, SIGTERM/SIGINT) or the time limit.

With no guest, the engine runs by itself until one of those (a device with a CPU
inside, running firmware, never needs Python while it simulates).

The transport behaves exactly as the cocotb engine's (``ivhw.cosim.bridge``):
the same sampling at the rising edge, event queue, back-pressure, idle rule,
statistics and status file; ``tests/test_cosim_engines.py`` checks that both give
the same answers.
"""

from __future__ import annotations

import ctypes
import os
import sys
import time
import traceback
from collections.abc import Coroutine
from typing import Any

from ..hdl.pci.tlp import ReqKind
from ..sw.peer import Doorbell, Peer, PeerLeft, ServerGone
from ..sw.regmap import MAX_VECTORS
from .build import REV2_COUNTERS
from .guest_api import BusError, Guest, GuestFunction
from .pci import TransactionError, enumerate_endpoint
from .session import (
    STATUS_FAILED,
    STATUS_OK,
    BridgeConfig,
    Stop,
    announce,
    announce_membership,
    announce_pci,
    device_memory,
    guest_windows,
    join,
    load_guest,
    sections_of,
    server_gone,
    write_status,
)

__all__ = ["COUNTERS", "Engine", "NativeBridge", "main", "run_coroutine"]

# flags a call leaves (engine.cpp)
F_STOP, F_MEMBER, F_LIMIT, F_TIMEOUT = 1, 2, 4, 8
_WAIT_FLAGS = 16  # ivhw_wait_irq: interrupts x 16 + flags
_BUS_OK, _BUS_ERROR, _BUS_ABORTED, _FLAGGED = 0, 1, 2, 16
_BURST_STATUS = 32  # ivhw_burst: transactions done x 32 + the status of the one that stopped it
#: Transactions per ivhw_burst call (longer blocks take several calls).
BURST = 64
#: The engine's counters, in its order (``ivhw_stats.counter``).
COUNTERS = (
    "cycles", "events", "event_stall_cycles", "coalesced", "doorbells", "doorbells_lost",
    "irqs", "mem_reads", "mem_writes", "blocks", "polls",
)  # fmt: skip
_MAX_SAMPLES = 100_000
_RESP = {0: "OKAY", 1: "EXOKAY", 2: "SLVERR", 3: "DECERR"}
_READ, _WRITE = ReqKind.MEM_READ.value, ReqKind.MEM_WRITE.value


class _Stats(ctypes.Structure):
    _fields_ = [
        ("counter", ctypes.c_uint64 * len(COUNTERS)),
        ("blocked_seconds", ctypes.c_double),
        ("events_by_vector", ctypes.c_uint64 * MAX_VECTORS),
        ("msix", ctypes.c_uint64 * MAX_VECTORS),
        ("wake_to_ring_count", ctypes.c_uint64),
        ("wake_to_irq_count", ctypes.c_uint64),
        ("wakes_count", ctypes.c_uint64),
        ("wake_to_ring", (ctypes.c_double * 4) * _MAX_SAMPLES),
        ("wake_to_irq", (ctypes.c_double * 2) * _MAX_SAMPLES),
        ("wakes", (ctypes.c_double * 6) * _MAX_SAMPLES),
    ]


def _declare(lib: ctypes.CDLL) -> None:
    p, u32, u64, i, d = (
        ctypes.c_void_p,
        ctypes.c_uint32,
        ctypes.c_uint64,
        ctypes.c_int,
        ctypes.c_double,
    )
    pu64, pint = ctypes.POINTER(u64), ctypes.POINTER(i)
    signatures: dict[str, tuple[Any, list[Any]]] = {
        "ivhw_new": (p, [ctypes.c_char_p]),
        "ivhw_free": (None, [p]),
        "ivhw_traced": (i, []),
        "ivhw_console_count": (u64, [p]),
        "ivhw_console_line": (ctypes.c_char_p, [p, u64]),
        "ivhw_catch_signals": (None, []),
        "ivhw_stats_of": (ctypes.POINTER(_Stats), [p]),
        "ivhw_configure": (None, [p, p, u64, u32, u64, u64, i, d]),
        "ivhw_watch": (i, [p, pint, i, i, i]),
        "ivhw_set_peer": (None, [p, u32, pint, i]),
        "ivhw_push_event": (None, [p, u32, u64]),
        "ivhw_reset": (None, [p]),
        "ivhw_take_flags": (u32, [p]),
        "ivhw_device_counters": (i, [p, pu64]),
        "ivhw_drain": (None, [p]),
        "ivhw_write": (i, [p, u64, u32, u32, pu64]),
        "ivhw_read": (i, [p, u64, pu64]),
        "ivhw_request": (i, [p, i, u64, u32, u32, pu64]),
        "ivhw_burst": (u64, [p, pu64, u64, pu64]),
        "ivhw_wait_irq": (u64, [p, d]),
        "ivhw_run": (None, [p, d]),
        "ivhw_bench_accesses": (u64, [p, pu64, u64, u64]),
        "ivhw_bare_accesses": (u64, [p, pu64, u64, u64]),
        "ivhw_bare_cycles": (u64, [p, u64]),
        "ivhw_cycles": (u64, [p, u64]),
    }
    for name, (restype, argtypes) in signatures.items():
        function = getattr(lib, name)
        function.restype = restype
        function.argtypes = argtypes


def _fds(values: tuple[int, ...] | list[int]) -> Any:
    return (ctypes.c_int * max(1, len(values)))(*values)


class Engine:
    """One Verilated device and its transport, in the engine library at ``library``.

    Parameters
    ----------
    library : str or Path
        The shared library a native build made (:attr:`ivhw.cosim.build.Build.library`).
    waves : str or None
        A VCD file to write (the library must be built with waves).

    Every method that runs cycles leaves flags (:meth:`take_flags`) when the
    caller must act: ``F_STOP``, ``F_MEMBER``, ``F_LIMIT``, ``F_TIMEOUT``.
    """

    def __init__(self, library: str | os.PathLike[str], waves: str | None = None) -> None:
        self._lib = lib = ctypes.CDLL(os.fspath(library))
        _declare(lib)
        if waves and not lib.ivhw_traced():
            raise ValueError("this engine library was built without waves")
        self._handle = lib.ivhw_new(waves.encode() if waves else None)
        self._stats = lib.ivhw_stats_of(self._handle).contents
        self._out = ctypes.c_uint64()
        self._out_ref = ctypes.byref(self._out)
        self._wait = lib.ivhw_wait_irq
        self._burst_ops = (ctypes.c_uint64 * (3 * BURST))()
        self._burst_out = (ctypes.c_uint64 * BURST)()
        self._keep: list[Any] = []

    def close(self) -> None:
        """Finish the simulation (flushes the waveform) and free it."""
        if self._handle:
            self._lib.ivhw_free(self._handle)
            self._handle = None

    def configure(
        self,
        memory: memoryview,
        own_id: int,
        *,
        poll_cycles: int = 8,
        msi_stall: int = 0,
        no_guest: bool = False,
        limit: float | None = None,
    ) -> None:
        """The shared memory (a writable mapping), own ID and run parameters."""
        buffer = (ctypes.c_uint8 * len(memory)).from_buffer(memory)
        self._keep.append(buffer)  # the engine keeps a pointer into the mapping
        self._lib.ivhw_configure(
            self._handle, ctypes.addressof(buffer), len(memory), own_id, poll_cycles,
            msi_stall, int(no_guest), 0.0 if limit is None else limit,
        )  # fmt: skip

    def watch(self, own_fds: tuple[int, ...], member_fd: int, stop_fd: int) -> None:
        """Own eventfds (by vector), the fd of server messages, the stop FIFO (or -1)."""
        error = self._lib.ivhw_watch(self._handle, _fds(own_fds), len(own_fds), member_fd, stop_fd)
        if error:
            raise OSError(-error, os.strerror(-error))

    def attach(
        self, peer: Peer, *, stop_fd: int = -1, memory: memoryview | None = None, **options: Any
    ) -> None:
        """:meth:`configure` and :meth:`watch` for ``peer`` (joined), with its current peers.

        ``memory``: the device's writable view of the shared memory (default the peer's).
        """
        if memory is None:
            memory = peer.memory
        assert memory is not None
        self.configure(memory, peer.id, **options)
        self.watch(peer.eventfds(peer.id), peer.server_fileno(), stop_fd)
        for other in peer.peers:
            self.set_peer(other, peer.eventfds(other))

    def catch_signals(self) -> None:
        """SIGTERM and SIGINT stop the engine at its next poll (``F_STOP``)."""
        self._lib.ivhw_catch_signals()

    def set_peer(self, peer: int, fds: tuple[int, ...]) -> None:
        """Peer ``peer``'s eventfds by vector (empty: it left)."""
        self._lib.ivhw_set_peer(self._handle, peer, _fds(fds), len(fds))

    def push_event(self, vector: int, count: int) -> None:
        """An own doorbell read outside the engine (by the peer library)."""
        self._lib.ivhw_push_event(self._handle, vector, count)

    def reset(self) -> None:
        """Drive the transport idle, the own ID valid, and reset the device."""
        self._lib.ivhw_reset(self._handle)

    def drain(self) -> None:
        """Clock until the transport is quiet (after the guest returned)."""
        self._lib.ivhw_drain(self._handle)

    def take_flags(self) -> int:
        """The flags raised since the last call, cleared."""
        return int(self._lib.ivhw_take_flags(self._handle))

    def write(self, addr: int, value: int, strb: int = 0xF) -> tuple[int, int]:
        """A bus write: (status, response code); status 0 is done with no flags waiting."""
        status = self._lib.ivhw_write(self._handle, addr, value, strb, self._out_ref)
        return status, self._out.value

    def read(self, addr: int) -> tuple[int, int]:
        """A bus read: (status, data or response code)."""
        status = self._lib.ivhw_read(self._handle, addr, self._out_ref)
        return status, self._out.value

    def burst(self, ops: list[tuple[int, int, int]]) -> tuple[int, int, list[int]]:
        """Up to :data:`BURST` bus transactions (write?, addr, value | strb << 32) in one call.

        Returns ``(done, status, values)``: ``done`` transactions ended ``BUS_OK`` with no
        flag waiting; if ``done < len(ops)``, transaction ``done`` ended with ``status``
        (as :meth:`read` / :meth:`write` return it) and ran no further. ``values``: the
        read data or response code of each transaction that ran.
        """
        count = len(ops)
        if count > BURST:
            raise ValueError(f"at most {BURST} transactions in one burst, not {count}")
        self._burst_ops[: 3 * count] = [x for op in ops for x in op]
        result = self._lib.ivhw_burst(self._handle, self._burst_ops, count, self._burst_out)
        done, status = divmod(result, _BURST_STATUS)
        return done, status, self._burst_out[: min(done + 1, count)]

    def request(self, kind: int, addr: int, be: int, data: int) -> tuple[int, int]:
        """One PCI request on the transaction port: (status, completion data)."""
        status = self._lib.ivhw_request(self._handle, kind, addr, be, data, self._out_ref)
        return status, self._out.value

    def wait_irq(self, deadline: float | None) -> tuple[int, int]:
        """(interrupts seen, flags taken): 0 interrupts when ``deadline`` passed or a flag
        ended the wait. One call, since it is the path of a wake (Python runs cold then)."""
        result = self._wait(self._handle, 0.0 if deadline is None else deadline)
        return divmod(result, _WAIT_FLAGS)

    def run(self, deadline: float | None = None) -> None:
        """Run with no guest until a flag or ``deadline`` (monotonic seconds)."""
        self._lib.ivhw_run(self._handle, 0.0 if deadline is None else deadline)

    def bench_accesses(self, ops: list[tuple[int, int, int]], count: int) -> int:
        """``count`` bus accesses back to back, cycling through ``ops`` (kind, addr, value)."""
        flat = (ctypes.c_uint64 * (3 * len(ops)))(*[x for op in ops for x in op])
        return int(self._lib.ivhw_bench_accesses(self._handle, flat, len(ops), count))

    def bare_accesses(self, ops: list[tuple[int, int, int]], count: int) -> int:
        """The same accesses with a transport that only answers; the cycles they took."""
        flat = (ctypes.c_uint64 * (3 * len(ops)))(*[x for op in ops for x in op])
        return int(self._lib.ivhw_bare_accesses(self._handle, flat, len(ops), count))

    def bare_cycles(self, count: int) -> int:
        """``count`` cycles with a transport that only answers (a firmware device's limit)."""
        return int(self._lib.ivhw_bare_cycles(self._handle, count))

    def run_cycles(self, count: int) -> int:
        """``count`` cycles with the whole transport, whatever the device does meanwhile."""
        return int(self._lib.ivhw_cycles(self._handle, count))

    def device_counters(self, names: tuple[str, ...]) -> dict[str, int]:
        """The device's counter ports ``names`` (the build's order), as they read now."""
        values = (ctypes.c_uint64 * max(1, len(names)))()
        count = self._lib.ivhw_device_counters(self._handle, values)
        return {name: int(values[n]) & 0xFFFF_FFFF for n, name in enumerate(names[:count])}

    @property
    def cycles(self) -> int:
        """Clock cycles served so far (reset excluded)."""
        return int(self._stats.counter[0])

    def statistics(self) -> dict[str, Any]:
        """The counters and samples in the cocotb engine's form."""
        s = self._stats
        stats: dict[str, Any] = {name: int(s.counter[i]) for i, name in enumerate(COUNTERS)}
        del stats["cycles"]
        stats["blocked_seconds"] = s.blocked_seconds
        stats["events_by_vector"] = {v: n for v, n in enumerate(s.events_by_vector) if n}
        stats["msix"] = {v: n for v, n in enumerate(s.msix) if n}
        ring = s.wake_to_ring[: s.wake_to_ring_count]
        stats["wake_to_ring"] = [(r[0], int(r[1]), r[2], r[3]) for r in ring]
        stats["wake_to_irq"] = [(r[0], int(r[1])) for r in s.wake_to_irq[: s.wake_to_irq_count]]
        # native only: each wake's path, epoll -> eventfd read -> interrupt -> guest
        stats["wakes"] = [(*r[:5], int(r[5])) for r in s.wakes[: s.wakes_count]]
        lines = self._lib.ivhw_console_count(self._handle)
        if lines:  # a device with a UART: what its firmware printed
            stats["console"] = [
                self._lib.ivhw_console_line(self._handle, n).decode("ascii", "replace")
                for n in range(lines)
            ]
        return stats


def run_coroutine(coroutine: Coroutine[Any, Any, Any]) -> Any:
    """Run a guest coroutine whose awaits all complete at once (native calls underneath)."""
    try:
        coroutine.send(None)
    except StopIteration as done:
        return done.value
    coroutine.close()
    raise RuntimeError(
        "under the native engine a guest may await only its Guest's methods "
        "(run it with --engine cocotb to await cocotb triggers)"
    )


class _Bus:
    """The guest's bus on the native engine: one engine call per transaction."""

    def __init__(self, bridge: NativeBridge) -> None:
        self._bridge = bridge
        self._engine = bridge.engine
        self._pci = bridge.config.device == "pci"

    def _done(self, status: int, code: int, kind: int, addr: int, value: int = 0) -> int:
        if status & _FLAGGED:
            status &= ~_FLAGGED
            self._bridge.handle(self._engine.take_flags())
        if status == _BUS_OK:
            return code
        if status == _BUS_ABORTED:  # a flag that ends the run was raised mid-transaction
            raise Stop(STATUS_OK, "stopped")
        # the messages of the cocotb engine's bus drivers (ivhw.cosim.bridge, .pci)
        if self._pci:
            raise TransactionError(f"request {kind} at {addr:#x} answered Unsupported Request")
        if kind == _WRITE:
            raise BusError(f"write of {value:#x} to {addr:#x} answered {_RESP[code]}")
        raise BusError(f"read of {addr:#x} answered {_RESP[code]}")

    async def read(self, addr: int) -> int:
        status, value = self._engine.read(addr)
        if status == _BUS_OK:
            return value & 0xFFFF_FFFF
        return self._done(status, value, _READ, addr) & 0xFFFF_FFFF

    async def write(self, addr: int, value: int, strb: int = 0xF) -> None:
        status, code = self._engine.write(addr, value, strb)
        if status != _BUS_OK:
            self._done(status, code, _WRITE, addr, value)

    async def read_words(self, addrs: list[int]) -> list[int]:
        """Reads at ``addrs`` in order, as many :meth:`read` calls would (one engine call)."""
        return [v & 0xFFFF_FFFF for v in self._burst([(0, a, 0) for a in addrs])]

    async def write_words(self, writes: list[tuple[int, int, int]]) -> None:
        """Writes ``(addr, value, strb)`` in order, as many :meth:`write` calls would."""
        self._burst([(1, a, (v & 0xFFFF_FFFF) | strb << 32) for a, v, strb in writes])

    def _burst(self, ops: list[tuple[int, int, int]]) -> list[int]:
        values: list[int] = []
        engine = self._engine
        while ops:
            chunk = ops[:BURST]
            done, status, got = engine.burst(chunk)
            values += got[:done]
            if done < len(chunk):  # flags to act on, an error or a stop: as one call would
                write, addr, value = chunk[done]
                kind = _WRITE if write else _READ
                values.append(self._done(status, got[done], kind, addr, value & 0xFFFF_FFFF))
                done += 1
            ops = ops[done:]
        return values

    async def request(self, kind: int, addr: int, be: int = 0xF, data: int = 0) -> int:
        status, value = self._engine.request(kind, addr, be, data)
        return self._done(status, value, kind, addr)

    async def cfg_read(self, offset: int) -> int:
        return await self.request(ReqKind.CFG_READ.value, offset)

    async def cfg_write(self, offset: int, value: int, be: int = 0xF) -> None:
        await self.request(ReqKind.CFG_WRITE.value, offset, be, value)


class NativeBridge:
    """The transport of one simulated device on the native engine.

    Parameters
    ----------
    config : BridgeConfig
        Socket, device, vectors, guest, limits and the engine library.

    Attributes
    ----------
    engine : Engine
        The Verilated device with its transport.
    peer : Peer
        The connection to the server.
    """

    def __init__(self, config: BridgeConfig) -> None:
        if not config.library:
            raise ValueError("the native engine needs IVHW_COSIM_LIBRARY (set by ivshmem-cosim)")
        self.config = config
        self.engine = Engine(config.library, config.waves)
        self.peer: Peer | None = None
        self._known: dict[int, int] = {}
        self._stop_fd = -1

    # -- the guest's host side (ivhw.cosim.guest_api._Host) ------------------------------------

    @property
    def cycles(self) -> int:
        return self.engine.cycles

    def known_peers(self) -> dict[int, int]:
        """Other peers and their vector counts."""
        assert self.peer is not None
        return dict(self.peer.peers)

    async def wait_irq(self, timeout: float | None) -> int:
        """Block the guest until an interrupt (or ``timeout`` wall-clock seconds)."""
        deadline = None if timeout is None else time.monotonic() + max(timeout, 1e-9)
        engine = self.engine
        while True:
            count, flags = engine.wait_irq(deadline)
            if flags & ~F_TIMEOUT:
                self.handle(flags)
            if count or flags & F_TIMEOUT:
                return count
            if deadline is not None and time.monotonic() >= deadline:
                return 0

    # -- flags ---------------------------------------------------------------------------------

    def handle(self, flags: int) -> None:
        """Act on the engine's flags: stop (raises :class:`Stop`) or process server messages."""
        if flags & F_STOP:
            raise Stop(STATUS_OK, "stopped by a signal")
        if flags & F_LIMIT:
            raise Stop(STATUS_OK, f"ran for {self.config.seconds:g} s")
        if flags & F_MEMBER:
            self._server_messages()

    def _server_messages(self) -> None:
        peer = self.peer
        assert peer is not None
        try:
            events = peer.poll(0)
        except ServerGone:
            raise server_gone() from None
        for event in events:
            if isinstance(event, Doorbell):  # own doorbells the peer library read
                self.engine.push_event(event.vector, event.count)
            else:
                announce_membership(event)
                if isinstance(event, PeerLeft) and self.config.revision2 is not None:
                    self.engine.push_event(0, 1)  # revision 2: own vector 0 on a departure
        self._sync_peers()

    def _sync_peers(self) -> None:
        """Bring the engine's peer table to the peer library's view."""
        peer = self.peer
        assert peer is not None
        current = dict(peer.peers)
        for other, vectors in current.items():
            if self._known.get(other) != vectors:
                self.engine.set_peer(other, peer.eventfds(other))
        for other in set(self._known) - set(current):
            self.engine.set_peer(other, ())
        self._known = current

    # -- run -----------------------------------------------------------------------------------

    def run(self) -> tuple[int, str]:
        """Join, reset the device, run the guest (or the device alone); (status, message)."""
        from .build import DEVICES

        config = self.config
        try:
            # a device with a CPU inside runs its firmware: no Python guest
            firmware = DEVICES[config.device].bus == "none"
            guest_function = None if firmware else load_guest(config.guest, config.revision)
        except (KeyError, ValueError) as error:
            return STATUS_FAILED, str(error)
        try:
            self.peer = peer = join(config)
        except Stop as stop:
            return stop.status, stop.message
        try:
            return self._run(peer, guest_function)
        except Stop as stop:
            return stop.status, stop.message
        finally:
            if self._stop_fd >= 0:
                os.close(self._stop_fd)
            # the engine keeps a pointer into the mapping: it goes with the process
            peer.close()

    def _run(self, peer: Peer, guest_function: GuestFunction | None) -> tuple[int, str]:
        config, engine = self.config, self.engine
        path = os.environ.get("IVHW_COSIM_STOP_FIFO")
        if path:
            # as the cocotb engine: the CLI writes to it on SIGTERM/SIGINT, and it hangs
            # up if the CLI dies, so no orphaned simulator stays in the domain
            self._stop_fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        limit = None if config.seconds is None else time.monotonic() + config.seconds
        self._memory = device_memory(peer)  # kept mapped while the engine runs
        engine.attach(
            peer, stop_fd=self._stop_fd, memory=self._memory[0], poll_cycles=config.poll_cycles,
            msi_stall=config.msi_stall, no_guest=guest_function is None, limit=limit,
        )  # fmt: skip
        self._known = dict(peer.peers)
        engine.catch_signals()
        engine.reset()
        announce(peer, config.guest)
        bus = _Bus(self)
        regs, regs_base, shm_base, memory_map = guest_windows(config.shm_size)
        sections = (
            None if config.revision2 is None else sections_of(config.shm_size, config.revision2)
        )
        if config.device == "pci":
            try:
                layout = run_coroutine(
                    enumerate_endpoint(bus, config.revision2, sections)  # type: ignore[arg-type]
                )
            except TransactionError as error:
                return STATUS_FAILED, f"PCI enumeration failed: {error}"
            regs, regs_base, shm_base, memory_map = guest_windows(
                config.shm_size, layout, config.revision2
            )
            announce_pci(layout)
        if guest_function is None:
            while True:
                engine.run()
                self.handle(engine.take_flags())
        guest = Guest(
            bus, regs, regs_base=regs_base, shm_base=shm_base, shm_size=config.shm_size,
            host=self, args=config.guest_args, memory_map=memory_map, sections=sections,
        )  # fmt: skip
        try:
            run_coroutine(guest.start())
            run_coroutine(guest_function(guest))
            engine.drain()  # the doorbell of the guest's last write leaves the device
        except Stop:
            raise
        except Exception as error:
            traceback.print_exc()
            return STATUS_FAILED, f"guest {config.guest} failed: {error}"
        return STATUS_OK, f"guest {config.guest} finished"


def main() -> int:
    """Run the native engine as ``ivshmem-cosim`` configured it (environment); 0."""
    config = BridgeConfig.from_env()
    bridge = None
    try:
        bridge = NativeBridge(config)
        status, message = bridge.run()
    except BaseException as error:
        stats = bridge.engine.statistics() if bridge is not None else None
        cycles = bridge.cycles if bridge is not None else 0
        write_status(
            config.status_file, STATUS_FAILED, f"bridge failed: {error!r}", stats=stats,
            cycles=cycles, peer=bridge.peer if bridge else None,
        )  # fmt: skip
        raise
    stats = bridge.engine.statistics()
    if config.revision2 is not None:
        stats["device"] = bridge.engine.device_counters(REV2_COUNTERS)
    write_status(
        config.status_file, status, message, stats=stats, cycles=bridge.cycles, peer=bridge.peer
    )
    bridge.engine.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
