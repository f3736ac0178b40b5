"""What every command does between parsing and rendering: read input, build requests,
resolve room names, call the transport, hand responses to a renderer.

Every function takes the run's ``Invocation`` (``chatctl.cli.context``). Heavy modules
(httpx through the client, rich through the renderers) are imported only when a command
actually runs, never when the app is built for ``--help``.

A write batch (``send --lines``, ``send -i -``, ``invite ROOM A B C``) finishes or says it
did not: see ``call_all``.
"""

from __future__ import annotations

import contextlib
import json
import re
import signal
import threading
from collections.abc import Generator, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any, Protocol

from chatctl.errors import (
    APIError,
    ChatctlError,
    ExitStatus,
    Interrupted,
    NotFoundError,
    OutputError,
    UsageError,
)
from chatctl.schema import ENDPOINTS, ValidationError, validate_request
from chatctl.wire import TooDeep, decode

if TYPE_CHECKING:
    from chatctl.cli.context import Invocation

_UUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
#: placeholder for a ROOM argument during validation, before its name is resolved.
_ROOM_PLACEHOLDER = "\0room"


@dataclass
class Call:
    """One request to make, and where in the input it came from ("line 12"), if anywhere."""

    body: dict[str, Any]
    where: str | None = None
    #: the input could not be made into a request (e.g. a line that is not UTF-8).
    error: ChatctlError | None = None


# -- input ---------------------------------------------------------------------------------


def read_input(inv: Invocation, path: Path) -> list[tuple[str | None, dict[str, Any]]]:
    """The request objects in FILE (``-`` is stdin): one JSON object, or one per line
    (each with its line: ``"line 3"``)."""
    name = "stdin" if str(path) == "-" else str(path)
    try:
        text = inv.stdin.read() if str(path) == "-" else path.read_text(encoding="utf-8")
    except OSError as e:
        raise UsageError(f"cannot read {name}: {e.strerror}") from None
    except UnicodeDecodeError:
        raise UsageError(f"{name} is not UTF-8 text") from None
    if not text.strip():
        raise UsageError(f"{name} is empty; expected a JSON object", hint=_INPUT_HINT)
    try:
        whole = decode(text)
    except TooDeep as e:
        raise UsageError(f"{name} holds {e}", hint=_INPUT_HINT) from None
    except json.JSONDecodeError as e:
        return _ndjson(text, name, e)
    if not isinstance(whole, dict):
        raise UsageError(f"{name} holds JSON but not an object", hint=_INPUT_HINT)
    return [(None, whole)]


def _ndjson(
    text: str, name: str, whole_error: json.JSONDecodeError
) -> list[tuple[str | None, dict[str, Any]]]:
    """One object per line; if the first line is no object, the whole text was meant."""
    lines = [(n, line) for n, line in enumerate(text.splitlines(), 1) if line.strip()]
    if not _is_object(lines[0][1]):
        e = whole_error
        raise _malformed(name, e.lineno, e.colno, e.msg)
    objects: list[tuple[str | None, dict[str, Any]]] = []
    for lineno, line in lines:
        try:
            obj = decode(line)
        except TooDeep as e:
            raise UsageError(f"line {lineno} of {name} holds {e}", hint=_INPUT_HINT) from None
        except json.JSONDecodeError as le:
            raise _malformed(name, lineno, le.colno, le.msg) from None
        if not isinstance(obj, dict):
            raise UsageError(f"line {lineno} of {name} is not a JSON object", hint=_INPUT_HINT)
        objects.append((f"line {lineno}", obj))
    return objects


_INPUT_HINT = 'give one object, e.g. {"room_id": "…", "text": "hi"}, or one object per line'


def _is_object(line: str) -> bool:
    try:
        return isinstance(decode(line), dict)
    except ValueError:  # not JSON, or too deep
        return False


def _malformed(name: str, line: int, col: int, msg: str) -> UsageError:
    return UsageError(f"malformed JSON in {name} at line {line}, column {col}: {msg}")


def input_lines(inv: Invocation) -> Iterator[tuple[int, str | None]]:
    """stdin line by line, as it comes, numbered from 1, without line ends; None for a
    line that is not UTF-8 (read as bytes, so the lines after it still read)."""
    binary = getattr(inv.stdin, "buffer", None)
    if binary is None:
        for n, line in enumerate(inv.stdin, 1):
            yield n, line.rstrip("\r\n")
        return
    for n, raw in enumerate(binary, 1):
        try:
            yield n, raw.decode("utf-8").rstrip("\r\n")
        except UnicodeDecodeError:
            yield n, None


