"""What a server instance is configured with; built by ``chatctl serve`` from its flags."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from chatctl.schema import Limits

if TYPE_CHECKING:
    from chatctl.server.editions import Edition
    from chatctl.server.tokens import TokenRegistry

__all__ = [
    "DEFAULT_BODY_MIN_RATE",
    "DEFAULT_BODY_TIMEOUT",
    "DEFAULT_MAX_HEAD_BYTES",
    "DEFAULT_MAX_PENDING_HEADS",
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
#: the floor of a request body's pace (Apache's mod_reqtimeout has 20 s and 500 bytes/s):
#: any real client sends a body at once, and a 1 MiB body over a 50 KiB/s link takes 20
#: s of the 1,034 s it is allowed; a client that dribbles bytes to hold a connection open
#: is cut after 10 s plus 1 s per KiB it managed to send.
DEFAULT_BODY_TIMEOUT = 10.0
DEFAULT_BODY_MIN_RATE = 1024.0
#: the largest request head (request line and headers), as nginx's
#: ``large_client_header_buffers`` (4 x 8 KiB) would allow many times over: a head of
#: chatctl or a browser is well under 2 KiB. Over it: 431, and the connection is closed.
DEFAULT_MAX_HEAD_BYTES = 64 * 1024
#: connections at once that have not sent a whole request head (no token read yet): at
#: most this many times ``max_head_bytes`` held (16 MiB by default); past it, the one
#: waiting longest is closed for the newcomer (a client's head arrives in a round trip).
DEFAULT_MAX_PENDING_HEADS = 256


@dataclass
class ServerConfig:
    #: path of the SQLite database file (created with mode 0600 if missing), or a
    #: ``postgresql://`` URL of a database several replicas share.
    db: str
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
    #: SQLite only (``--sync``): ``full`` answers a change once its commit is fsynced (it
    #: survives a power cut); ``normal`` once it is in the OS page cache (it survives
    #: ``kill -9``, not a power cut). PostgreSQL follows its own ``synchronous_commit``.
    sync: str = "full"
    #: PostgreSQL only (``--notify``): ``both`` notifies on each room's channel and on the
    #: one channel a release before per-room channels shares, and listens to both (serves
    #: beside such a release); ``rooms`` only on the rooms' (``hub_pg.NOTIFY_MODES``).
    notify: str = "both"
    #: every accepted token and who it is (``tokens.TokenRegistry``: ``--token`` flags and
    #: ``--tokens-file``, reloaded on SIGHUP and when the file changes); None: open (no
    #: token needed, one tenant, every request an admin: ``tokens.OPEN``).
    registry: TokenRegistry | None = None
    #: requests per second each token may make (None: no limit), and the burst it may
    #: make at once; over it: 429 with Retry-After.
    rate_limit: float | None = None
    rate_burst: int = DEFAULT_RATE_BURST
    #: Join streams one token may hold open at once (None: no cap).
    max_streams_per_token: int | None = None
    #: this server is one of this many replicas behind one address that spreads each
    #: request over them (round-robin): each enforces its share of a token's rate, burst
    #: and stream cap (``ratelimit.share``), so the token's budget is one server's.
    replicas: int = 1
    #: serve https and wss with this certificate chain and key (PEM files).
    tls_cert: str | None = None
    tls_key: str | None = None
    #: a request body must arrive within ``body_timeout`` seconds of its head, plus one
    #: second for every ``body_min_rate`` bytes of it; slower, it is cut with 408.
    body_timeout: float = DEFAULT_BODY_TIMEOUT
    body_min_rate: float = DEFAULT_BODY_MIN_RATE
    #: a request head over this many bytes is answered 431 and its connection closed.
    max_head_bytes: int = DEFAULT_MAX_HEAD_BYTES
    #: connections that may be waiting for their request head at once (``protocol``).
    max_pending_heads: int = DEFAULT_MAX_PENDING_HEADS
    #: browser origins allowed to call the server (``scheme://host[:port]`` as browsers
    #: send them, or ``*``): CORS, and the Origin of a Join WebSocket (``server.cors``).
    cors_origins: tuple[str, ...] = ()
    #: the edition Create and List answer in (they name neither room nor group):
    #: ``both`` (both keys), ``room`` or ``group`` (``server.editions``).
    m3o_edition: Edition = "both"
    #: ``GET /metrics`` in Prometheus's text format (``server.metrics``); off: 404.
    metrics: bool = False
    #: seconds every room keeps a message (``--retain``; None: forever, unless the room
    #: sets its own), and seconds between looks for messages past it (``retention``).
    retain: int | None = None
    retain_check: float = 60.0
    #: this replica's name in PostgreSQL's ``pg_stat_activity`` (``chatctl/VERSION/
    #: HOST:PORT``, set by ``serve``) unless the URL or ``PGAPPNAME`` names it.
    application_name: str | None = None

    @property
    def open(self) -> bool:
        """True when no token is required (single tenant)."""
        return self.registry is None
