"""What the server changes in uvicorn, in one place, and the uvicorn settings it runs with.

The one module of chatctl that uses uvicorn's internals (``SUPPORTED``, pinned in
``pyproject.toml``; ``tests/server/test_protocol.py`` fails with one line naming that range
if what they rely on moves). What uvicorn offers as settings is used as settings
(``uvicorn_config``); the rest is here because no setting does it:

- ``uvicorn_config``: WebSockets on the ``websockets`` package (sans-I/O), no
  permessage-deflate, every frame bounded by the body limit, and uvicorn's keep-alive
  pings at ``ServerConfig.ping_interval``/``ping_timeout`` (this app sends none itself).
- ``ChatServer``: uvicorn's server, ending every Join stream with 1001 before uvicorn's own
  shutdown, which would close WebSockets with 1012 and wait forever on NDJSON streams,
  and announcing the Unix socket ``serve`` binds itself.
  Whoever runs the app another way should ``app.state.hub.end_all()`` first.
- ``http_protocol``: httptools' protocol with a deadline for each request head (uvicorn
  arms its keep-alive timer only after a response, so a connection that never sends a
  byte, or dribbles its headers, would hold a socket for ever), a byte limit on it
  (``ServerConfig.max_head_bytes``: httptools would gather a header value of any size),
  a bound on the connections waiting for one (``max_pending_heads``), a floor on the pace
  of each request body (``ServerConfig.body_timeout`` and ``body_min_rate``: a body
  slower than that is answered 408 by the edge, which this marks with ``BODY_TOO_SLOW``),
  and a response transport that sends a small answer's head and body in one write.
- ``ws_protocol``: uvicorn's WebSocket protocol on ``websockets``, answering a handshake
  that ``websockets`` refuses itself (a header line over 8 KiB) instead of hanging, and
  logging a text frame that is not UTF-8 (closed 1007) as one warning line, not an
  ERROR with a traceback: no client input puts a traceback in the log.

uvicorn settings weighed and not used for these: ``timeout_keep_alive`` is armed only
after a response (it still sets the head deadline's length); httptools takes no limit on
a head's size (``h11_max_incomplete_event_size`` is set, for h11 only); and
``limit_concurrency`` is checked only once a head is complete (it bounds no connection
still sending one), counts Join streams with requests, and answers 503 in text/plain.
"""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import socket
from collections.abc import Callable
from typing import Any
from urllib.parse import unquote

import uvicorn
from starlette.applications import Starlette

from chatctl.schema import EXTENSIONS_HEADER, SERVER_EXTENSIONS
from chatctl.server.config import ServerConfig
from chatctl.server.hub import Hub
from chatctl.wire import error_frame

__all__ = [
    "BODY_TOO_SLOW",
    "SUPPORTED",
    "ChatServer",
    "OneWrite",
    "http_protocol",
    "raw_answer",
    "uvicorn_config",
    "ws_protocol",
]

log = logging.getLogger("chatctl.server")

#: the uvicorn versions this module is written for (pyproject.toml pins the same range;
#: tests/server/test_protocol.py fails with one line naming it on any other).
SUPPORTED = ">=0.54.0,<0.55"

#: scope key set on a request whose body fell below the floor; the edge answers 408.
BODY_TOO_SLOW = "chatctl.body_too_slow"
#: seconds the app gets to answer a body marked too slow before the connection is cut.
_ANSWER_GRACE = 1.0
#: seconds a connection whose head was refused stays open after the 431 (reading paused,
#: its side shut), so that a client still sending its head reads the answer first.
_REFUSED_LINGER = 1.0
#: the most bytes of a request head, or of a body of unknown length, given to httptools at
#: once: a request pipelined behind an unanswered one stops the parsing within this.
_PIECE = 4096
#: what uvicorn logs, with a traceback, for a text frame that is not UTF-8 (which it
#: rightly closes with 1007): the client's doing, not a bug of the server.
_INVALID_UTF8 = "Invalid UTF-8 sequence received from client."


def uvicorn_config(app: Starlette, config: ServerConfig, **options: Any) -> uvicorn.Config:
    """A uvicorn config for the app with the keep-alive pings of ``config``."""
    options.setdefault("ws", ws_protocol())
    # No permessage-deflate: it would compress every fanned-out frame once per stream,
    # undoing encode-once, for text frames that are small anyway.
    options.setdefault("ws_per_message_deflate", False)
    options.setdefault("lifespan", "on")
    # A frame is a request: the same bound as an HTTP body (over it: close 1009).
    options.setdefault("ws_max_size", config.limits.max_body_bytes)
    # Without httptools (PyPy), h11 bounds a head in bytes by this instead.
    options.setdefault("h11_max_incomplete_event_size", config.max_head_bytes)
    return uvicorn.Config(
        app,
        ws_ping_interval=config.ping_interval,
        ws_ping_timeout=config.ping_timeout,
        **options,
    )


