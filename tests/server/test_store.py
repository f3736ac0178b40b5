"""The SQLite store and the wire's small parts, without a server: schema versions, file
mode, index use of the store's own statements, busy waits, ids and timestamps."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import sqlite3
import stat
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any, TypeVar

import pytest

from chatctl.ids import cursor_time_ns
from chatctl.server import sql, store_sqlite
from chatctl.server.domain import Key, MessageRow, NewMessage, RoomRow, Unavailable
from chatctl.server.migrations import SchemaTooNew
from chatctl.server.sql import Session
from chatctl.server.store_sqlite import MIGRATIONS, SQLiteStore
from chatctl.wire import UUIDv7, random_uuid, rfc3339
from tests.server.helpers import Ticker

T = TypeVar("T")


def run(store: SQLiteStore, work: Callable[[Session], Awaitable[T]], *, write: bool = True) -> T:
    """``work`` in one write (or read) of ``store``, on an event loop of its own."""
    return asyncio.run(store.write(work) if write else store.read(work))


def create_room(store: SQLiteStore, room_id: str, users: list[str]) -> RoomRow:
    async def create(db: Session) -> RoomRow:
        return await db.create_room("", room_id, room_id, "", "2026-11-25T00:00:00Z", False, users)

    return run(store, create)


def messages(store: SQLiteStore, room: RoomRow, **bounds: Any) -> list[MessageRow]:
    async def read(db: Session) -> list[MessageRow]:
        return await db.messages(room, **bounds)

    return run(store, read, write=False)


def send(store: SQLiteStore, room: RoomRow, text: str, key: Key | None = None) -> str | None:
    message = NewMessage(room.id, "u", "c", "", text)
    return asyncio.run(store.send(room.tenant, message, key)).answer


def test_new_file_is_private_and_current(tmp_path: Path) -> None:
    path = tmp_path / "new.db"
    store = SQLiteStore(str(path))
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert store.schema_version == len(MIGRATIONS)
    store.close_now()


def test_older_file_is_migrated(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    db = sqlite3.connect(path)
    for statement in MIGRATIONS[0].split(";"):
        db.execute(statement)
    db.execute(
        "INSERT INTO rooms (tenant, id, name, description, created_at, private)"
        " VALUES ('', 'r1', 'kept', '', '2022-02-17T16:12:43.942557998Z', 0)"
    )
    db.execute("PRAGMA user_version = 1")
    db.commit()
    db.close()
    store = SQLiteStore(str(path))
    assert store.schema_version == len(MIGRATIONS)

    async def get(db: Session) -> RoomRow | None:
        return await db.get_room("", "r1")

    room = run(store, get, write=False)
    assert room is not None and room.name == "kept"
    assert room.creator is None  # made before creators were recorded: admins' alone
    store.close_now()


def test_a_room_keeps_its_creator(tmp_path: Path) -> None:
    store = SQLiteStore(str(tmp_path / "chat.db"))

    async def create(db: Session) -> RoomRow:
        return await db.create_room("t", "r2", "made", "", "now", True, ["bob"], "alice")

    made = run(store, create)

    async def read(db: Session) -> tuple[RoomRow | None, list[tuple[RoomRow, list[str]]]]:
        return await db.get_room("t", "r2"), await db.list_rooms("t")

    room, listed = run(store, read, write=False)
    assert made.creator == "alice" and room is not None and room.creator == "alice"
    assert [(r.creator, members) for r, members in listed] == [("alice", ["bob"])]
    store.close_now()


def test_newer_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "future.db"
    db = sqlite3.connect(path)
    db.execute(f"PRAGMA user_version = {len(MIGRATIONS) + 1}")
    db.close()
    with pytest.raises(SchemaTooNew, match="needs a chatctl that knows schema"):
        SQLiteStore(str(path))


def statements(*modules: ModuleType) -> Iterator[str]:
    """Every statement a store module runs as it is written there: its module-level SQL
    strings (and tuples of them), and each shape of the messages query."""
    for module in modules:
        for name, value in vars(module).items():
            if name.startswith("__"):
                continue
            for text in value if isinstance(value, tuple) else (value,):
                if isinstance(text, str) and re.match(r"\s*(SELECT|DELETE|UPDATE|WITH)\b", text):
                    yield text
    for after in (None, 5):
        for before in (None, 9):
            for limit in (None, 50):
                for latest in (False, True):
                    yield sql.messages_sql(after, before, limit, latest)[0]


def test_reads_never_scan_a_table(tmp_path: Path) -> None:
    """EXPLAIN each statement the SQLite store runs (the shared ones and its own): every
    one finds its rows through an index; none reads a whole table (``purging`` aside: it
    holds a row per room being deleted)."""
    store = SQLiteStore(str(tmp_path / "plan.db"))
    db = store._db
    tables = {name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"rooms", "members", "messages"} <= tables
    seen = 0
    for statement in statements(sql, store_sqlite):
        args = ["x"] * statement.count("?")
        plan = " | ".join(row[3] for row in db.execute("EXPLAIN QUERY PLAN " + statement, args))
        scans = re.findall(r"SCAN (\w+)(?! USING (?:COVERING )?INDEX)", plan)
        assert not [t for t in scans if t in tables - {"purging"}], (statement, plan)
        seen += 1
    assert seen > 25  # the module's statements were found, not silently none
    store.close_now()


def test_uuid7_is_monotonic_and_well_formed() -> None:
    make = UUIDv7()
    ids = [make(1_700_000_000_000_000_000) for _ in range(5000)]  # one millisecond, 5000 ids
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    for text in ids[:10] + ids[-10:]:
        u = uuid.UUID(text)
        assert u.version == 7 and u.variant == uuid.RFC_4122
    later = make(1_600_000_000_000_000_000)  # the clock stepped back
    assert later > ids[-1]


def test_a_stamped_id_names_its_times_millisecond() -> None:
    """A message's id and sent_at are one instant (``chatctl join --since`` maps a shown
    time to the id's place by it), even when the id is forced past the clock."""
    make = UUIDv7()
    for _ in range(2000):
        made, ns = make.stamp()
        assert cursor_time_ns(made) == ns // 1_000_000 * 1_000_000
    ahead = make(time.time_ns() + 10**9)  # as if the clock stepped back a second
    made, ns = make.stamp()
    assert made > ahead and cursor_time_ns(made) == ns // 1_000_000 * 1_000_000


