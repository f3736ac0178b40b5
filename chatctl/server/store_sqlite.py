"""The SQLite store: rooms, members, messages and idempotency keys in one file.

``chatctl serve --db PATH`` (and the embedded local server) use it. It implements
``store.Store`` in-process, with two connections to the file:

- **Writes** (every Send, and every ``write``: Create, Invite, Kick, Leave, Delete, a
  Join's admission, purge steps) go to one writer thread, which takes whatever is queued
  and does it in one transaction (group commit): ``BEGIN IMMEDIATE``, each change in turn
  (a savepoint each where a refusal must undo it), ``COMMIT``; only then are the callers
  answered and the streams told, in commit order, on the event loop. The event loop never
  waits for a commit, a checkpoint or another process's lock. One writer makes the room's
  order: a message gets its id and seq when the writer reaches it, so ids sort in seq order.
  Measured against running everything on the event loop: see docs/architecture.md, "How it
  is built".
- **Reads** (History, List, a Join's replay) run on the event loop's own connection: each
  statement a snapshot of what is committed, well under a millisecond.

What else it adds to the shared SQL (``sql.Session``):

- **Durability**: WAL with ``synchronous=FULL`` by default (``--sync full``): each group
  commit's WAL frames are fsynced before any of its callers is answered, so an answered
  change survives a power cut or a kernel crash (tests/faults/test_power.py cuts the
  power under a FUSE filesystem that forgets what was not fsynced). One fsync per batch,
  not per change, keeps the cost small (docs/benchmarks.md). ``--sync normal`` answers
  once the commit is in the WAL in the OS page cache: it survives ``kill -9`` of the
  process, not a power cut; the last answered changes may be lost then.
- **Another process on the file** (a second server, a backup, a ``sqlite3`` shell): the
  writer waits for its lock up to the store's timeout (``--db-timeout``), then fails what
  it holds with ``Unavailable`` (a 503), nothing written; a read waits ``BUSY_WAIT_MS`` at
  a time, and is tried again with the loop free between tries.
- **Checkpoints** (copying the WAL back into the database file, with fsyncs) run in the
  writer's commits, off the event loop, at SQLite's default threshold (1,000 pages);
  ``journal_size_limit`` cuts the file back afterwards, so the WAL stays a few MiB.
- **Caches**: the writer keeps room rows (immutable until deleted) and "is a member"
  answers in memory, since looking them up was a fifth of a Send. Its own changes update
  them; a commit by any other process empties them, as ``PRAGMA data_version`` tells,
  checked at the start of every batch, so a batch reads exactly what an uncached store
  would.
- **Deleting a big room** is cut into steps: Delete removes the room and its first
  ``sql.PURGE_CHUNK`` messages in one transaction, and ``purge_step`` removes the rest a
  chunk at a time. Until then the room's pk is listed in ``purging``, so no new room takes
  it.
- **Schema versions** (``migrations``: expand, then contract): the ``chatctl_schema``
  table holds how many entries of ``MIGRATIONS`` have been applied, ``PRAGMA
  user_version`` the floor older releases read; opening an older file applies the rest,
  in order, one transaction each, before anything else runs (a file is one machine's:
  ``serve`` migrates it itself, so the quick start keeps working across upgrades).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import queue
import sqlite3
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from chatctl import __version__
from chatctl.errors import ChatctlError
from chatctl.server import sql
from chatctl.server.domain import (
    EventNote,
    Fanout,
    Key,
    MessageRow,
    NewMessage,
    Note,
    Published,
    Refused,
    RoomListener,
    RoomRow,
    Unavailable,
)
from chatctl.server.migrations import (
    Policy,
    SchemaState,
    floor,
    judge,
    too_old,
)
from chatctl.server.store import SendResult, run_to_end
from chatctl.wire import UUIDv7, message_frame, rfc3339

__all__ = ["MIGRATIONS", "BusyDatabase", "SQLiteSession", "SQLiteStore", "hold_open"]

T = TypeVar("T")

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
    # v5: the user whose user token created the room (issue 13: the creator may kick and
    # delete). Rooms made before have none, as rooms an admin token makes: only admin
    # tokens may kick from or delete them.
    """
    ALTER TABLE rooms ADD COLUMN creator TEXT;
    """,
    # v6: quotas per user inside a tenant (issue 23): who added each member (a member may
    # add only so many to a room), the rooms each user made, and the message bytes each
    # user (or the tenant's admin tokens, as '') stored on a UTC day.
    """
    ALTER TABLE members ADD COLUMN invited_by TEXT;
    CREATE INDEX members_by_inviter ON members (room_pk, invited_by);
    CREATE INDEX rooms_by_creator ON rooms (tenant, creator);
    CREATE TABLE daily_bytes (
        tenant  TEXT NOT NULL,
        day     TEXT NOT NULL,
        user_id TEXT NOT NULL,
        bytes   INTEGER NOT NULL,
        PRIMARY KEY (day, tenant, user_id)
    ) WITHOUT ROWID;
    """,
    # v7: messages can be deleted (issue 25, DeleteMessage): the row stays, as the
    # position its id and seq are for cursors, with its text and subject erased; deleted_at
    # is when (NULL: not deleted), and every read of messages leaves such a row out.
    """
    ALTER TABLE messages ADD COLUMN deleted_at TEXT;
    """,
    # retention (issue 26): a room's own retention in seconds (NULL: the server's), and
    # the last message retention removed from it (what a cursor older than it meets).
    """
    CREATE TABLE retention (
        room_pk     INTEGER PRIMARY KEY,
        seconds     INTEGER,
        expired_seq INTEGER NOT NULL DEFAULT 0,
        expired_id  TEXT NOT NULL DEFAULT '',
        expired_at  TEXT NOT NULL DEFAULT ''
    );
    """,
    # v9: which release applied each migration from here on, and when (``migrate`` fills
    # it): what ``serve`` names when a newer release's schema is refused.
    """
    CREATE TABLE chatctl_migrations (
        number     INTEGER PRIMARY KEY,
        release    TEXT NOT NULL,
        applied_at TEXT NOT NULL
    );
    """,
)

#: ms a read waits, holding up the event loop, for another process's lock; the read is
#: then tried again with the loop free, for up to the store's timeout.
BUSY_WAIT_MS = 20
#: changes the writer takes into one transaction at most.
BATCH = 512
#: cache bounds: past them a cache is emptied and refills with what is in use.
_MAX_CACHED_ROOMS = 10_000
_MAX_CACHED_MEMBERS = 100_000

log = logging.getLogger("chatctl.server")

_INSERT_MESSAGE = (
    "INSERT INTO messages (room_pk, id, client, user_id, sent_at, subject, text)"
    " VALUES (?, ?, ?, ?, ?, ?, ?)"
)
# Above every pk in use, a deleted room's still being purged included.
_INSERT_ROOM = (
    "INSERT INTO rooms (pk, tenant, id, name, description, created_at, private, creator)"
    " VALUES (max(coalesce((SELECT max(pk) FROM rooms), 0),"
    " coalesce((SELECT max(room_pk) FROM purging), 0)) + 1, ?, ?, ?, ?, ?, ?, ?)"
)
_DELETE_CHUNK = (
    "DELETE FROM messages WHERE seq IN"
    " (SELECT seq FROM messages WHERE room_pk = ? ORDER BY seq LIMIT ?)"
)
_POSITION = "SELECT seq FROM messages WHERE room_pk = ? AND id <= ? ORDER BY id DESC LIMIT 1"
_DELETE_ROOM = "DELETE FROM rooms WHERE pk = ?"
_TO_PURGE = "INSERT INTO purging VALUES (?) ON CONFLICT DO NOTHING"
_NEXT_TO_PURGE = "SELECT room_pk FROM purging LIMIT 1"


def _create_private_file(path: str) -> None:
    """Create ``path`` with mode 0600 unless it exists: messages are nobody else's to read."""
    if path == ":memory:" or path.startswith("file:"):
        return
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return
    os.close(fd)


