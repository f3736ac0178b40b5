"""The PostgreSQL store: the same ``store.Store`` as SQLite, shared by many replicas.

``chatctl serve --db postgresql://…`` uses it. Imported only then: psycopg is an optional
extra (``pip install 'chatctl[postgres]'``), and neither SQLite users nor the CLI's start-up
import it.

Every operation awaits the database on psycopg's async pool, so a replica's event loop
serves other requests and streams while it waits, however far away the database is. Each
is bounded in time (``--db-timeout``): ``statement_timeout`` and ``lock_timeout`` make
PostgreSQL give up on its side, and the replica stops waiting a second later in any case
(a database that stopped answering, or a network that dropped it), answers 503 and lets
the abandoned call clean up behind it (psycopg cancels the query, or the pool discards the
connection). A connection the database dropped is replaced by the pool on the next call.

What changes when several server processes share one database:

- **One order per room.** A room row carries ``last_seq``; a Send bumps it and inserts the
  message with the new value in one statement. The row lock taken by that UPDATE
  serialises the writers of a room (other rooms are not held up), so seqs are gapless per
  room and commit in seq order.
- **A Send is one round trip**, keyed or not (``_SEND``): the Idempotency-Key (claimed, or
  its first answer found), the room, the membership, the seq, the message and its
  notification, in one statement. Only two replicas racing on one key need a second: the
  loser's statement cannot see the winner's row, commits nothing, and is run again.
- **Fan-out.** The statement that stores a message also calls ``pg_notify`` with the room,
  the seq and the frame (or no frame when the payload would pass PostgreSQL's 8000-byte
  limit), in ``hub_pg.message_notify``'s format; other changes notify with one statement
  at the end of their transaction, each on its room's channel (``hub_pg.channel``; in
  mode ``both`` on the shared one too, for an older release's replicas). A notification
  is sent at commit, in commit order, and never for a change that rolls back;
  ``hub_pg.Listener`` hears them on every replica with a stream of the room.
- **An id is a position, conservatively.** Ids are UUIDv7 made by each replica's clock, so
  ids from two replicas may not sort in seq order. A UUID that is no message of the room
  sits just before the first message, in the room's order, whose id sorts after it: a
  ``since`` built from a time never skips a message made after that time (it may repeat a
  few made around it on another replica), and ``before``/``after`` still split the room
  into two parts with nothing in both.
- **Idempotency keys across replicas.** Claiming a key inserts its row (``sql.CLAIM_KEY``);
  the same key claimed on another replica at once waits on that row for the first attempt
  to commit, then finds its answer.
- **Deleted rooms** are purged in steps of seq ranges by whichever replica gets to them.

Schema versions (``migrations``: expand, then contract): the table ``chatctl_schema``
holds how many entries of ``MIGRATIONS`` are applied, and the floor older releases read.
A replica sets up an empty database at start (under an advisory lock, so replicas
starting together do it once) but never migrates an older one by surprise: ``chatctl
serve migrate`` does (``migrate``), while the previous release's replicas keep serving.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Sequence
from typing import Any, TypeVar

import psycopg
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from chatctl import __version__
from chatctl.errors import ChatctlError
from chatctl.server import sql
from chatctl.server.domain import (
    Fanout,
    Key,
    MessageRow,
    NewMessage,
    Refused,
    RoomRow,
    Unavailable,
)
from chatctl.server.hub_pg import (
    NOTIFY_MODES,
    Listener,
    message_notify,
    note_frame,
    notifications,
)
from chatctl.server.migrations import (
    Policy,
    SchemaState,
    floor,
    judge,
    too_old,
)
from chatctl.server.store import SendResult, session_only
from chatctl.wire import UUIDv7, message_frame, rfc3339

__all__ = ["MIGRATIONS", "PostgresSession", "PostgresStore"]

T = TypeVar("T")
log = logging.getLogger("chatctl.server")

#: connections of a replica's pool. A room's Sends take turns on its row lock and every
#: notifying commit on PostgreSQL's one notification-queue lock, but neither is held
#: across a network round trip (a Send is one statement), so more connections hide the
#: distance to the database rather than queue inside it.
POOL_SIZE = 8
#: seconds the replica waits past the database's own timeouts before giving up on it.
_GRACE = 1.0
#: advisory lock key held while migrating ("chatctl" in ASCII).
_MIGRATION_LOCK = 0x63686174_63746C
#: seconds a call waits for an idle connection while the database refuses new ones.
_DOWN_WAIT = 0.05
#: seconds between looks for rooms another replica deleted and did not finish purging.
_PURGE_LOOK = 30.0
#: notifications a statement issues at most (a SELECT has at most 1,664 columns).
_NOTIFY_BATCH = 1000

#: Each entry brings a database from version i to i + 1. Never edit a released entry: append.
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE rooms (
        pk          bigserial PRIMARY KEY,
        tenant      text NOT NULL,
        id          text NOT NULL,
        name        text NOT NULL,
        description text NOT NULL,
        created_at  text NOT NULL,
        private     boolean NOT NULL,
        -- the seq of the room's latest message; a Send bumps it under the row lock.
        last_seq    bigint NOT NULL DEFAULT 0,
        UNIQUE (tenant, id)
    );
    CREATE TABLE members (
        position bigserial PRIMARY KEY,
        tenant   text NOT NULL,
        room_pk  bigint NOT NULL,
        user_id  text NOT NULL,
        UNIQUE (room_pk, user_id)
    );
    CREATE INDEX members_by_user ON members (tenant, user_id, room_pk);
    CREATE TABLE barred (
        room_pk bigint NOT NULL,
        user_id text NOT NULL,
        PRIMARY KEY (room_pk, user_id)
    );
    -- seq counts per room (rooms.last_seq); ids compare bytewise, as UUIDv7 order needs.
    CREATE TABLE messages (
        room_pk bigint NOT NULL,
        seq     bigint NOT NULL,
        id      text COLLATE "C" NOT NULL,
        client  text NOT NULL,
        user_id text NOT NULL,
        sent_at text NOT NULL,
        subject text NOT NULL,
        text    text NOT NULL,
        PRIMARY KEY (room_pk, seq)
    );
    CREATE INDEX messages_by_id ON messages (room_pk, id) INCLUDE (seq);
    CREATE TABLE idempotency (
        tenant       text NOT NULL,
        key          text NOT NULL,
        endpoint     text NOT NULL,
        request_hash text NOT NULL,
        response     text NOT NULL,
        created_at   double precision NOT NULL,
        PRIMARY KEY (tenant, key)
    );
    CREATE INDEX idempotency_by_age ON idempotency (created_at);
    """,
    # v2: a deleted room's messages are removed in steps after it (``purge_step``), by
    # whichever replica gets to them first: seqs above done_seq, up to last_seq.
    """
    CREATE TABLE purging (
        room_pk  bigint PRIMARY KEY,
        done_seq bigint NOT NULL,
        last_seq bigint NOT NULL
    );
    """,
    # v3: the user whose user token created the room (issue 13: the creator may kick and
    # delete). Rooms made before have none, as rooms an admin token makes: only admin
    # tokens may kick from or delete them.
    """
    ALTER TABLE rooms ADD COLUMN creator text;
    """,
    # v4: quotas per user inside a tenant (issue 23): who added each member (a member may
    # add only so many to a room), the rooms each user made, and the message bytes each
    # user (or the tenant's admin tokens, as '') stored on a UTC day.
    """
    ALTER TABLE members ADD COLUMN invited_by text;
    CREATE INDEX members_by_inviter ON members (room_pk, invited_by);
    CREATE INDEX rooms_by_creator ON rooms (tenant, creator);
    CREATE TABLE daily_bytes (
        tenant  text NOT NULL,
        day     text NOT NULL,
        user_id text NOT NULL,
        bytes   bigint NOT NULL,
        PRIMARY KEY (day, tenant, user_id)
    );
    """,
    # v5: messages can be deleted (issue 25, DeleteMessage): the row stays, as the
    # position its id and seq are for cursors, with its text and subject erased; deleted_at
    # is when (NULL: not deleted), and every read of messages leaves such a row out.
    """
    ALTER TABLE messages ADD COLUMN deleted_at text;
    """,
    # retention (issue 26): a room's own retention in seconds (NULL: the server's), and
    # the last message retention removed from it (what a cursor older than it meets).
    """
    CREATE TABLE retention (
        room_pk     bigint PRIMARY KEY,
        seconds     bigint,
        expired_seq bigint NOT NULL DEFAULT 0,
        expired_id  text COLLATE "C" NOT NULL DEFAULT '',
        expired_at  text NOT NULL DEFAULT ''
    );
    """,
    # v7: which release applied each migration from here on, and when (``migrate`` fills
    # it): what ``serve`` names when a newer release's schema is refused.
    """
    CREATE TABLE chatctl_migrations (
        number     integer PRIMARY KEY,
        release    text NOT NULL,
        applied_at timestamptz NOT NULL DEFAULT now()
    );
    """,
    # v8: settings the replicas share. ``notify``: where a replica started with ``--notify
    # auto`` (the default) tells the others of changes (``recorded_notify``): ``both``
    # once ``migrate`` upgraded a database a release before 0.2.0 made (its replicas may
    # still be serving), ``rooms`` when none is recorded; ``serve migrate --notify``
    # records the switch.
    """
    CREATE TABLE chatctl_settings (
        name  text PRIMARY KEY,
        value text NOT NULL
    );
    """,
)

