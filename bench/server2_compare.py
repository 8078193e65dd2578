"""Our ``ivshmem2-server`` against another build of it (the RFC's), live, side by side.

``python -m bench.server2_compare --rfc-server PATH [-l SIZE] [-o SIZE] [-n N] [-V N] [-P ID]
[-M NAME | -m DIR] [--only NAME,...]``

Each scenario starts a fresh server of each kind with the same options, drives the
same events with raw clients (:class:`ivhw.sw.server_probe.RawClient2`) and records
every message each client received: type, length, IDs, fd count and INIT's fields.
The two recordings are printed side by side with the lines that differ marked.
The weakness scenarios then report what each server did: kept serving or exited,
messages delivered of expected, the ``max_peers`` a State Table of one page cannot
hold, and sizes of 4 GiB and more. ``-l -o -n -V -P`` set the options of the
``custom`` scenario (a join, a leave and a rejoin); ``-M``/``-m`` say where both
servers keep their shared memory (default: a fresh directory, ``-m``).

``--rfc-server`` takes a command line (split like a shell would), so the tool can be
run with our server on both sides, as its unit test does; without it (and without
``$IVHW_RFC_SERVER``) the tool compares nothing and says so, so that ``python -m
bench`` can run it.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shlex
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ivhw.sw.protocol import MSG2_EVENT_FD, MSG2_INIT, MSG2_PEER_GONE
from ivhw.sw.server_probe import CountingSwarm, RawClient2, ServerProcess

__all__ = [
    "Outcome",
    "Recording",
    "Servers",
    "diff_lines",
    "format_message",
    "main",
    "run_scenarios",
    "run_weaknesses",
]

#: Seconds without a message after which a client counts as drained.
IDLE = 0.3

_NAMES = {MSG2_INIT: "INIT", MSG2_EVENT_FD: "EVENT_FD", MSG2_PEER_GONE: "PEER_GONE"}


def format_message(length: int, kind: int, fields: Sequence[int], fds: int) -> str:
    """One received message as a line: type, length, its fields by name, fd count."""
    name = _NAMES.get(kind, f"type {kind}")
    if kind == MSG2_INIT:
        version, compatible, peer, max_peers, vectors, protocol, output = fields
        body = (
            f"id={peer} version={version}/{compatible} max_peers={max_peers} "
            f"vectors={vectors} protocol={protocol:#06x} output={output:#x}"
        )
    elif kind == MSG2_EVENT_FD:
        body = f"id={fields[0]} vector={fields[1]}"
    elif kind == MSG2_PEER_GONE:
        body = f"id={fields[0]}"
    else:
        body = " ".join(str(f) for f in fields)
    return f"{name} len={length} {body} fds={fds}"


def diff_lines(left: Sequence[str], right: Sequence[str]) -> list[tuple[str, str, bool]]:
    """Pair two recordings line by line: ``(left, right, differ)``; a missing line is ``""``."""
    width = max(len(left), len(right))
    padded = [(*pair, pair[0] != pair[1]) for pair in zip(left, right, strict=False)]
    padded += [
        (left[i] if i < len(left) else "", right[i] if i < len(right) else "", True)
        for i in range(len(padded), width)
    ]
    return padded


@dataclass
class Servers:
    """How to start each side: our module and the other side's command line."""

    rfc: list[str]
    workdir: Path
    shm: list[str]  # ["-m", DIR] or ["-M", NAME]
    _count: int = 0

    @contextlib.contextmanager
    def start(
        self, side: str, args: Sequence[str], ours_only: Sequence[str] = ()
    ) -> Iterator[ServerProcess]:
        """A fresh server of ``side`` (``ours`` or ``rfc``) with ``args``, stopped afterwards.

        ``ours_only`` are options only our server has, passed to ours alone.
        """
        self._count += 1
        sock = self.workdir / f"{side}{self._count}.sock"
        log = self.workdir / f"{side}{self._count}.log"
        shm = list(self.shm)
        if shm[0] == "-M":
            shm[1] = f"{shm[1]}-{side}{self._count}"  # POSIX names are global: one per run
        command = None if side == "ours" else self.rfc
        if side == "ours":
            args = [*args, *ours_only]
        server = ServerProcess(sock, [*shm, *args], log, module="ivhw.sw.server2", command=command)
        try:
            yield server
        finally:
            server.stop()
            if shm[0] == "-M":
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(f"/dev/shm/{shm[1].lstrip('/')}")


