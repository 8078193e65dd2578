"""Fixtures shared by the test modules: in-process servers, raw clients, shm names."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from ivhw.sw.server import IvshmemServer
from ivhw.sw.server_probe import RawClient

StartServer = Callable[..., IvshmemServer]


def shm_name() -> str:
    """A /dev/shm name no other test uses."""
    return f"ivhw-test-{uuid.uuid4().hex}"


@pytest.fixture
def start_server(tmp_path: Path) -> Iterator[StartServer]:
    """Start in-process servers in background threads; all are stopped at teardown.

    Keyword arguments go to :class:`IvshmemServer` (or ``server_class``, e.g. the
    revision 2 server); ``socket_path`` defaults to a fresh path in the test's tmp
    directory.
    """
    servers: list[IvshmemServer] = []

    def start(server_class: type[IvshmemServer] = IvshmemServer, **kwargs: object) -> IvshmemServer:
        path = kwargs.pop("socket_path", tmp_path / f"s{len(servers)}.sock")
        server = server_class(path, **kwargs)  # type: ignore[arg-type]
        servers.append(server)
        server.serve_in_background()
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def clients() -> Iterator[list[RawClient]]:
    """Raw clients to close at teardown."""
    made: list[RawClient] = []
    yield made
    for client in made:
        client.close()


@pytest.fixture
def shm() -> Iterator[str]:
    """A unique POSIX shm name, removed after the test whatever happened."""
    name = shm_name()
    yield name
    Path("/dev/shm", name).unlink(missing_ok=True)