# -- the Send statement -------------------------------------------------------------------

#: The notification of a message a Send statement stored (its format is hub_pg's).
_NOTIFY_STORED = message_notify(
    "stored.seq", "%(tenant)s::text", "%(room_id)s::text", "stored.room_pk",
    "%(user_id)s::text", "%(note)s",
)  # fmt: skip
_NOTIFY_MANY = message_notify(
    "x.seq", "%(tenant)s::text", "x.room_id", "x.room_pk", "x.user_id", "x.note"
)


def _send_statement(keyed: bool) -> str:
    """A whole Send as one statement; keyed, with its Idempotency-Key.

    It finds the room and whether the sender is a member; bumps the room's seq (taking its
    row lock) when allowed, stores the message under it, and queues its notification,
    which PostgreSQL sends when the statement's transaction commits. One row: the room is
    private (NULL: no room), the sender is a member, the seq (NULL: nothing stored) and,
    keyed, the answer kept for the key.

    Keyed, it claims the key (as ``sql.CLAIM_KEY`` would) only for a member, so a refusal
    keeps nothing; stores only once claimed; and reads the answer kept for the key, if one
    was (then nothing is claimed, and nothing stored).
    """
    checks = """
WITH room AS (
    SELECT pk, private FROM rooms WHERE tenant = %(tenant)s AND id = %(room_id)s
), member AS (
    SELECT FROM members, room WHERE room_pk = room.pk AND user_id = %(user_id)s
)"""
    key = f"""
, claimed AS (
    {sql.KEY_INSERT}
    SELECT %(tenant)s, %(key)s, %(endpoint)s, %(request_hash)s, %(answer)s, %(now)s
    WHERE EXISTS (SELECT FROM member)
    {sql.KEY_TAKEOVER} %(not_before)s
    RETURNING 1
), prior AS (
    SELECT endpoint, request_hash, response FROM idempotency
    WHERE tenant = %(tenant)s AND key = %(key)s AND created_at >= %(not_before)s
)"""
    allowed = "EXISTS (SELECT FROM claimed)" if keyed else "EXISTS (SELECT FROM member)"
    store = f"""
, bumped AS (
    UPDATE rooms SET last_seq = last_seq + 1
    WHERE pk = (SELECT pk FROM room) AND {allowed}
    RETURNING pk, last_seq
), stored AS (
    INSERT INTO messages (room_pk, seq, id, client, user_id, sent_at, subject, text)
    SELECT pk, last_seq, %(id)s, %(client)s, %(user_id)s, %(sent_at)s, %(subject)s, %(text)s
    FROM bumped
    RETURNING room_pk, seq
)
SELECT (SELECT private FROM room), EXISTS (SELECT FROM member), stored.seq,
    CASE WHEN stored.seq IS NOT NULL THEN {_NOTIFY_STORED} END"""
    if not keyed:
        return checks + store + "\nFROM (SELECT) AS one LEFT JOIN stored ON true\n"
    return (
        checks
        + key
        + store
        + ", prior.endpoint, prior.request_hash, prior.response"
        + "\nFROM (SELECT) AS one LEFT JOIN stored ON true LEFT JOIN prior ON true\n"
    )