class ChatServer(uvicorn.Server):
    """uvicorn's server, ending every Join stream with 1001 before uvicorn's own shutdown
    (which would close WebSockets with 1012 and wait forever on NDJSON streams), and
    announcing the sockets given to it (``serve`` binds them), as uvicorn announces only
    the sockets it binds."""

    #: called once the sockets listen and the app has started (``serve``: systemd's READY).
    on_started: Callable[[], object] | None = None

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        scheme = "https" if self.config.is_ssl else "http"
        for sock in sockets or ():
            if sock.family == socket.AF_UNIX:
                log.info("listening on unix socket %s", sock.getsockname())
            else:  # as uvicorn says it for the sockets it binds itself
                host, port = sock.getsockname()[:2]
                shown = f"[{host}]" if ":" in host else host
                log.info("running on %s://%s:%d (Press CTRL+C to quit)", scheme, shown, port)
        if self.started and self.on_started is not None:
            self.on_started()

    async def shutdown(self, sockets: Any = None) -> None:
        app = self.config.app
        hub = getattr(getattr(app, "state", None), "hub", None)
        if isinstance(hub, Hub):
            hub.end_all()
            await hub.until_quiet(2.0)
        await super().shutdown(sockets)


def has_module(name: str) -> bool:
    return importlib.util.find_spec(name) is not None


