"""The Join stream over websockets (``JoinStream``), opened by ``Joins.join``.

The stream is opened first (the handshake's ``Chat-Extensions`` header says what the
server has), then the JoinRequest is sent as the first frame (``start``), then frames are
read (``next``). A failure says whether it is one a restart, a proxy or a database blip
produces (``ChatctlError.passing``): ``join`` waits those out and resumes. The stream
uses the client's public surface only: its address and TLS settings, ``unix_socket``,
``log``, ``forget_connection``, the server's facts, and ``probe``.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from datetime import datetime
from email.utils import parsedate_to_datetime
from typing import Any

from chatctl import __version__
from chatctl.client.transport import RETRY_STATUSES, _Answer, _reason, _tls_failure
from chatctl.client.unary import Calls
from chatctl.errors import (
    APIError,
    BadAnswerError,
    ChatctlError,
    ConnectError,
    NoAnswerError,
    NotAnAPIError,
    StreamClosed,
    UsageError,
)
from chatctl.schema import ENDPOINTS, EXTENSIONS_HEADER, in_edition
from chatctl.wire import CLOSE_GOING_AWAY, TooDeep, decode

__all__ = ["PING_INTERVAL", "JoinStream", "Joins", "join_ping_interval"]


class Joins(Calls):
    """Join streams."""

    def join(self, *, ping_interval: float | None = None, endpoint: str = "Join") -> JoinStream:
        """Open the Join stream (or ``endpoint``'s: ``JoinRooms``, many rooms), learning
        what the server has from its handshake; send the request with ``start(body)``,
        then call ``next()`` for each decoded frame. ``ping_interval``: seconds between
        its pings (default: ``join_ping_interval()``)."""
        interval = join_ping_interval() if ping_interval is None else ping_interval
        return JoinStream(self, interval, endpoint)


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


class JoinStream:
    """One Join connection: opened first (the handshake says which extensions the server
    has), then the request is sent as the first frame (``start``), then frames are read."""

    def __init__(self, client: Calls, ping_interval: float, endpoint: str = "Join") -> None:
        from websockets.sync import client as ws

        self.client = client
        self.endpoint = ENDPOINTS[endpoint]
        path = f"/v1/chat/{self.endpoint.name}"
        #: an error frame chatctl's server sent before closing; the close says the rest.
        self._error: APIError | None = None
        scheme = "wss" if client.tls else "ws"
        uri = f"{scheme}://{client.base.split('://', 1)[1]}{path}"
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
            uds = client.unix_socket()  # the embedded local server, started if need be
            #: the budget of opening the stream and starting it (``start``), as of a call:
            #: websockets bounds its connect, TLS and handshake by one deadline too.
            self.deadline = time.monotonic() + client.timeout
            self._opened: Any
            if hasattr(ws, "reconnect"):
                # websockets 17.1+ follows redirects (with the token, to the same host);
                # chatctl follows none, as for its other calls: a 3xx is reported.
                opener = (
                    ws.unix_reconnect(uds, uri, **options) if uds else ws.reconnect(uri, **options)
                )
                opener.process_redirect = _no_redirect  # type: ignore[method-assign]
                self._opened = opener
            else:
                self._opened = (
                    ws.unix_connect(uds, uri, **options) if uds else ws.connect(uri, **options)
                )
            # Entered as a context manager: websockets 17.1+ deprecates a bare connect().
            self.ws = self._opened.__enter__()
        except ChatctlError:
            client.log("JOIN", path, "unreachable", started)
            raise
        except Exception as e:
            from websockets.exceptions import InvalidStatus

            status = e.response.status_code if isinstance(e, InvalidStatus) else "unreachable"
            client.log("JOIN", path, status, started)
            client.forget_connection()
            error = _join_connect_error(client, e, self.endpoint.id)
            error.passing = _passing_handshake(e, error)
            raise error from None
        client.log("JOIN", path, 101, started)
        if not client.local:
            response = self.ws.response
            client.server.learn(response.headers.get(EXTENSIONS_HEADER) if response else None)

    def start(self, body: dict[str, Any]) -> None:
        """Send the JoinRequest (built with the seed's names) in the server's edition. A
        plain m3o server decodes it strictly (an unknown field fails the stream), so its
        edition must be known first: one seed-shaped List asks when nothing has said."""
        client = self.client
        client.require(self.endpoint, body)
        client.bound(self.endpoint, body)
        if client.server.edition is None and client.server.plain:
            user = body.get("user_id")
            client.probe(user if isinstance(user, str) else None, self.deadline)
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
                    local=self.client.local,
                ) from None
            try:
                frame = decode(raw)
            except TooDeep as e:
                raise BadAnswerError(self.client.where, f"a Join frame of {e}") from None
            except ValueError:
                continue
            if not isinstance(frame, dict):
                continue
            if not _FRAMES.isdisjoint(frame):
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


#: the frames a stream hands on: a message, an event, and a JoinRooms stream's news of its
#: rooms (one added, one ended for the user).
_FRAMES = frozenset({"message", "event", "room_added", "room_ended"})


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


def _join_connect_error(client: Calls, e: Exception, endpoint_id: str) -> ChatctlError:
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
        error = client.api_error(response.status_code, answer)
        if isinstance(error, APIError) and not error.id:
            error.id = endpoint_id
        return error
    tls = _tls_failure(e, client.where)
    if tls is not None:
        return tls
    if isinstance(e, InvalidHandshake):
        return NotAnAPIError(client.where, 200, "no WebSocket upgrade")
    if isinstance(e, TimeoutError):
        return NoAnswerError(client.where, client.timeout, local=client.local)
    return client.connect_error(_reason(e))


def _passing_handshake(e: Exception, error: ChatctlError) -> bool:
    """Is a failed Join handshake what a restart, a proxy or a database blip produces? An
    error status is, unless it is the API's own refusal (an m3o error object, and not
    502-504): a proxy answers for a replica that is down with a page of its own, whatever
    its status. Otherwise as the error says: a connection refused or lost is, a TLS
    failure or something that is not an m3o server is not."""
    from websockets.exceptions import InvalidStatus

    if isinstance(e, InvalidStatus):
        status = e.response.status_code
        if status in RETRY_STATUSES:
            return True
        body = _Answer(bytes(e.response.body or b""), "", None, "")
        return status >= 400 and not body.m3o_error()
    return error.passing


#: close codes of a stream ended by a restart, a proxy or a blip (None: no close frame
#: came, the connection dropped): the stream is resumed. 1008 (policy: a refused Origin),
#: 1009 (too big) and the protocol errors would end the same way again.
_PASSING_CLOSES = frozenset({None, 1000, 1001, 1005, 1006, 1011, 1012, 1013, 1014})


def _closed_error(client: Calls, e: Exception) -> ChatctlError:
    rcvd = getattr(e, "rcvd", None)
    code = rcvd.code if rcvd is not None else None
    reason = rcvd.reason if rcvd is not None else ""
    where, local = client.where, client.local
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
