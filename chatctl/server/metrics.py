"""``GET /metrics``: what an operator graphs and alerts on, in Prometheus's text format.

Made with the ``prometheus-client`` library, imported only here and only by a server
started with ``--metrics`` (off by default: ``docs/server.md`` "Metrics" says why). What
it counts names endpoints, statuses and limits, never a room, user, tenant or token, so
every series is bounded whatever clients send.

Where each figure comes from, and what it costs a request: everything is counted as
plain numbers where it happens (the event loop is one thread: no lock) and turned into
the library's metric families only when scraped (``_Scrape``), so a request costs a few
dictionary looks and additions (``Histogram`` finds a bucket by bisection: a tenth of
``prometheus_client.Histogram``'s cost, which locks and scans).

- ``chatctl_requests_total{endpoint,status}`` and
  ``chatctl_request_duration_seconds{endpoint}`` (Join streams not timed: they last as
  long as the client wants): ``accesslog.AccessLog`` calls ``Metrics.request``.
- ``chatctl_db_call_duration_seconds{call}``, ``chatctl_db_errors_total{call}`` and
  ``chatctl_messages_sent_total``: ``MeteredStore`` wraps the store the rules use.
- Kept where they happen, whether metrics are on or not: open Join streams, requests in
  flight and fan-out queues (``hub``), frames delivered to streams (``Hub.delivered``),
  refusals by limit (``domain.REFUSALS``), and on PostgreSQL whether this replica hears
  the others (``chatctl_pg_listening``).
- ``chatctl_pg_notification_lag_seconds``: on PostgreSQL, each notified message's lag
  from its id being made to this replica hearing it (``hub_pg.lag_of``).
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections.abc import Awaitable, Callable, Iterator, Sequence
from typing import Any, TypeVar

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

from chatctl.schema import endpoint_for
from chatctl.server.domain import REFUSALS, Key, NewMessage, Unavailable
from chatctl.server.hub import Hub
from chatctl.server.sql import Session
from chatctl.server.store import SendResult, Store

__all__ = ["CONTENT_TYPE", "Histogram", "MeteredStore", "Metrics", "endpoint_label"]

T = TypeVar("T")

CONTENT_TYPE = CONTENT_TYPE_LATEST
#: request latency buckets, seconds: a Send is ~1 ms on SQLite, a History page a few.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)
#: a database call is bounded by --db-timeout (5 s) and a second's grace.
DB_BUCKETS = (0.0002, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 2.5, 6)
DB_CALLS = ("read", "write", "send", "send_many")
LAG_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
#: the paths outside the API, labelled as themselves; any other path is "other".
_OWN_PATHS = frozenset({"/health", "/ready", "/metrics", "/openapi.json"})
CHAT_PREFIX = "/v1/chat/"


def endpoint_label(path: str) -> str:
    """The ``endpoint`` label of a request: the endpoint's name (``Send``), one of the
    server's own paths, ``unknown`` for a /v1/chat/ path that is none, else ``other``:
    a bounded set whatever paths clients send."""
    lowered = path.lower()
    if lowered.startswith(CHAT_PREFIX):
        endpoint = endpoint_for(path[len(CHAT_PREFIX) :])
        return "unknown" if endpoint is None else endpoint.name
    return lowered if lowered in _OWN_PATHS else "other"


class Histogram:
    """A histogram counted as plain numbers on the event loop (one thread: no lock), its
    buckets found by bisection; exposed through the library's ``HistogramMetricFamily``.
    A tenth of ``prometheus_client.Histogram``'s cost per observation, which takes a lock
    and scans its buckets."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

    def add_to(self, family: HistogramMetricFamily, labels: Sequence[str]) -> None:
        buckets, total = [], 0
        for bound, count in zip((*self.bounds, float("inf")), self.counts, strict=True):
            total += count
            buckets.append(("+Inf" if bound == float("inf") else repr(float(bound)), total))
        family.add_metric(list(labels), buckets, self.sum)


class Metrics:
    """One server's metrics, in a registry of its own (several servers in one process,
    as the tests run them, count apart). Counted as plain numbers where they happen and
    turned into the library's metric families when scraped (``_Scrape``)."""

    def __init__(self, hub: Hub, listening: Callable[[], bool] | None = None) -> None:
        self.hub = hub
        self.listening = listening
        #: (endpoint, status) -> requests; endpoint -> latency.
        self.requests: dict[tuple[str, int], int] = {}
        self.latency: dict[str, Histogram] = {}
        #: database call -> its durations, and its failures.
        self.db_duration = {call: Histogram(DB_BUCKETS) for call in DB_CALLS}
        self.db_errors = dict.fromkeys(DB_CALLS, 0)
        self.messages_sent = 0
        self.notification_lag = Histogram(LAG_BUCKETS)
        #: paths seen -> their label (bounded: only paths that name a known endpoint).
        self._labels: dict[str, str] = {}
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_Scrape(self))

    def request(self, path: str, status: int, seconds: float, stream: bool) -> None:
        """Count one request (``accesslog``); time it unless it was a Join stream."""
        label = self._labels.get(path)
        if label is None:
            label = endpoint_label(path)
            if label not in ("other", "unknown") and len(self._labels) < 1024:
                self._labels[path] = label
        key = (label, status)
        requests = self.requests
        requests[key] = requests.get(key, 0) + 1
        if stream:
            return
        timer = self.latency.get(label)
        if timer is None:
            timer = self.latency[label] = Histogram(LATENCY_BUCKETS)
        timer.observe(seconds)

    def observe_lag(self, seconds: float) -> None:
        self.notification_lag.observe(seconds)

    def exposition(self) -> bytes:
        """The text a scrape gets."""
        return generate_latest(self.registry)


