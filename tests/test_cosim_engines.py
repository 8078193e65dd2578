"""Same answers from both engines: one scripted scenario on the cocotb and the native engine.

The scenario (``cosim_scenario.scenario`` in the simulated CPU, the host peers
here): register reads, a write to a read-only register, a misaligned shared-memory
read, shared-memory traffic with byte enables through the device (a block of 300
bytes too: more than one call into the native engine), a host
token read through the device, events coalesced in the eventfd counter (one
write of 3 on vector 0, one of 1 on vector 1), doorbells both ways, a peer
leaving (its doorbell dropped by the device), and on the PCI endpoint
back-pressure: the ``msi`` sink held 4000 cycles per message (long enough that
the host's second eventfd write lands inside it on a loaded machine and on either
engine), so the second event waits on a low ``event.ready``. Each engine runs it in a fresh domain
with the same join order (so the same peer IDs); the guest's log, the
doorbells the hosts received, the shared memory and the bridge's counters must
be the same. (Every other cosim test also runs on both engines.)
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import pytest
from qemu_domain import Domain
from support import require_tool
from test_cosim import JOIN_TIMEOUT, SHM_SIZE, VECTORS, start_device

from ivhw.cosim.build import build
from ivhw.sw.peer import Doorbell, PeerLeft

pytestmark = pytest.mark.verilator

#: counters that do not depend on how fast the engine simulates
COUNTERS = (
    "events", "coalesced", "doorbells", "doorbells_lost", "irqs", "mem_reads", "mem_writes",
    "events_by_vector", "msix",
)  # fmt: skip
MSI_STALL = 4000  # cycles: ~1 ms on the native engine, ~40 ms on cocotb


class _Target:
    def __init__(self, engine: str, device: str) -> None:
        self.sim, self.engine, self.device = "verilator", engine, device

    def options(self) -> dict[str, object]:
        return {"sim": self.sim, "engine": self.engine, "device": self.device}


def _run(engine: str, device: str, tmp: Path) -> dict[str, Any]:
    """The scenario on ``engine``; everything observable, for comparison."""
    build(device, "verilator", vectors=VECTORS, shm_size=SHM_SIZE, engine=engine)
    tmp.mkdir()
    out = tmp / "guest-log.json"
    with Domain(vectors=VECTORS, shm_size=SHM_SIZE) as domain:
        h1, h2 = domain.peer(), domain.peer()
        memory = h1.memory
        assert memory is not None
        memory[0x2000:0x2008] = b"tokenXYZ"
        process = start_device(
            domain, tmp, _Target(engine, device), name=engine,  # type: ignore[arg-type]
            guest="cosim_scenario:scenario",
            guest_args={"h1": h1.id, "h2": h2.id, "out": out},
        )  # fmt: skip
        try:
            device_id = domain.server.peer_ids[-1]
            received: list[tuple[str, object]] = []
            received.append(("h1", h1.wait(Doorbell, timeout=JOIN_TIMEOUT)))  # ready
            while device_id not in h1.peers:  # its ring may overtake its join message
                h1.poll(0.05)
            fds = h1.eventfds(device_id)
            os.write(fds[0], (3).to_bytes(8, "little"))  # coalesced: one event
            os.write(fds[1], (1).to_bytes(8, "little"))
            received.append(("h1", h1.wait(Doorbell, timeout=30)))
            received.append(("h2", h2.wait(Doorbell, timeout=30)))
            h2_id = h2.id
            h2.close()
            assert h1.wait(PeerLeft, timeout=10) == PeerLeft(h2_id)
            h1.ring(device_id, 0)
            received.append(("h1", h1.wait(Doorbell, timeout=30)))  # done
            assert process.wait(60) == 0, process.output()
            time.sleep(0.05)
            received += [("h1", event) for event in h1.poll(0) if isinstance(event, Doorbell)]
        finally:
            process.stop()
        stats = process.status()["stats"]
        shm = bytes(memory[0x1000:0x1028]).hex()
        block = bytes(memory[0x3000:0x3130])
    assert block == bytes(1) + bytes(range(256)) + bytes(range(44)) + bytes(3)
    log = dict((step[0], step[1:]) for step in json.loads(out.read_text()))
    failed = isinstance(log["sequence"][0], str)  # the error's message, else None
    assert failed == (device == "flat"), log["sequence"]
    assert log["after the sequence"][0][16:] == ("00000000" if failed else "88776655")
    return {
        "guest": out.read_text(),
        "received": [(who, repr(event)) for who, event in received],
        "shm": shm,
        "counters": {name: stats[name] for name in COUNTERS},
        "back-pressure": stats["event_stall_cycles"] > 0,
    }


@pytest.mark.parametrize("device", ["flat", "pci"])
def test_both_engines_give_the_same_answers(
    device: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    require_tool("g++")
    tests = str(Path(__file__).resolve().parent)
    monkeypatch.setenv("PYTHONPATH", tests + os.pathsep + os.environ.get("PYTHONPATH", ""))
    if device == "pci":
        monkeypatch.setenv("IVHW_COSIM_MSI_STALL", str(MSI_STALL))
    native = _run("native", device, tmp_path / "native")
    cocotb = _run("cocotb", device, tmp_path / "cocotb")
    assert native == cocotb
    # and the scenario did what it says, so that equality means something
    counters = native["counters"]
    assert counters["events"] == 3 and counters["coalesced"] == 2, counters
    assert counters["irqs"] == 3 and counters["doorbells"] == 4, counters
    assert '["token", "746f6b656e58595a"]' in native["guest"], native["guest"]  # b"tokenXYZ"
    assert native["back-pressure"] == (device == "pci")
