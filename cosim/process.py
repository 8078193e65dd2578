"""Start ``ivshmem-cosim`` as a child process (for the demo, the benchmark and the tests)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType
from typing import Any

__all__ = ["CosimProcess"]


class CosimProcess:
    """One ``ivshmem-cosim`` run: a simulated device joining the server at ``socket``.

    Parameters
    ----------
    socket : str or Path
        The ivshmem server's socket.
    workdir : Path
        Where the log (``<name>.log``) and the status file (``<name>.json``) go.
    name : str
        Prefix of those files.
    sim, engine, device, vectors, shm_size, guest, guest_args, waves, seconds, poll_cycles
        ``ivshmem-cosim`` options (``engine=None``: the simulator's default;
        ``vectors=None``: the server's, revision 2).
    revision, layout, interrupts
        ``--revision`` (2: the revision 2 endpoint) and its ``--layout``, ``--interrupts``.
    firmware : str
        ``--firmware`` of ``device="soc"`` (which runs no guest).

    Attributes
    ----------
    log_path, status_path : Path
        Combined stdout/stderr of the run, and the bridge's JSON status.
    """

    def __init__(
        self,
        socket: str | os.PathLike[str],
        workdir: str | os.PathLike[str],
        *,
        name: str = "cosim",
        sim: str = "verilator",
        engine: str | None = None,
        device: str = "flat",
        vectors: int | None = 1,
        shm_size: int | None = None,
        revision: int = 1,
        layout: str | None = None,
        interrupts: str | None = None,
        guest: str | None = None,
        guest_args: dict[str, object] | None = None,
        firmware: str = "echo",
        waves: str | os.PathLike[str] | None = None,
        seconds: float | None = None,
        poll_cycles: int | None = None,
        stdout: Any = None,
    ) -> None:
        self.workdir = Path(workdir)
        self.log_path = self.workdir / f"{name}.log"
        self.status_path = self.workdir / f"{name}.json"
        self.args = [
            sys.executable, "-m", "ivhw.cosim.cli",
            "--socket", os.fspath(socket),
            "--device", device,
            "--sim", sim,
            "--status", os.fspath(self.status_path),
        ]  # fmt: skip
        if device == "soc" or guest is not None:  # else the revision's echo guest
            self.args += ["--guest", "none" if device == "soc" else str(guest)]
        if vectors is not None:  # else (revision 2) the server's
            self.args += ["--vectors", str(vectors)]
        if revision != 1:
            self.args += ["--revision", str(revision)]
        if layout is not None:
            self.args += ["--layout", layout]
        if interrupts is not None:
            self.args += ["--interrupts", interrupts]
        if engine is not None:
            self.args += ["--engine", engine]
        if device == "soc":
            self.args += ["--firmware", firmware]
        if shm_size is not None:  # else the server's size
            self.args += ["--shm-size", str(shm_size)]
        for key, value in (guest_args or {}).items():
            self.args += ["--guest-arg", f"{key}={value}"]
        if waves is not None:
            self.args += ["--waves", os.fspath(waves)]
        if seconds is not None:
            self.args += ["--seconds", str(seconds)]
        if poll_cycles is not None:
            self.args += ["--poll-cycles", str(poll_cycles)]
        self._stdout = stdout
        self._log: Any = None
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> CosimProcess:
        """Start the bridge (it builds first if the build is not cached)."""
        env = dict(os.environ)
        bindir = str(Path(sys.executable).parent)
        env["PATH"] = bindir + os.pathsep + env.get("PATH", "")
        env.pop("PYTEST_CURRENT_TEST", None)
        self.workdir.mkdir(parents=True, exist_ok=True)
        if self._stdout is None:
            self._log = open(self.log_path, "wb")  # noqa: SIM115 (closed in wait/stop)
            out = self._log
        else:
            out = self._stdout
        self.process = subprocess.Popen(
            self.args, stdout=out, stderr=subprocess.STDOUT, env=env, stdin=subprocess.DEVNULL
        )
        return self

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def simulator_pid(self, timeout: float = 30.0) -> int:
        """PID of the simulator process (the CLI's child) once it runs."""
        deadline = time.monotonic() + timeout
        while True:
            with contextlib.suppress(OSError):
                for task in os.listdir(f"/proc/{self.pid}/task"):
                    with open(f"/proc/{self.pid}/task/{task}/children") as f:
                        children = [int(p) for p in f.read().split()]
                    if children:
                        return children[0]
            if time.monotonic() > deadline or self.poll() is not None:
                raise TimeoutError("the cosim process started no simulator")
            time.sleep(0.02)

    def poll(self) -> int | None:
        """The exit status, or ``None`` while it runs."""
        assert self.process is not None
        return self.process.poll()

    def wait(self, timeout: float = 60.0) -> int:
        """Wait for the run to end; its exit status."""
        assert self.process is not None
        try:
            return self.process.wait(timeout)
        finally:
            if self.process.poll() is not None and self._log is not None:
                self._log.close()
                self._log = None

    def stop(self, timeout: float = 20.0) -> int:
        """SIGTERM (the bridge leaves the domain cleanly), then SIGKILL after ``timeout``."""
        if self.process is None:
            return 0
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(OSError):
                    sim = self.simulator_pid(0)
                    os.kill(sim, signal.SIGKILL)
                self.process.kill()
                self.process.wait()
        return self.wait()

    def output(self) -> str:
        """Everything the run printed so far."""
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def status(self) -> dict[str, Any]:
        """The bridge's JSON status (after the run)."""
        with open(self.status_path) as f:
            return json.load(f)  # type: ignore[no-any-return]

    def __enter__(self) -> CosimProcess:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
