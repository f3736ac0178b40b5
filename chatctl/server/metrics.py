"""``GET /metrics``: what an operator graphs and alerts on, in Prometheus's text format.

Made with the ``prometheus-client`` library, imported only here and only by a server
started with ``--metrics`` (off by default: ``docs/server.md`` "Metrics" says why). What
it counts names endpoints, statuses and limits, never a room, user, tenant or token, so
every series is bounded whatever clients send.

Where each figure comes from, and what it costs a request:

- ``chatctl_requests_total{endpoint,status}`` and
  ``chatctl_request_duration_seconds{endpoint}`` (Join streams not timed: they last as
  long as the client wants): one line in ``accesslog.AccessLog`` per request, through
  ``Metrics.request``, which keeps each label set's child so a request costs two
  dictionary looks and two additions.
- ``chatctl_db_call_duration_seconds{call}`` and ``chatctl_db_errors_total{call}``, and
  ``chatctl_messages_sent_total``: ``MeteredStore`` wraps the store the rules use.
- Read when scraped, at no cost per request: open Join streams, requests in flight and
  fan-out queues (``hub``), frames delivered to streams (``Hub.delivered``), refusals
  by limit (``domain.REFUSALS``), and on PostgreSQL whether this replica hears the others.
- ``chatctl_pg_notification_lag_seconds``: on PostgreSQL, each notified message's lag
  from its id being made to this replica hearing it (``hub_pg.lag_of``).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from typing import Any, TypeVar

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

from chatctl.schema import endpoint_for
from chatctl.server.domain import REFUSALS, Key, NewMessage, Unavailable
from chatctl.server.hub import Hub
from chatctl.server.sql import Session
from chatctl.server.store import SendResult, Store

__all__ = ["CONTENT_TYPE", "MeteredStore", "Metrics", "endpoint_label"]

T = TypeVar("T")

CONTENT_TYPE = CONTENT_TYPE_LATEST
#: request latency buckets, seconds: a Send is ~1 ms on SQLite, a History page a few.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)
#: a database call is bounded by --db-timeout (5 s) and a second's grace.
DB_BUCKETS = (0.0002, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 2.5, 6)
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


class Metrics:
    """One server's metrics, in a registry of its own (several servers in one process,
    as the tests run them, count apart)."""

    def __init__(self, hub: Hub, listening: Callable[[], bool] | None = None) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        registry = self.registry
        self._requests = Counter(
            "chatctl_requests",
            "Requests answered (a Join WebSocket: when it ends, with its close code),"
            " by endpoint and status.",
            ["endpoint", "status"],
            registry=registry,
        )
        self._latency = Histogram(
            "chatctl_request_duration_seconds",
            "Time from a request's arrival to its answer's end, by endpoint (Join streams"
            " are not timed).",
            ["endpoint"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.db_duration = Histogram(
            "chatctl_db_call_duration_seconds",
            "Time of each database call (read, write, send, send_many), waits for a"
            " connection or a room's turn included.",
            ["call"],
            buckets=DB_BUCKETS,
            registry=registry,
        )
        self.db_errors = Counter(
            "chatctl_db_errors",
            "Database calls that failed or timed out (each answered 503), by call.",
            ["call"],
            registry=registry,
        )
        self.messages_sent = Counter(
            "chatctl_messages_sent",
            "Messages stored by this server (Send and bulk Send; a replayed"
            " Idempotency-Key not counted).",
            registry=registry,
        )
        self.notification_lag = Histogram(
            "chatctl_pg_notification_lag_seconds",
            "PostgreSQL: from a message's id being made (by any replica) to this replica"
            " hearing its notification.",
            buckets=LAG_BUCKETS,
            registry=registry,
        )
        registry.register(_Live(hub, listening))
        self._children: dict[tuple[str, int], Any] = {}
        self._timers: dict[str, Any] = {}

    def request(self, path: str, status: int, seconds: float, stream: bool) -> None:
        """Count one request (``accesslog``); time it unless it was a Join stream."""
        label = endpoint_label(path)
        key = (label, status)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = self._requests.labels(label, str(status))
        child.inc()
        if stream:
            return
        timer = self._timers.get(label)
        if timer is None:
            timer = self._timers[label] = self._latency.labels(label)
        timer.observe(seconds)

    def exposition(self) -> bytes:
        """The text a scrape gets."""
        return generate_latest(self.registry)


class _Live(Collector):
    """What is read from the server when scraped: gauges of now, and counters kept as
    plain numbers where they happen (no cost per request)."""

    def __init__(self, hub: Hub, listening: Callable[[], bool] | None) -> None:
        self.hub = hub
        self.listening = listening

    def collect(self) -> Iterator[Any]:
        hub = self.hub
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
        yield CounterMetricFamily(
            "chatctl_messages_delivered",
            "Frames (messages and events) handed to live Join streams.",
            hub.delivered,
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
        if self.listening is not None:
            yield GaugeMetricFamily(
                "chatctl_pg_listening",
                "PostgreSQL: 1 while this replica hears the others (LISTEN), else 0.",
                1 if self.listening() else 0,
            )


class MeteredStore:
    """The store the rules use, timed: each call's duration and failures by call, and
    the messages it stored. Anything else is the wrapped store's own."""

    def __init__(self, store: Store, metrics: Metrics) -> None:
        self.inner = store
        self.metrics = metrics
        self._time = {
            call: (metrics.db_duration.labels(call), metrics.db_errors.labels(call))
            for call in ("read", "write", "send", "send_many")
        }

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def _timed(self, call: str, work: Awaitable[T]) -> T:
        duration, errors = self._time[call]
        started = time.perf_counter()
        try:
            return await work
        except Unavailable:
            errors.inc()
            raise
        finally:
            duration.observe(time.perf_counter() - started)

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
            self.metrics.messages_sent.inc()
        return result

    async def send_many(
        self,
        tenant: str,
        messages: Sequence[tuple[NewMessage, Key | None]],
        *,
        stop: bool = False,
    ) -> list[SendResult]:
        results = await self._timed("send_many", self.inner.send_many(tenant, messages, stop=stop))
        stored = sum(1 for result in results if result.stored)
        if stored:
            self.metrics.messages_sent.inc(stored)
        return results

    async def purge_step(self) -> bool:
        return await self.inner.purge_step()
