"""What travels on the wire, in one place: encoding, frames, errors, close codes, times, ids.

The server's edge, both stores, both fan-out paths and the rules build every body and
frame here, so a message reads the same in a Send answer, a History page, a Join frame,
an idempotent replay and a PostgreSQL notification. The client may take the same parts
(the error object, close codes, times and cursors).

Stdlib only and cheap to import: the CLI may use it on every command.

- ``encode``: compact JSON (no spaces, UTF-8 kept), as every body and frame is written.
- ``decode`` / ``decode_at``: JSON from the other side, nested at most ``MAX_DEPTH`` deep
  (``TooDeep`` past that: never a RecursionError), as the client reads every answer,
  History item, bulk answer line and Join frame.
- ``message_frame`` / ``event_frame``: a Join frame, ``{"message": {...}}`` or
  ``{"event": {...}}``; ``message_frame`` is also the answer of a Send.
- ``error_object`` / ``error_frame``: m3o's error, ``{"id", "code", "detail", "status"}``,
  with ``status`` the reason phrase of ``code``.
- Close codes: the WebSocket standard's, and 4000 + an HTTP status for an ending the
  client should understand as that status (4403 kicked or left, 4404 room deleted).
- ``rfc3339``: m3o's times, UTC with nanoseconds. ``UUIDv7``: message ids, which sort in
  time order, so an id is also a position (``uuid7_floor`` turns a time into one).
- Editions: everything above is written in the seed's "room" names; ``in_group_edition``
  renames an encoded answer or frame to m3o's final edition (``group``, ``groups``,
  ``group_id``), ``in_both_editions`` gives a Create or List answer both keys, and
  ``group_wording`` rewords an error's detail (``missing group id``).
"""

from __future__ import annotations

import json
import os
import re
import time
from typing import Any

from chatctl.errors import reason_phrase

__all__ = [
    "CLOSE_DELETED",
    "CLOSE_FORBIDDEN",
    "CLOSE_GOING_AWAY",
    "CLOSE_TOO_BIG",
    "CLOSE_TOO_SLOW",
    "CREATED_PREFIX",
    "DURATION_PATTERN",
    "MAX_DEPTH",
    "NIL_UUID",
    "UUID_PATTERN",
    "TooDeep",
    "UUIDv7",
    "close_code_for",
    "decode",
    "decode_at",
    "duration_text",
    "encode",
    "error_frame",
    "error_object",
    "event_frame",
    "gap_frame",
    "gap_object",
    "group_wording",
    "in_both_editions",
    "in_group_edition",
    "is_uuid",
    "message_frame",
    "message_object",
    "parse_duration",
    "parse_time",
    "random_uuid",
    "reason_phrase",
    "rfc3339",
    "room_object",
    "uuid7_ceiling",
    "uuid7_floor",
    "uuid7_ms",
]

#: compact JSON, as every frame and body the server writes.
encode = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode

#: how deep JSON read from the other side may nest: m3o's deepest (a Join event's
#: member list in its frame) is 3; anything near Python's recursion limit would break
#: whatever handles it next (rendering it, for one).
MAX_DEPTH = 32
_raw_decode = json.JSONDecoder().raw_decode


class TooDeep(ValueError):
    """JSON nested deeper than ``MAX_DEPTH``."""

    def __init__(self) -> None:
        super().__init__(f"JSON nested more than {MAX_DEPTH} deep")


def decode(text: str | bytes | bytearray) -> Any:
    """JSON as ``json.loads`` reads it (ValueError when it is not JSON), but TooDeep when
    it nests deeper than ``MAX_DEPTH``."""
    try:
        value = json.loads(text)
    except RecursionError:
        raise TooDeep from None
    _check_depth(value)
    return value


def decode_at(text: str, pos: int) -> tuple[Any, int]:
    """The JSON value that starts at ``pos`` and where it ends, as ``raw_decode`` finds
    them (ValueError when there is none whole), nested at most ``MAX_DEPTH`` deep."""
    try:
        value, end = _raw_decode(text, pos)
    except RecursionError:
        raise TooDeep from None
    _check_depth(value)
    return value, end


