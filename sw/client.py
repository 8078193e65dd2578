"""``ivshmem-client``: a drop-in for QEMU's ``contrib/ivshmem-client``, built on :mod:`.peer`.

Connects to an ivshmem server, prints every doorbell and every peer joining or
leaving as it happens, and reads commands from stdin::

    dump                  own ID and vectors, every known peer and its vectors
    int <peer> <vector>   ring one vector of a peer (own ID rings yourself)
    int <peer> all        ring every vector of a peer
    int all               ring every vector of every other peer
    help                  this list

Commands are separated by newlines or ``;``. Unlike QEMU's client it also works
with commands piped in and exits with status 0 at the end of input.
"""

from __future__ import annotations

import argparse
import os
import selectors
import sys
from typing import NoReturn, TextIO

from .peer import Doorbell, Peer, PeerJoined, PeerLeft, PeerVector, ProtocolError, ServerGone
from .protocol import DEFAULT_SOCKET_PATH

__all__ = ["Client", "main"]

HELP = """\
dump: dump peers (including us)
int <peer> <vector>: notify one vector on a peer
int <peer> all: notify all vectors of a peer
int all: notify all vectors of all peers (excepting us)
state <value>: set our state (revision 2: the State Table entry; others get vector 0)
help: this help"""

#: How long the server may pause between own vectors during the handshake.
_SETTLE = 0.1
#: Longest command line taken; a longer one is skipped up to its end, with one error.
MAX_LINE = 4096
#: Longest piece of user input quoted back in an error.
_ECHO = 40

_SEPARATORS = bytes.maketrans(b"\r;", b"\n\n")


def _clip(text: str) -> str:
    """``text`` quoted for an error message, cut to a readable length."""
    return repr(text if len(text) <= _ECHO else text[:_ECHO] + "...")


class _LineReader:
    """Splits input into command lines in linear time, each at most ``MAX_LINE`` bytes.

    Newlines, ``\\r`` and ``;`` end a command. A longer line yields ``None``
    once and the rest of it is dropped as it arrives: memory and work per byte
    stay bounded, whatever the input.
    """

    def __init__(self, limit: int = MAX_LINE) -> None:
        self.limit = limit
        self._partial = bytearray()
        self._skipping = False

    def feed(self, data: bytes) -> list[str | None]:
        """The lines ``data`` completes (``None`` for one that was too long)."""
        data = data.translate(_SEPARATORS)
        lines: list[str | None] = []
        start = 0
        while True:
            end = data.find(b"\n", start)
            piece = data[start:] if end < 0 else data[start:end]
            if not self._skipping:
                if len(self._partial) + len(piece) > self.limit:
                    self._partial.clear()
                    self._skipping = True
                    lines.append(None)
                else:
                    self._partial += piece
            if end < 0:
                return lines
            if not self._skipping:
                lines.append(self._partial.decode(errors="replace"))
            self._partial.clear()
            self._skipping = False
            start = end + 1

    def finish(self) -> list[str | None]:
        """At the end of input: the unterminated last line, if any."""
        if self._skipping or not self._partial:
            return []
        line = self._partial.decode(errors="replace")
        self._partial.clear()
        return [line]


