"""What a server instance is configured with; built by ``chatctl serve`` from its flags."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from chatctl.schema import Limits

if TYPE_CHECKING:
    from chatctl.server.editions import Edition
    from chatctl.server.tokens import TokenRegistry

__all__ = [
    "DEFAULT_MAX_STREAMS_PER_TOKEN",
    "DEFAULT_RATE_BURST",
    "DEFAULT_RATE_LIMIT",
    "ServerConfig",
]

#: per-token limits of a server with tokens, unless its flags say otherwise (the embedded
#: local server and any open server have none): 50 requests/s with bursts of 100 is far
#: beyond a person and a busy script, and a server doing ~6,000 Sends/s on 2 cores would
#: need 120 tokens at full tilt to be saturated.
DEFAULT_RATE_LIMIT = 50.0
DEFAULT_RATE_BURST = 100
#: a person's tabs and devices, or a bot tailing many rooms; not one client's thousands.
DEFAULT_MAX_STREAMS_PER_TOKEN = 100


@dataclass
class ServerConfig:
    #: path of the SQLite database file (created with mode 0600 if missing), or a
    #: ``postgresql://`` URL of a database several replicas share.
    db: str
    #: accepted bearer tokens; each is its own tenant. Empty: open, single tenant.
    tokens: frozenset[str] = frozenset()
    limits: Limits = field(default_factory=Limits)
    #: WebSocket keep-alive, as m3o's gateway: ping every 15 s, drop after 45 s unanswered.
    ping_interval: float = 15.0
    ping_timeout: float = 45.0
    #: seconds a Join WebSocket may take to send its request (the first frame).
    join_request_timeout: float = 30.0
    #: frames a Join stream may have queued before the server closes it with 4008.
    stream_queue: int = 1000
    #: exit after this many seconds with no open connection (the embedded local server).
    idle_exit: float | None = None
    #: seconds a call may wait on the database (PostgreSQL's statement and lock timeouts,
    #: another process's lock on a SQLite file) before it answers 503.
    db_timeout: float = 5.0
    #: every accepted token and who it is (``tokens.TokenRegistry``: ``--token`` flags and
    #: ``--tokens-file``, reloaded on SIGHUP and when the file changes); None: open.
    #: Until the edge authenticates through it, the edge accepts ``tokens`` above.
    registry: TokenRegistry | None = None
    #: requests per second each token may make (None: no limit), and the burst it may
    #: make at once; over it: 429 with Retry-After.
    rate_limit: float | None = None
    rate_burst: int = DEFAULT_RATE_BURST
    #: Join streams one token may hold open at once (None: no cap).
    max_streams_per_token: int | None = None
    #: serve https and wss with this certificate chain and key (PEM files).
    tls_cert: str | None = None
    tls_key: str | None = None
    #: browser origins allowed to call the server (``scheme://host[:port]`` as browsers
    #: send them, or ``*``): CORS, and the Origin of a Join WebSocket (``server.cors``).
    cors_origins: tuple[str, ...] = ()
    #: the edition Create and List answer in (they name neither room nor group):
    #: ``both`` (both keys), ``room`` or ``group`` (``server.editions``).
    m3o_edition: Edition = "both"

    @property
    def open(self) -> bool:
        """True when no token is required (single tenant)."""
        return not self.tokens
