"""The HTTP edge: paths, the token, the body, validation, and the answer or m3o's error.

``Edge`` is a plain ASGI app for every HTTP request (the Join WebSocket is in
``streams``). It knows the wire and nothing of the chat rules, which are
``rules.ChatService``:

- Paths are matched case-insensitively, as m3o's gateway did: ``POST /v1/chat/{Endpoint}``,
  ``GET /health`` (never touches the database: the process serves), ``GET /ready``
  (``ready``: the database answers within its timeout, a replica hears the others, the
  server is not shutting down) and ``GET /openapi.json``. Another method
  on them is 405 with ``Allow`` (``_other_method``), but ``OPTIONS``, answered 204 with
  ``Allow`` before any token is checked: a browser's CORS preflight (``cors`` adds what a
  preflight needs for the origins it allows). An unknown path is 404 ``No such API``.
- Both of m3o's editions (``editions``): a request naming ``group_id`` is answered in the
  group edition, its refusals worded in it (``decode.Refusal.in_edition``); Create and
  List in the server's edition.
- An open server refuses a browser's request from an origin it does not allow (``cors``).
- ``authenticate`` is the one place a credential becomes an identity: a
  ``tokens.Principal`` (its tenant, the user a user token acts as, and the token's id),
  ``tokens.OPEN`` on an open server. Then, in this order: the token's rate limit (429
  with ``Retry-After``; unary calls only), the body (408 when it trickles in, see
  ``protocol``), then ``decode.decode`` as for every request: parsed, its edition,
  ``access.bind`` (a user token's ``user_id`` filled in, another user 403), validation;
  the rules get the principal as the actor and apply the rest of ``access`` (who may do
  what to a room, what List shows), and a user token's
  ``Idempotency-Key`` is scoped to it (``access.idempotency_scope``).
- Errors are m3o's object, ``{"id", "code", "detail", "status"}`` with HTTP status ==
  code. The gateway's own (the path, the token, the body as bytes: 401, 404 ``No such
  API``, 413, 400 for a body that is not JSON) have id ``v1``; an endpoint's (validation,
  rules) have its id, ``chat.send``. The rules' refusals map to statuses in ``decode.STATUS``.
  Storage failing is 503 with a generic detail; its cause, which may name internal hosts,
  goes to the server's log only. A 500 is only ever a bug of ours (``accesslog``).
- ``Whoami`` (the ``whoami`` extension) is answered from the principal alone
  (``access.whoami``): no storage, no room.
- A History of any size is sent as the rules read it, part by part, without a
  Content-Length; every other answer is one body with its length.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from chatctl.schema import ENDPOINTS, Endpoint, endpoint_for
from chatctl.server import access
from chatctl.server.answers import JSONAnswer, StreamedAnswer
from chatctl.server.bulk import bulk_send
from chatctl.server.config import ServerConfig
from chatctl.server.cors import Origins
from chatctl.server.decode import (
    Refusal,
    decode,
    is_ndjson,
    no_such_api,
    too_large,
)
from chatctl.server.domain import REFUSALS, Refused, Unavailable
from chatctl.server.editions import ROOM, Edition, answer_in
from chatctl.server.hub import Hub
from chatctl.server.logline import PRINCIPAL
from chatctl.server.openapi import openapi_document
from chatctl.server.protocol import BODY_TOO_SLOW
from chatctl.server.ratelimit import RateLimiter, over_rate, share
from chatctl.server.rules import Answer, ChatService
from chatctl.server.tokens import OPEN, Principal
from chatctl.wire import encode

if TYPE_CHECKING:
    from chatctl.server.metrics import Metrics

__all__ = ["Edge"]

log = logging.getLogger("chatctl.server")

CHAT_PREFIX = "/v1/chat/"
JOIN = ENDPOINTS["Join"]
JOIN_ROOMS = ENDPOINTS["JoinRooms"]
#: the endpoints that are streams (a WebSocket, or NDJSON for a POST).
STREAMS = (JOIN, JOIN_ROOMS)
WHOAMI = ENDPOINTS["Whoami"]
_MAX_IDEMPOTENCY_KEY = 255


#: the methods of the API's endpoints, and of /health, /ready and /openapi.json (``Allow``).
ALLOW_POST = "POST"
ALLOW_GET = "GET, HEAD"


def _other_method(method: str, allow: str) -> Response:
    """``OPTIONS`` (a CORS preflight, or a client asking): 204 with ``Allow``. Any other
    method the path does not take: 405, with ``Allow``."""
    if method == "OPTIONS":
        return Response(status_code=204, headers={"Allow": allow})
    raise Refusal("v1", 405, f"method {method} not allowed here: use {allow}", {"Allow": allow})


def origin_refused(origin: str, open_server: bool = True) -> str:
    """Why a browser origin was refused, and the flag that would allow it."""
    if open_server:
        return (
            f"origin {origin} is not allowed (a server without tokens serves only the web"
            f" pages it allows: chatctl serve --cors-origin {origin})"
        )
    return (
        f"origin {origin} is not allowed to open a Join WebSocket (this server allows only"
        f" the web pages of its --cors-origin list; to allow this one: chatctl serve"
        f" --cors-origin {origin})"
    )


def bearer(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer …`` header."""
    if not authorization:
        return None
    scheme, _, token = authorization.partition(" ")
    return token.strip() if scheme.lower() == "bearer" else None


