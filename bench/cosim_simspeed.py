"""Simulated cycles per second of the co-simulation engines, against the bare Verilator loop.

``python -m bench.cosim_simspeed [--quick] [--accesses N]``

The flat device (ivshmem-flat behind AXI4-Lite, as ``ivshmem-cosim --device
flat`` builds it), joined to a real server, with a bus access on every cycle:
back-to-back accesses cycling through an IVPosition read, a Doorbell write to a
host peer, a shared-memory word write and its read back. Rows, in one run:

- **bare Verilator loop**: the same Verilated device (the same library) driven by
  a C++ loop whose transport only answers (memory in a local array, doorbells
  dropped, no eventfd, no epoll): the limit;
- **native engine, accesses in C++**: the same accesses issued by the engine
  itself (``ivhw_bench_accesses``) with the whole transport as it always runs:
  the real mmap, each doorbell written to the host peer's eventfd, the own
  eventfds polled every 8 cycles. This is what a device whose CPU is inside
  (firmware) costs, and the target: >= 25 % of the bare loop, >= 2M cycles/s;
- **native engine, Python guest**: ``ivshmem-cosim`` with a guest doing the
  accesses (``bench._cosim_guest``): one Python call per bus transaction;
- **cocotb engine, Python guest**: the same guest on ``--engine cocotb``:
  Python on every clock edge (the engine before this one).

Then the SoC tile (``--device soc``: sentinel-cpu running the ping firmware,
forever, against a host echo peer): the bare loop over the same library from
reset (the transport only answers, so the firmware finds no echo peer and keeps
looking), and ``ivshmem-cosim`` on each engine for a few seconds, rated over the
time it was not asleep in ``epoll`` (while the CPU waits for a reply the engine
sleeps, and sleeping is no simulation speed).

Rates are cycles of the access loop alone over its wall time, measured inside
the process that simulates, and over that process's CPU time (which a loaded,
shared machine does not inflate); the tables say how many cycles each row ran.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import guests_importable

__all__ = ["main"]

SHM_SIZE = 1 << 20
NATIVE_SHARE_TARGET = 0.25
NATIVE_RATE_TARGET = 2_000_000
_WORD = 0x40


def _ops(host_id: int) -> list[tuple[int, int, int]]:
    """(write?, bus address, value) of the access cycle, as ``bench._cosim_guest`` does it."""
    from ivhw.sw.regmap import DOORBELL, FLAT_REGS

    regs = {r.name: r.offset for r in FLAT_REGS}
    return [
        (0, regs["IVPOSITION"], 0),
        (1, regs["DOORBELL"], DOORBELL.pack(host_id, 0)),
        (1, SHM_SIZE + _WORD, 0x1234_5678),
        (0, SHM_SIZE + _WORD, 0),
    ]


def _in_process(library: Path, sock: Path, accesses: int) -> dict[str, dict[str, float]]:
    """The bare loop and the native engine's own accesses, in this process."""
    from ivhw.cosim.native import Engine
    from ivhw.sw.peer import Peer

    results: dict[str, dict[str, float]] = {}
    with Peer(str(sock), vectors=1) as host, Peer(str(sock), vectors=1) as device:
        device.poll(0.2)
        if host.id not in device.peers:
            raise RuntimeError("the host peer is not known to the device's peer")
        ops = _ops(host.id)
        engine = Engine(library)
        engine.attach(device, poll_cycles=8)
        engine.reset()
        start, cpu = time.perf_counter(), time.process_time()
        bad = engine.bench_accesses(ops, accesses)
        seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
        stats = engine.statistics()
        if bad or stats["doorbells"] != accesses // len(ops):
            raise RuntimeError(f"the native accesses went wrong: {bad} failed, {stats}")
        results["native"] = {"cycles": engine.cycles, "seconds": seconds, "cpu_seconds": cpu}
        engine.close()
        bare = Engine(library)
        assert device.memory is not None
        bare.configure(device.memory, device.id)
        bare.reset()
        start, cpu = time.perf_counter(), time.process_time()
        cycles = bare.bare_accesses(ops, accesses)
        results["bare"] = {
            "cycles": cycles,
            "seconds": time.perf_counter() - start,
            "cpu_seconds": time.process_time() - cpu,
        }
        bare.close()
    return results


