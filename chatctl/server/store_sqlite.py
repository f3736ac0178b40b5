"""The SQLite store: rooms, members, messages and idempotency keys in one file.

``chatctl serve --db PATH`` (and the embedded local server) use it. It implements
``store.Store`` in-process: every operation runs on the event loop thread, one at a time
on one connection, each well under a millisecond (a thread hop would cost more than it
saves; measured in the README's "How it is built"). What it adds to the shared SQL
(``sql.Session``):

- **Send** on the hot path is one INSERT in autocommit (a single statement is atomic and
  durable by itself), with the room and the membership answered from memory; with an
  Idempotency-Key, the key, the checks and the insert are one ``BEGIN IMMEDIATE``
  transaction. Fan-out follows the commit, to this process's streams.
- **Durability**: WAL with ``synchronous=NORMAL``. A commit is in the WAL (the OS page
  cache) before ``commit`` returns, so it survives ``kill -9`` of the process; it may not
  survive a power loss, which the server does not promise.
- **Another process on the file** (a second server, a backup, a ``sqlite3`` shell): each
  statement waits for its lock only ``BUSY_WAIT_MS``, holding up the loop; the operation
  is then tried again after an await, with the loop free, for up to the store's timeout
  (``--db-timeout``), before ``Unavailable`` (a 503). A busy operation changed nothing.
- **Checkpoints** (copying the WAL back into the database file, with two fsyncs) would
  otherwise run inside whichever commit crosses SQLite's 1,000-page threshold, stalling
  the event loop for milliseconds, up to tens of them, every few hundred Sends. Instead,
  every ``CHECKPOINT_EVERY`` commits a background thread with its own connection
  checkpoints (PASSIVE: it never blocks the writer), again until it is nearly caught up;
  the next commit then checkpoints the few pages left itself, which lets the commit after
  it start the WAL over from the beginning. (A checkpoint on another thread alone never
  finds a busy WAL quiet enough to be reset, so the file would grow.) The writer's own
  threshold is raised to ``_BACKSTOP_PAGES`` and only matters if that thread falls behind,
  and ``journal_size_limit`` cuts the file back after such an overshoot.
- **Caches**: a room row (immutable until deleted) and "is a member" answers are kept in
  memory, since looking them up was a fifth of a Send. This store's own changes update
  them; a commit by any other connection (another process on the same file) empties them,
  as ``PRAGMA data_version`` tells, checked at the start of every operation, so an
  operation reads exactly what an uncached store would. A rollback empties them too.
- **Deleting a big room** is cut into steps: Delete removes the room and its first
  ``sql.PURGE_CHUNK`` messages in one transaction, and ``purge_step`` removes the rest a
  chunk at a time (the server calls it between requests). Until then the room's pk is
  listed in ``purging``, so no new room takes it.
- **Schema versions**: ``PRAGMA user_version`` holds how many entries of ``MIGRATIONS``
  have been applied; opening an older file applies the rest, in order, one transaction
  each.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from chatctl.errors import ChatctlError
from chatctl.server import sql
from chatctl.server.domain import Fanout, Key, NewMessage, Note, Published, RoomRow, Unavailable
from chatctl.server.store import SendResult
from chatctl.wire import UUIDv7, message_frame

__all__ = ["CHECKPOINT_EVERY", "MIGRATIONS", "SQLiteSession", "SQLiteStore"]

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
)

#: ms a statement waits, holding up the event loop, for another process's write lock; the
#: operation is then tried again with the loop free, for up to the store's timeout.
BUSY_WAIT_MS = 20

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

_INSERT_MESSAGE = (
    "INSERT INTO messages (room_pk, id, client, user_id, sent_at, subject, text)"
    " VALUES (?, ?, ?, ?, ?, ?, ?)"
)
# Above every pk in use, a deleted room's still being purged included.
_INSERT_ROOM = (
    "INSERT INTO rooms (pk, tenant, id, name, description, created_at, private)"
    " VALUES (max(coalesce((SELECT max(pk) FROM rooms), 0),"
    " coalesce((SELECT max(room_pk) FROM purging), 0)) + 1, ?, ?, ?, ?, ?, ?)"
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


def _is_busy(exc: sqlite3.Error) -> bool:
    """True when ``exc`` only means another process holds the database for now."""
    code = getattr(exc, "sqlite_errorcode", None)
    return code is not None and code & 0xFF in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)


class _NoFanout:
    def deliver(self, note: Note) -> None:
        pass

    def listening(self, tenant: str, room_id: str) -> bool:
        return False

    def interrupt(self, reason: str) -> None:
        pass

    def resume(self) -> None:
        pass


class SQLiteSession(sql.Session):
    """The shared SQL on the store's one connection, with its caches."""

    def __init__(self, store: SQLiteStore) -> None:
        super().__init__()
        self._store = store
        self._db = store._db

    async def _rows(self, sql: str, args: sql.Args) -> list[tuple[Any, ...]]:
        return self._db.execute(sql, args).fetchall()

    async def _row(self, sql: str, args: sql.Args) -> tuple[Any, ...] | None:
        row: tuple[Any, ...] | None = self._db.execute(sql, args).fetchone()
        return row

    async def _change(self, sql: str, args: sql.Args) -> int:
        return self._db.execute(sql, args).rowcount

    async def get_room(self, tenant: str, room_id: str) -> RoomRow | None:
        return self._store._room(tenant, room_id)

    async def is_member(self, room: RoomRow, user_id: str) -> bool:
        return self._store._is_member(room, user_id)

    async def remove_member(self, room: RoomRow, user_id: str) -> bool:
        self._store._members.discard((room.pk, user_id))
        return await super().remove_member(room, user_id)

    async def _insert_room(self, room: RoomRow) -> int:
        values = (room.tenant, room.id, room.name, room.description, room.created_at)
        pk = self._db.execute(_INSERT_ROOM, (*values, int(room.private))).lastrowid
        assert pk is not None
        return pk

    async def delete_room(self, room: RoomRow) -> None:
        # A later room may get the same pk: forget every member answer (deletes are rare).
        self._store._rooms.pop((room.tenant, room.id), None)
        self._store._members.clear()
        await self._forget_room(room)
        self._db.execute(_DELETE_ROOM, (room.pk,))
        # A small room's messages go now; a big room's first chunk, the rest in steps.
        if self._db.execute(_DELETE_CHUNK, (room.pk, sql.PURGE_CHUNK)).rowcount == sql.PURGE_CHUNK:
            self._db.execute(_TO_PURGE, (room.pk,))
            self._store._purge_pending = True

    async def message_position(self, room: RoomRow, cursor: str) -> int:
        """The seq of the last message whose id sorts at or before ``cursor``; 0 if none
        (ids made by one process sort in seq order)."""
        row = self._db.execute(_POSITION, (room.pk, cursor)).fetchone()
        return int(row[0]) if row else 0


