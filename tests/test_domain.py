"""The on-chip domain on Amaranth's simulator: quick checks against the model.

The same environment and scenarios (``tests/hdl/domain_env.py``) run on Icarus
and Verilator in ``tests/test_hdl_domain.py``; here they run in-process, plus the
parameter checks and ``IvshmemDomain.connect``. ``IVHW_SEED=N`` reruns one seed.
"""

from __future__ import annotations

import os
import random
import re
import sys
from pathlib import Path
from typing import Any

import pytest
from amaranth.hdl import Fragment, Module, Value
from amaranth.lib import data, wiring
from amaranth.sim import Simulator

from ivhw.hdl.domain import BlockRam, IvshmemDomain
from ivhw.hdl.flat import IvshmemFlat

sys.path.insert(0, str(Path(__file__).resolve().parent / "hdl"))
from domain_env import (
    SCENARIOS,
    TEST_EVENT_DEPTH,
    TEST_PORTS,
    TEST_SHM_SIZE,
    DomainEnv,
    run,
)

__all__: list[str] = []


def _signal(dut: object, name: str) -> Value:
    """``ports__0__mem__addr`` -> ``dut.ports[0].mem.addr`` (as a value)."""
    obj: Any = dut
    for part in name.split("__"):
        obj = obj[int(part)] if part.isdigit() else getattr(obj, part)
    return obj.as_value() if isinstance(obj, data.View) else obj


def _seed() -> int:
    return int(os.environ.get("IVHW_SEED", "0")) or random.randrange(1, 1 << 32)


def run_scenario(
    name: str,
    seed: int,
    ports: tuple[tuple[int, int], ...] = TEST_PORTS,
    shm_size: int = TEST_SHM_SIZE,
    ram: str = "bram",
    **params: Any,
) -> DomainEnv:
    """Run scenario ``name`` on a fresh domain in Amaranth's simulator; the env after it.

    With ``ram="external"`` the test connects the RAM to the domain's ``ram`` port,
    as a board top would.
    """
    dut = IvshmemDomain(ports, shm_size=shm_size, event_depth=TEST_EVENT_DEPTH, ram=ram)
    top: Any = dut
    if ram == "external":
        top = Module()
        top.submodules.domain = dut
        top.submodules.ram = memory = BlockRam(dut.word_bits)
        wiring.connect(top, dut.ram, memory.port)
    env = DomainEnv(random.Random(seed), ports=ports, shm_size=shm_size)
    check = SCENARIOS[name](env, **params)
    outputs = [(name, _signal(dut, name)) for name in env.outputs]
    inputs: dict[str, Value] = {}

    async def bench(ctx: Any) -> None:
        async def step(values: dict[str, int]) -> dict[str, int]:
            for key, value in values.items():
                if key not in inputs:
                    inputs[key] = _signal(dut, key)
                ctx.set(inputs[key], value)
            sampled = {key: ctx.get(sig) for key, sig in outputs}
            await ctx.tick()
            return sampled

        await run(env, step, limit=20_000)
        check()

    sim = Simulator(top)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    return env


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_scenario(scenario: str) -> None:
    seed = _seed()
    params = {"operations": 40} if scenario == "random_mix" else {}
    try:
        run_scenario(scenario, seed, **params)
    except AssertionError as error:
        raise AssertionError(f"seed {seed} (rerun with IVHW_SEED={seed}): {error}") from None


@pytest.mark.parametrize("scenario", ["directed", "random_mix"])
def test_one_port_and_the_smallest_memory(scenario: str) -> None:
    """One port (it can only ring itself) and 16 bytes of memory: the arbiters degenerate."""
    seed = _seed()
    run_scenario(scenario, seed, ports=((7, 3),), shm_size=16)


def test_external_ram() -> None:
    """``ram="external"``: the same traffic through a RAM the board top supplies."""
    seed = _seed()
    run_scenario("random_mix", seed, ram="external", operations=40)


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"ports": []}, ValueError, "a domain needs at least one port"),
        ({"ports": 3}, TypeError, "ports must be a sequence of (id, vectors) pairs, not 3"),
        ({"ports": [(1,)]}, TypeError, "a port is an (id, vectors) pair, not (1,)"),
        ({"ports": [(1, 2), (1, 3)]}, ValueError, "port id 1 appears twice"),
        ({"ports": [(0x10000, 1)]}, ValueError, "port id must be 0..65535, not 65536"),
        ({"ports": [(1, 0)]}, ValueError, "port vectors must be 1..64, not 0"),
        ({"ports": [(1, 65)]}, ValueError, "port vectors must be 1..64, not 65"),
        ({"ports": [(1, True)]}, TypeError, "port vectors must be an integer, not True"),
        ({"shm_size": 8}, ValueError, "shm_size must be >= 16, not 8"),
        ({"shm_size": 3000}, ValueError, "shm_size must be a power of two, not 3000"),
        ({"ram": "sram"}, ValueError, "ram must be one of bram, spram, external, not 'sram'"),
        ({"ram": "spram", "shm_size": 1 << 18}, ValueError, "holds at most 128 KiB"),
        ({"event_depth": 0}, ValueError, "event_depth must be >= 1, not 0"),
    ],
)
def test_parameters_validated(kwargs: dict[str, Any], error: type, message: str) -> None:
    kwargs = {"ports": [(1, 1)], **kwargs}
    with pytest.raises(error, match=re.escape(message)):
        IvshmemDomain(**kwargs)


def test_connect_checks_the_device() -> None:
    domain = IvshmemDomain([(1, 2), (2, 4)], shm_size=1024)
    m = Module()
    m.submodules.domain = domain
    m.submodules.a = a = IvshmemFlat(vectors=2, shm_size=1024)
    m.submodules.b = b = IvshmemFlat(vectors=2, shm_size=1024)
    m.submodules.c = c = IvshmemFlat(vectors=4, shm_size=2048)
    domain.connect(m, 0, a)
    with pytest.raises(ValueError, match=re.escape("port 1 (id 2) has 4 vectors, the device 2")):
        domain.connect(m, 1, b)
    with pytest.raises(ValueError, match=re.escape("1024 bytes of memory, the device 2048")):
        domain.connect(m, 1, c)
    with pytest.raises(ValueError, match=re.escape("port index must be 0..1, not 2")):
        domain.connect(m, 2, a)
    Fragment.get(m, None)  # what was connected elaborates


def test_any_device_connects() -> None:
    """The PCI endpoint has the same transport ports: it joins a domain beside a flat device."""
    from ivhw.hdl.pci import IvshmemPci

    m = Module()
    m.submodules.domain = domain = IvshmemDomain([(0, 2), (1, 1)], shm_size=4096)
    m.submodules.pci = pci = IvshmemPci(vectors=2, shm_size=4096)
    m.submodules.flat = flat = IvshmemFlat(vectors=1, shm_size=4096)
    domain.connect(m, 0, pci)
    domain.connect(m, 1, flat)
    seen = {}

    async def bench(ctx: Any) -> None:
        await ctx.tick()
        seen["ids"] = (ctx.get(pci.ident.id), ctx.get(flat.ident.id))
        seen["valid"] = (ctx.get(pci.ident.valid), ctx.get(flat.ident.valid))

    sim = Simulator(m)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    assert seen == {"ids": (0, 1), "valid": (1, 1)}
