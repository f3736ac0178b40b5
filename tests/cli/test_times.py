"""Times as people read them: --since in local time unless it names a zone, times before
1970 mean "from the start", tables and join lines in local time (tables with the offset,
join lines to the millisecond), JSON as the server wrote it (RFC 3339, UTC). --since takes
back the time a join line shows and leaves out the message it was copied from."""

from __future__ import annotations

import io
import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from pytest_httpx import HTTPXMock

from chatctl.ids import START, cursor_after_time, cursor_for_time, parse_cursor
from chatctl.output import line_time, make_renderer
from chatctl.wire import UUIDv7, rfc3339, uuid7_ceiling
from tests.conftest import Run

ROOM = "d8057208-f81a-4e14-ad7f-c29daa2bb910"
SENT = "2022-02-17T16:18:35.683008885Z"


@pytest.fixture
def tz(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The machine's zone is UTC-5 (TZ is honoured, as date and git log honour it)."""
    monkeypatch.setenv("TZ", "EST5")
    time.tzset()
    yield
    monkeypatch.delenv("TZ")
    time.tzset()


def test_since_before_1970_is_from_the_start() -> None:
    assert parse_cursor("1969-12-31T23:59:59Z") == START
    assert parse_cursor("1900-01-01") == START
    assert cursor_for_time(datetime(1960, 1, 1, tzinfo=UTC)) == START


def test_a_time_without_a_zone_is_local(tz: None) -> None:
    assert parse_cursor("2026-11-25T09:00:00") == parse_cursor("2026-11-25T14:00:00Z")
    assert parse_cursor("2026-11-25T09:00:00+00:00") == parse_cursor("2026-11-25T09:00:00Z")


def test_tables_and_join_lines_are_local_time_and_json_is_the_servers(tz: None) -> None:
    message = {"id": "m", "user_id": "u", "sent_at": SENT, "subject": "", "text": "hi"}
    table = io.StringIO()
    out = make_renderer("table", table)
    out.response({"messages": [message]})
    out.close()
    assert "2022-02-17 11:18:35.683 -0500" in table.getvalue()
    # What a table shows, --since takes back as well.
    assert parse_cursor("2022-02-17 11:18:35.683 -0500") == parse_cursor(SENT)
    line = io.StringIO()
    make_renderer("table", line, live=True).response({"message": message})
    assert line.getvalue().startswith("2022-02-17 11:18:35.683 u: hi")
    as_json = io.StringIO()
    make_renderer("json", as_json).response({"message": message})
    assert json.loads(as_json.getvalue())["message"]["sent_at"] == SENT


def test_join_since_sends_the_local_time_as_a_cursor(
    cli: Run, httpx_mock: HTTPXMock, tz: None
) -> None:
    """--since with no zone: the cursor of that local moment (checked before any call)."""
    r = cli("--url", "http://chat.test", "join", ROOM, "--since", "yesterday")
    assert r.code == 2
    assert "--since takes a message id, a time (09:41:07.250, as join prints it" in r.stderr
    assert httpx_mock.get_requests() == []


def printed(ns: int) -> str:
    """The time a join line shows for a message sent at ``ns``."""
    out = io.StringIO()
    message = {"id": "m", "user_id": "u", "sent_at": rfc3339(ns), "subject": "", "text": "hi"}
    make_renderer("table", out, live=True).response({"message": message})
    return out.getvalue().split(" u: ")[0]


def test_since_takes_back_what_a_join_line_shows_and_leaves_that_message_out(tz: None) -> None:
    """The message's id (made with its sent_at, in one instant) sorts at or before the
    cursor; an id of the next millisecond sorts after it, so it is replayed."""
    now_ns = time.time_ns()
    for ns in (now_ns - 3_600 * 10**9, 1_764_000_000_123_999_999, 1_764_000_000_999_000_000):
        shown = printed(ns)
        ms = ns // 1_000_000
        cursor = parse_cursor(shown)
        assert cursor == uuid7_ceiling(ms), shown
        ids = UUIDv7()  # the server's, at that moment
        assert ids(ns) <= cursor < ids((ms + 1) * 1_000_000)  # printed: out; next: in
    # A message of an earlier day shows its date, and the time is still this zone's.
    assert printed(1_764_000_000_123_999_999) == "2025-11-24 11:00:00.123"
    assert parse_cursor("2025-11-24 11:00:00.123") == parse_cursor("2025-11-24T16:00:00.123Z")


def test_a_time_of_day_is_the_latest_such_local_moment(tz: None) -> None:
    local = datetime(2026, 12, 7, 0, 1, 30).astimezone()  # 00:01:30 in UTC-5
    assert parse_cursor("00:01:05.250", now=local) == cursor_after_time(
        datetime(2026, 12, 7, 5, 1, 5, 250_000, tzinfo=UTC)
    )
    # Later than now today: yesterday's.
    assert parse_cursor("23:59:59.999", now=local) == cursor_after_time(
        datetime(2026, 12, 7, 4, 59, 59, 999_000, tzinfo=UTC)
    )
    # A few minutes ahead (the server's clock may run ahead of ours): still the coming one.
    just_before = datetime(2026, 12, 6, 23, 59, 0).astimezone()
    assert parse_cursor("00:00:30", now=just_before) == cursor_after_time(
        datetime(2026, 12, 7, 5, 0, 30, tzinfo=UTC)
    )
    assert parse_cursor("9:41", now=local) == cursor_after_time(
        datetime(2026, 12, 6, 14, 41, tzinfo=UTC)
    )
    assert parse_cursor("24:00:00") is None and parse_cursor("12:61") is None


def test_times_are_exclusive_to_the_millisecond_and_a_date_starts_at_midnight(tz: None) -> None:
    ms = (datetime(2026, 11, 25, 14, 0, tzinfo=UTC) - datetime(1970, 1, 1, tzinfo=UTC)) // (
        timedelta(milliseconds=1)
    )
    assert parse_cursor("2026-11-25T09:00:00") == uuid7_ceiling(ms)
    # Finer digits are cut, never rounded up into the next millisecond.
    assert parse_cursor("2026-11-25T14:00:00.250999999Z") == uuid7_ceiling(ms + 250)
    # As a table shows it (offset after a space).
    assert parse_cursor("2026-11-25 09:00:00 -0500") == uuid7_ceiling(ms)
    assert parse_cursor("2026-11-25") == cursor_for_time(datetime(2026, 11, 25, 5, 0, tzinfo=UTC))


def test_times_map_to_milliseconds_exactly() -> None:
    """No float on the way: a millisecond that a float would round down stays itself."""
    for ms in (1_700_000_000_123, 1_764_000_000_999, 1_777_777_777_777):
        when = datetime.fromtimestamp(ms // 1000, UTC) + timedelta(milliseconds=ms % 1000)
        assert cursor_after_time(when) == uuid7_ceiling(ms)
        assert line_time(rfc3339(ms * 1_000_000)).endswith(f".{ms % 1000:03d}")