def build_requests(
    inv: Invocation,
    endpoint: str,
    flags: dict[str, Any],
    defaults: dict[str, Any] | None = None,
    *,
    room: str | None = None,
    each: tuple[str, Sequence[str | None]] | None = None,
    objects: list[tuple[str | None, dict[str, Any]]] | None = None,
) -> list[Call]:
    """Input objects (or one empty object), flags over them, defaults under them.

    ``each=("user_id", users)`` makes one request per value for every input object
    (``invite ROOM USER...``); with the key ``room_id`` the values are rooms, ids or names.
    Everything is validated before the first request is sent: bad input exits 2 and
    nothing reaches the server. ROOM names are resolved last, with one List at most.
    ``objects``: the input objects, already read (``call ENDPOINT JSON``), not --input's.
    """
    path = inv.options.input
    if objects is not None:
        inputs = objects
    else:
        inputs = read_input(inv, path) if path is not None else [(None, {})]
    key, values = each if each and each[1] else ("", [None])
    over = {k: v for k, v in flags.items() if v is not None}
    under = {k: v for k, v in (defaults or {}).items() if v is not None}
    calls: list[Call] = []
    rooms: list[str | None] = []  # the ROOM each request names, resolved after validation
    total = len(inputs) * len(values)
    for where, given in inputs:
        given = _seed_names(given, where)
        for value in values:
            request = {**under, **given, **over}
            named = value if key == "room_id" else room
            if value is not None:
                request[key] = value
            if named is not None:
                request["room_id"] = _ROOM_PLACEHOLDER
            check_request(endpoint, request, len(calls) + 1, total)
            calls.append(Call(request, where))
            rooms.append(named)
    actor = ENDPOINTS[endpoint].actor
    for call, named in zip(calls, rooms, strict=True):
        if named is not None:
            user = call.body.get("user_id") if actor else None
            call.body["room_id"] = resolve_room(inv, named, user)
    return calls


def _seed_names(given: dict[str, Any], where: str | None) -> dict[str, Any]:
    """An input object written for m3o's final edition (``group_id``) in the seed's names,
    which the transport sends as the server's edition names them."""
    if "group_id" not in given:
        return given
    named = {k: v for k, v in given.items() if k != "group_id"}
    if "room_id" in named and named["room_id"] != given["group_id"]:
        raise UsageError(
            f"{where or 'the input'} names two rooms: room_id and group_id differ",
            hint="give one of them (group_id is m3o's final edition's name for room_id)",
        )
    named["room_id"] = given["group_id"]
    return named


def check_request(endpoint: str, request: dict[str, Any], n: int = 1, total: int = 1) -> None:
    """Validate one request before anything is sent; bad input is a UsageError (exit 2)."""
    try:
        validate_request(ENDPOINTS[endpoint], request, fill_defaults=False)
    except ValidationError as e:
        where = f" (request {n} of {total})" if total > 1 else ""
        raise UsageError(f"{e.detail}{where}", hint=_missing_hint(e.detail)) from None


def _missing_hint(detail: str) -> str | None:
    if detail == "missing room id":
        return "name the room as an argument, or give room_id in --input"
    if detail == "missing text":
        return "give the text as an argument, - to read it from stdin, or use --lines"
    return None


def resolve_room(inv: Invocation, room: str, user: Any = None) -> str:
    """A room id as is; a room name through List: among the rooms the acting user
    (``user``, else the run's) is in first, then among all the token sees, so that a room
    someone else named alike (a public one, say) cannot take the name from the user's
    own. Unknown names, and names the user's rooms do not settle, are errors."""
    if _UUID.match(room):
        return room
    from chatctl.output import visible

    rooms = inv.listed_rooms()
    matches = [r for r in rooms if r.get("name") == room]
    if len(matches) > 1:
        # Who acts is asked only now, when it matters (a Whoami at most, once a run).
        me = inv.client.acting(user if isinstance(user, str) else inv.acting_user())
        mine = [
            r for r in matches if isinstance(r.get("user_ids"), list) and me in r["user_ids"]
        ]
        matches = mine or matches
    if len(matches) == 1:
        return str(matches[0]["id"])
    if not matches:
        similar = [
            visible(r.get("name")) for r in rooms if room.lower() in str(r.get("name", "")).lower()
        ]
        hint = (
            f"did you mean: {', '.join(similar[:5])}" if similar else "see them with: chatctl list"
        )
        raise NotFoundError(f"no room named {visible(room)!r}", hint=hint)
    listing = "; ".join(
        f"{visible(r.get('id'))} ({visible(r.get('description')) or 'no description'})"
        for r in matches
    )
    raise UsageError(
        f"{len(matches)} rooms are named {visible(room)!r}: {listing}",
        hint="name the room by its id instead",
    )


