"""``ivshmem-server`` on the command line: QEMU's options, daemon mode, signals, socket file."""

from __future__ import annotations

import os
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import shm_name

from ivhw.sw.server import main
from ivhw.sw.server_probe import RawClient, ServerProcess

SERVER = [sys.executable, "-m", "ivhw.sw.server"]


def run_cli(*args: str, timeout: float = 20.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*SERVER, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def wait_gone(pid: int, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while os.path.exists(f"/proc/{pid}"):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["-n", "65"], "too many requested vectors (max is 64)"),
        (["-n", "abc"], "cannot parse n_vectors"),
        (["-n", "-1"], "cannot parse n_vectors"),
        (["-l", "12Q"], "invalid shm size"),
        (["-l", "0"], "too small: at least 1"),
        (["-x"], "unrecognized arguments"),
        (["-F", "-S"], "expected one argument"),
        (["-v"], "cannot use verbose in daemon mode"),
        (["-F", "--socket-mode", "999"], "not an octal mode"),
        (["-F", "--max-peers", "0"], "must be 1..65536"),
        (["-F", "--allow-uid", "root"], "not a numeric id"),
        (["-F", "--stall-timeout", "-1"], "must not be negative"),
        (["-F", "extra"], "unrecognized arguments"),
        (["-F", "-M", "a/b"], "a shm name has no '/' inside"),
        (["-F", "-M", "/"], "a shm name is not only '/'"),
        (["-F", "-M", "//"], "a shm name is not only '/'"),
        (["-F", "-M", ""], "must not be empty"),
        (["-F", "-l", "8E"], "shm size '8E' is too large: at most 4E"),
        (["-F", "-l", "16E"], "shm size '16E' is too large: at most 4E"),
        (["-F", "-l", "9" * 20], "is too large: at most 4E"),
        (["-F", "-l", "4" * 20], "is too large: at most 4E"),
        (["-v", "-p", "/tmp/x.pid"], "cannot use verbose in daemon mode (add -F or --log-file)"),
    ],
)
def test_bad_arguments_give_one_line_and_status_2(
    capsys: pytest.CaptureFixture[str], argv: list[str], expected: str
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert err.startswith("ivshmem-server: error: ")
    assert expected in err


def test_bad_arguments_in_a_subprocess_have_no_traceback() -> None:
    result = run_cli("-n", "100")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "ivshmem-server: error: argument -n: too many requested vectors (max is 64)"
    ]


def test_help_lists_qemus_options(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["-h"]) == 0
    out = capsys.readouterr().out
    for option in ("-h", "-v", "-F", "-p <pid-file>", "-S", "-M", "-m", "-l", "-n"):
        assert option in out
    assert "/tmp/ivshmem_socket" in out and "4194304" in out


def test_console_script_is_installed() -> None:
    script = Path(sys.executable).parent / "ivshmem-server"
    result = subprocess.run([script, "-h"], capture_output=True, text=True, timeout=20)
    assert result.returncode == 0
    assert "Usage:" in result.stdout


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_exits_cleanly(tmp_path: Path, shm: str, signum: int) -> None:
    path = tmp_path / "s.sock"
    server = ServerProcess(path, ["-M", shm, "-l", "64K", "-n", "2"], tmp_path / "log")
    try:
        client = RawClient(path)
        assert client.handshake()[0] == 0
        assert Path("/dev/shm", shm).stat().st_size == 64 << 10
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        server.proc.send_signal(signum)
        assert server.proc.wait(10) == 0
        assert client.at_eof()
        client.close()
        assert not path.exists()
        assert not Path("/dev/shm", shm).exists()
        assert "Traceback" not in server.log()
    finally:
        server.stop()


def test_daemon_mode_writes_the_pid_file(tmp_path: Path, shm: str) -> None:
    path = tmp_path / "d.sock"
    pid_file = tmp_path / "server.pid"
    log = tmp_path / "log"
    with open(log, "wb") as out:
        # no pipes: the daemon keeps stdout/stderr open, as QEMU's does
        status = subprocess.run(
            [*SERVER, "-S", str(path), "-p", str(pid_file), "-M", shm, "-l", "1M"],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=out,
            timeout=20,
        ).returncode
    assert status == 0, log.read_text()
    pid = int(pid_file.read_text())
    try:
        assert pid != os.getpid()
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        assert int(fields[1]) != os.getpid()  # re-parented: the double fork detached it
        assert os.getsid(pid) != os.getsid(0)  # a session of its own
        with RawClient(path) as client:
            assert client.handshake()[0] == 0
        os.kill(pid, signal.SIGTERM)
        assert wait_gone(pid)
    finally:
        if os.path.exists(f"/proc/{pid}"):
            os.kill(pid, signal.SIGKILL)
    assert not path.exists()


def test_unwritable_pid_file_fails_in_the_foreground(tmp_path: Path, shm: str) -> None:
    path = tmp_path / "d.sock"
    log = tmp_path / "log"
    with open(log, "wb") as out:
        status = subprocess.run(
            [*SERVER, "-S", str(path), "-p", str(tmp_path / "no/such/dir.pid"), "-M", shm],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=out,
            timeout=20,
        ).returncode
    assert status == 1
    assert log.read_text().splitlines() == [
        f"ivshmem-server: cannot write pid file {tmp_path}/no/such/dir.pid: "
        "No such file or directory"
    ]
    time.sleep(0.2)
    assert not path.exists()
    assert not Path("/dev/shm", shm).exists()


