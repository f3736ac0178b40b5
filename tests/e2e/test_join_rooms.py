"""``chatctl join ROOM...`` and ``chatctl join --all`` as a user runs them, against a real
server on a real socket: on chatctl's server one connection (the server's access log
counts them) for every room, each room resumed after its own last message across a
restart, a room the user is invited to meanwhile followed, one they are kicked from
dropped with a line; on a plain m3o server (the stand-in) one Join a room."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests import postgres
from tests.compat.m3o_standin import RunningStandIn
from tests.helpers import ServerProcess, cli_env, wait_for


@pytest.fixture(params=postgres.BACKENDS)
def logged_server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ServerProcess]:
    """A server whose access log (at info) names each stream it served, on each store."""
    with (
        postgres.database_for(request.param, str(tmp_path / "chat.db")) as db,
        ServerProcess(tmp_path, db=db, extra=["--log-level", "info"]) as s,
    ):
        yield s


class Tail:
    """A running ``chatctl join ARGS``; stdout and stderr read line by line in threads."""

    def __init__(self, env: dict[str, str], *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "chatctl", "join", *args],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: list[str] = []
        self.errors: list[str] = []
        self._readers = [
            threading.Thread(target=self._read, args=(self.proc.stdout, self.lines), daemon=True),
            threading.Thread(target=self._read, args=(self.proc.stderr, self.errors), daemon=True),
        ]
        for reader in self._readers:
            reader.start()

    @staticmethod
    def _read(stream: Any, into: list[str]) -> None:
        for line in stream:
            into.append(line)

    def wait_printed(self, count: int, timeout: float = 60) -> None:
        def printed() -> bool:
            if self.proc.poll() is not None and len(self.lines) < count:
                raise AssertionError(f"join exited {self.proc.returncode}: {self.stderr}")
            return len(self.lines) >= count

        wait_for(printed, timeout, f"{count} lines from the tail")

    @property
    def stderr(self) -> str:
        return "".join(self.errors)

    def finish(self, timeout: float = 60) -> int:
        code = self.proc.wait(timeout)
        for reader in self._readers:
            reader.join(5)
        assert self.proc.stdout is not None and self.proc.stderr is not None
        self.proc.stdout.close()
        self.proc.stderr.close()
        return code


def create_rooms(c: httpx.Client, n: int, members: list[str]) -> list[str]:
    ids = []
    for i in range(n):
        r = c.post("/v1/chat/Create", json={"name": f"room-{i:04d}", "user_ids": members})
        assert r.status_code == 200, r.text
        ids.append(r.json()["room"]["id"])
    return ids


def send_each(c: httpx.Client, sends: list[tuple[str, str]]) -> None:
    """One bulk Send (NDJSON): a message by bob to each room, in one request."""
    body = "".join(
        json.dumps({"room_id": room, "user_id": "bob", "text": text}) + "\n"
        for room, text in sends
    )
    r = c.post(
        "/v1/chat/Send",
        content=body.encode(),
        headers={"Content-Type": "application/x-ndjson"},
        timeout=60,
    )
    assert r.status_code == 200, r.text
    assert all('"message"' in line for line in r.text.splitlines()), r.text[:500]


def streams_served(server: ServerProcess) -> dict[str, int]:
    """The WebSocket streams the server's access log says it served, by path."""
    paths = re.findall(r"WS (/v1/chat/\w+) \d+", server.log.read_text())
    return {path: paths.count(path) for path in set(paths)}


def all_rooms_drill(server: ServerProcess, rooms: int) -> None:
    """``join --all`` over ``rooms`` rooms: a message to each printed once with its room,
    the server restarted halfway and what was sent meanwhile printed once, an invite
    while it runs followed, one connection a run of the server."""
    with server.http() as c:
        ids = create_rooms(c, rooms, ["carol", "bob"])
        started = datetime.now(UTC).isoformat()
        expected = [(room, f"to {room}") for room in ids]
        half = rooms // 2
        # --since: the messages sent before the stream is live are replayed, not raced.
        tail = Tail(
            cli_env(server), "--all", "--user", "carol", "--since", started,
            "--count", str(rooms + 1), "-o", "jsonl",
        )
        send_each(c, expected[:half])
        tail.wait_printed(half)
        server.restart()  # the stream drops; the rest is sent before it is back
        send_each(c, expected[half:])
        tail.wait_printed(rooms)
        private = c.post(
            "/v1/chat/Create", json={"name": "new", "user_ids": ["bob"], "private": True}
        ).json()["room"]["id"]
        assert c.post("/v1/chat/Invite", json={"room_id": private, "user_id": "carol"}).is_success
        send_each(c, [(private, "to the new room")])
        assert tail.finish() == 0, tail.stderr
    printed = [json.loads(line) for line in tail.lines]
    assert sorted((m["room_id"], m["text"]) for m in printed) == sorted(
        [*expected, (private, "to the new room")]
    )
    assert "reconnect" in tail.stderr and "now following new" in tail.stderr
    # One connection for every room, each time the server ran; never a Join of one room.
    assert streams_served(server) == {"/v1/chat/JoinRooms": 2}, server.log.read_text()[-2000:]


def test_join_all_follows_every_room_on_one_connection(logged_server: ServerProcess) -> None:
    all_rooms_drill(logged_server, 100)


@pytest.mark.soak
def test_join_all_follows_a_thousand_rooms_on_one_connection(
    logged_server: ServerProcess,
) -> None:
    all_rooms_drill(logged_server, 1000)
