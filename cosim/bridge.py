"""The cocotb side of the co-simulation bridge: the simulated device as a real ivshmem peer.

``ivshmem-cosim`` runs this module as the cocotb test of the device's simulation.
It joins the ivshmem server through :class:`ivhw.sw.peer.Peer` and becomes the
device's transport (``ivhw.hdl.transport``):

- ``mem``: served from the peer's mapping of the shared memory, so a simulated
  write is seen by every other peer at once, and a read sees their writes;
- ``doorbell``: each outbound doorbell is written to the target peer's eventfd
  (``Peer.ring``) in the cycle it leaves the device;
- ``event``: own eventfds become events, through a queue that honours
  ``ready`` (nothing is lost while the device back-pressures; a counter above 1,
  i.e. coalesced rings, is still one event and so one interrupt);
- ``peers``: answered from ``Peer.peers`` (and the own ID with its vectors);
- ``ident``: the own peer ID from the handshake.

Waiting. The simulator is single-threaded and simulated time means nothing
while the guest waits for an interrupt and the device is idle, so then the
bridge blocks in ``epoll`` on ``Peer.fileno()`` (in slices of ``_BLOCK_SLICE``
seconds, to notice a stop request) and the process sleeps. An eventfd that fires
wakes it at once; the event enters the device in the next cycle. While anything
is active (bus traffic, doorbells, events queued, the guest computing) the
bridge polls the fds without blocking every ``IVHW_COSIM_POLL_CYCLES`` cycles
(default 8), which bounds the wake latency while busy to that many cycles, and
every cycle while the guest waits for an interrupt but the device still drains.

Test hook. ``IVHW_COSIM_MSI_STALL=N`` (PCI only; default 0) holds the ``msi`` sink's
``ready`` low for ``N`` cycles of every MSI-X message, so the endpoint back-pressures
the ``event`` stream meanwhile and rings pile up in the bridge's queue; the
statistics count those cycles (``event_stall_cycles``) and the events per vector.

The run ends when the guest returns, on SIGTERM/SIGINT, after
``IVHW_COSIM_SECONDS``, or when the server goes away (exit status 3). The
outcome and the bridge's latency statistics go to the JSON file named by
``IVHW_COSIM_STATUS`` for the CLI.
"""

from __future__ import annotations

import collections
import contextlib
import os
import select
import signal
import struct
import time
import traceback
from collections.abc import Awaitable, Callable
from typing import Any

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import Event as SimEvent
from cocotb.triggers import RisingEdge

from ..sw.peer import Doorbell, Peer, PeerLeft, ServerGone
from ..sw.regmap import DOORBELL, MAX_VECTORS
from .build import REV2_COUNTERS
from .guest_api import BusError, Guest, GuestFunction
from .pci import TransactionError, TransactionPort, enumerate_endpoint, msi_vector
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

__all__ = ["AxiLiteBus", "Bridge"]

#: Seconds one blocking wait lasts before the bridge re-checks its stop conditions.
_BLOCK_SLICE = 0.2
#: Cycles without bus or transport activity before the device counts as idle (a
#: doorbell leaves the device's FIFO within 2 cycles of the bus write that queued it,
#: and a blocked bridge would hold it until the next wake).
_QUIET_CYCLES = 4
#: Quiet cycles after which an event that produced no interrupt (a masked vector)
#: no longer keeps the bridge awake.
_UNSIGNALLED_GRACE = 64
#: Latency samples kept for the statistics.
_MAX_SAMPLES = 100_000


