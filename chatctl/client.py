"""The one transport: unary calls over httpx, Join over websockets.

``Client.call("Send", body)`` POSTs ``{url}/v1/chat/Send`` with the bearer token over one
kept-alive connection and returns the decoded response object; ``Client.join(body)``
opens the Join WebSocket, sends the request as the first frame and yields each frame.
It raises the typed errors of ``chatctl.errors`` with the facts and never prints or
words a hint: the CLI's edge does.

Time: every call has one budget (``timeout``, 10 s by default) that covers connecting,
sending, waiting for and reading the answer, and every retry. Connecting gets at most
``CONNECT_TIMEOUT`` of it per attempt; a server that takes the connection and never
answers is reported (NoAnswerError) when the budget is spent, not after 4 x 30 s.

Retries: a call that changes something carries an ``Idempotency-Key``, fresh per logical
call and the same on each retry, so retrying after a lost answer never doubles it.
Connection errors and 502/503/504 are retried with capped, jittered backoff, and a 429
after the ``Retry-After`` it names, all inside the call's budget. A process that has not
yet reached its server gives up after ``retries`` quick retries (a typo in ``--url``
should not hang); once it has, a call keeps retrying until its budget is spent, riding
through a server restart. When the budget ends, the last answer is reported (a 503
``storage unavailable``), not silence: NoAnswerError only if nothing ever answered.

Untrusted answers: the budget is a deadline every read and write checks (``_Deadline``,
the transport's network backend), so a server that trickles its answer, its head
included, a byte at a time is cut off when the budget ends, as one that sends nothing.
A body is decompressed here, a bounded piece at a time, and refused (BadAnswerError)
past ``MAX_ANSWER_BYTES`` decompressed (a History stream or a bulk answer: past
``_MAX_ITEM`` for one item or line), in an encoding chatctl cannot decode, or as JSON
nested deeper than any m3o answer (``wire.decode``). An answer that is not an m3o one (a
web page, a proxy's error page) is reported as such, never printed; a redirect is named
as one and not followed (the token would go where it points).

Which server: m3o came in two editions (the seed's "room" names and the final "group"
ones), and chatctl's server has extensions no other m3o server has. The client learns
both from the server's answers and remembers them for its URL (``Client.server``, a
``Server``): the edition from an answer's keys (``rooms``/``groups``...), or from a 400
``missing group id`` to a request naming ``room_id`` (then it is sent again once, named
the other way: nothing was done); the extensions from the ``Chat-Extensions`` header
chatctl's server puts on every answer and on the Join handshake (no header: a plain m3o
server). Requests are built with the seed's ``room_id`` and sent as the edition names it.
A request using an extension the server does not have is never sent (UnsupportedError);
when nothing is known yet, one seed-shaped ``List`` (filtered by the user, so small)
asks first. The embedded local server is chatctl's own: nothing to learn.

Who the token acts as: a request whose acting user is the CLI's default (a
``config.LoginName``: no user was configured) is sent as the token's own user where the
server says who that is (``whoami``, asked once: ``Client.whoami``). Where the server
was not known yet, the request goes as it would to any m3o server, and a 403 to it (a
refusal changes nothing) is answered by asking and sending it once more as the token's
user; servers without ``whoami`` get exactly the requests they always did.

Retries of a change rest on the ``Idempotency-Key``, which only chatctl's server honours:
on any other, a change is retried only when it provably never reached the server (no
connection, or a 429); a connection lost mid-call or a gateway's 502/503/504 is reported
with ``outcome_unknown``, never sent twice. When that happens to the first call, before
anything is known of the server, a List (a read) asks it first, so chatctl's own server
still gets its safe retry.

URLs: ``http://`` and ``https://`` (TLS, verified against the system's trust store, or the
``ca_cert`` file alone when given; ``SSL_CERT_FILE`` and ``SSL_CERT_DIR`` are honoured),
``unix:/path/to/socket`` for HTTP over a Unix socket, and no URL at all for the embedded
local server (started on demand by ``chatctl.local``). A URL holding credentials
(``user:pass@``) is refused: they would be sent instead of the token.
"""

from __future__ import annotations

import codecs
import contextlib
import json
import math
import os
import random
import re
import socket
import time
import uuid
import zlib
from collections.abc import Callable, Generator, Iterable, Sequence
from datetime import datetime
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING, Any, TextIO

import httpcore
import httpx

from chatctl import __version__
from chatctl.config import LoginName, header_token
from chatctl.errors import (
    APIError,
    BadAnswerError,
    CertificateError,
    ChatctlError,
    ConnectError,
    NoAnswerError,
    NotAnAPIError,
    RedirectError,
    SettingError,
    StreamClosed,
    UnsupportedError,
    UsageError,
)
from chatctl.schema import (
    ENDPOINTS,
    EXTENSIONS_HEADER,
    IDEMPOTENCY,
    SERVER_EXTENSIONS,
    WHOAMI,
    Edition,
    Endpoint,
    edition_of,
    extensions_of,
    in_edition,
    parse_extensions,
)
from chatctl.wire import CLOSE_GOING_AWAY, TooDeep, decode, decode_at

if TYPE_CHECKING:
    import ssl

__all__ = [
    "CONNECT_TIMEOUT",
    "DEFAULT_TIMEOUT",
    "BulkCut",
    "Client",
    "JoinStream",
    "NoBulk",
    "Server",
    "backoff",
    "parse_url",
]

#: seconds a call may take in all, retries included, unless --timeout says otherwise.
DEFAULT_TIMEOUT = 10.0
#: seconds one attempt may take to connect (within the call's budget).
CONNECT_TIMEOUT = 3.0
#: the largest answer accepted, once decompressed: twice a full History page of maximal
#: messages (~65 MB). An answer is held whole before it is decoded, so refusing a larger
#: one (a gzip bomb) costs this much memory at most.
MAX_ANSWER_BYTES = 128 * 1024 * 1024
#: decompressed bytes made from an answer at a time (a gzip bomb inflates ~1000x).
_PIECE = 1024 * 1024
#: the encodings an answer may come in, as the request's Accept-Encoding says.
_ENCODINGS = {"gzip": zlib.MAX_WBITS | 16, "x-gzip": zlib.MAX_WBITS | 16, "deflate": 0}
_RETRY_STATUSES = frozenset({502, 503, 504})
#: the media type of a bulk Send and of its answer.
NDJSON = "application/x-ndjson"
_SCHEMES = ("http", "https")


