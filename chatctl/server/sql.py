"""The SQL both stores share, written once: rooms, members, bars, messages, keys.

``Session`` is what the rules hold while they read or change the store (the ``work`` of
``Store.read``/``Store.write``). Its statements are the same text on SQLite and
PostgreSQL: standard SQL with ``?`` for each parameter, which the PostgreSQL session turns
into ``%s`` (``Dialect``), and upserts spelled ``ON CONFLICT``, which both understand. A
backend's session supplies three primitives (rows, one row, a change's row count) and
what genuinely differs: creating and deleting a room (how room keys are handed out and
how a big room's messages are purged), where a cursor that is no message falls
(``message_position``), and caches.

The schemas differ in types, never in names: ``rooms``, ``members`` (``position`` is the
order of joining, ``invited_by`` the user token's user who added the member), ``barred``,
``messages`` (``seq`` is a room's one order; ``deleted_at`` is set, and the text and
subject erased, when a message is deleted: ``DeleteMessage``), ``idempotency`` and
``daily_bytes`` (the message bytes each user token's user, or ``''`` for admin tokens,
stored in a tenant on a UTC day: ``quotas``).
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator
from typing import Any

from chatctl.server.domain import Key, MessageRow, Note, RoomRow, erased_message
from chatctl.wire import message_frame, uuid7_ms

__all__ = ["PURGE_CHUNK", "ROOM_COLUMNS", "Dialect", "Retention", "Session", "room_row"]

#: messages of a deleted room removed per step (a few milliseconds of the event loop).
PURGE_CHUNK = 2000

ROOM_COLUMNS = "pk, tenant, id, name, description, created_at, private, creator"
_ROOM_COLUMNS_OF_R = ", ".join("r." + c for c in ROOM_COLUMNS.split(", "))
MESSAGE_COLUMNS = "seq, id, client, user_id, sent_at, subject, text"

Args = tuple[Any, ...]


def room_row(row: tuple[Any, ...]) -> RoomRow:
    return RoomRow(row[0], row[1], row[2], row[3], row[4], row[5], bool(row[6]), row[7])


class Dialect:
    """How a backend spells a parameter: SQLite's ``?`` as written, or psycopg's ``%s``."""

    def __init__(self, placeholder: str) -> None:
        self.placeholder = placeholder
        self._cache: dict[str, str] = {}

    def __call__(self, sql: str) -> str:
        spelled = self._cache.get(sql)
        if spelled is None:
            spelled = self._cache[sql] = sql.replace("?", self.placeholder)
        return spelled


# -- the shared statements --------------------------------------------------------------

ROOM = f"SELECT {ROOM_COLUMNS} FROM rooms WHERE tenant = ? AND id = ?"
COUNT_ROOMS = "SELECT count(*) FROM rooms WHERE tenant = ?"
COUNT_ROOMS_CREATED = "SELECT count(*) FROM rooms WHERE tenant = ? AND creator = ?"
ROOMS = f"SELECT {ROOM_COLUMNS} FROM rooms WHERE tenant = ? ORDER BY pk"
ROOMS_MEMBERS = "SELECT room_pk, user_id FROM members WHERE tenant = ? ORDER BY position"
ROOMS_OF_USER = (
    f"SELECT {_ROOM_COLUMNS_OF_R} FROM members m JOIN rooms r ON r.pk = m.room_pk"
    " WHERE m.tenant = ? AND m.user_id = ? ORDER BY r.pk"
)
ROOMS_OF_USER_MEMBERS = (
    "SELECT m.room_pk, m.user_id FROM members m WHERE m.room_pk IN"
    " (SELECT room_pk FROM members WHERE tenant = ? AND user_id = ?) ORDER BY m.position"
)

MEMBERS = "SELECT user_id FROM members WHERE room_pk = ? ORDER BY position"
IS_MEMBER = "SELECT 1 FROM members WHERE room_pk = ? AND user_id = ?"
COUNT_MEMBERS = "SELECT count(*) FROM members WHERE room_pk = ?"
COUNT_INVITED_BY = "SELECT count(*) FROM members WHERE room_pk = ? AND invited_by = ?"
ADD_MEMBER = (
    "INSERT INTO members (tenant, room_pk, user_id, invited_by) VALUES (?, ?, ?, ?)"
    " ON CONFLICT DO NOTHING"
)
REMOVE_MEMBER = "DELETE FROM members WHERE room_pk = ? AND user_id = ?"
IS_BARRED = "SELECT 1 FROM barred WHERE room_pk = ? AND user_id = ?"
BAR = "INSERT INTO barred (room_pk, user_id) VALUES (?, ?) ON CONFLICT DO NOTHING"
UNBAR = "DELETE FROM barred WHERE room_pk = ? AND user_id = ?"
#: what a deleted room leaves besides its messages (purged in steps, per backend).
FORGET_ROOM = (
    "DELETE FROM members WHERE room_pk = ?",
    "DELETE FROM barred WHERE room_pk = ?",
    "DELETE FROM retention WHERE room_pk = ?",
)

#: a deleted room whose messages are all gone.
PURGED = "DELETE FROM purging WHERE room_pk = ?"

MESSAGE_SEQ = "SELECT seq FROM messages WHERE room_pk = ? AND id = ?"
LAST_SEQ = "SELECT coalesce(max(seq), 0) FROM messages WHERE room_pk = ?"
COUNT_AFTER = (
    "SELECT count(*) FROM (SELECT 1 FROM messages WHERE room_pk = ? AND seq > ? LIMIT ?) t"
)

#: How a key is claimed, in ``CLAIM_KEY`` and in PostgreSQL's Send statements: its row
#: inserted, or an expired one (created before the parameter that follows) taken over.
KEY_INSERT = "INSERT INTO idempotency (tenant, key, endpoint, request_hash, response, created_at)"
KEY_TAKEOVER = (
    "ON CONFLICT (tenant, key) DO UPDATE SET endpoint = excluded.endpoint,"
    " request_hash = excluded.request_hash, response = excluded.response,"
    " created_at = excluded.created_at"
    " WHERE idempotency.created_at <"
)
#: Claim a key for this call: a new row, or an expired one taken over. No row back when an
#: answer is still kept (then ``PRIOR`` reads it). On PostgreSQL the same key claimed by
#: another transaction at once waits here for it to end, so replicas take turns.
CLAIM_KEY = f"{KEY_INSERT} VALUES (?, ?, ?, ?, ?, ?) {KEY_TAKEOVER} ? RETURNING 1"
PRIOR = (
    "SELECT endpoint, request_hash, response FROM idempotency"
    " WHERE tenant = ? AND key = ? AND created_at >= ?"
)
KEEP_ANSWER = "UPDATE idempotency SET response = ? WHERE tenant = ? AND key = ?"
PURGE_KEYS = "DELETE FROM idempotency WHERE created_at < ?"

DAILY_BYTES = "SELECT user_id, bytes FROM daily_bytes WHERE tenant = ? AND day = ?"
ADD_DAILY_BYTES = (
    "INSERT INTO daily_bytes (tenant, day, user_id, bytes) VALUES (?, ?, ?, ?)"
    " ON CONFLICT (day, tenant, user_id) DO UPDATE SET bytes = daily_bytes.bytes + excluded.bytes"
)
PURGE_DAILY_BYTES = "DELETE FROM daily_bytes WHERE day < ?"


#: A message by id, deleted or not (``deleted_at``: when it was, else NULL).
MESSAGE_BY_ID = f"SELECT {MESSAGE_COLUMNS}, deleted_at FROM messages WHERE room_pk = ? AND id = ?"
#: A message deleted: its row stays (its id and seq are a position that cursors name),
#: its text and subject are erased. Only once: none is changed when it was already.
ERASE_MESSAGE = (
    "UPDATE messages SET subject = '', text = '', deleted_at = ?"
    " WHERE room_pk = ? AND seq = ? AND deleted_at IS NULL"
)
#: A Send's answer kept with its Idempotency-Key holds the message's text: the deleted
#: message's answer takes its place (a retry of that Send gets the message as it is now).
#: The key was made when the Send was, by the same clock as the message's id: only keys
#: made around then are looked at (``idempotency_by_age``), however many a tenant has.
ERASE_KEPT_SEND = (
    "UPDATE idempotency SET response = ? WHERE created_at >= ? AND created_at <= ?"
    " AND tenant = ? AND endpoint = 'Send' AND response = ?"
)
#: seconds before and after its message's id's time a Send's key may have been made: the
#: key before the store took its turn (a wait for the database or another process's lock,
#: bounded by ``--db-timeout``, a bulk Send's group), the id after; a margin for both.
KEY_BEFORE_MESSAGE = 120.0
KEY_AFTER_MESSAGE = 5.0

# -- import (issue 26) -------------------------------------------------------------------

LAST_SENT = "SELECT sent_at FROM messages WHERE room_pk = ? ORDER BY seq DESC LIMIT 1"

# -- retention (issue 26) ----------------------------------------------------------------

RETENTION = "SELECT seconds, expired_seq, expired_id, expired_at FROM retention WHERE room_pk = ?"
SET_RETENTION = (
    "INSERT INTO retention (room_pk, seconds) VALUES (?, ?)"
    " ON CONFLICT (room_pk) DO UPDATE SET seconds = excluded.seconds"
)
#: every room and its own retention (NULL: none of its own): a server with --retain.
ALL_ROOMS_RETENTION = (
    "SELECT r.pk, t.seconds FROM rooms r LEFT JOIN retention t ON t.room_pk = r.pk ORDER BY r.pk"
)
#: the rooms with a retention of their own: a server without --retain.
ROOMS_RETENTION = (
    "SELECT t.room_pk, t.seconds FROM retention t JOIN rooms r ON r.pk = t.room_pk"
    " WHERE t.seconds IS NOT NULL ORDER BY t.room_pk"
)
OLDEST = "SELECT seq, id, sent_at FROM messages WHERE room_pk = ? ORDER BY seq LIMIT ?"
EXPIRE = "DELETE FROM messages WHERE room_pk = ? AND seq <= ?"
EXPIRED = (
    "INSERT INTO retention (room_pk, expired_seq, expired_id, expired_at) VALUES (?, ?, ?, ?)"
    " ON CONFLICT (room_pk) DO UPDATE SET expired_seq = excluded.expired_seq,"
    " expired_id = excluded.expired_id, expired_at = excluded.expired_at"
)


@dataclasses.dataclass(frozen=True, slots=True)
class Retention:
    """A room's retention row: its own setting in seconds (None: the server's), and the
    last message retention removed (seq 0 and ``''``: none yet)."""

    seconds: int | None
    expired_seq: int
    expired_id: str
    expired_at: str


def claim_args(key: Key, answer: str = "") -> Args:
    return (key.tenant, key.key, key.endpoint, key.request_hash, answer, key.now, key.not_before)


def messages_sql(
    after_seq: int | None, before_seq: int | None, limit: int | None, latest: bool
) -> tuple[str, list[Any]]:
    """A room's messages strictly between the bounds, as (statement, its arguments after
    the room's pk). Every variant walks the ``(room_pk, seq)`` index from one end."""
    # A deleted message keeps its row (and seq): every read of messages leaves it out.
    where = "room_pk = ? AND deleted_at IS NULL"
    args: list[Any] = []
    if after_seq is not None:
        where += " AND seq > ?"
        args.append(after_seq)
    if before_seq is not None:
        where += " AND seq < ?"
        args.append(before_seq)
    order = "DESC" if latest else "ASC"
    sql = f"SELECT {MESSAGE_COLUMNS} FROM messages WHERE {where} ORDER BY seq {order}"
    if limit is not None:
        sql += " LIMIT ?"
        args.append(limit)
    return sql, args