_SEND = _send_statement(keyed=False)
_SEND_KEYED = _send_statement(keyed=True)


#: What ``send_many`` makes of each message before its turn: the message, its answer (and
#: frame), its key.
_Made = tuple[dict[str, Any], str, Key | None]

#: Several Sends in one statement, each as ``_SEND_KEYED`` would do it, in order (``ord``):
#: the rooms and memberships looked up, the keys with an answer found (replayed, or a
#: conflict) or claimed for members, each room's seq bumped once by its count of messages
#: to store, which are numbered in order from the old value, stored, and notified in order.
#: With ``stop``, nothing from the first refusal on (a non-member, no room, a key used with
#: another request) claims or stores. One row per message, in order, as ``_SEND_KEYED``'s.
#: No key may appear twice (``_runs``).
_SEND_MANY = f"""
WITH input AS (
    SELECT * FROM unnest(
        %(room_id)s::text[], %(user_id)s::text[], %(id)s::text[], %(client)s::text[],
        %(sent_at)s::text[], %(subject)s::text[], %(text)s::text[], %(note)s::text[],
        %(key)s::text[], %(request_hash)s::text[], %(answer)s::text[],
        %(created)s::float8[], %(not_before)s::float8[]
    ) WITH ORDINALITY AS t(room_id, user_id, id, client, sent_at, subject, text, note,
        key, request_hash, answer, created, not_before, ord)
), checked AS (
    SELECT i.*, r.pk AS room_pk, r.private,
        EXISTS (SELECT FROM members m WHERE m.room_pk = r.pk AND m.user_id = i.user_id)
            AS member,
        p.endpoint AS prior_endpoint, p.request_hash AS prior_hash, p.response AS prior
    FROM input i
    LEFT JOIN rooms r ON r.tenant = %(tenant)s AND r.id = i.room_id
    LEFT JOIN idempotency p ON p.tenant = %(tenant)s AND p.key = i.key
        AND p.created_at >= i.not_before
), cut AS (
    SELECT coalesce(min(ord), 9223372036854775807) AS ord FROM checked
    WHERE %(stop)s AND CASE WHEN prior_endpoint IS NOT NULL
        THEN prior_endpoint <> 'Send' OR prior_hash <> request_hash ELSE NOT member END
), claimed AS (
    {sql.KEY_INSERT}
    SELECT %(tenant)s, key, 'Send', request_hash, answer, created FROM checked
    WHERE key IS NOT NULL AND prior_endpoint IS NULL AND member
        AND ord < (SELECT ord FROM cut)
    {sql.KEY_TAKEOVER} %(oldest)s
    RETURNING key
), allowed AS (
    SELECT ord, room_pk, row_number() OVER (PARTITION BY room_pk ORDER BY ord) AS n,
        count(*) OVER (PARTITION BY room_pk) AS k
    FROM checked
    WHERE member AND ord < (SELECT ord FROM cut) AND prior_endpoint IS NULL
        AND (key IS NULL OR key IN (SELECT key FROM claimed))
), bumped AS (
    UPDATE rooms SET last_seq = last_seq + a.k
    FROM (SELECT DISTINCT room_pk, k FROM allowed) a
    WHERE rooms.pk = a.room_pk
    RETURNING rooms.pk, rooms.last_seq
), stored AS (
    INSERT INTO messages (room_pk, seq, id, client, user_id, sent_at, subject, text)
    SELECT a.room_pk, b.last_seq - a.k + a.n, c.id, c.client, c.user_id, c.sent_at,
        c.subject, c.text
    FROM allowed a JOIN bumped b ON b.pk = a.room_pk JOIN checked c ON c.ord = a.ord
    RETURNING id, seq
)
SELECT x.private, x.member, x.seq,
    CASE WHEN x.seq IS NOT NULL THEN {_NOTIFY_MANY} END,
    x.prior_endpoint, x.prior_hash, x.prior
FROM (
    -- In order, and notified in that order: the sort happens before the outer SELECT.
    SELECT c.ord, c.private, c.member, s.seq, c.room_id, c.room_pk, c.user_id, c.note,
        c.prior_endpoint, c.prior_hash, c.prior
    FROM checked c LEFT JOIN stored s ON s.id = c.id
    ORDER BY c.ord OFFSET 0
) x
"""