@dataclass
class Recording:
    """What each client of one scenario run received, in order, one line per message."""

    lines: list[str] = field(default_factory=list)
    ended: set[str] = field(default_factory=set)  # labels whose stream ended

    def drain(self, label: str, client: RawClient2, idle: float = IDLE) -> int:
        """Read what ``client`` gets until ``idle`` seconds pass without a message."""
        client.sock.settimeout(idle)
        count = 0
        while True:
            try:
                message = client.recv_sized2()
            except TimeoutError:
                return count
            except (ConnectionResetError, BrokenPipeError):
                message = None
            if message is None:
                self.lines.append(f"{label}: EOF")
                self.ended.add(label)
                return count
            length, kind, fields, fds = message
            self.lines.append(f"{label}: {format_message(length, kind, fields, len(fds))}")
            for fd in fds:
                os.close(fd)
            client.fds.clear()
            count += 1

    def note(self, text: str) -> None:
        """An event of the scenario (not a message), the same on both sides."""
        self.lines.append(f"-- {text}")


Scenario = Callable[[ServerProcess, Recording], None]


def script(*steps: str) -> Scenario:
    """A scenario of steps ``"join X"``, ``"leave X"``, ``"speak X"`` (X sends a byte).

    After each step every connected client is drained, in the order they joined.
    """

    def run(server: ServerProcess, rec: Recording) -> None:
        clients: dict[str, RawClient2] = {}
        try:
            for step in steps:
                action, label = step.split()
                rec.note(step)
                if action == "join":
                    clients[label] = RawClient2(server.socket_path)
                elif action == "leave":
                    clients.pop(label).close()
                elif action == "speak":
                    clients[label].sock.sendall(b"\0")
                else:
                    raise ValueError(f"unknown step {step!r}")
                for name, client in clients.items():
                    if name not in rec.ended:
                        rec.drain(name, client)
        finally:
            for client in clients.values():
                client.close()

    return run


def _join_leave_rejoin(peers: int) -> Scenario:
    """``peers`` clients join one after another; the second leaves; one joins again."""
    joins = [f"join {chr(ord('A') + i)}" for i in range(peers)]
    return script(*joins, "leave B", "join Z")


#: Scenarios whose sequences differ by a documented choice of ours, and why.
DELIBERATE = {
    "unaligned-output": "ours rounds output sections up to a page, as the specification "
    "requires; the RFC's server passes any value on",
}


def _scenarios(args: argparse.Namespace) -> dict[str, tuple[list[str], Scenario]]:
    custom = ["-l", args.l, "-o", args.o, "-n", str(args.n), "-V", str(args.V), "-P", args.P]
    holes = ("join A", "join B", "join C", "join D", "leave C", "leave A", "join Y", "join Z")
    return {
        "join3": (["-l", "1M", "-n", "4", "-V", "2"], _join_leave_rejoin(3)),
        "sections": (["-l", "1M", "-o", "64K", "-n", "3", "-P", "0x1234"], _join_leave_rejoin(3)),
        "virtio": (["-l", "64K", "-n", "2", "-V", "3", "-P", "0x8003"], _join_leave_rejoin(2)),
        "unaligned-output": (["-l", "1M", "-o", "1000", "-n", "2"], _join_leave_rejoin(2)),
        "id-holes": (["-l", "1M", "-n", "4"], script(*holes)),
        "client-speaks": (["-l", "1M", "-n", "3"], script("join A", "join B", "speak B", "join C")),
        "custom": (custom, _join_leave_rejoin(min(args.n, 3))),
    }


def run_scenarios(
    servers: Servers, scenarios: dict[str, tuple[list[str], Scenario]]
) -> dict[str, tuple[list[str], list[str]]]:
    """Run each scenario on both sides; ``{name: (our lines, their lines)}``."""
    out = {}
    for name, (options, scenario) in scenarios.items():
        sides = []
        for side in ("ours", "rfc"):
            rec = Recording()
            with servers.start(side, options) as server:
                scenario(server, rec)
                if server.proc.poll() is not None:
                    rec.note(f"server exited with status {server.proc.returncode}")
            sides.append(rec.lines)
        out[name] = (sides[0], sides[1])
    return out


@dataclass
class Outcome:
    """What one server did in one weakness scenario."""

    serving: bool
    detail: str


def _alive(server: ServerProcess, settle: float = 0.3) -> bool:
    time.sleep(settle)
    return server.proc.poll() is None


def _status(server: ServerProcess) -> str:
    status = server.proc.poll()
    if status is None:
        return "kept serving"
    if status < 0:
        return f"killed by {signal.Signals(-status).name}"
    return f"exited ({status})"