class _CommandError(Exception):
    """A command that cannot be run: the message is the one-line reason."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see -h)\n")


class Client:
    """The command interpreter and event printer around one :class:`Peer`.

    Parameters
    ----------
    peer : Peer
        A connected peer.
    verbose : bool
        Also print every vector received and the raw eventfd counters.
    out, err : TextIO
        Where output and one-line errors go.
    """

    def __init__(
        self,
        peer: Peer,
        *,
        verbose: bool = False,
        out: TextIO = sys.stdout,
        err: TextIO = sys.stderr,
    ) -> None:
        self.peer = peer
        self.verbose = verbose
        self._out = out
        self._err = err

    def say(self, line: str) -> None:
        """Print one line of output at once (events must show up as they happen)."""
        print(line, file=self._out, flush=True)

    def error(self, line: str) -> None:
        """Print a one-line error."""
        print(f"error: {line}", file=self._err, flush=True)

    def show(self, events: list) -> None:
        """Print events as QEMU's client does."""
        for event in events:
            if isinstance(event, Doorbell):
                if self.verbose:
                    fd = self.peer.eventfds(self.peer.id)[event.vector]
                    self.say(f"received event on fd {fd} vector {event.vector}: {event.count}")
                times = f" (x{event.count})" if event.count > 1 else ""
                self.say(
                    f"receive notification from peer_id={self.peer.id} vector={event.vector}{times}"
                )
            elif isinstance(event, PeerJoined):
                self.say(f"new peer id = {event.peer}")
            elif isinstance(event, PeerVector):
                if self.verbose:
                    fd = self.peer.eventfds(event.peer)[event.vector]
                    self.say(f"  new vector {event.vector} (fd={fd}) for peer id {event.peer}")
            elif isinstance(event, PeerLeft):
                self.say(f"delete peer id = {event.peer}")

    def dump(self) -> None:
        """Print own ID and vectors, then every known peer and its vectors."""
        self.say(f"our_id = {self.peer.id}")
        self._dump_vectors(self.peer.id)
        for other in sorted(self.peer.peers):
            self.say(f"peer_id = {other}")
            self._dump_vectors(other)

    def _dump_vectors(self, peer: int) -> None:
        if self.peer.revision == 2:
            self.say(f"  state = {self.peer.state_of(peer):#x}")
        for vector, fd in enumerate(self.peer.eventfds(peer)):
            self.say(f"  vector {vector} is enabled (fd={fd})")

    def _ring(self, peer: int, vector: int) -> None:
        if self.verbose:
            self.say(f"notify peer {peer} on vector {vector}")
        try:
            self.peer.ring(peer, vector)
        except (KeyError, ValueError) as exc:
            raise _CommandError(str(exc.args[0]) if exc.args else repr(exc)) from None
        except BrokenPipeError:
            raise
        except OSError as exc:
            raise _CommandError(f"cannot ring: {exc.strerror or exc}") from None

    def _ring_all(self, peer: int) -> None:
        for vector in range(len(self.peer.eventfds(peer))):
            self._ring(peer, vector)

    def command(self, line: str | None) -> bool:
        """Run one command line (``None``: one that was too long); False to quit.

        A broken stdout (``BrokenPipeError``) is not a command error: it propagates.
        """
        if line is None:
            self.error(f"command line too long (over {MAX_LINE} bytes), ignored")
            return True
        words = line.split()
        if not words:
            return True
        try:
            return self._command(words)
        except _CommandError as exc:
            self.error(str(exc))
        return True

    def _command(self, words: list[str]) -> bool:
        name, args = words[0], words[1:]
        if name in ("help", "?") and not args:
            self.say(HELP)
        elif name == "dump" and not args:
            self.dump()
        elif name in ("quit", "exit") and not args:
            return False
        elif name == "state" and len(args) == 1:
            if self.peer.revision != 2:
                raise _CommandError("states exist in protocol revision 2 only")
            try:
                value = int(args[0], 0)
            except ValueError:
                raise _CommandError(f"state must be a number, not {_clip(args[0])}") from None
            if not 0 <= value <= 0xFFFFFFFF:
                raise _CommandError(f"state must be 0..0xffffffff, not {_clip(args[0])}")
            self.peer.state = value
        elif name == "int" and args == ["all"]:
            for other in sorted(self.peer.peers):
                self._ring_all(other)
        elif name == "int" and len(args) == 2:
            peer = _number(args[0], "peer")
            if peer != self.peer.id and peer not in self.peer.peers:
                raise _CommandError(f"cannot find peer_id = {peer}")
            if args[1] == "all":
                self._ring_all(peer)
            else:
                self._ring(peer, _number(args[1], "vector"))
        else:
            self.error(f"invalid command {_clip(' '.join(words))}, type help")
        return True