def _runs(made: list[_Made]) -> list[list[_Made]]:
    """``made`` cut into runs in which no key appears twice (one statement each: a
    statement may claim a key once)."""
    runs: list[list[_Made]] = [[]]
    keys: set[str] = set()
    for item in made:
        key = item[2]
        if key is not None:
            if key.key in keys:
                runs.append([])
                keys.clear()
            keys.add(key.key)
        runs[-1].append(item)
    return runs


def _send_many_params(tenant: str, run: list[_Made], stop: bool, shared: bool) -> dict[str, Any]:
    columns: dict[str, list[Any]] = {
        name: []
        for name in (
            "room_id", "user_id", "id", "client", "sent_at", "subject", "text", "note",
            "key", "request_hash", "answer", "created", "not_before",
        )
    }  # fmt: skip
    oldest = 0.0
    for message, answer, key in run:
        for name in ("room_id", "user_id", "id", "client", "sent_at", "subject", "text"):
            columns[name].append(message[name])
        columns["note"].append(note_frame(tenant, message, answer))
        columns["answer"].append(answer)
        columns["key"].append(None if key is None else key.key)
        columns["request_hash"].append(None if key is None else key.request_hash)
        columns["created"].append(None if key is None else key.now)
        columns["not_before"].append(None if key is None else key.not_before)
        if key is not None:
            oldest = max(oldest, key.not_before)
    return {"tenant": tenant, "stop": stop, "oldest": oldest, "shared": shared, **columns}


_INSERT_ROOM = (
    "INSERT INTO rooms (tenant, id, name, description, created_at, private, creator)"
    " VALUES (?, ?, ?, ?, ?, ?, ?) RETURNING pk"
)
# The room row first: a Send racing the delete waits on its lock, then finds no room.
_DELETE_ROOM = "DELETE FROM rooms WHERE pk = ? RETURNING last_seq"
_TO_PURGE = "INSERT INTO purging VALUES (?, ?, ?) ON CONFLICT DO NOTHING"
_DELETE_SEQS = "DELETE FROM messages WHERE room_pk = ? AND seq > ? AND seq <= ?"
_NEXT_TO_PURGE = "SELECT room_pk, done_seq, last_seq FROM purging LIMIT 1 FOR UPDATE SKIP LOCKED"
_PURGED_TO = "UPDATE purging SET done_seq = ? WHERE room_pk = ?"
_ANY_AT_OR_BEFORE = "SELECT 1 FROM messages WHERE room_pk = ? AND id <= ? LIMIT 1"
_FIRST_AFTER = "SELECT min(seq) FROM messages WHERE room_pk = ? AND id > ?"
#: an imported message (``importer``): the room's next seq, under its row lock as a Send's.
_NEXT_SEQ = "UPDATE rooms SET last_seq = last_seq + 1 WHERE pk = ? RETURNING last_seq"
_INSERT_IMPORTED = (
    "INSERT INTO messages (room_pk, seq, id, client, user_id, sent_at, subject, text)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
)


def _statement(key: Key | None) -> str:
    return _SEND if key is None else _SEND_KEYED


def _send_params(
    tenant: str, message: dict[str, Any], answer: str, key: Key | None, shared: bool
) -> dict[str, Any]:
    params: dict[str, Any] = {
        "tenant": tenant,
        "shared": shared,
        "room_id": message["room_id"],
        "id": message["id"],
        "client": message["client"],
        "user_id": message["user_id"],
        "sent_at": message["sent_at"],
        "subject": message["subject"],
        "text": message["text"],
        "note": note_frame(tenant, message, answer),
    }
    if key is not None:
        params.update(
            key=key.key,
            endpoint=key.endpoint,
            request_hash=key.request_hash,
            answer=answer,
            now=key.now,
            not_before=key.not_before,
        )
    return params


async def _one_send(
    conn: psycopg.AsyncConnection[tuple[Any, ...]],
    tenant: str,
    message: dict[str, Any],
    answer: str,
    key: Key | None,
    shared: bool,
) -> tuple[Any, ...]:
    params = _send_params(tenant, message, answer, key, shared)
    cursor = await conn.execute(_statement(key), params)
    row = await cursor.fetchone()
    assert row is not None
    return row


def _sent(
    row: tuple[Any, ...], answer: str, key: Key | None, *, refusals: bool = False
) -> SendResult | None:
    """What a Send statement's row says; None when it must run again: a member whose key
    another replica claimed after the statement began (nothing was stored; run again, it
    sees that replica's answer). A key used with another request raises Conflict, or with
    ``refusals`` is a result carrying it."""
    private, member, seq = row[0], row[1], row[2]
    if key is not None and row[4] is not None:
        try:
            return SendResult(key.replay(row[4], row[5], row[6]), replayed=True)
        except Refused as refusal:
            if not refusals:
                raise
            return SendResult(None, refusal=refusal)
    if seq is not None:
        return SendResult(answer)
    if private is None:
        return SendResult(None, room_found=False)
    if not member:
        return SendResult(None, private=bool(private))
    return None


