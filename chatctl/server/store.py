"""The server's storage: rooms, members, messages and idempotency keys in one SQLite file.

``Store`` is the interface the rules are written against; ``SQLiteStore`` implements it
here, and ``store_pg.PostgresStore`` for replicas sharing a PostgreSQL database. The store
knows nothing of HTTP or of the chat rules: it answers questions and applies changes, and
the caller groups changes into a transaction with ``with store.transaction():``.

Durability: WAL with ``synchronous=NORMAL``. A commit is in the WAL (the OS page cache)
before ``commit`` returns, so it survives ``kill -9`` of the process; it may not survive a
power loss, which the server does not promise.

Checkpoints (copying the WAL back into the database file, with two fsyncs) would
otherwise run inside whichever commit crosses SQLite's 1,000-page threshold, stalling the
event loop for milliseconds, up to tens of them, every few hundred Sends. Instead, every
``CHECKPOINT_EVERY`` commits a background thread with its own connection checkpoints
(PASSIVE: it never blocks the writer), again until it is nearly caught up; the next commit
then checkpoints the few pages left itself, which lets the commit after it start the WAL
over from the beginning. (A checkpoint on another thread alone never finds a busy WAL
quiet enough to be reset, so the file would grow.) The writer's own threshold is raised to
``_BACKSTOP_PAGES`` and only matters if that thread falls behind, and ``journal_size_limit``
cuts the file back after such an overshoot, so the WAL stays under about that size (more
only while a long read, say a backup, holds it). Durability is the same either way:
checkpoints only move committed pages.

Caches: a room row (immutable until deleted) and "is a member" answers are kept in memory,
since looking them up was a fifth of a Send. This store's own changes update them; a
commit by any other connection (another process on the same file) empties them, as
``PRAGMA data_version`` tells, checked by every ``get_room`` (with which every use of a
room begins) and at the start of every transaction, so a transaction reads exactly what
an uncached store would. A rollback empties them too.

Schema versions: ``PRAGMA user_version`` holds how many entries of ``MIGRATIONS`` have been
applied; opening an older file applies the rest, in order, in one transaction each.

Calls are synchronous: on the server they run on the event loop thread, where each is well
under a millisecond, so a thread hop would cost more than it saves. The one call that could
take seconds, deleting a room with millions of messages, is cut into steps: Delete removes
the room and its first ``PURGE_CHUNK`` messages in one transaction, and ``purge_step``
removes the rest a chunk at a time (the server calls it between requests). Until then the
room's pk is listed in ``purging``, so no new room takes it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

__all__ = [
    "CHECKPOINT_EVERY",
    "MIGRATIONS",
    "IdempotencyRecord",
    "MessageRow",
    "RoomRow",
    "SQLiteStore",
    "Store",
]


@dataclass(frozen=True, slots=True)
class RoomRow:
    #: the store's own key of the room; messages and members refer to it.
    pk: int
    tenant: str
    id: str
    name: str
    description: str
    created_at: str
    private: bool


@dataclass(frozen=True, slots=True)
class MessageRow:
    #: the message's position in the total order of its room (and of the whole store).
    seq: int
    id: str
    client: str
    user_id: str
    sent_at: str
    subject: str
    text: str


@dataclass(frozen=True, slots=True)
class IdempotencyRecord:
    endpoint: str
    request_hash: str
    response: str
    created_at: float


class Store(Protocol):
    """What the chat rules need from storage."""

    #: errors that mean "storage is unavailable" (full, read-only, locked, unreachable):
    #: nothing was changed, and the edge answers 503.
    unavailable: tuple[type[Exception], ...]

    def transaction(self) -> contextlib.AbstractContextManager[None]: ...
    def is_busy(self, exc: Exception) -> bool:
        """True when ``exc`` (one of ``unavailable``) only means another process holds the
        database for now: nothing was changed, and the same call may be tried again."""
        ...

    def close(self) -> None: ...

    def get_room(self, tenant: str, room_id: str) -> RoomRow | None: ...
    def create_room(
        self,
        tenant: str,
        room_id: str,
        name: str,
        description: str,
        created_at: str,
        private: bool,
        user_ids: Sequence[str],
    ) -> RoomRow: ...
    def delete_room(self, room: RoomRow) -> None: ...
    def purge_step(self) -> bool:
        """Remove some of what deleted rooms left behind; True while more remains."""
        ...

    def count_rooms(self, tenant: str) -> int: ...
    def list_rooms(
        self, tenant: str, user_id: str | None = None
    ) -> list[tuple[RoomRow, list[str]]]: ...

    def members(self, room: RoomRow) -> list[str]: ...
    def is_member(self, room: RoomRow, user_id: str) -> bool: ...
    def count_members(self, room: RoomRow) -> int: ...
    def add_member(self, room: RoomRow, user_id: str) -> bool: ...
    def remove_member(self, room: RoomRow, user_id: str) -> bool: ...
    def is_barred(self, room: RoomRow, user_id: str) -> bool: ...
    def set_barred(self, room: RoomRow, user_id: str, barred: bool) -> None: ...

    def add_message(
        self,
        room: RoomRow,
        message_id: str,
        client: str,
        user_id: str,
        sent_at: str,
        subject: str,
        text: str,
    ) -> int: ...
    def message_seq(self, room: RoomRow, message_id: str) -> int | None: ...
    def message_position(self, room: RoomRow, cursor: str) -> int: ...
    def messages(
        self,
        room: RoomRow,
        *,
        after_seq: int | None = None,
        before_seq: int | None = None,
        limit: int | None = None,
        latest: bool = False,
    ) -> list[MessageRow]: ...
    def count_messages_after(self, room: RoomRow, after_seq: int, cap: int) -> int: ...

    def get_idempotency(
        self, tenant: str, key: str, not_before: float
    ) -> IdempotencyRecord | None: ...
    def put_idempotency(
        self,
        tenant: str,
        key: str,
        endpoint: str,
        request_hash: str,
        response: str,
        created_at: float,
    ) -> None: ...
    def purge_idempotency(self, older_than: float) -> int: ...


#: Each entry brings a file from version i to i + 1. Never edit a released entry: append.
#: Statements are split on ";", so comments inside must not contain one.
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE rooms (
        pk          INTEGER PRIMARY KEY,
        tenant      TEXT NOT NULL,
        id          TEXT NOT NULL,
        name        TEXT NOT NULL,
        description TEXT NOT NULL,
        created_at  TEXT NOT NULL,
        private     INTEGER NOT NULL,
        UNIQUE (tenant, id)
    );
    -- position is the rowid: members are listed in the order they were added.
    CREATE TABLE members (
        position INTEGER PRIMARY KEY,
        tenant   TEXT NOT NULL,
        room_pk  INTEGER NOT NULL REFERENCES rooms (pk),
        user_id  TEXT NOT NULL,
        UNIQUE (room_pk, user_id)
    );
    CREATE INDEX members_by_user ON members (tenant, user_id, room_pk);
    -- A user kicked from a room may not Join it again until invited.
    CREATE TABLE barred (
        room_pk INTEGER NOT NULL REFERENCES rooms (pk),
        user_id TEXT NOT NULL,
        PRIMARY KEY (room_pk, user_id)
    ) WITHOUT ROWID;
    -- seq is the total order, AUTOINCREMENT so a seq is never reused, even after a room
    -- (and its latest messages) is deleted.
    CREATE TABLE messages (
        seq      INTEGER PRIMARY KEY AUTOINCREMENT,
        room_pk  INTEGER NOT NULL REFERENCES rooms (pk),
        id       TEXT NOT NULL,
        client   TEXT NOT NULL,
        user_id  TEXT NOT NULL,
        sent_at  TEXT NOT NULL,
        subject  TEXT NOT NULL,
        text     TEXT NOT NULL
    );
    CREATE INDEX messages_by_room ON messages (room_pk, seq);
    CREATE UNIQUE INDEX messages_by_id ON messages (id);
    CREATE TABLE idempotency (
        tenant       TEXT NOT NULL,
        key          TEXT NOT NULL,
        endpoint     TEXT NOT NULL,
        request_hash TEXT NOT NULL,
        response     TEXT NOT NULL,
        created_at   REAL NOT NULL,
        PRIMARY KEY (tenant, key)
    ) WITHOUT ROWID;
    CREATE INDEX idempotency_by_age ON idempotency (created_at);
    """,
    # v2: message ids are positions too (UUIDv7 sorts in time order), so a cursor that
    # is not itself a message of the room (a time, the nil UUID) resolves by id order.
    """
    CREATE INDEX messages_by_room_id ON messages (room_pk, id);
    """,
    # v3: a cheaper Send. AUTOINCREMENT wrote sqlite_sequence on every insert, and the
    # global index on id was one more B-tree per insert that (room_pk, id) makes
    # redundant (UUIDv7's random tail keeps ids unique). Without AUTOINCREMENT a new row
    # still gets a seq above every row present, which is all a room's order needs.
    """
    CREATE TABLE messages_v3 (
        seq      INTEGER PRIMARY KEY,
        room_pk  INTEGER NOT NULL REFERENCES rooms (pk),
        id       TEXT NOT NULL,
        client   TEXT NOT NULL,
        user_id  TEXT NOT NULL,
        sent_at  TEXT NOT NULL,
        subject  TEXT NOT NULL,
        text     TEXT NOT NULL
    );
    INSERT INTO messages_v3 (seq, room_pk, id, client, user_id, sent_at, subject, text)
        SELECT seq, room_pk, id, client, user_id, sent_at, subject, text FROM messages;
    DROP TABLE messages;
    ALTER TABLE messages_v3 RENAME TO messages;
    CREATE INDEX messages_by_room ON messages (room_pk, seq);
    CREATE INDEX messages_by_room_id ON messages (room_pk, id);
    DELETE FROM sqlite_sequence WHERE name = 'messages';
    """,
    # v4: a deleted room's messages are removed in steps after it (``purge_step``); its pk
    # stays here until then, so that no new room is given it.
    """
    CREATE TABLE purging (room_pk INTEGER PRIMARY KEY);
    """,
)

