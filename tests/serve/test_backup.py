"""``chatctl serve backup`` and ``restore`` (issue 26, part 4): a consistent copy of a live
SQLite server under a load of keyed Sends, and a restored copy that serves."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

from tests.helpers import ServerProcess, chatctl, cli_env, wait_for


def _keyed_sends(
    server: ServerProcess, room: str, acked: list[tuple[str, str]], stop: threading.Event
) -> None:
    """Send until told to stop, each with its own key; record (key, id) once answered."""
    with server.http() as http:
        n = 0
        while not stop.is_set():
            key = f"k-{n}"
            answer = http.post(
                "/v1/chat/Send",
                json={"room_id": room, "user_id": "alice", "text": f"message {n}"},
                headers={"Idempotency-Key": key},
            )
            assert answer.status_code == 200, answer.text
            acked.append((key, answer.json()["message"]["id"]))
            n += 1


def test_backup_of_a_live_server_holds_every_acknowledged_message_and_restores(
    tmp_path: Path,
) -> None:
    copy = tmp_path / "backup" / "chat-copy.db"
    copy.parent.mkdir()
    with ServerProcess(tmp_path) as server:
        with server.http() as http:
            room = http.post("/v1/chat/Create", json={"name": "g", "user_ids": ["alice"]})
            room_id = room.json()["room"]["id"]
        acked: list[tuple[str, str]] = []
        stop = threading.Event()
        load = threading.Thread(target=_keyed_sends, args=(server, room_id, acked, stop))
        load.start()
        try:
            wait_for(lambda: len(acked) >= 100, 20, "100 acknowledged Sends")
            before = list(acked)  # acknowledged before the backup began
            done = chatctl("serve", "backup", "--db", str(server.db), str(copy), env=cli_env())
            during = len(acked) - len(before)
        finally:
            stop.set()
            load.join()
        assert done.returncode == 0, done.stderr
        assert during > 0, "the load kept running while the backup ran"
        assert copy.stat().st_mode & 0o777 == 0o600
        db = sqlite3.connect(copy)
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        ids = {row[0] for row in db.execute("SELECT id FROM messages")}
        db.close()
        assert {message_id for _, message_id in before} <= ids

        # A running server's database is not replaced under it.
        refused = chatctl("serve", "restore", str(copy), "--db", str(server.db), env=cli_env())
        assert refused.returncode == 1
        assert f"a server is running on {server.db}" in refused.stderr
        assert "Traceback" not in refused.stderr

        server.stop()
        restored = chatctl("serve", "restore", str(copy), "--db", str(server.db), env=cli_env())
        assert restored.returncode == 0, restored.stderr
        assert not Path(f"{server.db}-wal").exists()
        server.start()
        with server.http() as http:
            history = http.post("/v1/chat/History", json={"room_id": room_id}).json()
            assert [m["id"] for m in history["messages"]] == sorted(ids)
            # Keys came back too: a retry of an acknowledged Send answers its first answer.
            key, message_id = before[-1]
            retry = http.post(
                "/v1/chat/Send",
                json={"room_id": room_id, "user_id": "alice", "text": f"message {len(before) - 1}"},
                headers={"Idempotency-Key": key},
            )
            assert retry.json()["message"]["id"] == message_id
            new = http.post(
                "/v1/chat/Send", json={"room_id": room_id, "user_id": "alice", "text": "after"}
            )
            assert new.status_code == 200


def test_backup_and_restore_say_what_is_wrong_in_one_line(tmp_path: Path) -> None:
    missing = chatctl(
        "serve", "backup", "--db", str(tmp_path / "none.db"), str(tmp_path / "x"), env=cli_env()
    )
    assert missing.returncode == 1 and "no database at" in missing.stderr
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"not a database" * 100)
    bad = chatctl("serve", "restore", str(junk), "--db", str(tmp_path / "t.db"), env=cli_env())
    assert bad.returncode == 1 and "is not a chatctl SQLite database" in bad.stderr
    assert not (tmp_path / "t.db").exists()
    (tmp_path / "live.db").write_bytes(b"")
    nowhere = chatctl(
        "serve", "backup", "--db", str(tmp_path / "live.db"), str(tmp_path / "no/such/dir/x.db"),
        env=cli_env(),
    )  # fmt: skip
    assert nowhere.returncode == 1 and "cannot write in" in nowhere.stderr
    absent = chatctl("serve", "restore", str(tmp_path / "nope.db"), "--db", "t.db", env=cli_env())
    assert absent.returncode == 1 and "no backup at" in absent.stderr
    pg = chatctl("serve", "backup", "--db", "postgresql://x/y", "f", env=cli_env())
    assert pg.returncode == 2 and "pg_dump" in pg.stderr


def test_postgres_restored_with_pg_restore_serves_with_ids_seqs_and_keys_intact(
    tmp_path: Path,
) -> None:
    """The documented PostgreSQL recipe (docs/deployment.md, Backups): pg_dump -Fc of a
    live database, pg_restore into a new one, a server on it."""
    import subprocess

    from tests import postgres

    dump = tmp_path / "chat.dump"
    with postgres.fresh_database() as source, postgres.fresh_database() as target:
        with ServerProcess(tmp_path, db=source) as server, server.http() as http:
            room_id = http.post("/v1/chat/Create", json={"name": "g", "user_ids": ["a"]}).json()[
                "room"
            ]["id"]
            sent = [
                http.post(
                    "/v1/chat/Send",
                    json={"room_id": room_id, "user_id": "a", "text": f"m{n}"},
                    headers={"Idempotency-Key": f"k{n}"},
                ).json()["message"]
                for n in range(5)
            ]
            done = subprocess.run(
                ["pg_dump", "-Fc", "--no-owner", "-f", str(dump), source],
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert done.returncode == 0, done.stderr
        done = subprocess.run(
            ["pg_restore", "--no-owner", "--exit-on-error", "-d", target, str(dump)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        with ServerProcess(tmp_path, db=target) as server, server.http() as http:
            history = http.post("/v1/chat/History", json={"room_id": room_id}).json()["messages"]
            assert history == sent
            retry = http.post(
                "/v1/chat/Send",
                json={"room_id": room_id, "user_id": "a", "text": "m4"},
                headers={"Idempotency-Key": "k4"},
            )
            assert retry.json()["message"] == sent[4]  # the key's answer, kept
            new = http.post("/v1/chat/Send", json={"room_id": room_id, "user_id": "a", "text": "n"})
            history = http.post("/v1/chat/History", json={"room_id": room_id}).json()["messages"]
            assert history == [*sent, new.json()["message"]]  # after every restored seq