class BusyDatabase(ChatctlError):
    """A server has the database open (restore), or a restore holds it (serve)."""


def hold_open(path: str) -> int | None:
    """Mark ``path`` as in use by a server: a shared ``flock`` on the file, held until the
    descriptor returned is closed. None for an in-memory database. A restore in progress
    (the exclusive lock) is a ``BusyDatabase``."""
    if path == ":memory:" or path.startswith("file:"):
        return None
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise BusyDatabase(
            f"the database {path} is being restored (chatctl serve restore holds it)",
            hint="start the server again once the restore has finished",
        ) from None
    return fd


#: ``--sync``: how a commit reaches the disk before its callers are answered (the SQLite
#: ``synchronous`` setting in WAL mode): ``full`` fsyncs the WAL at every commit;
#: ``normal`` only at checkpoints (a power cut loses the commits since the last one).
SYNC_MODES = ("full", "normal")


def _connect(path: str, busy_ms: int, sync: str = "full") -> sqlite3.Connection:
    # isolation_level=None: no implicit transactions; BEGIN is said explicitly.
    # check_same_thread=False: the loop's connection may be made on another thread (a
    # test builds the app before the loop runs); the writer's is used by its thread only.
    db = sqlite3.connect(
        path, isolation_level=None, check_same_thread=False, uri=path.startswith("file:")
    )
    if sync not in SYNC_MODES:
        raise ValueError(f"unknown sync mode {sync!r}")
    db.execute(f"PRAGMA synchronous={sync.upper()}")
    db.execute("PRAGMA foreign_keys=OFF")
    db.execute(f"PRAGMA busy_timeout={busy_ms}")
    return db


