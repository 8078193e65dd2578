"""Echo round trip through the co-simulation bridge, against raw eventfds and QEMU.

``python -m bench.cosim_rtt [--quick] [--requests N] [--idle SECONDS] [--sims icarus,verilator]
[--engines native,cocotb] [--devices flat,pci]``

For each simulator, engine (native: Verilator only) and device: a server, the
simulated device running the ``echo`` guest (``ivshmem-cosim``) and a host peer
that sends echo requests (``ivhw.sw.echo.request``) and measures each round
trip (``pci2``: the revision 2 endpoint, an ``ivshmem2-server`` and the revision 2
echo protocol, ``echo2`` against ``ivhw.sw.echo2.request2``). The bridge records,
for every request, the wall time and the clock cycles from the moment its ``epoll``
returned with the doorbell to the moment the reply doorbell left the device: that
is the *simulated* part. The rest of the round
trip is the *bridge overhead* (eventfd wake of the simulator, the host's own
wake, the code on both sides). Baselines, measured in the same run: a raw
ping-pong between two processes on two eventfds, each side waiting in ``epoll``
as the bridge and the peer library do, and QEMU 7.2's own ivshmem-doorbell
device (through qtest) sending the same echo requests to a host echo peer.

Then the device is left idle (the guest waits for an interrupt) and the CPU
time of the simulator process and of the CLI over a few seconds is measured;
and a guest that only waits for interrupts records when each ring reached it
(wake latency, the device asleep in ``epoll`` at every ring), rung by the same
code as the raw round trip's pinging side, beside the one-way raw wake (a process
asleep in ``epoll``); on the native engine each wake is split into legs from the
engine's trace (``wakes``): the kernel's wake, the eventfd read, the cycles to
the interrupt, the engine's return, the guest's Python.

Targets for the native engine: round trip (Python echo guest) under a tenth of
the cocotb engine's on the same simulator and device; the SoC tile's echo
firmware under 100 us median (spaced requests); bridge overhead (median) <= 2 x
the raw eventfd round trip (median); wake latency under 20 us median; idle CPU
< 1 % of a core.
"""

from __future__ import annotations

import argparse
import json
import os
import select
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from bench import guests_importable

__all__ = ["main"]

OVERHEAD_TARGET = 2.0
IDLE_TARGET = 0.01
WAKE_TARGET_US = 20.0
SPEEDUP_TARGET = 10.0
SOC_RTT_TARGET_US = 100.0
_VECTORS = 1
_SHM_SIZE = 1 << 20
_CLK_TICK = os.sysconf("SC_CLK_TCK")
_ONE = (1).to_bytes(8, "little")


def _raw_rtt(count: int, hold: float = 0.0, gap: float = 0.0) -> tuple[list[float], list[float]]:
    """Round trips of a two-process eventfd ping-pong, both sides waiting in epoll, and
    the one-way wakes in them (ring -> the echoing side's epoll returned).

    With ``hold``, the echoing side sleeps that long before answering (as the
    simulator computes before it rings back) and the time it held is subtracted;
    with ``gap``, the pinging side sleeps between round trips. Both make every wake
    a cold one, as in the bridge's round trips, where each side has slept; the
    one-way wakes are then wakes of a process asleep in epoll, as the simulator is
    when a ring comes while its device is idle.
    """
    ping, pong = os.eventfd(0), os.eventfd(0)
    report_r, report_w = os.pipe()
    child = os.fork()
    if child == 0:  # the echoing side
        try:
            os.close(report_r)
            epoll = select.epoll()
            epoll.register(ping, select.EPOLLIN)
            held, woken = [], []
            for _ in range(count + 1):
                epoll.poll()
                woke = time.perf_counter()
                os.read(ping, 8)
                if hold:
                    time.sleep(hold)
                wrote = time.perf_counter()
                os.write(pong, _ONE)
                held.append(wrote - woke)
                woken.append(woke)
            with os.fdopen(report_w, "w") as report:
                report.write(" ".join(map(repr, held + woken)))
        finally:
            os._exit(0)
    os.close(report_w)
    epoll = select.epoll()
    epoll.register(pong, select.EPOLLIN)
    rtts, starts = [], []
    for _ in range(count + 1):
        if gap:
            time.sleep(gap)
        start = time.perf_counter()
        os.write(ping, _ONE)
        epoll.poll()
        os.read(pong, 8)
        rtts.append(time.perf_counter() - start)
        starts.append(start)
    with os.fdopen(report_r) as report:
        reported = [float(x) for x in report.read().split()]
    held, woken = reported[: count + 1], reported[count + 1 :]
    os.waitpid(child, 0)
    os.close(ping)
    os.close(pong)
    # the first round trip wakes a cold child
    return (
        [rtt - h for rtt, h in zip(rtts[1:], held[1:], strict=True)],
        [w - s for s, w in zip(starts[1:], woken[1:], strict=True)],
    )