def _guest_run(engine: str, sock: Path, tmp: Path, accesses: int) -> dict[str, float]:
    """The Python guest on ``engine`` through ``ivshmem-cosim``."""
    from ivhw.cosim.process import CosimProcess
    from ivhw.sw.peer import Peer

    out = tmp / f"{engine}-rate.json"
    guests_importable()
    with Peer(str(sock), vectors=1) as host:
        device = CosimProcess(
            sock, tmp, name=engine, sim="verilator", engine=engine, device="flat",
            vectors=1, shm_size=SHM_SIZE, guest="bench._cosim_guest:accesses",
            guest_args={"count": accesses, "out": out, "doorbell": host.id},
        ).start()  # fmt: skip
        try:
            status = device.wait(600)
        finally:
            device.stop()
    if status != 0 or not out.exists():
        raise RuntimeError(f"the {engine} guest run failed:\n{device.output()}")
    return json.loads(out.read_text())  # type: ignore[no-any-return]


#: the ping firmware without end, as fast as it goes: the SoC's CPU busy all the time
_PING = {"ping_count": 0, "ping_gap": 1}
_SOC_SECONDS = 3.0


def _soc_image(options: dict[str, int]) -> bytes:
    from ivhw.cosim.build import build_root, soc_image

    pairs = [(key, str(value)) for key, value in options.items()]
    return soc_image("ping", SHM_SIZE, pairs, build_root() / "firmware")


def _soc_rows(sock: Path, tmp: Path, cycles: int) -> dict[str, dict[str, Any]]:
    """The SoC tile running its ping firmware against a host echo peer."""
    import threading

    from ivhw.cosim.build import build
    from ivhw.cosim.native import Engine
    from ivhw.cosim.process import CosimProcess
    from ivhw.sw.echo import EchoResponder
    from ivhw.sw.peer import Peer

    image = _soc_image(_PING)
    library = build(
        "soc", "verilator", vectors=1, shm_size=SHM_SIZE, firmware=image, engine="native"
    ).library
    build("soc", "verilator", vectors=1, shm_size=SHM_SIZE, firmware=image, engine="cocotb")
    rows: dict[str, dict[str, Any]] = {}
    with Peer(str(sock), vectors=1) as host:
        responder = EchoResponder(host)
        done = threading.Event()

        def serve() -> None:
            while not done.is_set():
                responder.run(time.monotonic() + 0.2)

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        with Peer(str(sock), vectors=1) as device:
            device.poll(0.2)
            bare = Engine(library)
            assert device.memory is not None
            bare.configure(device.memory, device.id)
            bare.reset()
            start, cpu = time.perf_counter(), time.process_time()
            ran = bare.bare_cycles(cycles)
            rows["SoC, bare Verilator loop (C++)"] = {
                "accesses": 0, "cycles": ran, "seconds": time.perf_counter() - start,
                "cpu_seconds": time.process_time() - cpu,
            }  # fmt: skip
            bare.close()
        for engine in ("native", "cocotb"):
            process = CosimProcess(
                sock, tmp, name=f"soc-{engine}", sim="verilator", engine=engine, device="soc",
                vectors=1, shm_size=SHM_SIZE, firmware="ping", guest_args=_PING,
                seconds=_SOC_SECONDS,
            ).start()  # fmt: skip
            try:
                status = process.wait(300)
            finally:
                process.stop()
            record = process.status()
            if status != 0:
                raise RuntimeError(f"the soc run on {engine} failed:\n{process.output()}")
            stats = record["stats"]
            busy = _SOC_SECONDS - stats["blocked_seconds"]
            rows[f"SoC ping firmware, {engine} engine (busy time)"] = {
                "accesses": 0, "cycles": record["cycles"], "seconds": busy,
                "cpu_seconds": busy, "pings": responder.served,
            }  # fmt: skip
        done.set()
        thread.join(5)
    return rows


