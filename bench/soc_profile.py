"""Where the SoC tile's echo firmware spends its cycles: one request, phase by phase.

    python -m bench.soc_profile [--quick] [--payload N] [--requests N]

The tile of ``ivshmem-cosim --device soc`` (sentinel-cpu, the echo firmware built
as the co-simulation builds it, the same clock and console rate) runs in Amaranth's
simulator behind a transport that answers at once, as the native engine's does:
the tile is peer 1, the requester peer 0. After boot (the firmware asleep), each
request is written into peer 0's outbox and its doorbell offered to the device as
the engine offers it when its ``epoll`` returns: cycle 0. Every cycle the CPU's
bus and program counter are sampled, so each cycle is charged to the instruction
being executed (from its fetch to the next fetch), and each instruction to its
function (the firmware's ELF symbols) and its kind (a load from shared memory, a
store to a register of the device, ...).

It prints the phases from cycle 0 to the reply's doorbell (what the co-simulation
benchmark calls the *simulated part* of a round trip) and on until the CPU sleeps
again, the cycles by function and by kind of instruction. Cycle counts are the
design's: every run prints the same numbers.
"""

from __future__ import annotations

import argparse
import random
import struct
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Profile", "main", "profile"]

#: As ``bench.cosim_rtt`` measures it: 1 MiB of shared memory, the tile is peer 1.
SHM_SIZE = 1 << 20
TILE_ID = 1
REQUESTER = 0
_BOOT_LIMIT = 200_000
_REQUEST_LIMIT = 50_000
_MARK = b"\xa5"

_KINDS = {0x03: "load", 0x23: "store", 0x13: "alu", 0x33: "alu", 0x37: "alu", 0x17: "alu",
          0x63: "branch", 0x6F: "jump", 0x67: "jump", 0x73: "system", 0x0F: "fence"}  # fmt: skip


@dataclass
class Profile:
    """One request's cycles (cycle 0: the doorbell offered to the device)."""

    #: (name, first cycle, end cycle) of each phase, in order; the last ends at sleep
    phases: list[tuple[str, int, int]]
    #: cycle the reply's doorbell left the device
    ring: int
    #: cycle the CPU was asleep again
    sleep: int
    #: function -> [cycles, instructions], event to ring and ring to sleep
    functions: dict[str, list[int]] = field(default_factory=dict)
    after_functions: dict[str, list[int]] = field(default_factory=dict)
    #: kind of instruction -> [cycles, instructions], event to ring
    kinds: dict[str, list[int]] = field(default_factory=dict)
    #: the reply was right: header and payload inverted, nothing else of the inbox slot
    #: written, the outbox's length cleared
    ok: bool = False


def _kind(word: int, region: str | None, offset: int | None) -> str:
    """``load, RAM``, ``store, shared memory``, ``alu``, ... (``offset``: into the device)."""
    base = _KINDS.get(word & 0x7F, "other")
    if base not in ("load", "store") or region is None:
        return base
    if offset is not None:
        return f"{base}, {'shared memory' if offset >= SHM_SIZE else 'device register'}"
    return f"{base}, {region}"


