"""What both co-simulation engines share: configuration, guests, joining, outcome.

The CLI (``ivhw.cosim.cli``) starts one engine in a child process with its
parameters in ``IVHW_COSIM_*`` environment variables: the cocotb engine
(``ivhw.cosim.bridge``, a cocotb test on Icarus or Verilator) or the native one
(``ivhw.cosim.native``, Verilator with the clock and the transport in C++). Both
read :class:`BridgeConfig`, join through :func:`join`, load the guest with
:func:`load_guest`, play the PCI firmware with the same
:func:`ivhw.cosim.pci.enumerate_endpoint`, print the same transcript lines and
leave the outcome and their statistics in the status file (:func:`write_status`)
in the same form, so the CLI, the tests and the benchmarks cannot tell them apart
except by speed.
"""

from __future__ import annotations

import importlib
import json
import mmap
import os
import socket
from dataclasses import dataclass, field
from typing import Any

from ..sw.memmap import MemoryMap, flat_memory_map, pci2_memory_map, pci_memory_map
from ..sw.peer import Peer, PeerJoined, PeerLeft, ProtocolError
from ..sw.protocol import recv_message
from ..sw.regmap import RegisterMap
from ..sw.sections import Layout
from .build import Revision2
from .guest_api import GuestFunction
from .pci import PciLayout

__all__ = [
    "STATUS_FAILED",
    "STATUS_JOIN_FAILED",
    "STATUS_OK",
    "STATUS_SERVER_GONE",
    "BridgeConfig",
    "Stop",
    "announce",
    "announce_membership",
    "announce_pci",
    "device_memory",
    "guest_windows",
    "join",
    "load_guest",
    "sections_of",
    "server_gone",
    "write_status",
]

STATUS_OK = 0
STATUS_FAILED = 1
STATUS_SERVER_GONE = 3
STATUS_JOIN_FAILED = 4


@dataclass
class BridgeConfig:
    """What the CLI passes through the environment (``IVHW_COSIM_*``)."""

    socket: str
    device: str = "flat"
    vectors: int = 1
    shm_size: int = 4 << 20
    guest: str = "echo"
    guest_args: dict[str, str] = field(default_factory=dict)
    status_file: str | None = None
    poll_cycles: int = 8
    seconds: float | None = None
    msi_stall: int = 0  # test hook: cycles the msi sink holds ready low per message (PCI)
    waves: str | None = None  # native engine: VCD file (cocotb's runner handles its own)
    library: str | None = None  # native engine: the built shared library
    #: where the CLI hands over its connection to the server (one connection, one join)
    handoff: str | None = None
    #: the revision 2 PCI endpoint's parameters (``None``: revision 1)
    revision2: Revision2 | None = None

    @property
    def revision(self) -> int:
        """The protocol revision the device speaks."""
        return 1 if self.revision2 is None else 2

    @classmethod
    def from_env(cls) -> BridgeConfig:
        """Read the configuration the CLI left in the environment."""
        env = os.environ
        seconds = env.get("IVHW_COSIM_SECONDS")
        revision2 = None
        if env.get("IVHW_COSIM_REVISION2"):
            revision2 = Revision2(**json.loads(env["IVHW_COSIM_REVISION2"]))
        return cls(
            socket=env["IVHW_COSIM_SOCKET"],
            device=env.get("IVHW_COSIM_DEVICE", "flat"),
            vectors=int(env.get("IVHW_COSIM_VECTORS", "1")),
            shm_size=int(env.get("IVHW_COSIM_SHM_SIZE", str(4 << 20))),
            guest=env.get("IVHW_COSIM_GUEST", "echo"),
            guest_args=json.loads(env.get("IVHW_COSIM_GUEST_ARGS", "{}")),
            status_file=env.get("IVHW_COSIM_STATUS"),
            poll_cycles=max(1, int(env.get("IVHW_COSIM_POLL_CYCLES", "8"))),
            seconds=float(seconds) if seconds else None,
            msi_stall=max(0, int(env.get("IVHW_COSIM_MSI_STALL") or "0")),
            waves=env.get("IVHW_COSIM_WAVES") or None,
            library=env.get("IVHW_COSIM_LIBRARY") or None,
            handoff=env.get("IVHW_COSIM_HANDOFF") or None,
            revision2=revision2,
        )


