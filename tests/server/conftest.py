"""Shared fixtures for the server tests: a real server on a real socket.

``live_server(**overrides)`` starts the app under uvicorn in a thread (as httpx's own test
suite does), with the HTTP protocol ``chatctl serve`` uses and a temporary SQLite file,
and returns its base URL; keyword arguments override ``ServerConfig`` fields
(``stream_queue=5``...), and ``tokens=frozenset({"t1"})`` gives it a ``registry`` of
those admin tokens (each its own tenant), as ``chatctl serve --token`` does.
Other test packages may reuse it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette

from chatctl.server.app import create_app
from chatctl.server.config import ServerConfig
from chatctl.server.protocol import ChatServer, http_protocol, uvicorn_config
from chatctl.server.tokens import TokenRegistry
from tests import postgres
from tests.helpers import free_port, wait_for


@dataclass
class LiveServer:
    url: str
    ws_url: str
    app: Starlette
    config: ServerConfig
    server: ChatServer
    thread: threading.Thread

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)


def start_server(db: str, uvicorn: dict[str, Any] | None = None, **overrides: Any) -> LiveServer:
    """The app on a loopback port in a thread; ``overrides`` are ServerConfig fields,
    ``uvicorn`` more of uvicorn's settings; ``tokens``, admin tokens to accept."""
    tokens = overrides.pop("tokens", None)
    if tokens:
        overrides["registry"] = TokenRegistry(tokens=sorted(tokens))
    config = dataclasses.replace(ServerConfig(db=db), **overrides)
    app = create_app(config)
    port = free_port()
    server = ChatServer(
        uvicorn_config(
            app,
            config,
            host="127.0.0.1",
            port=port,
            log_level="warning",
            loop="asyncio",
            http=http_protocol(config),  # as chatctl serve runs it
            **(uvicorn or {}),
        )
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_for(lambda: server.started or not thread.is_alive(), 10)
    assert server.started, "server did not start"
    return LiveServer(
        f"http://127.0.0.1:{port}", f"ws://127.0.0.1:{port}", app, config, server, thread
    )


#: a tokens file (``serve --tokens``): an admin token, and alice's user token.
ADMIN_AND_ALICE = "tok-admin-91 tenant=t admin\ntok-alice-3c tenant=t user=alice\n"


@contextlib.contextmanager
def alice_revocable(tmp_path: Path) -> Iterator[tuple[LiveServer, Callable[[], None]]]:
    """A server reading the tokens ADMIN_AND_ALICE from a file, and a call that revokes
    alice's token as an operator does (the file rewritten without it, then reloaded)."""
    path = tmp_path / "tokens"
    path.write_text(ADMIN_AND_ALICE)
    path.chmod(0o600)
    registry = TokenRegistry(path)
    srv = start_server(str(tmp_path / "chat.db"), registry=registry)

    def revoke() -> None:
        path.write_text("tok-admin-91 tenant=t admin\n")
        srv.app.state.tokens_reloaded(registry.reload())

    try:
        yield srv, revoke
    finally:
        srv.stop()


@pytest.fixture
def live_server(tmp_path: Path) -> Iterator[Callable[..., LiveServer]]:
    """A factory: ``live_server(**config_overrides)`` -> a running LiveServer."""
    started: list[LiveServer] = []
    count = 0

    def start(**overrides: Any) -> LiveServer:
        nonlocal count
        count += 1
        overrides.setdefault("db", str(tmp_path / f"chat{count}.db"))
        srv = start_server(**overrides)
        started.append(srv)
        return srv

    yield start
    for srv in started:
        srv.stop()


@pytest.fixture(scope="session", params=postgres.BACKENDS)
def shared_server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveServer]:
    """One open (single-tenant) server with default config, shared by every test that does
    not depend on what others stored (each makes its own rooms), to keep the run short;
    one on SQLite and one on PostgreSQL (``tests/postgres.py``; a test marked ``one_backend``
    uses the SQLite one only)."""
    sqlite_path = str(tmp_path_factory.mktemp("shared") / "chat.db")
    with postgres.database_for(request.param, sqlite_path) as db:
        srv = start_server(db=db)
        yield srv
        srv.stop()


@pytest.fixture
def server(shared_server: LiveServer) -> LiveServer:
    return shared_server


@pytest.fixture
def client(server: LiveServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=10) as c:
        yield c
