"""The ``ivshmem-client`` CLI against the scripted fake server, as a real subprocess."""

from __future__ import annotations

import os
import pty
import select
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fakeserver import FakeConn, FakeServer

CLIENT = [sys.executable, "-m", "ivhw.sw.client"]


def run(args: list[str], stdin: str = "", timeout: float = 20) -> subprocess.CompletedProcess:
    return subprocess.run(
        CLIENT + args, input=stdin, capture_output=True, text=True, timeout=timeout
    )


def read_until(proc: subprocess.Popen, text: str, timeout: float = 10) -> str:
    """Read the client's stdout until a line containing ``text``; return everything read."""
    assert proc.stdout is not None
    seen = ""
    deadline = time.monotonic() + timeout
    while text not in seen:
        remaining = deadline - time.monotonic()
        if remaining <= 0 or not select.select([proc.stdout], [], [], remaining)[0]:
            raise AssertionError(f"no {text!r} from the client; got {seen!r}")
        chunk = os.read(proc.stdout.fileno(), 4096).decode()
        if not chunk:
            raise AssertionError(f"client ended before {text!r}; got {seen!r}")
        seen += chunk
    return seen


@pytest.fixture
def sock_path(tmp_path: Path) -> str:
    return str(tmp_path / "ivshmem.sock")


def test_help_option() -> None:
    result = run(["-h"])
    assert result.returncode == 0
    assert "-S PATH" in result.stdout


@pytest.mark.parametrize("args", [["-x"], ["-S"], ["extra"], ["-S", "a", "b"]])
def test_bad_arguments_exit_2_with_one_line(args: list[str]) -> None:
    result = run(args)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1
    assert result.stderr.startswith("ivshmem-client: error:")
    assert result.stdout == ""


def test_connection_failure_exit_1(tmp_path: Path) -> None:
    result = run(["-S", str(tmp_path / "missing")])
    assert result.returncode == 1
    assert result.stderr == (
        f"ivshmem-client: cannot connect to {tmp_path / 'missing'}: No such file or directory\n"
    )


def test_protocol_failure_exit_1(sock_path: str) -> None:
    with FakeServer(sock_path, lambda conn, index: conn.send(7)):
        result = run(["-S", sock_path])
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1
    assert "protocol version 7" in result.stderr


def test_piped_commands(sock_path: str) -> None:
    def script(conn: FakeConn, index: int) -> None:
        conn.handshake(3, vectors=2, peers={1: 2, 4: 1})

    commands = "dump\nint 1 0\nint 1 all\nint 3 1;help\nbogus\nint 9 0\nint 1 5\nint x 0\nint all"
    with FakeServer(sock_path, script) as server:
        result = run(["-S", sock_path], commands)
        conn = server.conn()
        assert (conn.rung(1, 0), conn.rung(1, 1), conn.rung(4, 0)) == (3, 2, 1)
    assert result.returncode == 0, result.stderr
    out = result.stdout.splitlines()
    assert out[0] == f"connected to {sock_path} as peer 3 (2 vectors, 4096 bytes of shared memory)"
    assert out[1] == "our_id = 3"
    assert out[2].startswith("  vector 0 is enabled (fd=")
    assert out[4] == "peer_id = 1"
    assert out[7] == "peer_id = 4"
    assert "int all: notify all vectors of all peers (excepting us)" in out
    assert "receive notification from peer_id=3 vector=1" in out
    errors = result.stderr.splitlines()
    assert errors == [
        "error: invalid command 'bogus', type help",
        "error: cannot find peer_id = 9",
        "error: peer 1 has no vector 5: it has 2 (0..1)",
        "error: peer must be a number or 'all', not 'x'",
    ]


def test_stdin_from_a_regular_file(sock_path: str, tmp_path: Path) -> None:
    commands = tmp_path / "commands"
    commands.write_text("int 0 0\ndump\n")
    with FakeServer(sock_path, lambda conn, index: conn.handshake(0)), commands.open() as stdin:
        result = subprocess.run(
            [*CLIENT, "-S", sock_path], stdin=stdin, capture_output=True, text=True, timeout=20
        )
    assert result.returncode == 0, result.stderr
    assert "our_id = 0" in result.stdout
    assert "receive notification from peer_id=0 vector=0" in result.stdout


def test_no_stdin_at_all(sock_path: str) -> None:
    with FakeServer(sock_path, lambda conn, index: conn.handshake(0)):
        result = subprocess.run(
            [*CLIENT, "-S", sock_path], stdin=subprocess.DEVNULL, capture_output=True, timeout=20
        )
    assert result.returncode == 0
    assert result.stderr == b""


