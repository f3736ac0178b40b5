"""The one transport: unary calls over httpx, Join over websockets.

``Client.call("Send", body)`` POSTs ``{url}/v1/chat/Send`` with the bearer token over one
kept-alive connection and returns the decoded response object; ``Client.join(body)``
opens the Join WebSocket, sends the request as the first frame and yields each frame.
It raises the typed errors of ``chatctl.errors`` and never prints: the CLI's edge does.

Retries: a call that changes something carries an ``Idempotency-Key``, fresh per logical
call and the same on each retry, so retrying after a lost response never doubles it.
Connection errors, timeouts and 502/503/504 are retried with capped, jittered backoff.
A process that has not yet reached its server gives up fast (a typo in ``--url`` should
not hang); once it has, a batch rides through a server restart for ``restart_window``.

A URL of the form ``unix:/path/to/socket`` talks HTTP over that Unix socket; no URL at all
means the embedded local server (started on demand by ``chatctl.local``).
"""

from __future__ import annotations

import json
import random
import time
import uuid
from collections.abc import Callable
from datetime import datetime
from typing import Any, TextIO

import httpx

from chatctl import __version__
from chatctl.errors import APIError, ConnectError, StreamClosed, UsageError
from chatctl.schema import ENDPOINTS

__all__ = ["Client", "JoinStream"]

_RETRY_STATUSES = frozenset({502, 503, 504})