class PostgresSession(sql.Session):
    """The shared SQL on one pooled connection (in a transaction when writing)."""

    _dialect = sql.Dialect("%s")

    def __init__(
        self, conn: psycopg.AsyncConnection[tuple[Any, ...]], store: PostgresStore
    ) -> None:
        super().__init__()
        self._conn = conn
        self._store = store

    async def _rows(self, sql: str, args: sql.Args) -> list[tuple[Any, ...]]:
        with self.statement():
            cursor = await self._conn.execute(self._dialect(sql), args)
            return await cursor.fetchall()

    async def _row(self, sql: str, args: sql.Args) -> tuple[Any, ...] | None:
        with self.statement():
            cursor = await self._conn.execute(self._dialect(sql), args)
            return await cursor.fetchone()

    async def _change(self, sql: str, args: sql.Args) -> int:
        with self.statement():
            return (await self._conn.execute(self._dialect(sql), args)).rowcount

    async def notify(self) -> None:
        """Queue what was published, sent by PostgreSQL when the transaction commits."""
        pairs = notifications(self.notes, self._store.notify)
        # A Create of many members (one note each) notifies in several statements, in order.
        for start in range(0, len(pairs), _NOTIFY_BATCH):
            batch = pairs[start : start + _NOTIFY_BATCH]
            calls = ", ".join(["pg_notify(%s, %s)"] * len(batch))
            with self.statement():
                await self._conn.execute(f"SELECT {calls}", [v for pair in batch for v in pair])

    async def _insert_room(self, room: RoomRow) -> int:
        values = (room.tenant, room.id, room.name, room.description, room.created_at)
        row = await self._row(_INSERT_ROOM, (*values, room.private, room.creator))
        assert row is not None
        return int(row[0])

    async def delete_room(self, room: RoomRow) -> None:
        row = await self._row(_DELETE_ROOM, (room.pk,))
        await self._forget_room(room)
        if row is None:
            return
        # A small room's messages go now; a big room's first chunk, the rest in steps
        # (``purge_step``). pks are never reused (bigserial), so nothing can reach them.
        # Seqs are 1..last_seq, so each step is an index range, never a scan past the rows
        # the steps before deleted.
        last_seq = int(row[0])
        chunk = sql.PURGE_CHUNK
        await self.delete_messages(room.pk, 0, chunk)
        if last_seq > chunk:
            await self._change(_TO_PURGE, (room.pk, chunk, last_seq))
            self._store.purge_soon()

    async def delete_messages(self, room_pk: int, after_seq: int, count: int) -> None:
        await self._change(_DELETE_SEQS, (room_pk, after_seq, after_seq + count))

    async def insert_imported(self, room: RoomRow, message: MessageRow) -> int:
        row = await self._row(_NEXT_SEQ, (room.pk,))
        assert row is not None
        seq = int(row[0])
        m = message
        values = (room.pk, seq, m.id, m.client, m.user_id, m.sent_at, m.subject, m.text)
        await self._change(_INSERT_IMPORTED, values)
        return seq

    async def message_position(self, room: RoomRow, cursor: str) -> int:
        """The seq just before the first message (in seq order) whose id sorts after
        ``cursor``; the room's last seq if none does, 0 if every one does.

        With one replica this is the SQLite store's answer (ids then sort in seq order);
        with several it never places a later-made message before the cursor.
        """
        row = await self._row(_ANY_AT_OR_BEFORE, (room.pk, cursor))
        if row is None:
            return 0  # every message sorts after it (the nil UUID, a time before the room)
        row = await self._row(_FIRST_AFTER, (room.pk, cursor))
        if row is None or row[0] is None:
            return await self.last_seq(room)
        return int(row[0]) - 1


#: the count of MIGRATIONS releases before 0.2.0 knew: ``migrations.floor``'s legacy.
LEGACY = 4


def connect_options(
    timeout: float, application_name: str | None = None, *, statements: bool = True
) -> dict[str, Any]:
    """psycopg's settings for a connection of this store: PostgreSQL's own time limits
    (without ``statements``, only the lock one: a migration may take long but must not
    queue behind replicas' transactions for long), a bounded connect, and
    ``fallback_application_name`` (the URL's ``application_name`` or ``PGAPPNAME`` win)."""
    ms = int(timeout * 1000)
    limits = (
        f"-c statement_timeout={ms} -c lock_timeout={ms // 2}"
        f" -c idle_in_transaction_session_timeout={2 * ms}"
        if statements
        else f"-c lock_timeout={ms}"
    )
    options: dict[str, Any] = {
        "autocommit": True,
        "connect_timeout": max(2, round(timeout)),
        "options": limits,
    }
    if application_name:
        options["fallback_application_name"] = application_name[:63]
    return options


def schema_state(conn: psycopg.Connection[Any]) -> SchemaState:
    """What the database records (``migrations``): ``chatctl_schema.version`` is the floor
    (the one number releases before 0.2.0 read), ``applied`` (added by 0.2.0) the count
    applied; no table at all: an empty database."""
    if not _has_table(conn, "chatctl_schema"):
        return SchemaState(0, 0)
    row = conn.execute("SELECT row_to_json(s)::text FROM chatctl_schema s").fetchone()
    if row is None:
        return SchemaState(0, 0)
    import json

    fields = json.loads(row[0])
    version = int(fields["version"])
    applied = fields.get("applied")
    return SchemaState(version if applied is None else int(applied), version)


def _has_table(conn: psycopg.Connection[Any], name: str) -> bool:
    found = conn.execute("SELECT to_regclass(%s) IS NOT NULL", (name,)).fetchone()
    return bool(found and found[0])


