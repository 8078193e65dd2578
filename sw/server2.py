"""ivshmem server, protocol revision 2: a drop-in for the QEMU RFC's ``contrib/ivshmem2-server``.

The same options, defaults, messages and order as the RFC's server (``docs/rev2.md``):
on connect a peer gets INIT (with the shared-memory fd), then every existing peer
gets the newcomer's EVENT_FDs, the newcomer gets every existing peer's (in join
order) and finally its own. A departure is one PEER_GONE to every remaining peer,
sent only after the server has zeroed the departed peer's State Table entry. IDs
are the lowest free one below ``max_peers``, reused at once; a connection beyond
``max_peers`` is accepted and closed without a message.

It runs on the revision 1 server's machinery (:class:`ivhw.sw.server.IvshmemServer`):
per-client queues with back-pressure, so no message is ever dropped, stalled and
hostile clients, fd exhaustion, SIGTERM, socket mode and the uid/gid allowlist.
Where the RFC's server is weak this one is not: it keeps serving after refusing a
peer or losing one mid-handshake, refuses a ``max_peers`` its State Table cannot
hold, and keeps sizes in 64 bits.
"""

from __future__ import annotations

import argparse
import logging
import mmap
import os
import socket
import struct
import sys
from collections.abc import Callable, Sequence

from .protocol import (
    DEFAULT_SHM_SIZE,
    EVENT_FD2,
    INIT2,
    MAX_VECTORS,
    MSG2_EVENT_FD,
    MSG2_HEADER,
    MSG2_INIT,
    MSG2_PEER_GONE,
    PEER_GONE2,
    PROTOCOL_VERSION2,
    send_frame,
)
from .sections import (
    MAX_PEERS_PROTOCOL,
    MIN_PEERS,
    STATE_ENTRY_SIZE,
    STATE_TABLE_SIZE,
    Layout,
    page_align,
)
from .server import (
    _GONE,
    _INIT,
    _VECTORS,
    MAX_SHM_SIZE,
    USAGE_HEAD,
    USAGE_TAIL,
    IvshmemServer,
    ServerError,
    _Item,
    _Peer,
    common_parser,
    parse_uint,
    pow2ceil,
    run_cli,
)
from .size import size_type

__all__ = [
    "DEFAULT_MAX_PEERS",
    "PROTOCOL_MAX",
    "VIRTIO_BACKEND",
    "VIRTIO_FIRST",
    "Ivshmem2Server",
    "main",
    "peer_protocol",
]

log = logging.getLogger(__name__)

#: The RFC server's default for ``-n``.
DEFAULT_MAX_PEERS = 2
#: Protocols are 16 bits (they travel in the class code's sub-class and prog-if).
PROTOCOL_MAX = 0xFFFF
#: From here on a protocol is virtio over shared memory: two peers only.
VIRTIO_FIRST = 0x8000
#: The bit that marks the virtio back-end (peer 0) and is cleared for the front-end.
VIRTIO_BACKEND = 0x4000

_STATE = struct.Struct("<I")


def peer_protocol(protocol: int, peer_id: int) -> int:
    """The protocol a peer is told in INIT: for virtio, peer 0 is the back-end."""
    if protocol < VIRTIO_FIRST:
        return protocol
    return (protocol & ~VIRTIO_BACKEND) | (VIRTIO_BACKEND if peer_id == 0 else 0)


#: Whole messages, header included, packed in one call: the join hot path sends
#: N x V of them per join.
_EVENT_FD_MSG = struct.Struct("<" + (MSG2_HEADER.format + EVENT_FD2.format).replace("<", ""))
_PEER_GONE_MSG = struct.Struct("<" + (MSG2_HEADER.format + PEER_GONE2.format).replace("<", ""))
_INIT_MSG = struct.Struct("<" + (MSG2_HEADER.format + INIT2.format).replace("<", ""))


