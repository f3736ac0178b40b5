"""What a server instance is configured with; built by ``chatctl serve`` from its flags."""

from __future__ import annotations

from dataclasses import dataclass, field

from chatctl.schema import Limits

__all__ = ["ServerConfig"]


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

    @property
    def open(self) -> bool:
        """True when no token is required (single tenant)."""
        return not self.tokens
