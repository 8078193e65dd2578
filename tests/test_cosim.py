"""The co-simulation bridge: a simulated ivshmem device as a real peer of a domain.

Each test runs ``ivshmem-cosim`` (a child process with the simulator) against
our server, for each device on Icarus (cocotb engine) and on Verilator with both
engines (native and cocotb), so every behaviour is checked on both engines. The
builds are made once per session (and cached across sessions) by
``ivhw.cosim.build``, under a lock shared by the pytest-xdist workers.
"""

from __future__ import annotations

import os
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from qemu_domain import Domain
from support import require_tool

from ivhw.cosim.build import build
from ivhw.cosim.process import CosimProcess
from ivhw.sw import echo
from ivhw.sw.peer import Doorbell, Peer, PeerJoined

VECTORS = 2
SHM_SIZE = 1 << 20
JOIN_TIMEOUT = 60.0
SIMS = [
    pytest.param(
        (sim, engine, device), marks=getattr(pytest.mark, sim), id=f"{sim}-{engine}-{device}"
    )
    for device in ("flat", "pci")
    for sim, engine in (("icarus", "cocotb"), ("verilator", "native"), ("verilator", "cocotb"))
]


@dataclass(frozen=True)
class Target:
    """A simulator, an engine and a device kind to run the bridge with."""

    sim: str
    engine: str
    device: str

    def options(self) -> dict[str, object]:
        """The :class:`CosimProcess` options that select this target."""
        return {"sim": self.sim, "engine": self.engine, "device": self.device}


@pytest.fixture(params=SIMS)
def sim(request: pytest.FixtureRequest) -> Target:
    name, engine, device = request.param
    require_tool("iverilog" if name == "icarus" else "g++")
    build(device, name, vectors=VECTORS, shm_size=SHM_SIZE, engine=engine)
    return Target(name, engine, device)


@pytest.fixture
def domain() -> Iterator[Domain]:
    with Domain(vectors=VECTORS, shm_size=SHM_SIZE) as dom:
        yield dom


def start_device(
    domain: Domain, tmp_path: Path, sim: Target, name: str = "dev", **options: object
) -> CosimProcess:
    """Start a simulated device and wait until the server has admitted it."""
    before = set(domain.server.peer_ids)
    process = CosimProcess(
        domain.socket_path,
        tmp_path,
        name=name,
        **sim.options(),  # type: ignore[arg-type]
        vectors=VECTORS,
        shm_size=SHM_SIZE,
        **options,  # type: ignore[arg-type]
    ).start()
    try:
        wait_for(lambda: set(domain.server.peer_ids) - before, process, "join the server")
    except BaseException:
        process.stop()
        raise
    return process


def wait_for(condition: object, process: CosimProcess, what: str) -> None:
    deadline = time.monotonic() + JOIN_TIMEOUT
    while not condition():  # type: ignore[operator]
        if process.poll() is not None:
            raise AssertionError(
                f"ivshmem-cosim exited before it could {what}:\n{process.output()}"
            )
        if time.monotonic() > deadline:
            raise TimeoutError(f"ivshmem-cosim did not {what}:\n{process.output()}")
        time.sleep(0.02)


def device_id(host: Peer) -> int:
    if not host.peers:
        host.wait(PeerJoined, timeout=JOIN_TIMEOUT)
    return min(host.peers)


def check_echo(
    host: Peer, target: int, payload: bytes, device: CosimProcess | None = None
) -> echo.Reply:
    try:
        reply = echo.request(host, target, payload, timeout=20.0)
    except TimeoutError as error:
        if device is None:
            raise
        raise TimeoutError(f"{error}; the device printed:\n{device.output()}") from None
    assert reply.source == target
    assert reply.payload == echo.invert(payload)
    return reply


def test_host_peer_echo(domain: Domain, tmp_path: Path, sim: Target) -> None:
    device = start_device(domain, tmp_path, sim)
    host = domain.peer()
    target = device_id(host)
    for payload in (b"x", b"hello, hardware", bytes(range(56)), b"\xff" * 13):
        check_echo(host, target, payload, device)
    assert device.stop() == 0, device.output()
    status = device.status()
    assert status["stats"]["doorbells"] == 4
    assert status["stats"]["doorbells_lost"] == 0
    assert "echo device up as peer" in device.output()


def test_requests_of_several_peers_at_once(domain: Domain, tmp_path: Path, sim: Target) -> None:
    device = start_device(domain, tmp_path, sim)
    hosts = [domain.peer() for _ in range(3)]
    target = device_id(hosts[0])
    errors: list[BaseException] = []
    barrier = threading.Barrier(len(hosts))

    def run(host: Peer, index: int) -> None:
        try:
            barrier.wait()
            for n in range(3):
                check_echo(host, target, f"peer {host.id} request {n} {index}".encode(), device)
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=run, args=(h, i)) for i, h in enumerate(hosts)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors, errors
    assert device.stop() == 0, device.output()


