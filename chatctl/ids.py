"""Message ids as cursors.

Message ids are UUIDv7: the first 48 bits are the Unix time in milliseconds, so ids sort
in time order and an id is also a position in its room. A time can therefore be turned
into a cursor: the smallest UUIDv7 of that millisecond sorts before every message sent
in it or later, the largest after every message sent in it or before.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from datetime import time as dt_time

from chatctl.wire import NIL_UUID, is_uuid, uuid7_ceiling, uuid7_floor

__all__ = [
    "START",
    "cursor_after_time",
    "cursor_for_time",
    "cursor_time_ns",
    "parse_cursor",
    "time_ns",
]

#: Sorts before every UUIDv7: "from the very beginning" (the server's ``wire.NIL_UUID``).
START = NIL_UUID


#: the last millisecond a UUIDv7 can name (in the year 10889).
_MAX_MS = 2**48 - 1
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)


def _ms(when: datetime) -> int:
    """The millisecond ``when`` falls in, since 1970 (exact: no float on the way)."""
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return (when - _EPOCH) // _MS


def cursor_for_time(when: datetime) -> str:
    """The smallest UUIDv7 of the millisecond ``when`` falls in: START for any time
    before 1970 (no message is older), the last millisecond for one past UUIDv7's range.
    A time without a zone is UTC here; ``parse_cursor`` reads a user's as local time."""
    ms = _ms(when)
    return START if ms < 0 else uuid7_floor(min(ms, _MAX_MS))


def cursor_after_time(when: datetime) -> str:
    """The largest UUIDv7 of the millisecond ``when`` falls in: a ``since`` that leaves
    out every message of that millisecond and keeps every later one (the server gives a
    message the id and the ``sent_at`` of one instant)."""
    ms = _ms(when)
    return START if ms < 0 else uuid7_ceiling(min(ms, _MAX_MS))


#: a time of day as ``join`` prints it: 09:41, 09:41:07, 09:41:07.250.
_CLOCK = re.compile(r"(\d{1,2}):(\d\d)(?::(\d\d)(?:[.,](\d{1,9}))?)?")
#: a zone offset written after a space, as tables print it (``2026-12-07 09:41:07 -0500``).
_SPACED_ZONE = re.compile(r"\s+([+-]\d\d:?\d\d)$")
#: how far ahead of this machine's clock a bare time of day may be and still be today's
#: (``join`` prints the server's times, and its clock may run a little ahead).
CLOCK_SKEW = timedelta(minutes=5)


def parse_cursor(text: str, now: datetime | None = None) -> str | None:
    """What ``--since`` names, as a cursor (the server replays every message after it);
    None if it names nothing:

    - a message id: after that message;
    - a time, to the millisecond, as ``join`` prints it (``09:41:07.250``, ``2026-12-06
      23:59:59.999``) or as RFC 3339 / ISO 8601 write it: after every message of that
      millisecond, so the message of the line it was copied from is not printed again;
      a bare time of day is the most recent such moment (today, or yesterday when today's
      is still ahead);
    - a date alone: from the start of that day.

    A time without a zone is local time (``TZ`` is honoured), as ``date`` and ``git log
    --since`` read it."""
    stripped = text.strip()
    lowered = stripped.lower()
    if is_uuid(lowered):
        return lowered
    clock = _CLOCK.fullmatch(stripped)
    if clock is not None:
        return _after_time_of_day(clock, now)
    iso = _SPACED_ZONE.sub(r"\1", stripped.replace("z", "Z").replace("Z", "+00:00"))
    try:
        when = datetime.fromisoformat(iso)
    except ValueError:
        return None
    if when.tzinfo is None:
        try:
            when = when.astimezone()  # naive means local: the zone in force at that time
        except (OverflowError, OSError, ValueError):
            when = when.replace(tzinfo=UTC)
    if ":" not in stripped:  # a date alone
        return cursor_for_time(when)
    return cursor_after_time(when)


def _after_time_of_day(clock: re.Match[str], now: datetime | None) -> str | None:
    hours, minutes, seconds, fraction = clock.groups()
    try:
        of_day = dt_time(
            int(hours), int(minutes), int(seconds or 0), int((fraction or "")[:6].ljust(6, "0"))
        )
    except ValueError:
        return None
    now = now or datetime.now().astimezone()
    latest = now + CLOCK_SKEW
    for days in (1, 0, -1):  # a time just past midnight may still be "tomorrow" by us
        when = datetime.combine(now.date() + timedelta(days=days), of_day).astimezone()
        if when <= latest:
            return cursor_after_time(when)
    return None  # not reached: yesterday's is always in the past


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