def profile(payloads: Sequence[bytes]) -> list[Profile]:
    """Boot the echo tile, then profile one request from peer 0 per payload, in order."""
    from amaranth.sim import Simulator

    from ivhw.boards.firmware import FirmwareConfig, build, code_symbols
    from ivhw.boards.memmap import FLAT, region_of
    from ivhw.boards.soc import Tile
    from ivhw.cosim.build import SOC_BAUD, SOC_CLOCK_HZ, build_root
    from ivhw.hdl.testing import DeviceTransport, amaranth_step
    from ivhw.sw import echo
    from ivhw.sw.regmap import DOORBELL

    firmware = build("echo", FirmwareConfig(shm_size=SHM_SIZE), build_root() / "firmware")
    symbols = code_symbols(firmware.elf)
    words = firmware.image + bytes(-len(firmware.image) % 4)

    def function(pc: int) -> str:
        name = symbols[0].name
        for symbol in symbols:
            if symbol.address > pc:
                break
            name = symbol.name
        return name

    class Probed(Tile):
        """The tile, keeping a handle on its CPU so that its bus and PC can be sampled."""

        def elaborate(self, platform: object) -> Any:
            m = super().elaborate(platform)
            self.cpu = m.submodules.cpu
            return m

    tile = Probed(firmware.image, vectors=1, shm_size=SHM_SIZE, clock_hz=SOC_CLOCK_HZ,
                  baud=SOC_BAUD)  # fmt: skip
    transport = DeviceTransport(random.Random(0), SHM_SIZE)
    transport.ident.id = TILE_ID
    transport.peers.peers = {REQUESTER: 1, TILE_ID: 1}
    memory = transport.mem.memory
    probes = ["cpu__bus__cyc", "cpu__bus__ack", "cpu__bus__we", "cpu__bus__adr",
              "cpu__datapath__pc__dat_r", "cpu__irq", "sleeping"]  # fmt: skip
    results: list[Profile] = []
    state = {"pc": 0}  # the instruction fetched last

    async def bench(ctx: Any) -> None:
        step = amaranth_step(ctx, tile, [*transport.outputs, *probes])

        async def cycle() -> dict[str, int]:
            values = await step(transport.inputs())
            transport.edge(values)
            values["fetch"] = fetched = (
                values["cpu__bus__cyc"] and values["cpu__bus__ack"] and not values["cpu__bus__we"]
                and values["cpu__datapath__pc__dat_r"] == values["cpu__bus__adr"]
            )  # fmt: skip
            if fetched:
                state["pc"] = values["cpu__bus__adr"] << 2
            return values

        for _ in range(_BOOT_LIMIT):  # boot: the banner, then asleep
            values = await cycle()
            if values["sleeping"] and len(transport.doorbells.items) == 0:
                break
        else:
            raise RuntimeError("the echo firmware did not go to sleep after boot")
        box, reply = echo.outbox(REQUESTER), echo.inbox(REQUESTER)
        for payload in payloads:
            for _ in range(64):  # asleep for a while, as between spaced requests
                await cycle()
            # the whole inbox slot marked: the reply must change its header and payload only
            memory[reply : reply + echo.SLOT_SIZE] = _MARK * echo.SLOT_SIZE
            memory[reply + 4 : reply + 8] = bytes(4)
            memory[box : box + 4] = TILE_ID.to_bytes(4, "little")
            memory[box + 8 : box + 8 + len(payload)] = payload
            memory[box + 4 : box + 8] = len(payload).to_bytes(4, "little")
            rung = len(transport.doorbells.items)
            transport.events.queue.append(0)  # the requester rang vector 0
            results.append(await _one(cycle, rung, payload))

    async def _one(cycle: Any, rung: int, payload: bytes) -> Profile:
        box, reply = echo.outbox(REQUESTER), echo.inbox(REQUESTER)
        marks: dict[str, int] = {}
        # (cycle, byte address) of each instruction; the first, from cycle 0, is the one the
        # CPU is in (the SLEEP store, until the wake)
        fetches: list[tuple[int, int]] = [(0, state["pc"])]
        data: dict[int, tuple[str | None, int | None]] = {}  # fetch index -> data access
        ring = sleep = -1
        for now in range(_REQUEST_LIMIT):
            values = await cycle()
            if values["cpu__irq"]:
                marks.setdefault("irq", now)
            if values["cpu__bus__cyc"] and values["cpu__bus__ack"]:
                address = values["cpu__bus__adr"] << 2
                if values["fetch"]:
                    fetches.append((now, address))
                else:
                    region = region_of(address)
                    offset = address - FLAT.base if region is FLAT else None
                    data[len(fetches) - 1] = (region.name if region else None, offset)
            if values["mem__valid"]:
                marks.setdefault("shm", now)
                if values["mem__we"] and values["mem__addr"] * 4 == reply:
                    marks.setdefault("reply", now)
            if ring < 0 and len(transport.doorbells.items) > rung:
                ring = now
                if DOORBELL.unpack(transport.doorbells.items[rung]) != (REQUESTER, 0):
                    raise RuntimeError("the echo firmware rang the wrong peer or vector")
            if ring >= 0 and values["sleeping"] and now > ring:
                sleep = now
                break
        else:
            raise RuntimeError(f"no reply and sleep within {_REQUEST_LIMIT} cycles")
        phases_at = [
            ("doorbell offered -> the CPU's wake line (PENDING & ENABLE)", 0),
            ("wake line -> the SLEEP write completes, next instruction", marks["irq"]),
            ("-> first shared-memory access (trap or event latch, serve's start)", fetches[1][0]),
            ("outboxes scanned up to the requester's", marks["shm"]),
            ("reply written, outbox cleared, doorbell", marks["reply"]),
            ("after the doorbell: the rest of the scan, back to sleep", ring),
        ]
        ends = [at for _, at in phases_at[1:]] + [sleep]
        phases = [(n, a, e) for (n, a), e in zip(phases_at, ends, strict=True)]
        result = Profile(phases, ring, sleep)
        for index, (at, address) in enumerate(fetches):
            end = fetches[index + 1][0] if index + 1 < len(fetches) else sleep
            word = int.from_bytes(words[address : address + 4], "little")
            region, offset = data.get(index, (None, None))
            table = result.functions if at < ring else result.after_functions
            entry = table.setdefault(function(address), [0, 0])
            entry[0] += min(end, ring) - at if at < ring else end - at
            entry[1] += 1
            if at < ring:
                kind = result.kinds.setdefault(_kind(word, region, offset), [0, 0])
                kind[0] += min(end, ring) - at
                kind[1] += 1
        end = reply + 8 + len(payload)
        result.ok = (
            memory[reply : reply + 8] == struct.pack("<II", TILE_ID, len(payload))
            and memory[reply + 8 : end] == echo.invert(payload)
            and memory[end : reply + echo.SLOT_SIZE] == _MARK * (reply + echo.SLOT_SIZE - end)
            and memory[box + 4 : box + 8] == bytes(4)  # the request taken
        )
        return result

    sim = Simulator(tile)
    sim.add_clock(1 / SOC_CLOCK_HZ)
    sim.add_testbench(bench)
    sim.run()
    return results


