"""Upgrade drill: a database written by schema version 1 is migrated on start, losing
nothing; a database newer than this chatctl is refused, untouched."""

from __future__ import annotations

import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

from chatctl.server.store_sqlite import MIGRATIONS
from tests.faults.fixtures.make_v1_db import PATH as V1_DB
from tests.faults.fixtures.make_v1_db import ROOMS
from tests.helpers import ServerProcess


def test_version_1_database_is_migrated_without_loss(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path)
    shutil.copyfile(V1_DB, server.db)
    with server, server.http() as c:
        rooms = {r["id"]: r for r in c.post("/v1/chat/List", json={}).json()["rooms"]}
        assert set(rooms) == set(ROOMS)
        for room_id, (name, description, private, created_at, members, messages) in ROOMS.items():
            room = rooms[room_id]
            assert (room["name"], room["description"], room["private"]) == (
                name,
                description,
                private,
            )
            assert room["created_at"] == created_at and room["user_ids"] == members
            reader = members[0] if members else ""
            r = c.post("/v1/chat/History", json={"room_id": room_id, "user_id": reader})
            assert r.status_code == 200, r.text
            got = [(m["id"], m["user_id"], m["text"]) for m in r.json()["messages"]]
            assert got == messages
        # The migrated file takes new writes, and cursors work on the old ids.
        general = next(i for i, v in ROOMS.items() if v[0] == "general")
        r = c.post("/v1/chat/Send", json={"room_id": general, "user_id": "user-1", "text": "new"})
        assert r.status_code == 200, r.text
        first = ROOMS[general][5][0][0]
        r = c.post("/v1/chat/History", json={"room_id": general, "after": first})
        assert [m["text"] for m in r.json()["messages"]][-1] == "new"
    with sqlite3.connect(server.db) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)


def test_newer_database_is_refused_untouched(tmp_path: Path) -> None:
    db_path = tmp_path / "chat.db"
    shutil.copyfile(V1_DB, db_path)
    with sqlite3.connect(db_path) as db:
        db.execute(f"PRAGMA user_version = {len(MIGRATIONS) + 1}")
    db.close()
    before = _contents(db_path)
    sock = tmp_path / "s.sock"
    result = subprocess.run(
        [sys.executable, "-m", "chatctl", "serve", "--db", str(db_path), "--uds", str(sock)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "newer than this chatctl" in result.stderr, result.stderr
    # (The journal mode may have become WAL, as every file this server writes is.)
    assert _contents(db_path) == before


def _contents(path: Path) -> tuple[int, list[str]]:
    db = sqlite3.connect(path)
    try:
        return db.execute("PRAGMA user_version").fetchone()[0], list(db.iterdump())
    finally:
        db.close()
