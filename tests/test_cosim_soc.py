"""The SoC tile (sentinel-cpu + C firmware + ivshmem-flat) as a peer of a real domain.

``ivshmem-cosim --device soc`` runs the tile on Icarus and on Verilator with both
engines (native: no Python at all while it simulates); its firmware,
not a Python guest, drives the device. The echo firmware answers a host peer and a
QEMU 7.2 VM; the ping firmware finds a host echo peer and prints its round trips,
which the test checks byte for byte from the console lines in the bridge's status.
"""

from __future__ import annotations

import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from qemu_domain import Domain
from support import require_tool, serve_in_thread
from test_cosim import SHM_SIZE, VECTORS, Target, domain, start_device
from test_cosim_qemu import echo_qemu_and_host

from ivhw.cosim.build import build, build_root, soc_image
from ivhw.sw import echo

__all__ = ["domain"]  # fixtures used here

SIMS = [
    pytest.param(("icarus", "cocotb"), marks=pytest.mark.icarus, id="icarus-cocotb"),
    pytest.param(("verilator", "native"), marks=pytest.mark.verilator, id="verilator-native"),
    pytest.param(("verilator", "cocotb"), marks=pytest.mark.verilator, id="verilator-cocotb"),
]
PINGS = 3
PING_OPTIONS = {"ping_count": PINGS, "ping_gap": 200}
_PING_LINE = re.compile(r"ping seq=(\d+) peer=(\d+) rtt=(\d+) cycles reply=([0-9a-f]+) (ok|BAD)")


def _prebuild(target: tuple[str, str], firmware: str, options: dict[str, int]) -> None:
    """Build as the CLI will, so the device joins within the tests' join timeout."""
    sim, engine = target
    require_tool("riscv64-unknown-elf-gcc")
    require_tool("iverilog" if sim == "icarus" else "g++")
    pairs = [(key, str(value)) for key, value in options.items()]
    image = soc_image(firmware, SHM_SIZE, pairs, build_root() / "firmware")
    build("soc", sim, vectors=VECTORS, shm_size=SHM_SIZE, firmware=image, engine=engine)


@pytest.fixture(params=SIMS)
def soc(request: pytest.FixtureRequest) -> Target:
    _prebuild(request.param, "echo", {})
    return Target(*request.param, "soc")


def test_echo_firmware_answers_host_and_qemu(domain: Domain, tmp_path: Path, soc: Target) -> None:
    require_tool("qemu-system-x86_64")
    device = start_device(domain, tmp_path, soc, firmware="echo")
    target = echo_qemu_and_host(domain, device)
    assert device.stop() == 0, device.output()
    status = device.status()
    assert status["stats"]["doorbells"] == 6
    assert status["stats"]["doorbells_lost"] == 0
    assert f"echo: peer {target} serving requesters 0..15" in status["stats"]["console"]
    assert f"[soc] echo: peer {target}" in device.output()  # the console is in the transcript


@pytest.mark.parametrize("sim", SIMS)
def test_ping_firmware_measures_round_trips(
    domain: Domain, tmp_path: Path, sim: tuple[str, str]
) -> None:
    _prebuild(sim, "ping", PING_OPTIONS)
    responder = echo.EchoResponder(domain.peer())
    stop = threading.Event()
    thread = serve_in_thread(responder, stop)
    try:
        device = start_device(
            domain, tmp_path, Target(*sim, "soc"), firmware="ping", guest_args=PING_OPTIONS
        )
        deadline = time.monotonic() + 90
        while "ping: done" not in device.output():
            assert device.poll() is None, device.output()
            assert time.monotonic() < deadline, device.output()
            time.sleep(0.1)
        assert device.stop() == 0, device.output()
    finally:
        # stopped before the domain closes the responder's peer under it
        stop.set()
        thread.join()
    console = device.status()["stats"]["console"]
    pings = [m for m in map(_PING_LINE.fullmatch, console) if m]
    assert [int(m[1]) for m in pings] == list(range(1, PINGS + 1)), console
    for match in pings:
        seq, peer, rtt, reply, verdict = match.groups()
        assert int(peer) == responder.peer.id
        assert 0 < int(rtt) < 1_000_000
        expected = echo.invert(b"ping" + int(seq).to_bytes(4, "little"))
        assert bytes.fromhex(reply) == expected, console
        assert verdict == "ok"
    assert f"ping: {PINGS} sent, {PINGS} answered" in console[-2], console
    assert responder.served == PINGS + 1  # and the probe that found the echo peer


@pytest.mark.qemu
@pytest.mark.verilator
def test_demo_with_the_soc_tile(tmp_path: Path) -> None:
    """``make demo DEMO_ARGS="--device soc"``: the C echo firmware answers QEMU and the host."""
    require_tool("qemu-system-x86_64")
    _prebuild(("verilator", "native"), "echo", {})
    result = subprocess.run(
        [sys.executable, "-m", "ivhw.cosim.demo", "--device", "soc", "--vm", "qtest"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    assert out.count("(every byte XOR 0xFF: ok)") == 6, out
    assert "WRONG" not in out
    assert "[soc] echo: peer" in out  # the firmware's console in the transcript
    assert "socket file removed: True" in out
