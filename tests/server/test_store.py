"""The store and the rules' small parts, without a server: schema versions, file mode,
index use, ids and timestamps."""

from __future__ import annotations

import re
import sqlite3
import stat
import uuid
from pathlib import Path

import pytest

from chatctl.server import store as store_module
from chatctl.server.rules import UUIDv7, rfc3339
from chatctl.server.store import MIGRATIONS, SQLiteStore


def test_new_file_is_private_and_current(tmp_path: Path) -> None:
    path = tmp_path / "new.db"
    store = SQLiteStore(str(path))
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert store.schema_version == len(MIGRATIONS)
    store.close()


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
    room = store.get_room("", "r1")
    assert room is not None and room.name == "kept"
    store.close()


def test_newer_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "future.db"
    db = sqlite3.connect(path)
    db.execute(f"PRAGMA user_version = {len(MIGRATIONS) + 1}")
    db.close()
    with pytest.raises(RuntimeError, match="newer"):
        SQLiteStore(str(path))


def test_reads_never_scan_a_table(tmp_path: Path) -> None:
    store = SQLiteStore(str(tmp_path / "plan.db"))
    db = store._db
    queries = [
        ("SELECT seq FROM messages WHERE room_pk = 1 ORDER BY seq DESC LIMIT 50", ()),
        ("SELECT seq FROM messages WHERE room_pk = 1 AND seq > 5 ORDER BY seq LIMIT 50", ()),
        ("SELECT seq FROM messages WHERE room_pk = 1 AND seq < 5 ORDER BY seq DESC LIMIT 50", ()),
        ("SELECT seq FROM messages WHERE id = 'x' AND room_pk = 1", ()),
        ("SELECT seq FROM messages WHERE room_pk = 1 AND id <= 'x' ORDER BY id DESC LIMIT 1", ()),
        ("SELECT pk FROM rooms WHERE tenant = '' AND id = 'x'", ()),
        ("SELECT pk FROM rooms WHERE tenant = '' ORDER BY pk", ()),
        ("SELECT room_pk FROM members WHERE tenant = '' AND user_id = 'u'", ()),
        ("SELECT user_id FROM members WHERE room_pk = 1 ORDER BY position", ()),
        ("SELECT 1 FROM idempotency WHERE tenant = '' AND key = 'k'", ()),
    ]
    for sql, args in queries:
        plan = " | ".join(row[3] for row in db.execute("EXPLAIN QUERY PLAN " + sql, args))
        assert "USING" in plan and not re.search(
            r"SCAN (rooms|members|messages)\b(?! USING)", plan
        ), (
            sql,
            plan,
        )
    store.close()


def test_uuid7_is_monotonic_and_well_formed() -> None:
    make = UUIDv7()
    ids = [make(1_700_000_000_000_000_000) for _ in range(5000)]  # one millisecond, 5000 ids
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    for text in ids[:10] + ids[-10:]:
        u = uuid.UUID(text)
        assert u.version == 7 and u.variant == uuid.RFC_4122
    later = make(1_600_000_000_000_000_000)  # the clock stepped back
    assert later > ids[-1]


def test_rfc3339_nanoseconds() -> None:
    assert rfc3339(1645114363942557998) == "2022-02-17T16:12:43.942557998Z"
    assert rfc3339(1645114363000000001) == "2022-02-17T16:12:43.000000001Z"


def test_wal_stays_bounded_under_sustained_sends(tmp_path: Path) -> None:
    """Checkpoints run off the writer's thread, yet the WAL is still reset while writes go
    on (a checkpoint thread alone never finds it quiet), and the thread ends with the store."""
    path = tmp_path / "wal.db"
    store = SQLiteStore(str(path))
    room = store.create_room("", "r", "n", "", "t", False, ["u"])
    make = UUIDv7()
    (page_size,) = store._db.execute("PRAGMA page_size").fetchone()
    bound = store_module._BACKSTOP_PAGES * page_size
    largest = 0
    for i in range(store_module.CHECKPOINT_EVERY * 24):
        store.add_message(room, make(1_700_000_000_000_000_000 + i), "c", "u", "t", "", "x" * 40)
        if i % 50 == 0:
            largest = max(largest, (tmp_path / "wal.db-wal").stat().st_size)
    assert largest <= bound * 1.25, (largest, bound)
    checkpointer = store._checkpointer
    assert checkpointer is not None
    store.close()
    assert not checkpointer._thread.is_alive()
    reopened = SQLiteStore(str(path))
    again = reopened.get_room("", "r")
    assert again is not None and len(reopened.messages(again)) == store_module.CHECKPOINT_EVERY * 24
    reopened.close()


def _room_with_messages(store: SQLiteStore, room_id: str, count: int) -> store_module.RoomRow:
    room = store.create_room("", room_id, room_id, "", "2026-11-25T00:00:00Z", False, ["u"])
    with store.transaction():
        for n in range(count):
            store.add_message(room, str(uuid.uuid4()), "c", "u", "t", "", f"m{n}")
    return room


def _left_of(store: SQLiteStore, room: store_module.RoomRow) -> int:
    (n,) = store._db.execute(
        "SELECT COUNT(*) FROM messages WHERE room_pk = ?", (room.pk,)
    ).fetchone()
    return int(n)


def test_a_big_room_is_deleted_at_once_and_its_messages_in_steps(tmp_path: Path) -> None:
    """Deleting a room never holds the server for long: the room goes at once, its messages
    a chunk per step; meanwhile no new room may take its pk (and so its messages)."""
    path = str(tmp_path / "purge.db")
    store = SQLiteStore(path)
    chunk = store_module.PURGE_CHUNK
    small = _room_with_messages(store, "small", 10)
    big = _room_with_messages(store, "big", 2 * chunk + 5)
    store.delete_room(small)
    assert _left_of(store, small) == 0  # a small room is gone in its one transaction
    store.delete_room(big)
    assert store.get_room("", "big") is None
    assert _left_of(store, big) == chunk + 5
    newer = store.create_room("", "newer", "newer", "", "t", False, [])
    assert newer.pk > big.pk
    assert store.messages(newer, limit=10) == []

    store.close()  # a restart in between: the purge goes on from the file
    store = SQLiteStore(path)
    steps = 0
    while store.purge_step():
        steps += 1
        assert steps < 10
    assert steps == 2 and _left_of(store, big) == 0
    assert store._db.execute("SELECT COUNT(*) FROM purging").fetchone() == (0,)
    assert [m.text for m in store.messages(newer, limit=10)] == []
    store.close()