#: ms a call waits, holding up the event loop, for another process's write lock; the server
#: then retries with the loop free (``SQLiteStore.is_busy``) for up to ``LOCK_WAIT`` s.
BUSY_WAIT_MS = 20

#: messages of a deleted room removed per step (a few milliseconds of the event loop).
PURGE_CHUNK = 2000

#: cache bounds: past them a cache is emptied and refills with what is in use.
_MAX_CACHED_ROOMS = 10_000
_MAX_CACHED_MEMBERS = 100_000

#: commits between background checkpoints (a Send writes about 3 WAL pages of 4 KiB).
CHECKPOINT_EVERY = 250
#: WAL pages past which a commit checkpoints by itself (SQLite's default: 1,000), and the
#: size the WAL file is cut back to.
_BACKSTOP_PAGES = 4000
#: the background thread checkpoints again while a pass found more than this many new pages.
_CAUGHT_UP_PAGES = 30
_MAX_PASSES = 4

log = logging.getLogger("chatctl.server")

_ROOM_COLUMNS = "pk, tenant, id, name, description, created_at, private"
_MESSAGE_COLUMNS = "seq, id, client, user_id, sent_at, subject, text"


def _room(row: tuple[int, str, str, str, str, str, int]) -> RoomRow:
    return RoomRow(row[0], row[1], row[2], row[3], row[4], row[5], bool(row[6]))


