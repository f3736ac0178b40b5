"""Doing without chatctl's extensions, on a plain m3o server (either edition).

Such a server has no paging, no resume and no History ``user_id`` (see the contract's
part 4): the client sends it the seed's request bodies only, and does the rest itself.

- History is read once (one seed-shaped call: the whole room) and put in time order on
  the client, since m3o answers in its store's key order (by random id): by ``sent_at``
  to the nanosecond, then id. ``--limit``, ``--before`` and ``--after`` are applied to
  that list, with the meanings chatctl's server gives them.
- A flag that needs an extension the client cannot make up for (``join --since``,
  ``--events``, ``--include-own``) is refused before anything is sent (exit 2).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from chatctl.errors import NotFoundError, UnsupportedError
from chatctl.ids import cursor_time_ns, time_ns

if TYPE_CHECKING:
    from chatctl.cli.context import Invocation

__all__ = ["order_key", "read_history", "select", "unsupported"]


def unsupported(inv: Invocation, what: str, feature: str) -> UnsupportedError:
    """``what`` (``join --since``) needs ``feature``, which the server does not have."""
    where = inv.client.where
    return UnsupportedError(
        f"{what} is not supported by {where}: it is an m3o server without chatctl's "
        f"{feature} extension",
        feature,
        where,
    )


def order_key(message: dict[str, Any]) -> tuple[int, str]:
    """Time order: ``sent_at`` (one without a readable time sorts first), then id."""
    stamp = time_ns(message.get("sent_at"))
    return (-1 if stamp is None else stamp, str(message.get("id", "")))


def read_history(inv: Invocation, room_id: str) -> list[dict[str, Any]]:
    """Every message of the room, oldest first, from one seed-shaped History call."""
    answer = inv.client.call("History", {"room_id": room_id})
    listed = answer.get("messages")
    messages = [m for m in listed if isinstance(m, dict)] if isinstance(listed, list) else []
    return sorted(messages, key=order_key)


def select(
    messages: list[dict[str, Any]],
    *,
    limit: int | None = None,
    before: str | None = None,
    after: str | None = None,
) -> list[dict[str, Any]]:
    """The messages after ``after`` and before ``before`` (message ids of the room, or
    time cursors), then at most ``limit``: the first ones after ``after``, else the
    latest ones."""
    start = _position(messages, after, "after") if after else 0
    end = _position(messages, before, "before") if before else len(messages)
    window = messages[start:end]
    if limit is not None:
        window = window[:limit] if after else window[max(0, len(window) - limit) :]
    return window


def _position(messages: list[dict[str, Any]], cursor: str, flag: str) -> int:
    """Where a cursor falls: just after the message it names for --after, at it for
    --before; a time cursor (a UUIDv7 that is no message's id) before the first message
    of its time or later."""
    wanted = cursor.strip().lower()
    for i, message in enumerate(messages):
        if str(message.get("id", "")).lower() == wanted:
            return i + 1 if flag == "after" else i
    at = cursor_time_ns(wanted)
    if at is None:
        raise NotFoundError(
            f"--{flag} {cursor}: no message of the room has this id",
            hint="give the id of a message of this room (see: chatctl history ROOM -o tsv)",
        )
    return next((i for i, m in enumerate(messages) if order_key(m)[0] >= at), len(messages))
