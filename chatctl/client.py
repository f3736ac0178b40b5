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
through a server restart.

Untrusted answers: a body larger than ``MAX_ANSWER_BYTES`` or still trickling in when
the budget ends is refused; an answer that is not an m3o one (a web page, a proxy's error
page) is reported as such, never printed.

URLs: ``http://`` and ``https://`` (TLS, verified against the system's trust store, or the
``ca_cert`` file alone when given; ``SSL_CERT_FILE`` and ``SSL_CERT_DIR`` are honoured),
``unix:/path/to/socket`` for HTTP over a Unix socket, and no URL at all for the embedded
local server (started on demand by ``chatctl.local``). A URL holding credentials
(``user:pass@``) is refused: they would be sent instead of the token.
"""

from __future__ import annotations

import json
import random
import time
import uuid
from collections.abc import Callable, Generator, Sequence
from datetime import datetime
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING, Any, TextIO

import httpx

from chatctl import __version__
from chatctl.errors import (
    APIError,
    CertificateError,
    ChatctlError,
    ConnectError,
    NoAnswerError,
    NotAnAPIError,
    SettingError,
    StreamClosed,
)
from chatctl.schema import ENDPOINTS, EXTENSIONS_HEADER, SERVER_EXTENSIONS, parse_extensions

if TYPE_CHECKING:
    import ssl

__all__ = [
    "CONNECT_TIMEOUT",
    "DEFAULT_TIMEOUT",
    "BulkCut",
    "Client",
    "JoinStream",
    "NoBulk",
    "parse_url",
]

#: seconds a call may take in all, retries included, unless --timeout says otherwise.
DEFAULT_TIMEOUT = 10.0
#: seconds one attempt may take to connect (within the call's budget).
CONNECT_TIMEOUT = 3.0
#: the largest answer accepted (a full History page of maximal messages is ~65 MB).
MAX_ANSWER_BYTES = 256 * 1024 * 1024
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
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in _SCHEMES:
        raise SettingError(f"unsupported URL scheme {scheme!r}", "scheme")
    try:
        host, port = parts.hostname, parts.port
    except ValueError as e:
        raise SettingError(f"malformed URL: {e}", "host") from None
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
        self.token = token
        self.timeout = timeout
        self.ca_cert = ca_cert
        self.verbose = verbose
        self.retries = retries
        self._sleep = sleep
        self._reached = False
        self._local = url is None
        #: chatctl's extensions the server names (``Chat-Extensions``), learnt from its
        #: answers; None before any. The embedded local server is chatctl's own.
        self.extensions: frozenset[str] | None = None
        if url is None:
            self.extensions = frozenset(SERVER_EXTENSIONS)
        self.base, self._uds = ("http://localhost", None) if url is None else parse_url(url)
        self.tls = self.base.startswith("https://")
        self._http: httpx.Client | None = None
        self._ssl: ssl.SSLContext | None = None

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
            self._http = httpx.Client(
                base_url=self.base,
                transport=httpx.HTTPTransport(uds=self._socket(), verify=verify),
                verify=verify,
                headers=self._headers(),
                follow_redirects=False,
            )
        return self._http

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json", "User-Agent": f"chatctl/{__version__}"}
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
        """POST one request and return the decoded response object, within the budget. A
        change carries ``key`` as its Idempotency-Key (a fresh one when None)."""
        spec = ENDPOINTS[endpoint]
        path = f"/v1/chat/{endpoint}"
        content = json.dumps(body).encode()
        headers = {"Idempotency-Key": key or uuid.uuid4().hex} if spec.mutating else {}
        deadline = time.monotonic() + self.timeout
        failures = 0
        while True:
            started = time.perf_counter()
            try:
                status, answer = self._attempt(path, content, headers, deadline)
            except _Retryable as e:
                self._log("POST", path, e.label, started)
                error: ChatctlError = e.error
                wait = None
            else:
                self._log("POST", path, status, started)
                self._reached = True
                if status < 300:
                    data = self._decode(status, answer)
                    self._learn(answer.extensions)
                    return data
                error = self._api_error(status, answer)
                if isinstance(error, APIError):
                    self._learn(answer.extensions)
                if status != 429 and status not in _RETRY_STATUSES:
                    raise error
                asked = error.retry_after if isinstance(error, APIError) else None
                wait = None if asked is None else max(asked, 0.05)  # never a busy loop
            failures += 1
            if wait is None:
                if not self._reached and failures > self.retries:
                    raise error
                wait = min(2.0, 0.05 * 2 ** min(failures, 6)) * (0.5 + random.random())
            if time.monotonic() + wait >= deadline:
                raise error  # the budget cannot cover the wait: report what we know
            self._sleep(wait)

    def _attempt(
        self, path: str, content: bytes, headers: dict[str, str], deadline: float
    ) -> tuple[int, _Answer]:
        """One POST: the status and the answer's raw parts. Raises _Retryable for what a
        retry may cure, a final ChatctlError for what it cannot."""
        left = deadline - time.monotonic()
        if left <= 0:
            raise NoAnswerError(self.where, self.timeout, local=self._local)
        timeout = httpx.Timeout(left, connect=min(CONNECT_TIMEOUT, left))
        try:
            http = self._client()
            with http.stream("POST", path, content=content, headers=headers, timeout=timeout) as r:
                body = bytearray()
                for chunk in r.iter_bytes():
                    body += chunk
                    if len(body) > MAX_ANSWER_BYTES:
                        raise APIError(r.status_code, "the answer is larger than 256 MiB")
                    if time.monotonic() > deadline:
                        raise NoAnswerError(self.where, self.timeout, local=self._local)
                return r.status_code, _answer_of(r, bytes(body))
        except httpx.ConnectTimeout:
            self.forget_connection()
            raise _Retryable("timeout", self._connect_error("connection timed out")) from None
        except httpx.TimeoutException:
            # Connected and asked, but no answer within the whole budget.
            raise NoAnswerError(self.where, self.timeout, local=self._local) from None
        except httpx.ConnectError as e:
            self.forget_connection()
            tls = _tls_failure(e, self.where)
            if tls is not None:
                raise tls from None
            raise _Retryable("unreachable", self._connect_error(_reason(e))) from None
        except (httpx.TransportError, OSError) as e:
            # Refused mid-way, reset, closed without an answer: a server restarting.
            self.forget_connection()
            raise _Retryable("unreachable", self._connect_error(_reason(e))) from None
        except httpx.HTTPError as e:  # e.g. a body its content-encoding cannot decode
            self.forget_connection()
            raise ConnectError(
                f"{self.where} sent an answer that cannot be read: {_reason(e)}",
                where=self.where,
            ) from None

    def _decode(self, status: int, answer: _Answer) -> dict[str, Any]:
        data = answer.json()
        if not isinstance(data, dict):
            raise NotAnAPIError(self.where, status, answer.content_type)
        return data

    def _api_error(self, status: int, answer: _Answer) -> ChatctlError:
        data = answer.json()
        retry_after = _retry_after(answer.retry_after)
        if isinstance(data, dict) and "detail" in data:
            code = data.get("code")
            return APIError(
                code if isinstance(code, int) and 100 <= code < 600 else status,
                str(data.get("detail", "")),
                str(data.get("id", "")),
                str(data.get("status", "")),
                retry_after=retry_after,
            )
        # No m3o error object: never show the body (a web page, a proxy's error page).
        if status >= 500 or status in (401, 403, 429):
            what = answer.content_type.split(";")[0].strip() or "an empty body"
            return APIError(
                status,
                f"{answer.reason or 'error'} (the answer is not an m3o error object: {what})",
                retry_after=retry_after,
            )
        return NotAnAPIError(self.where, status, answer.content_type)

    def _learn(self, header: str | None) -> None:
        """What an m3o answer's Chat-Extensions header says the server has (none without
        it: a plain m3o server)."""
        if not self._local:
            self.extensions = frozenset() if header is None else parse_extensions(header)

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
        try:
            with self._client().stream(
                "POST", path, content=b"\n".join(lines) + b"\n", headers=headers, timeout=timeout
            ) as r:
                status = r.status_code
                if status != 200 or not r.headers.get("content-type", "").startswith(NDJSON):
                    self._refused_bulk(r)
                self._reached = True
                self._learn(r.headers.get(EXTENSIONS_HEADER))
                partial = b""
                for chunk in r.iter_bytes():
                    *whole, partial = (partial + chunk).split(b"\n")
                    if len(partial) > MAX_ANSWER_BYTES:
                        raise APIError(status, "an answer line is larger than 256 MiB")
                    for line in whole:
                        answered += 1
                        yield self._bulk_answer(line, status)
                if partial:
                    raise BulkCut(self._connect_error("the answer was cut short"))
        except httpx.ConnectTimeout:
            self.forget_connection()
            raise BulkCut(self._connect_error("connection timed out"), sent=False) from None
        except httpx.TimeoutException:
            raise NoAnswerError(self.where, self.timeout, local=self._local) from None
        except httpx.ConnectError as e:
            self.forget_connection()
            tls = _tls_failure(e, self.where)
            if tls is not None:
                raise tls from None
            raise BulkCut(self._connect_error(_reason(e)), sent=False) from None
        except (httpx.TransportError, OSError) as e:
            self.forget_connection()
            raise BulkCut(self._connect_error(_reason(e))) from None
        finally:
            self._log("POST", path, status, started, f" ({answered} of {len(lines)} lines)")

    def _refused_bulk(self, r: httpx.Response) -> None:
        """A bulk Send answered as a whole (not line by line): raise what it means."""
        body = r.read()[:MAX_ANSWER_BYTES]
        answer = _answer_of(r, body)
        status = r.status_code
        if status == 200:  # not an NDJSON answer: whatever answered knows no bulk Send
            raise NotAnAPIError(self.where, status, answer.content_type)
        error = self._api_error(status, answer)
        if isinstance(error, APIError):
            self._learn(answer.extensions)
            # A server without bulk sends: it takes no NDJSON, or reads the lines as one
            # JSON body (which is not JSON), refusing before anything is done.
            if status == 415 or (status == 400 and "not valid JSON" in error.detail):
                raise NoBulk(error)
            if status == 429 or status in _RETRY_STATUSES:
                raise BulkCut(error, sent=False, wait=error.retry_after)
        raise error

    def _bulk_answer(self, line: bytes, status: int) -> dict[str, Any] | APIError:
        try:
            data = json.loads(line)
        except ValueError:
            data = None
        if isinstance(data, dict) and isinstance(data.get("message"), dict):
            return data
        if isinstance(data, dict) and "detail" in data:
            code = data.get("code")
            return APIError(
                code if isinstance(code, int) and 100 <= code < 600 else status,
                str(data.get("detail", "")),
                str(data.get("id", "")),
                str(data.get("status", "")),
            )
        raise NotAnAPIError(self.where, status, NDJSON)

    # -- the Join stream ------------------------------------------------------------------

    def join(self, body: dict[str, Any], *, ping_interval: float = 8.0) -> JoinStream:
        """Open the Join stream; call ``next()`` on the result for each decoded frame."""
        return JoinStream(self, body, ping_interval)


class _Answer:
    """An HTTP answer's raw parts; the body is decoded only when asked for."""

    def __init__(
        self,
        body: bytes,
        content_type: str,
        retry_after: str | None,
        reason: str,
        extensions: str | None = None,
    ) -> None:
        self.body = body
        self.content_type = content_type
        self.retry_after = retry_after
        self.reason = reason
        #: the Chat-Extensions header, if the server sent one.
        self.extensions = extensions

    def json(self) -> Any:
        """The body as JSON, or None when it is not JSON."""
        try:
            return json.loads(self.body)
        except ValueError:
            return None