def _is_busy(exc: sqlite3.Error) -> bool:
    """True when ``exc`` only means another process holds the database for now."""
    code = getattr(exc, "sqlite_errorcode", None)
    return code is not None and code & 0xFF in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)


#: the count of MIGRATIONS releases before 0.2.0 knew: ``migrations.floor``'s legacy.
LEGACY = 6
_HAS_TABLE = "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?"


def schema_state(db: sqlite3.Connection) -> SchemaState:
    """What the file records (``migrations``): ``user_version`` is the floor, and the
    ``chatctl_schema`` table (made by 0.2.0 on) the count applied."""
    (version,) = db.execute("PRAGMA user_version").fetchone()
    applied = int(version)
    if db.execute(_HAS_TABLE, ("chatctl_schema",)).fetchone():
        row = db.execute("SELECT applied FROM chatctl_schema").fetchone()
        if row is not None:
            applied = max(applied, int(row[0]))
    return SchemaState(applied, int(version))


def migrate(db: sqlite3.Connection, state: SchemaState) -> SchemaState:
    """Apply the migrations the file lacks, in order, one transaction each (up to 5 s for
    another process's lock); the state after."""
    for number in range(state.applied, len(MIGRATIONS)):
        db.execute("BEGIN IMMEDIATE")
        try:
            for statement in MIGRATIONS[number].split(";"):
                if statement.strip():
                    db.execute(statement)
            if db.execute(_HAS_TABLE, ("chatctl_migrations",)).fetchone():
                db.execute(
                    "INSERT OR REPLACE INTO chatctl_migrations VALUES (?, ?, ?)",
                    (number + 1, __version__, rfc3339(time.time_ns())),
                )
            db.execute("CREATE TABLE IF NOT EXISTS chatctl_schema (applied INTEGER NOT NULL)")
            db.execute("DELETE FROM chatctl_schema")
            db.execute("INSERT INTO chatctl_schema (applied) VALUES (?)", (number + 1,))
            # PRAGMA takes no parameters; the floor is an int we computed.
            db.execute(f"PRAGMA user_version = {floor(MIGRATIONS, number + 1, LEGACY)}")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")
    return schema_state(db)


class _Unsent(Exception):
    """A Send that stores nothing (a refusal, or a key's first answer): undo, then answer."""

    def __init__(self, result: SendResult) -> None:
        super().__init__()
        self.result = result


class _NoFanout:
    def deliver(self, note: Note) -> None:
        pass

    def listening(self, tenant: str, room_id: str) -> bool:
        return False

    def interrupt(self, reason: str) -> None:
        pass

    def resume(self) -> None:
        pass

    def let_in(self, note: EventNote) -> None:
        pass

    def listen_through(self, listener: RoomListener) -> None:
        pass


