"""ivshmem-flat in Amaranth's simulator, in-process, against the model: the fast unit tier.

The same drivers as every other bench (:mod:`ivhw.hdl.testing`) play the
transport; a bus master issues random register, hole and shared-memory
accesses, doorbells to known and unknown peers, and inbound events. Every
access's response and read data, every doorbell, the IRQ pulses and the
counters must be the model's (``ivhw.sw.models.flat``). A few seconds, no
Verilog: for iterating on the gateware; the cocotb benches in
``tests/hdl/`` run the same device on Icarus and Verilator.
"""

from __future__ import annotations

import collections
import random
from collections.abc import Mapping

import pytest
from amaranth.sim import Simulator

from ivhw.hdl.bus import Response
from ivhw.hdl.flat import IvshmemFlat
from ivhw.hdl.testing import DeviceTransport, amaranth_step, run
from ivhw.sw.memmap import Kind
from ivhw.sw.models.flat import IvshmemFlatModel
from ivhw.sw.regmap import CPU_MASKS, DOORBELL

SHM_SIZE = 256
VECTORS = 4
OWN_ID = 3
PEERS = {1: 2, 7: 4}


class BusMaster:
    """Presents queued accesses on the internal bus, one at a time, and records the answers."""

    outputs = ["bus__ack", "bus__resp", "bus__r_data", "irq"]

    def __init__(self) -> None:
        self.queue: collections.deque[tuple[int, bool, int, int]] = collections.deque()
        self.done: list[tuple[tuple[int, bool, int, int], int, int]] = []
        self.irq_pulses = 0
        self._irq = 0
        self._presented = False

    def inputs(self) -> dict[str, int]:
        addr, write, data, mask = self.queue[0] if self.queue else (0, False, 0, 0)
        self._presented = bool(self.queue)
        return {"bus__stb": int(self._presented), "bus__addr": addr, "bus__we": int(write),
                "bus__w_data": data, "bus__sel": mask}  # fmt: skip

    def edge(self, values: Mapping[str, int]) -> None:
        self.irq_pulses += values["irq"] and not self._irq
        self._irq = values["irq"]
        if self._presented and values["bus__ack"]:
            self.done.append((self.queue.popleft(), values["bus__resp"], values["bus__r_data"]))


def _expected(model: IvshmemFlatModel, device: IvshmemFlat, op: tuple) -> tuple[int, int, int]:
    """``(response, data, lanes compared)`` the model gives for ``op``."""
    addr, write, data, mask = op
    space = device.memory_map
    window = space.find(addr)
    lanes = sum(0xFF << (8 * i) for i in range(4) if mask >> i & 1)
    if window.kind is Kind.HOLE:
        return Response[space.miss].value, 0, 0
    if window.name == "shm":
        offset = addr - window.base
        if write:
            for lane in range(4):
                if mask >> lane & 1:
                    model.shm_write(offset + lane, data >> (8 * lane) & 0xFF, 1)
            return Response.OKAY.value, 0, 0
        return Response.OKAY.value, model.shm_read(offset, 4), 0xFFFF_FFFF
    before = model.counters.bad_access
    value = 0
    if addr % 4:  # the bus carries no size: an unaligned dword access
        model.write(addr, data, 4) if write else model.read(addr, 4)
    elif write:
        model.write_register(addr, data, mask)
    else:
        value = model.read_register(addr, mask)
    refused = model.counters.bad_access != before
    response = Response[window.refused].value if refused else Response.OKAY.value
    return response, value, 0 if write else lanes


@pytest.mark.parametrize("seed", [1, 2])
def test_flat_matches_model(seed: int) -> None:
    rng = random.Random(seed)
    device = IvshmemFlat(vectors=VECTORS, shm_size=SHM_SIZE, doorbell_depth=2, irq_backlog=3)
    rung: list[tuple[int, int]] = []
    model = IvshmemFlatModel(
        vectors=VECTORS, shm_size=SHM_SIZE, on_doorbell=lambda p, v: rung.append((p, v))
    )
    model.set_id(OWN_ID)
    for peer, vectors in PEERS.items():
        model.set_peer(peer, vectors)
    transport = DeviceTransport(rng, SHM_SIZE, doorbell_ready=0.6, mem_ready=0.7,
                                peer_latency=(0, 1, 2), read_latency=(1, 2, 3))  # fmt: skip
    transport.ident.id = OWN_ID
    transport.peers.peers.update(model.peers)
    master = BusMaster()
    space = device.memory_map
    regs, shm = space["regs"], space["shm"]
    masks = [*CPU_MASKS, 0, 0b0101, 0b0111, 0b1110]
    for _ in range(300):
        kind = rng.random()
        mask = 0xF if rng.random() < 0.5 else rng.choice(masks)
        write = rng.random() < 0.6
        data = rng.getrandbits(32)
        if kind < 0.5:
            addr = rng.randrange(regs.base, regs.end, 4)
            if write and addr == regs.register("DOORBELL"):
                peer = rng.choice([*PEERS, OWN_ID, 0x55])
                data = DOORBELL.pack(peer, rng.choice((0, 1, 3, 4, 0x100)))
            if rng.random() < 0.05:
                addr = min(addr + rng.randrange(1, 4), regs.end - 5)  # unaligned: refused
        elif kind < 0.85:
            addr = shm.address(rng.randrange(0, shm.size, 4))
        else:
            addr = rng.randrange(regs.end, shm.base, 4)  # the hole
        master.queue.append((addr, write, data, mask))
    events = [rng.randrange(VECTORS + 2) for _ in range(20)]
    transport.events.queue.extend(events)

    async def bench(ctx) -> None:  # type: ignore[no-untyped-def]
        ctx.set(device.ident.id, OWN_ID)
        counters = ["doorbell_bad_peer", "doorbell_bad_vector", "bad_access", "events_dropped"]
        step = amaranth_step(ctx, device, transport.outputs + master.outputs + counters)
        drivers = (transport, master)
        await run(step, drivers, lambda: not master.queue and not transport.events.queue, 20_000)
        tail = iter(range(60))  # then let the doorbell FIFO and the IRQ backlog drain
        await run(step, drivers, lambda: next(tail, None) is None, limit=200)
        for op, response, value in master.done:
            want, want_value, lanes = _expected(model, device, op)
            assert response == want, f"{op}: response {response}, model {want}"
            assert value & lanes == want_value & lanes, f"{op}: {value:#x}, model {want_value:#x}"
        assert transport.rung() == rung
        c = model.counters
        assert (ctx.get(device.doorbell_bad_peer), ctx.get(device.doorbell_bad_vector),
                ctx.get(device.bad_access)) == (c.bad_peer, c.bad_vector, c.bad_access)  # fmt: skip
        own = sum(1 for v in events if v < VECTORS)
        assert master.irq_pulses == own
        assert ctx.get(device.events_dropped) == len(events) - own
        assert bytes(transport.mem.memory) == bytes(model.shm.view)

    sim = Simulator(device)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    assert len(master.done) == 300
