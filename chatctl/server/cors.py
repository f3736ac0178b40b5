"""Web pages on other origins: CORS (``chatctl serve --cors-origin ORIGIN``), and which
browser origins may use the server at all.

A page's ``fetch`` of the API sends a preflight (``OPTIONS``, for the JSON body and the
``Authorization`` header) and reads an answer only when it names the page's origin. The
edge answers ``OPTIONS`` on every API path, before any token is checked (204 with
``Allow``); ``Cors`` wraps the whole HTTP app, and for an origin it allows adds:

- to every answer and error (401, 404, 405, 413, 429, 500, 503 …):
  ``Access-Control-Allow-Origin`` (the origin, or ``*`` when ``*`` is allowed) and
  ``Access-Control-Expose-Headers: Retry-After, Chat-Extensions`` (so a page reads a
  429's wait and the server's extensions);
- to a preflight's 204: ``Access-Control-Allow-Methods`` (the path's ``Allow``: POST, or
  GET and HEAD), ``Access-Control-Allow-Headers: Authorization, Content-Type,
  Idempotency-Key``, ``Access-Control-Max-Age: 600``, and ``Access-Control-Allow-Private-
  Network: true`` when asked (Chrome asks before a public page reaches a private address).

``Vary: Origin`` is on every answer, so no cache hands one origin's answer to another. An
origin not allowed gets no CORS header at all, so its page cannot read anything.
``Access-Control-Allow-Credentials`` is never sent: the token travels in the
``Authorization`` header (or, for a WebSocket, as its subprotocol), never in a cookie, so
pages call with fetch's default credentials mode and ``*`` is safe to offer.

Browsers do not preflight a WebSocket; they send ``Origin`` with it. ``origin_allowed``
is the rule for that and for an open server: when origins are configured, a Join
WebSocket from another origin is refused (403, before the upgrade, with a body saying
which ``--cors-origin`` would allow it); an open server (no token, loopback only) refuses
every request from a browser origin it does not allow, since otherwise any web page its
user opens could send to and read from it. A request without ``Origin`` (the CLI, curl,
Node, websocat) is never refused for it, nor one whose ``Origin`` is the server's own
(``same_origin``: the scheme the request came by, its ``Host``, default ports dropped),
which is no other origin: Python's websocket-client sends ``Origin: http://HOST:PORT``
by default. On an open server the own origin counts only when ``Host`` is a loopback
address or ``localhost``: a page that rebinds its own name to 127.0.0.1 sends its own
name as ``Host`` and stays a foreign origin.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from urllib.parse import urlsplit

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from chatctl.schema import EXTENSIONS_HEADER

__all__ = [
    "ALLOW_HEADERS",
    "EXPOSE_HEADERS",
    "MAX_AGE",
    "Cors",
    "Origins",
    "parse_origin",
    "same_origin",
]

#: the request headers the API reads, besides the simple ones.
ALLOW_HEADERS = "Authorization, Content-Type, Idempotency-Key"
#: the answer headers a page may read: a 429's wait, and the server's extensions.
EXPOSE_HEADERS = f"Retry-After, {EXTENSIONS_HEADER}"
#: seconds a browser may keep a preflight's answer (Chrome caps it at 7200).
MAX_AGE = "600"

_DEFAULT_PORTS = {"http": 80, "https": 443}


def parse_origin(text: str) -> str:
    """An origin as browsers send it: ``scheme://host[:port]``, lower case, without a
    default port; ``*`` for any. Raises ValueError naming what is wrong."""
    text = text.strip()
    if text == "*":
        return text
    if text.lower() == "null":
        raise ValueError(
            "the null origin (sandboxed frames, file:// pages) is shared by every such page,"
            " so it cannot be allowed; serve the page from an http(s) origin"
        )
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"{text!r} is not an origin: {exc}") from None
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS or not parts.hostname:
        raise ValueError(
            f"{text!r} is not an origin: give scheme://host[:port], e.g. https://app.example.com"
        )
    if parts.username is not None or parts.password is not None:
        raise ValueError(f"{text!r} is not an origin: it holds a user name")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError(
            f"{text!r} is not an origin: an origin has no path, query or fragment"
            f" (give {scheme}://{parts.netloc})"
        )
    host = parts.hostname.lower()
    if ":" in host:
        host = f"[{host}]"  # an IPv6 address
    if port is None or port == _DEFAULT_PORTS[scheme]:
        return f"{scheme}://{host}"
    return f"{scheme}://{host}:{port}"


class Origins:
    """The browser origins a server allows (``--cors-origin``; ``*`` for any)."""

    def __init__(self, origins: Iterable[str]) -> None:
        given = set(origins)
        self.any = "*" in given
        self.exact = frozenset(given - {"*"})

    def __bool__(self) -> bool:
        return self.any or bool(self.exact)

    def allows(self, origin: str) -> bool:
        return self.any or origin in self.exact

    def origin_allowed(
        self, origin: str | None, scope: Scope, *, open_server: bool, websocket: bool
    ) -> bool:
        """Whether a request (``scope``) from a browser with this ``Origin`` (None: not a
        browser) may be served: see the module's docstring."""
        if origin is None or self.allows(origin):
            return True
        if not (open_server or (websocket and bool(self))):
            return True
        return same_origin(origin, scope, loopback_only=open_server)


