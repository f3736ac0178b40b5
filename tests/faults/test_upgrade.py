"""Upgrade drills (docs/deployment.md, "Upgrades and rollbacks"; the rule for migration
authors is in docs/development.md).

- A database written by schema version 1 is migrated on start, losing nothing.
- A database newer than this chatctl is refused in one line with its own exit status (6),
  untouched.
- The expand rule, for every migration appended after the previous release: that release,
  run as it was released (``git archive`` of ``PREVIOUS_RELEASE`` into a temporary
  directory, on the same installed dependencies), serves a database this one migrated,
  beside a replica of this one, and restarts on it; a rolling upgrade on PostgreSQL
  (``serve migrate`` while the old replica serves) and a rollback (the old one alone
  again) are shown end to end.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tarfile
from io import BytesIO
from pathlib import Path
from typing import Any

import pytest
from websockets.sync.client import connect

from chatctl.errors import ExitStatus
from chatctl.server.store_sqlite import MIGRATIONS
from tests import postgres
from tests.faults.fixtures.make_v1_db import PATH as V1_DB
from tests.faults.fixtures.make_v1_db import ROOMS
from tests.helpers import ServerProcess, free_port

#: The previous release: the last commit before 0.2.0 (schema 6 on SQLite, 4 on
#: PostgreSQL). When a release ships, set this to its commit: migrations after it must
#: keep it serving (docs/development.md, "Schema migrations").
PREVIOUS_RELEASE = "07814e4"
ROOT = Path(__file__).resolve().parents[2]


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
    from chatctl.server.store_sqlite import schema_state

    with sqlite3.connect(server.db) as db:
        assert schema_state(db).applied == len(MIGRATIONS)
    db.close()


def test_newer_database_is_refused_in_one_line_untouched(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db_path = tmp_path / "chat.db"
    shutil.copyfile(V1_DB, db_path)
    with sqlite3.connect(db_path) as db:
        db.execute(f"PRAGMA user_version = {len(MIGRATIONS) + 1}")
    db.close()
    before = _contents(db_path)
    result = _chatctl("serve", "--db", str(db_path), "--uds", str(tmp_path / "s.sock"))
    said = [(result.returncode, result.stderr)]
    said += [
        migrate(capsys, "--db", str(db_path)),
        migrate(capsys, "--check", "--db", str(db_path)),
    ]
    for code, err in said:
        assert code == ExitStatus.SCHEMA_TOO_NEW == 6, err
        assert len(err.splitlines()) == 1, err
        assert "newer than this chatctl" in err, err
    # (The journal mode may have become WAL, as every file this server writes is.)
    assert _contents(db_path) == before


def _contents(path: Path) -> tuple[int, list[str]]:
    db = sqlite3.connect(path)
    try:
        return db.execute("PRAGMA user_version").fetchone()[0], list(db.iterdump())
    finally:
        db.close()


def migrate(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    """``chatctl serve migrate ARGS`` in this process (no logging, no server): its exit
    status and stderr."""
    from chatctl.cli.main import run_cli

    capsys.readouterr()
    code = run_cli(["serve", "migrate", *args])
    return code, capsys.readouterr().err


def _chatctl(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHATCTL_")}
    return subprocess.run(
        [sys.executable, "-m", "chatctl", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


# -- the previous release against this one's schema -----------------------------------------


@pytest.fixture(scope="module")
def previous_release(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The environment that runs the previous release: its ``chatctl`` package, from git,
    first on PYTHONPATH (``ServerProcess`` runs it from its own directory)."""
    if shutil.which("git") is None:
        pytest.skip("git is not installed: the previous release is taken from git history")
    found = subprocess.run(
        ["git", "-C", str(ROOT), "cat-file", "-e", f"{PREVIOUS_RELEASE}^{{commit}}"],
        capture_output=True,
    )
    if found.returncode != 0:
        pytest.skip(f"the git history holding the previous release {PREVIOUS_RELEASE} is absent")
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", PREVIOUS_RELEASE, "chatctl"],
        capture_output=True,
        check=True,
    ).stdout
    dest = tmp_path_factory.mktemp("previous-release")
    with tarfile.open(fileobj=BytesIO(archive)) as tar:
        tar.extractall(dest, filter="data")
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHATCTL_")}
    env["PYTHONPATH"] = str(dest)
    version = subprocess.run(
        [sys.executable, "-c", "import chatctl; print(chatctl.__file__, chatctl.__version__)"],
        capture_output=True,
        text=True,
        env=env,
        cwd=dest,
        check=True,
    ).stdout.split()
    assert version == [str(dest / "chatctl" / "__init__.py"), "0.1.0"], version
    return env