def _check_depth(value: Any) -> None:
    if not isinstance(value, dict | list):
        return
    level: list[Any] = [value]
    for _ in range(MAX_DEPTH):
        level = [
            child
            for container in level
            for child in (container.values() if isinstance(container, dict) else container)
            if isinstance(child, dict | list)
        ]
        if not level:
            return
    raise TooDeep

# -- close codes ------------------------------------------------------------------------

#: the server is shutting down, or a replica lost its fan-out: resume with ``since``.
CLOSE_GOING_AWAY = 1001
#: a frame over the body limit (the WebSocket standard's "message too big").
CLOSE_TOO_BIG = 1009
#: the reader fell behind its queue; resume with ``since``.
CLOSE_TOO_SLOW = 4008
#: kicked or left (4000 + 403), and room deleted (4000 + 404).
CLOSE_FORBIDDEN = 4403
CLOSE_DELETED = 4404


def close_code_for(status: int) -> int:
    """The close code of a stream refused or ended with an HTTP status: 4000 + status."""
    return 4000 + status


# -- errors -----------------------------------------------------------------------------


def error_object(endpoint_id: str, code: int, detail: str) -> dict[str, Any]:
    """m3o's error: ``id`` names the endpoint (``chat.send``, or ``v1`` for the gateway)."""
    return {"id": endpoint_id, "code": code, "detail": detail, "status": reason_phrase(code)}


def error_frame(endpoint_id: str, code: int, detail: str) -> str:
    """The error object, encoded: an error body, or the final frame of an ended stream."""
    return encode(error_object(endpoint_id, code, detail))


# -- rooms, messages, events ------------------------------------------------------------


def room_object(
    room_id: str,
    name: str,
    description: str,
    created_at: str,
    user_ids: list[str],
    private: bool,
) -> dict[str, Any]:
    """A Room, every field present, in m3o's order."""
    return {
        "id": room_id,
        "name": name,
        "description": description,
        "created_at": created_at,
        "user_ids": user_ids,
        "private": private,
    }


def message_object(
    message_id: str,
    client: str,
    room_id: str,
    user_id: str,
    sent_at: str,
    subject: str,
    text: str,
) -> dict[str, Any]:
    """A Message, every field present, in m3o's order."""
    return {
        "id": message_id,
        "client": client,
        "room_id": room_id,
        "user_id": user_id,
        "sent_at": sent_at,
        "subject": subject,
        "text": text,
    }


def message_frame(message: dict[str, Any]) -> str:
    """``{"message": {...}}``, encoded: a Join frame, and the answer of a Send."""
    return encode({"message": message})


#: how the frame of a ``created`` note starts (``event_frame("created", ...)``): a user put
#: in a room by its Create. It lets the user's every-room streams (JoinRooms ``all``) follow
#: the room, on every replica; it is never sent to a stream (no Join of a room can be open
#: before its Create), so ``hub`` tells it by this prefix, without parsing.
CREATED_PREFIX = '{"event":{"type":"created",'


def event_frame(
    kind: str, room_id: str, user_id: str, at: str, message_id: str | None = None
) -> str:
    """``{"event": {...}}``, encoded: a membership event (``joined``, ``kicked``...), or
    a message deleted (``message_deleted``, with its ``message_id``; ``user_id`` is its
    author)."""
    event = {"type": kind, "room_id": room_id, "user_id": user_id, "at": at}
    if message_id is not None:
        event["message_id"] = message_id
    return encode({"event": event})


# -- times and ids ----------------------------------------------------------------------