#: the schemes a request comes by, as the scheme of its own origin.
_ORIGIN_SCHEME = {"http": "http", "ws": "http", "https": "https", "wss": "https"}


def same_origin(origin: str, scope: Scope, *, loopback_only: bool) -> bool:
    """Whether ``origin`` is the origin the request itself was sent to: the scheme it came
    by (https/wss behind TLS) and its ``Host``, both written as browsers write origins.
    With ``loopback_only``, only when ``Host`` names a loopback address or ``localhost``
    (what an open server is reached by; any other name may be a rebinding page's)."""
    host = _header(scope, b"host")
    scheme = _ORIGIN_SCHEME.get(scope.get("scheme", ""))
    if host is None or scheme is None:
        return False
    try:
        own = parse_origin(f"{scheme}://{host.decode('latin-1')}")
        theirs = parse_origin(origin)
    except ValueError:
        return False
    if own != theirs:
        return False
    return not loopback_only or _is_loopback(urlsplit(own).hostname or "")


def _is_loopback(hostname: str) -> bool:
    if hostname == "localhost" or hostname.endswith(".localhost"):
        return True  # browsers resolve these to loopback themselves (RFC 6761)
    try:
        return ipaddress.ip_address(hostname).is_loopback
    except ValueError:
        return False


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope["headers"]:
        if key == name:
            return bytes(value)
    return None


class Cors:
    """The CORS headers on every HTTP answer to an allowed origin (outermost layer, so
    the access log's 500 has them too)."""

    def __init__(self, app: ASGIApp, origins: Origins) -> None:
        self.app = app
        self.origins = origins

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        extra: list[tuple[bytes, bytes]] = [(b"vary", b"Origin")]
        origin = _header(scope, b"origin")
        preflight = False
        if origin is not None and self.origins.allows(origin.decode("latin-1")):
            extra.append((b"access-control-allow-origin", b"*" if self.origins.any else origin))
            extra.append((b"access-control-expose-headers", EXPOSE_HEADERS.encode()))
            preflight = scope["method"] == "OPTIONS" and (
                _header(scope, b"access-control-request-method") is not None
            )
        private_network = preflight and (
            _header(scope, b"access-control-request-private-network") == b"true"
        )

        async def send_with_cors(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [*message.get("headers", ()), *extra]
                if preflight and message["status"] == 204:
                    headers += _preflight_headers(headers, private_network)
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_cors)


def _preflight_headers(
    headers: list[tuple[bytes, bytes]], private_network: bool
) -> list[tuple[bytes, bytes]]:
    """What a preflight's 204 adds: the path's methods (its ``Allow``) and the API's
    headers, for ``MAX_AGE`` seconds."""
    allow = next((value for key, value in headers if key.lower() == b"allow"), b"POST")
    added = [
        (b"access-control-allow-methods", allow),
        (b"access-control-allow-headers", ALLOW_HEADERS.encode()),
        (b"access-control-max-age", MAX_AGE.encode()),
    ]
    if private_network:
        added.append((b"access-control-allow-private-network", b"true"))
    return added
