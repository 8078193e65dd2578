"""Wire format of the ivshmem server protocols, revisions 1 and 2.

Revision 1 (QEMU ``ivshmem-server``): every message is one little-endian signed
64-bit integer, optionally carrying exactly one file descriptor as SCM_RIGHTS
ancillary data. See ``docs/specs/ivshmem-spec.rst`` in QEMU for the order of
messages on connect.

Revision 2 (the ``ivshmem2-server`` of the 2019 QEMU RFC): every message starts
with a little-endian ``{u32 type, u32 len}`` header, ``len`` counting the whole
message; INIT carries the shared-memory fd, EVENT_FD one eventfd
(``docs/rev2.md``). In both revisions the server talks and the client never
sends anything. The first 8 bytes tell the revisions apart: a revision 1 stream
starts with the int64 0, a revision 2 stream with type 0 (INIT), len 40.
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
    "EVENT_FD2",
    "INIT2",
    "MAX_FRAME",
    "MAX_PEER_ID",
    "MAX_VECTORS",
    "MSG",
    "MSG2_EVENT_FD",
    "MSG2_HEADER",
    "MSG2_INIT",
    "MSG2_PEER_GONE",
    "MSG_SIZE",
    "PEER_GONE2",
    "PROTOCOL_VERSION",
    "PROTOCOL_VERSION2",
    "SHM_MESSAGE_ID",
    "recv_frame",
    "recv_message",
    "recv_prefix",
    "send_frame",
    "send_message",
    "sniff_revision",
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


#: Revision 2: the protocol version in INIT (``version`` and ``compatible_version``).
PROTOCOL_VERSION2 = 2
#: Revision 2 message types.
MSG2_INIT = 0
MSG2_EVENT_FD = 1
MSG2_PEER_GONE = 2
#: ``{u32 type, u32 len}``, ``len`` = the whole message in bytes.
MSG2_HEADER = struct.Struct("<II")
#: INIT after the header: version, compatible_version, id, max_peers, vectors,
#: protocol (u32 each), output_section_size (u64); 40 bytes with the header.
INIT2 = struct.Struct("<IIIIIIQ")
#: EVENT_FD after the header: id, vector.
EVENT_FD2 = struct.Struct("<II")
#: PEER_GONE after the header: id.
PEER_GONE2 = struct.Struct("<I")
#: Longest message either revision defines; a revision 2 ``len`` beyond this is refused
#: rather than read (a client must not trust a length to allocate or wait for).
MAX_FRAME = 4096


def send_frame(sock: socket.socket, data: bytes, fd: int | None = None) -> None:
    """Send one message of either revision (one ``sendmsg``), with ``fd`` attached when given.

    Raises ``BlockingIOError`` on a non-blocking socket that cannot take it now; a
    message of at most 40 bytes goes into one socket buffer, so it is never sent in part.
    """
    ancillary = []
    if fd is not None:
        ancillary = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [fd]))]
    sent = sock.sendmsg([data], ancillary)
    if sent != len(data):  # pragma: no cover - the kernel sends small stream messages whole
        raise OSError(f"short send of an ivshmem message: {sent} of {len(data)} bytes")


def send_message(sock: socket.socket, value: int, fd: int | None = None) -> None:
    """Send one revision 1 message (one ``sendmsg``), with ``fd`` attached when given."""
    send_frame(sock, MSG.pack(value), fd)


def sniff_revision(first: bytes) -> int:
    """Protocol revision (1 or 2) of a stream whose first 8 bytes are ``first``.

    Raises ``ValueError`` when they begin neither revision.
    """
    if len(first) != MSG_SIZE:
        raise ValueError(f"need the first {MSG_SIZE} bytes, not {len(first)}")
    if MSG.unpack(first)[0] == PROTOCOL_VERSION:
        return 1
    kind, length = MSG2_HEADER.unpack(first)
    if kind == MSG2_INIT and length >= MSG2_HEADER.size + INIT2.size:
        return 2
    raise ValueError(
        f"stream begins with neither revision: type {kind}, len {length} "
        f"(int64 {MSG.unpack(first)[0]})"
    )


def _recv_exact(
    sock: socket.socket, size: int, data: bytes, fds: list[int], what: str
) -> bytes | None:
    """Read until ``data`` has ``size`` bytes, collecting fds; ``None`` at a clean EOF."""
    while len(data) < size:
        chunk, ancdata, flags, _addr = sock.recvmsg(
            size - len(data), socket.CMSG_SPACE(4 * _FD_SIZE), socket.MSG_CMSG_CLOEXEC
        )
        for level, kind, payload in ancdata:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                usable = len(payload) - len(payload) % _FD_SIZE
                fds.extend(array.array("i", payload[:usable]))
        if flags & socket.MSG_CTRUNC:
            for fd in fds:
                os.close(fd)
            fds.clear()
            raise ConnectionError("server sent more file descriptors than one message may carry")
        if not chunk:
            if not data and not fds:
                return None
            for fd in fds:
                os.close(fd)
            fds.clear()
            raise ConnectionError(
                f"server closed the connection inside {what} ({len(data)} of {size} bytes)"
            )
        data += chunk
    return data


def recv_prefix(sock: socket.socket) -> tuple[bytes, list[int]] | None:
    """The first 8 bytes of a stream and the fds that came with them; ``None`` at EOF.

    Feed both to :func:`sniff_revision` and then to :func:`recv_message` or
    :func:`recv_frame` (``first=``, ``first_fds=``), which complete that message.
    """
    fds: list[int] = []
    data = _recv_exact(sock, MSG_SIZE, b"", fds, "a message")
    return None if data is None else (data, fds)


def recv_frame(
    sock: socket.socket, first: bytes = b"", first_fds: list[int] | None = None
) -> tuple[int, bytes, list[int]] | None:
    """Receive one revision 2 message: ``(type, body after the header, fds)``; ``None`` at EOF.

    ``first`` and ``first_fds`` are bytes and fds of this message already read
    (:func:`recv_prefix`). Every fd the kernel passed is returned. Raises
    ``ConnectionError`` on a message the stream ends inside, and on a ``len``
    shorter than the header or longer than any message.
    """
    fds: list[int] = list(first_fds or ())
    header = _recv_exact(sock, MSG2_HEADER.size, first, fds, "a message header")
    if header is None:
        return None
    kind, length = MSG2_HEADER.unpack(header)
    if not MSG2_HEADER.size <= length <= MAX_FRAME:
        for fd in fds:
            os.close(fd)
        raise ConnectionError(
            f"server sent a message of type {kind} with length {length}, outside "
            f"{MSG2_HEADER.size}..{MAX_FRAME}"
        )
    body = _recv_exact(sock, length, header, fds, f"a message of type {kind}")
    assert body is not None  # the header was there, so EOF inside is an error
    return kind, body[MSG2_HEADER.size :], fds


def recv_message(
    sock: socket.socket, first: bytes = b"", first_fds: list[int] | None = None
) -> tuple[int, list[int]] | None:
    """Receive one message: ``(value, fds)``, or ``None`` at end of stream.

    Every fd the kernel passed is returned (the caller validates how many were
    expected and closes the rest). Raises ``ConnectionError`` on a truncated
    message: the stream ended inside the 8 bytes.
    """
    fds: list[int] = list(first_fds or ())
    data = _recv_exact(sock, MSG_SIZE, first, fds, "a message")
    if data is None:
        return None
    return MSG.unpack(data)[0], fds