def migrate(
    conn: psycopg.Connection[Any], policy: Policy = "all", where: str = "the database"
) -> SchemaState:
    """Apply the migrations the database lacks (with ``policy`` "new": only to an empty
    one), in one transaction, under an advisory lock so that replicas or ``serve migrate``
    runs starting together migrate once; the state after."""
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
        conn.execute("CREATE TABLE IF NOT EXISTS chatctl_schema (version integer NOT NULL)")
        conn.execute("ALTER TABLE chatctl_schema ADD COLUMN IF NOT EXISTS applied integer")
        state = schema_state(conn)
        if state.applied == 0 and conn.execute("SELECT FROM chatctl_schema").fetchone() is None:
            conn.execute("INSERT INTO chatctl_schema (version, applied) VALUES (0, 0)")
        # Again under the lock: another process may have migrated meanwhile.
        if judge(state, len(MIGRATIONS), where) != "older":
            return state
        if policy == "new" and not state.empty:
            raise too_old(state, len(MIGRATIONS), where)
        # A database an older release made: its replicas may still serve it, and hear
        # others only on the shared channel, so replicas started with --notify auto take
        # "both" until the operator records "rooms" (serve migrate --notify rooms).
        legacy = not state.empty and state.applied <= LEGACY
        for number in range(state.applied, len(MIGRATIONS)):
            with conn.transaction():  # a savepoint each: one failed step leaves no half
                conn.execute(MIGRATIONS[number].encode())
                if _has_table(conn, "chatctl_migrations"):
                    conn.execute(
                        "INSERT INTO chatctl_migrations (number, release) VALUES (%s, %s)"
                        " ON CONFLICT (number) DO UPDATE SET release = excluded.release,"
                        " applied_at = now()",
                        (number + 1, __version__),
                    )
                conn.execute(
                    "UPDATE chatctl_schema SET version = %s, applied = %s",
                    (floor(MIGRATIONS, number + 1, LEGACY), number + 1),
                )
        if legacy:
            record_notify(conn, "both", replace=False)
    return schema_state(conn)


def recorded_notify(conn: psycopg.Connection[Any]) -> str:
    """The notification mode replicas started with ``--notify auto`` take: the one
    recorded (``chatctl_settings``), else ``rooms``."""
    if not _has_table(conn, "chatctl_settings"):
        return "both"  # migrated by an older 0.2 build, before the setting: the safe one
    row = conn.execute("SELECT value FROM chatctl_settings WHERE name = 'notify'").fetchone()
    return str(row[0]) if row is not None else "rooms"


def record_notify(conn: psycopg.Connection[Any], mode: str, *, replace: bool = True) -> None:
    """Record the notification mode for ``--notify auto`` replicas (``NOTIFY_MODES``)."""
    if mode not in NOTIFY_MODES:
        raise ValueError(f"unknown notification mode {mode!r}")
    conflict = "DO UPDATE SET value = excluded.value" if replace else "DO NOTHING"
    conn.execute(
        "INSERT INTO chatctl_settings (name, value) VALUES ('notify', %s)"
        f" ON CONFLICT (name) {conflict}",
        (mode,),
    )