def http_protocol(config: ServerConfig | None = None) -> type[asyncio.Protocol] | str:
    """uvicorn's httptools protocol with a deadline for each request head and a floor on
    the pace of each body (``config``'s; its defaults without one).

    A request head must be complete within ``timeout_keep_alive`` (5 s) of the connection
    opening or of the previous response. A body must be complete within
    ``body_timeout`` of its head plus one second per ``body_min_rate`` bytes received
    (the deadline moves on as bytes arrive, as Apache's ``RequestReadTimeout`` does, and
    starts again while the app is not reading: uvicorn has paused reading because the app
    left 64 KiB unread, as a bulk Send its rate limit holds back does): past it the
    request is marked ``BODY_TOO_SLOW`` and the app woken, which answers 408 and closes;
    an app already answering (a 429 before reading), or one that does not answer
    within a second, has the connection closed. A request pipelined behind another is not
    timed: its body is not read until the one before is answered. WebSocket streams are
    not limited. Without httptools, uvicorn's h11 protocol as it is.

    A body that arrives with its head (almost every one) costs no timer at all: the floor
    is armed only when the head's packets leave the body unfinished.

    A request head is counted in bytes as they arrive, before httptools gathers them
    (it would join a header value of any size): one over ``max_head_bytes`` is answered
    431 with m3o's error object and the connection closed (after a second with reading
    paused, so that a client still sending reads the answer). A head that begins within
    4 KiB of the end of the request before it, in the same read, is counted from there on,
    so a head is cut at most 4 KiB past the limit. At most ``max_pending_heads`` connections
    may be waiting for a head at once (opened and not yet sent one, or part way through
    the next one): a newcomer past that closes the one waiting longest, so a flood of
    connections that never finish a head holds a bounded number of sockets and bytes,
    and a client whose head comes in a round trip is still served. A connection idle
    between requests is not counted (the head deadline closes it). A malformed request
    is answered 400 in m3o's shape too.

    Requests are parsed one answer ahead: once a request waits behind an unanswered one
    (pipelined), the rest of what came is held, unparsed, until that one is answered
    (uvicorn would queue every request of a read at once: 7,000 tiny ones in 256 KiB,
    ~1 KiB of memory each, from a client that reads nothing). A head, and a body of
    unknown length, go to httptools 4 KiB at a time for that; a body of known length
    whole.
    """
    if not has_module("httptools"):
        return "h11"
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    settings = config or ServerConfig(db="")
    body_timeout, body_min_rate = settings.body_timeout, settings.body_min_rate
    max_head, max_pending = settings.max_head_bytes, max(1, settings.max_pending_heads)
    too_large = (
        f"request head over {max_head} bytes (max_head_bytes): send fewer or shorter headers"
    )
    #: connections waiting for a request head, the longest waiting first (this server's).
    pending: dict[HttpToolsProtocol, None] = {}

    class HeadDeadlineProtocol(HttpToolsProtocol):
        _head_timer: asyncio.TimerHandle | None = None
        _body_timer: asyncio.TimerHandle | None = None
        #: the newest request's body is still on its way, since ``_body_since`` (loop
        #: time); ``_body_bytes`` of it have come.
        _body_pending = False
        _body_since = 0.0
        _body_bytes = 0
        #: what comes next is a request head, of which ``_head_bytes`` have come.
        _awaiting_head = True
        _head_bytes = 0
        #: the head was refused (431): whatever else comes is not read.
        _refused = False
        #: bytes received and not yet parsed, held while a request waits behind another.
        _held = b""
        #: bytes of the current request's body still to come, when its length is known.
        _body_left: int | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm_head_timer()
            self._wait_for_head()

        def data_received(self, data: bytes) -> None:
            if self._refused:
                return
            if self._held:
                data, self._held = self._held + data, b""
            while data:
                if self.pipeline:
                    # A request waits behind an unanswered one: parse no further until
                    # it is answered (uvicorn has paused reading), or every tiny request
                    # in a 256 KiB read would be queued at once, ~1 KiB of memory each.
                    self._held = data
                    break
                # A head goes to the parser in pieces, so that it is counted before
                # httptools gathers it; a body of known length whole; any other in pieces.
                awaiting_head = self._awaiting_head
                if awaiting_head:
                    size = min(max_head - self._head_bytes, _PIECE)
                else:
                    size = max(self._body_left or 0, _PIECE)
                piece, data = data[:size], data[size:]
                if awaiting_head:
                    self._head_bytes += len(piece)
                super().data_received(piece)
                if (
                    self.parser is None
                    or self.transport.is_closing()
                    or self.transport.get_protocol() is not self
                ):
                    # Closed, or upgraded to a WebSocket (uvicorn hands over the head
                    # only; a client sends no frame before the 101 anyway).
                    return
                if self._awaiting_head and self._head_bytes >= max_head:
                    self._refuse_head()
                    return
            if self._awaiting_head and self._head_bytes and self not in pending:
                self._wait_for_head()  # part of the next head came: waiting again
            if self._body_pending and self._body_timer is None:
                self._arm_body_timer()

        def _wait_for_head(self) -> None:
            pending[self] = None
            if len(pending) > max_pending:
                oldest = next(iter(pending))
                del pending[oldest]
                log.debug("closing the connection waiting longest for a request head")
                oldest.transport.close()

        def _refuse_head(self) -> None:
            self._refused = True
            self._cancel_head_timer()
            cycle = self.cycle
            if self.pipeline or (cycle is not None and not cycle.response_complete):
                # An answer is still going out on this connection: no room for another.
                self.transport.close()
                return
            peer = f"{self.client[0]}:{self.client[1]} " if self.client else ""
            log.info("%srequest head over %d bytes: answered 431", peer, max_head)
            self.transport.write(raw_answer(431, too_large, self.server_state.default_headers))
            if self.transport.can_write_eof():
                self.transport.write_eof()
            self.flow.pause_reading()
            self._head_timer = self.loop.call_later(_REFUSED_LINGER, self.transport.close)

        def send_400_response(self, msg: str) -> None:
            # uvicorn's is text/plain; every other answer of this server is m3o's shape.
            detail = "invalid HTTP request: it does not parse as HTTP/1.1"
            self.transport.write(raw_answer(400, detail, self.server_state.default_headers))
            self.transport.close()

        def on_headers_complete(self) -> None:
            self._cancel_head_timer()
            self._awaiting_head = False
            self._head_bytes = 0
            pending.pop(self, None)
            before = self.cycle
            super().on_headers_complete()
            if self.cycle is not before:  # a new request (an upgrade makes none)
                self._body_left = _content_length(self.headers)
                self.cycle.transport = OneWrite(self.transport, self.loop)  # type: ignore[assignment]
                # Pipelined behind an unanswered request, its body waits on that one.
                self._body_pending = before is None or before.response_complete
                self._body_since = self.loop.time()
                self._body_bytes = 0

        def on_body(self, body: bytes) -> None:
            super().on_body(body)
            self._body_bytes += len(body)
            if self._body_left is not None:
                self._body_left -= len(body)

        def on_message_complete(self) -> None:
            super().on_message_complete()
            self._body_pending = False
            self._cancel_body_timer()
            self._awaiting_head = True  # what comes next is the next request's head
            self._body_left = None

        def on_response_complete(self) -> None:
            super().on_response_complete()
            # A pipelined request already has its head; otherwise wait for the next one.
            if not self.pipeline and not self.transport.is_closing():
                self._arm_head_timer()
                if self._held:
                    self.data_received(b"")  # on with what was held back

        def connection_lost(self, exc: Exception | None) -> None:
            pending.pop(self, None)
            self._cancel_head_timer()
            self._cancel_body_timer()
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

        def _body_deadline(self) -> float:
            return self._body_since + body_timeout + self._body_bytes / body_min_rate

        def _arm_body_timer(self, at: float | None = None) -> None:
            when = self._body_deadline() if at is None else at
            self._body_timer = self.loop.call_at(when, self._body_late)

        def _cancel_body_timer(self) -> None:
            if self._body_timer is not None:
                self._body_timer.cancel()
                self._body_timer = None

        def _body_late(self) -> None:
            self._body_timer = None
            cycle = self.cycle
            if not self._body_pending or cycle is None or self.transport.is_closing():
                return
            if self.flow.read_paused and not cycle.response_complete:
                # The app, still at work on the request, is not taking the body (a bulk
                # Send its rate limit holds back): the wait is the server's, so the
                # client's time starts again from now. (An app that has answered wants
                # none of the rest: that is the client's to finish in time.)
                self._body_since, self._body_bytes = self.loop.time(), 0
                self._arm_body_timer()
                return
            if self.loop.time() < self._body_deadline():
                self._arm_body_timer()  # bytes came meanwhile: the deadline moved on
                return
            if cycle.response_started or BODY_TOO_SLOW in cycle.scope:
                # Answered already (the rest of the body is not wanted), or the app did
                # not answer the 408 in time: nothing more to wait for.
                self.transport.close()
                return
            cycle.scope[BODY_TOO_SLOW] = True  # type: ignore[literal-required]
            cycle.message_event.set()  # the app's receive() returns; the edge answers 408
            self._arm_body_timer(self.loop.time() + _ANSWER_GRACE)

    return HeadDeadlineProtocol


