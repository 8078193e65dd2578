"""The bridge's event queue under back-pressure: rings pile up, no interrupt is lost.

The PCI endpoint takes no event while its MSI-X message waits on the ``msi`` sink,
so the bridge's test hook ``IVHW_COSIM_MSI_STALL`` (hold ``msi.ready`` low for N
cycles of every message) makes it hold ``event.ready`` low while several host
peers ring the device in a burst on every vector. The rule the bridge must keep is
the model's (``ivhw.sw.models.attach``): every eventfd read is one event, whatever
its counter (coalesced rings), and every event on an enabled, unmasked MSI-X vector
is one message on that vector.
"""

from __future__ import annotations

import os
import re
import threading
import time
from pathlib import Path

import pytest
from qemu_domain import Domain
from test_cosim import JOIN_TIMEOUT, SIMS, VECTORS, Target, domain, sim, start_device

from ivhw.sw.peer import Doorbell, Peer

__all__ = ["domain", "sim"]  # fixtures used here

#: PCI only: the flat device takes an event every other cycle until its IRQ backlog
#: (15) is full, which the bridge's polling cannot outrun.
PCI_SIMS = [param for param in SIMS if param.id.endswith("-pci")]  # type: ignore[union-attr]
#: cycles every MSI-X message waits for ready: far longer than the bridge needs to
#: read the next eventfd (every 8 cycles at most), so events must queue
MSI_STALL = 60
HOSTS = 3
ROUNDS = 6

GUEST_MODULE = '''
async def count_interrupts(g):
    """Tell the host the device is enumerated, then count interrupts until quiet."""
    await g.ring(int(g.args["host"]), 0)
    total = await g.wait_irq(60)
    while True:
        more = await g.wait_irq(float(g.args["quiet"]))
        if not more:
            break
        total += more
    g.log(f"interrupts {total}")
'''


def _burst(
    host: Peer, target: int, barrier: threading.Barrier, errors: list[BaseException]
) -> None:
    try:
        barrier.wait()
        for _ in range(ROUNDS):
            for vector in range(VECTORS):
                host.ring(target, vector)
            time.sleep(0.002)  # the next round lands while earlier events still wait
    except BaseException as error:
        errors.append(error)


@pytest.mark.parametrize("sim", PCI_SIMS, indirect=True)
def test_burst_under_back_pressure_loses_no_interrupt(
    domain: Domain, tmp_path: Path, sim: Target, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "counting_guest.py").write_text(GUEST_MODULE)
    monkeypatch.setenv("PYTHONPATH", str(tmp_path) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    monkeypatch.setenv("IVHW_COSIM_MSI_STALL", str(MSI_STALL))
    hosts = [domain.peer() for _ in range(HOSTS)]
    device = start_device(
        domain,
        tmp_path,
        sim,
        guest="counting_guest:count_interrupts",
        guest_args={"host": hosts[0].id, "quiet": 1.0},
    )
    target = domain.server.peer_ids[-1]
    # before MSI-X is enabled the endpoint drops events: wait for the guest's hello
    hosts[0].wait(Doorbell, timeout=JOIN_TIMEOUT)
    for host in hosts:
        while target not in host.peers:
            host.poll(0.1)
    barrier = threading.Barrier(HOSTS)
    errors: list[BaseException] = []
    threads = [threading.Thread(target=_burst, args=(h, target, barrier, errors)) for h in hosts]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert not errors, errors
    assert device.wait(120) == 0, device.output()
    stats = device.status()["stats"]
    output = device.output()
    found = re.search(r"interrupts (\d+)", output)
    assert found, output
    events = {int(v): n for v, n in stats["events_by_vector"].items()}
    msix = {int(v): n for v, n in stats["msix"].items()}
    rings = HOSTS * ROUNDS
    # the back-pressure path was taken: events waited on a low event.ready
    assert stats["event_stall_cycles"] > 0, stats
    # every ring was read, as one event or coalesced into one
    assert stats["events"] + stats["coalesced"] == rings * VECTORS, stats
    assert all(1 <= events.get(v, 0) <= rings for v in range(VECTORS)), events
    # one MSI-X message per event on its vector, and the guest saw each one
    assert msix == events, (msix, events)
    assert int(found.group(1)) == stats["irqs"] == stats["events"], (found.group(0), stats)
