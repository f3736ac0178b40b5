"""The PostgreSQL store: the same ``Store`` as ``SQLiteStore``, shared by many replicas.

``chatctl serve --db postgresql://…`` uses it. Imported only then: psycopg is an optional
extra (``pip install 'chatctl[postgres]'``), and neither SQLite users nor the CLI's start-up
import it.

What changes when several server processes share one database:

- **One order per room.** A room row carries ``last_seq``; a Send bumps it and inserts the
  message with the new value in one statement. The row lock taken by that UPDATE
  serialises the writers of a room (other rooms are not held up), so seqs are gapless per
  room and commit in seq order.
- **Fan-out.** The same statement calls ``pg_notify`` with the room, the seq and the encoded
  frame (or no frame when the payload would pass PostgreSQL's 8000-byte limit); the
  notification is sent at commit, in commit order, so every replica hears of a room's
  messages in seq order. ``hub_pg.PostgresHub`` listens and reads any seq it missed from
  the table.
- **An id is a position, conservatively.** Ids are UUIDv7 made by each replica's clock, so
  ids from two replicas may not sort in seq order. A UUID that is no message of the room
  sits just before the first message, in the room's order, whose id sorts after it: a
  ``since`` built from a time never skips a message made after that time (it may repeat a
  few made around it on another replica), and ``before``/``after`` still split the room
  into two parts with nothing in both.
- **Idempotency keys across replicas.** ``get_idempotency`` takes a transaction-scoped
  advisory lock on the key, so a retry on another replica waits for the first attempt to
  commit and then finds its answer; the primary key on (tenant, key) backs it up.

A Send is one statement (``_SEND``: find the room, check membership, bump the seq, insert
and notify), awaited on a small async pool (``send_message_async``, opened by the hub), so
the event loop serves other requests while it waits on the database; the rules map its
outcome to m3o's answers. Every other call is synchronous, on the event loop thread, as
with SQLite: a local PostgreSQL answers a statement in about 0.1 ms. That connection comes
from a psycopg pool, which replaces a broken one (a restarted or failed-over PostgreSQL)
on the next call; the failing call answers 503. The benchmarks (``python -m tests.bench
--only postgres``) measure it.

Schema versions: the table ``chatctl_schema`` holds how many entries of ``MIGRATIONS`` are
applied; a replica applies the rest at start, under an advisory lock so replicas starting
together migrate once.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Sequence
from typing import Any

import psycopg
from psycopg_pool import AsyncConnectionPool, ConnectionPool, PoolTimeout

from chatctl.server import store as _store
from chatctl.server.rules import RulesError, encode, message_frame
from chatctl.server.store import IdempotencyRecord, MessageRow, RoomRow

__all__ = ["CHANNEL", "MIGRATIONS", "NOTIFY_LIMIT", "PostgresStore", "is_postgres_url"]

#: the LISTEN/NOTIFY channel every replica of one database shares.
CHANNEL = "chatctl"
#: PostgreSQL refuses a NOTIFY payload of 8000 bytes or more; stay a little under.
NOTIFY_LIMIT = 7900
#: seconds a call waits for a connection when it has none (PostgreSQL down or restarting).
_CONNECT_TIMEOUT = 1.0
#: connections of the async pool, shared by the Sends in flight on one replica. Few: every
#: commit that notifies holds PostgreSQL's one notification-queue lock, and a room's
#: writers its row lock, so more Sends in flight only queue inside PostgreSQL (measured on
#: 2 cores, one room: 2 per replica beat 1 and 4 on one replica; 4 per replica lost on two).
ASYNC_POOL_SIZE = 2
#: seconds an async Send waits for one (all busy, or PostgreSQL down): then 503.
_ASYNC_WAIT = 5.0
#: advisory lock key held while migrating ("chatctl" in ASCII).
_MIGRATION_LOCK = 0x63686174_63746C


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
)

#: seconds between looks for rooms another replica deleted and did not finish purging.
_PURGE_LOOK = 30.0

_ROOM_COLUMNS = "pk, tenant, id, name, description, created_at, private"
_MESSAGE_COLUMNS = "seq, id, client, user_id, sent_at, subject, text"

# One round trip: bump the room's seq (taking its row lock), store the message under it,
# and queue the notification, which PostgreSQL sends when the transaction commits.
_ADD_MESSAGE = f"""
WITH bumped AS (
    UPDATE rooms SET last_seq = last_seq + 1 WHERE pk = %(pk)s RETURNING last_seq
), stored AS (
    INSERT INTO messages (room_pk, seq, id, client, user_id, sent_at, subject, text)
    SELECT %(pk)s, last_seq, %(id)s, %(client)s, %(user_id)s, %(sent_at)s, %(subject)s,
           %(text)s
    FROM bumped
    RETURNING seq
)
SELECT seq, pg_notify('{CHANNEL}', 'm ' || seq || ' ' || %(head)s || %(frame)s) FROM stored
"""


# A Send in one round trip: find the room, check the sender is a member, and only then
# bump the seq, store the message and queue its notification, as ``_ADD_MESSAGE`` does. One
# row (private, seq) when the room exists; seq is NULL when nothing was stored (and then
# nothing is notified: pg_notify would send an empty payload for a NULL one).
_SEND = f"""
WITH room AS (
    SELECT pk, private FROM rooms WHERE tenant = %(tenant)s AND id = %(room_id)s
), member AS (
    SELECT FROM members, room WHERE room_pk = room.pk AND user_id = %(user_id)s
), bumped AS (
    UPDATE rooms SET last_seq = last_seq + 1
    WHERE pk = (SELECT pk FROM room) AND EXISTS (SELECT FROM member)
    RETURNING pk, last_seq
), stored AS (
    INSERT INTO messages (room_pk, seq, id, client, user_id, sent_at, subject, text)
    SELECT pk, last_seq, %(id)s, %(client)s, %(user_id)s, %(sent_at)s, %(subject)s, %(text)s
    FROM bumped
    RETURNING room_pk, seq
)
SELECT room.private, stored.seq, CASE WHEN stored.seq IS NOT NULL THEN pg_notify(
    '{CHANNEL}',
    'm ' || stored.seq || ' '
    || json_build_array(
        %(tenant)s::text, %(room_id)s::text, stored.room_pk, %(user_id)s::text
    )::text
    || E'\\n' || %(frame)s
) END
FROM room LEFT JOIN stored ON true
"""


def _send_params(
    tenant: str,
    room_id: str,
    message_id: str,
    client: str,
    user_id: str,
    sent_at: str,
    subject: str,
    text: str,
) -> dict[str, str]:
    frame = message_frame(
        room_id, MessageRow(0, message_id, client, user_id, sent_at, subject, text)
    )
    # The head's size, bounded: the room's pk is at most 19 digits.
    head = len(encode([tenant, room_id, 0, user_id])) + 20
    if head + len(frame.encode()) + 32 > NOTIFY_LIMIT:
        frame = ""  # too big to carry: listeners read it from the table
    return {
        "tenant": tenant,
        "room_id": room_id,
        "id": message_id,
        "client": client,
        "user_id": user_id,
        "sent_at": sent_at,
        "subject": subject,
        "text": text,
        "frame": frame,
    }


def _sent(row: tuple[Any, ...] | None) -> tuple[bool, int | None] | None:
    if row is None:
        return None  # no such room
    return bool(row[0]), None if row[1] is None else int(row[1])


def is_postgres_url(db: str) -> bool:
    return db.startswith(("postgresql://", "postgres://"))


def _room(row: tuple[Any, ...]) -> RoomRow:
    return RoomRow(row[0], row[1], row[2], row[3], row[4], row[5], bool(row[6]))


class PostgresStore:
    """The PostgreSQL implementation of ``Store``; used from one thread at a time."""

    #: errors that mean "the database is unavailable", answered with 503.
    unavailable: tuple[type[Exception], ...] = (psycopg.OperationalError, PoolTimeout)

    def __init__(self, url: str, *, pool_size: int = 4) -> None:
        self.url = url
        self._pool: ConnectionPool[psycopg.Connection[tuple[Any, ...]]] = ConnectionPool(
            url,
            min_size=1,
            max_size=pool_size,
            kwargs={"autocommit": True},
            open=False,
            num_workers=1,
            name="chatctl",
        )
        self._pool.open(wait=True, timeout=15)
        self._conn: psycopg.Connection[tuple[Any, ...]] | None = None
        self._depth = 0
        #: when to look for deleted rooms' messages left to purge (0: at the first step).
        self._next_purge_look = 0.0
        self._async_pool: AsyncConnectionPool[psycopg.AsyncConnection[tuple[Any, ...]]] | None
        self._async_pool = None
        self._migrate()

    # -- housekeeping -------------------------------------------------------------------

    def _connection(self) -> psycopg.Connection[tuple[Any, ...]]:
        # One connection is kept between calls (taking one from the pool per statement
        # costs more than the statement); a broken one goes back to the pool, which
        # discards it, and the next call gets a fresh one.
        conn = self._conn
        if conn is None or conn.broken or conn.closed:
            if conn is not None:
                self._pool.putconn(conn)
            # Briefly: the event loop waits meanwhile; a database that is down is a 503.
            conn = self._conn = self._pool.getconn(timeout=_CONNECT_TIMEOUT)
        return conn

    def _execute(self, sql: str, args: Sequence[Any] | dict[str, Any] = ()) -> psycopg.Cursor[Any]:
        conn = self._connection()
        try:
            return conn.execute(sql, args)
        except psycopg.OperationalError:
            if conn.broken:
                self._pool.putconn(conn)
                self._conn = None
            raise

    def _migrate(self) -> None:
        with self._pool.connection() as conn, conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
            conn.execute("CREATE TABLE IF NOT EXISTS chatctl_schema (version integer NOT NULL)")
            row = conn.execute("SELECT version FROM chatctl_schema").fetchone()
            if row is None:
                conn.execute("INSERT INTO chatctl_schema (version) VALUES (0)")
                version = 0
            else:
                version = int(row[0])
            if version > len(MIGRATIONS):
                raise RuntimeError(
                    f"database schema version {version} is newer than this chatctl "
                    f"(knows {len(MIGRATIONS)}); upgrade chatctl"
                )
            for number in range(version, len(MIGRATIONS)):
                with conn.transaction():  # a savepoint each: one failed step leaves no half
                    conn.execute(MIGRATIONS[number].encode())
                    conn.execute("UPDATE chatctl_schema SET version = %s", (number + 1,))

    @property
    def schema_version(self) -> int:
        row = self._execute("SELECT version FROM chatctl_schema").fetchone()
        assert row is not None
        return int(row[0])

    async def open_async(self, size: int = ASYNC_POOL_SIZE) -> None:
        """Open the async pool ``send_message_async`` uses (on the running event loop)."""
        pool: AsyncConnectionPool[psycopg.AsyncConnection[tuple[Any, ...]]]
        pool = AsyncConnectionPool(
            self.url,
            min_size=1,
            max_size=size,
            kwargs={"autocommit": True},
            open=False,
            num_workers=1,
            name="chatctl-async",
        )
        await pool.open(wait=True, timeout=15)
        self._async_pool = pool

    async def close_async(self) -> None:
        pool, self._async_pool = self._async_pool, None
        if pool is not None:
            await pool.close()

    def close(self) -> None:
        if self._conn is not None:
            self._pool.putconn(self._conn)
            self._conn = None
        self._pool.close()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """Group changes; nested uses join the outermost transaction."""
        if self._depth:
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1
            return
        conn = self._connection()
        self._depth = 1
        try:
            with conn.transaction():
                yield
        except psycopg.OperationalError:
            if conn.broken:
                self._pool.putconn(conn)
                self._conn = None
            raise
        finally:
            self._depth = 0

    def notify(self, payload: str) -> None:
        """Send a notification to every replica (at commit, inside a transaction)."""
        self._execute(f"SELECT pg_notify('{CHANNEL}', %s)", (payload,))

    # -- rooms --------------------------------------------------------------------------

    def get_room(self, tenant: str, room_id: str) -> RoomRow | None:
        row = self._execute(
            f"SELECT {_ROOM_COLUMNS} FROM rooms WHERE tenant = %s AND id = %s", (tenant, room_id)
        ).fetchone()
        return _room(row) if row else None

    def create_room(
        self,
        tenant: str,
        room_id: str,
        name: str,
        description: str,
        created_at: str,
        private: bool,
        user_ids: Sequence[str],
    ) -> RoomRow:
        with self.transaction():
            row = self._execute(
                "INSERT INTO rooms (tenant, id, name, description, created_at, private)"
                " VALUES (%s, %s, %s, %s, %s, %s) RETURNING pk",
                (tenant, room_id, name, description, created_at, private),
            ).fetchone()
            assert row is not None
            room = RoomRow(int(row[0]), tenant, room_id, name, description, created_at, private)
            for user_id in user_ids:
                self.add_member(room, user_id)
        return room

    def delete_room(self, room: RoomRow) -> None:
        with self.transaction():
            # The room row first: a Send racing the delete waits on its lock, then finds
            # no room.
            row = self._execute(
                "DELETE FROM rooms WHERE pk = %s RETURNING last_seq", (room.pk,)
            ).fetchone()
            self._execute("DELETE FROM members WHERE room_pk = %s", (room.pk,))
            self._execute("DELETE FROM barred WHERE room_pk = %s", (room.pk,))
            if row is None:
                return
            # A small room's messages go now; a big room's first chunk, the rest in steps
            # (a Delete holding this replica's event loop for seconds would stall its
            # streams). pks are never reused (bigserial), so nothing can reach them. Seqs
            # are 1..last_seq, so each step is an index range, never a scan past the rows
            # the steps before deleted.
            last_seq = int(row[0])
            chunk = _store.PURGE_CHUNK
            self._delete_messages(room.pk, 0, chunk)
            if last_seq > chunk:
                self._execute(
                    "INSERT INTO purging VALUES (%s, %s, %s) ON CONFLICT DO NOTHING",
                    (room.pk, chunk, last_seq),
                )
                self._next_purge_look = 0.0

    def _delete_messages(self, room_pk: int, after_seq: int, count: int) -> None:
        self._execute(
            "DELETE FROM messages WHERE room_pk = %s AND seq > %s AND seq <= %s",
            (room_pk, after_seq, after_seq + count),
        )

    def is_busy(self, exc: Exception) -> bool:
        return False  # PostgreSQL queues lock waits itself; its errors are outages

    def purge_step(self) -> bool:
        """Remove the next chunk of a deleted room's messages; True while more remain.
        Replicas share the work: a room being purged by one is skipped by the others."""
        if time.monotonic() < self._next_purge_look:
            return False
        with self.transaction():
            row = self._execute(
                "SELECT room_pk, done_seq, last_seq FROM purging LIMIT 1 FOR UPDATE SKIP LOCKED"
            ).fetchone()
            if row is None:
                self._next_purge_look = time.monotonic() + _PURGE_LOOK
                return False
            room_pk, done_seq, last_seq = (int(v) for v in row)
            done = done_seq + _store.PURGE_CHUNK
            self._delete_messages(room_pk, done_seq, _store.PURGE_CHUNK)
            if done >= last_seq:
                self._execute("DELETE FROM purging WHERE room_pk = %s", (room_pk,))
            else:
                self._execute(
                    "UPDATE purging SET done_seq = %s WHERE room_pk = %s", (done, room_pk)
                )
        return True

    def count_rooms(self, tenant: str) -> int:
        row = self._execute("SELECT count(*) FROM rooms WHERE tenant = %s", (tenant,)).fetchone()
        assert row is not None
        return int(row[0])

    def list_rooms(
        self, tenant: str, user_id: str | None = None
    ) -> list[tuple[RoomRow, list[str]]]:
        """Rooms in creation order, each with its members; only ``user_id``'s when given."""
        if user_id is None:
            rows = self._execute(
                f"SELECT {_ROOM_COLUMNS} FROM rooms WHERE tenant = %s ORDER BY pk", (tenant,)
            ).fetchall()
            member_rows = self._execute(
                "SELECT room_pk, user_id FROM members WHERE tenant = %s ORDER BY position",
                (tenant,),
            ).fetchall()
        else:
            rows = self._execute(
                f"SELECT {', '.join('r.' + c for c in _ROOM_COLUMNS.split(', '))}"
                " FROM members m JOIN rooms r ON r.pk = m.room_pk"
                " WHERE m.tenant = %s AND m.user_id = %s ORDER BY r.pk",
                (tenant, user_id),
            ).fetchall()
            member_rows = self._execute(
                "SELECT m.room_pk, m.user_id FROM members m WHERE m.room_pk IN"
                " (SELECT room_pk FROM members WHERE tenant = %s AND user_id = %s)"
                " ORDER BY m.position",
                (tenant, user_id),
            ).fetchall()
        by_room: dict[int, list[str]] = {}
        for room_pk, member in member_rows:
            by_room.setdefault(room_pk, []).append(member)
        return [(_room(row), by_room.get(row[0], [])) for row in rows]

    # -- members ------------------------------------------------------------------------

    def members(self, room: RoomRow) -> list[str]:
        rows = self._execute(
            "SELECT user_id FROM members WHERE room_pk = %s ORDER BY position", (room.pk,)
        ).fetchall()
        return [r[0] for r in rows]

    def is_member(self, room: RoomRow, user_id: str) -> bool:
        row = self._execute(
            "SELECT 1 FROM members WHERE room_pk = %s AND user_id = %s", (room.pk, user_id)
        ).fetchone()
        return row is not None

    def count_members(self, room: RoomRow) -> int:
        row = self._execute(
            "SELECT count(*) FROM members WHERE room_pk = %s", (room.pk,)
        ).fetchone()
        assert row is not None
        return int(row[0])

    def add_member(self, room: RoomRow, user_id: str) -> bool:
        """Add at the end of the member list; False when already a member."""
        cursor = self._execute(
            "INSERT INTO members (tenant, room_pk, user_id) VALUES (%s, %s, %s)"
            " ON CONFLICT DO NOTHING",
            (room.tenant, room.pk, user_id),
        )
        return cursor.rowcount > 0

    def remove_member(self, room: RoomRow, user_id: str) -> bool:
        cursor = self._execute(
            "DELETE FROM members WHERE room_pk = %s AND user_id = %s", (room.pk, user_id)
        )
        return cursor.rowcount > 0

    def is_barred(self, room: RoomRow, user_id: str) -> bool:
        row = self._execute(
            "SELECT 1 FROM barred WHERE room_pk = %s AND user_id = %s", (room.pk, user_id)
        ).fetchone()
        return row is not None

    def set_barred(self, room: RoomRow, user_id: str, barred: bool) -> None:
        if barred:
            self._execute(
                "INSERT INTO barred (room_pk, user_id) VALUES (%s, %s) ON CONFLICT DO NOTHING",
                (room.pk, user_id),
            )
        else:
            self._execute(
                "DELETE FROM barred WHERE room_pk = %s AND user_id = %s", (room.pk, user_id)
            )

    # -- messages -----------------------------------------------------------------------

    def add_message(
        self,
        room: RoomRow,
        message_id: str,
        client: str,
        user_id: str,
        sent_at: str,
        subject: str,
        text: str,
    ) -> int:
        """Store a message under the room's next seq and notify every replica at commit."""
        head = encode([room.tenant, room.id, room.pk, user_id]) + "\n"
        frame = message_frame(
            room.id, MessageRow(0, message_id, client, user_id, sent_at, subject, text)
        )
        if len(head) + len(frame.encode()) + 32 > NOTIFY_LIMIT:
            frame = ""  # too big to carry: listeners read it from the table
        row = self._execute(
            _ADD_MESSAGE,
            {
                "pk": room.pk,
                "id": message_id,
                "client": client,
                "user_id": user_id,
                "sent_at": sent_at,
                "subject": subject,
                "text": text,
                "head": head,
                "frame": frame,
            },
        ).fetchone()
        if row is None:  # deleted by another replica since the rules looked it up
            raise RulesError(404, "room not found")
        return int(row[0])

    def send_message(
        self,
        tenant: str,
        room_id: str,
        message_id: str,
        client: str,
        user_id: str,
        sent_at: str,
        subject: str,
        text: str,
    ) -> tuple[bool, int | None] | None:
        """A whole Send in one round trip (``rules.OneStepSend``): store the message under
        the room's next seq, and notify every replica at commit, if ``user_id`` is a member.

        None when there is no such room; else (the room is private, the seq), the seq None
        when the user is not a member and nothing was stored. The room row's lock orders
        the room's writers as with ``add_message``.
        """
        params = _send_params(tenant, room_id, message_id, client, user_id, sent_at, subject, text)
        return _sent(self._execute(_SEND, params).fetchone())

    async def send_message_async(
        self,
        tenant: str,
        room_id: str,
        message_id: str,
        client: str,
        user_id: str,
        sent_at: str,
        subject: str,
        text: str,
    ) -> tuple[bool, int | None] | None:
        """``send_message`` on a connection of the async pool: the event loop serves other
        requests while this one waits on the database. Falls back to ``send_message``
        before ``open_async``."""
        pool = self._async_pool
        if pool is None:
            return self.send_message(
                tenant, room_id, message_id, client, user_id, sent_at, subject, text
            )
        params = _send_params(tenant, room_id, message_id, client, user_id, sent_at, subject, text)
        async with pool.connection(timeout=_ASYNC_WAIT) as conn:
            cursor = await conn.execute(_SEND, params)
            return _sent(await cursor.fetchone())

    def message_seq(self, room: RoomRow, message_id: str) -> int | None:
        row = self._execute(
            "SELECT seq FROM messages WHERE room_pk = %s AND id = %s", (room.pk, message_id)
        ).fetchone()
        return int(row[0]) if row else None

    def message_position(self, room: RoomRow, cursor: str) -> int:
        """The seq just before the first message (in seq order) whose id sorts after
        ``cursor``; the room's last seq if none does, 0 if every one does.

        With one replica this is the SQLite store's answer (ids then sort in seq order);
        with several it never places a later-made message before the cursor.
        """
        row = self._execute(
            "SELECT 1 FROM messages WHERE room_pk = %s AND id <= %s LIMIT 1", (room.pk, cursor)
        ).fetchone()
        if row is None:
            return 0  # every message sorts after it (the nil UUID, a time before the room)
        row = self._execute(
            "SELECT min(seq) FROM messages WHERE room_pk = %s AND id > %s", (room.pk, cursor)
        ).fetchone()
        if row is None or row[0] is None:
            row = self._execute(
                "SELECT coalesce(max(seq), 0) FROM messages WHERE room_pk = %s", (room.pk,)
            ).fetchone()
            assert row is not None
            return int(row[0])
        return int(row[0]) - 1

    def messages(
        self,
        room: RoomRow,
        *,
        after_seq: int | None = None,
        before_seq: int | None = None,
        limit: int | None = None,
        latest: bool = False,
    ) -> list[MessageRow]:
        """Messages strictly between the bounds, oldest first (as ``SQLiteStore.messages``)."""
        return self.messages_of(
            room.pk, after_seq=after_seq, before_seq=before_seq, limit=limit, latest=latest
        )

    def messages_of(
        self,
        room_pk: int,
        *,
        after_seq: int | None = None,
        before_seq: int | None = None,
        limit: int | None = None,
        latest: bool = False,
    ) -> list[MessageRow]:
        where = "room_pk = %s"
        args: list[object] = [room_pk]
        if after_seq is not None:
            where += " AND seq > %s"
            args.append(after_seq)
        if before_seq is not None:
            where += " AND seq < %s"
            args.append(before_seq)
        order = "DESC" if latest else "ASC"
        sql = f"SELECT {_MESSAGE_COLUMNS} FROM messages WHERE {where} ORDER BY seq {order}"
        if limit is not None:
            sql += " LIMIT %s"
            args.append(limit)
        rows = [MessageRow(*row) for row in self._execute(sql, args)]
        if latest:
            rows.reverse()
        return rows

    def count_messages_after(self, room: RoomRow, after_seq: int, cap: int) -> int:
        row = self._execute(
            "SELECT count(*) FROM (SELECT 1 FROM messages WHERE room_pk = %s AND seq > %s"
            " LIMIT %s) t",
            (room.pk, after_seq, cap),
        ).fetchone()
        assert row is not None
        return int(row[0])

    # -- idempotency keys ---------------------------------------------------------------

    def get_idempotency(self, tenant: str, key: str, not_before: float) -> IdempotencyRecord | None:
        # Held to the end of the caller's transaction: the same key on another replica
        # waits here until this attempt commits (and then finds its answer) or rolls back.
        self._execute(
            "SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", (f"{tenant}\n{key}",)
        )
        row = self._execute(
            "SELECT endpoint, request_hash, response, created_at FROM idempotency"
            " WHERE tenant = %s AND key = %s AND created_at >= %s",
            (tenant, key, not_before),
        ).fetchone()
        return IdempotencyRecord(*row) if row else None

    def put_idempotency(
        self,
        tenant: str,
        key: str,
        endpoint: str,
        request_hash: str,
        response: str,
        created_at: float,
    ) -> None:
        # An expired record of the same key may still be there until purged: replace it.
        self._execute(
            "INSERT INTO idempotency (tenant, key, endpoint, request_hash, response, created_at)"
            " VALUES (%s, %s, %s, %s, %s, %s)"
            " ON CONFLICT (tenant, key) DO UPDATE SET endpoint = excluded.endpoint,"
            " request_hash = excluded.request_hash, response = excluded.response,"
            " created_at = excluded.created_at",
            (tenant, key, endpoint, request_hash, response, created_at),
        )

    def purge_idempotency(self, older_than: float) -> int:
        cursor = self._execute("DELETE FROM idempotency WHERE created_at < %s", (older_than,))
        return cursor.rowcount