def parse_url(url: str) -> tuple[str, str | None]:
    """``(base, uds)`` for a URL as the user gave it; a SettingError for one chatctl
    cannot use. ``host:port`` alone means ``http://host:port``."""
    from urllib.parse import urlsplit

    if url.startswith("unix:"):
        path = url[len("unix:") :].removeprefix("//")
        if not path:
            raise SettingError("unix: URL without a socket path", "host")
        return "http://localhost", path
    if "://" not in url:
        url = "http://" + url
    try:
        parts = urlsplit(url)  # "http://[::1" is a ValueError already
        host, port = parts.hostname, parts.port
    except ValueError as e:
        raise SettingError(f"malformed URL: {e}", "host") from None
    scheme = parts.scheme.lower()
    if scheme not in _SCHEMES:
        raise SettingError(f"unsupported URL scheme {scheme!r}", "scheme")
    if not host:
        raise SettingError("the URL names no host", "host")
    shown = f"{scheme}://{_host(host)}{'' if port is None else f':{port}'}"
    if parts.username is not None or parts.password is not None:
        raise SettingError(
            f"the URL {shown} holds credentials (user:password@); chatctl does not send them",
            "credentials",
        )
    return shown + parts.path.rstrip("/"), None


def backoff(failures: int, cap: float = 2.0) -> float:
    """Seconds to wait before retrying after ``failures`` failures in a row: doubling from
    0.1 s up to ``cap``, jittered by half either way, so clients that failed together do
    not come back together."""
    wait: float = min(cap, 0.05 * 2 ** min(failures, 16)) * (0.5 + random.random())
    return wait


def _host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


class Server:
    """What this process knows of the server at one URL, learned from its answers."""

    def __init__(self, *, ours: bool = False) -> None:
        #: "room" or "group" once an answer said; None before.
        self.edition: Edition | None = "room" if ours else None
        #: chatctl's extensions it has (empty: a plain m3o server); None before any answer.
        self.extensions: frozenset[str] | None = frozenset(SERVER_EXTENSIONS) if ours else None

    @property
    def known(self) -> bool:
        return self.extensions is not None

    @property
    def plain(self) -> bool:
        """Known to have none of chatctl's extensions."""
        return self.extensions is not None and not self.extensions

    def has(self, extension: str) -> bool:
        return self.extensions is not None and extension in self.extensions

    def learn(self, header: str | None, answer: dict[str, Any] | None = None) -> None:
        """Learn from one m3o answer: its Chat-Extensions header (absent: none) and,
        for a successful answer, the edition its keys are in."""
        self.extensions = frozenset() if header is None else parse_extensions(header)
        edition = edition_of(answer) if answer is not None else None
        if edition is not None:
            self.edition = edition