class PostgresStore:
    """``store.Store`` on a PostgreSQL database that several replicas share."""

    def __init__(
        self,
        url: str,
        fanout: Fanout | None = None,
        *,
        timeout: float = 5.0,
        pool_size: int = POOL_SIZE,
        migrate: Policy = "all",
        application_name: str | None = None,
        notify: str = "both",
    ) -> None:
        self.url = url
        self.application_name = application_name
        self.timeout = timeout
        self.fanout = fanout
        self._pool_size = pool_size
        self._pool: AsyncConnectionPool[psycopg.AsyncConnection[tuple[Any, ...]]] | None = None
        self._listener: Any = None
        #: told each notified message's lag (``hub_pg.lag_of``), when metrics are on.
        self.notification_lag: Callable[[float], None] | None = None
        self._ids = UUIDv7()
        self._turns = _Turns()
        #: calls given up on, finishing (cancelled) in the background.
        self._abandoned: set[asyncio.Task[Any]] = set()
        #: when to look for deleted rooms' messages left to purge (0: at the first step).
        self._next_purge_look = 0.0
        #: why the pool's last attempt to connect failed; None once one succeeds.
        self._unreachable: str | None = None
        self._migrate(migrate)
        if notify == "auto":
            with psycopg.connect(self.url, **self._options) as conn:
                notify = recorded_notify(conn)
        #: where notifications go and are heard (``hub_pg.NOTIFY_MODES``, ``--notify``:
        #: ``auto`` takes the database's ``recorded_notify``).
        self.notify = notify
        #: notifications go on the shared channel too (mode ``both``).
        self.shared = notify == "both"

    @classmethod
    def open(
        cls,
        url: str,
        fanout: Fanout,
        *,
        timeout: float,
        migrate: Policy = "all",
        application_name: str | None = None,
        notify: str = "both",
    ) -> PostgresStore:
        """The store on ``url``, its schema checked (and set up or migrated as ``migrate``
        allows), or a ChatctlError saying why it cannot be."""
        try:
            return cls(
                url,
                fanout,
                timeout=timeout,
                migrate=migrate,
                application_name=application_name,
                notify=notify,
            )
        except psycopg.OperationalError as exc:
            raise ChatctlError(
                f"cannot connect to PostgreSQL at {without_password(url)}: " + failure(exc),
                hint="is PostgreSQL running and the URL right? check --db",
            ) from None

    @property
    def _options(self) -> dict[str, Any]:
        """Connection settings: PostgreSQL's own time limits, a bounded connect, and the
        replica's name in ``pg_stat_activity`` unless the URL or ``PGAPPNAME`` gives one.
        Nothing here names a password: libpq finds one in the URL, ``PGPASSWORD``,
        ``PGPASSFILE`` (``~/.pgpass``) or a service file, as for psql."""
        return connect_options(self.timeout, self.application_name)

    def _migrate(self, policy: Policy) -> None:
        where = without_password(self.url)
        with psycopg.connect(self.url, **self._options) as conn:
            state = schema_state(conn)
            if judge(state, len(MIGRATIONS), where) != "older":
                if state.applied > len(MIGRATIONS):
                    log.info(
                        "database %s has schema %d, newer than this chatctl's %d and"
                        " compatible with it",
                        where, state.applied, len(MIGRATIONS),
                    )  # fmt: skip
                return
            if policy == "new" and not state.empty:
                raise too_old(state, len(MIGRATIONS), where)
            migrate(conn, policy, where)

    async def schema_version(self) -> int:
        """How many of ``MIGRATIONS`` the database has had applied."""

        async def version(db: sql.Session) -> int:
            return await db._count("SELECT coalesce(applied, version) FROM chatctl_schema", ())

        return await self.read(version)

    # -- running ------------------------------------------------------------------------

    async def start(self) -> None:
        """Open the pool on the running loop, and listen to every replica's changes
        (before the server takes requests, so a stream misses nothing)."""
        pool: AsyncConnectionPool[psycopg.AsyncConnection[tuple[Any, ...]]]
        pool = AsyncConnectionPool(
            self.url,
            connection_class=_watched(self),
            min_size=2,
            max_size=self._pool_size,
            kwargs=self._options,
            open=False,
            timeout=self.timeout,
            num_workers=2,
            name="chatctl",
        )
        await pool.open(wait=True, timeout=max(15.0, self.timeout))
        self._pool = pool
        if self.fanout is not None:
            # The LISTEN connection carries the replica's name too.
            listen = self.url
            if self.application_name:
                listen = psycopg.conninfo.make_conninfo(
                    self.url, fallback_application_name=self.application_name[:63]
                )
            self._listener = Listener(listen, self.timeout, self, self.fanout, self.notify)
            self._listener.lag = self.notification_lag
            await self._listener.start()

    async def close(self) -> None:
        if self._listener is not None:
            await self._listener.stop()
            self._listener = None
        for task in list(self._abandoned):
            task.cancel()
        if self._abandoned:
            await asyncio.wait(self._abandoned, timeout=2 * _GRACE)
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()

    async def _bounded(self, call: Coroutine[Any, Any, T], deadline: float | None = None) -> T:
        """``call``, given up on after the database's own limits and a grace period (or at
        ``deadline``, by ``time.monotonic()``): a database that stops answering costs a
        503, not a stuck request."""
        task = asyncio.ensure_future(call)
        if deadline is None:
            deadline = time.monotonic() + self.timeout + _GRACE
        try:
            done, _ = await asyncio.wait((task,), timeout=max(0.0, deadline - time.monotonic()))
        except BaseException:
            task.cancel()
            raise
        if task in done:
            try:
                return task.result()
            except (psycopg.OperationalError, PoolTimeout) as exc:
                raise Unavailable(str(exc).strip() or type(exc).__name__) from exc
        # Cancelled, psycopg cancels the query on the server (or closes the connection),
        # and the pool takes the connection back, in the background.
        task.cancel()
        self._abandoned.add(task)
        task.add_done_callback(self._forget)
        raise Unavailable(f"PostgreSQL did not answer within {self.timeout + _GRACE:g} s")

    def _forget(self, task: asyncio.Task[Any]) -> None:
        self._abandoned.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.debug("an abandoned database call ended: %s", task.exception())

    @contextlib.asynccontextmanager
    async def _connection(self) -> AsyncIterator[psycopg.AsyncConnection[tuple[Any, ...]]]:
        """A connection of the pool. While the pool's last attempt to connect failed (the
        database refused it, or did not answer), a call that finds no idle connection is
        Unavailable at once rather than after ``--db-timeout``; it still asks the pool, so
        the pool keeps trying to connect, and the first success ends it."""
        pool = self._pool
        if pool is None:
            raise Unavailable("the store is not started")
        down = self._unreachable
        async with contextlib.AsyncExitStack() as stack:
            try:
                conn = await stack.enter_async_context(
                    pool.connection(timeout=_DOWN_WAIT if down else None)
                )
            except PoolTimeout:
                if down is None:
                    raise
                raise Unavailable(f"cannot connect to PostgreSQL: {down}") from None
            yield conn

    # -- the Store operations -----------------------------------------------------------

    async def read(self, work: Callable[[sql.Session], Awaitable[T]]) -> T:
        async def call() -> T:
            async with self._connection() as conn:
                return await work(PostgresSession(conn, self))

        return await self._bounded(call())

    async def write(self, work: Callable[[sql.Session], Awaitable[T]]) -> T:
        async def call() -> T:
            async with self._connection() as conn, conn.transaction():
                session = PostgresSession(conn, self)
                # As strict as SQLite's writer: a rule awaiting anything else fails here too.
                result = await session_only(session, work(session))
                # Notifications commit with the change, or not at all: a replica dying
                # between the commit and a separate notify cannot leave streams open.
                await session.notify()
                return result

        return await self._bounded(call())

    async def send(self, tenant: str, new: NewMessage, key: Key | None) -> SendResult:
        # The room's Sends from this replica take turns, each made (id, time) only when
        # its turn comes: made by one replica, ids sort in the room's order, as the
        # contract promises. Other rooms, and other replicas, go on meanwhile.
        deadline = time.monotonic() + self.timeout + _GRACE
        async with self._turns.of((tenant, new.room_id), deadline):
            for _ in range(3):
                message = new.to_wire(*self._ids.stamp())
                answer = message_frame(message)
                row = await self._bounded(self._send_one(tenant, message, answer, key), deadline)
                result = _sent(row, answer, key)
                if result is not None:
                    return result
        raise Unavailable("an Idempotency-Key stayed claimed but unanswered")

    async def _send_one(
        self, tenant: str, message: dict[str, Any], answer: str, key: Key | None
    ) -> tuple[Any, ...]:
        async with self._connection() as conn:
            return await _one_send(conn, tenant, message, answer, key, self.shared)

    async def send_many(
        self,
        tenant: str,
        messages: Sequence[tuple[NewMessage, Key | None]],
        *,
        stop: bool = False,
    ) -> list[SendResult]:
        deadline = time.monotonic() + self.timeout + _GRACE
        async with contextlib.AsyncExitStack() as turns:
            for room_id in sorted({new.room_id for new, _ in messages}):  # one order: no deadlock
                await turns.enter_async_context(self._turns.of((tenant, room_id), deadline))
            made = []
            for new, key in messages:
                message = new.to_wire(*self._ids.stamp())
                made.append((message, message_frame(message), key))

            async def call() -> list[SendResult]:
                results: list[SendResult] = []
                async with self._connection() as conn, conn.transaction():
                    for run in _runs(made):
                        if await self._send_run(conn, tenant, run, stop, results):
                            break
                return results

            return await self._bounded(call(), deadline)

    async def _send_run(
        self,
        conn: psycopg.AsyncConnection[tuple[Any, ...]],
        tenant: str,
        run: list[_Made],
        stop: bool,
        results: list[SendResult],
    ) -> bool:
        """Send ``run`` (no key twice) with one statement (``_SEND_MANY``), adding each
        outcome to ``results``; True when ``stop`` stopped the batch at a refusal."""
        cursor = await conn.execute(_SEND_MANY, _send_many_params(tenant, run, stop, self.shared))
        rows = await cursor.fetchall()
        for (message, answer, key), row in zip(run, rows, strict=True):
            result = _sent(row, answer, key, refusals=True)
            if result is None:
                # Another replica claimed the key after the statement began (nothing was
                # stored): alone now, it sees that one's answer (or takes its turn).
                made, ns = self._ids.stamp()
                message = {**message, "id": made, "sent_at": rfc3339(ns)}
                answer = message_frame(message)
                again = await _one_send(conn, tenant, message, answer, key, self.shared)
                result = _sent(again, answer, key, refusals=True)
            if result is None:
                raise Unavailable("an Idempotency-Key stayed claimed but unanswered")
            results.append(result)
            if stop and result.answer is None:
                return True
        return False

    async def purge_step(self) -> bool:
        """Remove the next chunk of a deleted room's messages; True while more remain.
        Replicas share the work: a room being purged by one is skipped by the others."""
        if time.monotonic() < self._next_purge_look:
            return False

        async def step(db: sql.Session) -> bool:
            assert isinstance(db, PostgresSession)
            row = await db._row(_NEXT_TO_PURGE, ())
            if row is None:
                self._next_purge_look = time.monotonic() + _PURGE_LOOK
                return False
            room_pk, done_seq, last_seq = (int(v) for v in row)
            chunk = sql.PURGE_CHUNK
            await db.delete_messages(room_pk, done_seq, chunk)
            if done_seq + chunk >= last_seq:
                await db._change(sql.PURGED, (room_pk,))
            else:
                await db._change(_PURGED_TO, (done_seq + chunk, room_pk))
            return True

        found = await self.write(step)
        return found

    def purge_soon(self) -> None:
        """Look for rooms to purge at the next step (a room was just deleted)."""
        self._next_purge_look = 0.0


