"""Retention (issue 26, contract part 3 "Retention"): how long a room keeps its messages.

- The server's ``--retain`` applies to every room; a room's own (the ``Retain`` endpoint,
  its creator or an admin token) applies where it is shorter, or alone on a server
  without one: the server's is the operator's ceiling, a room may keep less.
- ``expire_step`` (the app's housekeeping, every ``--retain-check`` seconds) removes what
  is due in bounded steps, as deleted rooms are purged: one room's oldest
  ``sql.PURGE_CHUNK`` messages a transaction, the event loop free between them, on
  either store and from any replica (a step deletes an index range; two replicas doing
  the same step delete it once).
- A cursor older than what a room keeps (Join's ``since``, History's ``after`` or
  ``before``) is never a silent skip: ``gap`` names the last message removed, which
  History adds to its answer (``"gap"``, after ``messages``) and Join sends as its first
  frame (``{"event": {"type": "gap", ...}}``).
"""

from __future__ import annotations

import time
from typing import Any

from chatctl.server.domain import Invalid, RoomRow
from chatctl.server.sql import PURGE_CHUNK, Session
from chatctl.server.store import Store
from chatctl.wire import duration_text, encode, gap_object, parse_duration, parse_time

__all__ = ["effective", "expire_step", "gap", "retain_answer", "retain_change"]


def effective(own: int | None, server: int | None) -> int | None:
    """Seconds a room keeps a message: the shorter of its own and the server's."""
    given = [s for s in (own, server) if s is not None]
    return min(given) if given else None


async def gap(db: Session, room: RoomRow, cursor: str) -> dict[str, Any] | None:
    """What a cursor (a UUID, lowercase, not a message of the room) older than what the
    room keeps meets: the gap object, or None. Ids sort in time (UUIDv7), so a cursor
    sorting before the last removed message is older than what is kept."""
    kept = await db.retention(room)
    if kept is None or not kept.expired_id or cursor >= kept.expired_id:
        return None
    return gap_object(room.id, kept.expired_id, kept.expired_at)


def _text(seconds: int | None) -> str:
    return "" if seconds is None else duration_text(seconds)


async def retain_change(db: Session, room: RoomRow, retain: str, server: int | None) -> str:
    """Set (``30d``), clear (``off``) or, with ``""``, only read the room's own
    retention; the Retain answer."""
    if retain:
        if retain.strip().lower() in ("off", "none", "forever"):
            await db.set_retention(room, None)
        else:
            try:
                seconds = parse_duration(retain)
            except ValueError as exc:
                raise Invalid(f"retain: {exc}; or off") from None
            await db.set_retention(room, seconds)
    return await retain_answer(db, room, server)


async def retain_answer(db: Session, room: RoomRow, server: int | None) -> str:
    kept = await db.retention(room)
    own = None if kept is None else kept.seconds
    answer: dict[str, Any] = {
        "room_id": room.id,
        "retain": _text(own),
        "server_retain": _text(server),
        "effective": _text(effective(own, server)),
        "expired_through": "" if kept is None else kept.expired_id,
        "expired_at": "" if kept is None else kept.expired_at,
    }
    return encode({"retention": answer})


async def expire_step(store: Store, server: int | None, now: float | None = None) -> int:
    """Remove every message due in every room, a chunk a transaction (a room with
    nothing due costs one read of its oldest message); how many transactions it took."""
    now = time.time() if now is None else now

    async def rooms(db: Session) -> list[tuple[int, int | None]]:
        return await db.rooms_retention(every_room=server is not None)

    steps = 0
    for pk, own in await store.read(rooms):
        keep = effective(own, server)
        if keep is None:
            continue
        before = now - keep

        async def oldest(db: Session, pk: int = pk) -> str | None:
            return await db.oldest_sent(pk)

        sent = await store.read(oldest)
        stamp = None if sent is None else parse_time(sent)
        if stamp is None or stamp >= before:
            continue

        async def step(db: Session, pk: int = pk, before: float = before) -> bool:
            return await db.expire(pk, before, PURGE_CHUNK)

        while True:
            more = await store.write(step)
            steps += 1
            if not more:
                break
    return steps
