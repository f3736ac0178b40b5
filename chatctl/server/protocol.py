"""What the server changes in uvicorn, in one place, and the uvicorn settings it runs with.

These lean on uvicorn's internals (pinned in ``pyproject.toml`` to the versions they are
tested on; ``tests/server/test_protocol.py`` fails loudly if what they rely on moves):

- ``uvicorn_config``: WebSockets on the ``websockets`` package (sans-I/O), no
  permessage-deflate, every frame bounded by the body limit, and uvicorn's keep-alive
  pings at ``ServerConfig.ping_interval``/``ping_timeout`` (this app sends none itself).
- ``ChatServer``: uvicorn's server, ending every Join stream with 1001 before uvicorn's own
  shutdown, which would close WebSockets with 1012 and wait forever on NDJSON streams.
  Whoever runs the app another way should ``app.state.hub.end_all()`` first.
- ``http_protocol``: httptools' protocol with a deadline for each request head (uvicorn
  arms its keep-alive timer only after a response, so a connection that never sends a
  byte, or dribbles its headers, would hold a socket for ever), and a response transport
  that sends a small answer's head and body in one write.
"""

from __future__ import annotations

import asyncio
import importlib.util
from typing import Any

import uvicorn
from starlette.applications import Starlette

from chatctl.server.config import ServerConfig
from chatctl.server.hub import Hub

__all__ = ["ChatServer", "OneWrite", "http_protocol", "uvicorn_config"]


def uvicorn_config(app: Starlette, config: ServerConfig, **options: Any) -> uvicorn.Config:
    """A uvicorn config for the app with the keep-alive pings of ``config``."""
    options.setdefault("ws", "websockets-sansio")
    # No permessage-deflate: it would compress every fanned-out frame once per stream,
    # undoing encode-once, for text frames that are small anyway.
    options.setdefault("ws_per_message_deflate", False)
    options.setdefault("lifespan", "on")
    # A frame is a request: the same bound as an HTTP body (over it: close 1009).
    options.setdefault("ws_max_size", config.limits.max_body_bytes)
    return uvicorn.Config(
        app,
        ws_ping_interval=config.ping_interval,
        ws_ping_timeout=config.ping_timeout,
        **options,
    )


class ChatServer(uvicorn.Server):
    """uvicorn's server, ending every Join stream with 1001 before uvicorn's own shutdown
    (which would close WebSockets with 1012 and wait forever on NDJSON streams)."""

    async def shutdown(self, sockets: Any = None) -> None:
        app = self.config.app
        hub = getattr(getattr(app, "state", None), "hub", None)
        if isinstance(hub, Hub):
            hub.end_all()
            await hub.until_quiet(2.0)
        await super().shutdown(sockets)


def has_module(name: str) -> bool:
    return importlib.util.find_spec(name) is not None


def http_protocol() -> type[asyncio.Protocol] | str:
    """uvicorn's httptools protocol with a deadline for each request head.

    A request head must be complete within ``timeout_keep_alive`` (5 s) of the connection
    opening or of the previous response; the body and WebSocket streams are not limited.
    Without httptools, uvicorn's h11 protocol as it is.
    """
    if not has_module("httptools"):
        return "h11"
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    class HeadDeadlineProtocol(HttpToolsProtocol):
        _head_timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm_head_timer()

        def on_headers_complete(self) -> None:
            self._cancel_head_timer()
            before = self.cycle
            super().on_headers_complete()
            if self.cycle is not before:  # a new request (an upgrade makes none)
                self.cycle.transport = OneWrite(self.transport, self.loop)  # type: ignore[assignment]

        def on_response_complete(self) -> None:
            super().on_response_complete()
            # A pipelined request already has its head; otherwise wait for the next one.
            if not self.pipeline and not self.transport.is_closing():
                self._arm_head_timer()

        def connection_lost(self, exc: Exception | None) -> None:
            self._cancel_head_timer()
            super().connection_lost(exc)

        def _arm_head_timer(self) -> None:
            self._cancel_head_timer()
            self._head_timer = self.loop.call_later(self.timeout_keep_alive, self._head_late)

        def _cancel_head_timer(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None

        def _head_late(self) -> None:
            self._head_timer = None
            if not self.transport.is_closing():
                self.transport.close()

    return HeadDeadlineProtocol


class OneWrite:
    """A response's transport that sends its head and body in one write.

    uvicorn writes the status line and headers as soon as the app sends
    ``http.response.start``, then the body: two syscalls and two TCP segments for every
    small JSON answer. The head is held instead, joined to the first body write; if no
    body follows within this turn of the event loop (a stream waiting for its first
    frame), it goes out alone at the end of the turn.
    """

    __slots__ = ("_first", "_held", "_loop", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._first = True
        self._held: bytes | None = None

    def write(self, data: bytes) -> None:
        held = self._held
        if held is not None:
            self._held = None
            self._transport.write(held + data)
        elif self._first:
            # The first write is the head: hold it until the body or the end of this turn.
            self._first = False
            self._held = data
            self._loop.call_soon(self._flush)
        else:
            self._transport.write(data)

    def _flush(self) -> None:
        held = self._held
        if held is not None:
            self._held = None
            if not self._transport.is_closing():
                self._transport.write(held)

    def close(self) -> None:
        self._flush()
        self._transport.close()

    def is_closing(self) -> bool:
        return self._transport.is_closing()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)
