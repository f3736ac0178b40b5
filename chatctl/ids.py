"""Message ids as cursors.

Message ids are UUIDv7: the first 48 bits are the Unix time in milliseconds, so ids sort
in time order and an id is also a position in its room. A time can therefore be turned
into a cursor: the smallest UUIDv7 of that millisecond sorts before every message sent
in it or later.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

from chatctl.wire import NIL_UUID, is_uuid, uuid7_floor

__all__ = ["START", "cursor_for_time", "cursor_time_ns", "parse_cursor", "time_ns"]

#: Sorts before every UUIDv7: "from the very beginning" (the server's ``wire.NIL_UUID``).
START = NIL_UUID


#: the last millisecond a UUIDv7 can name (in the year 10889).
_MAX_MS = 2**48 - 1


def cursor_for_time(when: datetime) -> str:
    """The smallest UUIDv7 of the millisecond ``when`` falls in: START for any time
    before 1970 (no message is older), the last millisecond for one past UUIDv7's range.
    A time without a zone is UTC here; ``parse_cursor`` reads a user's as local time."""
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    ms = int(when.timestamp() * 1000)
    if ms < 0:
        return START
    return uuid7_floor(min(ms, _MAX_MS))


def parse_cursor(text: str) -> str | None:
    """A message id as given, or a time (RFC 3339 / ISO 8601, or a date) as a cursor;
    None if neither. A time without a zone is local time (``TZ`` is honoured), as ``date``
    and ``git log --since`` read it."""
    lowered = text.strip().lower()
    if is_uuid(lowered):
        return lowered
    try:
        when = datetime.fromisoformat(text.strip().replace("z", "Z").replace("Z", "+00:00"))
    except ValueError:
        return None
    if when.tzinfo is None:
        try:
            when = when.astimezone()  # naive means local: the zone in force at that time
        except (OverflowError, OSError, ValueError):
            return START if when.year < 1970 else cursor_for_time(when.replace(tzinfo=UTC))
    return cursor_for_time(when)


def cursor_time_ns(cursor: str) -> int | None:
    """The time a cursor stands for, in ns since 1970: a UUIDv7's millisecond, 0 for
    START; None for any other id (a random UUIDv4 says nothing of time)."""
    lowered = cursor.strip().lower()
    if lowered == START:
        return 0
    if not is_uuid(lowered) or lowered[14] != "7":
        return None
    return int(lowered[:8] + lowered[9:13], 16) * 1_000_000


_STAMP = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d{1,9}))?(Z|[+-]\d\d:\d\d)$", re.I)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def time_ns(stamp: object) -> int | None:
    """An RFC 3339 time as ns since 1970, to the nanosecond (m3o's ``sent_at`` has up to
    nine digits of fraction, trailing zeros dropped, so its text does not sort); None for
    anything else."""
    if not isinstance(stamp, str):
        return None
    found = _STAMP.match(stamp.strip())
    if found is None:
        return None
    whole, fraction, zone = found.groups()
    try:
        when = datetime.fromisoformat(whole + ("+00:00" if zone in "Zz" else zone))
    except ValueError:
        return None
    seconds = (when - _EPOCH) // timedelta(seconds=1)
    return seconds * 1_000_000_000 + int((fraction or "").ljust(9, "0"))
