"""The one retry helper: backoff, the budget of one logical call, and its last answer.

Every place that tries again uses a ``Retry``: a unary call (``unary.Calls._call``), a
long History (``history``), a bulk Send's unanswered rest (``cli.bulk``) and ``join``'s
reconnects (``cli.join``). The rules are the same everywhere:

- an attempt a retry may cure (no connection, a connection lost, 429, 502-504) is made
  again after ``backoff`` (capped, jittered), or after the ``Retry-After`` the server
  named;
- a process that has not yet reached its server gives up after ``retries`` quick retries
  (a typo in ``--url`` should not hang); once it has, it keeps trying until the budget is
  spent, riding through a server restart;
- each answer that is progress (a message of a History, a line of a bulk answer) starts
  the failures and the budget over;
- when the budget ends, the last answer is reported (a 503 ``storage unavailable``), not
  silence: NoAnswerError only if nothing ever answered.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable

from chatctl.errors import ChatctlError

__all__ = ["Retry", "backoff"]

#: seconds a backoff grows to at most, unless the caller says otherwise.
BACKOFF_CAP = 2.0


def backoff(failures: int, cap: float = BACKOFF_CAP) -> float:
    """Seconds to wait before retrying after ``failures`` failures in a row: doubling from
    0.1 s up to ``cap``, jittered by half either way, so clients that failed together do
    not come back together."""
    wait: float = min(cap, 0.05 * 2 ** min(failures, 16)) * (0.5 + random.random())
    return wait


class Retry:
    """The retries of one logical call: its budget (``deadline``, monotonic), its failures
    in a row, and the last error the server answered with."""

    def __init__(
        self,
        budget: float,
        *,
        retries: int,
        sleep: Callable[[float], None] = time.sleep,
        cap: float = BACKOFF_CAP,
        deadline: float | None = None,
    ) -> None:
        #: seconds the call may take, retries included (restarted by each ``progress``).
        self.budget = budget
        #: when the budget ends (monotonic); ``math.inf``: never.
        self.deadline = time.monotonic() + budget if deadline is None else deadline
        #: quick retries before the server was ever reached.
        self.retries = retries
        self.cap = cap
        self.sleep = sleep
        #: failed attempts in a row.
        self.failures = 0
        #: the error of the last answer the server gave (a 503...), if one came.
        self.answered: ChatctlError | None = None

    def progress(self) -> None:
        """An answer that moves the call on came (a message, a line's answer): failures,
        the budget and the last answer start over."""
        self.failures = 0
        self.deadline = time.monotonic() + self.budget
        self.answered = None

    def heard(self, error: ChatctlError) -> ChatctlError:
        """The server answered with ``error``: it is what the call reports if the budget
        ends in silence."""
        self.answered = error
        return error

    def last(self, silence: ChatctlError) -> ChatctlError:
        """What to report when the budget ended waiting (``silence``, a NoAnswerError): the
        last answer, if one came, says more."""
        return silence if self.answered is None else self.answered

    def delay(self, *, asked: float | None = None, quick: bool = False) -> float | None:
        """Count a failed attempt; the seconds to wait before the next (``asked``: the
        server's Retry-After, else ``backoff``), or None when there is to be no next:
        ``quick`` (the server was never reached) and ``retries`` retries made, or the
        budget cannot cover the wait."""
        self.failures += 1
        if asked is not None:
            wait = max(asked, 0.05)  # never a busy loop
        elif quick and self.failures > self.retries:
            return None
        else:
            wait = backoff(self.failures, self.cap)
        if time.monotonic() + wait >= self.deadline:
            return None
        return wait

    def pause(
        self, error: ChatctlError, *, asked: float | None = None, quick: bool = False
    ) -> None:
        """Wait before the next attempt (``delay``), or raise ``error`` (what the failed
        attempt said) when there is to be none."""
        wait = self.delay(asked=asked, quick=quick)
        if wait is None:
            raise error
        self.sleep(wait)
