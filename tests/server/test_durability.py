"""A message acknowledged is a message kept: kill -9 the server, restart it, read them back."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
from pathlib import Path

import httpx

from tests.server.conftest import free_port

LAUNCHER = Path(__file__).with_name("run_server.py")
ROOT = Path(__file__).resolve().parents[2]


def start(db: Path, port: int) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, str(LAUNCHER), str(db), str(port)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()  # blocks until "ready" (or EOF if it died)
    assert line.strip() == "ready", f"server did not start: {line!r}"
    return proc


def test_acknowledged_messages_survive_kill_9(tmp_path: Path) -> None:
    db = tmp_path / "chat.db"
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    proc = start(db, port)
    try:
        with httpx.Client(base_url=base) as client:
            room = client.post("/v1/chat/Create", json={"user_ids": ["a"]}).json()["room"]
            acked = []
            for i in range(200):
                r = client.post(
                    "/v1/chat/Send", json={"room_id": room["id"], "user_id": "a", "text": f"{i}"}
                )
                assert r.status_code == 200
                acked.append(r.json()["message"])
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        assert proc.stdout is not None
        proc.stdout.close()

    # The database and its WAL are nobody else's to read.
    assert stat.S_IMODE(db.stat().st_mode) == 0o600

    proc = start(db, port)
    try:
        with httpx.Client(base_url=base) as client:
            history = client.post("/v1/chat/History", json={"room_id": room["id"]}).json()
            assert history["messages"] == acked
            # and the restarted server carries on the same room
            r = client.post(
                "/v1/chat/Send", json={"room_id": room["id"], "user_id": "a", "text": "after"}
            )
            assert r.status_code == 200
    finally:
        proc.terminate()
        proc.wait(10)
        assert proc.stdout is not None
        proc.stdout.close()


def test_commits_are_fsynced_by_default_and_only_at_checkpoints_with_sync_normal(
    tmp_path: Path,
) -> None:
    # What a power cut does to each is tests/faults/test_power.py; here, that the setting
    # reaches both connections (the writer's commits, the reader's migrations).
    from chatctl.server.store_sqlite import SQLiteStore

    for sync, level in (("full", 2), ("normal", 1)):
        store = SQLiteStore(str(tmp_path / f"{sync}.db"), sync=sync)
        try:
            for db in (store._db, store._wdb):
                assert db.execute("PRAGMA synchronous").fetchone() == (level,)
        finally:
            store.close_now()
    default = SQLiteStore(str(tmp_path / "default.db"))
    default.close_now()
    assert default.sync == "full"