class Client:
    def __init__(
        self,
        url: str | None,
        token: str | None = None,
        *,
        timeout: float = 30.0,
        verbose: TextIO | None = None,
        retries: int = 3,
        restart_window: float = 20.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.token = token
        self.timeout = timeout
        self.verbose = verbose
        self.retries = retries
        self.restart_window = restart_window
        self._sleep = sleep
        self._reached = False
        self._uds: str | None = None
        self._local = False
        if url is None:
            self._local = True
            self.base = "http://localhost"
        elif url.startswith("unix:"):
            self._uds = url[len("unix:") :].removeprefix("//")
            self.base = "http://localhost"
        else:
            if "://" not in url:
                url = "http://" + url
            self.base = url.rstrip("/")
        self._http: httpx.Client | None = None

    # -- plumbing -------------------------------------------------------------------------

    def _socket(self) -> str | None:
        if self._local and self._uds is None:
            from chatctl.local import ensure_local_server

            self._uds = ensure_local_server()
        return self._uds

    def _client(self) -> httpx.Client:
        if self._http is None:
            uds = self._socket()
            transport = httpx.HTTPTransport(uds=uds) if uds else None
            self._http = httpx.Client(
                base_url=self.base,
                transport=transport,
                timeout=self.timeout,
                headers=self._headers(),
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

    def _log(self, method: str, path: str, status: int | str, started: float) -> None:
        if self.verbose is not None:
            ms = (time.perf_counter() - started) * 1000
            print(f"{method} {self.where}{path} {status} {ms:.1f}ms", file=self.verbose)

    # -- unary calls ----------------------------------------------------------------------

    def call(self, endpoint: str, body: dict[str, Any]) -> dict[str, Any]:
        """POST one request and return the decoded response object."""
        spec = ENDPOINTS[endpoint]
        path = f"/v1/chat/{endpoint}"
        content = json.dumps(body).encode()
        headers = {"Idempotency-Key": uuid.uuid4().hex} if spec.mutating else {}
        attempt = 0
        first_failure: float | None = None
        while True:
            started = time.perf_counter()
            try:
                response = self._client().post(path, content=content, headers=headers)
            except httpx.TimeoutException as e:
                self._log("POST", path, "timeout", started)
                error: Exception = e
                status = 0
            except (httpx.TransportError, OSError) as e:
                self._log("POST", path, "unreachable", started)
                error = e
                status = 0
            else:
                self._log("POST", path, response.status_code, started)
                status = response.status_code
                if status not in _RETRY_STATUSES:
                    self._reached = True
                    return self._decode(spec.id, response)
                error = self._api_error(spec.id, response)
            # Failed in a way worth retrying.
            now = time.monotonic()
            first_failure = first_failure or now
            attempt += 1
            in_window = self._reached and now - first_failure < self.restart_window
            if attempt > self.retries and not in_window:
                raise self._final(error)
            self._sleep(min(2.0, 0.05 * 2 ** min(attempt, 6)) * (0.5 + random.random()))
            if status == 0:
                # A fresh connection: the old one may be half-dead after a server restart,
                # and the local server may have exited idle since we looked (start it again).
                self.close()
                if self._local:
                    self._uds = None

    def _final(self, error: Exception) -> Exception:
        if isinstance(error, APIError):
            return error
        if isinstance(error, httpx.TimeoutException):
            return ConnectError(
                f"{self.where} did not answer within {self.timeout:g}s",
                hint="the server may be overloaded; retry, or raise --timeout",
            )
        reason = _reason(error)
        return ConnectError(
            f"cannot reach {self.where}: {reason}",
            hint="is the server running? check --url / CHATCTL_URL, or start one with: "
            "chatctl serve",
        )

    def _decode(self, endpoint_id: str, response: httpx.Response) -> dict[str, Any]:
        if response.status_code >= 400:
            raise self._api_error(endpoint_id, response)
        try:
            data = response.json()
        except ValueError:
            raise APIError(
                response.status_code, "the server's answer is not JSON", endpoint_id
            ) from None
        if not isinstance(data, dict):
            raise APIError(response.status_code, "the server's answer is not an object")
        return data

    @staticmethod
    def _api_error(endpoint_id: str, response: httpx.Response) -> APIError:
        try:
            data = response.json()
        except ValueError:
            data = None
        if isinstance(data, dict) and "detail" in data:
            code = data.get("code") if isinstance(data.get("code"), int) else None
            return _with_hint(
                APIError(
                    code or response.status_code,
                    str(data.get("detail", "")),
                    str(data.get("id", "")),
                    str(data.get("status", "")),
                )
            )
        text = response.text.strip().splitlines()[0][:200] if response.text.strip() else ""
        return _with_hint(APIError(response.status_code, text or response.reason_phrase))

    # -- the Join stream ------------------------------------------------------------------

    def join(self, body: dict[str, Any], *, ping_interval: float = 8.0) -> JoinStream:
        """Open the Join stream; iterate the result for each decoded frame."""
        return JoinStream(self, body, ping_interval)


class JoinStream:
    """One Join connection: the request is sent as the first frame; frames are yielded."""

    def __init__(self, client: Client, body: dict[str, Any], ping_interval: float) -> None:
        from websockets.sync.client import connect, unix_connect

        self.client = client
        scheme = "wss" if client.base.startswith("https://") else "ws"
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
            uds = client._socket()
            # Entered as a context manager: websockets 17.1+ deprecates a bare connect().
            self._opened = unix_connect(uds, uri, **options) if uds else connect(uri, **options)
            self.ws = self._opened.__enter__()
        except Exception as e:
            client._log("JOIN", "/v1/chat/Join", "unreachable", started)
            raise _join_connect_error(client, e) from None
        client._log("JOIN", "/v1/chat/Join", 101, started)
        self.ws.send(json.dumps(body))

    @property
    def server_time(self) -> datetime | None:
        """When the server accepted this stream, by its own clock (the handshake's Date
        header, to the second, rounded down); None if it sent no usable Date."""
        from email.utils import parsedate_to_datetime

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
                    f"connection to {self.client.where} lost: {_reason(e)}"
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


def _join_connect_error(client: Client, e: Exception) -> Exception:
    from websockets.exceptions import InvalidStatus

    if isinstance(e, InvalidStatus):
        response = e.response
        try:
            data = json.loads(response.body or b"")
        except ValueError:
            data = None
        if isinstance(data, dict) and "detail" in data:
            return _with_hint(
                APIError(response.status_code, str(data["detail"]), str(data.get("id", "")))
            )
        return APIError(response.status_code, response.reason_phrase, "chat.join")
    if isinstance(e, UsageError):
        return e
    if isinstance(e, TimeoutError):
        return ConnectError(f"{client.where} did not answer within {client.timeout:g}s")
    return ConnectError(
        f"cannot reach {client.where}: {_reason(e)}",
        hint="is the server running? check --url / CHATCTL_URL, or start one with: chatctl serve",
    )


def _closed_error(client: Client, e: Exception) -> Exception:
    rcvd = getattr(e, "rcvd", None)
    code = rcvd.code if rcvd is not None else None
    reason = rcvd.reason if rcvd is not None else ""
    if code is not None and 4000 <= code < 5000:
        return _hint_stream(StreamClosed(code, reason))
    if code == 1001:
        return ConnectError(f"{client.where} is going away (restarting or stopping)")
    if code in (1000,):
        return ConnectError(f"{client.where} closed the stream")
    return ConnectError(f"connection to {client.where} lost")


def _hint_stream(e: StreamClosed) -> StreamClosed:
    if e.close_code == 4008:
        e.hint = "this reader fell behind; resume with --since the last message id"
    elif e.close_code == 4403:
        e.hint = "ask a member to invite you again: chatctl invite ROOM USER"
    return e


def _with_hint(e: APIError) -> APIError:
    detail = e.detail.lower()
    if "not in the room" in detail:
        e.hint = "invite the user first (chatctl invite ROOM USER) or join it (chatctl join ROOM)"
    elif e.code == 401:
        e.hint = "set a token with --token, CHATCTL_TOKEN or: chatctl config set token TOKEN"
    elif e.code == 403:
        e.hint = "the room is private or you were removed; ask a member to invite you"
    elif "room not found" in detail:
        e.hint = "list the rooms you can see with: chatctl list"
    elif e.code == 409:
        e.hint = "an Idempotency-Key was reused with a different request"
    return e


def _reason(e: BaseException) -> str:
    text = str(e) or type(e).__name__
    lower = text.lower()
    if "refused" in lower:
        return "connection refused"
    if "name or service not known" in lower or "nodename nor servname" in lower:
        return "unknown host"
    if "no such file" in lower:
        return "no such socket"
    return text.splitlines()[0][:200]
