"""Latency and throughput of the on-chip domain, in clock cycles (Amaranth's simulator).

    python -m bench.domain_latency [--quick]

Two parts, each beside its baseline in the same run:

* paths: two ivshmem-flat devices on a domain, driven on their internal bus:
  DOORBELL request to its ack and to the other device's IRQ, shared-memory
  accesses; and the domain's own port paths (query, doorbell to event, read);
* contention: every port of an N-port domain ringing one target and hitting the
  memory in every cycle, against one port alone: cycles per event and per memory
  access, and the longest wait for a memory grant.

Cycle counts are the design's, not the machine's: every run prints the same numbers.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

from amaranth.hdl import Module
from amaranth.sim import Simulator

from ivhw.hdl.domain import IvshmemDomain
from ivhw.hdl.flat import IvshmemFlat
from ivhw.sw.regmap import DOORBELL, FLAT_REGS

__all__ = ["contention", "main", "paths"]

_SHM = 1024


def _simulate(top: Any, bench: Any) -> None:
    sim = Simulator(top)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()


def paths() -> dict[str, int]:
    """Cycles of each path, by name (see the module docstring)."""
    m = Module()
    m.submodules.domain = domain = IvshmemDomain([(1, 2), (2, 2)], shm_size=_SHM)
    m.submodules.a = a = IvshmemFlat(vectors=2, shm_size=_SHM)
    m.submodules.b = b = IvshmemFlat(vectors=2, shm_size=_SHM)
    domain.connect(m, 0, a)
    domain.connect(m, 1, b)
    result: dict[str, int] = {}

    async def access(ctx: Any, addr: int, write: bool, data: int, name: str) -> None:
        ctx.set(a.bus.stb, 1)
        ctx.set(a.bus.addr, addr)
        ctx.set(a.bus.we, int(write))
        ctx.set(a.bus.w_data, data)
        ctx.set(a.bus.sel, 0xF)
        ring = write and addr == FLAT_REGS.DOORBELL.offset
        for cycle in range(100):
            if ctx.get(a.bus.ack):
                result[f"flat {name}: bus request to ack"] = cycle
                ctx.set(a.bus.stb, 0)
            if ctx.get(b.irq):
                result["flat DOORBELL: bus request to the other device's IRQ"] = cycle
                break
            if f"flat {name}: bus request to ack" in result and not ring:
                break
            await ctx.tick()
        await ctx.tick().repeat(4)

    async def bench(ctx: Any) -> None:
        await ctx.tick().repeat(2)
        await access(ctx, FLAT_REGS.DOORBELL.offset, True, DOORBELL.pack(2, 1), "DOORBELL")
        await access(ctx, _SHM, True, 0x1234, "shm write")
        await access(ctx, _SHM, False, 0, "shm read")

    _simulate(m, bench)

    raw = IvshmemDomain([(1, 2), (2, 2)], shm_size=_SHM)

    async def ports(ctx: Any) -> None:
        src, dst = raw.ports[0], raw.ports[1]
        ctx.set(dst.event.ready, 1)
        ctx.set(src.peers.peer, 2)
        ctx.set(src.peers.req, 1)
        for cycle in range(10):
            if ctx.get(src.peers.ack):
                result["domain: known-peer req to ack"] = cycle
                break
            await ctx.tick()
        ctx.set(src.peers.req, 0)
        ctx.set(src.doorbell.payload.as_value(), DOORBELL.pack(2, 1))
        ctx.set(src.doorbell.valid, 1)  # taken in cycle 0: the stage is empty
        assert ctx.get(src.doorbell.ready)
        for cycle in range(10):
            if ctx.get(dst.event.valid):
                result["domain: doorbell taken to event valid at the target"] = cycle
                break
            await ctx.tick()
            ctx.set(src.doorbell.valid, 0)
        ctx.set(src.mem.valid, 1)
        for cycle in range(10):
            if ctx.get(src.mem.ready):
                result["domain: memory request to grant (alone)"] = cycle
                await ctx.tick()
                ctx.set(src.mem.valid, 0)
                break
            await ctx.tick()
        for cycle in range(10):
            if ctx.get(src.mem.r_valid):
                result["domain: memory read grant to r_valid"] = cycle + 1
                break
            await ctx.tick()

    _simulate(raw, ports)
    return result


def contention(ports: int, events: int) -> dict[str, float]:
    """All of ``ports`` ports ringing port 0 and accessing memory in every cycle."""
    domain = IvshmemDomain([(i, 64) for i in range(ports)], shm_size=_SHM)
    stats: dict[str, float] = {}

    async def bench(ctx: Any) -> None:
        target = domain.ports[0]
        ctx.set(target.event.ready, 1)
        for i, port in enumerate(domain.ports):
            ctx.set(port.doorbell.payload.as_value(), DOORBELL.pack(0, i))
            ctx.set(port.doorbell.valid, 1)
            ctx.set(port.mem.valid, 1)
            ctx.set(port.mem.we, 1)
            ctx.set(port.mem.sel, 0xF)
            ctx.set(port.mem.addr, i)
        received = cycles = 0
        rung = [0] * ports
        grants = [0] * ports
        waits = [0] * ports
        longest = 0
        while received < events:
            received += ctx.get(target.event.valid)
            for i, port in enumerate(domain.ports):
                rung[i] += ctx.get(port.doorbell.ready)
                if ctx.get(port.mem.ready):
                    grants[i] += 1
                    longest = max(longest, waits[i])
                    waits[i] = 0
                else:
                    waits[i] += 1
            await ctx.tick()
            cycles += 1
        stats["cycles per event at the target"] = cycles / received
        stats["doorbells taken per source, fewest / most"] = min(rung) / max(rung)
        stats["cycles per memory access"] = cycles / sum(grants)
        stats["memory grants per port, fewest / most"] = min(grants) / max(grants)
        stats["longest memory wait"] = longest

    _simulate(domain, bench)
    return stats


def main(argv: Sequence[str] | None = None) -> int:
    """Print the path table and the contention table."""
    parser = argparse.ArgumentParser(prog="python -m bench.domain_latency", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer events per contention run")
    args = parser.parse_args(argv)
    print("| path | cycles |\n|---|---:|")
    for name, cycles in paths().items():
        print(f"| {name} | {cycles} |")
    events = 50 if args.quick else 400
    base = contention(1, events)
    print(f"\n| ports ringing one target ({events} events) | "
          + " | ".join(base) + " | event cycles vs 1 port |")  # fmt: skip
    print("|---:|" + "---:|" * (len(base) + 1))
    for ports in (1, 2, 4, 8):
        row = base if ports == 1 else contention(ports, events)
        ratio = row["cycles per event at the target"] / base["cycles per event at the target"]
        values = " | ".join(f"{v:.2f}" for v in row.values())
        print(f"| {ports} | {values} | {ratio:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