def main(argv: list[str] | None = None) -> int:
    """Run every row and print the table; status 1 if a target is missed."""
    parser = argparse.ArgumentParser(prog="python -m bench.cosim_simspeed", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer accesses")
    parser.add_argument("--accesses", type=int, help="accesses per native row (default 400000)")
    parser.add_argument("--no-soc", action="store_true", help="leave out the SoC tile's rows")
    args = parser.parse_args(argv)
    accesses = args.accesses or (40_000 if args.quick else 400_000)
    guest_accesses = max(accesses // 20, 400)
    cocotb_accesses = max(accesses // 400, 200)
    os.environ["PATH"] = str(Path(sys.executable).parent) + os.pathsep + os.environ["PATH"]
    from ivhw.cosim.build import build
    from ivhw.sw.server import IvshmemServer

    native = build("flat", "verilator", vectors=1, shm_size=SHM_SIZE, engine="native")
    build("flat", "verilator", vectors=1, shm_size=SHM_SIZE, engine="cocotb")
    rows: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="ivhw-bsimspeed-") as tmp:
        sock = Path(tmp) / "ivshmem.sock"
        server = IvshmemServer(str(sock), shm_size=SHM_SIZE, vectors=1)
        server.serve_in_background()
        try:
            measured = _in_process(native.library, sock, accesses)
            rows["bare Verilator loop (C++)"] = {**measured["bare"], "accesses": accesses}
            rows["native engine, accesses in C++"] = {**measured["native"], "accesses": accesses}
            rows["native engine, Python guest"] = _guest_run(
                "native", sock, Path(tmp), guest_accesses
            )
            rows["cocotb engine, Python guest"] = _guest_run(
                "cocotb", sock, Path(tmp), cocotb_accesses
            )
            if not args.no_soc:
                soc_rows = _soc_rows(sock, Path(tmp), accesses * 5)
        finally:
            server.stop()
    bare = rows["bare Verilator loop (C++)"]
    bare_rate = bare["cycles"] / bare["seconds"]
    bare_cpu_rate = bare["cycles"] / bare["cpu_seconds"]
    print(
        f"flat device, a bus access every cycle (IVPosition read, Doorbell write, shared-memory "
        f"write, read back), Verilator, {os.cpu_count()} CPUs, load average "
        f"{os.getloadavg()[0]:.1f}"
    )
    print()
    print(
        "| engine | accesses | cycles | cycles/s (wall) | share of the bare loop | "
        "cycles per CPU-second | share of the bare loop |"
    )
    print("|---|--:|--:|--:|--:|--:|--:|")
    for name, row in rows.items():
        rate, cpu_rate = row["cycles"] / row["seconds"], row["cycles"] / row["cpu_seconds"]
        print(
            f"| {name} | {int(row['accesses'])} | {int(row['cycles'])} | {rate:,.0f} | "
            f"{rate / bare_rate:.1%} | {cpu_rate:,.0f} | {cpu_rate / bare_cpu_rate:.1%} |"
        )
    native_row = rows["native engine, accesses in C++"]
    native_rate = native_row["cycles"] / native_row["seconds"]
    cocotb_row = rows["cocotb engine, Python guest"]
    guest_row = rows["native engine, Python guest"]
    speedup = (guest_row["cycles"] / guest_row["seconds"]) / (
        cocotb_row["cycles"] / cocotb_row["seconds"]
    )
    share_ok = native_rate >= NATIVE_SHARE_TARGET * bare_rate
    rate_ok = native_rate >= NATIVE_RATE_TARGET
    print()
    if not args.no_soc:
        soc_bare = soc_rows.pop("SoC, bare Verilator loop (C++)")
        soc_rate = soc_bare["cycles"] / soc_bare["seconds"]
        print()
        print(
            "| SoC tile (sentinel-cpu, ping firmware) | cycles | cycles/s (wall) | "
            "share of the bare loop |"
        )
        print("|---|--:|--:|--:|")
        print(f"| bare Verilator loop (C++) | {soc_bare['cycles']} | {soc_rate:,.0f} | 100.0% |")
        for name, row in soc_rows.items():
            rate = row["cycles"] / row["seconds"]
            print(f"| {name} | {row['cycles']} | {rate:,.0f} | {rate / soc_rate:.1%} |")
    print()
    print(
        f"native engine: {native_rate / bare_rate:.1%} of the bare loop (target >= 25 %: "
        f"{'ok' if share_ok else 'MISSED'}), {native_rate / 1e6:.2f}M cycles/s wall (target >= "
        f"2M: {'ok' if rate_ok else 'MISSED'}; per CPU-second "
        f"{native_row['cycles'] / native_row['cpu_seconds'] / 1e6:.2f}M); Python guest: native "
        f"{speedup:.1f}x the cocotb engine"
    )
    return 0 if share_ok and rate_ok else 1


if __name__ == "__main__":
    sys.exit(main())
