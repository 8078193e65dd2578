"""Faults around the co-simulation bridge: peers leaving, the server dying, the simulator crashing.

(The coalesced-eventfd fault, a counter above 1, is ``test_cosim.py::
test_coalesced_ring_still_interrupts``.)
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

from qemu_domain import Domain
from test_cosim import Target, check_echo, device_id, domain, sim, start_device

from ivhw.sw import echo
from ivhw.sw.peer import Doorbell, PeerLeft

__all__ = ["domain", "sim"]  # fixtures used here


def test_peer_leaving_mid_run(domain: Domain, tmp_path: Path, sim: Target) -> None:
    device = start_device(domain, tmp_path, sim)
    staying = domain.peer()
    leaving = domain.peer()
    target = device_id(staying)
    check_echo(leaving, target, b"before leaving", device)
    # publish a request, ring, and leave before the answer: the device's doorbell to a
    # departed peer is dropped, nothing else changes
    memory = leaving.memory
    assert memory is not None
    box = echo.outbox(leaving.id)
    memory[box : box + 4] = target.to_bytes(4, "little")
    memory[box + 8 : box + 12] = b"gone"
    memory[box + 4 : box + 8] = (4).to_bytes(4, "little")
    leaving.ring(target, 0)
    leaving_id = leaving.id
    leaving.close()
    assert staying.wait(PeerLeft, timeout=10) == PeerLeft(leaving_id)
    for n in range(3):
        check_echo(staying, target, b"still served %d" % n, device)
    assert device.stop() == 0, device.output()
    assert f"peer {leaving_id} left" in device.output()


def test_server_dying_ends_the_bridge(domain: Domain, tmp_path: Path, sim: Target) -> None:
    device = start_device(domain, tmp_path, sim)
    host = domain.peer()
    check_echo(host, device_id(host), b"before the server dies", device)
    domain.server.stop()
    status = device.wait(30)
    output = device.output()
    assert status == 3, output
    errors = [line for line in output.splitlines() if line.startswith("ivshmem-cosim: error:")]
    assert errors == [
        "ivshmem-cosim: error: the ivshmem server closed the connection; "
        "the simulated device leaves"
    ], output


def test_simulator_crash_is_dropped_and_others_continue(
    domain: Domain, tmp_path: Path, sim: Target
) -> None:
    device = start_device(domain, tmp_path, sim)
    host = domain.peer()
    other = domain.peer()
    target = device_id(host)
    check_echo(host, target, b"before the crash", device)
    os.kill(device.simulator_pid(), signal.SIGKILL)
    assert host.wait(PeerLeft, timeout=10) == PeerLeft(target)
    domain.wait_peer_count(2, timeout=10)
    assert device.wait(30) != 0
    assert "the simulator exited without a status" in device.output()
    # the rest of the domain carries on
    host.ring(other.id, 1)
    event = other.wait(Doorbell, timeout=5)
    assert event == Doorbell(1, 1)
    responder = echo.EchoResponder(other)
    memory = host.memory
    assert memory is not None
    box = echo.outbox(host.id)
    memory[box : box + 4] = other.id.to_bytes(4, "little")
    memory[box + 8 : box + 10] = b"ok"
    memory[box + 4 : box + 8] = (2).to_bytes(4, "little")
    assert responder.serve_pending() == 1
    reply = echo.inbox(host.id)
    assert bytes(memory[reply + 8 : reply + 10]) == echo.invert(b"ok")
