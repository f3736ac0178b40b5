"""The client's one retry helper (chatctl/client/retry.py), which a call, a long History,
a bulk batch and join's reconnects all use: its rules on their own, without a server."""

from __future__ import annotations

import math

import pytest

from chatctl.client.retry import Retry, backoff
from chatctl.errors import APIError, NoAnswerError


def test_backoff_doubles_from_a_tenth_of_a_second_to_its_cap_with_jitter() -> None:
    for failures in range(1, 30):
        base = min(2.0, 0.05 * 2**failures)
        assert all(base * 0.5 <= backoff(failures) <= base * 1.5 for _ in range(20))
    assert max(backoff(50, cap=5.0) for _ in range(50)) > 2.0 * 1.5


def test_before_the_server_was_reached_a_few_quick_retries_then_none() -> None:
    retry = Retry(60, retries=3)
    assert [retry.delay(quick=True) is not None for _ in range(4)] == [True, True, True, False]


def test_once_reached_retries_go_on_until_the_budget_cannot_cover_the_wait() -> None:
    retry = Retry(60, retries=3)
    waits = [retry.delay() for _ in range(20)]
    assert all(w is not None and 0.05 <= w <= 3.0 for w in waits)
    assert Retry(0.05, retries=3).delay() is None  # the shortest wait is past the budget
    endless = Retry(math.inf, retries=0, cap=5.0)
    assert all(endless.delay() is not None for _ in range(100)) and endless.failures == 100


def test_retry_after_is_waited_as_asked_within_the_budget() -> None:
    retry = Retry(10, retries=0)
    assert retry.delay(asked=0.0, quick=True) == 0.05  # never a busy loop, nor quick-limited
    assert retry.delay(asked=2.5) == 2.5
    assert retry.delay(asked=30) is None


def test_the_last_answer_not_silence_and_progress_starts_over() -> None:
    retry = Retry(10, retries=3)
    silence = NoAnswerError("http://x", 10)
    assert retry.last(silence) is silence
    refused = retry.heard(APIError(503, "storage unavailable"))
    assert retry.last(silence) is refused
    retry.delay()
    before = retry.deadline
    retry.progress()
    assert retry.failures == 0 and retry.last(silence) is silence and retry.deadline >= before


def test_pause_sleeps_or_raises_what_the_attempt_said() -> None:
    slept: list[float] = []
    retry = Retry(10, retries=1, sleep=slept.append)
    refused = APIError(502, "Bad Gateway")
    retry.pause(refused, quick=True)
    assert len(slept) == 1
    with pytest.raises(APIError) as raised:
        retry.pause(refused, quick=True)  # the quick retries are spent: what it said
    assert raised.value is refused and len(slept) == 1
