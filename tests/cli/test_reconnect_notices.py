"""What `chatctl join` says on stderr while it reconnects through a long outage: a line
for each new reason, a reminder every 30 s while the same one goes on, `reconnected` once
a stream is live again; never a line per attempt. The clock is the test's, so an hour's
outage takes no time."""

from __future__ import annotations

import pytest

import chatctl.cli.join as join


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


class Notices:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def notice(self, text: str) -> None:
        self.lines.append(text)


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    clock = Clock()
    monkeypatch.setattr(join, "time", clock)  # join's own clock, not the process's
    return clock


def test_an_hour_of_the_same_failure_is_a_line_every_30_s(clock: Clock) -> None:
    said = Notices()
    outage = join._Outage(said)  # type: ignore[arg-type]
    started = clock.now
    while clock.now - started < 3600:
        outage.failed("Bad Gateway (HTTP 502)")
    # Backed off to about 5 s between attempts, not a busy loop.
    assert 3600 / 7.5 < outage.failures < 3600 / 2.5
    assert said.lines[0].startswith("Bad Gateway (HTTP 502); reconnecting in ")
    reminders = said.lines[1:]
    assert 3600 / 40 < len(reminders) <= 3600 / 30
    assert all(line.startswith("still reconnecting after ") for line in reminders)
    assert reminders[-1].endswith("attempts): Bad Gateway (HTTP 502)")


def test_streams_refused_right_after_they_open_are_not_reconnects(clock: Clock) -> None:
    """A replica without its database takes each stream and closes it with 4503: the
    backoff grows, and `reconnected` is said once, when a stream is live (a message)."""
    said = Notices()
    outage = join._Outage(said)  # type: ignore[arg-type]
    outage.failed("going away")
    for _ in range(6):
        outage.started("reconnected")
        clock.sleep(2)  # the server's database timeout, then 4503
        outage.failed("stream closed (close 4503)")
    assert outage.failures == 7
    outage.started("reconnected")
    assert outage.trial_left() == pytest.approx(join.TRIAL)
    outage.live()  # a message came
    assert len(said.lines) == 3, said.lines
    assert said.lines[1].startswith("stream closed (close 4503); reconnecting in ")
    assert said.lines[2] == "reconnected"
    # The backoff is reset only once the stream has stayed up a while.
    assert outage.failures == 7
    clock.sleep(join.TRIAL + 0.01)
    outage.check()
    assert outage.failures == 0 and outage.trial_left() is None and len(said.lines) == 3


def test_a_quiet_stream_counts_as_live_after_its_trial(clock: Clock) -> None:
    said = Notices()
    outage = join._Outage(said)  # type: ignore[arg-type]
    outage.failed("going away")
    outage.started("reconnected")
    clock.sleep(join.TRIAL - 0.1)
    outage.check()
    assert said.lines[-1] != "reconnected"
    clock.sleep(0.11)
    outage.check()
    assert said.lines[-1] == "reconnected" and outage.failures == 0


def test_two_restarts_seconds_apart_are_told_twice(clock: Clock) -> None:
    said = Notices()
    outage = join._Outage(said)  # type: ignore[arg-type]
    for _ in range(2):
        outage.failed("going away")
        outage.failed("refused")
        outage.started("reconnected")
        clock.sleep(1)
        outage.live()
    told = [line.split(";")[0] for line in said.lines]
    assert told == ["going away", "refused", "reconnected"] * 2


def test_a_server_that_words_each_failure_anew_gets_a_few_lines(clock: Clock) -> None:
    said = Notices()
    outage = join._Outage(said)  # type: ignore[arg-type]
    for n in range(100):
        outage.failed(f"stream closed: unavailable #{n} (close 4503)")
    assert 100 * 2.5 < clock.now - 1000 < 100 * 7.5  # backed off, not a busy loop
    news = [line for line in said.lines if not line.startswith("still reconnecting")]
    assert len(news) == join.MAX_TOLD
    assert len(said.lines) - len(news) <= (clock.now - 1000) / join.REMIND