class Stop(Exception):
    """The run ends; ``status`` and ``message`` say how."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def server_gone() -> Stop:
    """The outcome when the server closes the connection."""
    return Stop(
        STATUS_SERVER_GONE, "the ivshmem server closed the connection; the simulated device leaves"
    )


def load_guest(name: str, revision: int = 1) -> GuestFunction | None:
    """The guest ``name``: a built-in (``echo``, ``ping``; ``echo2`` on revision 2),
    ``none``, or ``module:function``."""
    if name == "none":
        return None
    if ":" not in name:
        from . import builtin_guests

        function = builtin_guests.BUILTINS.get(name)
        if function is None:
            raise ValueError(
                f"no built-in guest {name!r}; choose from {', '.join(builtin_guests.BUILTINS)}, "
                "none, or give module:function"
            )
        speaks = builtin_guests.REVISIONS[name]
        if speaks != revision:
            others = [n for n, r in builtin_guests.REVISIONS.items() if r == revision]
            raise ValueError(
                f"the built-in guest {name} speaks the revision {speaks} echo protocol, the "
                f"device is revision {revision}: use {' or '.join(others)}"
            )
        return function
    module_name, _, attr = name.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise ValueError(f"cannot import guest module {module_name!r}: {error}") from None
    function = getattr(module, attr, None)
    if not callable(function):
        raise ValueError(f"guest module {module_name!r} has no function {attr!r}")
    return function  # type: ignore[no-any-return]


def _take_over(path: str) -> socket.socket:
    """The server connection the CLI opened (and peeked at), received over ``path``."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as link:
        link.settimeout(10.0)
        link.connect(path)
        message = recv_message(link)
    if message is None or len(message[1]) != 1:
        for fd in message[1] if message else []:
            os.close(fd)
        raise OSError("ivshmem-cosim handed over no connection")
    return socket.socket(fileno=message[1][0])


def join(config: BridgeConfig) -> Peer:
    """Join the server as the device's peer; :class:`Stop` if that fails or sizes differ."""
    try:
        sock = _take_over(config.handoff) if config.handoff else None
        peer = Peer(
            config.socket, vectors=config.vectors, timeout=10.0, sock=sock,
            revision=config.revision,
        )  # fmt: skip
    except (OSError, TimeoutError, ProtocolError) as error:
        raise Stop(
            STATUS_JOIN_FAILED, f"cannot join the ivshmem server at {config.socket}: {error}"
        ) from None
    problem = None
    if peer.shm_size != config.shm_size:
        problem = (
            f"the server's shared memory is {peer.shm_size} bytes but the device was built for "
            f"{config.shm_size}; rerun with --shm-size {peer.shm_size}"
        )
    elif config.revision2 is not None:
        built = config.revision2
        have = (peer.max_peers, peer.output_section_size, peer.protocol)
        want = (built.max_peers, built.output_section_size, built.protocol)
        if have != want:
            problem = (
                "the server's max peers, output section size and protocol are "
                f"{have[0]}, {have[1]}, {have[2]:#x}, but the device was built for "
                f"{want[0]}, {want[1]}, {want[2]:#x} (restarted meanwhile?); run again"
            )
    if problem is not None:
        peer.close()
        raise Stop(STATUS_JOIN_FAILED, problem)
    return peer


def device_memory(peer: Peer) -> tuple[memoryview, mmap.mmap | None]:
    """The device's view of the whole shared memory, writable: (view, mapping to close).

    Revision 1: the peer's own mapping. Revision 2: the peer library maps the read-only
    sections read-only, but the device's memory port reaches all of it (the endpoint's
    BAR2 window enforces the sections itself, as the hardware does), so the device gets
    a writable mapping of its own.
    """
    if peer.revision == 1:
        assert peer.memory is not None
        return peer.memory, None
    mapping = mmap.mmap(peer.shm_fd, peer.shm_size, mmap.MAP_SHARED)
    return memoryview(mapping), mapping


