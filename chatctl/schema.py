"""The wire types of the Chat API, shared by the client and the server.

One declaration per endpoint says which fields its request takes, their JSON types, which
are required (and m3o's detail when one is missing), and which limit bounds their length.
The CLI validates its input with it before sending anything; the server validates every
request with it and builds ``/openapi.json`` from it, so the two cannot drift apart.

Stdlib only: the CLI imports this on every call.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import Any, Literal, NotRequired, TypedDict

__all__ = [
    "BULK_SEND",
    "DELETE_MESSAGE",
    "ENDPOINTS",
    "EVENT_TYPES",
    "EXTENSIONS_HEADER",
    "IDEMPOTENCY",
    "IMPORT",
    "INVISIBLE",
    "JOIN_ROOMS",
    "MESSAGE_FIELDS",
    "NEW_NAMES",
    "RETENTION",
    "ROOM_FIELDS",
    "SERVER_EXTENSIONS",
    "WHOAMI",
    "Edition",
    "Endpoint",
    "Event",
    "Field",
    "Limits",
    "Message",
    "Refused",
    "Room",
    "ValidationError",
    "declare",
    "edition_of",
    "endpoint_for",
    "extensions_of",
    "in_edition",
    "parse_extensions",
    "rooms_in",
    "unseen_character",
    "validate_request",
]


class Room(TypedDict):
    id: str
    name: str
    description: str
    created_at: str
    user_ids: list[str]
    private: bool


class Message(TypedDict):
    id: str
    client: str
    room_id: str
    user_id: str
    sent_at: str
    subject: str
    text: str


class Event(TypedDict):
    """A membership event, or a message deleted (``message_deleted``: ``user_id`` is its
    author, ``message_id`` the message), sent on Join only when the request asks for
    ``events``."""

    type: str  # one of EVENT_TYPES
    room_id: str
    user_id: str
    at: str
    message_id: NotRequired[str]


#: Field order of a Room and a Message, as m3o wrote them.
ROOM_FIELDS: tuple[str, ...] = ("id", "name", "description", "created_at", "user_ids", "private")
MESSAGE_FIELDS: tuple[str, ...] = (
    "id",
    "client",
    "room_id",
    "user_id",
    "sent_at",
    "subject",
    "text",
)
EVENT_TYPES: tuple[str, ...] = (
    "joined",
    "left",
    "kicked",
    "invited",
    "deleted",
    "message_deleted",
)

Kind = Literal["string", "boolean", "integer", "string_list", "message_list"]
_DEFAULTS: dict[str, Any] = {
    "string": "",
    "boolean": False,
    "integer": 0,
    "string_list": [],
    "message_list": [],
}


@dataclass(frozen=True)
class Limits:
    """Size limits the server enforces; each is a ``chatctl serve`` flag. A field's length
    (``*_chars``) counts characters (code points), as the OpenAPI document's ``maxLength``
    does; a body's (``max_body_bytes``) counts bytes."""

    max_body_bytes: int = 1024 * 1024
    max_text_chars: int = 64 * 1024
    max_name_chars: int = 256
    max_description_chars: int = 4096
    max_subject_chars: int = 1024
    max_user_id_chars: int = 256
    max_client_chars: int = 256
    max_rooms_per_tenant: int = 10_000
    max_members_per_room: int = 10_000
    max_history_page: int = 1000
    max_replay: int = 10_000
    # Quotas of a server with tokens (contract part 3, "Quotas"). A tenant's message bytes
    # per UTC day, every token of it counted; and each user token's share of its tenant's
    # rooms, of a room's members, and of those bytes. None: half the tenant's figure.
    max_bytes_per_tenant_day: int = 1 << 30
    max_rooms_per_user: int | None = None
    max_invites_per_user: int | None = None
    max_bytes_per_user_day: int | None = None

    @property
    def rooms_per_user(self) -> int:
        """Rooms one user's tokens may have made in a tenant (and not deleted)."""
        return _share(self.max_rooms_per_user, self.max_rooms_per_tenant)

    @property
    def invites_per_user(self) -> int:
        """Members one user token may add to a room it did not create."""
        return _share(self.max_invites_per_user, self.max_members_per_room)

    @property
    def bytes_per_user_day(self) -> int:
        """Message bytes one user's tokens may store in a tenant on a UTC day."""
        return _share(self.max_bytes_per_user_day, self.max_bytes_per_tenant_day)