class AxiLiteBus:
    """A thin AXI4-Lite master on the ``axil__*`` ports: one transaction at a time.

    ``BREADY``/``RREADY`` stay high; a transaction costs the slave's latency and
    no extra cycles, which keeps the simulated cycles per echo low.
    """

    def __init__(self, dut: Any, tick: Callable[[], Awaitable[None]]) -> None:
        self._tick = tick
        p = "axil__"
        self._awaddr = getattr(dut, p + "awaddr")
        self._awvalid = getattr(dut, p + "awvalid")
        self._awready = _bit(getattr(dut, p + "awready"))
        self._wdata = getattr(dut, p + "wdata")
        self._wstrb = getattr(dut, p + "wstrb")
        self._wvalid = getattr(dut, p + "wvalid")
        self._bvalid = _bit(getattr(dut, p + "bvalid"))
        self._bresp = _word(getattr(dut, p + "bresp"))
        self._araddr = getattr(dut, p + "araddr")
        self._arvalid = getattr(dut, p + "arvalid")
        self._arready = _bit(getattr(dut, p + "arready"))
        self._rvalid = _bit(getattr(dut, p + "rvalid"))
        self._rdata = _word(getattr(dut, p + "rdata"))
        self._rresp = _word(getattr(dut, p + "rresp"))
        for name in ("awvalid", "wvalid", "arvalid", "awprot", "arprot"):
            getattr(dut, p + name).value = 0
        for name in ("bready", "rready"):
            getattr(dut, p + name).value = 1

    async def write(self, addr: int, value: int, strb: int = 0xF) -> None:
        """Write ``value`` at byte address ``addr`` with byte enables ``strb``."""
        tick = self._tick
        self._awaddr.value = addr
        self._wdata.value = value
        self._wstrb.value = strb
        self._awvalid.value = 1
        self._wvalid.value = 1
        while True:
            await tick()
            if self._awready() == "1":
                break
        self._awvalid.value = 0
        self._wvalid.value = 0
        while True:
            await tick()
            if self._bvalid() == "1":
                break
        resp = self._bresp()
        if resp:
            raise BusError(f"write of {value:#x} to {addr:#x} answered {_RESP[resp]}")

    async def read(self, addr: int) -> int:
        """The 32-bit word at byte address ``addr``."""
        tick = self._tick
        self._araddr.value = addr
        self._arvalid.value = 1
        while True:
            await tick()
            if self._arready() == "1":
                break
        self._arvalid.value = 0
        while True:
            await tick()
            if self._rvalid() == "1":
                break
        resp = self._rresp()
        if resp:
            raise BusError(f"read of {addr:#x} answered {_RESP[resp]}")
        return int(self._rdata()) & 0xFFFF_FFFF


_RESP = {0: "OKAY", 1: "EXOKAY", 2: "SLVERR", 3: "DECERR"}


def _bit(handle: Any) -> Any:
    """A fast reader of a 1-bit signal: returns ``"1"`` when high (X/Z read as low).

    ``handle.value == 1`` builds two ``Logic`` objects per call, which was most of the
    bridge's per-cycle cost; the raw GPI read is a string.
    """
    return handle._handle.get_signal_val_binstr


def _word(handle: Any) -> Any:
    """A fast reader of a vector signal's value as an int (only read while valid)."""
    return handle._handle.get_signal_val_long


class _ServedBus:
    """The guest's bus: while a transaction runs, its driver clocks the transport.

    One coroutine per cycle instead of two (the bus driver and the transport loop)
    roughly halves the Python work per simulated cycle.
    """

    def __init__(self, bridge: Bridge, inner: Any) -> None:
        self._bridge = bridge
        self._inner = inner

    async def _served(self, operation: Awaitable[Any]) -> Any:
        bridge = self._bridge
        bridge._bus_busy = True
        bridge._bus_idle.clear()
        try:
            return await operation
        finally:
            bridge._bus_busy = False
            # bus traffic is activity: a doorbell leaves the FIFO after the write's ack
            bridge._quiet = 0
            bridge._bus_idle.set()

    async def read(self, addr: int) -> int:
        return await self._served(self._inner.read(addr))  # type: ignore[no-any-return]

    async def write(self, addr: int, value: int, strb: int = 0xF) -> None:
        await self._served(self._inner.write(addr, value, strb))

    async def cfg_read(self, offset: int) -> int:
        return await self._served(self._inner.cfg_read(offset))  # type: ignore[no-any-return]

    async def cfg_write(self, offset: int, value: int, be: int = 0xF) -> None:
        await self._served(self._inner.cfg_write(offset, value, be))


