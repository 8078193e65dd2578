"""A real QEMU 7.2 ivshmem-doorbell VM and the simulated echo device in one domain.

QEMU (driven through qtest) writes its requests into BAR2 shared memory, rings the
simulated device through its Doorbell register and gets the reply as MSI-X.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from qemu_domain import Domain
from support import require_tool
from test_cosim import Target, check_echo, device_id, domain, sim, start_device

from ivhw.cosim.demo import qemu_echo_request
from ivhw.sw import echo
from ivhw.sw.peer import PeerJoined

__all__ = ["domain", "sim"]  # fixtures used here

pytestmark = pytest.mark.qemu


def test_qemu_peer_echo(domain: Domain, tmp_path: Path, sim: Target) -> None:
    require_tool("qemu-system-x86_64")
    device = start_device(domain, tmp_path, sim)
    host = domain.peer()
    target = device_id(host)
    vm = domain.qemu()
    host.wait(PeerJoined, timeout=10)
    for payload in (b"from QEMU", bytes(range(56)), b"z"):
        reply = qemu_echo_request(vm, target, payload)
        assert reply.source == target
        assert reply.payload == echo.invert(payload)
        # the host peer is served in between, by the same simulated hardware
        check_echo(host, target, payload[::-1])
    assert device.stop() == 0, device.output()
    assert device.status()["stats"]["doorbells"] == 6


@pytest.mark.verilator
def test_demo_runs_clean(tmp_path: Path) -> None:
    require_tool("qemu-system-x86_64")
    waves = tmp_path / "demo.vcd"
    result = subprocess.run(
        [sys.executable, "-m", "ivhw.cosim.demo", "--waves", str(waves)],
        capture_output=True,
        text=True,
        timeout=240,
    )
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    assert out.count("(every byte XOR 0xFF: ok)") == 6, out
    assert "WRONG" not in out
    assert "socket file removed: True" in out
    assert waves.stat().st_size > 0