class Session:
    """The store as the rules see it for one ``read`` or ``write``.

    Subclasses give ``_rows``, ``_row`` and ``_change`` (each runs one statement, written
    with ``?``), ``_insert_room``, ``delete_room`` and ``message_position``, and deliver
    what ``publish`` collected once the write commits.
    """

    def __init__(self) -> None:
        #: what the current write tells the live streams, once it commits.
        self.notes: list[Note] = []
        #: statements running now (``statement``): a write's work may wait only on these
        #: (``store.session_only``).
        self._running = 0

    @property
    def in_statement(self) -> bool:
        return self._running > 0

    @contextlib.contextmanager
    def statement(self) -> Iterator[None]:
        """Around each wait on the database: what a write's work may wait on."""
        self._running += 1
        try:
            yield
        finally:
            self._running -= 1

    async def _rows(self, sql: str, args: Args) -> list[tuple[Any, ...]]:
        raise NotImplementedError

    async def _row(self, sql: str, args: Args) -> tuple[Any, ...] | None:
        raise NotImplementedError

    async def _change(self, sql: str, args: Args) -> int:
        """Run a statement that changes rows; how many it changed."""
        raise NotImplementedError

    async def _count(self, sql: str, args: Args) -> int:
        row = await self._row(sql, args)
        assert row is not None
        return int(row[0])

    def publish(self, note: Note) -> None:
        """Tell the live streams, if and when this write commits."""
        self.notes.append(note)

    # -- rooms --------------------------------------------------------------------------

    async def get_room(self, tenant: str, room_id: str) -> RoomRow | None:
        row = await self._row(ROOM, (tenant, room_id))
        return room_row(row) if row else None

    async def create_room(
        self,
        tenant: str,
        room_id: str,
        name: str,
        description: str,
        created_at: str,
        private: bool,
        user_ids: list[str],
        creator: str | None = None,
    ) -> RoomRow:
        """A new room, with ``user_ids`` as its members in that order, made by ``creator``
        (a user token's user; None for an admin token)."""
        room = RoomRow(0, tenant, room_id, name, description, created_at, private, creator)
        room = dataclasses.replace(room, pk=await self._insert_room(room))
        for user_id in user_ids:
            await self.add_member(room, user_id, creator)
        return room

    async def _insert_room(self, room: RoomRow) -> int:
        """Insert the room row (its ``pk`` aside); the pk it was given."""
        raise NotImplementedError

    async def delete_room(self, room: RoomRow) -> None:
        """Remove the room and its members now; its messages now or in steps after."""
        raise NotImplementedError

    async def _forget_room(self, room: RoomRow) -> None:
        for sql in FORGET_ROOM:
            await self._change(sql, (room.pk,))

    async def count_rooms(self, tenant: str) -> int:
        return await self._count(COUNT_ROOMS, (tenant,))

    async def count_rooms_created(self, tenant: str, creator: str) -> int:
        """The rooms of the tenant ``creator``'s user tokens made (and not deleted)."""
        return await self._count(COUNT_ROOMS_CREATED, (tenant, creator))

    async def list_rooms(
        self, tenant: str, user_id: str | None = None
    ) -> list[tuple[RoomRow, list[str]]]:
        """Rooms in creation order, each with its members; only ``user_id``'s when given."""
        if user_id is None:
            rows = await self._rows(ROOMS, (tenant,))
            member_rows = await self._rows(ROOMS_MEMBERS, (tenant,))
        else:
            rows = await self._rows(ROOMS_OF_USER, (tenant, user_id))
            member_rows = await self._rows(ROOMS_OF_USER_MEMBERS, (tenant, user_id))
        by_room: dict[int, list[str]] = {}
        for room_pk, member in member_rows:
            by_room.setdefault(room_pk, []).append(member)
        return [(room_row(row), by_room.get(row[0], [])) for row in rows]

    # -- members ------------------------------------------------------------------------

    async def members(self, room: RoomRow) -> list[str]:
        return [row[0] for row in await self._rows(MEMBERS, (room.pk,))]

    async def is_member(self, room: RoomRow, user_id: str) -> bool:
        return await self._row(IS_MEMBER, (room.pk, user_id)) is not None

    async def count_members(self, room: RoomRow) -> int:
        return await self._count(COUNT_MEMBERS, (room.pk,))

    async def count_invited_by(self, room: RoomRow, inviter: str) -> int:
        """The room's members ``inviter`` (a user token's user) added."""
        return await self._count(COUNT_INVITED_BY, (room.pk, inviter))

    async def add_member(self, room: RoomRow, user_id: str, invited_by: str | None = None) -> bool:
        """Add at the end of the member list, added by ``invited_by`` (a user token's user;
        None: an admin token, or the user joined a public room); False when already a
        member."""
        return await self._change(ADD_MEMBER, (room.tenant, room.pk, user_id, invited_by)) > 0

    async def remove_member(self, room: RoomRow, user_id: str) -> bool:
        return await self._change(REMOVE_MEMBER, (room.pk, user_id)) > 0

    async def is_barred(self, room: RoomRow, user_id: str) -> bool:
        return await self._row(IS_BARRED, (room.pk, user_id)) is not None

    async def set_barred(self, room: RoomRow, user_id: str, barred: bool) -> None:
        await self._change(BAR if barred else UNBAR, (room.pk, user_id))

    # -- messages -----------------------------------------------------------------------

    async def message_seq(self, room: RoomRow, message_id: str) -> int | None:
        row = await self._row(MESSAGE_SEQ, (room.pk, message_id))
        return int(row[0]) if row else None

    async def message_position(self, room: RoomRow, cursor: str) -> int:
        """Where a UUID that is no message of the room falls: the seq after which the
        messages made after it begin."""
        raise NotImplementedError

    async def last_seq(self, room: RoomRow) -> int:
        return await self._count(LAST_SEQ, (room.pk,))

    async def messages(
        self,
        room: RoomRow,
        *,
        after_seq: int | None = None,
        before_seq: int | None = None,
        limit: int | None = None,
        latest: bool = False,
    ) -> list[MessageRow]:
        """Messages strictly between the bounds, oldest first. With ``limit``: the first
        ``limit`` of them, or the last ``limit`` when ``latest``."""
        sql, args = messages_sql(after_seq, before_seq, limit, latest)
        rows = [MessageRow(*row) for row in await self._rows(sql, (room.pk, *args))]
        if latest:
            rows.reverse()
        return rows

    async def find_message(self, room: RoomRow, message_id: str) -> tuple[MessageRow, bool] | None:
        """The message of the room with this id, and whether it was deleted; None if none."""
        row = await self._row(MESSAGE_BY_ID, (room.pk, message_id))
        return None if row is None else (MessageRow(*row[:-1]), row[-1] is not None)

    async def erase_message(self, room: RoomRow, message: MessageRow, at: str) -> bool:
        """Delete ``message`` (``ERASE_MESSAGE``) at time ``at``, and put its erased answer
        in place of its Send's kept one; False (nothing changed) if it was already."""
        if not await self._change(ERASE_MESSAGE, (at, room.pk, message.seq)):
            return False
        sent = message_frame(message.to_wire(room.id))
        erased = message_frame(erased_message(message).to_wire(room.id))
        made = uuid7_ms(message.id) / 1000
        around = (made - KEY_BEFORE_MESSAGE, made + KEY_AFTER_MESSAGE)
        await self._change(ERASE_KEPT_SEND, (erased, *around, room.tenant, sent))
        return True

    async def count_messages_after(self, room: RoomRow, after_seq: int, cap: int) -> int:
        """How many messages follow ``after_seq``, counting no further than ``cap``."""
        return await self._count(COUNT_AFTER, (room.pk, after_seq, cap))

    # -- idempotency keys ---------------------------------------------------------------

    async def claim_key(self, key: Key) -> str | None:
        """Claim ``key`` for this write: None when it is ours now (``keep_answer`` once the
        change is made), else the answer kept for it (Conflict for another request)."""
        if await self._row(CLAIM_KEY, claim_args(key)) is not None:
            return None
        prior = await self._row(PRIOR, (key.tenant, key.key, key.not_before))
        assert prior is not None, "a key neither claimed nor kept"
        return key.replay(prior[0], prior[1], prior[2])

    async def kept_answer(self, key: Key) -> str | None:
        """The answer kept for ``key``, if any (Conflict for another request); claims
        nothing."""
        prior = await self._row(PRIOR, (key.tenant, key.key, key.not_before))
        return None if prior is None else key.replay(prior[0], prior[1], prior[2])

    async def keep_answer(self, key: Key, answer: str) -> None:
        await self._change(KEEP_ANSWER, (answer, key.tenant, key.key))

    async def purge_keys(self, older_than: float) -> int:
        """Forget keys whose answers are no longer kept (they are ignored on read)."""
        return await self._change(PURGE_KEYS, (older_than,))

    # -- daily bytes (``quotas``) -------------------------------------------------------

    async def daily_bytes(self, tenant: str, day: str) -> dict[str, int]:
        """The message bytes each payer (a user, ``''`` for admin tokens) stored on ``day``."""
        return {row[0]: int(row[1]) for row in await self._rows(DAILY_BYTES, (tenant, day))}

    async def add_daily_bytes(self, tenant: str, day: str, payer: str, count: int) -> None:
        await self._change(ADD_DAILY_BYTES, (tenant, day, payer, count))

    async def purge_daily_bytes(self, before_day: str) -> int:
        """Forget the days before ``before_day`` (``YYYY-MM-DD``)."""
        return await self._change(PURGE_DAILY_BYTES, (before_day,))

    # -- retention (issue 26) -------------------------------------------------------------

    async def retention(self, room: RoomRow) -> Retention | None:
        row = await self._row(RETENTION, (room.pk,))
        if row is None:
            return None
        seconds = None if row[0] is None else int(row[0])
        return Retention(seconds, int(row[1]), str(row[2]), str(row[3]))

    async def set_retention(self, room: RoomRow, seconds: int | None) -> None:
        await self._change(SET_RETENTION, (room.pk, seconds))

    async def rooms_retention(self, every_room: bool) -> list[tuple[int, int | None]]:
        """(room pk, its own retention or None): every room's, or (``every_room`` False)
        only those rooms' that have one of their own."""
        rows = await self._rows(ALL_ROOMS_RETENTION if every_room else ROOMS_RETENTION, ())
        return [(int(pk), None if seconds is None else int(seconds)) for pk, seconds in rows]

    async def oldest_sent(self, room_pk: int) -> str | None:
        """When the room's oldest message was sent; None for an empty room."""
        rows = await self._rows(OLDEST, (room_pk, 1))
        return str(rows[0][2]) if rows else None

    async def expire(self, room_pk: int, before: float, chunk: int) -> bool:
        """Remove the room's messages sent before ``before`` (seconds since 1970), at most
        ``chunk`` of them, oldest first, and remember the last one removed; True when a
        whole chunk went (more may be due). A room's times rise with its seqs, so what is
        due is a prefix: the walk stops at the first message that is not (or whose time
        cannot be read)."""
        from chatctl.wire import parse_time

        last: tuple[Any, ...] | None = None
        rows = await self._rows(OLDEST, (room_pk, chunk))
        for row in rows:
            sent = parse_time(str(row[2]))
            if sent is None or sent >= before:
                break
            last = row
        if last is None:
            return False
        await self._change(EXPIRE, (room_pk, last[0]))
        await self._change(EXPIRED, (room_pk, last[0], last[1], last[2]))
        return last is rows[-1] and len(rows) == chunk

    # -- import (issue 26: ``importer``) ------------------------------------------------

    async def last_sent(self, room: RoomRow) -> str | None:
        """When the room's last message (by seq) was sent; None for an empty room."""
        row = await self._row(LAST_SENT, (room.pk,))
        return None if row is None else str(row[0])

    async def insert_imported(self, room: RoomRow, message: MessageRow) -> int:
        """Store ``message`` (its seq aside) after the room's last; its seq."""
        raise NotImplementedError
