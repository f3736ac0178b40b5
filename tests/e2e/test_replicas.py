"""Two `chatctl serve` replicas on one PostgreSQL database: one room, one order, wherever a
client is connected. Needs CHATCTL_TEST_POSTGRES (see tests/postgres.py)."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from tests import postgres
from tests.helpers import ServerProcess, cli_env, wait_for

pytestmark = pytest.mark.postgres


class Replicas:
    def __init__(self, a: ServerProcess, b: ServerProcess) -> None:
        self.a = a
        self.b = b
        self.http_a = a.http()
        self.http_b = b.http()

    def call(self, http: httpx.Client, endpoint: str, body: dict[str, Any], **kw: Any) -> Any:
        r = http.post(f"/v1/chat/{endpoint}", json=body, **kw)
        assert r.status_code == 200, r.text
        return r.json()

    def create(self, *users: str) -> str:
        room = self.call(
            self.http_a, "Create", {"name": "r", "description": "", "user_ids": list(users)}
        )
        return str(room["room"]["id"])

    def members(self, http: httpx.Client, room: str) -> list[str]:
        rooms = self.call(http, "List", {})["rooms"]
        return next(r["user_ids"] for r in rooms if r["id"] == room)


@pytest.fixture
def replicas(tmp_path: Path) -> Iterator[Replicas]:
    with postgres.fresh_database() as url:
        (tmp_path / "a").mkdir()
        (tmp_path / "b").mkdir()
        with (
            ServerProcess(tmp_path / "a", tcp=True, db=url) as a,
            ServerProcess(tmp_path / "b", tcp=True, db=url) as b,
        ):
            r = Replicas(a, b)
            try:
                yield r
            finally:
                r.http_a.close()
                r.http_b.close()


@contextlib.contextmanager
def ws_join(server: ServerProcess, request: dict[str, Any]) -> Iterator[ClientConnection]:
    with connect(f"ws://127.0.0.1:{server.port}/v1/chat/Join", open_timeout=10) as ws:
        ws.send(json.dumps(request))
        yield ws


def test_a_tail_on_b_gets_1000_messages_sent_alternately_to_a_and_b(replicas: Replicas) -> None:
    room = replicas.create("sender")
    tail = subprocess.Popen(
        [sys.executable, "-m", "chatctl", "join", room, "--user", "watcher", "--count", "1000"],
        env=cli_env(replicas.b),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(lambda: "watcher" in replicas.members(replicas.http_a, room), 20, "the join")
        for i in range(1000):
            http = replicas.http_a if i % 2 == 0 else replicas.http_b
            replicas.call(http, "Send", {"room_id": room, "user_id": "sender", "text": f"m{i}"})
        out, err = tail.communicate(timeout=60)
    finally:
        if tail.poll() is None:
            tail.kill()
            tail.communicate()
    assert tail.returncode == 0, err
    texts = [json.loads(line)["text"] for line in out.splitlines()]
    assert texts == [f"m{i}" for i in range(1000)]


def test_concurrent_senders_on_both_replicas_one_order_everywhere(replicas: Replicas) -> None:
    """Two senders at once, one per replica: a stream on each replica sees the room's one
    order (History's), each message once, and a resumed stream continues it exactly."""
    room = replicas.create("s-a", "s-b")
    n = 200
    with (
        ws_join(replicas.a, {"room_id": room, "user_id": "w-a"}) as on_a,
        ws_join(replicas.b, {"room_id": room, "user_id": "w-b"}) as on_b,
    ):
        wait_for(
            lambda: {"w-a", "w-b"} <= set(replicas.members(replicas.http_b, room)), 20, "joins"
        )

        def send_all(http: httpx.Client, user: str) -> None:
            for i in range(n):
                body = {"room_id": room, "user_id": user, "text": f"{user} {i}"}
                replicas.call(http, "Send", body)

        with ThreadPoolExecutor(2) as pool:
            list(pool.map(send_all, [replicas.http_a, replicas.http_b], ["s-a", "s-b"]))
        messages = replicas.call(replicas.http_b, "History", {"room_id": room})["messages"]
        history = [m["id"] for m in messages]
        assert len(history) == 2 * n
        for ws in (on_a, on_b):
            got = [json.loads(ws.recv(timeout=10))["message"]["id"] for _ in range(2 * n)]
            assert got == history

    # Resume on the other replica after the 150th message: exactly the rest, in order.
    since = {"room_id": room, "user_id": "w-b", "since": history[149]}
    with ws_join(replicas.a, since) as resumed:
        got = [json.loads(resumed.recv(timeout=10))["message"]["id"] for _ in range(2 * n - 150)]
    assert got == history[150:]


def test_a_kick_on_a_ends_the_stream_on_b_within_200_ms(replicas: Replicas) -> None:
    room = replicas.create("sender")
    ended_at: list[float] = []
    with ws_join(replicas.b, {"room_id": room, "user_id": "watcher"}) as ws:
        wait_for(lambda: "watcher" in replicas.members(replicas.http_a, room), 20, "the join")

        def read() -> None:
            with contextlib.suppress(ConnectionClosed):
                while True:
                    ws.recv(timeout=10)
            ended_at.append(time.monotonic())

        reader = threading.Thread(target=read)
        reader.start()
        started = time.monotonic()
        replicas.call(replicas.http_a, "Kick", {"room_id": room, "user_id": "watcher"})
        reader.join(10)
    assert ws.close_code == 4403
    # At once (not at a ping, 8 s), with room for four test workers on two cores.
    assert ended_at[0] - started < 1.0, f"ended after {ended_at[0] - started:.3f} s"
    # The kick holds on B too: no rejoining until invited again.
    with ws_join(replicas.b, {"room_id": room, "user_id": "watcher"}) as again:
        refused = json.loads(again.recv(timeout=5))
        with pytest.raises(ConnectionClosed):
            again.recv(timeout=5)
    assert refused["code"] == 403 and again.close_code == 4403


def test_delete_and_events_reach_the_other_replica(replicas: Replicas) -> None:
    room = replicas.create("sender")
    frames = []
    with ws_join(replicas.b, {"room_id": room, "user_id": "watcher", "events": True}) as ws:
        wait_for(lambda: "watcher" in replicas.members(replicas.http_a, room), 20, "the join")
        replicas.call(replicas.http_a, "Invite", {"room_id": room, "user_id": "guest"})
        event = json.loads(ws.recv(timeout=5))["event"]
        assert (event["type"], event["user_id"]) == ("invited", "guest")
        replicas.call(replicas.http_a, "Delete", {"room_id": room})
        with pytest.raises(ConnectionClosed):
            while True:
                frames.append(json.loads(ws.recv(timeout=5)))
    assert ws.close_code == 4404
    assert frames[-1]["code"] == 404


def test_a_send_retried_on_the_other_replica_is_not_doubled(replicas: Replicas) -> None:
    room = replicas.create("sender")
    body = {"room_id": room, "user_id": "sender", "text": "once"}
    first = replicas.call(replicas.http_a, "Send", body, headers={"Idempotency-Key": "k-1"})
    retry = replicas.call(replicas.http_b, "Send", body, headers={"Idempotency-Key": "k-1"})
    assert retry == first

    # The same key on both replicas at the same moment, many times: one message each.
    def send(args: tuple[httpx.Client, str]) -> str:
        http, key = args
        r = replicas.call(http, "Send", body, headers={"Idempotency-Key": key})
        return str(r["message"]["id"])

    keys = [f"race-{i}" for i in range(30)]
    pairs = [(http, key) for key in keys for http in (replicas.http_a, replicas.http_b)]
    with ThreadPoolExecutor(2) as pool:
        ids = list(pool.map(send, pairs))
    assert ids[0::2] == ids[1::2]
    history = replicas.call(replicas.http_b, "History", {"room_id": room})["messages"]
    assert len(history) == 1 + len(keys)


def test_a_lost_database_connection_is_a_503_then_service_and_streams_resume(
    replicas: Replicas,
) -> None:
    """PostgreSQL drops every connection (a restart, a failover): streams end with 1001 so
    clients resume, a call answers 503 or succeeds, and both replicas recover by themselves."""
    import psycopg

    room = replicas.create("sender")
    with ws_join(replicas.b, {"room_id": room, "user_id": "watcher"}) as ws:
        wait_for(lambda: "watcher" in replicas.members(replicas.http_a, room), 20, "the join")
        first = replicas.call(
            replicas.http_a, "Send", {"room_id": room, "user_id": "sender", "text": "before"}
        )
        assert json.loads(ws.recv(timeout=5))["message"]["id"] == first["message"]["id"]
        assert isinstance(replicas.a.db, str)
        with psycopg.connect(postgres.URL, autocommit=True) as admin:
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE datname = %s AND pid <> pg_backend_pid()",
                (replicas.a.db.rsplit("/", 1)[1],),
            )
        with pytest.raises(ConnectionClosed):
            ws.recv(timeout=5)
    assert ws.close_code == 1001

    def sent() -> bool:
        body = {"room_id": room, "user_id": "sender", "text": "after"}
        r = replicas.http_a.post("/v1/chat/Send", json=body, headers={"Idempotency-Key": "x"})
        assert r.status_code in (200, 503), r.text
        return r.status_code == 200

    wait_for(sent, 10, "Send to work again")
    since = {"room_id": room, "user_id": "watcher", "since": first["message"]["id"]}

    def resumed() -> list[str]:
        with ws_join(replicas.b, since) as again:
            try:
                frame = json.loads(again.recv(timeout=5))
            except ConnectionClosed:
                return []  # B is not listening again yet: 1001, resume later
        return [frame["message"]["text"]] if "message" in frame else []

    assert wait_for(resumed, 10, "a resumed stream on B") == ["after"]