class Client:
    def __init__(
        self,
        url: str | None,
        token: str | None = None,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        ca_cert: str | None = None,
        verbose: TextIO | None = None,
        retries: int = 3,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        # The CLI checked it already (naming where it came from); this guards other callers.
        self.token = header_token(token, "the caller") if token else None
        self.timeout = timeout
        self.ca_cert = ca_cert
        self.verbose = verbose
        self.retries = retries
        self._sleep = sleep
        self._reached = False
        self._local = url is None
        #: the embedded local server is chatctl's own, of this very version.
        self.server = Server(ours=self._local)
        #: the server's Whoami answer, once asked (``whoami``).
        self.identity: dict[str, Any] | None = None
        self.base, self._uds = ("http://localhost", None) if url is None else parse_url(url)
        self.tls = self.base.startswith("https://")
        self._http: httpx.Client | None = None
        self._ssl: ssl.SSLContext | None = None
        #: when the request in flight must be done by: every read and write checks it.
        self._deadline = _Deadline()

    # -- plumbing -------------------------------------------------------------------------

    def _socket(self) -> str | None:
        if self._local and self._uds is None:
            from chatctl.local import ensure_local_server

            self._uds = ensure_local_server()
        return self._uds

    def forget_connection(self) -> None:
        """Drop the connection; the embedded local server is looked for (and started) anew
        on the next call, as it may have exited since."""
        self.close()
        if self._local:
            self._uds = None

    def ssl_context(self) -> ssl.SSLContext:
        """The TLS settings, made on first use (loading a trust store costs start-up time)."""
        if self._ssl is None:
            import ssl

            try:
                # With a CA file, that file alone is trusted (as curl's --cacert); without,
                # the system's store, where SSL_CERT_FILE / SSL_CERT_DIR point OpenSSL.
                self._ssl = ssl.create_default_context(cafile=self.ca_cert)
            except (OSError, ssl.SSLError) as e:
                reason = getattr(e, "strerror", None) or getattr(e, "reason", None) or str(e)
                raise SettingError(
                    f"cannot use the CA certificate {self.ca_cert}: {reason}", "ca_cert"
                ) from None
        return self._ssl

    def _client(self) -> httpx.Client:
        if self._http is None:
            # Plain HTTP has nothing to verify: no trust store is loaded for it.
            verify: ssl.SSLContext | bool = self.ssl_context() if self.tls else False
            transport = httpx.HTTPTransport(uds=self._socket(), verify=verify)
            # httpx takes no network backend; its pool (httpcore's) does: every socket
            # it opens goes through the deadline.
            pool = transport._pool
            assert isinstance(pool, httpcore.ConnectionPool)
            pool._network_backend = self._deadline
            self._http = httpx.Client(
                base_url=self.base,
                transport=transport,
                verify=verify,
                headers=self._headers(),
                follow_redirects=False,
            )
        return self._http

    def _headers(self) -> dict[str, str]:
        headers = {
            "Content-Type": "application/json",
            "User-Agent": f"chatctl/{__version__}",
            # What _pieces decodes (httpx would add br and zstd where they are installed).
            "Accept-Encoding": "gzip, deflate",
        }
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        return headers

    @property
    def where(self) -> str:
        """The server's address as the user should see it (never with a token)."""
        if self._local:
            return "the local chatctl server"
        if self._uds:
            return f"unix:{self._uds}"
        return self.base

    def close(self) -> None:
        if self._http is not None:
            self._http.close()
            self._http = None

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _log(
        self, method: str, path: str, status: int | str, started: float, more: str = ""
    ) -> None:
        if self.verbose is not None:
            ms = (time.perf_counter() - started) * 1000
            print(f"{method} {self.where}{path} {status} {ms:.1f}ms{more}", file=self.verbose)

    def _connect_error(self, reason: str) -> ConnectError:
        return ConnectError(
            f"cannot reach {self.where}: {reason}", where=self.where, local=self._local
        )

    # -- unary calls ----------------------------------------------------------------------

    def call(
        self, endpoint: str, body: dict[str, Any], *, key: str | None = None
    ) -> dict[str, Any]:
        """POST one request (built with the seed's names) in the server's edition and
        return the decoded response object, as the server sent it, within the budget. A
        change carries ``key`` as its Idempotency-Key (a fresh one when None)."""
        spec = ENDPOINTS[endpoint]
        self.require(spec, body)
        self.bound(spec, body)
        sent_as = self.server.edition
        try:
            return self._call(spec, in_edition(body, sent_as), key=key)
        except APIError as e:
            other = _other_edition(e, sent_as, body)
            if other is not None:
                # The other edition's server refused the id's name before doing anything.
                self.server.edition = other
            elif not self._rebound(spec, body, e):
                raise
        return self._call(spec, in_edition(body, self.server.edition), key=key)

    def whoami(self, user: str | None = None) -> dict[str, Any]:
        """The server's Whoami answer (``{"identity": {...}}``: who the token acts as),
        asked at most once per process; UnsupportedError from a server without
        ``whoami`` (after one List, filtered by ``user``, when nothing is known of it)."""
        if self.identity is None:
            self.facts(user)
            self.identity = self.call("Whoami", {})
        return self.identity

    def token_user(self) -> str | None:
        """The user the token acts as, from the Whoami answer already had (None: not
        asked, or an admin token, which acts as any user)."""
        identity = (self.identity or {}).get("identity")
        user = identity.get("user_id") if isinstance(identity, dict) else None
        return user if isinstance(user, str) and user else None

    def acting(self, user: str) -> str:
        """``user``, or in place of the CLI's default (a ``LoginName``: none was given)
        the token's own user, where the server says who that is (one Whoami, the first
        time). Only a token can be bound to a user; an admin token acts as anyone."""
        if isinstance(user, LoginName) and self.token and self.server.has(WHOAMI):
            self.whoami()
            return self.token_user() or user
        return user

    def bound(self, spec: Endpoint, body: dict[str, Any]) -> dict[str, Any]:
        """The request with its acting user ``acting``, changed in place, so the caller
        sees whom it acted as."""
        user = body.get("user_id")
        if spec.actor and isinstance(user, str):
            body["user_id"] = self.acting(user)
        return body

    def _rebound(self, spec: Endpoint, body: dict[str, Any], refused: APIError) -> bool:
        """After a 403 to a request sent as the CLI's default user before the server was
        known: True (and the request bound to the token's user) when the server says the
        token acts as someone else. A refusal changed nothing, so it may go again."""
        if refused.code != 403 or self.identity is not None:
            return False
        before = body.get("user_id")
        return self.bound(spec, body).get("user_id") != before

    def require(self, spec: Endpoint, body: dict[str, Any]) -> None:
        """Refuse (UnsupportedError) a request using extensions the server lacks; ask it
        first (``facts``) when nothing is known of it yet."""
        needed = extensions_of(spec, body)
        if not needed:
            return
        user = body.get("user_id")
        missing = needed - (self.facts(user if isinstance(user, str) else None).extensions or set())
        if missing:
            feature = sorted(missing)[0]
            raise UnsupportedError(
                f"{self.where} does not support {feature} ({spec.name} request)",
                feature,
                self.where,
            )

    def facts(self, user: str | None = None) -> Server:
        """What the server is, asking it when nothing is known yet: one seed-shaped List
        (read only, and filtered by ``user`` so that it stays small)."""
        if not self.server.known:
            self._call(ENDPOINTS["List"], {"user_id": user} if user else {})
        return self.server

    def _call(
        self,
        spec: Endpoint,
        body: dict[str, Any],
        deadline: float | None = None,
        *,
        key: str | None = None,
    ) -> dict[str, Any]:
        path = f"/v1/chat/{spec.name}"
        content = json.dumps(body).encode()
        headers = {"Idempotency-Key": key or uuid.uuid4().hex} if spec.mutating else {}
        if deadline is None:
            deadline = time.monotonic() + self.timeout
        failures = 0
        answered: ChatctlError | None = None  # the last answer's error, if one came
        while True:
            started = time.perf_counter()
            try:
                status, answer = self._attempt(path, content, headers, deadline)
            except NoAnswerError:
                # The budget ended waiting: an answer that came before says more than
                # silence (a 503 "storage unavailable" on every attempt is not a timeout).
                if answered is None:
                    raise
                raise answered from None
            except _Retryable as e:
                self._log("POST", path, e.label, started)
                error: ChatctlError = e.error
                if e.delivered and not self._retry_safe(spec, body, deadline):
                    raise _outcome_unknown(error) from None
                wait = None
            else:
                self._log("POST", path, status, started)
                self._reached = True
                if status < 300:
                    data = self._decode(status, answer)
                    self.server.learn(answer.extensions, data)
                    return data
                error = answered = self._api_error(status, answer)
                if answer.m3o_error():
                    self.server.learn(answer.extensions)
                if status != 429 and status not in _RETRY_STATUSES:
                    raise error
                if status != 429 and not self._retry_safe(spec, body, deadline):
                    raise _outcome_unknown(error) from None
                asked = error.retry_after if isinstance(error, APIError) else None
                wait = None if asked is None else max(asked, 0.05)  # never a busy loop
            failures += 1
            if wait is None:
                if not self._reached and failures > self.retries:
                    raise error
                wait = backoff(failures)
            if time.monotonic() + wait >= deadline:
                raise error  # the budget cannot cover the wait: report what we know
            self._sleep(wait)

    def _retry_safe(self, spec: Endpoint, body: dict[str, Any], deadline: float) -> bool:
        """May a failed attempt that could have reached the server be made again? A read,
        always; a change only where the Idempotency-Key is honoured. When nothing is known
        of the server yet (a first call), a List (a read: always safe) asks, within the
        call's budget; if that fails too, the change is not retried."""
        if not spec.mutating or self.server.has(IDEMPOTENCY):
            return True
        if not self.server.known:
            user = body.get("user_id")
            with contextlib.suppress(ChatctlError):
                probe = {"user_id": user} if isinstance(user, str) and user else {}
                self._call(ENDPOINTS["List"], probe, deadline)
        return self.server.has(IDEMPOTENCY)

    def _attempt(
        self, path: str, content: bytes, headers: dict[str, str], deadline: float
    ) -> tuple[int, _Answer]:
        """One POST: the status and the answer's raw parts. Raises _Retryable for what a
        retry may cure, a final ChatctlError for what it cannot."""
        left = deadline - time.monotonic()
        if left <= 0:
            raise NoAnswerError(self.where, self.timeout, local=self._local)
        timeout = httpx.Timeout(left, connect=min(CONNECT_TIMEOUT, left))
        self._deadline.at = deadline
        try:
            http = self._client()
            with http.stream("POST", path, content=content, headers=headers, timeout=timeout) as r:
                return r.status_code, _answer_of(r, self._read(r))
        except (httpx.TransportError, OSError) as e:
            raise self._failure(e) from None
        except BadAnswerError:
            self.forget_connection()  # what is left of it is not worth reading
            raise

    def _read(self, r: httpx.Response) -> bytearray:
        """The whole body of an answer, decompressed: BadAnswerError past
        ``MAX_ANSWER_BYTES``."""
        body = bytearray()
        for piece in self._pieces(r):
            body += piece
            if len(body) > MAX_ANSWER_BYTES:
                limit = MAX_ANSWER_BYTES // (1024 * 1024)
                raise BadAnswerError(
                    self.where, f"an answer larger than {limit} MiB", r.status_code
                )
        return body

    def _pieces(self, r: httpx.Response) -> Generator[bytes, None, None]:
        """The body of an answer as it arrives, decompressed here (not by httpx, which
        inflates a read whole: a 64 KiB read of a gzip bomb is 64 MB) at most ``_PIECE``
        bytes at a time, within the deadline."""
        given = r.headers.get("content-encoding", "").lower().split(",")
        names = [name for name in (n.strip() for n in given) if name and name != "identity"]
        if len(names) > 1 or (names and names[0] not in _ENCODINGS):
            raise BadAnswerError(
                self.where,
                f"an answer in an encoding chatctl cannot decode ({', '.join(names)[:100]})",
                r.status_code,
            )
        inflate = None
        for raw in r.iter_raw():
            self._deadline.left(None, httpx.ReadTimeout)
            if not names:
                yield raw
                continue
            try:
                if inflate is None:
                    # deflate is zlib's format, or raw deflate from some servers.
                    wbits = _ENCODINGS[names[0]] or (
                        zlib.MAX_WBITS if raw[:1] == b"\x78" else -zlib.MAX_WBITS
                    )
                    inflate = zlib.decompressobj(wbits)
                data = raw
                while data and not inflate.eof:
                    piece = inflate.decompress(data, _PIECE)
                    data = inflate.unconsumed_tail
                    if piece:
                        yield piece
                        self._deadline.left(None, httpx.ReadTimeout)
            except zlib.error:
                raise BadAnswerError(
                    self.where, f"an answer that is not valid {names[0]}", r.status_code
                ) from None

    def _failure(self, e: httpx.TransportError | OSError) -> _Retryable:
        """A request that failed on the way (no answer, or part of one): what a retry may
        cure, as _Retryable (``delivered`` unless no connection was made). A timeout once
        connected (the whole budget went by) and a TLS failure are final: raised."""
        if isinstance(e, httpx.ConnectTimeout):
            self.forget_connection()
            error = self._connect_error("connection timed out")
            return _Retryable("timeout", error, delivered=False)
        if isinstance(e, httpx.TimeoutException):
            # Connected and asked, but no answer within the whole budget.
            raise NoAnswerError(self.where, self.timeout, local=self._local) from None
        self.forget_connection()
        if isinstance(e, httpx.ConnectError):
            tls = _tls_failure(e, self.where)
            if tls is not None:
                raise tls from None
            return _Retryable("unreachable", self._connect_error(_reason(e)), delivered=False)
        # Refused mid-way, reset, closed without an answer: a server restarting. The
        # request may have reached it.
        return _Retryable("unreachable", self._connect_error(_reason(e)))

    def _decode(self, status: int, answer: _Answer) -> dict[str, Any]:
        data = self._json(status, answer)
        if not isinstance(data, dict):
            raise NotAnAPIError(self.where, status, answer.content_type)
        return data

    def _json(self, status: int, answer: _Answer) -> Any:
        """The answer's body as JSON (None when it is not JSON); BadAnswerError when it
        nests deeper than any m3o answer."""
        try:
            return answer.json()
        except TooDeep as e:
            raise BadAnswerError(self.where, str(e), status) from None

    def _api_error(self, status: int, answer: _Answer) -> ChatctlError:
        if 300 <= status < 400:
            return RedirectError(self.where, status, answer.location)
        data = self._json(status, answer)
        retry_after = _retry_after(answer.retry_after)
        if isinstance(data, dict) and "detail" in data:
            return _error_of(data, status, retry_after)
        # No m3o error object: never show the body (a web page, a proxy's error page).
        if status >= 500 or status in (401, 403, 429):
            what = answer.content_type.split(";")[0].strip() or "an empty body"
            return APIError(
                status,
                f"{answer.reason or 'error'} (the answer is not an m3o error object: {what})",
                retry_after=retry_after,
            )
        return NotAnAPIError(self.where, status, answer.content_type)

    # -- a long History, streamed ----------------------------------------------------------

    def history(self, body: dict[str, Any]) -> Generator[dict[str, Any], None, None]:
        """Every message one History call without ``limit`` answers, each decoded as it
        arrives (chatctl's server sends a long one in parts), in constant memory. The
        budget bounds the wait for each message (from the request, then from when the
        caller asks for the next one), not the whole of it; a connection lost part-way
        is picked up after the last message read (``after``: the paging extension, which
        the caller made sure the server has)."""
        path = "/v1/chat/History"
        request = in_edition(self.bound(ENDPOINTS["History"], body), self.server.edition)
        last: str | None = None
        failures = 0
        answered: ChatctlError | None = None  # the last refusal's error, if one came
        deadline = time.monotonic() + self.timeout
        while True:
            ask = request if last is None else {**request, "after": last}
            started = time.perf_counter()
            status: int | str = "unreachable"
            read = 0
            try:
                timeout = httpx.Timeout(self.timeout, connect=min(CONNECT_TIMEOUT, self.timeout))
                self._deadline.at = time.monotonic() + self.timeout
                with self._client().stream(
                    "POST", path, content=json.dumps(ask).encode(), timeout=timeout
                ) as r:
                    status = r.status_code
                    if status != 200:
                        self._refused_read(r, deadline)
                    else:
                        self._reached = True
                        self.server.learn(r.headers.get(EXTENSIONS_HEADER))
                        for item in _streamed_items(self._pieces(r), "messages", self.where):
                            message_id = item.get("id")
                            last = message_id if isinstance(message_id, str) else None
                            read += 1
                            failures = 0
                            yield item
                            # The wait for the next one starts now, not while the caller
                            # wrote this one out (to a pipe that may be slow).
                            deadline = time.monotonic() + self.timeout
                            self._deadline.at = deadline
                        return
            except _Retryable as e:
                error = e.error
                if isinstance(error, APIError):
                    answered = error
            except (httpx.TransportError, OSError) as e:
                try:
                    error = self._failure(e).error
                except NoAnswerError:
                    if answered is None:
                        raise
                    raise answered from None  # an answer says more than silence
            finally:
                self._log("POST", path, status, started, f" ({read} messages)")
            if read and last is None:
                raise error  # cut short after a message without an id: no place to resume
            failures += 1
            if not self._reached and failures > self.retries:
                raise error
            wait = backoff(failures)
            if time.monotonic() + wait >= deadline:
                raise error
            self._sleep(wait)

    def _refused_read(self, r: httpx.Response, deadline: float) -> None:
        """A read answered with an error: raise it, or _Retryable for 429 and 502-504
        (after Retry-After, when the server says, within the budget)."""
        answer = _answer_of(r, self._read(r))
        error = self._api_error(r.status_code, answer)
        if r.status_code != 429 and r.status_code not in _RETRY_STATUSES:
            raise error
        asked = error.retry_after if isinstance(error, APIError) else None
        if asked is not None:
            if time.monotonic() + asked >= deadline:
                raise error
            self._sleep(max(asked, 0.05))
        raise _Retryable("retry", error)

    # -- bulk sends: chatctl's extension ------------------------------------------------

    def send_bulk(
        self, lines: Sequence[bytes], *, key: str, first: int, stop: bool, deadline: float
    ) -> Generator[dict[str, Any] | APIError, None, None]:
        """One bulk Send (contract part 3) of ``lines``, encoded SendRequests numbered from
        ``first`` under the batch ``key``: each line's answer in order, as it arrives, its
        SendResponse or the APIError of its refusal. It may end early: after the first
        refusal with ``stop``, or after an answer of 503 (the server stored nothing
        after it). Raises BulkCut when the rest may be answered by sending it again
        (connection lost, 429, 502-504), NoBulk when the server refused the request as a
        whole as one without bulk sends would (415, or its body as one bad JSON body),
        and the other transport errors as ``call`` does; ``deadline`` bounds the wait for
        each part of the answer."""
        path = "/v1/chat/Send"
        headers = {
            "Content-Type": NDJSON,
            "Idempotency-Key": key,
            "Chat-First-Line": str(first),
            "Chat-On-Error": "stop" if stop else "continue",
        }
        left = deadline - time.monotonic()
        if left <= 0:
            raise NoAnswerError(self.where, self.timeout, local=self._local)
        timeout = httpx.Timeout(left, connect=min(CONNECT_TIMEOUT, left))
        started = time.perf_counter()
        answered = 0
        status: int | str = "unreachable"
        self._deadline.at = deadline
        try:
            with self._client().stream(
                "POST", path, content=b"\n".join(lines) + b"\n", headers=headers, timeout=timeout
            ) as r:
                status = r.status_code
                if status != 200 or not r.headers.get("content-type", "").startswith(NDJSON):
                    self._refused_bulk(r)
                self._reached = True
                self.server.learn(r.headers.get(EXTENSIONS_HEADER))
                partial = b""
                for chunk in self._pieces(r):
                    *whole, partial = (partial + chunk).split(b"\n")
                    if len(partial) > _MAX_ITEM:
                        raise BadAnswerError(
                            self.where, f"an answer line larger than {_MAX_ITEM >> 20} MiB", status
                        )
                    for line in whole:
                        answered += 1
                        yield self._bulk_answer(line, status)
                        self._deadline.at = time.monotonic() + self.timeout
                if partial:
                    raise BulkCut(self._connect_error("the answer was cut short"))
        except (httpx.TransportError, OSError) as e:
            failure = self._failure(e)
            raise BulkCut(failure.error, sent=failure.delivered) from None
        finally:
            self._log("POST", path, status, started, f" ({answered} of {len(lines)} lines)")

    def _refused_bulk(self, r: httpx.Response) -> None:
        """A bulk Send answered as a whole (not line by line): raise what it means."""
        answer = _answer_of(r, self._read(r))
        status = r.status_code
        if status == 200:  # not an NDJSON answer: whatever answered knows no bulk Send
            raise NotAnAPIError(self.where, status, answer.content_type)
        error = self._api_error(status, answer)
        if answer.m3o_error():
            self.server.learn(answer.extensions)
        if isinstance(error, APIError):
            # A server without bulk sends: it takes no NDJSON, or reads the lines as one
            # JSON body (which is not JSON), refusing before anything is done.
            if status == 415 or (status == 400 and "not valid JSON" in error.detail):
                raise NoBulk(error)
            if status == 429 or status in _RETRY_STATUSES:
                raise BulkCut(error, sent=False, wait=error.retry_after)
        raise error

    def _bulk_answer(self, line: bytes, status: int) -> dict[str, Any] | APIError:
        try:
            data = decode(line)
        except TooDeep as e:
            raise BadAnswerError(self.where, f"an answer line of {e}", status) from None
        except ValueError:
            data = None
        if isinstance(data, dict) and isinstance(data.get("message"), dict):
            return data
        if isinstance(data, dict) and "detail" in data:
            return _error_of(data, status)
        raise NotAnAPIError(self.where, status, NDJSON)

    # -- the Join stream ------------------------------------------------------------------

    def join(self, *, ping_interval: float | None = None) -> JoinStream:
        """Open the Join stream, learning what the server has from its handshake; send
        the request with ``start(body)``, then call ``next()`` for each decoded frame.
        ``ping_interval``: seconds between its pings (default: ``join_ping_interval()``)."""
        return JoinStream(self, join_ping_interval() if ping_interval is None else ping_interval)


#: seconds between a Join's pings. One unanswered for two more intervals drops the
#: connection, so a silent one is noticed within three (24 s, as the README says).
PING_INTERVAL = 8.0
#: the ``CHATCTL_PING_INTERVAL`` values accepted, in seconds.
PING_INTERVAL_RANGE = (0.5, 300.0)


def join_ping_interval() -> float:
    """``PING_INTERVAL``, or ``CHATCTL_PING_INTERVAL`` when set (a network that drops idle
    connections sooner, or a test that must not wait 24 s for a dead one)."""
    text = os.environ.get("CHATCTL_PING_INTERVAL", "").strip()
    if not text:
        return PING_INTERVAL
    low, high = PING_INTERVAL_RANGE
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not low <= value <= high:  # NaN included
        raise UsageError(
            f"CHATCTL_PING_INTERVAL must be seconds from {low:g} to {high:g},"
            f" not {text[:40]!r}: fix or unset it"
        )
    return value


class _Deadline(httpcore.NetworkBackend):
    """httpcore's network backend, with a deadline (``at``, monotonic; None: none) that
    every connect, TLS handshake, read and write checks: each is given what is left of
    it at most, and fails with the timeout of its kind once it has passed. httpx's own
    timeouts are for one operation each, so a byte every 0.5 s, in the head or the body,
    would reset them for ever."""

    def __init__(self) -> None:
        self.inner = httpcore.SyncBackend()
        self.at: float | None = None

    def left(self, timeout: float | None, error: type[Exception]) -> float | None:
        """``timeout``, or what is left before the deadline if that is shorter; raises
        ``error`` once the deadline has passed."""
        if self.at is None:
            return timeout
        left = self.at - time.monotonic()
        if left <= 0:
            raise error("the call's time is up")
        return left if timeout is None else min(timeout, left)

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        wait = self.left(timeout, httpcore.ConnectTimeout)
        stream = self.inner.connect_tcp(host, port, wait, local_address, socket_options)
        return _DeadlineStream(stream, self)

    def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[Any] | None = None
    ) -> httpcore.NetworkStream:
        wait = self.left(timeout, httpcore.ConnectTimeout)
        return _DeadlineStream(self.inner.connect_unix_socket(path, wait, socket_options), self)

    def sleep(self, seconds: float) -> None:
        self.inner.sleep(seconds)


