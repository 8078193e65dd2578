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
import os
import socket
from dataclasses import dataclass, field
from typing import Any

from ..sw.memmap import MemoryMap, flat_memory_map, pci_memory_map
from ..sw.peer import Peer, PeerJoined, PeerLeft, ProtocolError
from ..sw.protocol import recv_message
from ..sw.regmap import RegisterMap
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
    "guest_windows",
    "join",
    "load_guest",
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

    @classmethod
    def from_env(cls) -> BridgeConfig:
        """Read the configuration the CLI left in the environment."""
        env = os.environ
        seconds = env.get("IVHW_COSIM_SECONDS")
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


def load_guest(name: str) -> GuestFunction | None:
    """The guest ``name``: a built-in (``echo``, ``ping``), ``none``, or ``module:function``."""
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
        peer = Peer(config.socket, vectors=config.vectors, timeout=10.0, sock=sock)
    except (OSError, TimeoutError, ProtocolError) as error:
        raise Stop(
            STATUS_JOIN_FAILED, f"cannot join the ivshmem server at {config.socket}: {error}"
        ) from None
    if peer.shm_size != config.shm_size:
        size = peer.shm_size
        peer.close()
        raise Stop(
            STATUS_JOIN_FAILED,
            f"the server's shared memory is {size} bytes but the device was built for "
            f"{config.shm_size}; rerun with --shm-size {size}",
        )
    return peer


def guest_windows(shm_size: int, layout: PciLayout | None = None) -> tuple[RegisterMap, int, int]:
    """(registers, their bus address, the shared memory's) for the guest, from the bus's map.

    ivshmem-flat: its bus's memory map (:func:`ivhw.sw.memmap.flat_memory_map`); the PCI
    endpoint (``layout``: where the firmware put its BARs): its BAR map, placed.
    """
    memory_map: MemoryMap
    if layout is None:
        memory_map = flat_memory_map(shm_size)
    else:
        bars = pci_memory_map(msix=layout.vectors > 0, vectors=max(layout.vectors, 1),
                              shm_size=shm_size)  # fmt: skip
        bases = {0: layout.bar0, 1: layout.bar1, 2: layout.bar2}
        memory_map = bars.placed({index: bases[index] for index in bars.bars})
    regs, shm = memory_map["regs"], memory_map["shm"]
    assert regs.regs is not None
    return regs.regs, regs.base, shm.base


def announce(peer: Peer, guest: str) -> None:
    """The transcript's first line: who the device is in the domain."""
    print(
        f"[bridge] peer {peer.id} with {peer.vectors} vectors, "
        f"{peer.shm_size // 1024} KiB shared memory; peers: "
        f"{sorted(peer.peers) or 'none'}; guest {guest}",
        flush=True,
    )


def announce_pci(layout: PciLayout) -> None:
    """The transcript line after the firmware enumerated the PCI endpoint."""
    print(
        f"[bridge] PCI endpoint enumerated: BAR0 {layout.bar0:#x}, BAR1 "
        f"{layout.bar1:#x}, BAR2 {layout.bar2:#x} ({layout.shm_size // 1024} KiB), "
        f"MSI-X {layout.vectors} vectors enabled",
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
