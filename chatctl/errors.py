"""The exceptions chatctl raises, and the exit status each one maps to.

The exception tree::

    ChatctlError                 exit status 1 unless a subclass says otherwise
    ├── UsageError               2  bad flags or bad input; nothing was sent
    │   ├── SettingError         2  a URL or CA file chatctl cannot use (scheme, credentials)
    │   └── UnsupportedError     2  the server lacks an extension a flag needs (plain m3o)
    ├── ConnectError             3  the server could not be reached (refused, DNS, lost)
    │   ├── NoAnswerError        3  it accepted the connection but did not answer in time
    │   ├── CertificateError     3  its TLS certificate is not trusted (or TLS failed)
    │   ├── NotAnAPIError        3  something answered, but not an m3o Chat API (a web page)
    │   └── RedirectError        3  it answered with a redirect, which chatctl does not follow
    ├── BadAnswerError           3  an answer chatctl will not read: too large once
    │                               decompressed, undecodable, or JSON nested too deeply
    ├── NotFoundError            5  nothing by that name (found out by the client itself)
    ├── APIError                 from the HTTP code: 401/403 -> 4, 404 -> 5, other -> 1;
    │                            m3o's 400 ``room not found``/``group not found`` -> 5
    ├── StreamClosed             the server ended a Join stream on purpose (kicked,
    │                            room deleted, too slow); exit from the close code
    ├── OutputError              1  the output could not be written (full disk, closed stdout)
    ├── server.migrations:       serve's database schema: SchemaTooOld 1 (run chatctl
    │                            serve migrate), SchemaTooNew 6 (a newer release's)
    └── Interrupted              130  Ctrl-C, after a write batch finished its call in flight

The transport raises these with the facts (``where``, ``code``, ``close_code``) and never
prints; only the CLI's edge (``chatctl.cli.main``) words them as one line, adds the hint
that says what to do next, and maps them to exit statuses.
"""

from __future__ import annotations

import enum
from http import HTTPStatus

__all__ = [
    "APIError",
    "BadAnswerError",
    "CertificateError",
    "ChatctlError",
    "ConnectError",
    "ExitStatus",
    "Interrupted",
    "NoAnswerError",
    "NotAnAPIError",
    "NotFoundError",
    "OutputError",
    "RedirectError",
    "SettingError",
    "StreamClosed",
    "UnsupportedError",
    "UsageError",
    "exit_status_for_http",
    "reason_phrase",
    "shorten",
    "unsettled",
]

#: characters of a server's text (an error's detail, a header) shown in an error line.
SHOWN = 300
#: m3o's details for an unknown room (it answers them with 400, not 404).
_NOT_FOUND_DETAILS = frozenset({"room not found", "group not found"})


def shorten(text: str, limit: int = SHOWN) -> str:
    """A server's text as an error line shows it: whole when short, else its first
    ``limit`` characters and its length (``… (102400 bytes)``)."""
    if len(text) <= limit:
        return text
    size = len(text.encode("utf-8", "surrogatepass"))
    return f"{text[:limit]}… ({size} bytes)"


class ExitStatus(enum.IntEnum):
    """Every exit status chatctl uses; the README's table lists the same."""

    OK = 0
    API_ERROR = 1
    USAGE = 2
    UNREACHABLE = 3
    FORBIDDEN = 4
    NOT_FOUND = 5
    #: ``serve``/``serve migrate``: a newer release migrated the database incompatibly;
    #: restarting cannot help (systemd: RestartPreventExitStatus=6).
    SCHEMA_TOO_NEW = 6
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
    #: one more line for the user after the error and its hint (a batch's count).
    summary: str | None = None
    #: a change failed in a way that leaves its outcome unknown (the connection was lost
    #: or a gateway failed mid-call) on a server that cannot make a retry safe, so it was
    #: not retried: it may or may not have been done.
    outcome_unknown: bool = False
    #: what a restart, a proxy or a database blip produces (a connection lost, a gateway's
    #: 502/503/504, a stream closed 1001 or 4503): ``join`` reconnects and resumes.
    passing: bool = False
    #: a change that reached the server ended without an answer saying whether it was
    #: done (a 502/503/504 or silence after it was sent, on a server that takes an
    #: Idempotency-Key, once the retries' budget ran out): a 503's abandoned write may
    #: still land later, so a plain rerun could do it twice.
    maybe_stored: bool = False
    #: with ``maybe_stored``: the option that reruns it so that it is done at most once
    #: (``--batch-key KEY``, the key it went with), where the command has one.
    rerun: str | None = None

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message


class UsageError(ChatctlError):
    """Bad flags or bad input, found before anything was sent."""

    exit_status = ExitStatus.USAGE


class SettingError(UsageError):
    """A connection setting chatctl cannot use; ``setting`` names it: ``scheme``,
    ``credentials``, ``host`` (a URL without one or malformed), or ``ca_cert``."""

    def __init__(self, message: str, setting: str) -> None:
        super().__init__(message)
        self.setting = setting


class UnsupportedError(UsageError):
    """The server does not have a chatctl extension the request needs (it is a plain m3o
    server, or an older chatctl); found before anything was sent. ``feature`` is the
    extension's name (``resume``, ``events``...) and ``where`` the server."""

    def __init__(self, message: str, feature: str, where: str) -> None:
        super().__init__(message)
        self.feature = feature
        self.where = where


