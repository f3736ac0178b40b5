"""One log line per request, activity counts for the idle watchdog, and bugs as a 500.

``AccessLog`` wraps the app (HTTP and WebSocket): it gives each request its id
(``logline.request_id``: a sane incoming ``X-Request-ID``, else a new one) and puts it on
the answer and the WebSocket handshake as ``X-Request-ID``; logs one line per request when
it ends (``logline.ACCESS_LINE``: method, path (never the query string, where tokens may
travel), status (499 when the client left before an answer), milliseconds, client, request
id, tenant, user and token id; ``serve``'s formatters know such a line), the probes
(``/health``, ``/ready``, ``/metrics``) at debug; counts and times it for ``/metrics``
(``--metrics``); counts open requests and streams on the hub (``hub.active``), puts the
``Chat-Extensions`` header on every answer and WebSocket handshake, and, with ``crash``,
answers an exception raised before the response started with m3o's 500 shape, logging
its traceback, as Starlette's ServerErrorMiddleware would.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from chatctl.schema import EXTENSIONS_HEADER, SERVER_EXTENSIONS
from chatctl.server.answers import JSONAnswer
from chatctl.server.decode import Refusal, no_such_api
from chatctl.server.hub import Hub
from chatctl.server.logline import (
    ACCESS_LINE,
    PROBES,
    REQUEST_ID,
    STARTED,
    STREAM,
    STREAM_LINE,
    access_args,
    request_id,
)
from chatctl.server.streams import RAW_SEND

if TYPE_CHECKING:
    from chatctl.server.metrics import Metrics

__all__ = ["ACCESS_LINE", "AccessLog", "crash", "gateway_error"]

log = logging.getLogger("chatctl.server")

#: the status logged for a request the client left (or the protocol answered, as a body
#: that does not parse) before the app answered: nginx's "client closed request".
CLIENT_GONE = 499
#: On every answer (errors, NDJSON Join, the Join WebSocket's 101): the extensions this
#: server has, so that a client knows before it sends one (contract part 3).
EXTENSIONS = (EXTENSIONS_HEADER.lower().encode(), ", ".join(SERVER_EXTENSIONS).encode())


class AccessLog:
    def __init__(
        self, app: ASGIApp, hub: Hub, crash: bool = False, metrics: Metrics | None = None
    ) -> None:
        self.app = app
        self.hub = hub
        self.crash = crash
        #: counts and times every request (``--metrics``), or None.
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self.app(scope, receive, send)
            return
        if scope["type"] == "websocket":
            scope[RAW_SEND] = send
        hub = self.hub
        hub.active += 1
        started = scope[STARTED] = time.perf_counter()
        status = 0
        rid = scope[REQUEST_ID] = request_id(scope)
        headers_out = (EXTENSIONS, (b"x-request-id", rid.encode()))

        async def send_and_note(message: Message) -> None:
            nonlocal status
            kind = message["type"]
            if kind in ("http.response.start", "websocket.http.response.start"):
                status = message["status"]
                message = {**message, "headers": [*message.get("headers", ()), *headers_out]}
            elif kind == "websocket.accept":
                status = 101
                message = {**message, "headers": [*message.get("headers", ()), *headers_out]}
            elif kind == "websocket.close" and status == 101:
                status = message.get("code", 1000)
            elif kind == "websocket.close" and status == 0:
                status = 403  # closed before accepting: the handshake is answered 403
            await send(message)

        failed = False
        try:
            await self.app(scope, receive, send_and_note)
        except Exception as exc:
            failed = True
            if self.crash:
                response = await crash(Request(scope), exc)
                if not status:
                    await response(scope, receive, send_and_note)
            raise
        finally:
            hub.active -= 1
            hub.touch()
            # No answer and no bug: the client went away first (nginx's 499).
            status = status or (500 if failed else CLIENT_GONE)
            took = time.perf_counter() - started
            metrics = self.metrics
            if metrics is not None:
                # A WebSocket, or an NDJSON Join (its answer streams until the end).
                stream = scope["type"] == "websocket" or STREAM in scope
                metrics.request(scope["path"], status, took, stream)
            path = scope["path"]
            level = logging.DEBUG if path.lower() in PROBES else logging.INFO
            if log.isEnabledFor(level):
                line = ACCESS_LINE if STREAM not in scope else STREAM_LINE
                log.log(level, line, *access_args(scope, status, took * 1000))


async def gateway_error(request: Request, exc: Exception) -> Response:
    """Starlette's own 404/405 (an odd method): the gateway knows no such API."""
    return JSONAnswer.error(no_such_api())


async def crash(request: Request, exc: Exception) -> Response:
    """A bug of ours: logged with its traceback, answered with m3o's 500 shape."""
    log.error("internal error on %s %s", request.method, request.url.path, exc_info=exc)
    return JSONAnswer.error(Refusal("v1", 500, "internal server error"))