def call(server: ServerProcess, endpoint: str, body: dict[str, Any]) -> Any:
    with server.http() as http:
        r = http.post(f"/v1/chat/{endpoint}", json=body)
    assert r.status_code == 200, f"{endpoint} on {server.workdir.name}: {r.text}"
    return r.json()


def texts(server: ServerProcess, room: str) -> list[str]:
    return [m["text"] for m in call(server, "History", {"room_id": room})["messages"]]


def smoke(server: ServerProcess, other: ServerProcess | None = None) -> None:
    """What a replica does, on ``server``: every kind of write and read, each checked on
    ``other`` too (another release's replica on the same database) when given."""
    room = call(server, "Create", {"name": "smoke", "description": "", "user_ids": ["a", "b"]})
    room_id = room["room"]["id"]
    call(server, "Invite", {"room_id": room_id, "user_id": "c"})
    call(server, "Kick", {"room_id": room_id, "user_id": "c"})
    call(server, "Leave", {"room_id": room_id, "user_id": "b"})
    sent = call(server, "Send", {"room_id": room_id, "user_id": "a", "text": "one"})["message"]
    keyed = {"room_id": room_id, "user_id": "a", "text": "two"}
    key = {"Idempotency-Key": f"smoke-{room_id}"}
    with server.http() as http:
        first = http.post("/v1/chat/Send", json=keyed, headers=key)
        again = http.post("/v1/chat/Send", json=keyed, headers=key)
    assert first.status_code == again.status_code == 200 and first.json() == again.json()
    for reader in (server, other) if other else (server,):
        assert texts(reader, room_id) == ["one", "two"]
        listed = next(r for r in call(reader, "List", {})["rooms"] if r["id"] == room_id)
        assert listed["user_ids"] == ["a"]
        after = call(reader, "History", {"room_id": room_id, "after": sent["id"]})
        assert [m["text"] for m in after["messages"]] == ["two"]
    call(server, "Delete", {"room_id": room_id})


def join(streams: contextlib.ExitStack, server: ServerProcess, room: str, user: str) -> Any:
    url = f"ws://127.0.0.1:{server.port}/v1/chat/Join"
    ws = streams.enter_context(connect(url, open_timeout=10))
    ws.send(json.dumps({"room_id": room, "user_id": user}))
    return ws


def received(ws: Any, count: int) -> list[str]:
    return [json.loads(ws.recv(timeout=10))["message"]["text"] for _ in range(count)]