class _Rev2Codec:
    """Revision 2 framing: ``{u32 type, u32 len}`` + body, one fd with INIT and EVENT_FD."""

    def __init__(self, server: Ivshmem2Server) -> None:
        self._server = server

    @staticmethod
    def count(item: _Item) -> int:
        """Number of wire messages ``item`` takes."""
        if item.kind == _VECTORS:
            return len(item.peer.eventfds)
        return 1  # _INIT, _GONE

    def send(self, sock: socket.socket, item: _Item, shm_fd: int) -> None:
        """Send message number ``item.next`` of ``item``."""
        peer = item.peer
        if item.kind == _VECTORS:
            vector = item.next
            data = _EVENT_FD_MSG.pack(MSG2_EVENT_FD, _EVENT_FD_MSG.size, peer.id, vector)
            send_frame(sock, data, peer.eventfds[vector])
        elif item.kind == _GONE:
            send_frame(sock, _PEER_GONE_MSG.pack(MSG2_PEER_GONE, _PEER_GONE_MSG.size, peer.id))
        else:
            assert item.kind == _INIT
            server = self._server
            data = _INIT_MSG.pack(
                MSG2_INIT,
                _INIT_MSG.size,
                PROTOCOL_VERSION2,
                PROTOCOL_VERSION2,
                peer.id,
                server.max_peers,
                server.vectors,
                peer_protocol(server.protocol, peer.id),
                server.output_section_size,
            )
            send_frame(sock, data, shm_fd)


class Ivshmem2Server(IvshmemServer):
    """An ivshmem revision 2 server on a UNIX socket.

    Parameters
    ----------
    socket_path:
        Where to listen (as :class:`~ivhw.sw.server.IvshmemServer`).
    shm_size:
        Shared memory size in bytes, rounded up to a power of two (as the RFC's server).
    output_section_size:
        Size of each peer's output section, rounded up to a page (0: none).
    max_peers:
        Peers the domain holds, 2..1024 (the State Table is one page); more
        connections are accepted and closed without a message.
    vectors:
        Interrupt vectors per peer, 1..64 (vector 0 carries state changes).
    protocol:
        The 16-bit protocol advertised in INIT; from 8000h (virtio) only two
        peers, peer 0 told ``protocol | 4000h`` (back-end), the other
        ``protocol & ~4000h``.
    **options:
        Everything else :class:`~ivhw.sw.server.IvshmemServer` takes (``shm_name``,
        ``shm_dir``, ``socket_mode``, ``allow_uids``, ``allow_gids``,
        ``stall_timeout``, ``queue_limit``, ``raise_fd_limit``).

    Attributes
    ----------
    layout:
        Where the State Table, the R/W section and the output sections lie.
    protocol, output_section_size, max_peers:
        As given (the output section size page-rounded).

    Raises
    ------
    ValueError
        With a one-line reason on out-of-range values or a layout that does not fit.
    """

    def __init__(
        self,
        socket_path: str | os.PathLike[str],
        *,
        shm_size: int = DEFAULT_SHM_SIZE,
        output_section_size: int = 0,
        max_peers: int = DEFAULT_MAX_PEERS,
        vectors: int = 1,
        protocol: int = 0,
        **options: object,
    ) -> None:
        if not 1 <= vectors <= MAX_VECTORS:
            raise ValueError(
                f"vectors must be 1..{MAX_VECTORS} (vector 0 signals state changes), "
                f"not {vectors!r}"
            )
        if not MIN_PEERS <= max_peers <= MAX_PEERS_PROTOCOL:
            raise ValueError(
                f"max peers must be {MIN_PEERS}..{MAX_PEERS_PROTOCOL} (a {STATE_TABLE_SIZE}-byte "
                f"State Table holds {MAX_PEERS_PROTOCOL}), not {max_peers!r}"
            )
        if not 0 <= protocol <= PROTOCOL_MAX:
            raise ValueError(f"protocol must be 0..0x{PROTOCOL_MAX:X}, not {protocol:#x}")
        if protocol >= VIRTIO_FIRST and max_peers > 2:
            raise ValueError(
                f"virtio protocols (0x{VIRTIO_FIRST:X} and up) only support 2 peers, "
                f"not {max_peers}"
            )
        if output_section_size < 0:
            raise ValueError(f"output section size must not be negative: {output_section_size}")
        if shm_size <= 0:
            raise ValueError(f"shm_size must be positive, not {shm_size!r}")
        self.output_section_size = page_align(output_section_size)
        self.protocol = protocol
        # fails early, before anything is opened, with the size the server will use
        self.layout = Layout(pow2ceil(shm_size), max_peers, self.output_section_size)
        super().__init__(
            socket_path,
            shm_size=shm_size,
            vectors=vectors,
            max_peers=max_peers,
            **options,  # type: ignore[arg-type]
        )
        self.max_peers: int = max_peers
        self._codec = _Rev2Codec(self)  # type: ignore[assignment]
        self._max_peers_option = "-n"
        self._state_table: mmap.mmap | None = None

    # -- hooks into the revision 1 machinery ------------------------------------------------

    def _summary(self) -> str:
        layout = self.layout
        return (
            f"shm {self._shm_description()}, {self.shm_size} bytes (State Table "
            f"{layout.state_table.size}, R/W {layout.rw.size}, {self.max_peers} output "
            f"sections of {self.output_section_size}), {self.vectors} vector(s), "
            f"protocol 0x{self.protocol:04x}"
        )

    def _open_shm(self) -> None:
        super()._open_shm()
        if self.shm_size != self.layout.shm_size:  # hugetlbfs took a larger size
            self.layout = Layout(self.shm_size, self.max_peers, self.output_section_size)
        try:
            self._state_table = mmap.mmap(
                self._shm_fd, STATE_TABLE_SIZE, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE
            )
        except OSError as e:
            raise ServerError(f"cannot map the State Table: {e.strerror}") from None
        # no peer is connected yet: whatever a reused object holds is stale
        self._state_table[:] = bytes(STATE_TABLE_SIZE)

    def _allocate_id(self) -> int | None:
        """The lowest free ID below ``max_peers`` (reused at once); its state starts at 0."""
        for candidate in range(self.max_peers):
            if candidate not in self._peers:
                self._clear_state(candidate)
                return candidate
        return None

    def _peer_left(self, peer: _Peer) -> None:
        # before PEER_GONE is even queued: whoever hears of the departure reads state 0
        self._clear_state(peer.id)

    def _clear_state(self, peer_id: int) -> None:
        if self._state_table is not None:
            _STATE.pack_into(self._state_table, STATE_ENTRY_SIZE * peer_id, 0)

    def _close(self) -> None:
        table = self._state_table
        if table is not None:
            self._state_table = None
            table[:] = bytes(STATE_TABLE_SIZE)  # every peer is disconnected now
            table.close()
        super()._close()