def _create_private_file(path: str) -> None:
    """Create ``path`` with mode 0600 unless it exists: messages are nobody else's to read."""
    if path == ":memory:" or path.startswith("file:"):
        return
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return
    os.close(fd)


class SQLiteStore:
    """The SQLite implementation of ``Store``; one connection, used from one thread at a time."""

    unavailable: tuple[type[Exception], ...] = (sqlite3.OperationalError,)

    def __init__(self, path: str) -> None:
        _create_private_file(path)
        # isolation_level=None: no implicit transactions; transaction() says BEGIN itself.
        # check_same_thread=False: a test (or serve) may build the app on one thread and
        # run the event loop on another; calls never overlap.
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._depth = 0
        (mode,) = self._db.execute("PRAGMA journal_mode=WAL").fetchone()
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA foreign_keys=OFF")
        # Another process on the same file (a second server, a backup) waits, not fails:
        # up to 5 s while migrating at start; afterwards only briefly, on the event loop,
        # while the server waits longer between tries (``is_busy``).
        self._db.execute("PRAGMA busy_timeout=5000")
        self._rooms: dict[tuple[str, str], RoomRow] = {}
        self._members: set[tuple[int, str]] = set()
        self._data_version = -1
        #: a deleted room's messages may be left to purge (checked on the first step).
        self._purge_pending = True
        self._path = path
        self._checkpointer: _Checkpointer | None = None
        #: commits until the checkpoint thread is woken; never without a WAL (:memory:).
        self._until_checkpoint = -1
        self._migrate()
        self._db.execute(f"PRAGMA busy_timeout={BUSY_WAIT_MS}")
        if str(mode).lower() == "wal":
            (page_size,) = self._db.execute("PRAGMA page_size").fetchone()
            self._db.execute(f"PRAGMA wal_autocheckpoint = {_BACKSTOP_PAGES}")
            self._db.execute(f"PRAGMA journal_size_limit = {_BACKSTOP_PAGES * int(page_size)}")
            self._until_checkpoint = CHECKPOINT_EVERY

    def _committed(self) -> None:
        """Count a commit: wake the checkpoint thread, or finish what it has done."""
        checkpointer = self._checkpointer
        if checkpointer is not None and checkpointer.caught_up:
            # Only the pages committed since its last pass are left: copying them here
            # takes a fraction of a millisecond, and lets the next commit reset the WAL.
            checkpointer.caught_up = False
            with contextlib.suppress(sqlite3.Error):
                self._db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
        self._until_checkpoint -= 1
        if self._until_checkpoint == 0:
            self._until_checkpoint = CHECKPOINT_EVERY
            if checkpointer is None:
                checkpointer = self._checkpointer = _Checkpointer(self._path)
            checkpointer.wake()

    # -- housekeeping -------------------------------------------------------------------

    def is_busy(self, exc: Exception) -> bool:
        code = getattr(exc, "sqlite_errorcode", None)
        return code is not None and code & 0xFF in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)

    def _migrate(self) -> None:
        (version,) = self._db.execute("PRAGMA user_version").fetchone()
        if version > len(MIGRATIONS):
            raise RuntimeError(
                f"database schema version {version} is newer than this chatctl "
                f"(knows {len(MIGRATIONS)}); upgrade chatctl"
            )
        for number in range(version, len(MIGRATIONS)):
            with self.transaction():
                for statement in MIGRATIONS[number].split(";"):
                    if statement.strip():
                        self._db.execute(statement)
                # PRAGMA takes no parameters; number is an int we control.
                self._db.execute(f"PRAGMA user_version = {number + 1}")

    def _check_others(self) -> None:
        """Empty the caches if another connection has committed since the last check."""
        (version,) = self._db.execute("PRAGMA data_version").fetchone()
        if version != self._data_version:
            self._data_version = version
            self._rooms.clear()
            self._members.clear()

    @property
    def schema_version(self) -> int:
        (version,) = self._db.execute("PRAGMA user_version").fetchone()
        return int(version)

    def close(self) -> None:
        if self._checkpointer is not None:
            self._checkpointer.stop()
            self._checkpointer = None
        self._db.close()

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
        # IMMEDIATE: take the write lock now, so a busy file fails here and not mid-way.
        self._db.execute("BEGIN IMMEDIATE")
        self._depth = 1
        try:
            self._check_others()  # with the write lock held: nobody else commits now
            yield
        except BaseException:
            self._depth = 0
            self._rooms.clear()
            self._members.clear()
            self._db.execute("ROLLBACK")
            raise
        self._depth = 0
        self._db.execute("COMMIT")
        self._committed()

    # -- rooms --------------------------------------------------------------------------

    def get_room(self, tenant: str, room_id: str) -> RoomRow | None:
        self._check_others()
        key = (tenant, room_id)
        room = self._rooms.get(key)
        if room is not None:
            return room
        row = self._db.execute(
            f"SELECT {_ROOM_COLUMNS} FROM rooms WHERE tenant = ? AND id = ?", key
        ).fetchone()
        if not row:
            return None
        if len(self._rooms) >= _MAX_CACHED_ROOMS:
            self._rooms.clear()
        room = self._rooms[key] = _room(row)
        return room

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
            # Above every pk in use, a deleted room's still being purged included.
            cursor = self._db.execute(
                "INSERT INTO rooms (pk, tenant, id, name, description, created_at, private)"
                " VALUES (max(coalesce((SELECT max(pk) FROM rooms), 0),"
                " coalesce((SELECT max(room_pk) FROM purging), 0)) + 1, ?, ?, ?, ?, ?, ?)",
                (tenant, room_id, name, description, created_at, int(private)),
            )
            pk = cursor.lastrowid
            assert pk is not None
            room = RoomRow(pk, tenant, room_id, name, description, created_at, private)
            for user_id in user_ids:
                self.add_member(room, user_id)
        return room

    def delete_room(self, room: RoomRow) -> None:
        # A later room may get the same pk: forget every member answer (deletes are rare).
        self._rooms.pop((room.tenant, room.id), None)
        self._members.clear()
        with self.transaction():
            self._db.execute("DELETE FROM members WHERE room_pk = ?", (room.pk,))
            self._db.execute("DELETE FROM barred WHERE room_pk = ?", (room.pk,))
            self._db.execute("DELETE FROM rooms WHERE pk = ?", (room.pk,))
            # A small room's messages go now; a big room's first chunk, the rest in steps.
            if self._delete_messages(room.pk) == PURGE_CHUNK:
                self._db.execute("INSERT OR IGNORE INTO purging VALUES (?)", (room.pk,))
                self._purge_pending = True

    def _delete_messages(self, room_pk: int) -> int:
        """Delete up to PURGE_CHUNK of a room's messages; how many were deleted."""
        cursor = self._db.execute(
            "DELETE FROM messages WHERE seq IN"
            " (SELECT seq FROM messages WHERE room_pk = ? ORDER BY seq LIMIT ?)",
            (room_pk, PURGE_CHUNK),
        )
        return cursor.rowcount

    def purge_step(self) -> bool:
        """Remove the next chunk of a deleted room's messages; True while more remain."""
        if not self._purge_pending:
            return False
        row = self._db.execute("SELECT room_pk FROM purging LIMIT 1").fetchone()
        if row is None:
            self._purge_pending = False
            return False
        with self.transaction():
            if self._delete_messages(row[0]) < PURGE_CHUNK:
                self._db.execute("DELETE FROM purging WHERE room_pk = ?", (row[0],))
        return True

    def count_rooms(self, tenant: str) -> int:
        (n,) = self._db.execute("SELECT COUNT(*) FROM rooms WHERE tenant = ?", (tenant,)).fetchone()
        return int(n)

    def list_rooms(
        self, tenant: str, user_id: str | None = None
    ) -> list[tuple[RoomRow, list[str]]]:
        """Rooms in creation order, each with its members; only ``user_id``'s when given."""
        if user_id is None:
            rows = self._db.execute(
                f"SELECT {_ROOM_COLUMNS} FROM rooms WHERE tenant = ? ORDER BY pk", (tenant,)
            ).fetchall()
            member_rows = self._db.execute(
                "SELECT room_pk, user_id FROM members WHERE tenant = ? ORDER BY position",
                (tenant,),
            ).fetchall()
        else:
            rows = self._db.execute(
                f"SELECT {', '.join('r.' + c for c in _ROOM_COLUMNS.split(', '))}"
                " FROM members m JOIN rooms r ON r.pk = m.room_pk"
                " WHERE m.tenant = ? AND m.user_id = ? ORDER BY r.pk",
                (tenant, user_id),
            ).fetchall()
            member_rows = self._db.execute(
                "SELECT m.room_pk, m.user_id FROM members m"
                " WHERE m.room_pk IN (SELECT room_pk FROM members WHERE tenant = ? AND user_id = ?)"
                " ORDER BY m.position",
                (tenant, user_id),
            ).fetchall()
        by_room: dict[int, list[str]] = {}
        for room_pk, member in member_rows:
            by_room.setdefault(room_pk, []).append(member)
        return [(_room(row), by_room.get(row[0], [])) for row in rows]

    # -- members ------------------------------------------------------------------------

    def members(self, room: RoomRow) -> list[str]:
        rows = self._db.execute(
            "SELECT user_id FROM members WHERE room_pk = ? ORDER BY position", (room.pk,)
        ).fetchall()
        return [r[0] for r in rows]

    def is_member(self, room: RoomRow, user_id: str) -> bool:
        key = (room.pk, user_id)
        if key in self._members:
            return True
        row = self._db.execute(
            "SELECT 1 FROM members WHERE room_pk = ? AND user_id = ?", key
        ).fetchone()
        if row is None:
            return False
        if len(self._members) >= _MAX_CACHED_MEMBERS:
            self._members.clear()
        self._members.add(key)
        return True

    def count_members(self, room: RoomRow) -> int:
        (n,) = self._db.execute(
            "SELECT COUNT(*) FROM members WHERE room_pk = ?", (room.pk,)
        ).fetchone()
        return int(n)

    def add_member(self, room: RoomRow, user_id: str) -> bool:
        """Add at the end of the member list; False when already a member."""
        cursor = self._db.execute(
            "INSERT OR IGNORE INTO members (tenant, room_pk, user_id) VALUES (?, ?, ?)",
            (room.tenant, room.pk, user_id),
        )
        return cursor.rowcount > 0

    def remove_member(self, room: RoomRow, user_id: str) -> bool:
        self._members.discard((room.pk, user_id))
        cursor = self._db.execute(
            "DELETE FROM members WHERE room_pk = ? AND user_id = ?", (room.pk, user_id)
        )
        return cursor.rowcount > 0

    def is_barred(self, room: RoomRow, user_id: str) -> bool:
        row = self._db.execute(
            "SELECT 1 FROM barred WHERE room_pk = ? AND user_id = ?", (room.pk, user_id)
        ).fetchone()
        return row is not None

    def set_barred(self, room: RoomRow, user_id: str, barred: bool) -> None:
        if barred:
            self._db.execute(
                "INSERT OR IGNORE INTO barred (room_pk, user_id) VALUES (?, ?)", (room.pk, user_id)
            )
        else:
            self._db.execute(
                "DELETE FROM barred WHERE room_pk = ? AND user_id = ?", (room.pk, user_id)
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
        """Store a message; returns its seq. Durable once the transaction commits."""
        cursor = self._db.execute(
            "INSERT INTO messages (room_pk, id, client, user_id, sent_at, subject, text)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            (room.pk, message_id, client, user_id, sent_at, subject, text),
        )
        seq = cursor.lastrowid
        assert seq is not None
        if not self._depth:
            self._committed()  # autocommit: the statement was its own transaction
        return seq

    def message_seq(self, room: RoomRow, message_id: str) -> int | None:
        row = self._db.execute(
            "SELECT seq FROM messages WHERE id = ? AND room_pk = ?", (message_id, room.pk)
        ).fetchone()
        return int(row[0]) if row else None

    def message_position(self, room: RoomRow, cursor: str) -> int:
        """The seq of the last message whose id sorts at or before ``cursor``; 0 if none."""
        row = self._db.execute(
            "SELECT seq FROM messages WHERE room_pk = ? AND id <= ? ORDER BY id DESC LIMIT 1",
            (room.pk, cursor),
        ).fetchone()
        return int(row[0]) if row else 0

    def messages(
        self,
        room: RoomRow,
        *,
        after_seq: int | None = None,
        before_seq: int | None = None,
        limit: int | None = None,
        latest: bool = False,
    ) -> list[MessageRow]:
        """Messages strictly between the bounds, oldest first.

        With ``limit``: the first ``limit`` of them, or the last ``limit`` when ``latest``.
        Every variant walks the ``(room_pk, seq)`` index from one end; none scans the room.
        """
        where = "room_pk = ?"
        args: list[object] = [room.pk]
        if after_seq is not None:
            where += " AND seq > ?"
            args.append(after_seq)
        if before_seq is not None:
            where += " AND seq < ?"
            args.append(before_seq)
        order = "DESC" if latest else "ASC"
        sql = f"SELECT {_MESSAGE_COLUMNS} FROM messages WHERE {where} ORDER BY seq {order}"
        if limit is not None:
            sql += " LIMIT ?"
            args.append(limit)
        rows = [MessageRow(*row) for row in self._db.execute(sql, args)]
        if latest:
            rows.reverse()
        return rows

    def count_messages_after(self, room: RoomRow, after_seq: int, cap: int) -> int:
        """How many messages follow ``after_seq``, counting no further than ``cap``."""
        (n,) = self._db.execute(
            "SELECT COUNT(*) FROM (SELECT 1 FROM messages WHERE room_pk = ? AND seq > ? LIMIT ?)",
            (room.pk, after_seq, cap),
        ).fetchone()
        return int(n)

    # -- idempotency keys ---------------------------------------------------------------

    def get_idempotency(self, tenant: str, key: str, not_before: float) -> IdempotencyRecord | None:
        row = self._db.execute(
            "SELECT endpoint, request_hash, response, created_at FROM idempotency"
            " WHERE tenant = ? AND key = ? AND created_at >= ?",
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
        # REPLACE: an expired record of the same key may still be there until purged.
        self._db.execute(
            "INSERT OR REPLACE INTO idempotency"
            " (tenant, key, endpoint, request_hash, response, created_at)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            (tenant, key, endpoint, request_hash, response, created_at),
        )

    def purge_idempotency(self, older_than: float) -> int:
        cursor = self._db.execute("DELETE FROM idempotency WHERE created_at < ?", (older_than,))
        return cursor.rowcount


def _sync_file(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        getattr(os, "fdatasync", os.fsync)(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class _Checkpointer:
    """A thread that checkpoints the WAL when woken, off the event loop.

    SQLite releases the GIL while it copies pages and syncs, so the event loop runs on.
    """

    def __init__(self, path: str) -> None:
        self._path = path
        self._wake = threading.Event()
        self._stopping = False
        #: set when a round of checkpoints has nearly caught up with the writer.
        self.caught_up = False
        self._thread = threading.Thread(
            target=self._run, name="chatctl-sqlite-checkpoint", daemon=True
        )
        self._thread.start()

    def wake(self) -> None:
        self._wake.set()

    def stop(self) -> None:
        self._stopping = True
        self._wake.set()
        # A checkpoint in progress finishes first; a stuck disk must not hang shutdown.
        self._thread.join(timeout=5)

    def _run(self) -> None:
        try:
            db = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as exc:
            log.warning("checkpoint thread cannot open the database: %s", exc)
            return
        try:
            while True:
                self._wake.wait()
                self._wake.clear()
                if self._stopping:
                    return
                try:
                    self._round(db)
                except sqlite3.Error as exc:
                    # The writer's own threshold (_BACKSTOP_PAGES) still bounds the WAL.
                    log.debug("background checkpoint failed: %s", exc)
        finally:
            db.close()

    def _round(self, db: sqlite3.Connection) -> None:
        """Checkpoint until a pass finds few new pages (the writer goes on committing)."""
        done = -1
        for _ in range(_MAX_PASSES):
            busy, _log, checkpointed = db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
            if busy or self._stopping:
                return
            new = checkpointed - done if done >= 0 and checkpointed >= done else checkpointed
            done = checkpointed
            if new <= _CAUGHT_UP_PAGES:
                break
        # SQLite syncs the database file only in a checkpoint no commit overlapped, the
        # writer's last one: sync the pages copied so far here, so that it has only its
        # own few to sync.
        _sync_file(self._path)
        self.caught_up = True