def _daemon(tmp_path: Path, *args: str) -> tuple[int, Path]:
    """Start a daemonized server; its pid and the file its inherited stdout/stderr go to."""
    pid_file = tmp_path / "server.pid"
    out = tmp_path / "terminal"
    with open(out, "wb") as terminal:
        status = subprocess.run(
            [*SERVER, "-p", str(pid_file), *args],
            stdin=subprocess.DEVNULL,
            stdout=terminal,
            stderr=terminal,
            timeout=20,
        ).returncode
    assert status == 0, out.read_text()
    return int(pid_file.read_text()), out


def _stop_daemon(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGTERM)
        assert wait_gone(pid)
    finally:
        if os.path.exists(f"/proc/{pid}"):
            os.kill(pid, signal.SIGKILL)


def test_daemon_is_quiet_on_the_terminal_that_started_it(tmp_path: Path, shm: str) -> None:
    path = tmp_path / "d.sock"
    pid, terminal = _daemon(tmp_path, "-S", str(path), "-M", shm, "-l", "1M")
    try:
        for _ in range(3):
            with RawClient(path) as client:
                client.handshake()
    finally:
        _stop_daemon(pid)
    assert terminal.read_text() == ""
    assert not (tmp_path / "server.pid").exists()  # removed at exit


@pytest.mark.parametrize("verbose", [False, True])
def test_daemon_logs_to_the_log_file(tmp_path: Path, shm: str, verbose: bool) -> None:
    path = tmp_path / "d.sock"
    log = tmp_path / "server.log"
    args = ["-S", str(path), "-M", shm, "--log-file", str(log), *(["-v"] if verbose else [])]
    pid, terminal = _daemon(tmp_path, *args)
    try:
        with RawClient(path) as client:
            peer_id, _fd = client.handshake()
    finally:
        _stop_daemon(pid)
    assert terminal.read_text() == ""
    text = log.read_text()
    assert f"listening on {path}" in text
    assert f"peer {peer_id} joined" in text
    assert f"peer {peer_id} disconnected" in text
    assert "SIGTERM: shutting down" in text
    assert (f"DEBUG: peer {peer_id}: 1 vector(s)" in text) == verbose


def test_unwritable_log_file_is_one_line(tmp_path: Path, shm: str) -> None:
    result = run_cli("-F", "-S", str(tmp_path / "s"), "-M", shm, "--log-file", "/no/such/log")
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        "ivshmem-server: cannot open log file /no/such/log: No such file or directory"
    ]
    assert not (tmp_path / "s").exists()


def test_stale_socket_file_is_replaced(tmp_path: Path, shm: str) -> None:
    path = tmp_path / "stale.sock"
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(path))
    stale.close()  # the file stays, nobody listens
    with ServerProcess(path, ["-M", shm], tmp_path / "log") as server, RawClient(path) as client:
        assert client.handshake()[0] == 0
        assert "replacing stale socket" in server.log()


def test_live_server_on_the_same_path_is_not_replaced(tmp_path: Path, shm: str) -> None:
    path = tmp_path / "live.sock"
    other = shm_name()
    try:
        with (
            ServerProcess(path, ["-M", shm, "-n", "1"], tmp_path / "log1") as first,
            RawClient(path) as a,
        ):
            a.recv_n(4)
            result = run_cli("-F", "-S", str(path), "-M", other)
            assert result.returncode == 1
            lines = result.stderr.strip().splitlines()
            assert lines == [
                f"ivshmem-server: another server is listening on {path}: stop it or use -S"
            ]
            # the first server still works, and nobody connected to probe it
            with RawClient(path) as b:
                assert b.handshake()[0] == 1
            assert "peer 1 joined" in first.log()
            assert "peer 2" not in first.log()
    finally:
        Path("/dev/shm", other).unlink(missing_ok=True)


def test_path_that_is_not_a_socket_is_an_error(tmp_path: Path, shm: str) -> None:
    path = tmp_path / "file"
    path.write_text("mine")
    result = run_cli("-F", "-S", str(path), "-M", shm)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"ivshmem-server: {path} exists and is not a socket: remove it or use -S"
    ]
    assert path.read_text() == "mine"


def test_socket_mode_option(tmp_path: Path, shm: str) -> None:
    path = tmp_path / "m.sock"
    with ServerProcess(path, ["-M", shm, "--socket-mode", "660"], tmp_path / "log"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o660


def test_file_backed_memory_option(tmp_path: Path) -> None:
    path = tmp_path / "f.sock"
    mem = tmp_path / "mem"
    mem.mkdir()
    with (
        ServerProcess(path, ["-m", str(mem), "-l", "3K"], tmp_path / "log"),
        RawClient(path) as client,
    ):
        _id, fd = client.handshake()
        assert os.fstat(fd).st_size == 4096
        assert list(mem.iterdir()) == []


def test_last_of_m_and_M_wins(tmp_path: Path, shm: str) -> None:
    path = tmp_path / "w.sock"
    with ServerProcess(path, ["-m", str(tmp_path), "-M", shm], tmp_path / "log"):
        assert Path("/dev/shm", shm).exists()


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["-m", "/nonexistent/dir"], "cannot create shm file in /nonexistent/dir: "),
        (["-S", "/nonexistent/dir/s.sock"], "cannot listen on /nonexistent/dir/s.sock: "),
        (["-S", "/tmp/" + "x" * 120], "cannot listen on /tmp/xxx"),
    ],
)
def test_start_errors_give_one_line_and_status_1(argv: list[str], expected: str, shm: str) -> None:
    result = run_cli("-F", "-M", shm, *argv) if "-m" not in argv else run_cli("-F", *argv)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"ivshmem-server: {expected}"), lines