def test_events_are_printed_as_they_happen(sock_path: str) -> None:
    with FakeServer(sock_path, lambda conn, index: conn.handshake(2)) as server:
        proc = subprocess.Popen(
            [*CLIENT, "-S", sock_path, "-v"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        try:
            read_until(proc, "our_id = 2")
            conn = server.conn()
            conn.add_peer(5, 2)
            seen = read_until(proc, "new vector 1 (fd=")
            assert "new peer id = 5" in seen
            conn.ring_client(0, times=2)
            seen = read_until(proc, "receive notification from peer_id=2 vector=0 (x2)")
            assert "received event on fd" in seen
            assert proc.stdin is not None
            proc.stdin.write(b"int 5 1\n")
            proc.stdin.flush()
            read_until(proc, "notify peer 5 on vector 1")
            conn.remove_peer(5)
            read_until(proc, "delete peer id = 5")
            proc.stdin.close()
            assert proc.wait(10) == 0
            assert conn.rung(5, 1) == 1
            assert proc.stderr is not None and proc.stderr.read() == b""
        finally:
            proc.kill()
            proc.wait()
            for stream in (proc.stdin, proc.stdout, proc.stderr):
                if stream is not None:
                    stream.close()


def test_server_gone_exits_1(sock_path: str) -> None:
    with FakeServer(sock_path, lambda conn, index: conn.handshake(0)) as server:
        proc = subprocess.Popen(
            [*CLIENT, "-S", sock_path],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        try:
            read_until(proc, "connected")
            server.conn().sock.close()
            assert proc.wait(10) == 1
            assert proc.stderr is not None
            err = proc.stderr.read().decode()
            assert err.count("\n") == 1 and "closed the connection" in err
        finally:
            proc.kill()
            proc.wait()
            for stream in (proc.stdin, proc.stdout, proc.stderr):
                if stream is not None:
                    stream.close()


def test_interactive_terminal(sock_path: str) -> None:
    master, slave = pty.openpty()
    with FakeServer(sock_path, lambda conn, index: conn.handshake(1)):
        proc = subprocess.Popen(
            [*CLIENT, "-S", sock_path], stdin=slave, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        os.close(slave)
        try:
            seen = read_until(proc, "cmd> ")
            assert seen.startswith("dump: dump peers (including us)\n")
            os.write(master, b"dump\n")
            read_until(proc, "our_id = 1")
            os.write(master, b"\x04")  # Ctrl-D at the start of a line: end of input
            assert proc.wait(10) == 0
        finally:
            os.close(master)
            proc.kill()
            proc.wait()
            for stream in (proc.stdout, proc.stderr):
                if stream is not None:
                    stream.close()


@pytest.mark.parametrize("redirect", ["<&-", ">&-", "2>&-"])
def test_closed_stdio_is_not_a_crash(sock_path: str, redirect: str) -> None:
    # `ivshmem-client <&-`: the fd is not open at all (not even /dev/null)
    command = " ".join(shlex.quote(word) for word in [*CLIENT, "-S", sock_path])
    with FakeServer(sock_path, lambda conn, index: conn.handshake(0, vectors=1)):
        result = subprocess.run(
            ["sh", "-c", f"exec {command} {redirect}"],
            input=b"dump\n",
            capture_output=True,
            timeout=20,
        )
    assert result.returncode == 0, result.stderr
    assert result.stderr == b""
    if redirect != ">&-":
        assert b"connected to" in result.stdout
    if redirect == "2>&-":
        assert b"our_id = 0" in result.stdout


def test_broken_stdout_exits_quietly_at_once(sock_path: str) -> None:
    # `ivshmem-client | head -c 10` with many commands still to come
    commands = b"dump\n" * 40_000
    with FakeServer(sock_path, lambda conn, index: conn.handshake(0, vectors=2, peers={1: 2})):
        reader, writer = os.pipe()
        proc = subprocess.Popen(
            [*CLIENT, "-S", sock_path],
            stdin=subprocess.PIPE,
            stdout=writer,
            stderr=subprocess.PIPE,
        )
        os.close(writer)
        assert os.read(reader, 10)
        os.close(reader)  # what `head -c 10` does after 10 bytes
        try:
            _out, err = proc.communicate(commands, timeout=20)
        except BrokenPipeError:  # it left before taking all of its input: fine
            err = proc.stderr.read() if proc.stderr else b""
            proc.wait(timeout=20)
    assert err == b""
    assert proc.returncode == 0


def test_long_lines_are_bounded(sock_path: str) -> None:
    # an 8 MiB line without a newline, then a normal command: one short error each
    junk = "x" * (8 << 20)
    commands = f"{junk}\nint {junk}\ndump\n{junk}"
    with FakeServer(sock_path, lambda conn, index: conn.handshake(0)):
        result = run(["-S", sock_path], commands, timeout=60)
    assert result.returncode == 0, result.stderr[:500]
    errors = result.stderr.splitlines()
    assert len(errors) == 3, [e[:100] for e in errors]
    for line in errors:
        assert line.startswith("error: command line too long"), line[:200]
        assert len(line) < 200
    assert "our_id = 0" in result.stdout


def test_invalid_command_echo_is_bounded(sock_path: str) -> None:
    word = "y" * 3000  # within the line limit, but too long to echo whole
    with FakeServer(sock_path, lambda conn, index: conn.handshake(0)):
        result = run(["-S", sock_path], f"{word}\nint 0 {word}\nint {word} 0\n")
    assert result.returncode == 0
    errors = result.stderr.splitlines()
    assert len(errors) == 3
    for line in errors:
        assert len(line) < 200, line[:300]
        assert "yyyy..." in line


def test_line_reader_holds_at_most_one_line() -> None:
    from ivhw.sw.client import MAX_LINE, _LineReader

    reader = _LineReader()
    chunk = b"z" * 65536
    out: list[str | None] = []
    for _ in range(256):  # 16 MiB without a newline
        out += reader.feed(chunk)
        assert len(reader._partial) <= MAX_LINE  # bounded memory, so linear work
    out += reader.feed(b"tail\nint 1 0;dump\r\nhelp")
    out += reader.finish()
    assert out == [None, "int 1 0", "dump", "", "help"]
