"""Wire format of the ivshmem server protocol, revision 1 (QEMU ``ivshmem-server``).

Every message is one little-endian signed 64-bit integer, optionally carrying
exactly one file descriptor as SCM_RIGHTS ancillary data. The server talks, the
client never sends anything. See ``docs/specs/ivshmem-spec.rst`` in QEMU and
SPEC.md §1 for the order of messages on connect.
"""

from __future__ import annotations

import array
import os
import socket
import struct

__all__ = [
    "DEFAULT_SHM_NAME",
    "DEFAULT_SHM_SIZE",
    "DEFAULT_SOCKET_PATH",
    "MAX_PEER_ID",
    "MAX_VECTORS",
    "MSG",
    "MSG_SIZE",
    "PROTOCOL_VERSION",
    "SHM_MESSAGE_ID",
    "recv_message",
    "send_message",
]

#: Protocol version sent as the first message; a client closes on any other.
PROTOCOL_VERSION = 0
#: Value sent together with the shared-memory fd.
SHM_MESSAGE_ID = -1
#: Highest peer ID: IDs are 16 bits wide (they travel in Doorbell bits 31:16).
MAX_PEER_ID = 0xFFFF
#: QEMU's server accepts at most this many vectors per peer (``-n``).
MAX_VECTORS = 64
#: QEMU's defaults for the server options.
DEFAULT_SOCKET_PATH = "/tmp/ivshmem_socket"
DEFAULT_SHM_NAME = "ivshmem"
DEFAULT_SHM_SIZE = 4 * 1024 * 1024

MSG = struct.Struct("<q")
MSG_SIZE = MSG.size
_FD_SIZE = array.array("i").itemsize


def send_message(sock: socket.socket, value: int, fd: int | None = None) -> None:
    """Send one message (one ``sendmsg``), with ``fd`` attached when given.

    Raises ``BlockingIOError`` on a non-blocking socket that cannot take it now;
    a partial send cannot happen for 8 bytes on a UNIX stream socket with room.
    """
    ancillary = []
    if fd is not None:
        ancillary = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [fd]))]
    sent = sock.sendmsg([MSG.pack(value)], ancillary)
    if sent != MSG_SIZE:  # pragma: no cover - the kernel sends small stream messages whole
        raise OSError(f"short send of an ivshmem message: {sent} of {MSG_SIZE} bytes")


def recv_message(sock: socket.socket) -> tuple[int, list[int]] | None:
    """Receive one message: ``(value, fds)``, or ``None`` at end of stream.

    Every fd the kernel passed is returned (the caller validates how many were
    expected and closes the rest). Raises ``ConnectionError`` on a truncated
    message: the stream ended inside the 8 bytes.
    """
    data = b""
    fds: list[int] = []
    while len(data) < MSG_SIZE:
        chunk, ancdata, flags, _addr = sock.recvmsg(
            MSG_SIZE - len(data), socket.CMSG_SPACE(4 * _FD_SIZE), socket.MSG_CMSG_CLOEXEC
        )
        for level, kind, payload in ancdata:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                usable = len(payload) - len(payload) % _FD_SIZE
                fds.extend(array.array("i", payload[:usable]))
        if flags & socket.MSG_CTRUNC:
            for fd in fds:
                os.close(fd)
            raise ConnectionError("server sent more file descriptors than one message may carry")
        if not chunk:
            if not data and not fds:
                return None
            for fd in fds:
                os.close(fd)
            raise ConnectionError(
                f"server closed the connection inside a message ({len(data)} of {MSG_SIZE} bytes)"
            )
        data += chunk
    return MSG.unpack(data)[0], fds