# -- calling and rendering -----------------------------------------------------------------


class Sender(Protocol):
    """How a write batch's calls reach the server (``call_all``): ``take`` the next calls
    to send together, while reading input ([] at its end); ``send`` them, yielding each
    call with its answer or its error, in order, as they arrive. ``outstanding`` holds
    the calls of the request in flight not answered yet: empty between two requests,
    where a batch interrupted by Ctrl-C stops."""

    outstanding: list[Call]

    def take(self, pending: Iterator[Call]) -> list[Call]: ...

    def send(self, calls: list[Call]) -> Generator[tuple[Call, Outcome], None, None]: ...


#: what one call came to: the decoded answer, or the error.
Outcome = dict[str, Any] | ChatctlError


class OneByOne:
    """The Sender of one request per call, each with a fresh Idempotency-Key."""

    def __init__(self, inv: Invocation, endpoint: str) -> None:
        self.inv = inv
        self.endpoint = endpoint
        self.outstanding: list[Call] = []

    def take(self, pending: Iterator[Call]) -> list[Call]:
        call = next(pending, None)
        return [] if call is None else [call]

    def send(self, calls: list[Call]) -> Generator[tuple[Call, Outcome], None, None]:
        for call in calls:
            self.outstanding = [call]
            outcome = self.one(call)
            self.outstanding = []
            yield call, outcome

    def one(self, call: Call, key: str | None = None) -> Outcome:
        if call.error is not None:
            return call.error
        try:
            return self.inv.client.call(self.endpoint, call.body, key=key)
        except ChatctlError as e:
            return e


def call_all(
    inv: Invocation,
    endpoint: str,
    calls: Iterable[Call],
    *,
    total: int | None,
    keep_going: bool = False,
    sender: Sender | None = None,
) -> None:
    """Make each call in order and render each answer as it arrives.

    ``total`` is None for a stream of unknown length (``send --lines``): a batch.
    ``sender`` groups calls into requests (``bulk``); by default, one request each.

    A call that changes something is work, and its output only a report of it: when the
    reader of stdout goes away the batch goes on, and succeeds only if every call did.
    An error names the input line it came from and stops the batch, with a count of what
    was sent (``keep_going``: every failed line is reported and the rest still sent; exit
    1 at the end). Ctrl-C stops reading input at once; a call in flight is finished and
    its answer printed (a second Ctrl-C abandons it, and says its outcome is unknown), so
    the ids printed are exactly the messages stored; then exit 130.
    """
    spec = ENDPOINTS[endpoint]
    if not spec.mutating:
        _read_all(inv, endpoint, calls, total)
        return
    from chatctl.output import progress

    sender = sender or OneByOne(inv, endpoint)
    noun = spec.response.rstrip("s")
    batch = total is None or total > 1
    out = inv.renderer(batch=batch, report=True)
    done = failed = 0
    last: str | None = None
    guard = _CtrlC(inv)
    finished = False
    try:
        with guard, progress(total, endpoint) as advance:
            pending = iter(calls)
            while not guard.interrupted:
                try:
                    with guard.reading():
                        chunk = sender.take(pending)
                except KeyboardInterrupt:
                    break
                if not chunk:
                    break
                answers = sender.send(chunk)
                try:
                    # After a Ctrl-C, the request in flight is finished; no other begins.
                    while not (guard.interrupted and not sender.outstanding):
                        try:
                            with guard.calling():
                                item = next(answers, None)
                        except KeyboardInterrupt:
                            raise Interrupted(_in_flight(sender.outstanding, done, noun)) from None
                        if item is None:
                            break
                        call, outcome = item
                        last = call.where
                        if isinstance(outcome, ChatctlError):
                            e = outcome
                            if call.where:
                                e.message = f"{call.where}: {e.message}"
                            failed += 1
                            if not (keep_going and isinstance(e, APIError | UsageError)):
                                if batch:
                                    e.summary = _count(done, noun, failed=True)
                                if isinstance(e, UsageError) and done:
                                    # Exit 2 says nothing was sent; this batch sent some.
                                    e.exit_status = ExitStatus.API_ERROR
                                raise e
                            _report(inv, e)
                            continue
                        with guard.calling():
                            done += 1
                            try:
                                out.response(outcome)
                            except OutputError as e:
                                e.summary = (
                                    f"{_count(done, noun)}; the last one's answer was not written"
                                )
                                if batch:
                                    e.summary += " and the rest of the input was not sent"
                                raise
                            advance()
                finally:
                    answers.close()
        finished = True
    finally:
        out.close(failed=not finished or bool(failed) or guard.interrupted)
    if guard.interrupted:
        where = f"; stopped after {last}" if last else ""
        raise Interrupted(f"interrupted: {_count(done, noun)} (the ids printed){where}")
    if failed:
        raise ChatctlError(f"{failed} failed; {_count(done, noun)}")