def test_random_uuid_is_a_well_formed_version_4() -> None:
    made = [random_uuid() for _ in range(2000)]
    assert len(set(made)) == len(made)
    for text in made:
        u = uuid.UUID(text)
        assert str(u) == text and u.version == 4 and u.variant == uuid.RFC_4122
    # Every hex digit of the random part shows up: nothing fixed beyond the version bits.
    assert {t[19] for t in made} == set("89ab") and len({t[0] for t in made}) == 16


def test_rfc3339_nanoseconds() -> None:
    assert rfc3339(1645114363942557998) == "2022-02-17T16:12:43.942557998Z"
    assert rfc3339(1645114363000000001) == "2022-02-17T16:12:43.000000001Z"


def test_wal_stays_bounded_under_sustained_sends(tmp_path: Path) -> None:
    """The writer checkpoints in its own commits (off the event loop), so the WAL is reset
    while Sends go on, in groups or one by one; the writer ends with the store."""
    path = tmp_path / "wal.db"
    store = SQLiteStore(str(path))
    room = create_room(store, "r", ["u"])
    (page_size,) = store._db.execute("PRAGMA page_size").fetchone()
    bound = 2 * 1000 * page_size  # twice SQLite's checkpoint threshold
    total = 6000
    largest = 0

    async def sends() -> None:
        nonlocal largest
        for group in range(total // 50):
            await asyncio.gather(
                *(
                    store.send("", NewMessage(room.id, "u", "c", "", "x" * 40), None)
                    for _ in range(50)
                )
            )
            if group % 4 == 0:
                largest = max(largest, (tmp_path / "wal.db-wal").stat().st_size)
        for _ in range(1000):
            await store.send("", NewMessage(room.id, "u", "c", "", "y" * 40), None)
        largest = max(largest, (tmp_path / "wal.db-wal").stat().st_size)

    asyncio.run(sends())
    assert largest <= bound, (largest, bound)
    store.close_now()
    assert not store._writer.is_alive()
    reopened = SQLiteStore(str(path))
    assert len(messages(reopened, room)) == total + 1000
    reopened.close_now()


def _room_with_messages(store: SQLiteStore, path: str, room_id: str, count: int) -> RoomRow:
    room = create_room(store, room_id, ["u"])
    rows = [(room.pk, str(uuid.uuid4()), f"m{n}") for n in range(count)]
    with contextlib.closing(sqlite3.connect(path)) as db, db:  # the test's setup
        db.executemany(
            "INSERT INTO messages (room_pk, id, client, user_id, sent_at, subject, text)"
            " VALUES (?, ?, 'c', 'u', 't', '', ?)",
            rows,
        )
    return room


def _left_of(store: SQLiteStore, room: RoomRow) -> int:
    (n,) = store._db.execute(
        "SELECT COUNT(*) FROM messages WHERE room_pk = ?", (room.pk,)
    ).fetchone()
    return int(n)


def test_a_big_room_is_deleted_at_once_and_its_messages_in_steps(tmp_path: Path) -> None:
    """Deleting a room never holds the server for long: the room goes at once, its messages
    a chunk per step; meanwhile no new room may take its pk (and so its messages)."""
    path = str(tmp_path / "purge.db")
    store = SQLiteStore(path)
    chunk = sql.PURGE_CHUNK
    small = _room_with_messages(store, path, "small", 10)
    big = _room_with_messages(store, path, "big", 2 * chunk + 5)

    def delete(room: RoomRow) -> None:
        async def work(db: Session) -> None:
            await db.delete_room(room)

        run(store, work)

    delete(small)
    assert _left_of(store, small) == 0  # a small room is gone in its one transaction
    delete(big)

    async def get(db: Session) -> RoomRow | None:
        return await db.get_room("", "big")

    assert run(store, get, write=False) is None
    assert _left_of(store, big) == chunk + 5
    newer = create_room(store, "newer", [])
    assert newer.pk > big.pk
    assert messages(store, newer, limit=10) == []

    store.close_now()  # a restart in between: the purge goes on from the file
    store = SQLiteStore(path)
    steps = 0
    while asyncio.run(store.purge_step()):
        steps += 1
        assert steps < 10
    assert steps == 2 and _left_of(store, big) == 0
    assert store._db.execute("SELECT COUNT(*) FROM purging").fetchone() == (0,)
    assert messages(store, newer, limit=10) == []
    store.close_now()


def test_a_database_another_process_holds_is_waited_for_with_the_loop_free(
    tmp_path: Path,
) -> None:
    """Another connection holds the write lock: a Send waits for it (the event loop runs
    other work meanwhile), succeeds once it is let go, and gives up as Unavailable after
    the store's timeout, having stored nothing."""
    path = str(tmp_path / "busy.db")
    store = SQLiteStore(path, timeout=0.5)
    room = create_room(store, "r", ["u"])
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")

    async def scenario() -> tuple[int, float]:
        with Ticker() as ticker, pytest.raises(Unavailable, match="locked"):
            started = time.monotonic()
            await store.send("", NewMessage(room.id, "u", "c", "", "late"), None)
        return ticker.ticks, time.monotonic() - started

    ticks, waited = asyncio.run(scenario())
    assert 0.5 <= waited < 2
    assert ticks >= 10, "the event loop was held while the store waited"
    other.execute("ROLLBACK")
    other.close()
    assert send(store, room, "now") is not None
    assert [m.text for m in messages(store, room)] == ["now"]
    store.close_now()


def test_a_keyed_send_is_stored_once_and_answers_the_same(tmp_path: Path) -> None:
    store = SQLiteStore(str(tmp_path / "keys.db"))
    room = create_room(store, "r", ["u"])
    now = time.time()
    key = Key("", "k", "Send", "hash-1", now, now - 60)
    first = send(store, room, "once", key)
    again = send(store, room, "once, again", key)
    assert first is not None and again == first
    assert [m.text for m in messages(store, room)] == ["once"]
    store.close_now()


async def several_sends_in_one_go(store: Any) -> None:
    """``send_many`` as a bulk send uses it, on either store: each message's outcome in
    order, a refusal or a key's replay storing nothing, the rest stored in order."""

    async def create(db: Session) -> RoomRow:
        return await db.create_room("", "bulk", "bulk", "", "t", False, ["u"])

    room = await store.write(create)
    now = time.time()

    def key(name: str) -> Key:
        return Key("", name, "Send", f"hash-{name}", now, now - 60)

    first = (await store.send("", NewMessage(room.id, "u", "c", "", "before"), key("k0"))).answer
    results = await store.send_many(
        "",
        [
            (NewMessage(room.id, "u", "c", "", "one"), None),
            (NewMessage(room.id, "x", "c", "", "not a member"), None),
            (NewMessage(room.id, "u", "c", "", "k0 again"), key("k0")),
            (NewMessage(room.id, "u", "c", "", "two"), key("k1")),
            (NewMessage("nope", "u", "c", "", "no room"), None),
            (NewMessage(room.id, "u", "c", "", "k1 again"), key("k1")),
        ],
    )
    answers = [r.answer for r in results]
    assert answers[0] is not None and json.loads(answers[0])["message"]["text"] == "one"
    assert answers[1] is None and results[1].room_found and not results[1].private
    assert answers[2] == first
    assert answers[3] is not None and json.loads(answers[3])["message"]["text"] == "two"
    assert answers[4] is None and not results[4].room_found
    assert answers[5] == answers[3]

    async def stored(db: Session) -> list[MessageRow]:
        return await db.messages(room)

    rows = await store.read(stored)
    assert [m.text for m in rows] == ["before", "one", "two"]
    assert [m.id for m in rows] == sorted(m.id for m in rows)  # ids in the room's order


async def several_sends_that_stop(store: Any) -> None:
    """``send_many`` with ``stop`` (a bulk Send told to stop at the first refused line):
    nothing after the first refusal is claimed or stored, and the outcomes end with it; a
    key used with another request is a refusal (Conflict), not a failure of the batch;
    messages of two rooms each take their room's next seqs, in order."""
    from chatctl.server.domain import Conflict

    async def create(db: Session) -> tuple[RoomRow, RoomRow]:
        a = await db.create_room("", "room-a", "a", "", "t", False, ["u"])
        b = await db.create_room("", "room-b", "b", "", "t", False, ["u"])
        return a, b

    a, b = await store.write(create)
    now = time.time()

    def key(name: str, request: str = "") -> Key:
        return Key("", name, "Send", f"hash-{name}{request}", now, now - 60)

    def new(room: RoomRow, text: str, user: str = "u") -> NewMessage:
        return NewMessage(room.id, user, "c", "", text)

    results = await store.send_many(
        "",
        [(new(a, "a1"), None), (new(b, "b1"), key("kb1")), (new(a, "a2"), None)],
        stop=True,
    )
    assert [json.loads(r.answer)["message"]["text"] for r in results] == ["a1", "b1", "a2"]
    results = await store.send_many(
        "",
        [
            (new(b, "b1 again"), key("kb1")),  # a replay: not a refusal
            (new(a, "a3"), key("ka3")),
            (new(b, "b2"), key("kb1", "other")),  # the key with another request: 409
            (new(a, "never"), key("k-never")),
            (new(a, "never either"), None),
        ],
        stop=True,
    )
    assert len(results) == 3
    assert results[0].answer is not None and "b1" in results[0].answer
    assert results[1].answer is not None and "a3" in results[1].answer
    assert results[2].answer is None and isinstance(results[2].refusal, Conflict)
    # Without stop the same refusal is one outcome among the others.
    results = await store.send_many(
        "", [(new(a, "x", user="stranger"), key("k-x")), (new(a, "a4"), key("k-never"))]
    )
    assert results[0].answer is None and results[0].room_found
    assert results[1].answer is not None and "a4" in results[1].answer

    async def texts(db: Session) -> tuple[list[str], list[str], list[int]]:
        rows_a = await db.messages(a)
        rows_b = await db.messages(b)
        return [m.text for m in rows_a], [m.text for m in rows_b], [m.seq for m in rows_a]

    in_a, in_b, seqs = await store.read(texts)
    assert in_a == ["a1", "a2", "a3", "a4"]
    assert in_b == ["b1"]
    assert seqs == sorted(seqs)


def test_several_sends_in_one_transaction(tmp_path: Path) -> None:
    async def scenario() -> None:
        store = SQLiteStore(str(tmp_path / "bulk.db"))
        try:
            await several_sends_in_one_go(store)
            await several_sends_that_stop(store)
        finally:
            await store.close()

    asyncio.run(scenario())


def test_a_newer_compatible_file_is_served_and_a_contract_raises_the_floor(
    tmp_path: Path,
) -> None:
    """A file a later release migrated with expand migrations only (applied above what
    this release knows, floor within it) is served as it is; a floor above it (a contract
    migration) is refused. ``floor`` counts contract migrations only."""
    from chatctl.server.migrations import contract, floor
    from chatctl.server.store_sqlite import schema_state

    path = tmp_path / "later.db"
    SQLiteStore(str(path)).close_now()
    db = sqlite3.connect(path)
    db.execute("UPDATE chatctl_schema SET applied = ?", (len(MIGRATIONS) + 2,))
    db.commit()
    before = schema_state(db)
    store = SQLiteStore(str(path))
    assert store.schema_version == len(MIGRATIONS) + 2  # served, nothing applied or undone
    store.close_now()
    assert schema_state(db) == before
    db.execute(f"PRAGMA user_version = {len(MIGRATIONS) + 1}")
    db.close()
    with pytest.raises(SchemaTooNew):
        SQLiteStore(str(path))
    steps = ("a", "b", contract("c"), "d")
    assert [floor(steps, n, 1) for n in range(5)] == [0, 1, 1, 3, 3]