def guest_windows(
    shm_size: int, layout: PciLayout | None = None, revision2: Revision2 | None = None
) -> tuple[RegisterMap, int, int, MemoryMap]:
    """(registers, their bus address, the shared memory's, the whole map) for the guest.

    ivshmem-flat: its bus's memory map (:func:`ivhw.sw.memmap.flat_memory_map`); the PCI
    endpoint (``layout``: where the firmware put its BARs): its BAR map, placed; the
    revision 2 endpoint's BAR2 holds the sections' windows (``state_table``, ``rw``,
    ``outputs``).
    """
    memory_map: MemoryMap
    if layout is None:
        memory_map = flat_memory_map(shm_size)
    else:
        bases = {0: layout.bar0, 1: layout.bar1, 2: layout.bar2}
        if revision2 is None:
            bars = pci_memory_map(msix=layout.vectors > 0, vectors=max(layout.vectors, 1),
                                  shm_size=shm_size)  # fmt: skip
        else:
            bars = pci2_memory_map(
                layout=revision2.layout, msix=revision2.interrupts == "msix",
                vectors=max(layout.vectors, 1), sections=sections_of(shm_size, revision2),
            )  # fmt: skip
        memory_map = bars.placed({index: bases[index] for index in bars.bars})
    regs = memory_map["regs"]
    assert regs.regs is not None
    shm = memory_map["state_table" if revision2 is not None and layout else "shm"]
    return regs.regs, regs.base, shm.base, memory_map


def sections_of(shm_size: int, revision2: Revision2) -> Layout:
    """The revision 2 shared-memory layout the device was built for."""
    return Layout(shm_size, revision2.max_peers, revision2.output_section_size)


def announce(peer: Peer, guest: str) -> None:
    """The transcript's first line: who the device is in the domain."""
    extra = ""
    if peer.revision == 2:
        extra = (
            f" (revision 2: max {peer.max_peers} peers, output sections of "
            f"{peer.output_section_size // 1024} KiB, protocol {peer.protocol:#x})"
        )
    print(
        f"[bridge] peer {peer.id} with {peer.vectors} vectors, "
        f"{peer.shm_size // 1024} KiB shared memory{extra}; peers: "
        f"{sorted(peer.peers) or 'none'}; guest {guest}",
        flush=True,
    )


def announce_pci(layout: PciLayout) -> None:
    """The transcript line after the firmware enumerated the PCI endpoint."""
    if layout.revision2 is None:
        irq = f"MSI-X {layout.vectors} vectors enabled"
    else:
        irq = f"MSI-X {layout.vectors} vectors" if layout.vectors else "INTx"
        irq = f"{layout.revision2.layout} layout, {irq}, interrupts enabled"
    bar1 = f"BAR1 {layout.bar1:#x}, " if layout.vectors else ""
    print(
        f"[bridge] PCI endpoint enumerated: BAR0 {layout.bar0:#x}, {bar1}"
        f"BAR2 {layout.bar2:#x} ({layout.shm_size // 1024} KiB), {irq}",
        flush=True,
    )


def announce_membership(event: object) -> None:
    """A transcript line for a peer joining or leaving."""
    if isinstance(event, PeerJoined | PeerLeft):
        what = "joined" if isinstance(event, PeerJoined) else "left"
        print(f"[bridge] peer {event.peer} {what}", flush=True)


def write_status(
    path: str | None,
    status: int,
    message: str,
    *,
    stats: dict[str, Any] | None = None,
    cycles: int = 0,
    peer: Peer | None = None,
) -> None:
    """Leave the outcome (and the statistics) for the CLI, atomically."""
    if not path:
        return
    record: dict[str, Any] = {"status": status, "message": message}
    if stats is not None:
        record["stats"] = stats
        record["cycles"] = cycles
        record["peer_id"] = peer.id if peer is not None else -1
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(record, f)
    os.replace(tmp, path)
