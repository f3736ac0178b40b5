"""The small parts of retention and import (issue 26): durations as people write them,
RFC 3339 times in any form m3o or chatctl wrote, and which room keeps what."""

from __future__ import annotations

import re

import pytest

from chatctl.server.retention import effective
from chatctl.wire import DURATION_PATTERN, duration_text, parse_duration, parse_time, rfc3339


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90s", 90), ("15m", 900), ("12h", 43200), ("30d", 2592000), ("2w", 1209600),
     ("1d12h", 129600), (" 7D ", 604800)],
)  # fmt: skip
def test_durations(text: str, seconds: int) -> None:
    assert parse_duration(text) == seconds
    assert parse_duration(duration_text(seconds)) == seconds
    assert re.match(DURATION_PATTERN, text.strip().lower())


@pytest.mark.parametrize("text", ["", "0d", "01d", "5", "d", "1x", "1d 2h", "-1d", "1234567s"])
def test_not_durations(text: str) -> None:
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration(text)
    assert text == "" or not re.match(DURATION_PATTERN, text)


def test_times_in_every_form_written() -> None:
    assert parse_time(rfc3339(1_700_000_000_123_456_789)) == pytest.approx(1_700_000_000.123456789)
    assert parse_time("2022-02-17T16:12:43.9Z") == pytest.approx(1645114363.9)  # m3o trims
    assert parse_time("2022-02-17T17:12:43+01:00") == 1645114363
    assert parse_time("2022-02-17t16:12:43z") == 1645114363
    for bad in ("yesterday", "2022-02-17", "2022-02-17T16:12:43", "2022-02-17T16:12Z"):
        assert parse_time(bad) is None


def test_a_room_keeps_the_shorter_of_its_own_and_the_server_s() -> None:
    assert effective(None, None) is None
    assert effective(3600, None) == 3600
    assert effective(None, 86400) == 86400
    assert effective(90 * 86400, 30 * 86400) == 30 * 86400
    assert effective(3600, 30 * 86400) == 3600