def _beyond_max_peers(servers: Servers, side: str) -> Outcome:
    with servers.start(side, ["-l", "64K", "-n", "2"]) as server:
        a, b = RawClient2(server.socket_path), RawClient2(server.socket_path)
        try:
            a.init(), b.init()
            with RawClient2(server.socket_path) as third:
                closed = third.at_eof(2.0)
                silent = not third.fds
            return Outcome(
                _alive(server),
                f"third peer {'closed' if closed else 'left open'}"
                f"{' without a message' if silent else ' after a message'}; {_status(server)}",
            )
        finally:
            a.close(), b.close()


def _dies_before_init(servers: Servers, side: str) -> Outcome:
    with (
        servers.start(side, ["-l", "64K", "-n", "4"]) as server,
        RawClient2(server.socket_path) as a,
    ):
        a.init()
        # stopped, the server cannot send INIT before the client is gone
        os.kill(server.pid, signal.SIGSTOP)
        try:
            RawClient2(server.socket_path).close()
        finally:
            os.kill(server.pid, signal.SIGCONT)
        serving = _alive(server, 0.5)
        if serving:
            with RawClient2(server.socket_path) as b:
                b.init()
        return Outcome(serving and _alive(server, 0), _status(server))


def _late_reader(servers: Servers, side: str) -> Outcome:
    peers, vectors = 5, 64
    expected = 1 + peers * vectors
    options = ["-l", "1M", "-n", str(peers), "-V", str(vectors)]
    with servers.start(side, options) as server:
        clients = []
        try:
            for _ in range(peers - 1):
                clients.append(RawClient2(server.socket_path))
                for client in clients:
                    Recording().drain("", client, 0.1)
            late = RawClient2(server.socket_path)
            clients.append(late)
            time.sleep(1.0)  # the joiner reads its handshake late
            got = Recording().drain("", late, 1.0)
            return Outcome(
                _alive(server, 0),
                f"{got} of {expected} messages to the late joiner; {_status(server)}",
            )
        finally:
            for client in clients:
                client.close()


def _start_error(e: RuntimeError) -> str:
    """The last line a server that did not start logged."""
    lines = str(e).removeprefix("server did not start:").strip().splitlines()
    # the RFC's server adds a banner on stdout (flushed last) and a pointer to -h
    lines = [line for line in lines if not line.startswith(("*** ", "Try '"))]
    return lines[-1] if lines else "(nothing logged)"


def _many_peers(servers: Servers, side: str, peers: int = 600) -> Outcome:
    """``peers`` x 1 vector: the server holds two fds per peer, past ``select``'s 1024."""
    # the swarm, one process reading for 600 clients, is the slow side: measure the join,
    # not our stall policy (an option the RFC's server does not have)
    options = ["-l", "1M", "-n", "1024"]
    with servers.start(side, options, ours_only=["--stall-timeout", "0"]) as server:
        swarm = CountingSwarm(server.socket_path, peers, 1, revision=2)
        try:
            result = swarm.run(timeout=120.0, idle=5.0)
            detail = f"{result.messages} of {swarm.expected()} messages"
        except OSError as e:  # the server went away while clients were connecting
            detail = f"connect failed after it went away ({e.strerror})"
        finally:
            swarm.close()
        serving = _alive(server, 0)
        if not serving and (logged := server.log().strip().splitlines()):
            detail += f"; its last words: {logged[-1]}"
        return Outcome(serving, f"{detail}; {_status(server)}")


def _startup(options: Sequence[str]) -> Callable[[Servers, str], Outcome]:
    """Start with ``options``: refused (its last log line), or what a client's INIT says."""

    def probe(servers: Servers, side: str) -> Outcome:
        try:
            with servers.start(side, options) as server, RawClient2(server.socket_path) as a:
                (_v, _c, peer, max_peers, vectors, protocol, output), _shm = a.init()
                return Outcome(
                    _alive(server, 0),
                    f"started; INIT id={peer} max_peers={max_peers} vectors={vectors} "
                    f"protocol={protocol:#x} output={output:#x}",
                )
        except RuntimeError as e:
            return Outcome(True, f"refused at start-up: {_start_error(e)}")

    return probe


def _big_shm(servers: Servers, side: str, size: str, want: int) -> Outcome:
    try:
        with servers.start(side, ["-l", size, "-n", "2"]) as server:
            with RawClient2(server.socket_path) as a, RawClient2(server.socket_path) as b:
                a.init()
                _fields, shm = b.init()
                got = os.fstat(shm).st_size
            serving = _alive(server)  # a leave writes the State Table
            return Outcome(
                serving,
                f"shm is {got:#x} bytes (asked {want:#x}); after two leaves: {_status(server)}",
            )
    except RuntimeError as e:
        return Outcome(False, f"did not start: {_start_error(e)}")