def _answer_of(r: httpx.Response, body: bytes) -> _Answer:
    headers = r.headers
    return _Answer(
        body,
        headers.get("content-type", ""),
        headers.get("retry-after"),
        r.reason_phrase,
        headers.get(EXTENSIONS_HEADER),
    )


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


class _Retryable(Exception):
    """An attempt failed in a way a retry may cure."""

    def __init__(self, label: str, error: ChatctlError) -> None:
        super().__init__(error.message)
        self.label = label
        self.error = error


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
    """One Join connection: the request is sent as the first frame; frames are read."""

    def __init__(self, client: Client, body: dict[str, Any], ping_interval: float) -> None:
        from websockets.sync.client import connect, unix_connect

        self.client = client
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
            uds = client._socket()
            # Entered as a context manager: websockets 17.1+ deprecates a bare connect().
            self._opened = unix_connect(uds, uri, **options) if uds else connect(uri, **options)
            self.ws = self._opened.__enter__()
        except ChatctlError:
            client._log("JOIN", "/v1/chat/Join", "unreachable", started)
            raise
        except Exception as e:
            client._log("JOIN", "/v1/chat/Join", "unreachable", started)
            client.forget_connection()
            raise _join_connect_error(client, e) from None
        client._log("JOIN", "/v1/chat/Join", 101, started)
        self.ws.send(json.dumps(body))

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
                raise _closed_error(self.client, e) from None
            except OSError as e:
                raise ConnectError(
                    f"connection to {self.client.where} lost: {_reason(e)}",
                    where=self.client.where,
                    local=self.client._local,
                ) from None
            try:
                frame = json.loads(raw)
            except ValueError:
                continue
            # The error frame before an application close carries no frame key: the close
            # that follows says the same, with its code.
            if isinstance(frame, dict) and ("message" in frame or "event" in frame):
                return frame

    def close(self) -> None:
        self._opened.__exit__(None, None, None)


def _join_connect_error(client: Client, e: Exception) -> ChatctlError:
    from websockets.exceptions import InvalidHandshake, InvalidStatus

    if isinstance(e, InvalidStatus):
        response = e.response
        answer = _Answer(
            bytes(response.body or b""),
            response.headers.get("Content-Type", ""),
            response.headers.get("Retry-After"),
            response.reason_phrase,
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


def _closed_error(client: Client, e: Exception) -> ChatctlError:
    rcvd = getattr(e, "rcvd", None)
    code = rcvd.code if rcvd is not None else None
    reason = rcvd.reason if rcvd is not None else ""
    where, local = client.where, client._local
    if code is not None and 4000 <= code < 5000:
        return StreamClosed(code, reason)
    if code == 1001:
        return ConnectError(f"{where} is going away (restarting or stopping)", where=where)
    if code == 1000:
        return ConnectError(f"{where} closed the stream", where=where, local=local)
    return ConnectError(f"connection to {where} lost", where=where, local=local)


def _reason(e: BaseException) -> str:
    text = str(e) or type(e).__name__
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
