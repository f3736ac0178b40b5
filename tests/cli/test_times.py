"""Times as people read them: --since in local time unless it names a zone, times before
1970 mean "from the start", tables and join lines in local time (tables with the offset),
JSON as the server wrote it (RFC 3339, UTC)."""

from __future__ import annotations

import io
import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from pytest_httpx import HTTPXMock

from chatctl.ids import START, cursor_for_time, parse_cursor
from chatctl.output import make_renderer
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
    assert "2022-02-17 11:18:35 -0500" in table.getvalue()
    line = io.StringIO()
    make_renderer("table", line, live=True).response({"message": message})
    assert line.getvalue().startswith("11:18:35 u: hi")
    as_json = io.StringIO()
    make_renderer("json", as_json).response({"message": message})
    assert json.loads(as_json.getvalue())["message"]["sent_at"] == SENT


def test_join_since_sends_the_local_time_as_a_cursor(
    cli: Run, httpx_mock: HTTPXMock, tz: None
) -> None:
    """--since with no zone: the cursor of that local moment (checked before any call)."""
    r = cli("--url", "http://chat.test", "join", ROOM, "--since", "yesterday")
    assert r.code == 2
    assert "--since takes a message id or a time" in r.stderr
    assert httpx_mock.get_requests() == []
