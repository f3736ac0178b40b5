"""Message ids as cursors.

Message ids are UUIDv7: the first 48 bits are the Unix time in milliseconds, so ids sort
in time order and an id is also a position in its room. A time can therefore be turned
into a cursor: the smallest UUIDv7 of that millisecond sorts before every message sent
in it or later.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime

__all__ = ["START", "cursor_for_time", "parse_cursor"]

#: Sorts before every UUIDv7: "from the very beginning".
START = "00000000-0000-0000-0000-000000000000"

_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


def cursor_for_time(when: datetime) -> str:
    """The smallest UUIDv7 of the millisecond ``when`` falls in."""
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    ms = int(when.timestamp() * 1000)
    value = (ms & (2**48 - 1)) << 80 | 0x7 << 76 | 0x2 << 62
    h = f"{value:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def parse_cursor(text: str) -> str | None:
    """A message id as given, or a time (RFC 3339 / ISO 8601) as a cursor; None if neither."""
    lowered = text.strip().lower()
    if _UUID.match(lowered):
        return lowered
    try:
        when = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        return None
    return cursor_for_time(when)