def test_the_previous_release_serves_a_sqlite_file_this_one_migrated(
    tmp_path: Path, previous_release: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    """The expand rule on SQLite: every migration since the previous release leaves a file
    it serves (and restarts on) once this release has migrated it."""
    (tmp_path / "old").mkdir()
    (tmp_path / "new").mkdir()
    db = str(tmp_path / "chat.db")
    old = ServerProcess(tmp_path / "old", tcp=True, db=db, env=previous_release)
    with old:  # the file as the previous release made it
        room = call(old, "Create", {"name": "kept", "description": "", "user_ids": ["a"]})
        room_id = room["room"]["id"]
        call(old, "Send", {"room_id": room_id, "user_id": "a", "text": "before"})
    code, err = migrate(capsys, "--db", db)
    assert code == 0 and f"to {len(MIGRATIONS)}" in err, err
    new = ServerProcess(tmp_path / "new", tcp=True, db=db)
    with old, new:  # the old one restarted on the migrated file, beside the new one
        smoke(old, other=new)
        smoke(new, other=old)
        call(new, "Send", {"room_id": room_id, "user_id": "a", "text": "after"})
        assert texts(old, room_id) == ["before", "after"]


def _auto_notify(url: str) -> str:
    """The notification mode a replica started with ``--notify auto`` takes on ``url``."""
    from chatctl.server.store_pg import PostgresStore

    store = PostgresStore.open(
        url,
        None,  # type: ignore[arg-type]
        timeout=5,
        migrate="new",
        notify="auto",
    )
    return store.notify


@pytest.mark.postgres
def test_a_new_postgres_database_notifies_by_room_by_default() -> None:
    """No release before per-room channels can be serving a database this one made."""
    with postgres.fresh_database() as url:
        assert _auto_notify(url) == "rooms"


@pytest.mark.postgres
def test_a_rolling_upgrade_and_rollback_on_postgres(
    tmp_path: Path, previous_release: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    """A replica of the previous release serves; this release's replica refuses the older
    schema in one line; ``serve migrate`` upgrades it under the old replica, which keeps
    serving; both serve together (each one's Join hears the other's Sends); the old one
    restarts fine; then it serves alone again (a rollback). A schema newer than this
    release can use is refused in one line with exit status 6."""
    from chatctl.server.store_pg import MIGRATIONS as PG_MIGRATIONS

    for name in ("old", "new"):
        (tmp_path / name).mkdir()
    with postgres.fresh_database() as url:
        old = ServerProcess(tmp_path / "old", tcp=True, db=url, env=previous_release)
        new = ServerProcess(tmp_path / "new", tcp=True, db=url)
        with old:
            room = call(old, "Create", {"name": "r", "description": "", "user_ids": ["a", "w"]})
            room_id = room["room"]["id"]
            call(old, "Send", {"room_id": room_id, "user_id": "a", "text": "before"})

            refused = _chatctl("serve", "--db", url, "--port", str(free_port()))
            assert refused.returncode == 1, refused.stderr
            assert len(refused.stderr.splitlines()) == 1, refused.stderr
            assert "run chatctl serve migrate" in refused.stderr, refused.stderr
            code, err = migrate(capsys, "--check", "--db", url)
            assert code == 1 and "run chatctl serve migrate" in err, err
            code, err = migrate(capsys, "--db", url)
            assert code == 0 and f"to {len(PG_MIGRATIONS)}" in err, err
            assert migrate(capsys, "--check", "--db", url)[0] == 0
            # The previous release may still serve it: a replica started with the default
            # --notify auto also uses the shared channel that release hears (below: "new").
            assert _auto_notify(url) == "both"
            call(old, "Send", {"room_id": room_id, "user_id": "a", "text": "during"})

            with new:
                with contextlib.ExitStack() as streams:
                    on_old = join(streams, old, room_id, "w")
                    on_new = join(streams, new, room_id, "w")
                    call(old, "Send", {"room_id": room_id, "user_id": "a", "text": "x1"})
                    call(new, "Send", {"room_id": room_id, "user_id": "a", "text": "x2"})
                    assert received(on_old, 2) == received(on_new, 2) == ["x1", "x2"]
                smoke(old, other=new)
                smoke(new, other=old)
                old.restart()  # the old replica restarts fine on the migrated schema
                call(old, "Send", {"room_id": room_id, "user_id": "a", "text": "restarted"})
                assert texts(new, room_id)[-1] == "restarted"
            # Rolled back: the previous release alone.
            call(old, "Send", {"room_id": room_id, "user_id": "a", "text": "rolled back"})
            assert texts(old, room_id) == ["before", "during", "x1", "x2", "restarted",
                                           "rolled back"]  # fmt: skip

        # Once no replica of the previous release is left, the operator records "rooms".
        code, err = migrate(capsys, "--notify", "rooms", "--db", url)
        assert code == 0 and "now use --notify rooms" in err, err
        assert _auto_notify(url) == "rooms"

        import psycopg

        with psycopg.connect(url, autocommit=True) as conn:
            ahead = len(PG_MIGRATIONS) + 1
            conn.execute("UPDATE chatctl_schema SET version = %s, applied = %s", (ahead, ahead))
        # What serve opens it with (the process's one line and exit 6 are shown on SQLite,
        # test_newer_database_is_refused_in_one_line_untouched), and serve migrate.
        from chatctl.server.migrations import SchemaTooNew
        from chatctl.server.store_pg import PostgresStore

        with pytest.raises(SchemaTooNew, match="newer than this chatctl") as refused_new:
            PostgresStore.open(url, None, timeout=5, migrate="new")  # type: ignore[arg-type]
        assert refused_new.value.exit_status == 6
        code, err = migrate(capsys, "--check", "--db", url)
        assert code == 6 and len(err.splitlines()) == 1 and "newer than this chatctl" in err