class ConnectError(ChatctlError):
    """The server could not be reached, or the connection to it was lost.

    ``where`` is the server as the user should see it (never with credentials);
    ``local`` is True for the embedded local server.
    """

    exit_status = ExitStatus.UNREACHABLE
    passing = True

    def __init__(
        self, message: str, hint: str | None = None, *, where: str = "", local: bool = False
    ) -> None:
        super().__init__(message, hint)
        self.where = where
        self.local = local


class NoAnswerError(ConnectError):
    """The server took the connection (or the request) but did not answer in time."""

    def __init__(
        self, where: str, seconds: float, *, local: bool = False, asked: bool = True
    ) -> None:
        super().__init__(
            f"{where} did not answer within {seconds:g}s", where=where, local=local
        )
        self.seconds = seconds
        #: False when the budget was spent before this attempt sent anything.
        self.asked = asked


class CertificateError(ConnectError):
    """TLS failed: the server's certificate is not trusted, or the handshake broke."""

    passing = False

    def __init__(self, where: str, reason: str, *, verify: bool = True) -> None:
        what = "the certificate of" if verify else "the TLS handshake with"
        super().__init__(f"{what} {where} {reason}", where=where)
        #: True when the certificate was refused (not some other TLS failure).
        self.verify = verify


class NotAnAPIError(ConnectError):
    """Something answered at the URL, but not as an m3o Chat API (e.g. a web page)."""

    passing = False

    def __init__(self, where: str, status: int, content_type: str) -> None:
        what = shorten(content_type.split(";")[0].strip(), 100) or "no content type"
        super().__init__(
            f"{where} is not an m3o Chat API: it answered HTTP {status} with {what}",
            where=where,
        )
        self.status = status


class RedirectError(ConnectError):
    """The server answered with a redirect (3xx). chatctl follows none: the request, and
    its token, would go to wherever the answer says. ``location`` is what it named."""

    def __init__(self, where: str, status: int, location: str | None) -> None:
        to = f"to {shorten(location, 200)}" if location else "without saying where"
        super().__init__(f"{where} redirects {to} (HTTP {status})", where=where)
        self.status = status
        self.location = location


class BadAnswerError(ChatctlError):
    """The server answered, but with an answer chatctl will not read: larger than the
    limit once decompressed, in an encoding it cannot decode, or JSON nested deeper than
    any m3o answer. ``problem`` says which (``an answer larger than 128 MiB``)."""

    exit_status = ExitStatus.UNREACHABLE

    def __init__(self, where: str, problem: str, status: int | None = None) -> None:
        http = f" (HTTP {status})" if status is not None else ""
        super().__init__(f"{where} sent {problem}{http}")
        self.where = where
        self.problem = problem
        self.status = status


class NotFoundError(ChatctlError):
    """No room by the name given (the server, asked by id, answers 404 instead)."""

    exit_status = ExitStatus.NOT_FOUND


class APIError(ChatctlError):
    """The server answered with an m3o error object (or an error status without one)."""

    def __init__(
        self,
        code: int,
        detail: str,
        id: str = "",
        status: str = "",
        hint: str | None = None,
        *,
        retry_after: float | None = None,
    ) -> None:
        self.code = code
        self.passing = code in (502, 503, 504)  # a gateway's, or the server's outage
        self.detail = detail
        self.id = id
        self.status = status or reason_phrase(code)
        #: seconds the server asked us to wait before retrying (429/503 Retry-After).
        self.retry_after = retry_after
        where = f"{shorten(id, 100)}, HTTP {code}" if id else f"HTTP {code}"
        super().__init__(f"{shorten(detail)} ({where})", hint)

    @property
    def exit_status(self) -> ExitStatus:  # type: ignore[override]
        if self.code == 400 and self.detail.strip().lower() in _NOT_FOUND_DETAILS:
            return ExitStatus.NOT_FOUND  # m3o answers an unknown room so
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
        #: fell behind (4008), or the server or a gateway failed (4502-4504): resumable.
        self.passing = close_code == 4008 or http in (502, 503, 504)
        super().__init__(f"stream closed: {reason or 'no reason given'} (close {close_code})", hint)

    @property
    def exit_status(self) -> ExitStatus:  # type: ignore[override]
        if self.http_code:
            return exit_status_for_http(self.http_code)
        return ExitStatus.UNREACHABLE


class OutputError(ChatctlError):
    """The output could not be written: a full disk, a closed stdout, an I/O error."""

    def __init__(self, reason: str, hint: str | None = None) -> None:
        super().__init__(f"cannot write the output: {reason}", hint)
        self.reason = reason


class Interrupted(ChatctlError):
    """Ctrl-C stopped a write batch; ``message`` says what was sent."""

    exit_status = ExitStatus.INTERRUPTED


def unsettled(e: ChatctlError) -> bool:
    """Does ``e``, ending a change that reached the server, leave open whether it was done?
    A 502/503/504 (the server gave up on its storage, whose abandoned write may still
    land; a gateway gave up on the server), silence or a connection lost; not a refusal,
    nor ``outcome_unknown`` (a server without keys, which has its own words)."""
    if e.outcome_unknown:
        return False
    if isinstance(e, APIError):
        return e.code in (502, 503, 504)
    return isinstance(e, ConnectError) and not isinstance(
        e, CertificateError | NotAnAPIError | RedirectError
    )