def _share(given: int | None, tenant: int) -> int:
    """A user's quota: as given, else half the tenant's (a user alone can never take all
    of it, and two can still each do a lot), at least 1."""
    return given if given is not None else max(1, tenant // 2)


#: The characters no user id or room name a server takes may hold, as a regular
#: expression class: Unicode's controls (Cc), format characters (Cf: the zero-width joiner
#: that shows ``al\u200dice`` as "alice", the bidi controls that show ``bob\u202e`` and
#: what follows reversed, the soft hyphen, the BOM) and the line and paragraph separators
#: (Zl, Zp), as of Unicode 15 (a test compares it with ``unicodedata``). The OpenAPI
#: document gives the same class as the fields' ``pattern``.
INVISIBLE = (
    "\x00-\x1f\x7f-\x9f\xad\u0600-\u0605\u061c\u06dd\u070f\u0890\u0891\u08e2\u180e"
    "\u200b-\u200f\u2028-\u202e\u2060-\u2064\u2066-\u206f\ufeff\ufff9-\ufffb"
    "\U000110bd\U000110cd\U00013430-\U0001343f\U0001bca0-\U0001bca3"
    "\U0001d173-\U0001d17a\U000e0001\U000e0020-\U000e007f"
)
#: what a user id may not hold besides: the separator the CLI joins user ids with (a
#: tab or a newline, which it also joins with, is a control character already).
ID_SEPARATORS = ","


@functools.cache
def _unseen(rule: Literal["id", "name"]) -> re.Pattern[str]:
    """The characters ``rule`` refuses (compiled when a server first needs it: a few ms,
    which the CLI's start-up does not pay)."""
    return re.compile(f"[{INVISIBLE}{ID_SEPARATORS if rule == 'id' else ''}]")


#: Where a request brings a new user id or room name in, and which rule of
#: ``unseen_character`` its characters follow (each item of a list). Only there: Send,
#: Leave, Kick or History name a member the room already has, whatever it was accepted
#: as (contract part 3); a Join that would add its user is checked by the rules.
NEW_NAMES: dict[tuple[str, str], Literal["id", "name"]] = {
    ("Create", "name"): "name",
    ("Create", "user_ids"): "id",
    ("Invite", "user_id"): "id",
}


def unseen_character(value: str, rule: Literal["id", "name"], field: str) -> str | None:
    """Why ``value`` cannot be a new user id (``rule="id"``) or room name (``"name"``) on
    a server: a detail naming ``field``, the character and the rule; None when it can."""
    found = _unseen(rule).search(value)
    if found is None:
        return None
    char = found.group()
    if char in ID_SEPARATORS:
        return f"{field} must not contain {char!r}: user ids are listed joined with it"
    what = "a user id" if rule == "id" else "a room name"
    return (
        f"{field} must not contain U+{ord(char):04X}: {what} must be visible characters"
        " only (no control, format, bidi or line-separator characters)"
    )


def _check_characters(endpoint: Endpoint, request: dict[str, Any]) -> None:
    for (name, field), rule in NEW_NAMES.items():
        if name == endpoint.name and field in request:
            value = request[field]
            for item in value if isinstance(value, list) else [value]:
                detail = unseen_character(item, rule, field)
                if detail is not None:
                    raise ValidationError(detail)


@dataclass(frozen=True)
class Field:
    name: str
    kind: Kind
    description: str
    #: m3o's detail when the field is missing or empty, e.g. "missing room id".
    required: str | None = None
    #: the attribute of Limits that bounds its length in characters (Unicode code points,
    #: as JSON Schema's maxLength counts them), or each item's.
    limit: str | None = None
    #: For chatctl's extensions beyond m3o: the name under which a server announces it
    #: (``EXTENSIONS_HEADER``); None for m3o's own fields.
    extension: str | None = None
    #: m3o's final edition's name for the field (``group_id`` for ``room_id``): a request
    #: may name it either way, but not both (contract part 3, "Both editions").
    alias: str | None = None

    @property
    def default(self) -> Any:
        value = _DEFAULTS[self.kind]
        return list(value) if isinstance(value, list) else value


@dataclass(frozen=True)
class Endpoint:
    name: str
    summary: str
    request: tuple[Field, ...]
    #: the key of the response object: room, rooms, message, messages or identity.
    response: Literal[
        "room", "rooms", "message", "messages", "identity", "retention", "imported"
    ]
    #: True when a call changes something (so an Idempotency-Key makes sense).
    mutating: bool
    #: True when the request's ``user_id`` names the acting user (Send, Join, History,
    #: Leave): a user token may name only its own user there, and leaving it out means
    #: the token's user. (For Invite and Kick it names the target; for List, a filter.)
    actor: bool = False
    #: For an endpoint m3o did not have: the extension that announces it
    #: (``EXTENSIONS_HEADER``); None for m3o's own.
    extension: str | None = None

    @property
    def id(self) -> str:
        """The m3o error id for this endpoint, e.g. ``chat.send``."""
        return f"chat.{self.name.lower()}"

    def field(self, name: str) -> Field | None:
        for f in self.request:
            if f.name == name:
                return f
        return None

    @functools.cached_property
    def names_room(self) -> bool:
        """True when its request names a room (``room_id``, or ``group_id`` in m3o's
        group edition): it is answered in the edition it names it in."""
        return self.field("room_id") is not None


#: join-rooms: ``/v1/chat/JoinRooms`` streams many rooms on one connection (part 3).
JOIN_ROOMS = "join-rooms"

_ROOM_ID = Field(
    "room_id", "string", "The id of the room.", "missing room id", alias="group_id"
)
_USER_ID = Field("user_id", "string", "The id of the user.", "missing user id", "max_user_id_chars")

#: Every endpoint, by name: the one declaration the server (routes, access binding,
#: validation, OpenAPI, editions) reads at call time, and the CLI and the contract are
#: checked against (tests/server/test_declarations.py). ``declare`` adds one.
ENDPOINTS: dict[str, Endpoint] = {}
_BY_LOWER: dict[str, Endpoint] = {}


def declare(endpoint: Endpoint) -> Endpoint:
    """Add an endpoint to ``ENDPOINTS``: from then on the server routes it (its path,
    matched case-insensitively), binds a user token's user into it when ``actor``,
    validates it, answers it in the edition it names the room in, and documents it in
    ``/openapi.json``. An extension endpoint's ``extension`` must be in
    ``SERVER_EXTENSIONS``, and its CLI command and contract row exist (the tests check)."""
    if endpoint.name.lower() in _BY_LOWER:
        raise ValueError(f"endpoint {endpoint.name} is declared twice")
    ENDPOINTS[endpoint.name] = endpoint
    _BY_LOWER[endpoint.name.lower()] = endpoint
    return endpoint


for _e in (
        Endpoint(
            "Create",
            "Create a new chat room",
            (
                Field("name", "string", "The name of the room.", None, "max_name_chars"),
                Field(
                    "description",
                    "string",
                    "A description of the room.",
                    None,
                    "max_description_chars",
                ),
                Field(
                    "user_ids",
                    "string_list",
                    "The users allowed in the room.",
                    None,
                    "max_user_id_chars",
                ),
                Field("private", "boolean", "Whether the room is private (invite only)."),
            ),
            "room",
            True,
        ),
        Endpoint("Delete", "Delete a chat room and all its messages", (_ROOM_ID,), "room", True),
        Endpoint("Invite", "Invite a user to a chat room", (_ROOM_ID, _USER_ID), "room", True),
        Endpoint(
            "Send",
            "Send a message to a chat room",
            (
                _ROOM_ID,
                _USER_ID,
                Field(
                    "text", "string", "The text of the message.", "missing text", "max_text_chars"
                ),
                Field(
                    "subject", "string", "The subject of the message.", None, "max_subject_chars"
                ),
                Field(
                    "client",
                    "string",
                    "A free label of the sending client, e.g. web.",
                    None,
                    "max_client_chars",
                ),
            ),
            "message",
            True,
            actor=True,
        ),
        Endpoint(
            "History",
            "List the messages of a chat room, oldest first",
            (
                _ROOM_ID,
                Field(
                    "user_id",
                    "string",
                    "The reading user; required for a private room.",
                    None,
                    "max_user_id_chars",
                    extension="history-user",
                ),
                Field(
                    "limit",
                    "integer",
                    "At most this many messages (the latest ones, unless after is given).",
                    extension="paging",
                ),
                Field(
                    "before",
                    "string",
                    "Only messages before this message id.",
                    extension="paging",
                ),
                Field(
                    "after", "string", "Only messages after this message id.", extension="paging"
                ),
            ),
            "messages",
            False,
            actor=True,
        ),
        Endpoint("Kick", "Kick a user from a chat room", (_ROOM_ID, _USER_ID), "room", True),
        Endpoint(
            "List",
            "List chat rooms",
            (
                Field(
                    "user_id",
                    "string",
                    "Only rooms whose members include this user.",
                    None,
                    "max_user_id_chars",
                ),
            ),
            "rooms",
            False,
        ),
        Endpoint(
            "Join",
            "Join a chat room and stream its messages",
            (
                _ROOM_ID,
                _USER_ID,
                Field(
                    "since",
                    "string",
                    "Replay every message after this message id, then go live.",
                    extension="resume",
                ),
                Field(
                    "history",
                    "integer",
                    "Replay the last N messages first, then go live.",
                    extension="replay",
                ),
                Field(
                    "events",
                    "boolean",
                    'Also stream membership events as {"event": {...}} frames.',
                    extension="events",
                ),
                Field(
                    "include_own",
                    "boolean",
                    "Also stream the joiner's own messages live.",
                    extension="include-own",
                ),
            ),
            "message",
            False,
            actor=True,
        ),
        Endpoint(
            "JoinRooms",
            "Stream the messages of many chat rooms, or of every room the user is in, on"
            " one connection",
            (
                _USER_ID,
                Field(
                    "room_ids",
                    "string_list",
                    "The rooms to follow (each as a Join of it would be; a room refused is"
                    ' left out, with a {"room_ended": {...}} frame).',
                    None,
                    "max_user_id_chars",
                ),
                Field(
                    "since_ids",
                    "string_list",
                    "One cursor for each room of room_ids, in its order: replay that"
                    " room's messages after it (a message id, or a time as a UUIDv7).",
                    None,
                    "max_user_id_chars",
                ),
                Field(
                    "all",
                    "boolean",
                    "Also every other room the user is in, and each room they are invited"
                    " to or join while the stream lasts.",
                ),
                Field(
                    "all_since",
                    "string",
                    "With all: replay the messages after this cursor of the rooms not in"
                    " room_ids.",
                ),
                Field(
                    "events",
                    "boolean",
                    'Also stream membership events as {"event": {...}} frames.',
                ),
                Field(
                    "include_own",
                    "boolean",
                    "Also stream the user's own messages live.",
                ),
            ),
            "message",
            False,
            actor=True,
            extension=JOIN_ROOMS,
        ),
        Endpoint("Leave", "Leave a chat room", (_ROOM_ID, _USER_ID), "room", True, actor=True),
        Endpoint(
            "DeleteMessage",
            "Delete a message: its text and subject are erased, and History and replays"
            " leave it out",
            (
                _ROOM_ID,
                Field("message_id", "string", "The id of the message.", "missing message id"),
                Field(
                    "user_id",
                    "string",
                    "Who deletes it: the message's author or the room's creator (any user"
                    " with an admin token).",
                    None,
                    "max_user_id_chars",
                ),
            ),
            "message",
            True,
            actor=True,
            extension="delete-message",
        ),
        Endpoint(
            "Whoami",
            "Who the token acts as: its tenant, its user, and whether it is an admin",
            (),
            "identity",
            False,
            extension="whoami",
        ),
        Endpoint(
            "Retain",
            "Set or read how long a room keeps its messages (its creator or an admin token)",
            (
                _ROOM_ID,
                Field(
                    "retain",
                    "string",
                    "Keep messages this long (30d, 12h, 90m, 1d12h), off for the server's"
                    " own, or empty to only read the setting.",
                ),
            ),
            "retention",
            True,
            extension="retention",
        ),
        Endpoint(
            "Import",
            "Store messages with their own ids, times and senders (admin tokens only)",
            (
                _ROOM_ID,
                Field(
                    "messages",
                    "message_list",
                    "Messages as History answers them, oldest first: id (a UUID), user_id,"
                    " sent_at (RFC 3339), text, subject, client. At most 1000.",
                ),
            ),
            "imported",
            True,
            extension="import",
        ),
):
    declare(_e)
del _e

# -- what a server has: its edition and chatctl's extensions ----------------------------

#: The response header on which chatctl's server names its extensions, on every answer
#: (errors included), the NDJSON Join answer and the Join WebSocket's 101: a
#: comma-separated list of tokens (RFC 9110 list syntax, case-insensitive; a client
#: ignores tokens it does not know). A server without it is a plain m3o server.
EXTENSIONS_HEADER = "Chat-Extensions"
#: idempotency-key: the Idempotency-Key header makes a change safe to repeat.
IDEMPOTENCY = "idempotency-key"
#: bulk-send: ``POST /v1/chat/Send`` takes many SendRequests as NDJSON (contract part 3).
BULK_SEND = "bulk-send"
#: whoami: ``POST /v1/chat/Whoami`` says who the token acts as (contract part 3).
WHOAMI = "whoami"
#: retention: ``POST /v1/chat/Retain``, and the gap a cursor older than what a room keeps
#: meets (History's ``gap``, Join's first frame): contract part 3, "Retention".
RETENTION = "retention"
#: import: ``POST /v1/chat/Import`` stores messages with their original ids, times and
#: senders (contract part 3, "Import").
IMPORT = "import"
#: delete-message: ``POST /v1/chat/DeleteMessage`` deletes one message (contract part 3).
DELETE_MESSAGE = "delete-message"
#: The extensions chatctl's server has: each request field's ``extension``, the key,
#: and each endpoint's ``extension``.
SERVER_EXTENSIONS: tuple[str, ...] = (
    "paging",
    "history-user",
    "resume",
    "replay",
    "events",
    "include-own",
    IDEMPOTENCY,
    BULK_SEND,
    WHOAMI,
    DELETE_MESSAGE,
    JOIN_ROOMS,
    RETENTION,
    IMPORT,
)

#: m3o's two editions: the seed's "room" names, and the final "group" names (part 4).
Edition = Literal["room", "group"]


def parse_extensions(value: str) -> frozenset[str]:
    """The tokens of a ``Chat-Extensions`` header value."""
    return frozenset(t.strip().lower() for t in value.split(",") if t.strip())


def extensions_of(endpoint: Endpoint, body: dict[str, Any]) -> set[str]:
    """The extensions a request uses: the endpoint's own, if it is one, and each field
    given with a value that is not null."""
    used = {
        f.extension
        for f in endpoint.request
        if f.extension is not None and body.get(f.name) is not None
    }
    if endpoint.extension is not None:
        used.add(endpoint.extension)
    return used


def edition_of(answer: dict[str, Any]) -> Edition | None:
    """The edition an answer is in, when it says: ``room``/``rooms`` or a message's
    ``room_id`` is the seed's; ``group``/``groups``/``group_id`` alone the final one.
    (chatctl's server may answer with both keys: that is a server of both, so "room".)"""
    if "room" in answer or "rooms" in answer:
        return "room"
    if "group" in answer or "groups" in answer:
        return "group"
    message = answer.get("message")
    if not isinstance(message, dict):
        messages = answer.get("messages")
        message = messages[0] if isinstance(messages, list) and messages else None
    if isinstance(message, dict):
        if "room_id" in message:
            return "room"
        if "group_id" in message:
            return "group"
    return None


def rooms_in(answer: dict[str, Any]) -> list[dict[str, Any]]:
    """The rooms of a List answer, in either edition."""
    listed = answer.get("rooms", answer.get("groups"))
    return [r for r in listed if isinstance(r, dict)] if isinstance(listed, list) else []


def in_edition(body: dict[str, Any], edition: Edition | None) -> dict[str, Any]:
    """A request body (built with the seed's ``room_id``) as ``edition`` names it."""
    if edition != "group" or "room_id" not in body:
        return body
    return {("group_id" if k == "room_id" else k): v for k, v in body.items()}


def endpoint_for(name: str) -> Endpoint | None:
    """The endpoint for a path segment, matched case-insensitively as m3o's gateway did."""
    return _BY_LOWER.get(name.lower())


class Refused(Exception):
    """The root of every refusal, client and server: a request that will not be done, and
    ``detail``, the text its sender reads. The server's kinds are ``server.domain``'s
    (``Invalid``, ``Forbidden``, ``NotFound``, ``Conflict``) and ``server.decode.Refusal``
    (the edge's own), mapped to statuses in one place (``server.decode.Refusal.of``)."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class ValidationError(Refused):
    """A request that does not fit its endpoint; ``code`` is 400 or 413."""

    def __init__(self, detail: str, code: int = 400) -> None:
        super().__init__(detail)
        self.code = code


def _check_kind(f: Field, value: Any) -> Any:
    ok: bool
    if f.kind == "string":
        ok = isinstance(value, str)
    elif f.kind == "boolean":
        ok = isinstance(value, bool)
    elif f.kind == "integer":
        # proto3 JSON also takes integers written as strings (ASCII digits only: int()
        # refuses some that isdigit() takes; none of ours may be negative), and JSON
        # Schema counts 5.0 as an integer.
        if (isinstance(value, float) and value.is_integer()) or (
            isinstance(value, str) and value.isascii() and value.isdigit()
        ):
            value = int(value)
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif f.kind == "message_list":  # each message's fields: the rules check them
        ok = isinstance(value, list) and all(isinstance(v, dict) for v in value)
    else:
        ok = isinstance(value, list) and all(isinstance(v, str) for v in value)
    if not ok:
        wanted = {
            "string": "a string",
            "boolean": "true or false",
            "integer": "an integer",
            "string_list": "a list of strings",
            "message_list": "a list of messages (JSON objects)",
        }[f.kind]
        raise ValidationError(f"{f.name} must be {wanted}")
    return value


def _check_length(f: Field, value: Any, limits: Limits) -> None:
    if f.limit is None:
        return
    bound: int = getattr(limits, f.limit)
    items = value if isinstance(value, list) else [value]
    for item in items:
        # Characters, as the OpenAPI document's maxLength counts them (so a checker can
        # verify it); in UTF-8 at most four bytes each, and the body limit bounds it too.
        if len(item) > bound:
            raise ValidationError(
                f"{f.name} is longer than the limit of {bound} characters ({f.limit})"
            )


def validate_request(
    endpoint: Endpoint,
    body: Any,
    limits: Limits | None = None,
    *,
    fill_defaults: bool = True,
) -> dict[str, Any]:
    """Check a request body against its endpoint and return it normalised.

    Unknown fields are dropped, as m3o's gateway ignored them; a field given by its
    ``alias`` (m3o's final edition's ``group_id``) comes out under its own name. With
    ``fill_defaults`` every field is present (the server's view); without, only the fields
    given (the client's view, which sends exactly what the user asked for). Raises
    ValidationError with m3o's detail ("missing room id") or a detail naming the field and
    the limit. With ``limits`` (the server's view) the server's rules are checked too: the
    length limits, and the characters of new user ids and room names (``NEW_NAMES``);
    the CLI sends what it is given, and another server may take what chatctl's refuses.
    """
    if body is None:
        body = {}
    if not isinstance(body, dict):
        raise ValidationError("request body must be a JSON object")
    out: dict[str, Any] = {}
    for f in endpoint.request:
        name = f.name
        if f.alias is not None and f.alias in body:
            if name in body:
                raise ValidationError(f"give {name} or {f.alias}, not both")
            name = f.alias
        if name in body and body[name] is not None:
            out[f.name] = _check_kind(f, body[name])
        elif fill_defaults:
            out[f.name] = f.default
    for f in endpoint.request:
        if f.required and not out.get(f.name):
            raise ValidationError(f.required)
    if limits is not None:
        for f in endpoint.request:
            if f.name in out:
                _check_length(f, out[f.name], limits)
                if f.kind == "string_list" and "" in out[f.name]:
                    # a member no call could name: "" is a missing user id everywhere else
                    raise ValidationError(f"{f.name} must not hold an empty string")
        for name in ("limit", "history"):
            value = out.get(name)
            if isinstance(value, int) and value < 0:
                raise ValidationError(f"{name} must not be negative")
        _check_characters(endpoint, out)
    return out
