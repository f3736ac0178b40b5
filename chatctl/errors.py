"""The exceptions chatctl raises, and the exit status each one maps to.

The exception tree::

    ChatctlError                 exit status 1 unless a subclass says otherwise
    ├── UsageError               2  bad flags or bad input; nothing was sent
    ├── ConnectError             3  the server could not be reached (refused, DNS, timeout)
    ├── NotFoundError            5  nothing by that name (found out by the client itself)
    ├── APIError                 from the HTTP code: 401/403 -> 4, 404 -> 5, other -> 1
    └── StreamClosed             the server ended a Join stream on purpose (kicked,
                                 room deleted, too slow); exit from the close code

Only the CLI's edge (``chatctl.cli.main``) turns these into messages and exit statuses;
the transport raises them and never prints.
"""

from __future__ import annotations

import enum
from http import HTTPStatus

__all__ = [
    "APIError",
    "ChatctlError",
    "ConnectError",
    "ExitStatus",
    "NotFoundError",
    "StreamClosed",
    "UsageError",
    "exit_status_for_http",
    "reason_phrase",
]


class ExitStatus(enum.IntEnum):
    """Every exit status chatctl uses; the README's table lists the same."""

    OK = 0
    API_ERROR = 1
    USAGE = 2
    UNREACHABLE = 3
    FORBIDDEN = 4
    NOT_FOUND = 5
    INTERRUPTED = 130


def exit_status_for_http(code: int) -> ExitStatus:
    """The one mapping from an HTTP status to chatctl's exit status."""
    if code in (401, 403):
        return ExitStatus.FORBIDDEN
    if code == 404:
        return ExitStatus.NOT_FOUND
    if 200 <= code < 300:
        return ExitStatus.OK
    return ExitStatus.API_ERROR


def reason_phrase(code: int) -> str:
    """The standard reason phrase of an HTTP status ("Bad Request" for 400)."""
    try:
        return HTTPStatus(code).phrase
    except ValueError:
        return "Unknown"


class ChatctlError(Exception):
    """Base of every error chatctl reports to its user."""

    exit_status: ExitStatus = ExitStatus.API_ERROR

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message


class UsageError(ChatctlError):
    """Bad flags or bad input, found before anything was sent."""

    exit_status = ExitStatus.USAGE


class ConnectError(ChatctlError):
    """The server could not be reached, or did not answer in time."""

    exit_status = ExitStatus.UNREACHABLE


class NotFoundError(ChatctlError):
    """No room by the name given (the server, asked by id, answers 404 instead)."""

    exit_status = ExitStatus.NOT_FOUND


class APIError(ChatctlError):
    """The server answered with an m3o error object."""

    def __init__(
        self,
        code: int,
        detail: str,
        id: str = "",
        status: str = "",
        hint: str | None = None,
    ) -> None:
        self.code = code
        self.detail = detail
        self.id = id
        self.status = status or reason_phrase(code)
        where = f"{id}, HTTP {code}" if id else f"HTTP {code}"
        super().__init__(f"{detail} ({where})", hint)

    @property
    def exit_status(self) -> ExitStatus:  # type: ignore[override]
        return exit_status_for_http(self.code)

    def to_body(self) -> dict[str, object]:
        """The m3o error object: ``{"id", "code", "detail", "status"}``."""
        return {"id": self.id, "code": self.code, "detail": self.detail, "status": self.status}


class StreamClosed(ChatctlError):
    """The server closed a Join stream with an application close code (4000 + HTTP)."""

    def __init__(self, close_code: int, reason: str, hint: str | None = None) -> None:
        self.close_code = close_code
        self.reason = reason
        http = close_code - 4000 if 4000 <= close_code < 5000 else 0
        self.http_code = http
        super().__init__(f"stream closed: {reason or 'no reason given'} (close {close_code})", hint)

    @property
    def exit_status(self) -> ExitStatus:  # type: ignore[override]
        if self.http_code:
            return exit_status_for_http(self.http_code)
        return ExitStatus.UNREACHABLE