class SQLiteSession(sql.Session):
    """The shared SQL on one connection: the loop's (reads), or the writer's, with its
    caches (``caches``)."""

    def __init__(self, db: sqlite3.Connection, caches: _WriterState | None = None) -> None:
        super().__init__()
        self._db = db
        self._caches = caches

    async def _rows(self, sql: str, args: sql.Args) -> list[tuple[Any, ...]]:
        return self._db.execute(sql, args).fetchall()

    async def _row(self, sql: str, args: sql.Args) -> tuple[Any, ...] | None:
        row: tuple[Any, ...] | None = self._db.execute(sql, args).fetchone()
        return row

    async def _change(self, sql: str, args: sql.Args) -> int:
        return self._db.execute(sql, args).rowcount

    def room(self, tenant: str, room_id: str) -> RoomRow | None:
        caches = self._caches
        key = (tenant, room_id)
        if caches is not None:
            room = caches.rooms.get(key)
            if room is not None:
                return room
        row = self._db.execute(sql.ROOM, key).fetchone()
        if not row:
            return None
        room = sql.room_row(row)
        if caches is not None:
            if len(caches.rooms) >= _MAX_CACHED_ROOMS:
                caches.rooms.clear()
            caches.rooms[key] = room
        return room

    def member(self, room: RoomRow, user_id: str) -> bool:
        caches = self._caches
        key = (room.pk, user_id)
        if caches is not None and key in caches.members:
            return True
        if self._db.execute(sql.IS_MEMBER, key).fetchone() is None:
            return False
        if caches is not None:
            if len(caches.members) >= _MAX_CACHED_MEMBERS:
                caches.members.clear()
            caches.members.add(key)
        return True

    async def get_room(self, tenant: str, room_id: str) -> RoomRow | None:
        return self.room(tenant, room_id)

    async def is_member(self, room: RoomRow, user_id: str) -> bool:
        return self.member(room, user_id)

    async def remove_member(self, room: RoomRow, user_id: str) -> bool:
        if self._caches is not None:
            self._caches.members.discard((room.pk, user_id))
        return await super().remove_member(room, user_id)

    async def erase_message(self, room: RoomRow, message: MessageRow, at: str) -> bool:
        erased = await super().erase_message(room, message, at)
        if erased and self._caches is not None:
            self._caches.erased = True
        return erased

    async def _insert_room(self, room: RoomRow) -> int:
        values = (room.tenant, room.id, room.name, room.description, room.created_at)
        pk = self._db.execute(_INSERT_ROOM, (*values, int(room.private), room.creator)).lastrowid
        assert pk is not None
        return pk

    async def delete_room(self, room: RoomRow) -> None:
        # A later room may get the same pk: forget every cached answer (deletes are rare).
        if self._caches is not None:
            self._caches.clear()
        await self._forget_room(room)
        self._db.execute(_DELETE_ROOM, (room.pk,))
        # A small room's messages go now; a big room's first chunk, the rest in steps.
        if self._db.execute(_DELETE_CHUNK, (room.pk, sql.PURGE_CHUNK)).rowcount == sql.PURGE_CHUNK:
            self._db.execute(_TO_PURGE, (room.pk,))
            if self._caches is not None:
                self._caches.purge_pending = True

    async def insert_imported(self, room: RoomRow, message: MessageRow) -> int:
        m = message
        values = (room.pk, m.id, m.client, m.user_id, m.sent_at, m.subject, m.text)
        seq = self._db.execute(_INSERT_MESSAGE, values).lastrowid
        assert seq is not None
        return seq

    async def message_position(self, room: RoomRow, cursor: str) -> int:
        """The seq of the last message whose id sorts at or before ``cursor``; 0 if none
        (ids made by one writer sort in seq order)."""
        row = self._db.execute(_POSITION, (room.pk, cursor)).fetchone()
        return int(row[0]) if row else 0

    def _claimed(self, key: Key, answer: str) -> bool:
        return self._db.execute(sql.CLAIM_KEY, sql.claim_args(key, answer)).fetchone() is not None

    def send(self, tenant: str, new: NewMessage, key: Key | None, ids: UUIDv7) -> SendResult:
        """A Send, inside the writer's transaction; ``_Unsent`` when nothing is stored (the
        writer then undoes what it did, the key's claim)."""
        # Made when the writer reaches it: ids sort in the order the room takes them.
        message = new.to_wire(*ids.stamp())
        answer = message_frame(message)
        if key is not None and not self._claimed(key, answer):
            prior = self._db.execute(sql.PRIOR, (key.tenant, key.key, key.not_before))
            raise _Unsent(SendResult(key.replay(*prior.fetchone()), replayed=True))
        room = self.room(tenant, new.room_id)
        if room is None:
            raise _Unsent(SendResult(None, room_found=False))
        if not self.member(room, new.user_id):
            raise _Unsent(SendResult(None, private=room.private))
        cursor = self._db.execute(
            _INSERT_MESSAGE,
            (
                room.pk,
                message["id"],
                message["client"],
                message["user_id"],
                message["sent_at"],
                message["subject"],
                message["text"],
            ),
        )
        assert cursor.lastrowid is not None
        self.publish(Published(tenant, room.id, cursor.lastrowid, answer, new.user_id))
        return SendResult(answer)