def rfc3339(ns: int) -> str:
    """RFC 3339 UTC with nanoseconds, as m3o wrote times: 2022-02-17T16:12:43.942557998Z."""
    seconds, fraction = divmod(ns, 1_000_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{fraction:09d}Z"


#: sorts before every UUIDv7: "from the very beginning".
NIL_UUID = "00000000-0000-0000-0000-000000000000"

#: a UUID in its canonical 8-4-4-4-12 form, in either case (a regular expression).
UUID_PATTERN = "[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
_UUID = re.compile(UUID_PATTERN)


def is_uuid(text: str) -> bool:
    """True for a UUID in its canonical 8-4-4-4-12 form, in either case (nothing after it:
    ``$`` alone would let a trailing newline through)."""
    return _UUID.fullmatch(text) is not None


def _uuid_text(value: int) -> str:
    h = f"{value:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def random_uuid() -> str:
    """A random UUID (version 4) as text, as ``str(uuid.uuid4())`` but in half the time
    (a bulk Send makes one for every message without a ``client``)."""
    h = os.urandom(16).hex()
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{'89ab'[int(h[16], 16) & 3]}{h[17:20]}-{h[20:]}"


def uuid7_ms(value: str) -> int:
    """The millisecond a UUIDv7 (a message id) was made at: its first 48 bits."""
    return int(value[:8] + value[9:13], 16)


def uuid7_floor(ms: int) -> str:
    """The smallest UUIDv7 of a millisecond: it sorts before every id made in it or later."""
    return _uuid_text((ms & (2**48 - 1)) << 80 | 0x7 << 76 | 0x2 << 62)


def uuid7_ceiling(ms: int) -> str:
    """The largest UUIDv7 of a millisecond: it sorts after every id made in it or before."""
    return _uuid_text((ms & (2**48 - 1)) << 80 | 0x7FFF << 64 | 0xBFFF_FFFF_FFFF_FFFF)


class UUIDv7:
    """A monotonic UUIDv7 generator (RFC 9562, method 3: 12-bit sub-millisecond counter).

    Within a process ids strictly increase even when many are made in one millisecond or
    the clock steps back: the 60-bit (milliseconds, counter) prefix is forced past the last
    one. Order in a room is the store's seq, not the id, so a clock that steps back across
    a restart cannot reorder a room.
    """

    def __init__(self) -> None:
        self._last = 0

    def stamp(self) -> tuple[str, int]:
        """A new id and the moment it names (ns since 1970), for a message's ``id`` and
        ``sent_at``: the time's millisecond is the id's, so a time shown to the
        millisecond maps back to the id's place exactly (``chatctl join --since``). An id
        forced past the clock (a burst of ids in one millisecond, or a clock stepped back)
        moves its time with it."""
        ns = time.time_ns()
        made = self(ns)
        ms = int(made[:8] + made[9:13], 16)
        return made, max(ns, ms * 1_000_000)

    def __call__(self, ns: int | None = None) -> str:
        if ns is None:
            ns = time.time_ns()
        stamp = (ns // 1_000_000) << 12
        if stamp <= self._last:
            stamp = self._last + 1
        self._last = stamp
        rand = int.from_bytes(os.urandom(8), "big") & ((1 << 62) - 1)
        value = (stamp >> 12) << 80 | 0x7 << 76 | (stamp & 0xFFF) << 64 | 0b10 << 62 | rand
        return _uuid_text(value)


# -- m3o's two editions -----------------------------------------------------------------
# Every body and frame above is made once, in the seed's "room" names, and stored, kept
# for an Idempotency-Key and fanned out that way. m3o's final edition renamed the keys
# only (contract part 4), so a group-edition reader gets the same encoded text with its
# keys renamed: no decoding, and one rename per frame however many streams read it.
#
# Why a rename of the text is exact: in JSON written by ``encode``, a quote inside a
# string is always escaped (``\"``), so ``"room_id":`` — a quote right after a letter,
# then a colon — can only be the end of a key; and the keys of every object here are
# fixed names (no key is ever made from input). So each match is one of our keys, and
# every such key matches. tests/server/test_editions.py holds this against hostile text.

_GROUP_WORDS = re.compile(r"\broom(s|_id)?\b")


def in_group_edition(encoded: str) -> str:
    """An answer or frame (or a part of one) in m3o's final edition's names: ``room_id``
    → ``group_id`` wherever it is a key (messages, events), and an answer's own key
    ``room`` → ``group``, ``rooms`` → ``groups`` (no object inside has those keys)."""
    encoded = encoded.replace('"room_id":', '"group_id":')
    if encoded.startswith(('{"room":', '{"rooms":')):
        encoded = '{"group' + encoded[6:]
    return encoded


def in_both_editions(encoded: str) -> str:
    """A Create or List answer (``{"room":R}``, ``{"rooms":[…]}``) with both editions'
    key: ``{"room":R,"group":R}``, ``{"rooms":[…],"groups":[…]}``. Anything else as is."""
    for key in ("room", "rooms"):
        head = '{"' + key + '":'
        if encoded.startswith(head):
            value = encoded[len(head) : -1]
            return head + value + ',"' + key.replace("room", "group") + '":' + value + "}"
    return encoded


def group_wording(detail: str) -> str:
    """An error's detail as m3o's final edition words it: ``missing group id``, ``group
    not found``, ``user is not in the group`` (and ``group_id`` for the field). Only for
    the server's own details, which embed no input but names and numbers; a limit's flag
    (``max_rooms_per_tenant``) keeps its name."""
    return _GROUP_WORDS.sub(r"group\1", detail)


# -- retention (issue 26): durations, and the gap a cursor older than what is kept meets --

_DURATION = re.compile(r"([1-9][0-9]{0,5})([smhdw])")
#: what Retain's ``retain`` may be (as the OpenAPI document says): a duration, off, or empty.
DURATION_PATTERN = "^(off|([1-9][0-9]{0,5}[smhdw])+)?$"
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_duration(text: str) -> int:
    """Seconds of a duration as people write it: ``90s``, ``15m``, ``12h``, ``30d``,
    ``2w``, or several (``1d12h``), each number 1 to 999999; a ValueError naming the form
    otherwise."""
    text = text.strip().lower()
    pos, total = 0, 0
    for match in _DURATION.finditer(text):
        if match.start() != pos:
            break
        total += int(match.group(1)) * _UNIT_SECONDS[match.group(2)]
        pos = match.end()
    if not text or pos != len(text):
        raise ValueError(f"not a duration: {text[:40]!r} (e.g. 30d, 12h, 90m, 1d12h)")
    return total


def duration_text(seconds: int) -> str:
    """A duration as ``parse_duration`` reads it, in its largest whole units: ``30d``."""
    parts = []
    for unit in "dhms":
        count, seconds = divmod(seconds, _UNIT_SECONDS[unit])
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts) or "0s"


_TIME = re.compile(
    r"(\d{4})-(\d\d)-(\d\d)[Tt ](\d\d):(\d\d):(\d\d)(?:\.(\d{1,9})\d*)?"
    r"(?:([Zz])|([+-])(\d\d):(\d\d))"
)


def parse_time(text: str) -> float | None:
    """Seconds since 1970 of an RFC 3339 time (any fraction, any offset); None if not one."""
    import calendar

    match = _TIME.fullmatch(text.strip())
    if match is None:
        return None
    y, mo, d, h, mi, s = (int(g) for g in match.groups()[:6])
    try:
        seconds: int = calendar.timegm((y, mo, d, h, mi, s, 0, 0, 0))
    except (ValueError, OverflowError):
        return None
    if match.group(9):
        offset = int(match.group(10)) * 3600 + int(match.group(11)) * 60
        seconds -= offset if match.group(9) == "+" else -offset
    fraction = match.group(7) or "0"
    return seconds + int(fraction) / 10.0 ** len(fraction)


def gap_object(room_id: str, through: str, at: str) -> dict[str, Any]:
    """What a cursor older than a room keeps meets: messages up to and including
    ``through`` (sent at ``at``) were removed by the room's retention."""
    return {"type": "gap", "room_id": room_id, "through": through, "at": at}


def gap_frame(room_id: str, through: str, at: str) -> str:
    """``{"event": {"type": "gap", ...}}``, encoded: the first frame of a Join whose
    ``since`` is older than what the room keeps."""
    return encode({"event": gap_object(room_id, through, at)})