def _request(host: object, target: int, payload: bytes) -> tuple[float, float]:
    """One echo request as ``ivhw.sw.echo.request`` makes it; (ring time, reply seen time)."""
    from ivhw.sw import echo
    from ivhw.sw.peer import Doorbell

    memory = host.memory  # type: ignore[attr-defined]
    own = host.id  # type: ignore[attr-defined]
    box, reply = echo.outbox(own), echo.inbox(own)
    memory[reply + 4 : reply + 8] = bytes(4)
    memory[box : box + 4] = target.to_bytes(4, "little")
    memory[box + 8 : box + 8 + len(payload)] = payload
    memory[box + 4 : box + 8] = len(payload).to_bytes(4, "little")
    start = time.perf_counter()
    host.ring(target, 0)  # type: ignore[attr-defined]
    while True:  # the doorbell first, then the inbox (echo protocol step 5)
        host.wait(lambda e: isinstance(e, Doorbell), 30)  # type: ignore[attr-defined]
        if int.from_bytes(memory[reply + 4 : reply + 8], "little"):
            break
    end = time.perf_counter()
    if bytes(memory[reply + 8 : reply + 8 + len(payload)]) != echo.invert(payload):
        raise RuntimeError("wrong echo reply")
    return start, end


def _cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _CLK_TICK  # utime + stime


def _median_us(values: list[float]) -> float:
    return statistics.median(values) * 1e6


def _p90_us(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))] * 1e6


def _breakdown(windows: list[tuple[float, float]], stats: dict[str, Any]) -> dict[str, float]:
    """Pair each request with the bridge's wake -> ring inside it (one monotonic clock)."""
    rtts, sim_seconds, cycles, to_device, back = [], [], [], [], []
    samples = sorted(stats["wake_to_ring"], key=lambda s: s[2])
    for start, end in windows:
        inside = [s for s in samples if start <= s[2] and s[3] <= end]
        if len(inside) != 1:
            continue
        seconds, count, woke, rang = inside[0]
        rtts.append(end - start)
        sim_seconds.append(seconds)
        cycles.append(count)
        to_device.append(woke - start)
        back.append(end - rang)
    if not rtts:
        raise RuntimeError("no request could be paired with the bridge's samples")
    overhead = [a + b for a, b in zip(to_device, back, strict=True)]
    return {
        "rtt": _median_us(rtts),
        "rtt_p90": _p90_us(rtts),
        "sim": _median_us(sim_seconds),
        "cycles": statistics.median(cycles),
        "us_per_cycle": _median_us(sim_seconds) / max(statistics.median(cycles), 1),
        "overhead": _median_us(overhead),
        "overhead_p90": _p90_us(overhead),
        "to_device": _median_us(to_device),
        "back": _median_us(back),
        "samples": len(rtts),
    }


def _request2(host: Any, target: int, payload: bytes) -> tuple[float, float]:
    """One revision 2 echo request (``ivhw.sw.echo2.request2``); (ring time, reply seen time)."""
    from ivhw.sw import echo2

    reply = echo2.request2(host, target, payload, timeout=30)
    end = time.perf_counter()
    if reply.payload != echo2.invert(payload):
        raise RuntimeError("wrong echo reply")
    return end - reply.rtt, end


def _wait_ready(host: Any, device: Any, target: int) -> None:
    """Until the revision 2 echo device's State Table entry is READY."""
    from ivhw.sw import echo2

    deadline = time.monotonic() + 120
    while host.state_of(target) != echo2.READY:
        if device.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"the revision 2 echo device is not READY:\n{device.output()}")
        host.poll(0.05)


