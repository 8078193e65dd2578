"""cocotb tests of the on-chip domain: the RTL against the model (``ivhw.sw.models.domain``).

The toplevel (built by ``tests/test_hdl_domain.py``) holds two domains:

``raw__*``
    A domain with its ports on the toplevel. :class:`domain_env.DomainEnv` plays
    the devices (doorbell sources, event sinks, queries, memory masters) and checks
    every transfer against the model at its clock edge; the scenarios are those of
    the Amaranth-simulator tier.
``a__*``, ``b__*``, ``c__*``
    Three real ivshmem-flat tiles (Wishbone, AXI4-Lite, Wishbone) on a second
    domain, driven by bus masters: doorbells reach the other tile's IRQ, memory one
    tile writes the others read, as VMs do through a server. The models are three
    :class:`IvshmemFlatModel` on a :class:`Domain`.

Environment: ``IVHW_SEED`` (rerun one seed), ``IVHW_RANDOM_OPS``.
"""

from __future__ import annotations

import os
import random
from typing import Any

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import FallingEdge, RisingEdge
from cocotbext.axi import AxiLiteBus, AxiLiteMaster, AxiResp
from domain_env import (
    SCENARIOS,
    SPRAM_SHM_SIZE,
    TILE_BUSES,
    TILE_PORTS,
    TILE_SHM_SIZE,
    DomainEnv,
    run,
)
from wishbone_master import WishboneMaster

from ivhw.hdl.testing import cocotb_reset, cocotb_step
from ivhw.sw.models.domain import Domain
from ivhw.sw.regmap import DOORBELL, FLAT_REGS


def _seed() -> int:
    seed = int(os.environ.get("IVHW_SEED", "0")) or random.randrange(1, 1 << 32)
    cocotb.log.info("seed %d (rerun with IVHW_SEED=%d)", seed, seed)
    return seed


class TB:
    """Clock, reset, and either the raw domain's environment or the tiles' masters and models."""

    def __init__(self, dut: Any, seed: int | None = None, prefix: str = "raw__") -> None:
        self.dut = dut
        self.rng = random.Random(seed)
        for name in dir(dut):
            if name.startswith(f"{prefix}ports__") and _is_input(name):
                getattr(dut, name).value = 0
        Clock(dut.clk, 10, unit="ns").start()

    async def run_env(self, env: DomainEnv, limit: int = 20_000) -> int:
        """Run ``env`` on the raw domain: drive at the falling edge, sample settled values."""
        return await run(env, cocotb_step(self.dut, env.outputs), limit)


def _is_input(name: str) -> bool:
    """Whether a raw-domain port signal is driven by the devices (the test)."""
    device_out = ("doorbell__valid", "doorbell__payload", "event__ready", "peers__req",
                  "peers__peer", "mem__addr", "mem__we", "mem__w_data", "mem__sel",
                  "mem__valid")  # fmt: skip
    return name.endswith(device_out)


# -- the raw domain --------------------------------------------------------------------------


async def _scenario(dut: Any, name: str, env_params: dict[str, Any] | None = None,
                    **params: Any) -> None:  # fmt: skip
    seed = _seed()
    env_params = {"prefix": "raw__", **(env_params or {})}
    tb = TB(dut, seed, env_params["prefix"])
    await cocotb_reset(tb.dut)
    env = DomainEnv(tb.rng, **env_params)
    check = SCENARIOS[name](env, **params)
    cycles = await tb.run_env(env)
    check()
    stats = [(p.rung, p.events, p.accesses, p.db_stalled) for p in env.ports]
    dut._log.info("%s: %d cycles, %s, per port (rung, events, accesses, stalled) %s",
                  name, cycles, env.model.counters, stats)  # fmt: skip


@cocotb.test()
async def directed(dut: Any) -> None:
    """Every query, every port ringing every port (edge vectors), absent IDs, byte lanes."""
    await _scenario(dut, "directed")


@cocotb.test()
async def random_mix(dut: Any) -> None:
    """Seeded random traffic on every port, random sink speeds and gaps."""
    await _scenario(dut, "random_mix", operations=int(os.environ.get("IVHW_RANDOM_OPS", "150")))


@cocotb.test()
async def contention(dut: Any) -> None:
    """All ports at once: doorbells to one target, memory on the same words; fairness bound."""
    await _scenario(dut, "contention")


@cocotb.test()
async def slow_sink(dut: Any) -> None:
    """A sink ready one cycle in twenty: its sources are held, nothing is lost."""
    await _scenario(dut, "slow_sink")


@cocotb.test()
async def spram_memory(dut: Any) -> None:
    """Toplevel ``domain_spram``: the RAM in iCE40 SPRAM models, both banks, every byte lane."""
    params = {"prefix": "", "shm_size": SPRAM_SHM_SIZE, "undefined_memory": True}
    await _scenario(dut, "sparse_memory", params)