class SQLiteStore:
    """``store.Store`` on one SQLite file, used from one event loop."""

    def __init__(self, path: str, fanout: Fanout | None = None, *, timeout: float = 5.0) -> None:
        _create_private_file(path)
        # isolation_level=None: no implicit transactions; BEGIN is said explicitly.
        # check_same_thread=False: a test (or serve) may build the app on one thread and
        # run the event loop on another; calls never overlap.
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._fanout: Fanout = fanout or _NoFanout()
        self.timeout = timeout
        (mode,) = self._db.execute("PRAGMA journal_mode=WAL").fetchone()
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA foreign_keys=OFF")
        # Another process on the same file waits, not fails: up to 5 s while migrating at
        # start; afterwards only briefly, on the event loop, between tries with it free.
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
        #: one operation at a time on the connection (none of them awaits mid-way today;
        #: this keeps it so if one ever does).
        self._lock = asyncio.Lock()
        self._session = SQLiteSession(self)
        self._ids = UUIDv7()
        self._migrate()
        self._db.execute(f"PRAGMA busy_timeout={BUSY_WAIT_MS}")
        if str(mode).lower() == "wal":
            (page_size,) = self._db.execute("PRAGMA page_size").fetchone()
            self._db.execute(f"PRAGMA wal_autocheckpoint = {_BACKSTOP_PAGES}")
            self._db.execute(f"PRAGMA journal_size_limit = {_BACKSTOP_PAGES * int(page_size)}")
            self._until_checkpoint = CHECKPOINT_EVERY

    @classmethod
    def open(cls, path: str, fanout: Fanout, *, timeout: float) -> SQLiteStore:
        """The store on ``path``, or a ChatctlError saying why it cannot be opened."""
        try:
            return cls(path, fanout, timeout=timeout)
        except (OSError, sqlite3.Error) as exc:
            raise ChatctlError(
                f"cannot open the database {path}: {exc}",
                hint="the file and its directory must be writable (SQLite writes a WAL beside"
                " it); choose another with --db PATH",
            ) from None

    # -- housekeeping -------------------------------------------------------------------

    def _migrate(self) -> None:
        (version,) = self._db.execute("PRAGMA user_version").fetchone()
        if version > len(MIGRATIONS):
            raise RuntimeError(
                f"database schema version {version} is newer than this chatctl "
                f"(knows {len(MIGRATIONS)}); upgrade chatctl"
            )
        for number in range(version, len(MIGRATIONS)):
            self._db.execute("BEGIN IMMEDIATE")
            try:
                for statement in MIGRATIONS[number].split(";"):
                    if statement.strip():
                        self._db.execute(statement)
                # PRAGMA takes no parameters; number is an int we control.
                self._db.execute(f"PRAGMA user_version = {number + 1}")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    @property
    def schema_version(self) -> int:
        (version,) = self._db.execute("PRAGMA user_version").fetchone()
        return int(version)

    async def start(self) -> None:
        """Nothing to open: the file was opened (and migrated) by the constructor."""

    async def close(self) -> None:
        self.close_now()

    def close_now(self) -> None:
        """Close at once, from any thread (the checkpoint thread finishes its pass)."""
        if self._checkpointer is not None:
            self._checkpointer.stop()
            self._checkpointer = None
        self._db.close()

    def _check_others(self) -> None:
        """Empty the caches if another connection has committed since the last check."""
        (version,) = self._db.execute("PRAGMA data_version").fetchone()
        if version != self._data_version:
            self._data_version = version
            self._rooms.clear()
            self._members.clear()

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

    async def _tried(self, attempt: Callable[[], Awaitable[T]]) -> T:
        """``attempt()``, alone on the connection, tried again while another process holds
        the database (with the event loop free in between) for up to ``timeout`` s."""
        deadline = time.monotonic() + self.timeout
        pause = 0.005
        while True:
            try:
                async with self._lock:
                    self._check_others()
                    return await attempt()
            except sqlite3.OperationalError as exc:
                if not _is_busy(exc) or time.monotonic() >= deadline:
                    raise Unavailable(str(exc)) from exc
            await asyncio.sleep(pause)
            pause = min(pause * 2, 0.1)

    def _begin(self) -> None:
        # IMMEDIATE: take the write lock now, so a busy file fails here and not mid-way.
        self._db.execute("BEGIN IMMEDIATE")
        self._check_others()  # with the write lock held: nobody else commits now

    def _rollback(self) -> None:
        self._rooms.clear()
        self._members.clear()
        with contextlib.suppress(sqlite3.Error):
            self._db.execute("ROLLBACK")

    def _commit(self, notes: list[Note]) -> None:
        self._db.execute("COMMIT")
        self._committed()
        # Committed: only now may anyone hear of it.
        for note in notes:
            self._fanout.deliver(note)

    # -- the Store operations -----------------------------------------------------------

    async def read(self, work: Callable[[sql.Session], Awaitable[T]]) -> T:
        return await self._tried(lambda: work(self._session))

    async def write(self, work: Callable[[sql.Session], Awaitable[T]]) -> T:
        async def attempt() -> T:
            session = self._session
            session.notes = []
            self._begin()
            try:
                result = await work(session)
            except BaseException:
                self._rollback()
                raise
            try:
                self._commit(session.notes)
            except sqlite3.Error:
                self._rollback()
                raise
            return result

        return await self._tried(attempt)

    async def send(self, tenant: str, new: NewMessage, key: Key | None) -> SendResult:
        if not self._lock.locked():
            # Nothing is part-way through on the connection, and a Send never awaits: it
            # runs alone on it as it is, without the lock and retry machinery. Only a busy
            # file (another process) sends it the long way round.
            try:
                self._check_others()
                return self._send_now(tenant, new, key)
            except sqlite3.OperationalError as exc:
                if not _is_busy(exc):
                    raise Unavailable(str(exc)) from exc

        async def attempt() -> SendResult:
            return self._send_now(tenant, new, key)

        return await self._tried(attempt)

    def _send_now(self, tenant: str, new: NewMessage, key: Key | None) -> SendResult:
        # Made, and stored, in one go: ids sort in the order the room takes them.
        message = new.to_wire(self._ids(), time.time_ns())
        answer = message_frame(message)
        if key is None:
            # The hot path: one INSERT, which SQLite's autocommit makes atomic and durable
            # by itself; BEGIN/COMMIT around it would only cost two more trips through the
            # library.
            room = self._sender_room(tenant, message)
            if isinstance(room, SendResult):
                return room
            seq = self._insert(room, message)
            self._committed()
        else:
            self._begin()
            try:
                if not self._db.execute(sql.CLAIM_KEY, sql.claim_args(key, answer)).fetchone():
                    prior = self._db.execute(
                        sql.PRIOR, (key.tenant, key.key, key.not_before)
                    ).fetchone()
                    self._rollback()
                    return SendResult(key.replay(*prior))
                room = self._sender_room(tenant, message)
                if isinstance(room, SendResult):
                    self._rollback()  # a refusal is not kept: the key stays free
                    return room
                seq = self._insert(room, message)
                self._commit([])
            except BaseException:
                self._rollback()
                raise
        if self._fanout.listening(tenant, room.id):
            self._fanout.deliver(Published(tenant, room.id, seq, answer, message["user_id"]))
        return SendResult(answer)

    def _sender_room(self, tenant: str, message: dict[str, Any]) -> RoomRow | SendResult:
        """The room, if the message's user may send to it; else why not."""
        room = self._room(tenant, message["room_id"])
        if room is None:
            return SendResult(None, room_found=False)
        if not self._is_member(room, message["user_id"]):
            return SendResult(None, private=room.private)
        return room

    def _insert(self, room: RoomRow, message: dict[str, Any]) -> int:
        """Store a message; its seq."""
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
        seq = cursor.lastrowid
        assert seq is not None
        return seq

    async def purge_step(self) -> bool:
        """Remove the next chunk of a deleted room's messages; True while more remain."""
        if not self._purge_pending:
            return False

        async def step(db: sql.Session) -> bool:
            row = self._db.execute(_NEXT_TO_PURGE).fetchone()
            if row is None:
                self._purge_pending = False
                return False
            if (
                self._db.execute(_DELETE_CHUNK, (row[0], sql.PURGE_CHUNK)).rowcount
                < sql.PURGE_CHUNK
            ):
                self._db.execute(sql.PURGED, (row[0],))
            return True

        return await self.write(step)

    # -- caches -------------------------------------------------------------------------

    def _room(self, tenant: str, room_id: str) -> RoomRow | None:
        key = (tenant, room_id)
        room = self._rooms.get(key)
        if room is not None:
            return room
        row = self._db.execute(sql.ROOM, key).fetchone()
        if not row:
            return None
        if len(self._rooms) >= _MAX_CACHED_ROOMS:
            self._rooms.clear()
        room = self._rooms[key] = sql.room_row(row)
        return room

    def _is_member(self, room: RoomRow, user_id: str) -> bool:
        key = (room.pk, user_id)
        if key in self._members:
            return True
        if self._db.execute(sql.IS_MEMBER, key).fetchone() is None:
            return False
        if len(self._members) >= _MAX_CACHED_MEMBERS:
            self._members.clear()
        self._members.add(key)
        return True


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
