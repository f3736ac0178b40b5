"""What a request's log lines say: who sent it and what it was.

Every HTTP request and WebSocket gets one access line when it ends (``accesslog``), and a
Join stream one more when it opens, with its room. Each line carries the same fields, in
this order (``ACCESS_FIELDS``): method, path (never the query string, where tokens may
travel), status (a WebSocket's close code once it is open; 499 when the client left
first), milliseconds, then ``client`` (the peer's address, or with ``serve
--proxy-headers`` the one a trusted proxy names in ``X-Forwarded-For``), ``request_id``,
``tenant`` (its name, as ``tenant=`` in the tokens file), ``user`` (a user token's user),
``token`` (the token's id as ``chatctl serve token list`` shows it: 12 hex digits of its
SHA-256, never the token) and, for a stream, ``room``. A field not known (no token yet,
an open server, a Unix socket's client) is ``-``.

The request id is the request's ``X-Request-ID`` when it is sane (1 to 128 printable
ASCII characters, no space, and not the request's own token), else one made here (32 hex
digits, as nginx's ``$request_id``: this process's random 16, then a count); the answer
carries it back in ``X-Request-ID``.

The values are kept on the request's ASGI scope as the request goes (``REQUEST_ID`` by
``accesslog``, ``PRINCIPAL`` by ``edge`` and ``streams`` once the token is known,
``STREAM`` by ``streams`` once a Join is admitted). ``serve``'s formatters write the
fields as ``key=value`` text or, with ``--log-format json``, as one JSON object.
"""

from __future__ import annotations

import itertools
import logging
import re
import secrets
import time
from typing import Any

from starlette.types import Scope

from chatctl.server.tokens import NAMED_TENANT, Principal

__all__ = [
    "ACCESS_FIELDS",
    "ACCESS_LINE",
    "CLIENT_ARGS",
    "PRINCIPAL",
    "PROBES",
    "REQUEST_ID",
    "STARTED",
    "STREAM",
    "STREAM_FIELDS",
    "STREAM_LINE",
    "STREAM_OPEN_LINE",
    "access_args",
    "request_id",
    "stream_opened",
]

log = logging.getLogger("chatctl.server")

REQUEST_ID = "chatctl.request_id"
#: when the request arrived (``time.perf_counter()``).
STARTED = "chatctl.started"
PRINCIPAL = "chatctl.principal"
#: an admitted Join stream's room id (a stream is logged when it opens, and not timed).
STREAM = "chatctl.stream"

#: the access line (these very objects: ``serve``'s formatters know them by identity).
ACCESS_LINE = "%s %s %s %.1fms client=%s request_id=%s tenant=%s user=%s token=%s"
#: a Join stream's access line, when it ends.
STREAM_LINE = ACCESS_LINE + " room=%s"
#: a Join stream admitted: its line when it opens (status 101 or 200, ms so far).
STREAM_OPEN_LINE = "stream open: " + STREAM_LINE
ACCESS_FIELDS = (
    "method",
    "path",
    "status",
    "ms",
    "client",
    "request_id",
    "tenant",
    "user",
    "token",
)
STREAM_FIELDS = (*ACCESS_FIELDS, "room")
#: the args that came from the client (path, client, request id): the only ones a
#: formatter searches for a token.
CLIENT_ARGS = (1, 4, 5)
#: probes, logged at debug: a load balancer's every few seconds would drown the rest.
PROBES = frozenset({"/health", "/ready", "/metrics"})

_SANE_ID = re.compile(r"[!-~]{1,128}")


def request_id(scope: Scope) -> str:
    """The request's id: its ``X-Request-ID`` if sane, else a new one."""
    given = None
    token = b""
    for name, value in scope["headers"]:
        if name == b"x-request-id":
            given = value
        elif name == b"authorization":
            token = value.partition(b" ")[2].strip()
    if given is not None and (not token or token not in given):
        text = given.decode("latin-1")
        if _SANE_ID.fullmatch(text):
            return str(text)
    return f"{_PREFIX}{next(_COUNT):016x}"


#: a made request id: this process's random half, then a count (no system call each).
_PREFIX = secrets.token_hex(8)
_COUNT = itertools.count(1)


#: what an IPv4 or IPv6 address may hold; a proxy's X-Forwarded-For may hold anything.
_ADDRESS = re.compile(r"[0-9A-Fa-f:.]{1,45}")


def _client(scope: Scope) -> str:
    """The client's address; ``-`` on a Unix socket, ``invalid`` for an X-Forwarded-For
    value that is no address (it is the client's words, not a fact)."""
    client = scope.get("client")
    if not client:
        return "-"
    host = str(client[0])
    return host if _ADDRESS.fullmatch(host) else "invalid"


def access_args(scope: Scope, status: int, ms: float) -> tuple[Any, ...]:
    """The access line's args (``ACCESS_LINE``, or ``STREAM_LINE`` for a stream)."""
    principal: Principal | None = scope.get(PRINCIPAL)
    if principal is None:
        tenant = user = token = "-"
    else:
        tenant = principal.tenant
        # A named tenant by its name (``tenant=acme``); an old token's (64 hex digits)
        # by its first 12, as token ids are shown.
        tenant = tenant[len(NAMED_TENANT) :] if tenant.startswith(NAMED_TENANT) else tenant[:12]
        tenant = tenant or "-"
        user = principal.user or "-"
        token = principal.token_id[:12] or "-"
    args: tuple[Any, ...] = (
        scope.get("method", "WS"),
        scope["path"],
        status,
        ms,
        _client(scope),
        scope.get(REQUEST_ID, "-"),
        tenant,
        user,
        token,
    )
    room = scope.get(STREAM)
    return args if room is None else (*args, room)


def stream_opened(scope: Scope, room_id: str) -> None:
    """A Join was admitted on its room: noted on the scope, and logged now."""
    scope[STREAM] = room_id
    if log.isEnabledFor(logging.INFO):
        status = 101 if scope["type"] == "websocket" else 200
        ms = (time.perf_counter() - scope.get(STARTED, time.perf_counter())) * 1000
        log.info(STREAM_OPEN_LINE, *access_args(scope, status, ms))