# -- three ivshmem-flat tiles on a domain ----------------------------------------------------


class Tile:
    """One tile's bus master, its IRQ monitor and its model."""

    def __init__(self, tb: TB, index: int, domain: Domain) -> None:
        self.index = index
        self.bus = TILE_BUSES[index]
        dut = tb.dut
        self.pulses = 0
        self.model = domain.flat(index, on_irq=self._model_irq)
        self.model_pulses = 0
        if self.bus == "b":
            self._axil = AxiLiteMaster(AxiLiteBus.from_prefix(dut, "b_"), dut.clk, dut.rst)
            self._axil.write_if.log.setLevel("WARNING")
            self._axil.read_if.log.setLevel("WARNING")
        else:
            self._wb = WishboneMaster(dut, f"{self.bus}__", dut.clk)
        self._irq = getattr(dut, f"irq_{self.bus}")
        self._counters = {
            name: getattr(dut, f"{self.bus}_{name}")
            for name in ("doorbell_bad_peer", "doorbell_bad_vector", "events_dropped")
        }

    def _model_irq(self) -> None:
        self.model_pulses += 1

    async def monitor(self, clock: Any) -> None:
        """Count IRQ pulses (rising edges of ``irq``), sampled between clock edges."""
        previous = 0
        while True:
            await FallingEdge(clock)
            level = int(self._irq.value)
            self.pulses += level and not previous
            previous = level

    async def wait_pulses(self, clock: Any, where: str, limit: int = 300) -> None:
        """Wait until the IRQ pulsed as often as the model says; fail after ``limit`` cycles."""
        for _ in range(limit):
            if self.pulses == self.model_pulses:
                return
            await RisingEdge(clock)
        raise AssertionError(
            f"{where}: tile {self.bus} pulsed {self.pulses}, model {self.model_pulses}"
        )

    async def read(self, addr: int) -> int:
        if self.bus == "b":
            result = await self._axil.read(addr, 4)
            assert AxiResp(result.resp) == AxiResp.OKAY, result
            return int.from_bytes(result.data, "little")
        result = await self._wb.read(addr >> 2)
        assert result.ack
        return result.data

    async def write(self, addr: int, data: int) -> None:
        if self.bus == "b":
            result = await self._axil.write(addr, data.to_bytes(4, "little"))
            assert AxiResp(result.resp) == AxiResp.OKAY, result
        else:
            assert (await self._wb.write(addr >> 2, data)).ack

    # Register and shared-memory accesses, applied to the model once the bus has answered.

    async def ivposition(self) -> int:
        value = await self.read(FLAT_REGS.IVPOSITION.offset)
        assert value == self.model.read_register(FLAT_REGS.IVPOSITION.offset)
        return value

    async def ring(self, peer: int, vector: int) -> None:
        word = DOORBELL.pack(peer, vector)
        await self.write(FLAT_REGS.DOORBELL.offset, word)
        self.model.write_register(FLAT_REGS.DOORBELL.offset, word)

    async def shm_write(self, offset: int, data: int) -> None:
        await self.write(TILE_SHM_SIZE + offset, data)
        self.model.shm_write(offset, data)

    async def shm_read(self, offset: int) -> int:
        value = await self.read(TILE_SHM_SIZE + offset)
        want = self.model.shm_read(offset)
        assert value == want, f"tile {self.bus}: shm {offset:#x} reads {value:#x}, model {want:#x}"
        return value

    def compare(self, where: str) -> None:
        c = self.model.counters
        got = {name: int(handle.value) for name, handle in self._counters.items()}
        want = {"doorbell_bad_peer": c.bad_peer, "doorbell_bad_vector": c.bad_vector,
                "events_dropped": 0}  # fmt: skip
        assert got == want, f"{where}: tile {self.bus} counters {got}, model {want}"
        assert self.pulses <= self.model_pulses, f"{where}: tile {self.bus} IRQ without a doorbell"


class Tiles:
    """The three tiles, their models on one :class:`Domain`, and the IRQ monitors."""

    def __init__(self, tb: TB) -> None:
        self.tb = tb
        self.domain = Domain(TILE_PORTS, shm_size=TILE_SHM_SIZE)
        self.tiles = [Tile(tb, i, self.domain) for i in range(len(TILE_BUSES))]
        for tile in self.tiles:
            cocotb.start_soon(tile.monitor(tb.dut.clk))

    def __getitem__(self, index: int) -> Tile:
        return self.tiles[index]

    async def settle(self, where: str) -> None:
        """Every doorbell rung so far has pulsed its target; every counter is the model's."""
        for tile in self.tiles:
            await tile.wait_pulses(self.tb.dut.clk, where)
        for tile in self.tiles:
            tile.compare(where)
        counters = self.domain.counters
        assert int(self.tb.dut.tiles_bad_peer.value) == counters.bad_peer
        assert int(self.tb.dut.tiles_bad_vector.value) == counters.bad_vector