def _content_length(headers: list[tuple[bytes, bytes]]) -> int | None:
    """A request's Content-Length (httptools has checked it), or None."""
    for name, value in headers:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


def raw_answer(code: int, detail: str, headers: list[tuple[bytes, bytes]]) -> bytes:
    """A whole HTTP answer with m3o's error object, closing the connection: for what the
    protocol refuses before any app sees a request. ``headers``: uvicorn's defaults (Date)."""
    from uvicorn.protocols.http.httptools_impl import STATUS_LINE

    body = error_frame("v1", code, detail).encode()
    lines = [STATUS_LINE[code]]
    lines += [b"%s: %s\r\n" % (name, value) for name, value in headers]
    lines += [
        b"content-type: application/json\r\n",
        b"content-length: %d\r\n" % len(body),
        b"connection: close\r\n",
        b"%s: %s\r\n" % (EXTENSIONS_HEADER.lower().encode(), ", ".join(SERVER_EXTENSIONS).encode()),
        b"\r\n",
        body,
    ]
    return b"".join(lines)


def ws_protocol() -> type[asyncio.Protocol]:
    """uvicorn's WebSocket protocol on ``websockets`` (sans-I/O), answering the handshakes
    ``websockets`` refuses itself and logging an invalid UTF-8 text frame on one line."""
    from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

    class JoinSocketProtocol(WebSocketsSansIOProtocol):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.logger = _ClientFaults(self.logger, self)  # type: ignore[assignment]

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if (
                not self.handshake_initiated
                and self.conn.handshake_exc is not None
                and not self.transport.is_closing()
            ):
                # websockets refused the request itself (a header line over 8 KiB, more
                # than 128 headers) and queued its answer, which uvicorn never sends: the
                # connection would hang until the client gave up.
                log.info("WS handshake refused: %s", self.conn.handshake_exc)
                self.transport.write(b"".join(self.conn.data_to_send()))
                self.transport.close()

        def handle_connect(self, event: Any) -> None:
            super().handle_connect(event)
            status = self.response.status_code
            if status != 101:
                # Refused by websockets (no Sec-WebSocket-Key...) before the app saw it,
                # so the app logs no line for it: this is the request's line.
                path = unquote(event.path.partition("?")[0])
                log.info("WS %s %d (%s)", path, status, self.conn.handshake_exc)

    return JoinSocketProtocol


class _ClientFaults:
    """A WebSocket protocol's logger, on which an invalid UTF-8 text frame (closed 1007)
    is one warning line instead of an ERROR with its traceback."""

    def __init__(self, logger: logging.Logger, protocol: Any) -> None:
        self._logger = logger
        self._protocol = protocol

    def exception(self, msg: object, *args: Any, **kwargs: Any) -> None:
        if msg == _INVALID_UTF8:
            scope = getattr(self._protocol, "scope", None)
            path = scope["path"] if scope else "?"
            log.warning("WS %s 1007: a text frame is not valid UTF-8; closed", path)
            return
        self._logger.exception(msg, *args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._logger, name)


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
