"""The scripted guest of ``test_cosim_engines.py`` (run as ``--guest cosim_scenario:scenario``).

Every step's outcome (register and shared-memory reads, bus errors, interrupt
counts, the peers it knows) goes into a log that the test compares between
engines. Steps are synchronised with the host peers by doorbells, so the log
does not depend on how fast the engine simulates.
"""

from __future__ import annotations

import json
from pathlib import Path

from ivhw.cosim.guest_api import Guest

__all__ = ["scenario"]


async def _outcome(step: object) -> object:
    try:
        return await step  # type: ignore[misc]
    except Exception as error:  # a bus error is a result to compare, not a failure
        return f"{type(error).__name__}: {error}"


async def scenario(g: Guest) -> None:
    """Registers, shared memory, coalesced events, doorbells both ways, a peer leaving."""
    h1, h2 = int(g.args["h1"]), int(g.args["h2"])
    log: list[object] = []
    log.append(["id", g.id, await g.read("ivposition")])
    log.append(["write IVPosition", await _outcome(g.write("ivposition", 7))])
    log.append(["misaligned shm read", await _outcome(g.shm_read32(0x1002))])
    await g.shm_write(0x1001, b"native or cocotb")  # unaligned: byte enables
    await g.shm_write32(0x1020, 0xA5A5_5A5A, strb=0b0101)
    log.append(["shm", (await g.shm_read(0x1000, 0x28)).hex()])
    # a block of more words than one native engine call takes (ivhw.cosim.native.BURST)
    await g.shm_write(0x3001, bytes(range(256)) + bytes(range(44)))
    log.append(["block", (await g.shm_read(0x3000, 304)).hex()])
    # a sequence of writes with a register write of byte enables no CPU makes in it: where
    # the device answers that with an error (flat: SLVERR), the sequence ends there and its
    # last write is not made
    odd = g.register_write("ivposition", 7)._replace(strb=0b0101)
    sequence = [g.shm_word(0x3200, 0x1122_3344), *g.shm_data(0x3205, b"abc"), odd,
                g.shm_word(0x3208, 0x5566_7788)]  # fmt: skip
    log.append(["sequence", await _outcome(g.write_all(sequence))])
    log.append(["after the sequence", (await g.shm_read(0x3200, 12)).hex()])
    log.append(["peers", sorted(g.peers().items())])
    await g.ring(h1, 1)  # ready: the host writes a token and rings vector 0 (x3) and 1
    seen = 0
    while seen < 2:
        got = await g.wait_irq(30)
        if not got:
            log.append(["timed out waiting for the coalesced events"])
            break
        seen += got
    log.append(["interrupts", seen])
    log.append(["token", (await g.shm_read(0x2000, 8)).hex()])
    await g.ring(h1, 0)
    await g.ring(h2, 1)
    log.append(["interrupt after h2 left", await g.wait_irq(30)])
    while h2 in g.peers():  # the leave may reach the device after h1's ring
        await g.wait_irq(0.01)
    log.append(["peers", sorted(g.peers().items())])
    await g.ring(h2, 0)  # a departed peer: the device drops it
    await g.ring(h1, 1)  # done
    log.append(["no interrupt", await g.wait_irq(0.2)])
    Path(g.args["out"]).write_text(json.dumps(log))
