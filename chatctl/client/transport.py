"""The transport and the call budget: one kept-alive httpx connection to one server.

``Transport`` holds what every request needs: the URL, the token, TLS, the connection,
and one attempt of a unary POST (``_attempt``) with its answer read and decoded here. It
raises the typed errors of ``chatctl.errors`` with the facts and never prints or words a
hint: the CLI's edge does.

Time: every call has one budget (``timeout``, 10 s by default) that covers connecting,
sending, waiting for and reading the answer, and every retry (``retry.Retry``).
Connecting gets at most ``CONNECT_TIMEOUT`` of it per attempt; a server that takes the
connection and never answers is reported (NoAnswerError) when the budget is spent, not
after 4 x 30 s.

Untrusted answers: the budget is a deadline every read and write checks (``_Deadline``,
the transport's network backend), so a server that trickles its answer, its head
included, a byte at a time is cut off when the budget ends, as one that sends nothing.
A body is decompressed here, a bounded piece at a time, and refused (BadAnswerError)
past ``MAX_ANSWER_BYTES`` decompressed (a History stream or a bulk answer: past
``MAX_ITEM`` for one item or line), in an encoding chatctl cannot decode, or as JSON
nested deeper than any m3o answer (``wire.decode``). An answer that is not an m3o one (a
web page, a proxy's error page) is reported as such, never printed; a redirect is named
as one and not followed (the token would go where it points).

URLs: ``http://`` and ``https://`` (TLS, verified against the system's trust store, or the
``ca_cert`` file alone when given; ``SSL_CERT_FILE`` and ``SSL_CERT_DIR`` are honoured),
``unix:/path/to/socket`` for HTTP over a Unix socket, and no URL at all for the embedded
local server (started on demand by ``chatctl.local``). A URL holding credentials
(``user:pass@``) is refused: they would be sent instead of the token.
"""

from __future__ import annotations

import re
import socket
import time
import zlib
from collections.abc import Callable, Generator, Iterable
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING, Any, Self, TextIO

import httpcore
import httpx

from chatctl import __version__
from chatctl.client.facts import Server
from chatctl.client.retry import BACKOFF_CAP, Retry
from chatctl.config import header_token
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
)
from chatctl.schema import EXTENSIONS_HEADER
from chatctl.wire import TooDeep, decode

if TYPE_CHECKING:
    import ssl

__all__ = ["CONNECT_TIMEOUT", "DEFAULT_TIMEOUT", "MAX_ANSWER_BYTES", "Transport", "parse_url"]

#: seconds a call may take in all, retries included, unless --timeout says otherwise.
DEFAULT_TIMEOUT = 10.0
#: seconds one attempt may take to connect (within the call's budget).
CONNECT_TIMEOUT = 3.0
#: the largest answer accepted, once decompressed: twice a full History page of maximal
#: messages (~65 MB). An answer is held whole before it is decoded, so refusing a larger
#: one (a gzip bomb) costs this much memory at most.
MAX_ANSWER_BYTES = 128 * 1024 * 1024
#: characters of one item of a streamed answer (a History message, a bulk answer line)
#: read past the end of the answer's others, at most (a message of maximal fields is
#: under 2 MiB encoded).
MAX_ITEM = 16 * 1024 * 1024
#: decompressed bytes made from an answer at a time (a gzip bomb inflates ~1000x).
_PIECE = 1024 * 1024
#: the encodings an answer may come in, as the request's Accept-Encoding says.
_ENCODINGS = {"gzip": zlib.MAX_WBITS | 16, "x-gzip": zlib.MAX_WBITS | 16, "deflate": 0}
#: the statuses a retry may cure (a proxy's, a restarting server's).
RETRY_STATUSES = frozenset({502, 503, 504})
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


def _host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


class Transport:
    """One server's connection, its budget and one attempt of a call (the unary calls,
    History, bulk Sends and Join build on it)."""

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
        self.local = url is None
        #: the embedded local server is chatctl's own, of this very version.
        self.server = Server(ours=self.local)
        self.base, self._uds = ("http://localhost", None) if url is None else parse_url(url)
        self.tls = self.base.startswith("https://")
        self._http: httpx.Client | None = None
        self._ssl: ssl.SSLContext | None = None
        #: when the request in flight must be done by: every read and write checks it.
        self._deadline = _Deadline()

    # -- plumbing -------------------------------------------------------------------------

    def unix_socket(self) -> str | None:
        if self.local and self._uds is None:
            from chatctl.local import ensure_local_server

            self._uds = ensure_local_server()
        return self._uds

    def forget_connection(self) -> None:
        """Drop the connection; the embedded local server is looked for (and started) anew
        on the next call, as it may have exited since."""
        self.close()
        if self.local:
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
            transport = httpx.HTTPTransport(uds=self.unix_socket(), verify=verify)
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
        if self.local:
            return "the local chatctl server"
        if self._uds:
            return f"unix:{self._uds}"
        return self.base

    def retry(self, deadline: float | None = None, *, cap: float = BACKOFF_CAP) -> Retry:
        """The retries of one logical call, within this client's budget (from now, or to
        ``deadline``) and quick retries (``retry.Retry``)."""
        return Retry(
            self.timeout, retries=self.retries, sleep=self._sleep, cap=cap, deadline=deadline
        )

    def close(self) -> None:
        if self._http is not None:
            self._http.close()
            self._http = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def log(
        self, method: str, path: str, status: int | str, started: float, more: str = ""
    ) -> None:
        if self.verbose is not None:
            ms = (time.perf_counter() - started) * 1000
            print(f"{method} {self.where}{path} {status} {ms:.1f}ms{more}", file=self.verbose)

    def connect_error(self, reason: str) -> ConnectError:
        return ConnectError(
            f"cannot reach {self.where}: {reason}", where=self.where, local=self.local
        )

    # -- one attempt of a unary call --------------------------------------------------------

    def _attempt(
        self, path: str, content: bytes, headers: dict[str, str], deadline: float
    ) -> tuple[int, _Answer]:
        """One POST: the status and the answer's raw parts. Raises _Retryable for what a
        retry may cure, a final ChatctlError for what it cannot."""
        left = deadline - time.monotonic()
        if left <= 0:
            raise NoAnswerError(self.where, self.timeout, local=self.local, asked=False)
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
            error = self.connect_error("connection timed out")
            return _Retryable("timeout", error, delivered=False)
        if isinstance(e, httpx.TimeoutException):
            # Connected and asked, but no answer within the whole budget.
            raise NoAnswerError(self.where, self.timeout, local=self.local) from None
        self.forget_connection()
        if isinstance(e, httpx.ConnectError):
            tls = _tls_failure(e, self.where)
            if tls is not None:
                raise tls from None
            return _Retryable("unreachable", self.connect_error(_reason(e)), delivered=False)
        # Refused mid-way, reset, closed without an answer: a server restarting. The
        # request may have reached it.
        return _Retryable("unreachable", self.connect_error(_reason(e)))

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

    def api_error(self, status: int, answer: _Answer) -> ChatctlError:
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
    provably never reached the server (no connection was made); ``asked``: the wait the
    server named (Retry-After), if it did."""

    def __init__(
        self,
        label: str,
        error: ChatctlError,
        *,
        delivered: bool = True,
        asked: float | None = None,
    ) -> None:
        super().__init__(error.message)
        self.label = label
        self.error = error
        self.delivered = delivered
        self.asked = asked


def _outcome_unknown(error: ChatctlError) -> ChatctlError:
    error.outcome_unknown = True
    return error


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