def _number(word: str, what: str) -> int:
    try:
        return int(word, 10)
    except ValueError:
        raise _CommandError(f"{what} must be a number or 'all', not {_clip(word)}") from None


def _run(client: Client, interactive: bool) -> int:
    peer = client.peer
    selector = selectors.PollSelector()  # poll, unlike epoll, also takes a regular file as stdin
    selector.register(peer.fileno(), selectors.EVENT_READ, "peer")
    try:
        selector.register(0, selectors.EVENT_READ, "stdin")
    except (OSError, ValueError):  # no stdin at all: the end of input is now
        client.show(peer.poll())
        return 0
    reader = _LineReader()
    try:
        while True:
            if interactive:
                print("cmd> ", end="", file=client._out, flush=True)
            for key, _ in selector.select():
                if key.data == "peer":
                    try:
                        events = peer.poll()
                    except ServerGone as exc:
                        client.show(peer.poll())
                        print(f"ivshmem-client: {exc}", file=sys.stderr, flush=True)
                        return 1
                    except ProtocolError as exc:
                        client.error(str(exc))
                        events = []
                    if interactive and events:
                        print(file=client._out)
                    client.show(events)
                    continue
                try:
                    data = os.read(0, 4096)
                except OSError:  # a terminal hung up: the end of input too
                    data = b""
                lines = reader.feed(data) if data else reader.finish()
                for line in lines:
                    if not client.command(line):
                        return 0
                if not data:
                    # whatever arrived meanwhile is still shown before quitting
                    try:
                        client.show(peer.poll())
                    except ProtocolError:
                        pass
                    return 0
    finally:
        selector.close()


def _open_missing_stdio() -> None:
    """Put /dev/null on a closed fd 0, 1 or 2 (``<&-``), so no socket can take its number.

    A closed stdin is then an empty input; a closed stdout or stderr swallows output.
    """
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            null = os.open(os.devnull, os.O_RDONLY if fd == 0 else os.O_WRONLY)
            if null != fd:
                os.dup2(null, fd)
                os.close(null)


def main(argv: list[str] | None = None) -> int:
    """Run ``ivshmem-client``; returns the exit status."""
    _open_missing_stdio()
    parser = _Parser(
        prog="ivshmem-client",
        add_help=False,
        description="Connect to an ivshmem server and ring peers; commands on stdin (type help).",
    )
    parser.add_argument("-h", action="help", help="show this help and exit")
    parser.add_argument("-v", action="store_true", help="verbose mode")
    parser.add_argument(
        "-S",
        metavar="PATH",
        default=DEFAULT_SOCKET_PATH,
        help=f"path of the server's UNIX socket (default {DEFAULT_SOCKET_PATH})",
    )
    args = parser.parse_args(argv)
    try:
        # the server may pause inside its burst (rev 1 has no end-of-setup marker)
        peer = Peer(args.S, settle=_SETTLE)
    except (OSError, ProtocolError, TimeoutError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        print(f"ivshmem-client: cannot connect to {args.S}: {reason}", file=sys.stderr)
        return 1
    interactive = os.isatty(0)
    client = Client(peer, verbose=args.v)
    try:
        with peer:
            if interactive:
                client.say(HELP)
            rev2 = ""
            if peer.revision == 2:
                rev2 = (
                    f"; revision 2: {peer.max_peers} max peers, protocol {peer.protocol:#06x}, "
                    f"output sections of {peer.output_section_size} bytes"
                )
            client.say(
                f"connected to {args.S} as peer {peer.id} "
                f"({peer.vectors} vectors, {peer.shm_size} bytes of shared memory{rev2})"
            )
            if args.v:
                client.dump()
            return _run(client, interactive)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # the reader of our output went away: nothing left to tell anyone, and the
        # interpreter's final flush must not fail on the broken pipe either
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