def _watched(store: PostgresStore) -> type[psycopg.AsyncConnection[tuple[Any, ...]]]:
    """The pool's connection class: it tells ``store`` how its attempts to connect end."""

    class Watched(psycopg.AsyncConnection[tuple[Any, ...]]):
        @classmethod
        async def connect(cls, *args: Any, **kwargs: Any) -> Any:
            try:
                conn = await super().connect(*args, **kwargs)
            except psycopg.OperationalError as exc:
                store._unreachable = failure(exc)
                raise
            store._unreachable = None
            return conn

    return Watched


class _Turns:
    """A lock per key (a room), made when first wanted and dropped when nobody waits."""

    def __init__(self) -> None:
        self._locks: dict[Any, tuple[asyncio.Lock, int]] = {}

    @contextlib.asynccontextmanager
    async def of(self, key: Any, deadline: float) -> AsyncIterator[None]:
        """Hold ``key``'s turn; Unavailable if it does not come by ``deadline`` (the ones
        before are stuck on a database that does not answer)."""
        lock, users = self._locks.get(key, (None, 0))
        if lock is None:
            lock = asyncio.Lock()
        self._locks[key] = (lock, users + 1)
        try:
            try:
                async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
                    await lock.acquire()
            except TimeoutError:
                raise Unavailable("the room's earlier Sends did not finish in time") from None
            try:
                yield
            finally:
                lock.release()
        finally:
            lock, users = self._locks[key]
            if users == 1:
                del self._locks[key]
            else:
                self._locks[key] = (lock, users - 1)


def failure(exc: BaseException) -> str:
    """Why libpq could not connect, as one line: its last line that says why (not the
    note of where it found the password, which it adds after the reason)."""
    lines = [line for line in str(exc).strip().splitlines() if line.strip()]
    said = [line for line in lines if not line.startswith("password retrieved from")]
    return (said or lines or ["no answer"])[-1]


def without_password(url: str) -> str:
    """A database URL fit for an error message: its password replaced by ***."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return parts._replace(netloc=netloc).geturl()