# -- command line --------------------------------------------------------------------------

_USAGE = (
    USAGE_HEAD
    + f"""\
  -o <size>: size of each output section in bytes (suffixes supported),
     rounded up to a page
     default 0
  -n <peers>: maximum number of peers, {MIN_PEERS}..{MAX_PEERS_PROTOCOL}
     default {DEFAULT_MAX_PEERS}
  -V <vectors>: number of vectors, 1..{MAX_VECTORS}
     default 1
  -P <protocol>: 16-bit protocol to be advertised
     default 0x0000
     When using virtio (0x8000...0xffff), only two peers are supported, peer 0
     will become backend, peer 1 frontend
"""
    + USAGE_TAIL
)


def _uint_arg(what: str, low: int, high: int) -> Callable[[str], int]:
    def convert(text: str) -> int:
        try:
            value = parse_uint(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"cannot parse {what} {text!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{what} must be {low}..{high}, not {text!r}")
        return value

    convert.__name__ = what
    return convert


def _parser(prog: str) -> argparse.ArgumentParser:
    parser = common_parser(prog, _USAGE)
    parser.add_argument(
        "-o",
        dest="output_section_size",
        type=size_type(maximum=MAX_SHM_SIZE, what="output section size"),
        default=0,
    )
    parser.add_argument(
        "-n",
        dest="max_peers",
        type=_uint_arg("max peers", MIN_PEERS, MAX_PEERS_PROTOCOL),
        default=DEFAULT_MAX_PEERS,
    )
    parser.add_argument("-V", dest="vectors", type=_uint_arg("vectors", 1, MAX_VECTORS), default=1)
    parser.add_argument(
        "-P", dest="protocol", type=_uint_arg("protocol", 0, PROTOCOL_MAX), default=0
    )
    return parser


def _make_server(args: argparse.Namespace, common: dict[str, object]) -> Ivshmem2Server:
    return Ivshmem2Server(
        args.socket_path,
        output_section_size=args.output_section_size,
        max_peers=args.max_peers,
        vectors=args.vectors,
        protocol=args.protocol,
        **common,  # type: ignore[arg-type]
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point, options as the RFC's ``ivshmem2-server``; the exit status."""
    prog = "ivshmem2-server"
    return run_cli(prog, _parser(prog), argv, _make_server)  # type: ignore[arg-type]


if __name__ == "__main__":
    sys.exit(main())