def _table(rows: Sequence[Sequence[object]], header: Sequence[str]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def report(result: Profile, payload: int) -> str:
    """The tables of one request's profile, as Markdown."""
    out = [f"One echo request ({payload}-byte payload, peer {REQUESTER} -> tile {TILE_ID}): "
           f"doorbell -> reply doorbell **{result.ring} cycles**, -> asleep again "
           f"{result.sleep} cycles; reply {'ok' if result.ok else 'WRONG'}.", ""]  # fmt: skip
    out.append(_table(
        [(name, start, end - start) for name, start, end in result.phases],
        ("phase", "from cycle", "cycles"),
    ))  # fmt: skip

    def by_cost(table: dict[str, list[int]], total: int) -> list[tuple[object, ...]]:
        rows = sorted(table.items(), key=lambda item: -item[1][0])
        return [(name, c, n, f"{c / n:.1f}", f"{100 * c / total:.0f} %") for name, (c, n) in rows]

    out += ["", "Doorbell -> reply doorbell, by function:", ""]
    head = ("function", "cycles", "instructions", "cycles / instruction", "share")
    out.append(_table(by_cost(result.functions, result.ring), head))
    out += ["", "Doorbell -> reply doorbell, by kind of instruction:", ""]
    head = ("instruction", "cycles", "count", "cycles / instruction", "share")
    out.append(_table(by_cost(result.kinds, result.ring), head))
    after = result.sleep - result.ring
    out += ["", "Reply doorbell -> asleep again, by function:", ""]
    head = ("function", "cycles", "instructions", "cycles / instruction", "share")
    out.append(_table(by_cost(result.after_functions, after), head))
    return "\n".join(out)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.soc_profile", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--payload", type=int, default=21, metavar="N",
                        help="payload bytes, 1..56 (default 21, as bench.cosim_rtt)")  # fmt: skip
    parser.add_argument("--requests", type=int, default=3, metavar="N",
                        help="requests profiled (default 3); the last one is shown")  # fmt: skip
    parser.add_argument("--quick", action="store_true", help="one request (as --requests 1)")
    args = parser.parse_args(argv)
    from ivhw.sw import echo

    if args.quick:
        args.requests = 1
    if not 1 <= args.payload <= echo.MAX_PAYLOAD:
        parser.error(f"--payload must be 1..{echo.MAX_PAYLOAD}, not {args.payload}")
    if args.requests < 1:
        parser.error(f"--requests must be at least 1, not {args.requests}")
    payload = bytes((0x41 + i) % 256 for i in range(args.payload))
    results = profile([payload] * args.requests)
    print(report(results[-1], args.payload))
    counts = sorted({r.ring for r in results})
    if len(counts) > 1:
        print(f"\nnote: the requests took different cycle counts to the doorbell: {counts}")
    return 0 if all(r.ok for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