class _DeadlineStream(httpcore.NetworkStream):
    """A connection whose every operation ends by its backend's deadline."""

    def __init__(self, inner: httpcore.NetworkStream, deadline: _Deadline) -> None:
        self.inner = inner
        self.deadline = deadline

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self.inner.read(max_bytes, self.deadline.left(timeout, httpcore.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        # httpcore's write sends in a loop, each send with the whole timeout: a peer
        # taking a little at a time would stretch it. Here each send gets what is left.
        sock = self.inner.get_extra_info("socket")
        if not isinstance(sock, socket.socket):
            self.inner.write(buffer, self.deadline.left(timeout, httpcore.WriteTimeout))
            return
        view = memoryview(buffer)
        while view:
            try:
                sock.settimeout(self.deadline.left(timeout, httpcore.WriteTimeout))
                sent = sock.send(view)
            except TimeoutError:
                raise httpcore.WriteTimeout("the call's time is up") from None
            except OSError as e:
                raise httpcore.WriteError(e) from None
            view = view[sent:]

    def close(self) -> None:
        self.inner.close()

    def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.NetworkStream:
        wait = self.deadline.left(timeout, httpcore.ConnectTimeout)
        return _DeadlineStream(
            self.inner.start_tls(ssl_context, server_hostname, wait), self.deadline
        )

    def get_extra_info(self, info: str) -> Any:
        return self.inner.get_extra_info(info)


class _Answer:
    """An HTTP answer's raw parts; the body is decoded only when asked for."""

    def __init__(
        self,
        body: bytes | bytearray,
        content_type: str,
        retry_after: str | None,
        reason: str,
        extensions: str | None = None,
        location: str | None = None,
    ) -> None:
        self.body = body
        self.content_type = content_type
        self.retry_after = retry_after
        self.reason = reason
        #: the Chat-Extensions header, if the server sent one.
        self.extensions = extensions
        #: where a redirect points.
        self.location = location
        self._json: Any = _UNREAD

    def json(self) -> Any:
        """The body as JSON (decoded once), or None when it is not JSON; TooDeep when it
        nests deeper than any m3o answer."""
        if self._json is _UNREAD:
            try:
                self._json = decode(self.body)
            except TooDeep:
                raise
            except ValueError:
                self._json = None
        return self._json

    def m3o_error(self) -> bool:
        """Is the body an m3o error object (the API's own refusal, not a proxy's page)?"""
        data = self.json()
        return isinstance(data, dict) and "detail" in data


_UNREAD = object()
_SPACE = re.compile(r"[ \t\r\n]+")

#: The start of a History answer, up to its first message: ``{"messages": [``.
_ITEMS_HEAD = re.compile(r'\s*\{\s*"messages"\s*:\s*\[')
#: characters of one item read past the end of the answer's others, at most (a message
#: of maximal fields is under 2 MiB encoded).
_MAX_ITEM = 16 * 1024 * 1024


def _streamed_items(
    chunks: Iterable[bytes], key: str, where: str
) -> Generator[dict[str, Any], None, None]:
    """The objects of the list under ``key`` in a JSON answer ``{"key": [...]}`` that
    arrives in ``chunks``, each as soon as it is whole (json's own decoder finds its
    end). Items that are not objects are skipped, as ``call``'s callers skip them; an
    answer that is not such an object is NotAnAPIError, one cut short a _Retryable."""
    assert key == "messages"
    text = codecs.getincrementaldecoder("utf-8")().decode
    buf, pos = "", 0
    state = "head"  # head, item (or ]), next (, or ]), end (}), done
    since = 0  # characters read since the last item (or the start)
    for chunk in chunks:
        try:
            more = text(chunk)
        except UnicodeDecodeError:
            raise NotAnAPIError(where, 200, "text that is not UTF-8") from None
        since += len(more)
        if since > _MAX_ITEM:
            raise BadAnswerError(
                where, f"more than {_MAX_ITEM >> 20} MiB of a History without a message", 200
            )
        buf = buf[pos:] + more
        pos = 0
        size = len(buf)
        while pos < size:
            char = buf[pos]
            if char in " \t\r\n":
                pos = _SPACE.match(buf, pos).end()  # type: ignore[union-attr]
            elif state == "head":
                match = _ITEMS_HEAD.match(buf, pos)
                if match is None:
                    if size - pos < 64:
                        break  # the rest of the head may come in the next chunk
                    raise NotAnAPIError(where, 200, "an answer that is not a History")
                pos, state = match.end(), "item"
            elif char == "]" and state in ("item", "next"):
                pos, state = pos + 1, "end"
            elif state == "next":
                if char != ",":
                    raise NotAnAPIError(where, 200, "a History that is not a JSON list")
                pos, state = pos + 1, "comma"
            elif state in ("item", "comma"):
                try:
                    item, pos = decode_at(buf, pos)
                except TooDeep as e:
                    raise BadAnswerError(where, f"a History item of {e}", 200) from None
                except json.JSONDecodeError:
                    break  # not all of it is here yet (``since`` bounds how much)
                state = "next"
                since = size - pos
                if isinstance(item, dict):
                    yield item
            elif state == "end" and char == "}":
                pos, state = pos + 1, "done"
            else:
                if state == "done":
                    pos = size
                    break
                raise NotAnAPIError(where, 200, "a History that is not a JSON object")
    if state == "head":
        raise NotAnAPIError(where, 200, "an answer that is not a History")
    if state != "done":
        raise _Retryable("cut", ConnectError(f"the answer from {where} was cut short", where=where))


class BulkCut(Exception):
    """A bulk Send ended before every line was answered, in a way that sending the
    unanswered rest again (with the same key) may cure: ``error`` says what happened,
    ``sent`` is False when the request provably never reached the server, ``wait`` is
    the server's Retry-After."""

    def __init__(self, error: ChatctlError, *, sent: bool = True, wait: float | None = None):
        super().__init__(error.message)
        self.error = error
        self.sent = sent
        self.wait = wait


class NoBulk(Exception):
    """The server refused a bulk Send as a whole, as one without them does; nothing of it
    was done."""

    def __init__(self, error: APIError) -> None:
        super().__init__(error.message)
        self.error = error


def _error_of(data: dict[str, Any], status: int, retry_after: float | None = None) -> APIError:
    """An m3o error object as an APIError; its code if it is one, else the HTTP status."""
    code = data.get("code")
    return APIError(
        code if isinstance(code, int) and 100 <= code < 600 else status,
        str(data.get("detail", "")),
        str(data.get("id", "")),
        str(data.get("status", "")),
        retry_after=retry_after,
    )


def _answer_of(r: httpx.Response, body: bytes | bytearray) -> _Answer:
    headers = r.headers
    return _Answer(
        body,
        headers.get("content-type", ""),
        headers.get("retry-after"),
        r.reason_phrase,
        headers.get(EXTENSIONS_HEADER),
        headers.get("location"),
    )


class _Retryable(Exception):
    """An attempt failed in a way a retry may cure; ``delivered`` unless the request
    provably never reached the server (no connection was made)."""

    def __init__(self, label: str, error: ChatctlError, *, delivered: bool = True) -> None:
        super().__init__(error.message)
        self.label = label
        self.error = error
        self.delivered = delivered


def _outcome_unknown(error: ChatctlError) -> ChatctlError:
    error.outcome_unknown = True
    return error


def _other_edition(
    e: APIError, sent_as: Edition | None, body: dict[str, Any]
) -> Edition | None:
    """The edition to send a request in again, when the server refused its id's name:
    m3o checks the id first, so nothing was done."""
    if e.code != 400 or "room_id" not in body:
        return None
    if e.detail == "missing group id" and sent_as != "group":
        return "group"
    if e.detail == "missing room id" and sent_as == "group":
        return "room"
    return None


def _retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header: a number of seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        seconds = when.timestamp() - time.time()
    return max(0.0, seconds) if seconds == seconds else None  # NaN: no usable value


def _tls_failure(e: BaseException, where: str) -> CertificateError | None:
    """The TLS failure behind a connection error, if that is what it was."""
    import ssl

    cause: BaseException | None = e
    while cause is not None:
        if isinstance(cause, ssl.SSLCertVerificationError):
            why = cause.verify_message or cause.reason or "is not trusted"
            return CertificateError(where, f"is not trusted: {why}")
        if isinstance(cause, ssl.SSLError):
            return CertificateError(where, f"failed: {cause.reason or cause}", verify=False)
        cause = cause.__cause__ or cause.__context__
    return None


class JoinStream:
    """One Join connection: opened first (the handshake says which extensions the server
    has), then the request is sent as the first frame (``start``), then frames are read."""

    def __init__(self, client: Client, ping_interval: float) -> None:
        from websockets.sync import client as ws

        self.client = client
        #: an error frame chatctl's server sent before closing; the close says the rest.
        self._error: APIError | None = None
        scheme = "wss" if client.tls else "ws"
        uri = f"{scheme}://{client.base.split('://', 1)[1]}/v1/chat/Join"
        headers = {"User-Agent": f"chatctl/{__version__}"}
        if client.token:
            headers["Authorization"] = f"Bearer {client.token}"
        started = time.perf_counter()
        # A ping every ping_interval, unanswered for 2 intervals, drops the connection: a
        # dead one is noticed within 3 intervals (24 s) even when no close frame arrives.
        # close_timeout is short because a dead peer will never finish a close handshake.
        options: dict[str, Any] = {
            "additional_headers": headers,
            "open_timeout": client.timeout,
            "ping_interval": ping_interval,
            "ping_timeout": ping_interval * 2,
            "close_timeout": 1.0,
            "max_size": 2**22,
            "user_agent_header": None,
        }
        try:
            if client.tls:
                options["ssl"] = client.ssl_context()
            uds = client._socket()  # the embedded local server, started if need be
            #: the budget of opening the stream and starting it (``start``), as of a call:
            #: websockets bounds its connect, TLS and handshake by one deadline too.
            self.deadline = time.monotonic() + client.timeout
            self._opened: Any
            if hasattr(ws, "reconnect"):
                # websockets 17.1+ follows redirects (with the token, to the same host);
                # chatctl follows none, as for its other calls: a 3xx is reported.
                opener = ws.unix_reconnect(uds, uri, **options) if uds else ws.reconnect(
                    uri, **options
                )
                opener.process_redirect = _no_redirect  # type: ignore[method-assign]
                self._opened = opener
            else:
                self._opened = ws.unix_connect(uds, uri, **options) if uds else ws.connect(
                    uri, **options
                )
            # Entered as a context manager: websockets 17.1+ deprecates a bare connect().
            self.ws = self._opened.__enter__()
        except ChatctlError:
            client._log("JOIN", "/v1/chat/Join", "unreachable", started)
            raise
        except Exception as e:
            from websockets.exceptions import InvalidStatus

            status = e.response.status_code if isinstance(e, InvalidStatus) else "unreachable"
            client._log("JOIN", "/v1/chat/Join", status, started)
            client.forget_connection()
            error = _join_connect_error(client, e)
            error.passing = _passing_handshake(e, error)
            raise error from None
        client._log("JOIN", "/v1/chat/Join", 101, started)
        if not client._local:
            response = self.ws.response
            client.server.learn(response.headers.get(EXTENSIONS_HEADER) if response else None)

    def start(self, body: dict[str, Any]) -> None:
        """Send the JoinRequest (built with the seed's names) in the server's edition. A
        plain m3o server decodes it strictly (an unknown field fails the stream), so its
        edition must be known first: one seed-shaped List asks when nothing has said."""
        client = self.client
        client.require(ENDPOINTS["Join"], body)
        client.bound(ENDPOINTS["Join"], body)
        if client.server.edition is None and client.server.plain:
            user = body.get("user_id")
            client._call(ENDPOINTS["List"], {"user_id": user} if user else {}, self.deadline)
        from websockets.exceptions import ConnectionClosed

        # Closed before it took the request (a refused token's 4401 comes right after the
        # handshake): the frames and close it sent are read by ``next``, which says why,
        # as for a stream closed at any other moment.
        with contextlib.suppress(ConnectionClosed):
            self.ws.send(json.dumps(in_edition(body, client.server.edition)))

    @property
    def server_time(self) -> datetime | None:
        """When the server accepted this stream, by its own clock (the handshake's Date
        header, to the second, rounded down); None if it sent no usable Date."""
        response = self.ws.response
        date = response.headers.get("Date") if response is not None else None
        try:
            return parsedate_to_datetime(date) if date else None
        except (TypeError, ValueError):
            return None

    def next(self, timeout: float | None = None) -> dict[str, Any]:
        """The next message or event frame, decoded.

        Raises StreamClosed when the server ends the stream on purpose (4000 + HTTP code),
        ConnectError when the connection drops, TimeoutError after ``timeout`` seconds
        without a frame.
        """
        from websockets.exceptions import ConnectionClosed

        while True:
            try:
                raw = self.ws.recv(timeout=timeout)
            except TimeoutError:
                raise  # no frame in time: the caller's idle timeout, not a dead connection
            except ConnectionClosed as e:
                closed = _closed_error(self.client, e)
                if isinstance(closed, ConnectError) and self._error is not None:
                    raise self._error from None  # dropped after its error: the error says why
                raise closed from None
            except OSError as e:
                raise ConnectError(
                    f"connection to {self.client.where} lost: {_reason(e)}",
                    where=self.client.where,
                    local=self.client._local,
                ) from None
            try:
                frame = decode(raw)
            except TooDeep as e:
                raise BadAnswerError(self.client.where, f"a Join frame of {e}") from None
            except ValueError:
                continue
            if not isinstance(frame, dict):
                continue
            if "message" in frame or "event" in frame:
                return frame
            error = _error_frame(frame)
            if error is None:
                continue
            if self.client.server.plain:
                # m3o ends a stream with its error and drops the connection: this is the
                # end, and the error says why (no reconnecting into the same refusal).
                raise error
            # chatctl's server closes right after, with the error's code in the close.
            self._error = error

    def close(self) -> None:
        self._opened.__exit__(None, None, None)


def _no_redirect(exc: Exception) -> Exception:
    return exc


def _error_frame(frame: dict[str, Any]) -> APIError | None:
    """An m3o error object sent as a frame, as an APIError; None for anything else."""
    code, detail = frame.get("code"), frame.get("detail")
    if not isinstance(code, int) or isinstance(code, bool) or not isinstance(detail, str):
        return None
    return APIError(
        code if 100 <= code < 600 else 500,
        detail,
        str(frame.get("id", "")),
        str(frame.get("status", "")),
    )


def _join_connect_error(client: Client, e: Exception) -> ChatctlError:
    from websockets.exceptions import InvalidHandshake, InvalidStatus

    if isinstance(e, InvalidStatus):
        response = e.response
        answer = _Answer(
            bytes(response.body or b""),
            response.headers.get("Content-Type", ""),
            response.headers.get("Retry-After"),
            response.reason_phrase,
            location=response.headers.get("Location"),
        )
        error = client._api_error(response.status_code, answer)
        if isinstance(error, APIError) and not error.id:
            error.id = "chat.join"
        return error
    tls = _tls_failure(e, client.where)
    if tls is not None:
        return tls
    if isinstance(e, InvalidHandshake):
        return NotAnAPIError(client.where, 200, "no WebSocket upgrade")
    if isinstance(e, TimeoutError):
        return NoAnswerError(client.where, client.timeout, local=client._local)
    return client._connect_error(_reason(e))


def _passing_handshake(e: Exception, error: ChatctlError) -> bool:
    """Is a failed Join handshake what a restart, a proxy or a database blip produces? An
    error status is, unless it is the API's own refusal (an m3o error object, and not
    502-504): a proxy answers for a replica that is down with a page of its own, whatever
    its status. Otherwise as the error says: a connection refused or lost is, a TLS
    failure or something that is not an m3o server is not."""
    from websockets.exceptions import InvalidStatus

    if isinstance(e, InvalidStatus):
        status = e.response.status_code
        if status in _RETRY_STATUSES:
            return True
        body = _Answer(bytes(e.response.body or b""), "", None, "")
        return status >= 400 and not body.m3o_error()
    return error.passing


#: close codes of a stream ended by a restart, a proxy or a blip (None: no close frame
#: came, the connection dropped): the stream is resumed. 1008 (policy: a refused Origin),
#: 1009 (too big) and the protocol errors would end the same way again.
_PASSING_CLOSES = frozenset({None, 1000, 1001, 1005, 1006, 1011, 1012, 1013, 1014})


def _closed_error(client: Client, e: Exception) -> ChatctlError:
    rcvd = getattr(e, "rcvd", None)
    code = rcvd.code if rcvd is not None else None
    reason = rcvd.reason if rcvd is not None else ""
    where, local = client.where, client._local
    if code is not None and 4000 <= code < 5000:
        return StreamClosed(code, reason)
    if code == CLOSE_GOING_AWAY:
        return ConnectError(f"{where} is going away (restarting or stopping)", where=where)
    if code == 1000:
        return ConnectError(f"{where} closed the stream", where=where, local=local)
    if code in (None, 1005, 1006):
        return ConnectError(f"connection to {where} lost", where=where, local=local)
    error = ConnectError(
        f"{where} closed the stream: {reason or 'no reason given'} (close {code})",
        where=where,
        local=local,
    )
    error.passing = code in _PASSING_CLOSES
    return error


_HEADER_VALUE = re.compile(r"""b'(?:[^'\\]|\\.)*'|b"(?:[^"\\]|\\.)*"|Bearer\s+\S+""")


def _reason(e: BaseException) -> str:
    # A header the transport refused is quoted in its message (h11: "Illegal header value
    # b'Bearer …'"): no quoted bytes, and no bearer token, ever reach the user.
    text = _HEADER_VALUE.sub("<redacted>", str(e) or type(e).__name__)
    lower = text.lower()
    if "refused" in lower:
        return "connection refused"
    if (
        "name or service not known" in lower
        or "nodename nor servname" in lower
        or "temporary failure in name resolution" in lower
        or "no address associated" in lower
    ):
        return "unknown host"
    if "no such file" in lower:
        return "no such socket"
    if "reset by peer" in lower:
        return "connection reset"
    if "disconnected without sending a response" in lower or "peer closed" in lower:
        return "the server closed the connection without answering"
    return text.splitlines()[0][:200]