class _Scrape(Collector):
    """Every figure, as the library's metric families, when scraped."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Any]:
        m = self.metrics
        requests = CounterMetricFamily(
            "chatctl_requests",
            "Requests answered (a Join WebSocket: when it ends, with its close code),"
            " by endpoint and status.",
            labels=["endpoint", "status"],
        )
        for (endpoint, status), count in sorted(m.requests.items()):
            requests.add_metric([endpoint, str(status)], count)
        yield requests
        latency = HistogramMetricFamily(
            "chatctl_request_duration_seconds",
            "Time from a request's arrival to its answer's end, by endpoint (Join streams"
            " are not timed).",
            labels=["endpoint"],
        )
        for endpoint, histogram in sorted(m.latency.items()):
            histogram.add_to(latency, [endpoint])
        yield latency
        db = HistogramMetricFamily(
            "chatctl_db_call_duration_seconds",
            "Time of each database call (read, write, send, send_many), waits for a"
            " connection or a room's turn included.",
            labels=["call"],
        )
        errors = CounterMetricFamily(
            "chatctl_db_errors",
            "Database calls that failed or timed out (each answered 503), by call.",
            labels=["call"],
        )
        for call in DB_CALLS:
            m.db_duration[call].add_to(db, [call])
            errors.add_metric([call], m.db_errors[call])
        yield db
        yield errors
        yield CounterMetricFamily(
            "chatctl_messages_sent",
            "Messages stored by this server (Send and bulk Send; a replayed"
            " Idempotency-Key not counted).",
            m.messages_sent,
        )
        hub = m.hub
        yield CounterMetricFamily(
            "chatctl_messages_delivered",
            "Frames (messages and events) handed to live Join streams.",
            hub.delivered,
        )
        yield GaugeMetricFamily(
            "chatctl_streams_open", "Join streams open (WebSocket and NDJSON).", hub.streams
        )
        yield GaugeMetricFamily(
            "chatctl_requests_in_flight",
            "Requests being answered and streams open.",
            hub.active,
        )
        queued = [sub.queued for sub in hub.all_subscribers()]
        yield GaugeMetricFamily(
            "chatctl_fanout_queued_frames",
            "Frames waiting in all streams' queues (fan-out depth).",
            sum(queued),
        )
        yield GaugeMetricFamily(
            "chatctl_fanout_queue_max_frames",
            f"The longest stream queue (a stream is closed 4008 at {hub.queue_size}).",
            max(queued, default=0),
        )
        refused = CounterMetricFamily(
            "chatctl_refusals",
            "Requests refused by a limit: rate_limit (429), stream_cap (429), quota (403)."
            " Counted by the process.",
            labels=["limit"],
        )
        for limit in ("rate_limit", "stream_cap", "quota"):
            refused.add_metric([limit], REFUSALS[limit])
        yield refused
        if m.listening is not None:
            yield GaugeMetricFamily(
                "chatctl_pg_listening",
                "PostgreSQL: 1 while this replica hears the others (LISTEN), else 0.",
                1 if m.listening() else 0,
            )
            lag = HistogramMetricFamily(
                "chatctl_pg_notification_lag_seconds",
                "PostgreSQL: from a message's id being made (by any replica) to this"
                " replica hearing its notification.",
                labels=[],
            )
            m.notification_lag.add_to(lag, [])
            yield lag


class MeteredStore:
    """The store the rules use, timed: each call's duration and failures by call, and
    the messages it stored. Anything else is the wrapped store's own."""

    def __init__(self, store: Store, metrics: Metrics) -> None:
        self.inner = store
        self.metrics = metrics

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def _timed(self, call: str, work: Awaitable[T]) -> T:
        metrics = self.metrics
        started = time.perf_counter()
        try:
            return await work
        except Unavailable:
            metrics.db_errors[call] += 1
            raise
        finally:
            metrics.db_duration[call].observe(time.perf_counter() - started)

    async def start(self) -> None:
        await self.inner.start()

    async def close(self) -> None:
        await self.inner.close()

    async def read(self, work: Callable[[Session], Awaitable[T]]) -> T:
        return await self._timed("read", self.inner.read(work))

    async def write(self, work: Callable[[Session], Awaitable[T]]) -> T:
        return await self._timed("write", self.inner.write(work))

    async def send(self, tenant: str, message: NewMessage, key: Key | None) -> SendResult:
        result = await self._timed("send", self.inner.send(tenant, message, key))
        if result.stored:
            self.metrics.messages_sent += 1
        return result

    async def send_many(
        self,
        tenant: str,
        messages: Sequence[tuple[NewMessage, Key | None]],
        *,
        stop: bool = False,
    ) -> list[SendResult]:
        results = await self._timed("send_many", self.inner.send_many(tenant, messages, stop=stop))
        self.metrics.messages_sent += sum(1 for result in results if result.stored)
        return results

    async def purge_step(self) -> bool:
        return await self.inner.purge_step()