class Edge:
    """The request handlers, bound to one server's config, rules and hub."""

    def __init__(self, config: ServerConfig, service: ChatService, hub: Hub) -> None:
        self.config = config
        self.service = service
        self.hub = hub
        #: who each token is (None: an open server, where everyone is ``tokens.OPEN``).
        self.registry = config.registry
        #: each token's request bucket (None: no rate limit).
        self.limiter = (
            None
            if config.rate_limit is None
            else RateLimiter(
                config.rate_limit / config.replicas, share(config.rate_burst, config.replicas)
            )
        )
        self.openapi = encode(openapi_document(config.limits, config.m3o_edition)).encode()
        #: the browser origins allowed (``--cors-origin``), and the default edition.
        self.origins = Origins(config.cors_origins)
        self.edition = config.m3o_edition
        #: ``GET /metrics`` (``server.metrics.Metrics``), set by the app with ``--metrics``.
        self.metrics: Metrics | None = None
        #: a Join over NDJSON (``streams.JoinStreams.ndjson``), set by the app.
        self.join_ndjson: Callable[
            [Principal, dict[str, Any], Edition, Endpoint], Awaitable[Response]
        ]

    def authenticate(self, token: str | None) -> Principal | None:
        """Who a bearer token is, or None when it is refused: the principal of a token the
        server accepts (tenant keys are hashes, so the database never holds a token), or
        ``tokens.OPEN`` (the one tenant, an admin) on an open server."""
        registry = self.registry
        if registry is None:
            return OPEN
        if not token:
            return None
        return registry.authenticate(token)

    def still_accepted(self, principal: Principal) -> bool:
        """False once the principal's token was revoked (or its line changed)."""
        return self.registry is None or self.registry.accepts(principal)

    def rate_limit(self, principal: Principal) -> None:
        """Count a call against its token's bucket; 429 with Retry-After when it is empty
        (nothing read, nothing done)."""
        limiter = self.limiter
        if limiter is None:
            return
        wait = limiter.check(principal.token_id)
        if wait:
            REFUSALS["rate_limit"] += 1
            # The token's whole budget: the replicas' shares together.
            detail, headers = over_rate(limiter.rate * self.config.replicas, wait)
            raise Refusal("v1", 429, detail, headers)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Every HTTP request, as a plain ASGI app: Starlette's request/response wrapper
        would add a layer of exception handling this edge already does."""
        try:
            response = await self._http(Request(scope, receive))
        except Refusal as refusal:
            response = JSONAnswer.error(refusal)
        except ClientDisconnect:
            return  # nobody is left to read an answer
        await response(scope, receive, send)

    async def _http(self, request: Request) -> Response:
        path = request.scope["path"]  # not request.url: building a URL costs more than the insert
        method = request.method
        lowered = path.lower()
        if not lowered.startswith(CHAT_PREFIX):
            if lowered == "/ready" and method in ("GET", "HEAD"):
                return await self.ready()
            return self._outside_chat(lowered, method)
        endpoint = endpoint_for(path[len(CHAT_PREFIX) :])
        if endpoint is None:
            raise no_such_api()
        if method != "POST":
            return _other_method(method, ALLOW_POST)
        if self.config.open:
            self._browser_origin(request.scope)
        principal = self.authenticate(bearer(request.headers.get("authorization")))
        if principal is None:
            raise Refusal("v1", 401, "Unauthorized")
        request.scope[PRINCIPAL] = principal  # for the access line
        if is_ndjson(request.headers.get("content-type")):
            return self._bulk(endpoint, principal, request)  # paced per message instead
        if endpoint not in STREAMS:  # a stream counts against the stream cap instead
            self.rate_limit(principal)
        raw = await self._read_body(request)
        req, edition = decode(endpoint, raw, principal, self.config, self.edition)
        if endpoint in STREAMS:
            return await self.join_ndjson(principal, req, edition, endpoint)
        if endpoint is WHOAMI:  # the token alone answers it: no storage, no room
            return JSONAnswer(encode({"identity": access.whoami(principal)}).encode())
        key = request.headers.get("idempotency-key") if endpoint.mutating else None
        if key is not None:
            if not (0 < len(key) <= _MAX_IDEMPOTENCY_KEY):
                raise Refusal(
                    endpoint.id,
                    400,
                    f"Idempotency-Key must be 1 to {_MAX_IDEMPOTENCY_KEY} characters",
                    edition=edition,
                )
            key = access.idempotency_scope(principal, key)
        try:
            answer: Answer = await self.service.call(
                endpoint.name, principal.tenant, req, key, actor=principal
            )
        except (Refused, Unavailable) as exc:
            raise Refusal.of(endpoint.id, exc, edition) from None
        if edition != ROOM:
            answer = answer_in(edition, answer)
        if isinstance(answer, str):
            return JSONAnswer(answer.encode())
        return StreamedAnswer(answer, endpoint.id)

    def _bulk(self, endpoint: Endpoint, principal: Principal, request: Request) -> Response:
        """Many SendRequests in one NDJSON request (``bulk``), each line bound to a user
        token's user, the batch paced to the token's rate per message."""
        limiter = self.limiter
        pace = None if limiter is None else limiter.pacer(principal.token_id)
        return bulk_send(
            endpoint, principal.tenant, request, self.service, self.config, pace, principal
        )

    async def ready(self) -> Response:
        """``GET /ready``: 200 while this server should get traffic, else 503 naming what
        is not so (never a host, a port or a driver's words): the database answered a
        query within ``--db-timeout``, a PostgreSQL replica is listening to the others
        (``hub.interrupted`` while it is not), and the server is not shutting down
        (``hub.closed``). ``/health`` stays "the process serves", whatever the database."""
        reasons = []
        hub = self.hub
        if hub.closed:
            reasons.append("shutting down")
        if hub.interrupted:
            reasons.append("not hearing the other replicas (PostgreSQL LISTEN)")
        timeout = self.config.db_timeout
        try:
            await asyncio.wait_for(self.service.store.read(_ping), timeout)
        except TimeoutError:
            reasons.append(f"the database did not answer within {timeout:g} s")
        except Unavailable as exc:
            log.debug("readiness: the database failed: %s", exc)
            reasons.append("the database failed")
        if reasons:
            body = encode({"status": "not ready", "reasons": reasons}).encode()
            answer = JSONAnswer(body, 503)
        else:
            answer = JSONAnswer(b'{"status":"ready"}')
        answer.raw_headers.append(_NO_STORE)
        return answer

    def _outside_chat(self, lowered: str, method: str) -> Response:
        """``/health``, ``/ready`` (not GET), ``/openapi.json``, ``/metrics`` (with
        ``--metrics``), or no such API."""
        if lowered in ("/health", "/ready"):
            if method in ("GET", "HEAD"):
                return JSONAnswer(b'{"status":"ok"}')
        elif lowered == "/openapi.json":
            if method in ("GET", "HEAD"):
                return Response(self.openapi, media_type="application/json")
        elif lowered == "/metrics" and self.metrics is not None:
            if method in ("GET", "HEAD"):
                from chatctl.server.metrics import CONTENT_TYPE

                return Response(self.metrics.exposition(), media_type=CONTENT_TYPE)
        else:
            raise no_such_api()
        return _other_method(method, ALLOW_GET)

    def _browser_origin(self, scope: Scope) -> None:
        """An open server (no token) serves a web page only from an origin it allows:
        else any page its user opens could send to it (``cors``)."""
        for key, value in scope["headers"]:
            if key == b"origin":
                origin = value.decode("latin-1")
                if not self.origins.origin_allowed(
                    origin, scope, open_server=True, websocket=False
                ):
                    raise Refusal("v1", 403, origin_refused(origin))
                return

    async def _read_body(self, request: Request) -> bytes:
        limit = self.config.limits.max_body_bytes
        refused = too_large(limit)
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            raise refused
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
                raise refused
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
            if request.scope.get(BODY_TOO_SLOW):
                raise _body_too_slow(self.config)
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)


#: a probe's answer is of this moment: no cache between a load balancer and the server.
_NO_STORE = (b"cache-control", b"no-store")


async def _ping(db: Any) -> int:
    """The cheapest question a database answers (``ready``)."""
    count: int = await db._count("SELECT 1", ())
    return count


def _body_too_slow(config: ServerConfig) -> Refusal:
    """408 for a body slower than the floor (``protocol`` marks the request); the
    connection closes after it, since the rest of the body may still be on its way."""
    return Refusal(
        "v1",
        408,
        f"request body too slow: it must arrive within {config.body_timeout:g} s, plus 1 s"
        f" per {config.body_min_rate:g} bytes",
        {"Connection": "close"},
    )
