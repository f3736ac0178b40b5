"""The HTTP/WebSocket edge of the chat server: ``create_app(config)`` builds the Starlette app.

Everything about the wire lives here and nothing about the chat rules: paths (matched
case-insensitively, as m3o's gateway did), tokens, body limits, JSON parsing, the m3o error
object, the Join stream over WebSocket and over NDJSON, one access-log line per request.
The rules are ``rules.ChatService``; live fan-out is ``hub.Hub``.

Errors: ``{"id", "code", "detail", "status"}`` with HTTP status == code. The gateway's own
errors (the path, the token, the body as bytes: 401, 404 ``No such API``, 413, 400 for a
body that is not JSON) have id ``v1``; an endpoint's errors (validation, rules) have its id,
``chat.send``. A 500 is only ever a bug of ours, in the same shape.

Tenants: a token is never stored or logged; its SHA-256 is the tenant key in the store.

Keep-alive pings are *not* sent by this app: uvicorn sends them (``ws_ping_interval`` and
``ws_ping_timeout`` from ``ServerConfig.ping_interval``/``ping_timeout``; ``uvicorn_config``
below sets them), and answers the client's pings.

Shutdown: uvicorn closes WebSockets with 1012 and waits for streaming responses *before*
the lifespan shutdown runs, so streams must be ended first to get 1001 and to let NDJSON
streams finish. ``ChatServer`` (a ``uvicorn.Server``) does that; whoever runs uvicorn
another way should ``app.state.hub.end_all()`` before asking it to exit. The lifespan
shutdown ends any stream still open and closes the store.

Idle tracking for a watchdog: ``app.state.hub.active`` (open requests and streams),
``app.state.hub.idle_for()``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import uvicorn
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route, WebSocketRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from starlette.websockets import WebSocket, WebSocketDisconnect

from chatctl.errors import ChatctlError, reason_phrase
from chatctl.schema import (
    ENDPOINTS,
    EXTENSIONS_HEADER,
    SERVER_EXTENSIONS,
    Endpoint,
    ValidationError,
    endpoint_for,
    validate_request,
)
from chatctl.server.config import ServerConfig
from chatctl.server.hub import Hub, StreamEnded, Subscriber
from chatctl.server.openapi import openapi_document
from chatctl.server.rules import Admission, ChatService, RulesError, encode
from chatctl.server.store import SQLiteStore, Store

__all__ = ["ACCESS_LINE", "ChatServer", "create_app", "uvicorn_config"]

log = logging.getLogger("chatctl.server")

_CHAT_PREFIX = "/v1/chat/"
_JOIN = ENDPOINTS["Join"]
_MAX_IDEMPOTENCY_KEY = 255
#: seconds a call waits for a database another process holds (SQLite) before a 503.
LOCK_WAIT = 5.0

_T = TypeVar("_T")
#: the access log's format (this very object): method, path (never the query string),
#: status, ms. ``serve``'s log formatter knows a line of it needs no full token scrub.
ACCESS_LINE = "%s %s %s %.1fms"
#: scope key under which the access log leaves the server's own send for the Join writer.
_RAW_SEND = "chatctl.raw_send"
#: On every answer (errors, NDJSON Join, the WebSocket's 101): the extensions this server
#: has, so a client knows before sending one (contract part 2, "Chat-Extensions").
_EXTENSIONS = (EXTENSIONS_HEADER.lower().encode(), ", ".join(SERVER_EXTENSIONS).encode())


class _Refused(Exception):
    """An m3o error to answer with, raised anywhere on the edge."""

    def __init__(self, id: str, code: int, detail: str) -> None:
        super().__init__(detail)
        self.id = id
        self.code = code
        self.detail = detail

    def body(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "code": self.code,
            "detail": self.detail,
            "status": reason_phrase(self.code),
        }


class _JSONResponse(Response):
    """A JSON answer with its two headers made directly: Starlette's generic header
    building is a measurable part of a Send."""

    def __init__(self, body: bytes, status_code: int = 200) -> None:
        self.status_code = status_code
        self.body = body
        self.background = None
        self.raw_headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
        ]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send(
            {"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers}
        )
        await send({"type": "http.response.body", "body": self.body})


def _json(obj: object, status: int = 200) -> Response:
    return _JSONResponse(encode(obj).encode("utf-8"), status)


def _error(refused: _Refused) -> Response:
    return _json(refused.body(), refused.code)


def _no_such_api() -> _Refused:
    return _Refused("v1", 404, "No such API")


def _parse_json(raw: bytes | str, limit: int) -> Any:
    """A request body as JSON; empty means {} (m3o)."""
    if len(raw) > limit:
        raise _Refused("v1", 413, f"request body is larger than {limit} bytes (max_body_bytes)")
    if isinstance(raw, bytes):
        try:
            raw = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise _Refused("v1", 400, "request body is not valid UTF-8") from None
    if not raw.strip():
        return {}
    try:
        return json.loads(raw)
    except RecursionError:
        raise _Refused("v1", 400, "request body is nested too deeply") from None
    except ValueError as exc:
        raise _Refused("v1", 400, f"request body is not valid JSON: {exc}") from None


def _storage_unavailable(endpoint_id: str, exc: Exception) -> _Refused:
    # Disk full, read-only or locked: the transaction rolled back, so nothing changed and
    # the same request (same Idempotency-Key) may be retried once the store is writable.
    log.warning("%s: storage unavailable: %s", endpoint_id, exc)
    return _Refused(endpoint_id, 503, f"storage unavailable ({exc}); nothing was changed")


def _validate(
    endpoint: Endpoint, body: Any, config: ServerConfig, raw: bytes | str
) -> dict[str, Any]:
    try:
        request = validate_request(endpoint, body, config.limits)
    except ValidationError as exc:
        raise _Refused(endpoint.id, exc.code, exc.detail) from None
    # JSON may carry lone surrogates ("\ud800"), which no UTF-8 store or client can take.
    # Only a \u escape can make one (UTF-8 bytes cannot), so most bodies skip the check.
    escaped = b"\\u" in raw if isinstance(raw, bytes) else "\\u" in raw
    if not escaped:
        return request
    for name, value in request.items():
        items = value if isinstance(value, list) else [value]
        for item in items:
            if isinstance(item, str):
                try:
                    item.encode("utf-8")
                except UnicodeEncodeError:
                    raise _Refused(endpoint.id, 400, f"{name} is not valid Unicode") from None
    return request


class _Edge:
    """The request handlers, bound to one server's config, service and hub."""

    def __init__(self, config: ServerConfig, service: ChatService, hub: Hub) -> None:
        self.config = config
        self.service = service
        self.hub = hub
        #: the store's "database unavailable" errors, answered with 503.
        self.storage_errors = service.store.unavailable
        # Tenant keys are hashes, so the database never holds a token.
        self.tenants = {t: hashlib.sha256(t.encode()).hexdigest() for t in config.tokens}
        self.openapi = encode(openapi_document(config.limits)).encode("utf-8")

    def tenant_of(self, authorization: str | None) -> str | None:
        """The tenant of an Authorization header; None when refused."""
        if self.config.open:
            return ""
        if not authorization:
            return None
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer":
            return None
        return self.tenants.get(token.strip())

    # -- HTTP ---------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Every HTTP request, as a plain ASGI app: Starlette's request/response wrapper
        would add a layer of exception handling this edge already does."""
        try:
            response = await self._http(Request(scope, receive))
        except _Refused as refused:
            response = _error(refused)
        except ClientDisconnect:
            return  # nobody is left to read an answer
        await response(scope, receive, send)

    async def _http(self, request: Request) -> Response:
        path = request.scope["path"]  # not request.url: building a URL costs more than the insert
        method = request.method
        lowered = path.lower()
        if not lowered.startswith(_CHAT_PREFIX):
            if method in ("GET", "HEAD"):
                if lowered == "/health":
                    return _json({"status": "ok"})
                if lowered == "/openapi.json":
                    return Response(self.openapi, media_type="application/json")
            raise _no_such_api()
        endpoint = endpoint_for(path[len(_CHAT_PREFIX) :])
        if endpoint is None or method != "POST":
            raise _no_such_api()
        tenant = self.tenant_of(request.headers.get("authorization"))
        if tenant is None:
            raise _Refused("v1", 401, "Unauthorized")
        raw = await self._read_body(request)
        body = _parse_json(raw, self.config.limits.max_body_bytes)
        req = _validate(endpoint, body, self.config, raw)
        if endpoint is _JOIN:
            return await self._ndjson(tenant, req)
        key = request.headers.get("idempotency-key") if endpoint.mutating else None
        if key is not None and not (0 < len(key) <= _MAX_IDEMPOTENCY_KEY):
            raise _Refused(
                endpoint.id, 400, f"Idempotency-Key must be 1 to {_MAX_IDEMPOTENCY_KEY} characters"
            )
        try:
            if key is None and endpoint.name == "Send" and self.service.sends_async:
                # PostgreSQL: the loop serves other requests while this Send waits on the
                # database (one round trip); still answered only once committed.
                return _json(await self.service.send_async(tenant, req))
            return _json(
                await self._while_busy(lambda: self.service.call(endpoint.name, tenant, req, key))
            )
        except RulesError as exc:
            raise _Refused(endpoint.id, exc.code, exc.detail) from None
        except self.storage_errors as exc:
            raise _storage_unavailable(endpoint.id, exc) from None

    async def _read_body(self, request: Request) -> bytes:
        limit = self.config.limits.max_body_bytes
        too_large = _Refused(
            "v1", 413, f"request body is larger than {limit} bytes (max_body_bytes)"
        )
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            raise too_large
        # Content-Length may be absent (chunked) or wrong: count what actually arrives.
        # Read from receive() directly: a body is almost always one message, and
        # Starlette's stream() generator costs more than the read itself.
        chunks: list[bytes] = []
        size = 0
        receive = request.receive
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise ClientDisconnect()
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise too_large
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    async def _while_busy(self, call: Callable[[], _T]) -> _T:
        """``call()``, tried again while another process holds the database (SQLite): the
        store waits only briefly, so the loop serves everyone else in between. A busy call
        changed nothing, so trying again is safe. After ``LOCK_WAIT`` s, the error stands."""
        deadline = time.monotonic() + LOCK_WAIT
        pause = 0.005
        while True:
            try:
                return call()
            except self.storage_errors as exc:
                if not self.service.store.is_busy(exc) or time.monotonic() >= deadline:
                    raise
            await asyncio.sleep(pause)
            pause = min(pause * 2, 0.1)

    async def _admit(self, tenant: str, req: dict[str, Any]) -> tuple[Admission, Subscriber]:
        try:
            admission = await self._while_busy(lambda: self.service.join(tenant, req))
        except RulesError as exc:
            raise _Refused(_JOIN.id, exc.code, exc.detail) from None
        except self.storage_errors as exc:
            raise _storage_unavailable(_JOIN.id, exc) from None
        # Subscribe before anything is replayed (and before any await), so a message
        # stored meanwhile is in the live queue, at worst twice, never missing.
        sub = self.hub.subscribe(
            tenant, admission.room.id, admission.user_id, admission.events, admission.include_own
        )
        return admission, sub

    async def _ndjson(self, tenant: str, req: dict[str, Any]) -> Response:
        admission, sub = await self._admit(tenant, req)
        return _NDJSONStream(self, admission, sub)

    async def stream(
        self, admission: Admission, sub: Subscriber, write: Callable[[str], Awaitable[None]]
    ) -> None:
        """Replay, then go live, until the stream ends; raises StreamEnded at the end."""
        last = 0
        try:
            for chunk in self.service.replay(admission):
                for _seq, frame in chunk:
                    await write(frame)
                last = chunk[-1][0]
                if sub.ended:
                    break  # kicked, deleted or too slow meanwhile: stop replaying
            while True:
                for seq, frame in await sub.next_batch():
                    # seq 0 is an event; a message at or before `last` was replayed.
                    if seq and seq <= last:
                        continue
                    await write(frame)
        finally:
            self.hub.unsubscribe(sub)

    # -- WebSocket ----------------------------------------------------------------------

    async def websocket(self, ws: WebSocket) -> None:
        tenant = self.tenant_of(ws.headers.get("authorization"))
        offered: list[str] = list(ws.scope.get("subprotocols") or [])
        subprotocol = None
        if offered:
            if self.config.open:
                # A browser fails the handshake unless one offered protocol is chosen.
                subprotocol = offered[0]
            elif tenant is None:
                for candidate in offered:
                    tenant = self.tenants.get(candidate)
                    if tenant is not None:
                        subprotocol = candidate
                        break
        await ws.accept(subprotocol=subprotocol)
        try:
            if ws.scope["path"].lower() != _CHAT_PREFIX + "join":
                raise _no_such_api()
            if tenant is None:
                raise _Refused("v1", 401, "Unauthorized")
            try:
                first = await asyncio.wait_for(ws.receive(), self.config.join_request_timeout)
            except TimeoutError:
                raise _Refused(
                    "v1",
                    408,
                    f"no Join request within {self.config.join_request_timeout:g} seconds;"
                    " send the JoinRequest as the first frame",
                ) from None
            if first["type"] == "websocket.disconnect":
                return
            raw = first.get("text")
            if raw is None:
                raw = first.get("bytes") or b""
            body = _parse_json(raw, self.config.limits.max_body_bytes)
            req = _validate(_JOIN, body, self.config, raw)
            admission, sub = await self._admit(tenant, req)
        except _Refused as refused:
            with contextlib.suppress(WebSocketDisconnect, RuntimeError):
                await ws.send_text(encode(refused.body()))
                await ws.close(4000 + refused.code, refused.detail[:120])
            return
        except WebSocketDisconnect:
            return
        raw_send: Send | None = ws.scope.get(_RAW_SEND)
        write: Callable[[str], Awaitable[None]] = ws.send_text
        if raw_send is not None:
            # Frames go straight to the server's send: Starlette's WebSocket and exception
            # wrappers add a few calls per frame, and a fan-out multiplies them by every
            # stream of the room. accept() and close() still go through Starlette.
            async def write(frame: str) -> None:
                await raw_send({"type": "websocket.send", "text": frame})

        watcher = asyncio.create_task(_watch_disconnect(ws, sub))
        try:
            await self.stream(admission, sub, write)
        except StreamEnded as end:
            if end.code is not None:
                with contextlib.suppress(WebSocketDisconnect, RuntimeError):
                    if end.frame:
                        await ws.send_text(end.frame)
                    await ws.close(end.code, end.reason[:120])
        except (WebSocketDisconnect, OSError):
            pass  # the client went away (uvicorn's ClientDisconnected is an OSError)
        finally:
            watcher.cancel()


async def _watch_disconnect(ws: WebSocket, sub: Subscriber) -> None:
    """Read (and ignore) what the client sends, to learn at once when it goes away."""
    with contextlib.suppress(Exception):
        while True:
            message = await ws.receive()
            if message["type"] == "websocket.disconnect":
                break
    sub.end(StreamEnded(None))


class _NDJSONStream(Response):
    """A Join stream as newline-delimited JSON: one JoinResponse per line, sent as it comes."""

    media_type = "application/x-ndjson"

    def __init__(self, edge: _Edge, admission: Admission, sub: Subscriber) -> None:
        super().__init__(status_code=200, media_type=self.media_type)
        # Streamed: no Content-Length; and ask proxies not to buffer lines.
        self.raw_headers = [
            (b"content-type", b"application/x-ndjson"),
            (b"cache-control", b"no-cache"),
            (b"x-accel-buffering", b"no"),
        ]
        self.edge = edge
        self.admission = admission
        self.sub = sub

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        sub = self.sub

        async def watch() -> None:
            with contextlib.suppress(Exception):
                while (await receive())["type"] != "http.disconnect":
                    pass
            sub.end(StreamEnded(None))

        async def write(frame: str) -> None:
            await send(
                {"type": "http.response.body", "body": (frame + "\n").encode(), "more_body": True}
            )

        watcher = asyncio.create_task(watch())
        try:
            await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
            try:
                await self.edge.stream(self.admission, sub, write)
            except StreamEnded as end:
                if end.code is not None and end.frame:
                    await write(end.frame)
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except OSError:
            pass  # the client went away mid-write
        finally:
            watcher.cancel()
            self.edge.hub.unsubscribe(sub)


class _AccessLog:
    """One log line per request (method, path, status, ms); counts activity for the hub.

    With ``crash``, it also answers a bug (any exception before the response started)
    with the m3o-shaped 500, as Starlette's ServerErrorMiddleware does, and re-raises it.
    """

    def __init__(self, app: ASGIApp, hub: Hub, crash: bool = False) -> None:
        self.app = app
        self.hub = hub
        self.crash = crash

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self.app(scope, receive, send)
            return
        if scope["type"] == "websocket":
            scope[_RAW_SEND] = send
        hub = self.hub
        hub.active += 1
        started = time.perf_counter()
        status = 0

        async def send_and_note(message: Message) -> None:
            nonlocal status
            kind = message["type"]
            if kind == "http.response.start":
                status = message["status"]
                message = {**message, "headers": [*message.get("headers", ()), _EXTENSIONS]}
            elif kind == "websocket.accept":
                status = 101
                message = {**message, "headers": [*message.get("headers", ()), _EXTENSIONS]}
            elif kind == "websocket.close" and status in (0, 101):
                status = message.get("code", 1000)
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        except Exception as exc:
            if self.crash:
                response = await _crash(Request(scope), exc)
                if not status:
                    await response(scope, receive, send_and_note)
            raise
        finally:
            hub.active -= 1
            hub.touch()
            if log.isEnabledFor(logging.INFO):
                method = scope.get("method", "WS")
                log.info(
                    ACCESS_LINE,
                    method,
                    scope["path"],
                    status or 500,
                    (time.perf_counter() - started) * 1000,
                )


async def _gateway_error(request: Request, exc: Exception) -> Response:
    # Starlette's own 404/405 (an odd method): the gateway knows no such API.
    return _error(_no_such_api())


async def _crash(request: Request, exc: Exception) -> Response:
    log.error("internal error on %s %s", request.method, request.url.path, exc_info=exc)
    return _json(
        {"id": "v1", "code": 500, "detail": "internal server error", "status": reason_phrase(500)},
        500,
    )


class _App(Starlette):
    """Starlette for WebSockets and the lifespan; HTTP requests go straight to the edge
    under the access log, which also turns a bug into the 500. Starlette's middleware
    stack, router and exception wrappers were a sixth of a Send's CPU, for one route that
    takes every path and an edge that answers every error itself."""

    http: ASGIApp

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            scope["app"] = self
            await self.http(scope, receive, send)
        else:
            await super().__call__(scope, receive, send)


def create_app(config: ServerConfig) -> Starlette:
    """The chat server as an ASGI app; ``app.state`` holds ``config``, ``store``, ``hub``,
    ``service``."""
    store, hub = _open_store(config)
    service = ChatService(store, hub, config.limits)
    edge = _Edge(config, service, hub)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await hub.start()
        purger = asyncio.create_task(_purge_deleted_rooms(store))
        try:
            yield
        finally:
            purger.cancel()
            hub.end_all()
            # Let stream handlers write their close frames before the store goes away.
            await _wait_for(lambda: hub.active == 0, 1.0)
            await hub.stop()
            store.close()

    app = _App(
        routes=[
            # An ASGI app as endpoint: every method reaches it (unknown ones get 404).
            # Only for whoever calls the router itself: _App sends HTTP to the edge.
            Route("/{path:path}", edge),
            WebSocketRoute("/{path:path}", edge.websocket),
        ],
        middleware=[Middleware(_AccessLog, hub=hub)],
        exception_handlers={HTTPException: _gateway_error, Exception: _crash},
        lifespan=lifespan,
    )
    app.http = _AccessLog(edge, hub, crash=True)
    app.state.config = config
    app.state.store = store
    app.state.hub = hub
    app.state.service = service
    return app


def _open_store(config: ServerConfig) -> tuple[Store, Hub]:
    """SQLite for a path; PostgreSQL (shared by replicas) for a ``postgresql://`` URL,
    imported only then, since psycopg is an optional extra."""
    if config.db.startswith(("postgresql://", "postgres://")):
        try:
            from chatctl.server.hub_pg import PostgresHub
            from chatctl.server.store_pg import PostgresStore
        except ImportError as exc:
            raise ChatctlError(
                f"serving from PostgreSQL needs psycopg ({exc}): pip install 'chatctl[postgres]'"
            ) from None

        try:
            pg = PostgresStore(config.db)
        except PostgresStore.unavailable as exc:
            raise ChatctlError(
                f"cannot connect to PostgreSQL at {_without_password(config.db)}: "
                + (str(exc).strip().splitlines() or ["no answer"])[-1],
                hint="is PostgreSQL running and the URL right? check --db",
            ) from None
        return pg, PostgresHub(pg, config.stream_queue)
    try:
        return SQLiteStore(config.db), Hub(config.stream_queue)
    except (OSError, sqlite3.Error) as exc:
        raise ChatctlError(
            f"cannot open the database {config.db}: {exc}",
            hint="the file and its directory must be writable (SQLite writes a WAL beside it);"
            " choose another with --db PATH",
        ) from None


def _without_password(url: str) -> str:
    """A database URL fit for an error message: its password replaced by ***."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return parts._replace(netloc=netloc).geturl()


#: seconds between looks for a deleted room's messages to remove.
PURGE_INTERVAL = 0.5


async def _purge_deleted_rooms(store: Store) -> None:
    """Remove what deleted rooms left behind, a chunk at a time, letting requests and
    streams run between chunks."""
    while True:
        try:
            while store.purge_step():
                await asyncio.sleep(0)
        except store.unavailable as exc:  # full or locked: the next round tries again
            log.warning("purging deleted rooms' messages failed: %s", exc)
        except Exception:  # a bug here must not end the purging for good, nor go unseen
            log.exception("purging deleted rooms' messages failed")
        await asyncio.sleep(PURGE_INTERVAL)


async def _wait_for(condition: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition() and time.monotonic() < deadline:
        await asyncio.sleep(0.01)


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
            await _wait_for(lambda: hub.active == 0, 2.0)
        await super().shutdown(sockets)
