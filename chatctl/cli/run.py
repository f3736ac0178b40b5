"""What every command does between parsing and rendering: read input, build requests,
resolve room names, call the transport, hand responses to a renderer.

Heavy modules (httpx through the client, rich through the renderers) are imported here
only when a command actually runs, never when the app is built for ``--help``.
"""

import functools
import json
import re
import sys
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from chatctl import config
from chatctl.cli.options import common
from chatctl.errors import NotFoundError, UsageError
from chatctl.schema import ENDPOINTS, ValidationError, validate_request

if TYPE_CHECKING:
    from chatctl.client import Client
    from chatctl.output import Renderer

_UUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
#: placeholder for a ROOM argument during validation, before its name is resolved.
_ROOM_PLACEHOLDER = "\0room"

_client: Optional["Client"] = None


def settings(user: str | None = None) -> config.Settings:
    return config.resolve(common.url, common.token, user, common.profile)


def client() -> "Client":
    """This process's one client (one kept-alive connection)."""
    global _client
    if _client is None:
        from chatctl.client import Client

        s = settings()
        _client = Client(
            s.url,
            s.token,
            timeout=common.timeout or 30.0,
            verbose=sys.stderr if common.verbose else None,
        )
    return _client


def close_client() -> None:
    global _client
    _listed_rooms.cache_clear()
    if _client is not None:
        _client.close()
        _client = None


def acting_user(flag: str | None) -> str:
    return settings(flag).user


# -- input ---------------------------------------------------------------------------------


def read_input(path: Path) -> list[dict[str, Any]]:
    """The request objects in FILE (``-`` is stdin): one JSON object, or one per line."""
    name = "stdin" if str(path) == "-" else str(path)
    try:
        text = sys.stdin.read() if str(path) == "-" else path.read_text(encoding="utf-8")
    except OSError as e:
        raise UsageError(f"cannot read {name}: {e.strerror}") from None
    except UnicodeDecodeError:
        raise UsageError(f"{name} is not UTF-8 text") from None
    if not text.strip():
        raise UsageError(f"{name} is empty; expected a JSON object", hint=_INPUT_HINT)
    try:
        whole = json.loads(text)
    except json.JSONDecodeError as e:
        return _ndjson(text, name, e)
    if not isinstance(whole, dict):
        raise UsageError(f"{name} holds JSON but not an object", hint=_INPUT_HINT)
    return [whole]


def _ndjson(text: str, name: str, whole_error: json.JSONDecodeError) -> list[dict[str, Any]]:
    """One object per line; if the first line is no object, the whole text was meant."""
    lines = [(n, line) for n, line in enumerate(text.splitlines(), 1) if line.strip()]
    if not _is_object(lines[0][1]):
        e = whole_error
        raise _malformed(name, e.lineno, e.colno, e.msg)
    objects = []
    for lineno, line in lines:
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as le:
            raise _malformed(name, lineno, le.colno, le.msg) from None
        if not isinstance(obj, dict):
            raise UsageError(f"line {lineno} of {name} is not a JSON object", hint=_INPUT_HINT)
        objects.append(obj)
    return objects


_INPUT_HINT = 'give one object, e.g. {"room_id": "…", "text": "hi"}, or one object per line'


def _is_object(line: str) -> bool:
    try:
        return isinstance(json.loads(line), dict)
    except json.JSONDecodeError:
        return False


def _malformed(name: str, line: int, col: int, msg: str) -> UsageError:
    return UsageError(f"malformed JSON in {name} at line {line}, column {col}: {msg}")


def build_requests(
    endpoint: str,
    flags: dict[str, Any],
    defaults: dict[str, Any] | None = None,
    *,
    room: str | None = None,
    each: tuple[str, Sequence[str | None]] | None = None,
) -> list[dict[str, Any]]:
    """Input objects (or one empty object), flags over them, defaults under them.

    ``each=("user_id", users)`` makes one request per value for every input object
    (``invite ROOM USER...``); with the key ``room_id`` the values are rooms, ids or names.
    Everything is validated before the first request is sent: bad input exits 2 and
    nothing reaches the server. ROOM names are resolved last, with one List at most.
    """
    inputs = read_input(common.input) if common.input is not None else [{}]
    key, values = each if each and each[1] else ("", [None])
    over = {k: v for k, v in flags.items() if v is not None}
    under = {k: v for k, v in (defaults or {}).items() if v is not None}
    requests: list[dict[str, Any]] = []
    rooms: list[str | None] = []  # the ROOM each request names, resolved after validation
    total = len(inputs) * len(values)
    for given in inputs:
        for value in values:
            request = {**under, **given, **over}
            named = value if key == "room_id" else room
            if value is not None:
                request[key] = value
            if named is not None:
                request["room_id"] = _ROOM_PLACEHOLDER
            check_request(endpoint, request, len(requests) + 1, total)
            requests.append(request)
            rooms.append(named)
    for request, named in zip(requests, rooms, strict=True):
        if named is not None:
            request["room_id"] = resolve_room(named)
    return requests


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


@functools.cache
def _listed_rooms() -> list[dict[str, Any]]:
    """The rooms List answers, asked once per process however many names need it."""
    rooms = client().call("List", {}).get("rooms", [])
    return rooms if isinstance(rooms, list) else []


def resolve_room(room: str) -> str:
    """A room id as is; a room name through List. Unknown or ambiguous names are errors."""
    if _UUID.match(room):
        return room
    rooms = _listed_rooms()
    matches = [r for r in rooms if r.get("name") == room]
    if len(matches) == 1:
        return str(matches[0]["id"])
    if not matches:
        similar = [
            str(r.get("name")) for r in rooms if room.lower() in str(r.get("name", "")).lower()
        ]
        hint = (
            f"did you mean: {', '.join(similar[:5])}" if similar else "see them with: chatctl list"
        )
        raise NotFoundError(f"no room named {room!r}", hint=hint)
    listing = "; ".join(f"{r['id']} ({r.get('description') or 'no description'})" for r in matches)
    raise UsageError(
        f"{len(matches)} rooms are named {room!r}: {listing}",
        hint="name the room by its id instead",
    )


# -- calling and rendering -----------------------------------------------------------------


def output_format() -> str:
    from chatctl.output import default_format

    return common.output or default_format()


def renderer(*, batch: bool) -> "Renderer":
    from chatctl.output import make_renderer

    return make_renderer(output_format(), batch=batch)


def call_all(endpoint: str, requests: Iterable[dict[str, Any]], *, total: int | None) -> None:
    """Make each call in order and render each response as it arrives.

    ``total`` is None for a stream of unknown length (``send --lines``): a batch.
    """
    out = renderer(batch=total is None or total > 1)
    try:
        for response in _calls(endpoint, requests, total):
            out.response(response)
    finally:
        out.close()


def _calls(
    endpoint: str, requests: Iterable[dict[str, Any]], total: int | None
) -> Iterator[dict[str, Any]]:
    from chatctl.output import progress

    c = client()
    with progress(total, endpoint) as advance:
        for request in requests:
            yield c.call(endpoint, request)
            advance()


def confirm_destruction(what: str, yes: bool) -> None:
    """Ask before destroying anything; off a terminal, require --yes."""
    if yes:
        return
    if not sys.stdin.isatty():
        raise UsageError(f"refusing to {what} without --yes (stdin is not a terminal)")
    import typer

    if not typer.confirm(f"{what[0].upper()}{what[1:]}?", default=False, err=True):
        raise UsageError("aborted; nothing was changed")