class Bridge:
    """The transport of one simulated device, connected to an ivshmem server.

    Parameters
    ----------
    dut : cocotb handle
        The device's simulation top.
    config : BridgeConfig
        Socket, device, vectors, guest and limits.

    Attributes
    ----------
    peer : Peer
        The bridge's connection to the server.
    cycles : int
        Clock cycles simulated so far.
    stats : dict
        Counters and latency samples, written to the status file at the end.
    """

    def __init__(self, dut: Any, config: BridgeConfig) -> None:
        self.dut = dut
        self.config = config
        self.peer: Peer | None = None
        self.cycles = 0
        self._edge = RisingEdge(dut.clk)
        self._events: collections.deque[int] = collections.deque()  # for event.ready
        self._bus_busy = False
        self._bus_idle = SimEvent()
        self._stop_requested = False
        self._guest_waiting = False
        # soc: the tile's CPU is the guest; it is idle while it sleeps (its `sleeping` port)
        self._soc = config.device == "soc"
        self._no_guest = config.guest == "none" and not self._soc  # idle whenever quiet
        self._wait_deadline: float | None = None
        self._irqs = 0
        self._irq_event = SimEvent()
        self._wake_time: float | None = None
        self._wake_cycle = 0
        self._irq_mark: tuple[float, int] | None = None
        self.stats: dict[str, Any] = {
            "events": 0,
            "events_by_vector": {},  # eventfd reads (one event each) by vector
            "event_stall_cycles": 0,  # cycles an event was offered while ready was low
            "coalesced": 0,
            "doorbells": 0,
            "doorbells_lost": 0,
            "irqs": 0,
            "msix": {},  # MSI-X messages by vector (PCI)
            "mem_reads": 0,
            "mem_writes": 0,
            "blocks": 0,
            "blocked_seconds": 0.0,
            # (seconds, cycles, wake time, ring time) from an eventfd wake to the next doorbell
            "wake_to_ring": [],
            "wake_to_irq": [],  # (seconds, cycles) from an eventfd wake to the interrupt
            "console": [],  # soc: the lines the firmware printed on its UART
        }

    # -- interface for the guest -------------------------------------------------------------

    def known_peers(self) -> dict[int, int]:
        """Other peers and their vector counts."""
        assert self.peer is not None
        return dict(self.peer.peers)

    async def wait_irq(self, timeout: float | None) -> int:
        """Block the guest until an interrupt (or ``timeout`` wall-clock seconds)."""
        if not self._irqs:
            self._wait_deadline = None if timeout is None else time.monotonic() + timeout
            self._guest_waiting = True
            self._irq_event.clear()
            try:
                await self._irq_event.wait()
            finally:
                self._guest_waiting = False
                self._wait_deadline = None
        count, self._irqs = self._irqs, 0
        return count

    # -- run ---------------------------------------------------------------------------------

    def _request_stop(self, _signum: int, _frame: object) -> None:
        self._stop_requested = True

    async def run(self) -> tuple[int, str]:
        """Join, reset the device, run transport and guest; return (status, message)."""
        guest_function: GuestFunction | None
        try:
            guest_function = load_guest(self.config.guest, self.config.revision)
        except ValueError as error:
            return STATUS_FAILED, str(error)
        try:
            self.peer = join(self.config)
        except Stop as stop:
            return stop.status, stop.message
        peer = self.peer
        self._open_waiter()
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._request_stop)
        dut = self.dut
        Clock(dut.clk, 10, unit="ns").start()
        self._drive_idle()
        pci = self.config.device == "pci"
        if pci:
            bus = _ServedBus(self, TransactionPort(dut, self.tick))
        elif self._soc:
            bus = None  # the tile's CPU drives its own bus
            dut.uart_rx.value = 1
            cocotb.start_soon(self._console())
        else:
            bus = _ServedBus(self, AxiLiteBus(dut, self.tick))  # drives AXI idle in reset
        dut.ident__id.value = peer.id
        dut.ident__valid.value = 1
        dut.rst.value = 1
        for _ in range(3):
            await self._edge
        dut.rst.value = 0
        await self._edge
        announce(peer, self.config.guest)
        finished = SimEvent()
        outcomes: list[tuple[int, str] | None] = []

        async def track(coro: Any) -> None:
            outcomes.append(await coro)
            finished.set()

        transport = cocotb.start_soon(track(self._transport()))
        config = self.config
        regs, regs_base, shm_base, memory_map = guest_windows(config.shm_size)
        sections = (
            None if config.revision2 is None else sections_of(config.shm_size, config.revision2)
        )
        if pci:
            try:
                layout = await enumerate_endpoint(bus, config.revision2, sections)  # type: ignore[arg-type]
            except TransactionError as error:
                transport.cancel()
                self._close_memory()
                peer.close()
                return STATUS_FAILED, f"PCI enumeration failed: {error}"
            regs, regs_base, shm_base, memory_map = guest_windows(
                config.shm_size, layout, config.revision2
            )
            announce_pci(layout)
        guest_task = None
        if guest_function is not None:
            guest = Guest(
                bus,
                regs,
                regs_base=regs_base,
                shm_base=shm_base,
                shm_size=self.config.shm_size,
                host=self,
                args=self.config.guest_args,
                memory_map=memory_map,
                sections=sections,
            )
            guest_task = cocotb.start_soon(track(self._run_guest(guest, guest_function)))
        try:
            await finished.wait()
        finally:
            for task in (transport, guest_task):
                if task is not None and not task.done():
                    task.cancel()
        status, message = STATUS_OK, "stopped"
        for outcome in outcomes:
            if outcome is not None:
                status, message = outcome
                break
        if self.config.revision2 is not None:
            self.stats["device"] = {
                name: int(getattr(self.dut, name).value) for name in REV2_COUNTERS
            }
        self._close_waiter()
        self._close_memory()
        peer.close()
        return status, message

    def _close_memory(self) -> None:
        view, mapping = getattr(self, "_device_memory", (None, None))
        if mapping is not None:
            with contextlib.suppress(BufferError):
                view.release()
                mapping.close()
        self._device_memory = (None, None)

    async def _console(self) -> None:
        """Print the soc tile's UART output as ``[soc]`` lines (decoded by cocotbext-uart)."""
        from cocotbext.uart import UartSink

        from .build import SOC_BAUD

        sink = UartSink(self.dut.uart_tx, baud=SOC_BAUD, bits=8, stop_bits=1)
        line = bytearray()
        while True:
            for byte in await sink.read():
                if byte != 0x0A:
                    line.append(byte)
                    continue
                text = line.decode("ascii", errors="replace")
                line.clear()
                print(f"[soc] {text}", flush=True)
                self._sample("console", text)

    async def _run_guest(self, guest: Guest, function: GuestFunction) -> tuple[int, str]:
        try:
            await guest.start()
            await function(guest)
            await self._drain()
        except Stop as stop:
            return stop.status, stop.message
        except Exception as error:
            traceback.print_exc()
            return STATUS_FAILED, f"guest {self.config.guest} failed: {error}"
        return STATUS_OK, f"guest {self.config.guest} finished"

    async def _drain(self) -> None:
        """Clock the device after the guest returned until its transport is quiet.

        A doorbell the guest's last write queued may still be in the device's FIFO
        (a PCI memory write completes before its doorbell leaves); it must leave.
        """
        self._bus_busy = True  # the transport loop waits, as for a bus transaction
        self._bus_idle.clear()
        try:
            for _ in range(_UNSIGNALLED_GRACE):
                await self.tick()
                if self._quiet >= _QUIET_CYCLES:
                    break
        finally:
            self._bus_busy = False
            self._bus_idle.set()

    def _drive_idle(self) -> None:
        dut = self.dut
        dut.doorbell__ready.value = 1
        dut.event__valid.value = 0
        dut.event__payload.value = 0
        dut.peers__ack.value = 0
        dut.peers__vectors.value = 0
        dut.mem__ready.value = 1
        dut.mem__r_valid.value = 0
        dut.mem__r_data.value = 0

    def _take(self, events: list[object]) -> None:
        """Queue the doorbells among ``events`` for the device."""
        for event in events:
            if isinstance(event, Doorbell):
                self._events.append(event.vector)
                self.stats["events"] += 1
                by_vector = self.stats["events_by_vector"]
                by_vector[event.vector] = by_vector.get(event.vector, 0) + 1
                self.stats["coalesced"] += event.count - 1
                if self._wake_time is None:
                    self._wake_time = time.perf_counter()
                    self._wake_cycle = self.cycles
                    self._irq_mark = (self._wake_time, self.cycles)
            else:
                announce_membership(event)
                if isinstance(event, PeerLeft) and self.config.revision2 is not None:
                    # revision 2: a peer leaving is an event on own vector 0
                    self._take([Doorbell(0, 1)])

    def _open_waiter(self) -> None:
        """One epoll over the own eventfds, the peer's fd and the CLI's stop FIFO (if any).

        The own eventfds are read here directly (one ``epoll_wait`` and one ``read`` per
        doorbell, the shortest path from a ring to the device); ``Peer.fileno()`` is for
        the server's messages (peers joining and leaving), which are not urgent.
        """
        assert self.peer is not None
        self._waiter = select.epoll()
        self._own = {fd: vector for vector, fd in enumerate(self.peer.eventfds(self.peer.id))}
        for fd in self._own:
            self._waiter.register(fd, select.EPOLLIN)
        self._peer_fd = self.peer.fileno()
        self._waiter.register(self._peer_fd, select.EPOLLIN)
        self._stop_fd = -1
        path = os.environ.get("IVHW_COSIM_STOP_FIFO")
        if path:
            # The CLI holds the FIFO open and writes to it on SIGTERM/SIGINT; if the CLI
            # dies, the FIFO hangs up. Either way the bridge stops: no orphaned simulator.
            # (A Python signal handler inside the simulator is not reliably run.)
            self._stop_fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
            self._waiter.register(self._stop_fd, select.EPOLLIN)

    def _close_waiter(self) -> None:
        waiter = getattr(self, "_waiter", None)
        if waiter is not None:
            waiter.close()
        if getattr(self, "_stop_fd", -1) >= 0:
            os.close(self._stop_fd)
            self._stop_fd = -1

    def _poll(self, timeout: float) -> None:
        assert self.peer is not None
        ready = self._waiter.poll(timeout)
        if not ready:
            return
        doorbells: list[object] = []
        peer_ready = False
        own = self._own
        for fd, _mask in ready:
            vector = own.get(fd)
            if vector is not None:
                try:
                    count = int.from_bytes(os.read(fd, 8), "little")
                except BlockingIOError:
                    continue
                doorbells.append(Doorbell(vector, count))
            elif fd == self._peer_fd:
                peer_ready = True
            elif fd == self._stop_fd:
                self._stop_requested = True
        if self._stop_requested:
            raise Stop(STATUS_OK, "stopped by a signal")
        if doorbells:
            # the peer's epoll also saw these fds: its turn comes at the next wait
            self._take(doorbells)
            return
        if not peer_ready:
            return
        try:
            events = self.peer.poll(0)
        except ServerGone:
            raise server_gone() from None
        self._take(events)  # type: ignore[arg-type]

    def _sample(self, key: str, value: object) -> None:
        samples = self.stats[key]
        if len(samples) < _MAX_SAMPLES:
            samples.append(value)

    async def _transport(self) -> tuple[int, str] | None:
        try:
            self._bind()
            await self._transport_loop()
        except Stop as stop:
            return stop.status, stop.message
        return None

    def _bind(self) -> None:
        """Look up the transport's signals once, with fast readers for the polled ones."""
        dut = self.dut
        self._db_valid, self._db_payload = _bit(dut.doorbell__valid), _word(dut.doorbell__payload)
        self._ev_valid, self._ev_payload = dut.event__valid, dut.event__payload
        self._ev_ready = _bit(dut.event__ready)
        self._pq_req, self._pq_peer = _bit(dut.peers__req), _word(dut.peers__peer)
        self._pq_ack, self._pq_vectors = dut.peers__ack, dut.peers__vectors
        self._mem_valid, self._mem_addr = _bit(dut.mem__valid), _word(dut.mem__addr)
        self._mem_we, self._mem_wdata = _bit(dut.mem__we), _word(dut.mem__w_data)
        self._mem_sel = _word(dut.mem__sel)
        self._mem_rdata, self._mem_rvalid = dut.mem__r_data, dut.mem__r_valid
        if self.config.revision2 is not None and self.config.revision2.interrupts == "intx":
            self._irq = _bit(dut.intx)  # one pulse per interrupt
            self._msi_payload = None
            self._msi_stall = 0
            dut.msi__ready.value = 1
        elif self.config.device == "pci":
            # an MSI-X write on the msi port is the CPU's interrupt (msi.ready stays high
            # unless the stall test hook is on)
            self._msi_ready = dut.msi__ready
            self._msi_stall = self.config.msi_stall
            self._msi_held = 0
            dut.msi__ready.value = int(not self._msi_stall)
            self._irq = _bit(dut.msi__valid)
            self._msi_payload = dut.msi__payload._handle.get_signal_val_binstr
        elif self._soc:
            self._irq = lambda: "0"  # the tile's interrupt is its CPU's business
            self._sleeping = _bit(dut.sleeping)
            self._msi_payload = None
            self._msi_stall = 0
        else:
            self._irq = _bit(dut.irq)
            self._msi_payload = None
            self._msi_stall = 0
        self._ev_driving = False
        self._acked = False
        self._r_pending = False
        self._quiet = 0
        self._unsignalled = 0
        self._limit = (
            None if self.config.seconds is None else time.monotonic() + self.config.seconds
        )

    def _msi_taken(self) -> bool:
        """Whether the MSI-X message seen at this edge was taken (the stall test hook)."""
        if self._msi_held < self._msi_stall:
            self._msi_held += 1
            if self._msi_held == self._msi_stall:
                self._msi_ready.value = 1  # the message goes at the next edge
            return False
        self._msi_ready.value = 0
        self._msi_held = 0
        return True

    async def tick(self) -> None:
        """Advance one clock cycle and serve the transport in it (for the guest's bus driver)."""
        await self._edge
        self._service()

    def _service(self) -> None:
        """One cycle of transport work, sampled at the rising edge just passed."""
        peer, stats = self.peer, self.stats
        assert peer is not None
        self.cycles = cycle = self.cycles + 1
        active = False
        # -- outbound doorbells (doorbell.ready is always high) ---------------------------
        if self._db_valid() == "1":
            active = True
            target, vector = DOORBELL.unpack(self._db_payload() & 0xFFFF_FFFF)
            rang = time.perf_counter()  # CLOCK_MONOTONIC: comparable across processes
            try:
                peer.ring(target, vector)
                stats["doorbells"] += 1
            except (KeyError, ValueError):
                stats["doorbells_lost"] += 1  # the peer left after the device checked it
            if self._wake_time is not None:
                self._sample(
                    "wake_to_ring",
                    (rang - self._wake_time, cycle - self._wake_cycle, self._wake_time, rang),
                )
                self._wake_time = None
        # -- shared memory (mem.ready is always high) --------------------------------------
        if self._r_pending:
            self._mem_rvalid.value = 0
            self._r_pending = False
        if self._mem_valid() == "1":
            active = True
            memory = self._memory
            offset = (self._mem_addr() & 0xFFFF_FFFF) << 2
            if self._mem_we() == "1":
                data = self._mem_wdata() & 0xFFFF_FFFF
                sel = self._mem_sel() & 0xF
                if sel == 0xF:
                    struct.pack_into("<I", memory, offset, data)
                else:
                    for lane in range(4):
                        if sel >> lane & 1:
                            memory[offset + lane] = (data >> (8 * lane)) & 0xFF
                stats["mem_writes"] += 1
            else:
                self._mem_rdata.value = struct.unpack_from("<I", memory, offset)[0]
                self._mem_rvalid.value = 1
                self._r_pending = True
                stats["mem_reads"] += 1
        # -- peer query ----------------------------------------------------------------------
        if self._acked:
            self._pq_ack.value = 0
            self._acked = False
        elif self._pq_req() == "1":
            active = True
            asked = self._pq_peer() & 0xFFFF
            count = peer.vectors if asked == peer.id else peer.peers.get(asked, 0)
            self._pq_vectors.value = min(count, MAX_VECTORS)
            self._pq_ack.value = 1
            self._acked = True
        # -- interrupt -----------------------------------------------------------------------
        if self._irq() == "1":
            active = True
            if not self._msi_stall or self._msi_taken():  # else held by the stall hook
                if self._msi_payload is not None:
                    vector = msi_vector(int(self._msi_payload(), 2))
                    stats["msix"][vector] = stats["msix"].get(vector, 0) + 1
                self._unsignalled = max(0, self._unsignalled - 1)
                self._irqs += 1
                stats["irqs"] += 1
                if self._irq_mark is not None:
                    seconds = time.perf_counter() - self._irq_mark[0]
                    self._sample("wake_to_irq", (seconds, cycle - self._irq_mark[1]))
                    self._irq_mark = None
                self._irq_event.set()
        # -- inbound events (held until ready: back-pressure never loses one) ---------------
        if self._ev_driving:
            if self._ev_ready() == "1":
                self._ev_driving = False
                self._events.popleft()
                self._unsignalled += 1  # its interrupt is due within a few cycles
            else:
                stats["event_stall_cycles"] += 1
        if not self._ev_driving:
            if self._events:
                self._ev_payload.value = self._events[0]
                self._ev_valid.value = 1
                self._ev_driving = True
            elif self._ev_valid_high:
                self._ev_valid.value = 0
            self._ev_valid_high = self._ev_driving
        if self._ev_driving:
            active = True
        self._quiet = 0 if active else self._quiet + 1
        if self._soc:
            self._guest_waiting = self._sleeping() == "1"
        if self._stop_requested:
            raise Stop(STATUS_OK, "stopped by a signal")
        # while the guest waits for an interrupt, its cycles are idle draining: look at the
        # fds every cycle (a syscall costs far less than a simulated cycle); while it runs,
        # every poll_cycles cycles
        if self._guest_waiting or cycle % self.config.poll_cycles == 0:
            self._poll(0)
            self._check_deadlines()

    def _check_deadlines(self) -> None:
        now = time.monotonic()
        if self._limit is not None and now >= self._limit:
            raise Stop(STATUS_OK, f"ran for {self.config.seconds:g} s")
        deadline = self._wait_deadline
        if deadline is not None and now >= deadline:
            self._irq_event.set()  # the guest's wait timed out

    async def _transport_loop(self) -> None:
        assert self.peer is not None
        self._device_memory = device_memory(self.peer)
        self._memory = self._device_memory[0]
        self._ev_valid_high = False
        stats = self.stats
        while True:
            if self._bus_busy:
                # the guest's bus driver advances the clock and serves the transport
                await self._bus_idle.wait()
                continue
            idle = (
                self._quiet >= _QUIET_CYCLES
                and not self._events
                and (not self._unsignalled or self._quiet >= _UNSIGNALLED_GRACE)
            )
            if idle and (self._guest_waiting or self._no_guest):
                # nothing can happen in the simulation until an fd fires: sleep in epoll
                self._check_deadlines()
                if self._irq_event.is_set() and self._guest_waiting:
                    await self._edge  # let the guest take its timeout
                    if not self._bus_busy:
                        self._service()
                    continue
                now = time.monotonic()
                timeout = _BLOCK_SLICE
                for deadline in (self._wait_deadline, self._limit):
                    if deadline is not None:
                        timeout = min(timeout, deadline - now)
                stats["blocks"] += 1
                began = time.perf_counter()
                self._poll(max(timeout, 0.0))
                stats["blocked_seconds"] += time.perf_counter() - began
                if self._stop_requested:
                    raise Stop(STATUS_OK, "stopped by a signal")
                if not self._events:
                    continue  # nothing arrived: no simulated time needs to pass
            await self._edge
            if not self._bus_busy:  # else the bus driver, woken by the same edge, serves it
                self._service()


def _write_status(path: str | None, status: int, message: str, bridge: Bridge) -> None:
    write_status(path, status, message, stats=bridge.stats, cycles=bridge.cycles, peer=bridge.peer)


@cocotb.test()
async def cosim(dut: Any) -> None:
    """Run the simulated device as a peer of the ivshmem domain until told to stop."""
    config = BridgeConfig.from_env()
    bridge = Bridge(dut, config)
    profile_path = os.environ.get("IVHW_COSIM_PROFILE")
    profiler = None
    if profile_path:
        import cProfile

        profiler = cProfile.Profile()
        profiler.enable()
    try:
        status, message = await bridge.run()
    except BaseException as error:
        _write_status(config.status_file, STATUS_FAILED, f"bridge failed: {error!r}", bridge)
        raise
    if profiler is not None:
        profiler.disable()
        profiler.dump_stats(profile_path)
    # the CLI reports the outcome in one line from the status file; failing the cocotb
    # test here would only add a traceback to the transcript
    _write_status(config.status_file, status, message, bridge)
