"""The revision 2 endpoint as a peer of a real ``ivshmem2-server`` (``ivshmem-cosim --revision 2``).

Each test runs ``ivshmem-cosim --device pci --revision 2`` against our revision 2
server on Icarus (cocotb engine) and on Verilator with both engines, with the
``final`` layout and MSI-X; the echo test also runs the ``rfc`` layout with INTx.
Host peers are the peer library's. Checked: echo round trips byte for byte (the
built-in ``echo2`` guest against ``ivhw.sw.echo2.request2``), state changes both
ways (State Table entries and vector 0), a host peer leaving (PEER_GONE: the
device's vector 0, its peer table, a doorbell to it dropped), write protection
of the State Table and of another peer's output section against the server's
real memory, and the bad-input paths.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from support import require_tool, wait_for
from test_cosim_cli import _cosim, _one_error

from ivhw.cosim.build import Revision2, build
from ivhw.cosim.process import CosimProcess
from ivhw.cosim.session import STATUS_JOIN_FAILED
from ivhw.sw import echo2
from ivhw.sw.peer import Doorbell, Peer, PeerJoined
from ivhw.sw.server import IvshmemServer
from ivhw.sw.server2 import Ivshmem2Server

VECTORS = 2
SHM_SIZE = 1 << 16
MAX_PEERS = 4
OUTPUT = 4096
TIMEOUT = 60.0
_TARGETS = (("icarus", "cocotb"), ("verilator", "native"), ("verilator", "cocotb"))


@dataclass(frozen=True)
class Target:
    sim: str
    engine: str
    layout: str = "final"
    interrupts: str = "msix"

    def options(self) -> dict[str, object]:
        return {
            "sim": self.sim, "engine": self.engine, "device": "pci", "revision": 2,
            "layout": self.layout, "interrupts": self.interrupts, "vectors": None,
        }  # fmt: skip


def _params(layouts: tuple[tuple[str, str], ...]) -> list[object]:
    return [
        pytest.param(
            Target(sim, engine, layout, interrupts),
            marks=getattr(pytest.mark, sim),
            id=f"{sim}-{engine}-{layout}-{interrupts}",
        )
        for layout, interrupts in layouts
        for sim, engine in _TARGETS
    ]


def _prepare(target: Target) -> Target:
    require_tool("iverilog" if target.sim == "icarus" else "g++")
    revision2 = Revision2(target.layout, target.interrupts, MAX_PEERS, OUTPUT)
    build("pci", target.sim, vectors=VECTORS, shm_size=SHM_SIZE, engine=target.engine,
          revision2=revision2)  # fmt: skip
    return target


@pytest.fixture(params=_params((("final", "msix"),)))
def sim(request: pytest.FixtureRequest) -> Target:
    return _prepare(request.param)


@pytest.fixture(params=_params((("final", "msix"), ("rfc", "intx"))))
def any_sim(request: pytest.FixtureRequest) -> Target:
    return _prepare(request.param)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Ivshmem2Server]:
    import tempfile

    directory = tempfile.mkdtemp(prefix="ivhw-r2-")  # AF_UNIX paths are short
    server = Ivshmem2Server(
        os.path.join(directory, "s"), shm_size=SHM_SIZE, output_section_size=OUTPUT,
        max_peers=MAX_PEERS, vectors=VECTORS,
    )  # fmt: skip
    server.serve_in_background()
    yield server
    server.stop()
    os.rmdir(directory)


def _start(
    server: Ivshmem2Server, tmp_path: Path, target: Target, **options: object
) -> CosimProcess:
    before = set(server.peer_ids)
    process = CosimProcess(
        server.socket_path,
        tmp_path,
        **target.options(),
        **options,  # type: ignore[arg-type]
    ).start()
    deadline = time.monotonic() + TIMEOUT
    while not set(server.peer_ids) - before:
        if process.poll() is not None or time.monotonic() > deadline:
            process.stop()
            raise AssertionError(f"the device did not join:\n{process.output()}")
        time.sleep(0.02)
    return process


def _device(host: Peer, process: CosimProcess) -> int:
    """The device's peer ID, once its State Table entry is READY (the echo2 guest runs)."""
    deadline = time.monotonic() + TIMEOUT
    while True:
        ready = [p for p in host.peers if host.state_of(p) == echo2.READY]
        if ready:
            return ready[0]
        if process.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(f"no READY echo2 device:\n{process.output()}")
        host.poll(0.05)


