"""A real QEMU 7.2 ivshmem-doorbell VM and the simulated echo device in one domain.

QEMU (driven through qtest) writes its requests into BAR2 shared memory, rings the
simulated device through its Doorbell register and gets the reply as MSI-X.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from qemu_domain import Domain
from support import require_tool
from test_cosim import Target, check_echo, device_id, domain, sim, start_device

from ivhw.cosim.demo import qemu_echo_request
from ivhw.cosim.process import CosimProcess
from ivhw.sw import echo
from ivhw.sw.peer import PeerJoined

__all__ = ["domain", "sim"]  # fixtures used here

pytestmark = pytest.mark.qemu


def echo_qemu_and_host(domain: Domain, device: CosimProcess) -> int:
    """A QEMU VM and a host peer each send the echo device three requests; its peer ID."""
    host = domain.peer()
    target = device_id(host)
    vm = domain.qemu()
    host.wait(PeerJoined, timeout=10)
    for payload in (b"from QEMU", bytes(range(56)), b"z"):
        reply = qemu_echo_request(vm, target, payload)
        assert reply.source == target
        assert reply.payload == echo.invert(payload)
        # the host peer is served in between, by the same simulated hardware
        check_echo(host, target, payload[::-1], device)
    return target


def test_qemu_peer_echo(domain: Domain, tmp_path: Path, sim: Target) -> None:
    require_tool("qemu-system-x86_64")
    device = start_device(domain, tmp_path, sim)
    echo_qemu_and_host(domain, device)
    assert device.stop() == 0, device.output()
    assert device.status()["stats"]["doorbells"] == 6


@pytest.mark.verilator
def test_demo_runs_clean(tmp_path: Path) -> None:
    """``make demo``: a booted Linux guest, the host and the simulated ping, all verified."""
    require_tool("qemu-system-x86_64")
    waves = tmp_path / "demo.vcd"
    out = _demo("--waves", str(waves))
    assert re.search(r"\[ linux\] ivhw-guest: Linux version 6\.", out), out
    found = re.search(r"the simulated device is peer (\d+)", out)
    assert found, out
    device = found.group(1)
    # the guest's own verified replies from the simulated device, with its clock's rtt
    replies = re.findall(rf"\[ linux\] reply \d <- peer {device} \(MSI-X 0\): .* ok rtt_us", out)
    assert len(replies) == 3, out
    assert f"[ linux] peer {device}: 3 of 3 replies verified" in out
    assert re.search(r"\[  ping\] ping: 5/5 replies, rtt us min \d+", out), out
    assert out.count("(every byte XOR 0xFF: ok)") == 3 + 1, out  # host: device x3, the VM
    assert "the Linux guest verified 3 of 3 replies and powered off" in out
    assert waves.stat().st_size > 0


@pytest.mark.verilator
def test_demo_qtest_runs_clean() -> None:
    require_tool("qemu-system-x86_64")
    out = _demo("--vm", "qtest")
    assert out.count("(every byte XOR 0xFF: ok)") == 6, out


def _demo(*args: str) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "ivhw.cosim.demo", *args],
        capture_output=True,
        text=True,
        timeout=280,  # under pytest-timeout's 300 s: a first run builds the device
    )
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    assert "WRONG" not in out
    assert "socket file removed: True" in out
    return out