def _in_flight(calls: list[Call], done: int, noun: str) -> str:
    """What a second Ctrl-C left unknown: the calls in flight."""
    before = f"{_count(done, noun)} before {'it' if len(calls) <= 1 else 'them'}"
    if len(calls) <= 1:
        what = calls[0].where if calls and calls[0].where else "the request"
        return (
            f"interrupted during the call for {what}: it may or may not have been stored; {before}"
        )
    first, end = calls[0].where, calls[-1].where
    what = f"{first} to {end}" if first and end else f"{len(calls)} requests"
    return (
        f"interrupted during the call for {what} ({len(calls)} in one request): "
        f"they may or may not have been stored; {before}"
    )


def _count(done: int, noun: str, *, failed: bool = False) -> str:
    """``3 messages sent`` (``3 calls done`` for other writes)."""
    if noun == "message":
        what = f"{done} message{'' if done == 1 else 's'} sent"
    else:
        what = f"{done} call{'' if done == 1 else 's'} done"
    return f"{what} before it; the rest was not sent" if failed else what


def _report(inv: Invocation, e: ChatctlError) -> None:
    from chatctl.output import visible

    with contextlib.suppress(OSError, ValueError):
        print(f"error: {visible(e.message)}", file=inv.stderr, flush=True)


def _read_all(inv: Invocation, endpoint: str, calls: Iterable[Call], total: int | None) -> None:
    out = inv.renderer(batch=total is None or total > 1)
    finished = False
    try:
        for call in calls:
            out.response(inv.client.call(endpoint, call.body))
        finished = True
    finally:
        out.close(failed=not finished)


class _CtrlC:
    """SIGINT during a write batch: raised while reading input (reading stops at once),
    remembered while a call is in flight or its answer is printed (the batch stops after
    it); a second one during a call is raised (the call is abandoned).

    Only the main thread can take signals; elsewhere this does nothing.
    """

    def __init__(self, inv: Invocation) -> None:
        self.inv = inv
        self.interrupted = False
        self._phase = "idle"
        self._previous: Any = None

    def __enter__(self) -> _CtrlC:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        again, self.interrupted = self.interrupted, True
        if self._phase == "reading" or (self._phase == "calling" and again):
            raise KeyboardInterrupt
        if self._phase == "calling":
            self.inv.notice(
                "finishing the call in flight, then stopping (Ctrl-C again: abandon it)"
            )

    def reading(self) -> _Phase:
        return _Phase(self, "reading")

    def calling(self) -> _Phase:
        return _Phase(self, "calling")


class _Phase:
    def __init__(self, guard: _CtrlC, name: str) -> None:
        self.guard = guard
        self.name = name

    def __enter__(self) -> None:
        if self.name == "reading" and self.guard.interrupted:
            raise KeyboardInterrupt  # Ctrl-C came between two calls: read no more
        self.guard._phase = self.name

    def __exit__(self, *exc: object) -> None:
        self.guard._phase = "idle"


def confirm_destruction(inv: Invocation, what: str, yes: bool) -> None:
    """Ask before destroying anything; off a terminal, require --yes."""
    if yes:
        return
    if not inv.stdin.isatty():
        raise UsageError(f"refusing to {what} without --yes (stdin is not a terminal)")
    import typer

    if not typer.confirm(f"{what[0].upper()}{what[1:]}?", default=False, err=True):
        raise UsageError("aborted; nothing was changed")


def stdin_text(inv: Invocation) -> str:
    """All of stdin, for ``send ROOM -``."""
    try:
        return inv.stdin.read()
    except UnicodeDecodeError:
        raise UsageError("stdin is not UTF-8 text") from None


__all__ = [
    "Call",
    "OneByOne",
    "Outcome",
    "Sender",
    "build_requests",
    "call_all",
    "check_request",
    "confirm_destruction",
    "input_lines",
    "read_input",
    "resolve_room",
    "stdin_text",
]