def test_coalesced_ring_still_interrupts(domain: Domain, tmp_path: Path, sim: Target) -> None:
    """An eventfd counter above 1 (rings coalesced) is one event and still an interrupt."""
    device = start_device(domain, tmp_path, sim)
    host = domain.peer()
    target = device_id(host)
    check_echo(host, target, b"warm up", device)
    for count in (2, 7):
        payload = b"coalesced %d" % count
        box = echo.outbox(host.id)
        memory = host.memory
        assert memory is not None
        memory[echo.inbox(host.id) + 4 : echo.inbox(host.id) + 8] = bytes(4)
        memory[box : box + 4] = target.to_bytes(4, "little")
        memory[box + 8 : box + 8 + len(payload)] = payload
        memory[box + 4 : box + 8] = len(payload).to_bytes(4, "little")
        # one write of `count` to the eventfd: the device reads a counter of `count`
        os.write(host.eventfds(target)[0], count.to_bytes(8, "little"))
        reply = echo.inbox(host.id)
        while True:  # the doorbell first, then the inbox (echo protocol step 5)
            host.wait(Doorbell, timeout=20.0)
            if int.from_bytes(memory[reply + 4 : reply + 8], "little"):
                break
        assert bytes(memory[reply + 8 : reply + 8 + len(payload)]) == echo.invert(payload)
    assert device.stop() == 0, device.output()
    assert device.status()["stats"]["coalesced"] == (2 - 1) + (7 - 1)


def test_two_simulated_devices_echo_and_ping(domain: Domain, tmp_path: Path, sim: Target) -> None:
    echo_device = start_device(domain, tmp_path, sim, name="echo")
    echo_id = domain.server.peer_ids[-1]
    # not start_device: the pinger may be done and gone before the server is looked at
    pinger = CosimProcess(
        domain.socket_path, tmp_path, name="ping", **sim.options(),  # type: ignore[arg-type]
        vectors=VECTORS, shm_size=SHM_SIZE, guest="ping",
        guest_args={"target": echo_id, "count": 5, "size": 24},
    ).start()  # fmt: skip
    try:
        assert pinger.wait(120) == 0, pinger.output()
    finally:
        pinger.stop()
    output = pinger.output()
    assert re.search(r"ping: 5/5 replies, rtt us min \d+ median \d+", output), output
    assert echo_device.stop() == 0, echo_device.output()
    assert echo_device.status()["stats"]["doorbells"] == 5


def test_bad_arguments_one_line(tmp_path: Path) -> None:
    from ivhw.cosim.cli import main

    assert main(["--socket", str(tmp_path / "nothing.sock")]) == 2
    (tmp_path / "fake.sock").touch()
    native_on_icarus = ["--sim", "icarus", "--engine", "native"]
    assert main(["--socket", str(tmp_path / "fake.sock"), *native_on_icarus]) == 2
    with pytest.raises(SystemExit) as exit_info:
        main(["--socket", "x", "--vectors", "99"])
    assert exit_info.value.code == 2


GUEST_MODULE = '''
async def hello(g):
    """Write through the device's shared-memory window, then ring the host on vector 1."""
    host = int(g.args["host"])
    await g.shm_write(0x201, b"from the simulated CPU")  # unaligned: byte enables
    await g.shm_write32(0x220, g.id)
    assert await g.shm_read(0x201, 22) == b"from the simulated CPU"
    assert await g.read("IVPOSITION") == g.id
    await g.ring(host, 1)
    g.log(f"rang peer {host}")
    assert await g.wait_irq(10) >= 1  # the host rings back
    g.log("got the interrupt")
'''


def test_user_guest_module(
    domain: Domain, tmp_path: Path, sim: Target, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "my_guest.py").write_text(GUEST_MODULE)
    monkeypatch.setenv("PYTHONPATH", str(tmp_path) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    host = domain.peer()
    memory = host.memory
    assert memory is not None
    memory[0x200:0x240] = b"\xee" * 0x40
    device = start_device(
        domain, tmp_path, sim, guest="my_guest:hello", guest_args={"host": host.id}
    )
    event = host.wait(Doorbell, timeout=JOIN_TIMEOUT)
    assert event.vector == 1  # type: ignore[union-attr]
    assert bytes(memory[0x200:0x218]) == b"\xee" + b"from the simulated CPU" + b"\xee"
    dev_id = int.from_bytes(memory[0x220:0x224], "little")
    assert dev_id in host.peers or host.poll(0.1) is not None
    host.ring(dev_id, 0)
    assert device.wait(60) == 0, device.output()
    assert "got the interrupt" in device.output()


def _cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_waiting_bridge_sleeps(domain: Domain, tmp_path: Path, sim: Target) -> None:
    """No busy-spin: a bridge whose guest waits for an interrupt uses (almost) no CPU."""
    device = start_device(domain, tmp_path, sim)
    host = domain.peer()
    target = device_id(host)
    check_echo(host, target, b"wake up once", device)
    time.sleep(0.3)
    pids = (device.pid, device.simulator_pid())
    before, start = sum(map(_cpu_seconds, pids)), time.monotonic()
    time.sleep(2.0)
    used = (sum(map(_cpu_seconds, pids)) - before) / (time.monotonic() - start)
    assert used < 0.05, f"the waiting bridge used {used:.1%} of a core"
    check_echo(host, target, b"and still answers", device)
    assert device.stop() == 0, device.output()
