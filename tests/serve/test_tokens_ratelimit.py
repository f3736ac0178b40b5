"""Per-token limits as bookkeeping: the token bucket (with a hand-driven clock), the
Retry-After it gives, its bounded memory, and the per-token stream counter."""

from __future__ import annotations

import pytest

from chatctl.server.ratelimit import (
    RateLimiter,
    StreamCounter,
    describe_rate,
    over_rate,
    over_stream_cap,
    parse_rate,
    retry_after,
)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_burst_then_the_rate() -> None:
    clock = Clock()
    limiter = RateLimiter(rate=10, burst=5, clock=clock)
    assert [limiter.check("t") for _ in range(5)] == [0.0] * 5
    assert limiter.check("t") == pytest.approx(0.1)  # one token refills in 1/10 s
    clock.now += 0.05
    assert limiter.check("t") == pytest.approx(0.05)  # refusals count nothing
    clock.now += 0.05
    assert limiter.check("t") == 0.0
    assert limiter.check("t") == pytest.approx(0.1)


def test_an_idle_bucket_refills_only_to_the_burst() -> None:
    clock = Clock()
    limiter = RateLimiter(rate=10, burst=5, clock=clock)
    limiter.check("t")
    clock.now += 3600
    allowed = sum(limiter.check("t") == 0.0 for _ in range(20))
    assert allowed == 5


def test_the_sustained_rate() -> None:
    # A client asking every millisecond for 10 s gets the burst plus rate x 10 s.
    clock = Clock()
    limiter = RateLimiter(rate=50, burst=100, clock=clock)
    allowed = 0
    for _ in range(10_000):
        allowed += limiter.check("t") == 0.0
        clock.now += 0.001
    assert allowed == pytest.approx(100 + 50 * 10, abs=1)


def test_a_client_that_waits_as_told_always_gets_through() -> None:
    clock = Clock()
    limiter = RateLimiter(rate=3, burst=2, clock=clock)
    for _ in range(50):
        wait = limiter.check("t")
        if wait:
            clock.now += wait
            assert limiter.check("t") == 0.0


def test_tokens_have_buckets_of_their_own() -> None:
    limiter = RateLimiter(rate=1, burst=1, clock=Clock())
    assert limiter.check("a") == 0.0
    assert limiter.check("a") > 0
    assert limiter.check("b") == 0.0


def test_memory_is_bounded_and_the_recent_kept() -> None:
    clock = Clock()
    limiter = RateLimiter(rate=1, burst=2, clock=clock, max_keys=3)
    limiter.check("busy")
    limiter.check("busy")
    for n in range(1000):
        limiter.check(f"k{n}")
        limiter.check("busy")  # used every time: never the least recent
        assert len(limiter) <= 3
    assert limiter.check("busy") > 0  # its bucket was kept (still empty), not reset


@pytest.mark.parametrize(
    ("wait", "header"), [(0.001, 1), (0.5, 1), (1.0, 1), (1.01, 2), (2.5, 3), (59.9, 60)]
)
def test_retry_after_is_whole_seconds_rounded_up(wait: float, header: int) -> None:
    assert retry_after(wait) == header


@pytest.mark.parametrize(
    ("text", "per_second"),
    [
        ("50/s", 50.0),
        ("50 / s", 50.0),
        ("2.5/s", 2.5),
        ("600/m", 10.0),
        ("600/min", 10.0),
        ("3600/h", 1.0),
        ("off", None),
        ("0", None),
        ("OFF", None),
    ],
)
def test_parse_rate(text: str, per_second: float | None) -> None:
    assert parse_rate(text) == per_second


@pytest.mark.parametrize("text", ["50", "fast", "50/d", "-1/s", "0/s", "/s", "1e3/s"])
def test_parse_rate_refuses(text: str) -> None:
    with pytest.raises(ValueError, match=r"N/s|above 0"):
        parse_rate(text)


def test_a_bucket_needs_a_rate_and_a_burst() -> None:
    for rate, burst in ((0, 1), (1, 0), (-1, 5)):
        with pytest.raises(ValueError):
            RateLimiter(rate, burst)


def test_streams_per_token() -> None:
    streams = StreamCounter(cap=2)
    assert streams.open("a") and streams.open("a")
    assert not streams.open("a")  # at the cap: refused, not counted
    assert streams["a"] == 2
    assert streams.open("b")
    streams.close("a")
    assert streams.open("a")
    for _ in range(3):
        streams.close("a")
    streams.close("b")
    assert len(streams) == 0 and streams["a"] == 0  # nothing kept for idle tokens
    unlimited = StreamCounter(cap=None)
    assert all(unlimited.open("a") for _ in range(1000))


def test_what_a_refused_client_is_told() -> None:
    # The contract's 429: detail in m3o's gateway error, Retry-After in whole seconds.
    assert over_rate(50.0, 0.02) == (
        "rate limit of 50 requests/s per token exceeded; retry after 1 s",
        {"Retry-After": "1"},
    )
    assert over_rate(0.5, 1.5)[1] == {"Retry-After": "2"}
    assert over_stream_cap(100) == "too many streams: at most 100 per token (max_streams_per_token)"


@pytest.mark.parametrize(
    ("per_second", "said"),
    [
        (50.0, "50 requests/s"),
        (1.0, "1 request/s"),
        (2.5, "2.5 requests/s"),
        (10 / 60, "10 requests/m"),
        (1000 / 3600, "16.67 requests/m"),
        (1 / 3600, "1 request/h"),
    ],
)
def test_a_rate_is_said_as_the_operator_gave_it(per_second: float, said: str) -> None:
    assert describe_rate(per_second) == said
    assert over_rate(per_second, 0.5)[0].startswith(f"rate limit of {said} per token exceeded")


def test_a_batch_is_paced_a_burst_at_a_time() -> None:
    # A bulk Send's group of 25 against a bucket of 10 at 5/s: 10 at once, then the
    # rest as the bucket refills, never refused for being more than a burst.
    clock = Clock()
    limiter = RateLimiter(rate=5, burst=10, clock=clock)
    pace = limiter.pacer("t")
    waited = 0.0
    while (wait := pace(25)) > 0:
        clock.now += wait
        waited += wait
    assert waited == pytest.approx(3.0)  # 15 more at 5/s
    assert limiter.check("t") > 0  # the bucket is spent
    clock.now += 0.2
    assert pace(1) == 0.0  # the next group starts afresh