def test_echo_round_trips_from_two_host_peers(
    server: Ivshmem2Server, tmp_path: Path, any_sim: Target
) -> None:
    a, b = Peer(server.socket_path), Peer(server.socket_path)
    try:
        device = _start(server, tmp_path, any_sim)
        target = _device(a, device)
        assert _device(b, device) == target
        errors: list[BaseException] = []

        def run(host: Peer, tag: int) -> None:
            try:
                for n in range(4):
                    payload = bytes([tag, n]) + bytes(
                        (tag * 7 + n + i) & 0xFF for i in range(n * 17)
                    )
                    reply = echo2.request2(host, target, payload, timeout=30)
                    assert reply.source == target
                    assert reply.payload == echo2.invert(payload)
                    # the request in the host's own output section, the reply in the device's
                    slot = echo2.slot(target)
                    assert bytes(host.output[slot + 8 : slot + 8 + len(payload)]) == payload
                    back = host.output_of(target)[echo2.slot(host.id) :]
                    assert int.from_bytes(back[4:8], "little") == len(payload)
                    assert bytes(back[8 : 8 + len(payload)]) == echo2.invert(payload)
            except BaseException as error:
                errors.append(error)

        threads = [threading.Thread(target=run, args=(h, t)) for t, h in ((1, a), (2, b))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
        assert not errors, f"{errors}\n{device.output()}"
        assert device.stop() == 0, device.output()
        stats = device.status()["stats"]
        # 8 replies, plus the READY broadcast to both hosts
        assert stats["doorbells"] == 8 + 2, stats
        assert stats["doorbells_lost"] == 0
        assert "echo2 device up as peer" in device.output()
        assert "[bridge] PCI endpoint enumerated" in device.output()
    finally:
        a.close()
        b.close()


SCENARIO = '''
async def scenario(g):
    """State both ways, a host leaving, write protection: every step logged."""
    a, b = int(g.args["a"]), int(g.args["b"])
    assert g.revision == 2 and await g.read("MaxPeers") == g.sections.max_peers
    # read-only to the device: the State Table, another peer's output section
    await g.state_table.write32(4 * a, 0xDEADBEEF)
    await g.output_of(a).write(0, b"not yours")
    await g.shm_write(4 * b, b"\\x55\\x55")  # through the whole window too
    await g.output.write(0x100, b"own output")
    await g.rw.write(0x10, b"rw section")
    assert await g.rw.read(0x10, 10) == b"rw section"
    assert await g.output_of(a).read(0x200, 4) == b"host"  # reads are allowed
    g.log(f"entry of {a} reads {await g.state_of(a):#x}")
    await g.set_state(7)
    assert await g.state() == 7 and await g.state_of(g.id) == 7
    g.log("state 7")
    value = await g.wait_state(a, lambda s: s == 5, 30)
    g.log(f"peer {a} state {value}")
    while b in g.peers():
        assert await g.wait_irq(30), "no interrupt for the departure"
    g.log(f"peer {b} gone, entry {await g.state_of(b)}")
    await g.ring(b, 1)  # gone: the device drops it
    await g.set_state(9)
    g.log("state 9")
    # stay until the host has read it: leaving zeroes the entry (PEER_GONE)
    await g.wait_state(a, lambda s: s == 11, 30)
'''


def test_state_peer_gone_and_write_protection(
    server: Ivshmem2Server, tmp_path: Path, sim: Target, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "rev2_guest.py").write_text(SCENARIO)
    monkeypatch.setenv("PYTHONPATH", str(tmp_path) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    a, b = Peer(server.socket_path), Peer(server.socket_path)
    try:
        a.output[0x200:0x204] = b"host"
        b.state = 3
        assert a.wait(Doorbell, timeout=TIMEOUT) == Doorbell(0, 1)  # b's state change
        device = _start(server, tmp_path, sim, guest="rev2_guest:scenario",
                        guest_args={"a": a.id, "b": b.id})  # fmt: skip
        while len(a.peers) < 2:
            a.wait(PeerJoined, timeout=TIMEOUT)
        (dev,) = set(a.peers) - {b.id}
        # the device's state change: its State Table entry, and vector 0 here
        event = a.wait(Doorbell, timeout=TIMEOUT)
        assert event == Doorbell(0, 1), event
        assert a.state_of(dev) == 7
        # nothing the device must not write was written, in the server's real memory
        assert a.state_of(a.id) == 0 and a.state_of(b.id) == 3
        assert bytes(a.output[0:9]) == bytes(9)
        assert bytes(a.output_of(dev)[0x100:0x10A]) == b"own output"
        assert bytes(a.rw[0x10:0x1A]) == b"rw section"
        a.state = 5
        b.close()
        event = a.wait(Doorbell, timeout=TIMEOUT)
        assert event == Doorbell(0, 1), event
        assert a.state_of(dev) == 9
        a.state = 11  # read: the device may leave
        assert device.wait(TIMEOUT) == 0, device.output()
    finally:
        a.close()
        b.close()
    out = device.output()
    assert f"entry of {a.id} reads 0x0" in out, out
    assert f"peer {a.id} state 5" in out, out
    assert f"peer {b.id} gone, entry 0" in out, out
    stats = device.status()["stats"]
    # state 7 to a and b, state 9 to a; the ring to the departed b never left the device
    assert stats["doorbells"] == 3, stats
    assert stats["events_by_vector"].get("0", 0) >= 2, stats  # a's state, b's departure
    # the defined response to the writes the device refused: dropped and counted, one per
    # word (the State Table entry, a's output section: 3 words, b's entry)
    assert stats["device"]["protected_writes"] == 1 + 3 + 1, stats
    assert stats["device"]["doorbell_bad_peer"] == 1, stats  # the ring to the departed b


# -- bad input ---------------------------------------------------------------------------------

_REV2 = ["--device", "pci", "--revision", "2"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--layout", "final"], "--layout is an option of the revision 2 device: add --revision 2"),
        (["--interrupts", "intx"], "--interrupts is an option of the revision 2 device"),
        (["--revision", "2", "--device", "flat"], "is a PCI function: use --device pci"),
        (["--revision", "2", "--device", "soc"], "--revision 2 is a PCI function"),
        ([*_REV2, "--layout", "jailhouse"], "invalid choice: 'jailhouse'"),
        (["--device", "pci", "--revision", "3"], "invalid choice: 3"),
        ([*_REV2, "--guest", "echo"], "the built-in guest echo speaks the revision 1 echo "
         "protocol, the device is revision 2: use echo2"),
        (["--device", "pci", "--guest", "echo2"], "the built-in guest echo2 speaks the revision 2"),
    ],
)  # fmt: skip
def test_bad_revision_options_one_line_status_2(
    tmp_path: Path, args: list[str], message: str
) -> None:
    (tmp_path / "s").touch()
    result = _cosim("--socket", str(tmp_path / "s"), *args)
    assert result.returncode == 2
    assert message in _one_error(result)


def test_revision_of_the_server_must_match(tmp_path: Path, server: Ivshmem2Server) -> None:
    result = _cosim("--socket", server.socket_path, "--device", "pci", "--build-dir", str(tmp_path))
    assert result.returncode == STATUS_JOIN_FAILED
    assert "speaks protocol revision 2 (its first message is an INIT), not 1" in _one_error(result)
    rev1 = IvshmemServer(str(tmp_path / "r1.sock"), shm_size=SHM_SIZE, vectors=1)
    rev1.serve_in_background()
    try:
        result = _cosim("--socket", str(tmp_path / "r1.sock"), "--device", "pci",
                        "--revision", "2", "--build-dir", str(tmp_path))  # fmt: skip
    finally:
        rev1.stop()
    assert result.returncode == STATUS_JOIN_FAILED
    assert "this is a revision 1 server: connect to an ivshmem2-server" in _one_error(result)
    result = _cosim("--socket", server.socket_path, "--device", "pci", "--revision", "2",
                    "--vectors", "3", "--build-dir", str(tmp_path))  # fmt: skip
    assert result.returncode == STATUS_JOIN_FAILED
    assert "gives every peer 2 vectors, fewer than --vectors 3" in _one_error(result)
    assert not any(tmp_path.glob("pci-*"))  # nothing was built
    wait_for(lambda: server.peer_ids == [])  # each look at the server left again


@pytest.mark.verilator
def test_demo_revision_2_runs_clean() -> None:
    """``make demo DEMO_ARGS="--revision 2"``: two host peers and the simulated endpoint."""
    require_tool("g++")
    result = subprocess.run(
        [sys.executable, "-m", "ivhw.cosim.demo", "--revision", "2"],
        capture_output=True, text=True, timeout=280, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    assert "WRONG" not in out and "Traceback" not in out + result.stderr
    found = re.search(r"the simulated device is peer (\d+), READY", out)
    assert found, out
    device = found.group(1)
    # the device's READY, seen in the State Table by both hosts
    assert out.count(f"State Table: peer {device} 0 -> 1 (READY)") == 2, out
    # 3 requests of each host and one more of A after B left, each verified
    assert out.count("(every byte XOR 0xFF: ok)") == 7, out
    assert re.search(r"\[bridge\] peer \d+ left", out), out
    assert "(PEER_GONE)" in out and re.search(r"State Table: peer \d+ 1 -> 0", out), out
    assert "simulated device stopped (status 0)" in out
    assert "socket file removed: True; shared memory removed: True" in out
