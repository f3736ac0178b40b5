"""The client: unary calls over httpx, History and bulk Sends streamed, Join over
websockets. It raises the typed errors of ``chatctl.errors`` with the facts and never
prints or words a hint: the CLI's edge does.

One module per idea, each building on the ones above it::

    retry       Retry and backoff: the one retry helper (calls, History, bulk, join)
    facts       Server: what the client knows of the server (edition, extensions, whoami)
    transport   Transport: URL, TLS, the connection, the call's budget as a deadline
                every read and write checks, one attempt, answers read and decoded
    unary       Calls: call() with its retries, edition and acting user; facts, whoami
    history     HistoryReads: a long History, streamed and resumed
    bulk        BulkSends: one bulk Send, answered line by line
    join        Joins, JoinStream: the Join WebSocket

``Client`` is all of them; ``from chatctl.client import Client`` is the way in.
"""

from __future__ import annotations

from chatctl.client.bulk import NDJSON, BulkCut, BulkSends, NoBulk
from chatctl.client.facts import Server
from chatctl.client.history import HistoryReads
from chatctl.client.join import PING_INTERVAL, Joins, JoinStream, join_ping_interval
from chatctl.client.retry import Retry, backoff
from chatctl.client.transport import (
    CONNECT_TIMEOUT,
    DEFAULT_TIMEOUT,
    MAX_ANSWER_BYTES,
    parse_url,
)

__all__ = [
    "CONNECT_TIMEOUT",
    "DEFAULT_TIMEOUT",
    "MAX_ANSWER_BYTES",
    "NDJSON",
    "PING_INTERVAL",
    "BulkCut",
    "Client",
    "JoinStream",
    "NoBulk",
    "Retry",
    "Server",
    "backoff",
    "join_ping_interval",
    "parse_url",
]


class Client(HistoryReads, BulkSends, Joins):
    """A client of one m3o server (or the embedded local one): ``Client(url, token)``,
    then ``call``, ``history``, ``send_bulk``, ``join``; close it, or use it in ``with``."""
