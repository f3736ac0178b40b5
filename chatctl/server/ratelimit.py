"""Per-token limits: a token bucket for requests, a counter for open Join streams.

Pure bookkeeping with an injected clock, no I/O: the edge asks ``RateLimiter.check`` for
each unary call (429 with ``Retry-After: retry_after(wait)`` when refused) and
``StreamCounter.open`` when admitting a Join (refused past ``--max-streams-per-token``),
then ``close`` when the stream ends. Keys are token ids (``Principal.token_id``), never
tokens.

A bucket holds up to ``burst`` requests and refills at ``rate`` per second: a client may
send ``burst`` at once, then ``rate`` per second for ever. Memory is bounded: at most
``max_keys`` buckets are kept, the least recently used dropped first. A dropped bucket
was almost always full already (idle for ``burst / rate`` seconds); one that was not
comes back full, which lets that token ``burst`` more requests through once, at worst.

Across replicas (``--replicas N``): each replica enforces its share, ``rate / N`` and
``share(burst, N)``, and ``share(cap, N)`` streams. Behind a balancer that spreads each
request over the replicas in turn, a token gets one server's budget whatever N is; the
429's detail names the whole budget. Chosen over a bucket shared through PostgreSQL,
which costs a statement per call (tests/bench/ratelimit_share_bench.py: about half of a
List's database throughput), where the split costs nothing.
"""

from __future__ import annotations

import math
import re
import time
from collections import OrderedDict
from collections.abc import Callable

__all__ = [
    "RateLimiter",
    "StreamCounter",
    "describe_rate",
    "over_rate",
    "over_stream_cap",
    "parse_rate",
    "retry_after",
    "share",
]

_RATE = re.compile(r"(\d+(?:\.\d+)?)\s*/\s*(s|sec|second|m|min|minute|h|hour)")
_PER = {"s": 1.0, "m": 60.0, "h": 3600.0}


def parse_rate(text: str) -> float | None:
    """``--rate-limit``'s value as requests per second: ``50/s``, ``600/m``, ``1000/h``;
    ``off`` (or ``0``) is None. Raises ValueError with what is expected."""
    value = text.strip().lower()
    if value in ("off", "0", "none"):
        return None
    match = _RATE.fullmatch(value)
    if match is None:
        raise ValueError(f"{text!r} is not a rate: give N/s, N/m or N/h (50/s), or off")
    per_second = float(match.group(1)) / _PER[match.group(2)[0]]
    if per_second <= 0:
        raise ValueError(f"{text!r}: a rate must be above 0 (or off)")
    return per_second


def share(budget: int, replicas: int) -> int:
    """One replica's share of a token's ``budget`` (a burst, a stream cap) split
    ``replicas`` ways: rounded up, so the replicas together allow the budget or a few
    more (at most ``replicas - 1``), never fewer."""
    return max(1, math.ceil(budget / max(1, replicas)))


def retry_after(wait: float) -> int:
    """A wait as HTTP's ``Retry-After`` says it: whole seconds, rounded up, at least 1."""
    return max(1, math.ceil(wait))


def over_rate(rate: float, wait: float) -> tuple[str, dict[str, str]]:
    """The detail and headers of the 429 (id ``v1``, m3o's gateway shape) for a call
    over the rate limit."""
    seconds = retry_after(wait)
    detail = f"rate limit of {describe_rate(rate)} per token exceeded; retry after {seconds} s"
    return detail, {"Retry-After": str(seconds)}


def describe_rate(rate: float) -> str:
    """A rate as the operator would have given it: ``50 requests/s``, ``600 requests/m``
    (below one a second), ``2 requests/h`` (below one a minute)."""
    for per, unit in ((1.0, "s"), (60.0, "m"), (3600.0, "h")):
        count = f"{rate * per:.4g}"
        if rate * per >= 1 or unit == "h":
            break
    return f"{count} request{'' if count == '1' else 's'}/{unit}"


def over_stream_cap(cap: int) -> str:
    """The detail of the 429 (close 4429 on a WebSocket) for one Join stream too many."""
    return f"too many streams: at most {cap} per token (max_streams_per_token)"


class RateLimiter:
    """Token buckets, one per key, of ``burst`` requests refilled at ``rate`` per second."""

    def __init__(
        self,
        rate: float,
        burst: int,
        *,
        clock: Callable[[], float] = time.monotonic,
        max_keys: int = 100_000,
    ) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("a rate limit needs rate > 0 and burst >= 1")
        self.rate = rate
        self.burst = float(burst)
        self.clock = clock
        self.max_keys = max_keys
        #: key -> (tokens left, when last counted); oldest use first.
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._buckets)

    def check(self, key: str, cost: float = 1.0) -> float:
        """0.0 when the request may go (and it is counted); otherwise the seconds until
        it would be allowed (and nothing is counted, so a refused retry costs nothing)."""
        now = self.clock()
        buckets = self._buckets
        found = buckets.pop(key, None)
        if found is None:
            tokens = self.burst
        else:
            left, then = found
            tokens = min(self.burst, left + max(0.0, now - then) * self.rate)
        # A client that waited exactly the time it was told must get through, whatever
        # the float arithmetic of the refill says (1e-9 of a request is nothing).
        if tokens >= cost - 1e-9:
            buckets[key] = (max(0.0, tokens - cost), now)
            wait = 0.0
        else:
            buckets[key] = (tokens, now)
            wait = (cost - tokens) / self.rate
        if len(buckets) > self.max_keys:
            buckets.popitem(last=False)
        return wait

    def pacer(self, key: str) -> Callable[[int], float]:
        """For a batch (a bulk Send's groups of lines): ``pace(n)`` is the seconds to wait
        before ``n`` more requests may go, asked again after each wait, and 0 once all
        ``n`` are counted. ``n`` may be more than the burst: it is counted a burst at a
        time, so a batch goes at the rate rather than never."""
        owed = 0

        def pace(count: int) -> float:
            nonlocal owed
            if not owed:
                owed = count
            while owed:
                part = min(owed, int(self.burst))
                wait = self.check(key, part)
                if wait:
                    return wait
                owed -= part
            return 0.0

        return pace


class StreamCounter:
    """Open Join streams per key, refused past ``cap`` (None: no cap). Only keys with a
    stream open are kept."""

    def __init__(self, cap: int | None) -> None:
        self.cap = cap
        self._open: dict[str, int] = {}

    def __getitem__(self, key: str) -> int:
        return self._open.get(key, 0)

    def __len__(self) -> int:
        return len(self._open)

    def open(self, key: str) -> bool:
        """Count a new stream of ``key``; False (nothing counted) when it is at the cap."""
        count = self._open.get(key, 0)
        if self.cap is not None and count >= self.cap:
            return False
        self._open[key] = count + 1
        return True

    def close(self, key: str) -> None:
        """A stream of ``key`` ended (call once per successful ``open``)."""
        count = self._open.get(key, 0) - 1
        if count > 0:
            self._open[key] = count
        else:
            self._open.pop(key, None)