def _weaknesses() -> dict[str, Callable[[Servers, str], Outcome]]:
    return {
        "peer beyond max_peers": _beyond_max_peers,
        "client dies before its INIT": _dies_before_init,
        "late joiner, 5 peers x 64 vectors": _late_reader,
        "600 peers x 1 vector": _many_peers,
        "max_peers 2048 (a one-page State Table holds 1024)": _startup(["-l", "1M", "-n", "2048"]),
        "a layout that does not fit (-l 8K -o 4K)": _startup(["-l", "8K", "-o", "4K"]),
        "no vectors (-V 0)": _startup(["-l", "64K", "-V", "0"]),
        "65 vectors (-V 65)": _startup(["-l", "64K", "-V", "65"]),
        "a 17-bit protocol (-P 0x10000)": _startup(["-l", "64K", "-P", "0x10000"]),
        "virtio with 3 peers (-n 3 -P 0x8003)": _startup(["-l", "64K", "-n", "3", "-P", "0x8003"]),
        "4 GiB of shared memory (-l 4G)": lambda s, side: _big_shm(s, side, "4G", 4 << 30),
        "5 GiB of shared memory (-l 5G)": lambda s, side: _big_shm(s, side, "5G", 5 << 30),
    }


def run_weaknesses(
    servers: Servers, names: Sequence[str] | None = None
) -> list[tuple[str, Outcome, Outcome]]:
    """Each weakness scenario on both sides: ``(name, ours, theirs)``."""
    rows = []
    for name, probe in _weaknesses().items():
        if names is not None and name not in names:
            continue
        rows.append((name, probe(servers, "ours"), probe(servers, "rfc")))
    return rows


def _print_side_by_side(name: str, ours: list[str], theirs: list[str]) -> int:
    pairs = diff_lines(ours, theirs)
    differ = sum(d for _l, _r, d in pairs)
    width = max([len("ours"), *(len(left) for left, _r, _d in pairs)])
    verdict = "same" if not differ else f"{differ} line(s) differ"
    if differ and name in DELIBERATE:
        verdict += f" (deliberate: {DELIBERATE[name]})"
    print(f"\n## {name}: {verdict}")
    print(f"  {'ours':<{width}} | rfc")
    for left, right, d in pairs:
        print(f"{'!' if d else ' '} {left:<{width}} | {right}")
    return differ


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench.server2_compare", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "--rfc-server",
        default=os.environ.get("IVHW_RFC_SERVER"),
        help="the other server's command line (default: $IVHW_RFC_SERVER)",
    )
    parser.add_argument("--quick", action="store_true", help="accepted for python -m bench")
    parser.add_argument("-l", default="1M", help="custom scenario: shared memory size")
    parser.add_argument("-o", default="0", help="custom scenario: output section size")
    parser.add_argument("-n", type=int, default=3, help="custom scenario: max peers")
    parser.add_argument("-V", type=int, default=1, help="custom scenario: vectors")
    parser.add_argument("-P", default="0", help="custom scenario: protocol")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("-M", metavar="NAME", help="POSIX shared memory object (per run)")
    where.add_argument("-m", metavar="DIR", help="directory for the shared memory files")
    parser.add_argument("--only", help="comma-separated scenario and weakness names")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; exit status 1 if a sequence differs without a documented reason."""
    args = _parser().parse_args(argv)
    if args.rfc_server is None:
        # python -m bench runs every benchmark: without the other build there is nothing to do
        print("server2_compare: no --rfc-server (or IVHW_RFC_SERVER) given; nothing compared")
        return 0
    rfc = shlex.split(args.rfc_server)
    if not rfc or not (os.access(rfc[0], os.X_OK) or rfc[0] == sys.executable):
        print(f"server2_compare: {rfc[0] if rfc else '(empty)'} is not executable", file=sys.stderr)
        return 2
    only = None if args.only is None else args.only.split(",")
    with tempfile.TemporaryDirectory(prefix="ivhw-cmp2-") as tmp:
        shm = ["-M", args.M] if args.M else ["-m", args.m or tmp]
        servers = Servers(rfc, Path(tmp), shm)
        scenarios = {k: v for k, v in _scenarios(args).items() if only is None or k in only}
        differ = deliberate = 0
        for name, (ours, theirs) in run_scenarios(servers, scenarios).items():
            if _print_side_by_side(name, ours, theirs):
                if name in DELIBERATE:
                    deliberate += 1
                else:
                    differ += 1
        print("\n## weaknesses\n")
        print("| scenario | ours | rfc |\n|---|---|---|")
        for name, ours_o, theirs_o in run_weaknesses(servers, only):
            print(f"| {name} | {ours_o.detail} | {theirs_o.detail} |")
    print(
        f"\n{differ} of {len(scenarios)} scenario(s) differ"
        f" ({deliberate} more differ by a documented choice)"
    )
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main())
