"""What the client knows of the server at one URL, learned from its answers (``Server``).

m3o came in two editions (the seed's "room" names and the final "group" ones), and
chatctl's server has extensions no other m3o server has. The client learns both from the
server's answers and remembers them for its URL: the edition from an answer's keys
(``rooms``/``groups``...), or from a 400 ``missing group id`` to a request naming
``room_id`` (then it is sent again once, named the other way: nothing was done); the
extensions from the ``Chat-Extensions`` header chatctl's server puts on every answer and
on the Join handshake (no header: a plain m3o server). Requests are built with the seed's
``room_id`` and sent as the edition names it. The embedded local server is chatctl's
own: nothing to learn.

Who the token acts as: the server's Whoami answer (``identity``), asked once where the
server has ``whoami`` (``unary.Calls.whoami``).
"""

from __future__ import annotations

from typing import Any

from chatctl.schema import SERVER_EXTENSIONS, Edition, edition_of, parse_extensions

__all__ = ["Server"]


class Server:
    """What this process knows of the server at one URL, learned from its answers."""

    def __init__(self, *, ours: bool = False) -> None:
        #: "room" or "group" once an answer said; None before.
        self.edition: Edition | None = "room" if ours else None
        #: chatctl's extensions it has (empty: a plain m3o server); None before any answer.
        self.extensions: frozenset[str] | None = frozenset(SERVER_EXTENSIONS) if ours else None
        #: the server's Whoami answer (``{"identity": {...}}``), once asked.
        self.identity: dict[str, Any] | None = None

    @property
    def known(self) -> bool:
        return self.extensions is not None

    @property
    def plain(self) -> bool:
        """Known to have none of chatctl's extensions."""
        return self.extensions is not None and not self.extensions

    def has(self, extension: str) -> bool:
        return self.extensions is not None and extension in self.extensions

    def learn(self, header: str | None, answer: dict[str, Any] | None = None) -> None:
        """Learn from one m3o answer: its Chat-Extensions header (absent: none) and,
        for a successful answer, the edition its keys are in."""
        self.extensions = frozenset() if header is None else parse_extensions(header)
        edition = edition_of(answer) if answer is not None else None
        if edition is not None:
            self.edition = edition

    def token_user(self) -> str | None:
        """The user the token acts as, from the Whoami answer already had (None: not
        asked, or an admin token, which acts as any user)."""
        identity = (self.identity or {}).get("identity")
        user = identity.get("user_id") if isinstance(identity, dict) else None
        return user if isinstance(user, str) and user else None
