"""Async helpers for the stream tests: unary calls, joining, reading frames with deadlines."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from tests.server.conftest import LiveServer

#: WebSockets opened by the running scenario, closed by ``run`` whatever happens.
_open: list[ClientConnection] = []


def run(scenario: Callable[[], Awaitable[None]]) -> None:
    """Run an async test scenario, then close every WebSocket it left open."""

    async def main() -> None:
        try:
            await scenario()
        finally:
            for ws in _open:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(ws.close(), 2)
            _open.clear()

    asyncio.run(main())


async def open_ws(srv: LiveServer, path: str, **kw: Any) -> ClientConnection:
    ws = await connect(srv.ws_url + path, **kw)
    _open.append(ws)
    return ws


async def call(
    http: httpx.AsyncClient, endpoint: str, body: Any = None, **kw: Any
) -> dict[str, Any]:
    r = await http.post(f"/v1/chat/{endpoint}", json=body or {}, **kw)
    assert r.status_code == 200, r.text
    data: dict[str, Any] = r.json()
    return data


async def join(
    srv: LiveServer,
    body: dict[str, Any],
    *,
    headers: dict[str, str] | None = None,
    subprotocols: list[str] | None = None,
    wait: bool = True,
    **kw: Any,
) -> ClientConnection:
    """Open a Join WebSocket, send the request, and (by default) wait until the server
    has the stream subscribed, so that what is sent next is live for it."""
    before = srv.app.state.hub.streams
    ws = await open_ws(
        srv,
        "/v1/chat/Join",
        additional_headers=headers,
        subprotocols=subprotocols,  # type: ignore[arg-type]
        **kw,
    )
    # The server may refuse before reading the request (no token): the refusal is then
    # what the caller reads next.
    with contextlib.suppress(ConnectionClosed):
        await ws.send(json.dumps(body))
    if wait:
        await until(lambda: srv.app.state.hub.streams > before)
    return ws


async def until(condition: Callable[[], Any], timeout: float = 5.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        await asyncio.sleep(0.002)


class Ticker:
    """Counts the event loop's turns while in use: a loop held up by a call counts few."""

    def __init__(self) -> None:
        self.ticks = 0
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        while True:
            self.ticks += 1
            await asyncio.sleep(0.01)

    def __enter__(self) -> Ticker:
        self._task = asyncio.get_running_loop().create_task(self._run())
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()


async def frame(ws: ClientConnection, timeout: float = 5.0) -> dict[str, Any]:
    raw = await asyncio.wait_for(ws.recv(), timeout)
    data: dict[str, Any] = json.loads(raw)
    return data


async def closed(ws: ClientConnection, timeout: float = 5.0) -> tuple[list[dict[str, Any]], int]:
    """Read until the server closes; the frames read and the close code."""
    frames = []
    try:
        while True:
            frames.append(await frame(ws, timeout))
    except ConnectionClosed as exc:
        assert exc.rcvd is not None, "closed without a close frame"
        return frames, exc.rcvd.code