async def _tiles(dut: Any, seed: int | None = None) -> Tiles:
    tb = TB(dut, seed)
    await cocotb_reset(tb.dut)
    return Tiles(tb)


@cocotb.test()
async def tiles_directed(dut: Any) -> None:
    """IDs, memory A writes and B and C read, doorbells to every tile, refused doorbells."""
    tiles = await _tiles(dut)
    a, b, c = tiles.tiles
    for tile, (peer, _) in zip(tiles.tiles, TILE_PORTS, strict=True):
        assert await tile.ivposition() == peer
    for k in range(8):
        await a.shm_write(4 * k, 0xA0000000 | k)
    for tile in (b, c):
        for k in range(8):
            assert await tile.shm_read(4 * k) == 0xA0000000 | k
    await b.shm_write(TILE_SHM_SIZE - 4, 0x0B0B0B0B)
    assert await a.shm_read(TILE_SHM_SIZE - 4) == 0x0B0B0B0B
    # Every tile rings every tile (itself too) on its last vector, one at a time.
    for source in tiles.tiles:
        for peer, vectors in TILE_PORTS:
            await source.ring(peer, vectors - 1)
            await tiles.settle(f"tile {source.bus} rang {peer}")
    # Refused by the ringing device itself: no such peer, no such vector.
    await a.ring(0x55, 0)
    await a.ring(TILE_PORTS[1][0], TILE_PORTS[1][1])
    await tiles.settle("refused doorbells")
    assert a.model.counters.bad_peer == 1 and a.model.counters.bad_vector == 1
    assert b.pulses == len(TILE_PORTS) and b.model.counters.events == len(TILE_PORTS)


@cocotb.test()
async def tiles_ping_pong(dut: Any) -> None:
    """A request in shared memory and a doorbell, a reply and a doorbell back: two VMs' echo."""
    tiles = await _tiles(dut)
    a, b = tiles[0], tiles[1]
    clk = dut.clk
    (a_id, _), (b_id, _) = TILE_PORTS[0], TILE_PORTS[1]
    request, reply = 0x0, TILE_SHM_SIZE // 2
    trips = []

    async def echo() -> None:
        for _ in range(8):
            seen = b.pulses
            while b.pulses == seen:
                await RisingEdge(clk)
            value = await b.shm_read(request)
            await b.shm_write(reply, value ^ 0xFFFFFFFF)
            await b.ring(a_id, 0)

    server = cocotb.start_soon(echo())
    for round_ in range(8):
        payload = 0x12340000 | round_
        seen = a.pulses
        await a.shm_write(request, payload)
        start = cocotb.utils.get_sim_time("ns")
        await a.ring(b_id, 1)
        while a.pulses == seen:
            await RisingEdge(clk)
        trips.append(int(cocotb.utils.get_sim_time("ns") - start) // 10)
        assert await a.shm_read(reply) == payload ^ 0xFFFFFFFF
    await server
    await tiles.settle("ping-pong")
    dut._log.info("round trips in cycles (doorbell write to reply IRQ): %s", trips)


@cocotb.test()
async def tiles_concurrent(dut: Any) -> None:
    """All three masters at once: own memory slices, doorbells anywhere; then all memory read."""
    seed = _seed()
    tiles = await _tiles(dut, seed)
    rng = random.Random(seed)
    ids = [peer for peer, _ in TILE_PORTS] + [0x55]
    slice_words = TILE_SHM_SIZE // 4 // len(tiles.tiles)

    async def traffic(tile: Tile) -> None:
        base = 4 * slice_words * tile.index
        for _ in range(int(os.environ.get("IVHW_RANDOM_OPS", "60"))):
            kind = rng.random()
            offset = base + 4 * rng.randrange(slice_words)
            if kind < 0.4:
                await tile.shm_write(offset, rng.getrandbits(32))
            elif kind < 0.7:
                await tile.shm_read(offset)
            else:
                await tile.ring(rng.choice(ids), rng.randrange(5))

    workers = [cocotb.start_soon(traffic(tile)) for tile in tiles.tiles]
    for worker in workers:
        await worker
    await tiles.settle("after concurrent traffic")
    for tile in tiles.tiles:
        for offset in range(0, slice_words * 4 * len(tiles.tiles), 4):
            await tile.shm_read(offset)
    assert sum(tile.pulses for tile in tiles.tiles) == tiles.domain.counters.rings > 0