def _wait_joined(host: Any, device: Any, what: str) -> int:
    from ivhw.sw.peer import PeerJoined

    deadline = time.monotonic() + 120
    while not host.peers:
        if device.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"the {what} device did not join:\n{device.output()}")
        try:
            host.wait(PeerJoined, timeout=0.5)
        except TimeoutError:
            pass
    return min(host.peers)  # type: ignore[no-any-return]


def _run_sim(target: Target, requests: int, idle: float, gap: float, tmp: Path) -> dict[str, Any]:
    from ivhw.cosim.build import Revision2, build
    from ivhw.cosim.process import CosimProcess
    from ivhw.sw.peer import Peer
    from ivhw.sw.server import IvshmemServer
    from ivhw.sw.server2 import Ivshmem2Server

    sim, engine, device_kind = target
    firmware = None
    if device_kind == "soc":  # the echo firmware answers, no Python guest
        from ivhw.cosim.build import build_root, soc_image

        firmware = soc_image("echo", _SHM_SIZE, [], build_root() / "firmware")
    name = "-".join(target)
    sock = tmp / f"{name}.sock"
    # pci2: the revision 2 endpoint (echo2 guest) with an ivshmem2-server of two peers
    rev2 = device_kind == "pci2"
    if rev2:
        build("pci", sim, vectors=_VECTORS, shm_size=_SHM_SIZE, engine=engine,
              revision2=Revision2(max_peers=2, output_section_size=4096))  # fmt: skip
        server: IvshmemServer = Ivshmem2Server(
            str(sock), shm_size=_SHM_SIZE, output_section_size=4096, vectors=_VECTORS
        )
    else:
        build(device_kind, sim, vectors=_VECTORS, shm_size=_SHM_SIZE, engine=engine,
              firmware=firmware)  # fmt: skip
        server = IvshmemServer(str(sock), shm_size=_SHM_SIZE, vectors=_VECTORS)
    server.serve_in_background()
    device = None
    windows: dict[str, list[tuple[float, float]]] = {"back-to-back": [], "spaced": []}
    try:
        with Peer(str(sock), vectors=_VECTORS) as host:
            device = CosimProcess(
                sock, tmp, name=name, sim=sim, engine=engine,
                device="pci" if rev2 else device_kind, revision=2 if rev2 else 1,
                vectors=_VECTORS, shm_size=_SHM_SIZE,
            ).start()  # fmt: skip
            target_id = _wait_joined(host, device, name)
            if rev2:
                _wait_ready(host, device, target_id)
            request = _request2 if rev2 else _request
            warmup = 5
            for mode, pause in (("back-to-back", 0.0), ("spaced", gap)):
                for n in range(warmup + requests):
                    if pause:
                        time.sleep(pause)  # the device is asleep in epoll when the request comes
                    window = request(host, target_id, b"cosim round trip %04d" % n)
                    if n >= warmup:
                        windows[mode].append(window)
            time.sleep(0.5)  # let the device settle into its idle wait
            sim_pid = device.simulator_pid()
            cpu0 = _cpu_seconds(sim_pid) + _cpu_seconds(device.pid)
            wall0 = time.monotonic()
            time.sleep(idle)
            cpu1 = _cpu_seconds(sim_pid) + _cpu_seconds(device.pid)
            idle_cpu = (cpu1 - cpu0) / (time.monotonic() - wall0)
        if device.stop() != 0:
            raise RuntimeError(f"the {name} device failed:\n{device.output()}")
        stats = device.status()["stats"]
        # the wake guest is a Python guest: not for a device that runs firmware (and measured
        # on revision 1 only: the path from an eventfd to the guest is the same)
        wake, wake_path = (
            ([], {}) if device_kind in ("soc", "pci2")
            else _wake(target, sock, tmp, max(requests // 2, 20), gap)
        )  # fmt: skip
        legs = (
            {} if device_kind in ("soc", "pci2") or engine != "native"
            else _echo_legs(target, sock, tmp, max(requests // 2, 20), gap)
        )  # fmt: skip
    finally:
        if device is not None:
            device.stop()
        server.stop()
    return {
        "modes": {mode: _breakdown(w, stats) for mode, w in windows.items()},
        "wake_us": _median_us(wake) if wake else None,
        "wake_p90_us": _p90_us(wake) if wake else None,
        "wake_path": wake_path,
        "echo_legs": legs,
        "idle_cpu": idle_cpu,
        "blocks": stats["blocks"],
    }


def _wake(
    target: Target, sock: Path, tmp: Path, count: int, gap: float
) -> tuple[list[float], dict[str, float]]:
    """Ring -> interrupt seen by a Python guest, with the device asleep in epoll each time."""
    from ivhw.cosim.process import CosimProcess
    from ivhw.sw.peer import Doorbell, Peer

    sim, engine, device_kind = target
    out = tmp / f"{'-'.join(target)}-wake-times.json"
    guests_importable()
    with Peer(str(sock), vectors=_VECTORS) as host:
        device = CosimProcess(
            sock, tmp, name=f"{'-'.join(target)}-wake", sim=sim, engine=engine,
            device=device_kind, vectors=_VECTORS, shm_size=_SHM_SIZE,
            guest="bench._cosim_guest:wake",
            guest_args={"count": count, "host": host.id, "out": out},
        ).start()  # fmt: skip
        try:
            target_id = _wait_joined(host, device, "wake")
            host.wait(Doorbell, timeout=120)  # the guest is ready
            # the ringing side is the raw baseline's pinging side, line for line (what the
            # waker does right after its write delays a wakee the scheduler put on its CPU)
            doorbell, reply = host.eventfds(target_id)[0], host.eventfds(host.id)[0]
            epoll = select.epoll()
            epoll.register(reply, select.EPOLLIN)
            rings = []
            for _ in range(count):
                time.sleep(gap)  # the device is asleep in epoll again
                start = time.perf_counter()
                os.write(doorbell, _ONE)
                if not epoll.poll(30):  # seen
                    raise RuntimeError(f"the wake guest did not answer:\n{device.output()}")
                os.read(reply, 8)
                rings.append(start)
            epoll.close()
            if device.wait(60) != 0:
                raise RuntimeError(f"the wake guest failed:\n{device.output()}")
        finally:
            device.stop()
    seen = json.loads(out.read_text())
    if len(seen) != count:
        raise RuntimeError(f"the wake guest saw {len(seen)} of {count} interrupts")
    wakes = device.status()["stats"].get("wakes", [])
    return [b - a for a, b in zip(rings, seen, strict=True)], _wake_path(rings, seen, wakes)


#: the legs of one echo as the guest's stamps split it: (name, the stamp that ends it); the
#: last leg ends when the host saw the reply, which may come before the reply call returned
_ECHO_LEGS = (
    ("ring -> wait_irq returns", "wait_irq"),
    ("-> outbox header read", "header"),
    ("-> payload read", "payload"),
)
_ECHO_LAST = "-> host sees the reply (reply written, doorbell, host's wake)"
_ECHO_CALL = "the reply call, to its return"


def _echo_legs(
    target: Target, sock: Path, tmp: Path, count: int, gap: float
) -> dict[str, dict[str, float]]:
    """Echo round trips split at the Python echo guest's calls, back-to-back and spaced."""
    from ivhw.cosim.process import CosimProcess
    from ivhw.sw.peer import Peer

    sim, engine, device_kind = target
    out = tmp / f"{'-'.join(target)}-echo-stamps.json"  # not NAME.json: the status file
    guests_importable()
    windows: dict[str, list[tuple[float, float]]] = {}
    with Peer(str(sock), vectors=_VECTORS) as host:
        device = CosimProcess(
            sock, tmp, name=f"{'-'.join(target)}-legs", sim=sim, engine=engine,
            device=device_kind, vectors=_VECTORS, shm_size=_SHM_SIZE,
            guest="bench._cosim_guest:echo_legs", guest_args={"out": out},
        ).start()  # fmt: skip
        try:
            target_id = _wait_joined(host, device, "echo legs")
            for mode, pause in (("back-to-back", 0.0), ("spaced", gap)):
                windows[mode] = []
                for n in range(count):
                    if pause:
                        time.sleep(pause)
                    windows[mode].append(_request(host, target_id, b"cosim round trip %04d" % n))
        finally:
            device.stop()  # the guest writes its stamps as it stops
    records = json.loads(out.read_text())
    result: dict[str, dict[str, float]] = {}
    calls = [call for _, call in _ECHO_LEGS] + ["reply"]
    for mode, rounds in windows.items():
        legs: dict[str, list[float]] = {name: [] for name in (*dict(_ECHO_LEGS), _ECHO_LAST)}
        legs[_ECHO_CALL] = []
        for ring, seen in rounds:
            # the serve this request woke (one served before the loop, at start, has none)
            inside = [r for r in records if r and ring <= r[0][1] <= seen]
            if len(inside) != 1 or [name for name, _ in inside[0]] != calls:
                continue
            stamps = [stamp for _, stamp in inside[0]]
            at = ring
            for (name, _), stamp in zip(_ECHO_LEGS, stamps, strict=False):
                legs[name].append(stamp - at)
                at = stamp
            legs[_ECHO_LAST].append(seen - at)
            legs[_ECHO_CALL].append(stamps[-1] - at)
        if legs[_ECHO_LAST]:
            result[mode] = {name: _median_us(values) for name, values in legs.items()}
            result[mode]["samples"] = len(legs[_ECHO_LAST])
    return result


#: the legs of one wake, host ring -> guest: (name, from, to) as indices into
#: (ring, woke, read, irq, returned, seen); woke is when the engine's epoll_wait returned
_WAKE_LEGS = (
    ("ring -> epoll returns", 0, 1),
    ("-> eventfd read", 1, 2),
    ("-> interrupt (cycles)", 2, 3),
    ("-> engine returns", 3, 4),
    ("-> guest sees it", 4, 5),
)


def _wake_path(rings: list[float], seen: list[float], wakes: list[Any]) -> dict[str, float]:
    """Median microseconds of each leg of the wakes the engine traced (native engine)."""
    legs: dict[str, list[float]] = {name: [] for name, _, _ in _WAKE_LEGS}
    cycles = []
    for ring, guest in zip(rings, seen, strict=True):
        inside = [w for w in wakes if w[0] >= 0 and ring <= w[1] <= guest and w[4] >= 0]
        if len(inside) != 1:
            continue
        _, woke, read, irq, back, count = inside[0]
        stamps = (ring, woke, read, irq, back, guest)
        for name, a, b in _WAKE_LEGS:
            legs[name].append(stamps[b] - stamps[a])
        cycles.append(count)
    if not cycles:
        return {}
    path = {name: _median_us(values) for name, values in legs.items()}
    path["cycles"] = statistics.median(cycles)
    path["samples"] = len(cycles)
    return path


def _qemu_rtt(requests: int, gap: float, tmp: Path) -> dict[str, float] | None:
    """QEMU's ivshmem-doorbell (qtest) sending echo requests to a host echo peer."""
    from ivhw.cosim.demo import qemu_echo_request
    from ivhw.sw import echo
    from ivhw.sw.peer import Peer, PeerJoined
    from ivhw.sw.qtest import QemuIvshmem, find_qemu
    from ivhw.sw.server import IvshmemServer

    if find_qemu() is None:
        return None
    sock = tmp / "qemu.sock"
    server = IvshmemServer(str(sock), shm_size=_SHM_SIZE, vectors=_VECTORS)
    server.serve_in_background()
    stop = threading.Event()
    try:
        with Peer(str(sock), vectors=_VECTORS) as responder_peer:
            responder = echo.EchoResponder(responder_peer)
            vm = QemuIvshmem(server_socket=sock, vectors=_VECTORS, timeout=20, workdir=None)
            try:
                vm.start()
                vm.setup()
                responder_peer.wait(PeerJoined, timeout=10)

                def serve() -> None:
                    while not stop.is_set():
                        for event in responder_peer.poll(0.05):
                            if getattr(event, "vector", None) == 0:
                                responder.serve_pending()

                thread = threading.Thread(target=serve, daemon=True)
                thread.start()
                modes: dict[str, list[float]] = {"back-to-back": [], "spaced": []}
                for mode, pause in (("back-to-back", 0.0), ("spaced", gap)):
                    for n in range(5 + requests):
                        if pause:
                            time.sleep(pause)
                        reply = qemu_echo_request(
                            vm, responder_peer.id, b"qemu round trip %04d" % n
                        )
                        if n >= 5:
                            modes[mode].append(reply.rtt)
                stop.set()
                thread.join(5)
            finally:
                vm.close()
    finally:
        stop.set()
        server.stop()
    return {mode: _median_us(rtts) for mode, rtts in modes.items()}


#: (simulator, engine, device)
Target = tuple[str, str, str]


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print a Markdown report; status 1 if a target is missed."""
    parser = argparse.ArgumentParser(prog="python -m bench.cosim_rtt", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer requests, shorter idle")
    parser.add_argument("--requests", type=int, help="echo requests per simulator (default 200)")
    parser.add_argument("--idle", type=float, help="seconds of idle CPU measurement (default 5)")
    parser.add_argument("--sims", default="icarus,verilator", help="comma-separated simulators")
    parser.add_argument(
        "--engines", default="native,cocotb", help="comma-separated engines (native: Verilator)"
    )
    parser.add_argument(
        "--devices",
        default="flat,pci,pci2,soc",
        help="comma-separated device kinds (pci2: the revision 2 endpoint with an "
        "ivshmem2-server; soc: Verilator)",
    )
    parser.add_argument(
        "--gap", type=float, default=0.005, help="seconds between spaced requests (default 0.005)"
    )
    args = parser.parse_args(argv)
    requests = args.requests or (30 if args.quick else 200)
    idle = args.idle or (1.5 if args.quick else 5.0)
    sims = [s for s in args.sims.split(",") if s]
    engines = [e for e in args.engines.split(",") if e]
    gap = args.gap
    bindir = str(Path(sys.executable).parent)
    os.environ["PATH"] = bindir + os.pathsep + os.environ.get("PATH", "")
    targets: list[Target] = [
        (sim, engine, device)
        for device in args.devices.split(",")
        if device
        for sim in sims
        for engine in engines
        if (engine == "cocotb" or sim == "verilator") and (device != "soc" or sim == "verilator")
    ]

    raw, _ = _raw_rtt(max(requests * 5, 200))
    raw_us = _median_us(raw)
    cold, one_way = _raw_rtt(requests, hold=0.002, gap=gap)
    cold_us, one_way_us = _median_us(cold), _median_us(one_way)
    print(f"raw eventfd round trip (2 processes, epoll): hot median {raw_us:.1f} us "
          f"(p90 {_p90_us(raw):.1f}); cold (2 ms hold, {gap * 1e3:g} ms gap) median "
          f"{cold_us:.1f} us (p90 {_p90_us(cold):.1f}); one-way wake of a process asleep "
          f"in epoll median {one_way_us:.1f} us (p90 {_p90_us(one_way):.1f})",
          flush=True)  # fmt: skip
    failed = False
    rows, wake_rows = [], []
    results: dict[Target, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="ivhw-bcosim-") as tmp:
        qemu = _qemu_rtt(requests, gap, Path(tmp))
        for target in targets:
            result = results[target] = _run_sim(target, requests, idle, gap, Path(tmp))
            print(f"{' '.join(target)}: {result}", flush=True)
    for target, result in results.items():
        sim, engine, kind = target
        native = engine == "native"
        for mode, r in result["modes"].items():
            ratio = r["overhead"] / raw_us
            cold_ratio = r["overhead"] / cold_us
            ok_overhead = ratio <= OVERHEAD_TARGET
            failed |= native and not ok_overhead
            cocotb = results.get((sim, "cocotb", kind))
            speedup = ""
            if native and cocotb is not None:
                gain = cocotb["modes"][mode]["rtt"] / r["rtt"]
                failed |= gain < SPEEDUP_TARGET
                speedup = f"{gain:.1f}x {'ok' if gain >= SPEEDUP_TARGET else 'MISSED'}"
            rows.append(
                f"| {sim} {engine} {kind} | {mode} | {r['rtt']:.0f} ({r['rtt_p90']:.0f}) | "
                f"{speedup} | "
                f"{r['sim']:.0f} = {r['cycles']:.0f} cycles x {r['us_per_cycle']:.2f} us | "
                f"{r['overhead']:.0f} ({r['overhead_p90']:.0f}) "
                f"= {r['to_device']:.0f} + {r['back']:.0f} | "
                f"{ratio:.1f}x {'ok' if ok_overhead else 'MISSED'} | {cold_ratio:.1f}x |"
            )
        ok_idle = result["idle_cpu"] < IDLE_TARGET
        if kind == "pci2":
            ok_wake, wake = True, "(see pci: the same path)"
        elif kind == "soc":
            ok_wake, wake = True, "(firmware: no Python guest)"
            soc_ok = result["modes"]["spaced"]["rtt"] < SOC_RTT_TARGET_US
            failed |= native and not soc_ok
        else:
            ok_wake = result["wake_us"] < WAKE_TARGET_US
            wake = (
                f"{result['wake_us']:.0f} ({result['wake_p90_us']:.0f}) "
                f"{'ok' if ok_wake else 'MISSED'}"
            )
        failed |= native and not (ok_idle and ok_wake)
        wake_rows.append(
            f"| {sim} {engine} {kind} | {wake} | {result['idle_cpu'] * 100:.2f} % "
            f"{'ok' if ok_idle else 'MISSED'} | {result['blocks']} |"
        )
    print()
    print(f"{requests} echo requests per simulator and mode (21-byte payloads; spaced: "
          f"{gap * 1e3:g} ms apart), idle {idle:g} s; raw eventfd round trip median "
          f"{raw_us:.1f} us hot, {cold_us:.1f} us cold; load average "
          f"{os.getloadavg()[0]:.1f}")  # fmt: skip
    if qemu is not None:
        print(
            f"QEMU 7.2 ivshmem-doorbell (qtest) -> host echo peer: median "
            f"{qemu['back-to-back']:.0f} us back-to-back, {qemu['spaced']:.0f} us spaced"
        )
    print()
    print(
        "| sim engine device | requests | round trip us, median (p90) | native vs cocotb | "
        "simulated part us | bridge overhead us, median (p90) = ring -> sim wake + sim ring "
        "-> host wake | overhead / raw (hot) | overhead / raw (cold) |"
    )
    print("|---|---|---:|---|---|---|---|---|")
    for row in rows:
        print(row)
    print()
    print(
        "| sim engine device | eventfd ring -> interrupt seen by the Python guest, us median "
        "(p90), device asleep | idle CPU (simulator + CLI), % of a core | epoll sleeps |"
    )
    print("|---|---|---|---|")
    for row in wake_rows:
        print(row)
    paths = {target: r["wake_path"] for target, r in results.items() if r.get("wake_path")}
    if paths:
        print()
        print(f"where a wake goes (native engine, medians; raw one-way wake of a process asleep "
              f"in epoll, same ringer: {one_way_us:.1f} us)")  # fmt: skip
        print()
        names = [name for name, _, _ in _WAKE_LEGS]
        print(f"| sim engine device | {' | '.join(names)} | cycles |")
        print("|---|" + "---:|" * (len(names) + 1))
        for target, path in paths.items():
            legs = " | ".join(f"{path[name]:.1f}" for name in names)
            print(f"| {' '.join(target)} | {legs} | {path['cycles']:.0f} |")
    splits = {target: r["echo_legs"] for target, r in results.items() if r.get("echo_legs")}
    if splits:
        print()
        print("where an echo goes (native engine, Python echo guest, medians in us; a separate run "
              "whose guest stamps its calls)")  # fmt: skip
        print()
        names = [*(name for name, _ in _ECHO_LEGS), _ECHO_LAST]
        print(f"| sim engine device | requests | {' | '.join(names)} | sum | {_ECHO_CALL} |")
        print("|---|---|" + "---:|" * (len(names) + 2))
        for target, modes in splits.items():
            for mode, path in modes.items():
                legs = " | ".join(f"{path[name]:.1f}" for name in names)
                total = sum(path[name] for name in names)
                print(f"| {' '.join(target)} | {mode} | {legs} | {total:.0f} | "
                      f"{path[_ECHO_CALL]:.1f} |")  # fmt: skip
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