@dataclass
class _Job:
    """One change for the writer: what to do, and where to hand the outcome."""

    run: Callable[[SQLiteSession], Any]
    #: the change may be refused part-way, so it runs in a savepoint.
    undoable: bool
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[Any]
    #: by ``time.monotonic()``: past it, the change fails rather than waits on.
    deadline: float
    notes: list[Note] = field(default_factory=list)
    outcome: Any = None
    error: BaseException | None = None


_STOP = object()


class SQLiteStore:
    """``store.Store`` on one SQLite file: reads on the event loop, writes on one thread."""

    def __init__(
        self,
        path: str,
        fanout: Fanout | None = None,
        *,
        timeout: float = 5.0,
        migrate: Policy = "all",
        sync: str = "full",
    ) -> None:
        _create_private_file(path)
        # A shared flock for the store's life: ``chatctl serve restore`` refuses while held
        # (``backup``).
        self._held = hold_open(path)
        if path == ":memory:":  # one database for both connections, gone with the store
            path = f"file:chatctl-{id(self):x}?mode=memory&cache=shared"
        self.timeout = timeout
        self._fanout: Fanout = fanout or _NoFanout()
        # Up to 5 s for another process's lock while migrating at start; then a read waits
        # only briefly at a time, and the writer up to each change's deadline.
        self.sync = sync
        self._db = _connect(path, 5000, sync)
        (mode,) = self._db.execute("PRAGMA journal_mode=WAL").fetchone()
        self._migrate(path, migrate)
        self._db.execute(f"PRAGMA busy_timeout={BUSY_WAIT_MS}")
        self._reader = SQLiteSession(self._db)
        self._state = _WriterState()
        self._ids = UUIDv7()
        self._jobs: queue.SimpleQueue[_Job | object] = queue.SimpleQueue()
        self._wdb = _connect(path, int(timeout * 1000), sync)
        # What a change removes (a deleted message's text, a deleted room's messages) is
        # zeroed in the file, not left in its free space, whatever SQLite's build default.
        self._wdb.execute("PRAGMA secure_delete = ON")
        if str(mode).lower() == "wal":
            # After a checkpoint the WAL file is cut back to this (from a burst's growth).
            (page_size,) = self._db.execute("PRAGMA page_size").fetchone()
            for db in (self._db, self._wdb):
                db.execute(f"PRAGMA journal_size_limit = {4 * 1000 * int(page_size)}")
        self._writer = threading.Thread(
            target=self._write_loop, name="chatctl-sqlite-writer", daemon=True
        )
        self._writer.start()

    @classmethod
    def open(
        cls,
        path: str,
        fanout: Fanout,
        *,
        timeout: float,
        migrate: Policy = "all",
        sync: str = "full",
    ) -> SQLiteStore:
        """The store on ``path``, or a ChatctlError saying why it cannot be opened."""
        try:
            return cls(path, fanout, timeout=timeout, migrate=migrate, sync=sync)
        except (OSError, sqlite3.Error) as exc:
            raise ChatctlError(
                f"cannot open the database {path}: {exc}",
                hint="the file and its directory must be writable (SQLite writes a WAL beside"
                " it); choose another with --db PATH",
            ) from None

    def _migrate(self, path: str, policy: Policy) -> None:
        state = schema_state(self._db)
        verdict = judge(state, len(MIGRATIONS), path)
        if verdict == "newer":
            log.info(
                "database %s has schema %d, newer than this chatctl's %d and compatible"
                " with it",
                path, state.applied, len(MIGRATIONS),
            )  # fmt: skip
        elif verdict == "older":
            if policy == "new" and not state.empty:
                raise too_old(state, len(MIGRATIONS), path)
            migrate(self._db, state)

    @property
    def schema_version(self) -> int:
        """How many of ``MIGRATIONS`` the file has had applied."""
        return schema_state(self._db).applied

    async def start(self) -> None:
        """Nothing to open: the file was opened (and migrated) by the constructor."""

    async def close(self) -> None:
        self.close_now()

    def close_now(self) -> None:
        """Let the writer finish what it holds (a stuck disk must not hang shutdown), then
        close both connections."""
        if self._writer.is_alive():
            self._jobs.put(_STOP)
            self._writer.join(timeout=max(5.0, self.timeout))
        self._db.close()
        if self._held is not None:
            os.close(self._held)
            self._held = None

    # -- the Store operations -----------------------------------------------------------

    async def read(self, work: Callable[[sql.Session], Awaitable[T]]) -> T:
        # On the event loop only: inside a write's work (the writer's thread) this fails,
        # and the write with it (``store.run_to_end``), as on PostgreSQL.
        asyncio.get_running_loop()
        deadline = time.monotonic() + self.timeout
        pause = 0.005
        while True:
            try:
                return await work(self._reader)
            except sqlite3.OperationalError as exc:
                if not _is_busy(exc) or time.monotonic() >= deadline:
                    raise Unavailable(str(exc)) from exc
            await asyncio.sleep(pause)
            pause = min(pause * 2, 0.1)

    async def write(self, work: Callable[[sql.Session], Awaitable[T]]) -> T:
        result: T = await self._submit(lambda session: run_to_end(work(session)), undoable=True)
        return result

    async def send(self, tenant: str, new: NewMessage, key: Key | None) -> SendResult:
        result: SendResult = await self._submit(
            lambda session: session.send(tenant, new, key, self._ids),
            # A key's claim is undone if nothing is stored; a plain Send does nothing then.
            undoable=key is not None,
        )
        return result

    async def send_many(
        self,
        tenant: str,
        messages: Sequence[tuple[NewMessage, Key | None]],
        *,
        stop: bool = False,
    ) -> list[SendResult]:
        def run(session: SQLiteSession) -> list[SendResult]:
            db = self._wdb
            results = []
            for new, key in messages:
                # Only a key's claim can need undoing: a key-less refusal writes nothing.
                if key is not None:
                    db.execute("SAVEPOINT one")
                stored = False
                try:
                    result = session.send(tenant, new, key, self._ids)
                    stored = True
                except _Unsent as unsent:
                    result = unsent.result
                except Refused as refusal:  # the key was used with another request
                    result = SendResult(None, refusal=refusal)
                if key is not None:
                    if not stored:
                        db.execute("ROLLBACK TO one")
                    db.execute("RELEASE one")
                results.append(result)
                if stop and result.answer is None:
                    break
            return results

        results: list[SendResult] = await self._submit(run, undoable=True)
        return results

    async def purge_step(self) -> bool:
        """Remove the next chunk of a deleted room's messages; True while more remain."""
        if not self._state.purge_pending:
            return False
        more: bool = await self._submit(self._purge, undoable=False)
        return more

    def _purge(self, session: SQLiteSession) -> bool:
        db = self._wdb
        row = db.execute(_NEXT_TO_PURGE).fetchone()
        if row is None:
            self._state.purge_pending = False
            return False
        if db.execute(_DELETE_CHUNK, (row[0], sql.PURGE_CHUNK)).rowcount < sql.PURGE_CHUNK:
            db.execute(sql.PURGED, (row[0],))
        return True

    # -- the writer ---------------------------------------------------------------------

    async def _submit(self, run: Callable[[SQLiteSession], Any], *, undoable: bool) -> Any:
        loop = asyncio.get_running_loop()
        job = _Job(run, undoable, loop, loop.create_future(), time.monotonic() + self.timeout)
        self._jobs.put(job)
        return await job.future

    def _write_loop(self) -> None:
        session = SQLiteSession(self._wdb, self._state)
        try:
            while True:
                first = self._jobs.get()
                if first is _STOP:
                    return
                assert isinstance(first, _Job)
                jobs = [first]
                stop = False
                while len(jobs) < BATCH:
                    try:
                        job = self._jobs.get_nowait()
                    except queue.Empty:
                        break
                    if job is _STOP:
                        stop = True
                        break
                    assert isinstance(job, _Job)
                    jobs.append(job)
                try:
                    self._batch(session, jobs)
                except Exception:  # a bug: its callers get a 500, the writer goes on
                    log.exception("the SQLite writer failed a batch")
                    for job in jobs:
                        if job.error is None and job.outcome is None:
                            job.error = RuntimeError("the SQLite writer failed")
                    self._answer(jobs)
                if stop:
                    return
        finally:
            self._wdb.close()

    def _batch(self, session: SQLiteSession, jobs: list[_Job]) -> None:
        """Do ``jobs`` in one transaction, then answer them on their loop."""
        db = self._wdb
        state = self._state
        now = time.monotonic()
        late = [job for job in jobs if job.deadline <= now]
        if late:
            self._answer([job for job in late if _failed(job, "database is locked")])
            jobs = [job for job in jobs if job.deadline > now]
            if not jobs:
                return
        try:
            # Waits (this thread only) for another process's write lock, up to the
            # earliest deadline.
            wait_ms = max(1, int((min(job.deadline for job in jobs) - now) * 1000))
            db.execute(f"PRAGMA busy_timeout={wait_ms}")
            db.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            self._answer([job for job in jobs if _failed(job, str(exc))])
            return
        try:
            (version,) = db.execute("PRAGMA data_version").fetchone()
            if version != state.data_version:  # another process committed
                state.data_version = version
                state.clear()
            for job in jobs:
                self._do(session, job)
            # With synchronous=FULL this returns once the WAL is fsynced: one fsync for
            # the whole batch, before any of its callers is answered.
            db.execute("COMMIT")
        except sqlite3.Error as exc:
            # Full, read-only, I/O: nothing of the batch is kept, and every one of its
            # callers hears so.
            with contextlib.suppress(sqlite3.Error):
                db.execute("ROLLBACK")
            state.clear()
            state.erased = False
            self._answer([job for job in jobs if _failed(job, str(exc))])
            return
        self._answer(jobs)
        if state.erased:
            state.erased = False
            self._forget_erased()

    def _forget_erased(self) -> None:
        """After a message was deleted: copy the WAL into the file and cut it to nothing,
        so that its old text is in neither (``secure_delete`` zeroes it in the file's
        pages). A read holding an older snapshot makes this wait a little, then leaves it
        to the next checkpoint, which overwrites those frames."""
        with contextlib.suppress(sqlite3.Error):
            self._wdb.execute(f"PRAGMA busy_timeout={BUSY_WAIT_MS}")
            self._wdb.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def _do(self, session: SQLiteSession, job: _Job) -> None:
        db = self._wdb
        session.notes = job.notes
        if job.undoable:
            db.execute("SAVEPOINT change")
        try:
            job.outcome = job.run(session)
        except sqlite3.Error:
            raise  # the transaction is in doubt: the batch fails
        except Exception as exc:  # a refusal (or a bug): this change only is undone
            if isinstance(exc, _Unsent):
                job.outcome = exc.result
            else:
                job.error = exc
            job.notes.clear()
            if job.undoable:
                db.execute("ROLLBACK TO change")
                self._state.clear()  # what the caches learnt may be undone too
        if job.undoable:
            db.execute("RELEASE change")

    def _answer(self, jobs: list[_Job]) -> None:
        """Hand the outcomes to the event loops that wait for them, in commit order."""
        by_loop: dict[asyncio.AbstractEventLoop, list[_Job]] = {}
        for job in jobs:
            by_loop.setdefault(job.loop, []).append(job)
        for loop, answered in by_loop.items():
            with contextlib.suppress(RuntimeError):  # that loop has closed: nobody waits
                loop.call_soon_threadsafe(self._finish, answered)

    def _finish(self, jobs: list[_Job]) -> None:
        for job in jobs:
            # Committed: only now may anyone hear of it, and then its caller.
            for note in job.notes:
                self._fanout.deliver(note)
            if job.future.cancelled():
                continue
            if job.error is not None:
                job.future.set_exception(job.error)
            else:
                job.future.set_result(job.outcome)


class _WriterState:
    """What the writer remembers between batches: its caches, and whether a deleted room
    may have messages left to purge."""

    def __init__(self) -> None:
        self.rooms: dict[tuple[str, str], RoomRow] = {}
        self.members: set[tuple[int, str]] = set()
        self.data_version = -1
        self.purge_pending = True
        #: a message was deleted in this batch: its old text may be in the WAL's frames.
        self.erased = False

    def clear(self) -> None:
        self.rooms.clear()
        self.members.clear()


def _failed(job: _Job, cause: str) -> bool:
    """Mark ``job`` failed by the storage (nothing of it kept); True, for filtering."""
    job.error = Unavailable(cause)
    job.notes.clear()
    return True
