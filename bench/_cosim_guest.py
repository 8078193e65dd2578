"""Guests of the co-simulation benchmarks, timed inside the simulator.

``accesses`` (``bench.cosim_simspeed``): ``--guest-arg count=N --guest-arg
out=FILE [--guest-arg doorbell=PEER]``: IVPosition read, (a Doorbell write to
PEER,) shared-memory word write, read back, in turn, ``count`` accesses; the
simulated cycles, the wall time and the process's CPU time of the loop go to
FILE as JSON.

``wake`` (``bench.cosim_rtt``): ``--guest-arg count=N --guest-arg host=PEER
--guest-arg out=FILE``: rings PEER once (ready), then records the wall time
(``perf_counter``, the host's clock too) at which each of N interrupts reached
the guest, ringing PEER back after each.

``echo_legs`` (``bench.cosim_rtt``): ``--guest-arg out=FILE``: the built-in echo
service, with the wall time at which each of its calls into the device returned
(``wait_irq``, then ``serve_pending``'s stamps: the outbox header read, the
payload read, the reply written and rung), per request answered; written to FILE
as JSON when it is stopped.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from ivhw.cosim.builtin_guests import serve_pending
from ivhw.cosim.guest_api import Guest

__all__ = ["accesses", "echo_legs", "wake"]

_WORD = 0x40


async def accesses(g: Guest) -> None:
    """Run the access loop and record its rate."""
    count = int(g.args["count"])
    doorbell = g.args.get("doorbell")
    done = 0
    start, cycles, cpu = g.now(), g.cycles, time.process_time()
    while done < count:
        if await g.read("ivposition") != g.id:
            raise AssertionError("IVPosition read back wrong")
        done += 1
        if doorbell is not None:
            await g.ring(int(doorbell), 0)
            done += 1
        await g.shm_write32(_WORD, done)
        if await g.shm_read32(_WORD) != done:
            raise AssertionError("shared-memory word read back wrong")
        done += 2
    seconds, cycles, cpu = g.now() - start, g.cycles - cycles, time.process_time() - cpu
    record = {"accesses": done, "cycles": cycles, "seconds": seconds, "cpu_seconds": cpu}
    Path(g.args["out"]).write_text(json.dumps(record))


async def wake(g: Guest) -> None:
    """Wait for ``count`` interrupts; the wall time each was seen goes to ``out`` (JSON)."""
    count = int(g.args["count"])
    await g.ring(int(g.args["host"]), 0)  # ready: the host may start ringing
    seen: list[float] = []
    while len(seen) < count:
        if not await g.wait_irq(30):
            break
        seen.append(g.now())
        await g.ring(int(g.args["host"]), 0)  # seen: the host rings again after a pause
    Path(g.args["out"]).write_text(json.dumps(seen))


async def echo_legs(g: Guest) -> None:
    """The echo service, its calls timed (see the module docstring)."""
    records: list[list[tuple[str, float]]] = []
    stamps: list[tuple[str, float]] = []

    def stamp(name: str) -> None:
        stamps.append((name, time.perf_counter()))

    try:
        await serve_pending(g)  # requests made before we listened
        while True:
            stamps.clear()
            await g.wait_irq()
            stamp("wait_irq")
            if await serve_pending(g, stamp):
                records.append(list(stamps))
    finally:
        Path(g.args["out"]).write_text(json.dumps(records))
