"""Storage faults: a full disk, a read-only database and a locked one.

Each time a Send must answer 503 ``{"id": "chat.send", "code": 503, ...}`` with a generic
detail (the cause goes to the server's log, where the operator reads what is wrong; a
client is not told about the server's disks or hosts), store nothing of it, keep the
server up (reads keep working), and succeed again (the same Idempotency-Key included)
once the fault is gone.

The full disk is real: the database lives on a small tmpfs (mounting needs root; the
drill is skipped without it) and a filler file takes the rest of the space. The locked
database is real too: another connection holds the write lock. Read-only is injected at
the store boundary (``inject/sitecustomize.py``), as root cannot be refused a write.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.faults.drill import create_room, history, report
from tests.helpers import ServerProcess

INJECT = Path(__file__).parent / "inject"


@contextlib.contextmanager
def small_disk(where: Path, size: str = "1m") -> Iterator[Path]:
    where.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(where)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=True)


def fill(path: Path) -> int:
    """Write ``path`` until the filesystem is full; returns the bytes written."""
    written = 0
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        block = b"\0" * 4096
        while True:
            try:
                written += os.write(fd, block)
            except OSError as exc:
                assert exc.errno == 28, exc  # ENOSPC
                return written
    finally:
        os.close(fd)


def send(c: httpx.Client, room_id: str, text: str, key: str, timeout: float = 10) -> httpx.Response:
    body = {"room_id": room_id, "user_id": "u", "text": text}
    return c.post("/v1/chat/Send", json=body, headers={"Idempotency-Key": key}, timeout=timeout)


def assert_unavailable(r: httpx.Response, server: ServerProcess, *words: str) -> dict[str, Any]:
    """A 503 in m3o's shape whose detail names no cause, and the cause in the log."""
    assert r.status_code == 503, r.text
    body: dict[str, Any] = r.json()
    assert body["id"] == "chat.send" and body["code"] == 503, body
    assert body["status"] == "Service Unavailable", body
    assert "storage unavailable" in body["detail"], body
    assert not any(w in body["detail"] for w in words), body
    logged = [line for line in server.log.read_text().splitlines() if "unavailable" in line]
    assert any(w in line for line in logged for w in words), logged
    return body


def test_disk_full_answers_503_and_recovers(tmp_path: Path) -> None:
    with small_disk(tmp_path / "disk") as disk:
        server = ServerProcess(tmp_path, tcp=True)
        server.db = disk / "chat.db"
        with server, server.http() as c:
            room_id = create_room(server, "disk-full", ["u"])
            before = [send(c, room_id, f"before-{n}", f"b{n}").json()["message"] for n in range(3)]
            filler = disk / "filler"
            fill(filler)
            # Large texts need new pages at once; a few sends may still fit in free pages.
            refused: dict[str, str] = {}
            for n in range(50):
                text = f"full-{n}-" + "x" * 16_000
                r = send(c, room_id, text, f"f{n}")
                if r.status_code == 503:
                    assert_unavailable(r, server, "full")
                    refused[f"f{n}"] = text
                else:
                    assert r.status_code == 200, r.text
                if len(refused) >= 3:
                    break
            assert len(refused) >= 3, "the full disk never refused a send"
            assert c.get("/health").status_code == 200
            during = history(server, room_id)
            assert not {m["text"] for m in during} & set(refused.values()), "half-written"

            filler.unlink()
            # The same keys again: each refused send is stored now, once.
            for key, text in refused.items():
                assert send(c, room_id, text, key).status_code == 200
                assert send(c, room_id, text, key).status_code == 200  # a replay
            after = history(server, room_id)
        assert server.proc is None  # stopped by the with block, not crashed
    texts = [m["text"] for m in after]
    assert texts[:3] == [m["text"] for m in before]
    assert len(texts) == len(set(texts)) == len(during) + len(refused)
    assert set(refused.values()) <= set(texts)
    report("disk-full", refused=len(refused), stored_after=len(after), lost=0, doubled=0)


def test_read_only_database_answers_503_and_recovers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    control = tmp_path / "fault"
    monkeypatch.setenv(
        "PYTHONPATH", os.pathsep.join(filter(None, [str(INJECT), os.environ.get("PYTHONPATH")]))
    )
    monkeypatch.setenv("CHATCTL_DRILL_FAULT", str(control))
    with ServerProcess(tmp_path, tcp=True) as server, server.http() as c:
        room_id = create_room(server, "read-only", ["u"])
        assert send(c, room_id, "before", "k0").status_code == 200
        control.write_text("readonly")
        assert_unavailable(send(c, room_id, "refused", "k1"), server, "readonly")
        r = c.post("/v1/chat/Invite", json={"room_id": room_id, "user_id": "v"})
        assert r.status_code == 503 and r.json()["id"] == "chat.invite", r.text
        assert [m["text"] for m in history(server, room_id)] == ["before"]
        control.unlink()
        assert send(c, room_id, "refused", "k1").status_code == 200
        assert [m["text"] for m in history(server, room_id)] == ["before", "refused"]


def test_locked_database_answers_503_and_recovers(tmp_path: Path) -> None:
    timeout = 2.0  # --db-timeout: how long a call waits for another process's lock
    with (
        ServerProcess(tmp_path, tcp=True, extra=["--db-timeout", str(timeout)]) as server,
        server.http() as c,
    ):
        room_id = create_room(server, "locked", ["u"])
        assert send(c, room_id, "before", "k0").status_code == 200
        other = sqlite3.connect(server.db, isolation_level=None)
        try:
            other.execute("BEGIN IMMEDIATE")  # holds the write lock
            started = time.monotonic()
            pending: list[httpx.Response] = []
            with server.http() as c2:
                # The server waits up to --db-timeout for the lock before giving up...
                sender = threading.Thread(
                    target=lambda: pending.append(send(c2, room_id, "refused", "k1", timeout=30))
                )
                sender.start()
                try:
                    # ...and meanwhile serves everyone else: reads, and the health check a
                    # load balancer makes (it would give up long before).
                    for _ in range(3):
                        assert c.get("/health", timeout=2).status_code == 200
                        r = c.post("/v1/chat/History", json={"room_id": room_id}, timeout=2)
                        assert [m["text"] for m in r.json()["messages"]] == ["before"]
                    assert not pending, "the Send gave up while the lock was still held"
                finally:
                    sender.join(30)
            assert_unavailable(pending[0], server, "locked")
            waited = time.monotonic() - started
            assert timeout <= waited < timeout + 3, waited
            other.execute("ROLLBACK")
        finally:
            other.close()
        assert send(c, room_id, "refused", "k1").status_code == 200
        assert [m["text"] for m in history(server, room_id)] == ["before", "refused"]
    report("locked", waited_s=f"{waited:.1f}")
