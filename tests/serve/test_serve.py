"""``chatctl serve`` as a process: who it refuses, how it stops, what it keeps private."""

from __future__ import annotations

import contextlib
import json
import signal
import socket
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, unix_connect

from tests.helpers import free_port
from tests.serve.conftest import Serve, Served, chatctl


def refused(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


@contextlib.contextmanager
def open_stream(served: Served, token: str | None = None) -> Iterator[ClientConnection]:
    """A Join stream on a fresh room, proven live: it has seen another user's message."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    with (
        served.http(token) as http,
        unix_connect(
            str(served.uds), "ws://localhost/v1/chat/Join", additional_headers=headers
        ) as ws,
    ):
        room = http.post("/v1/chat/Create", json={"name": "general", "user_ids": ["alice"]})
        assert room.status_code == 200, room.text
        room_id = room.json()["room"]["id"]
        ws.send(json.dumps({"room_id": room_id, "user_id": "bob"}))
        # Send until the stream delivers: the Join is subscribed once a message arrives.
        deadline = time.monotonic() + 10
        while True:
            sent = http.post(
                "/v1/chat/Send", json={"room_id": room_id, "user_id": "alice", "text": "hi"}
            )
            assert sent.status_code == 200, sent.text
            try:
                frame = json.loads(ws.recv(timeout=0.2))
                break
            except TimeoutError:
                assert time.monotonic() < deadline, "the Join stream never delivered"
        assert frame["message"]["text"] == "hi"
        yield ws


def close_code(ws: ClientConnection, timeout: float = 10.0) -> int | None:
    """Read the stream to its end; the close code the server sent."""
    with pytest.raises(ConnectionClosed) as closed:
        while True:
            ws.recv(timeout=timeout)
    assert closed.value.rcvd is not None, "the server closed without a close frame"
    return closed.value.rcvd.code


def test_refuses_a_network_address_without_a_token() -> None:
    port = free_port()
    result = subprocess.run(
        chatctl("serve", "--host", "0.0.0.0", "--port", str(port)),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "--token" in lines[0] and "--tokens-file" in lines[0]
    assert refused(port)


@pytest.mark.parametrize("where", ["under-a-file", "a-directory"])
def test_a_database_it_cannot_open_is_one_clear_error(tmp_path: Path, where: str) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    db = blocker / "chat.db" if where == "under-a-file" else tmp_path
    port = free_port()
    result = subprocess.run(
        chatctl("serve", "--db", str(db), "--port", str(port)),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    error, hint = result.stderr.strip().splitlines()
    assert error.startswith("error: cannot ") and str(db) in error
    assert hint.startswith("hint: ") and "--db PATH" in hint
    assert refused(port)


def test_sync_is_refused_for_postgresql_whose_own_setting_decides() -> None:
    port = free_port()
    result = subprocess.run(
        chatctl(
            "serve",
            "--db",
            "postgresql://chat@db.invalid/chat",
            "--sync",
            "normal",
            "--port",
            str(port),
        ),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "--sync" in lines[0] and "synchronous_commit" in lines[0], lines
    assert refused(port)


def test_notify_is_refused_for_sqlite_which_has_no_replicas(tmp_path: Path) -> None:
    port = free_port()
    db = tmp_path / "chat.db"
    result = subprocess.run(
        chatctl("serve", "--db", str(db), "--notify", "rooms", "--port", str(port)),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "--notify" in lines[0] and "PostgreSQL" in lines[0], lines
    assert refused(port) and not db.exists()


def test_serves_a_network_address_with_a_token(serve: Serve, tmp_path: Path) -> None:
    served = serve("--host", "0.0.0.0", "--port", "0", "--token", "s3cret", uds=False)
    port = int(served.wait_for_log(r"running on http://0\.0\.0\.0:(\d+)").group(1))
    assert not refused(port)
    assert served.stop() == 0


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_closes_streams_with_1001_and_exits_0(serve: Serve, signum: int) -> None:
    served = serve()
    with open_stream(served) as ws:
        started = time.monotonic()
        served.proc.send_signal(signum)
        assert close_code(ws) == 1001
    assert served.proc.wait(timeout=10) == 0
    assert time.monotonic() - started < 5, served.stderr()
    assert "Traceback" not in served.stderr()


def test_socket_and_database_are_private(serve: Serve, tmp_path: Path) -> None:
    db = tmp_path / "data" / "chat.db"
    served = serve("--db", str(db))
    assert served.uds is not None
    assert stat.S_IMODE(served.uds.stat().st_mode) == 0o600
    assert stat.S_IMODE(served.uds.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE(db.stat().st_mode) == 0o600
    assert stat.S_IMODE(db.parent.stat().st_mode) == 0o700
    assert served.stop() == 0
    assert not served.uds.exists()


def test_a_stale_socket_is_replaced_and_a_live_one_refused(serve: Serve, tmp_path: Path) -> None:
    first = serve()
    assert first.uds is not None
    second = serve("--uds", str(first.uds), uds=False, wait=False)
    assert second.proc.wait(timeout=30) == 1
    assert "already listening" in second.stderr()
    first.proc.kill()
    first.proc.wait(timeout=10)
    assert first.uds.exists()  # killed: no chance to clean up
    third = serve("--uds", str(first.uds), uds=False, wait=False)
    third.uds = first.uds
    third.wait_until_answering()
    assert third.stop() == 0


def test_tokens_are_accepted_and_never_logged(serve: Serve, tmp_path: Path) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text("# team tokens\ntok-alice-5f1e   # alice\ntok-bob-77a2\n")
    served = serve("--tokens-file", str(tokens), "--log-level", "debug")
    for token, status in [
        ("tok-alice-5f1e", 200),
        ("tok-bob-77a2", 200),
        ("tok-stranger-0000", 401),
        ("#", 401),
        (None, 401),
    ]:
        with served.http(token) as http:
            assert http.post("/v1/chat/List", json={}).status_code == status, token
    with open_stream(served, "tok-alice-5f1e") as ws:
        assert served.stop() == 0
        assert close_code(ws) == 1001
    log = served.stderr()
    assert "/v1/chat/List" in log  # the requests were logged...
    for secret in ("tok-alice-5f1e", "tok-bob-77a2", "tok-stranger-0000"):
        assert secret not in log  # ...their tokens were not


def test_exits_by_itself_when_idle(serve: Serve) -> None:
    served = serve("--idle-exit", "0.5")
    # An open stream keeps it up, however long nothing is said.
    with open_stream(served), pytest.raises(subprocess.TimeoutExpired):
        served.proc.wait(timeout=1.5)
    assert served.proc.wait(timeout=10) == 0
    assert served.uds is not None and not served.uds.exists()


def test_limits_are_flags(serve: Serve) -> None:
    served = serve("--max-text-chars", "5", "--max-rooms-per-tenant", "1")
    with served.http() as http:
        room = http.post("/v1/chat/Create", json={"name": "general", "user_ids": ["alice"]})
        assert room.status_code == 200, room.text
        assert http.post("/v1/chat/Create", json={"name": "second"}).status_code >= 400
        send = {"room_id": room.json()["room"]["id"], "user_id": "alice"}
        assert http.post("/v1/chat/Send", json={**send, "text": "hi"}).status_code == 200
        too_long = http.post("/v1/chat/Send", json={**send, "text": "hello world"})
        assert too_long.status_code in (400, 413), too_long.text


def test_a_postgresql_password_never_reaches_an_error_message() -> None:
    from chatctl.server.store_pg import without_password as _without_password

    url = "postgresql://chat:s3cr%40t@db.example:5432/chat?sslmode=require"
    shown = _without_password(url)
    assert "s3cr" not in shown
    assert shown == "postgresql://chat:***@db.example:5432/chat?sslmode=require"
    assert _without_password("postgresql://chat@db/chat") == "postgresql://chat@db/chat"


def test_a_limits_old_bytes_name_still_starts_the_server(serve: Serve) -> None:
    # --max-text-bytes was the flag before limits counted characters; a unit file that
    # still says it must keep starting, with the figure applied to the new count.
    served = serve("--max-text-bytes", "5")
    with served.http() as http:
        room = http.post("/v1/chat/Create", json={"name": "general", "user_ids": ["alice"]})
        send = {"room_id": room.json()["room"]["id"], "user_id": "alice"}
        assert http.post("/v1/chat/Send", json={**send, "text": "héllo"}).status_code == 200
        too_long = http.post("/v1/chat/Send", json={**send, "text": "hello!"})
        assert too_long.status_code == 400, too_long.text
        assert "max_text_chars" in too_long.json()["detail"]
