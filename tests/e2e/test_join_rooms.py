"""``chatctl join ROOM...`` and ``chatctl join --all`` as a user runs them, against a real
server on a real socket: on chatctl's server one connection (the server's access log
counts them) for every room, each room resumed after its own last message across a
restart, a room the user is invited to meanwhile followed, one they are kicked from
dropped with a line; on a plain m3o server (the stand-in) one Join a room."""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
import sys
import threading
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
        json.dumps({"room_id": room, "user_id": "bob", "text": text}) + "\n" for room, text in sends
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
    # one line when a stream ends (each also has a "stream open: " line when admitted)
    paths = re.findall(r"(?<!stream open: )WS (/v1/chat/\w+) \d+", server.log.read_text())
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
            cli_env(server),
            "--all",
            "--user",
            "carol",
            "--since",
            started,
            "--count",
            str(rooms + 1),
            "-o",
            "jsonl",
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
    """100 rooms here; 1,000 (3 to 8 s a store on a shared 2-core machine) is the soak
    drill, tests/faults/test_join_rooms.py (``pytest -m soak tests/faults``)."""
    all_rooms_drill(logged_server, 100)


@pytest.mark.one_backend  # a kick's notification across PostgreSQL: the replica test
def test_join_rooms_labels_lines_and_drops_a_room_with_a_line(
    logged_server: ServerProcess,
) -> None:
    """Named rooms on a terminal's lines (-o table): each line begins with its room's
    name; a kick drops that room with a line on stderr, the others go on; when the last
    room named ends, the tail ends as a Join of it would (kicked: exit 4)."""
    server = logged_server
    with server.http() as c:
        alpha, beta, gamma = (
            c.post("/v1/chat/Create", json={"name": n, "user_ids": ["carol", "bob"]}).json()[
                "room"
            ]["id"]
            for n in ("alpha", "beta", "gamma")
        )
        tail = Tail(
            cli_env(server),
            "alpha",
            beta,
            "gamma",
            "--user",
            "carol",
            "--since",
            datetime.now(UTC).isoformat(),
            "-o",
            "table",
        )
        send_each(c, [(alpha, "a1")])
        tail.wait_printed(1)
        c.post("/v1/chat/Kick", json={"room_id": beta, "user_id": "carol"})
        wait_for(lambda: "beta: " in tail.stderr, 20, "the kick to be told")
        send_each(c, [(beta, "not seen"), (gamma, "g1"), (alpha, "a2")])
        tail.wait_printed(3)
        for room in (alpha, gamma):
            c.post("/v1/chat/Kick", json={"room_id": room, "user_id": "carol"})
        code = tail.finish()
    lines = [line.split() for line in tail.lines]
    assert [(w[0], w[2], w[3]) for w in lines] == [
        ("alpha", "bob:", "a1"),
        ("gamma", "bob:", "g1"),
        ("alpha", "bob:", "a2"),
    ]
    assert "beta: user was kicked; no longer following it" in tail.stderr
    assert code == 4, tail.stderr  # as `join` of one room exits when kicked
    assert streams_served(server) == {"/v1/chat/JoinRooms": 1}


def test_join_all_on_a_plain_m3o_server_opens_one_join_a_room(
    m3o_room_server: RunningStandIn,
) -> None:
    """A server without JoinRooms: one Join (one connection) a room, in one process; the
    streams dropped and rejoined print what was sent meanwhile once; a room the user is
    invited to is followed from the next listing; a name is escaped on the line."""
    srv = m3o_room_server
    names = ["one", "two", "evil\x1b[31m"]
    ids = [
        srv.call("Create", {"name": n, "user_ids": ["alice", "bob"]})["room"]["id"] for n in names
    ]
    env = cli_env(None, CHATCTL_URL=srv.url, CHATCTL_TOKEN=srv.token)
    tail = Tail(env, "--all", "--user", "bob", "--count", "5", "-o", "table")
    consumers = srv.app.chat.tenant(srv.token).consumers

    def streams(room: str) -> int:
        return len(consumers.get((room, "bob"), []))

    wait_for(lambda: all(streams(r) for r in ids), 20, "a Join of each room")
    assert sum(streams(r) for r in ids) == 3 and len(srv.sent("Join")) == 3
    for room, text in zip(ids, ("m1", "m2", "m3"), strict=True):
        srv.call("Send", {"room_id": room, "user_id": "alice", "text": text})
    tail.wait_printed(3)
    assert srv.app.drop_streams(srv.token) == 3
    srv.call("Send", {"room_id": ids[0], "user_id": "alice", "text": "m4"})  # while down
    new = srv.call("Create", {"name": "new", "user_ids": ["alice"]})["room"]["id"]
    srv.call("Invite", {"room_id": new, "user_id": "bob"})
    wait_for(lambda: streams(new), 20, "a Join of the room bob was invited to")
    srv.call("Send", {"room_id": new, "user_id": "alice", "text": "m5"})
    assert tail.finish() == 0, tail.stderr
    printed = sorted((line.split()[0], line.split()[-1]) for line in tail.lines)
    assert printed == [
        ("evil\\x1b[31m", "m3"),
        ("new", "m5"),
        ("one", "m1"),
        ("one", "m4"),
        ("two", "m2"),
    ]
    assert "\x1b" not in "".join(tail.lines)
    assert len({body["room_id"] for body in srv.sent("Join")}) == 4


CLI_DOC = Path(__file__).resolve().parents[2] / "docs/cli.md"


def doc_lines() -> list[str]:
    """The commands of docs/cli.md's "Tailing many rooms" block, as written."""
    section = CLI_DOC.read_text().split("\n## Tailing many rooms", 1)[1].split("\n## ", 1)[0]
    found = re.search(r"```sh\n(.*?)```", section, re.S)
    assert found, "docs/cli.md's Tailing many rooms section has no ```sh block"
    return [line for line in found.group(1).splitlines() if line.strip()]


@pytest.mark.one_backend
def test_the_docs_many_rooms_recipes_work(logged_server: ServerProcess) -> None:
    """Each line of the docs' block, in bash, in turn: two messages, each as its room's id
    and its text, from general and ops (carol's two rooms), then exit 0."""
    server = logged_server
    lines = doc_lines()
    assert lines
    with server.http() as c:
        rooms = {
            name: c.post(
                "/v1/chat/Create", json={"name": name, "user_ids": ["carol", "bob"]}
            ).json()["room"]["id"]
            for name in ("general", "ops")
        }
        for line in lines:
            proc = subprocess.Popen(
                ["bash", "-o", "pipefail", "-c", line],
                env=cli_env(server, PATH=f"{Path(sys.executable).parent}:/usr/bin:/bin"),
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            # Until it exits: what was sent before it was live is not printed, nor counted.
            for sent in range(400):
                room = ("general", "ops")[sent % 2]
                send_each(c, [(rooms[room], f"to {room}")])
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(0.05)
                    break
            out, err = proc.communicate(timeout=20)
            assert proc.returncode == 0, (line, err)
            printed = [row.split("\t") for row in out.splitlines()]
            assert len(printed) == 2, (line, out)
            assert all(rooms[text.removeprefix("to ")] == room for room, text in printed), line


@pytest.mark.postgres
def test_an_invite_and_a_kick_on_another_replica_reach_a_join_all(tmp_path: Path) -> None:
    """Two replicas on one PostgreSQL: carol's every-room stream on A hears of the room
    she is invited to on B (and its message sent on B), then of her kick on B."""
    from websockets.sync.client import connect

    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    with (
        postgres.fresh_database() as url,
        ServerProcess(tmp_path / "a", tcp=True, db=url) as a,
        ServerProcess(tmp_path / "b", tcp=True, db=url) as b,
        b.http() as on_b,
    ):
        first = on_b.post("/v1/chat/Create", json={"name": "first", "user_ids": ["carol"]})
        with connect(f"ws://127.0.0.1:{a.port}/v1/chat/JoinRooms", open_timeout=10) as ws:
            ws.send(json.dumps({"user_id": "carol", "all": True}))

            def next_frame() -> dict[str, Any]:
                frame: dict[str, Any] = json.loads(ws.recv(timeout=10))
                return frame

            assert next_frame()["room_added"]["room_id"] == first.json()["room"]["id"]
            new = on_b.post(
                "/v1/chat/Create", json={"name": "new", "user_ids": ["bob"], "private": True}
            ).json()["room"]["id"]
            on_b.post("/v1/chat/Invite", json={"room_id": new, "user_id": "carol"})
            sent = on_b.post(
                "/v1/chat/Send", json={"room_id": new, "user_id": "bob", "text": "hello"}
            ).json()
            added = next_frame()["room_added"]
            assert (added["room_id"], added["name"], added["new"]) == (new, "new", True)
            assert next_frame() == sent
            on_b.post("/v1/chat/Kick", json={"room_id": new, "user_id": "carol"})
            assert next_frame() == {
                "room_ended": {"room_id": new, "code": 4403, "detail": "user was kicked"}
            }


def created_room_drill(tail_on: ServerProcess, change_on: ServerProcess) -> None:
    """``join --all`` as carol on ``tail_on``; on ``change_on``, while it runs, a room
    created with carol among its users (``chatctl create -u carol``, no invite) and a
    message to it: followed at once, the message printed once with its room."""
    env = cli_env(change_on)
    with change_on.http() as c:
        first = c.post("/v1/chat/Create", json={"name": "first", "user_ids": ["carol", "bob"]})
        since = datetime.now(UTC).isoformat()
        send_each(c, [(first.json()["room"]["id"], "before")])
        tail = Tail(
            cli_env(tail_on), "--all", "--user", "carol", "--since", since, "--count", "3",
            "-o", "jsonl",
        )  # fmt: skip
        tail.wait_printed(1)  # the stream is running (its replay is printed)
        created = subprocess.run(
            [sys.executable, "-m", "chatctl", "create", "newroom", "-u", "carol", "-u", "bob",
             "-o", "json"],
            env=env, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert created.returncode == 0, created.stderr
        new = json.loads(created.stdout)["room"]["id"]
        sent = subprocess.run(
            [sys.executable, "-m", "chatctl", "send", "newroom", "hello", "-u", "bob"],
            env=env, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert sent.returncode == 0, sent.stderr
        tail.wait_printed(2)
        send_each(c, [(first.json()["room"]["id"], "after")])  # a repeat would come first
        assert tail.finish() == 0, tail.stderr
    printed = [json.loads(line) for line in tail.lines]
    assert [(m["room_id"], m["text"]) for m in printed[1:]] == [
        (new, "hello"),
        (first.json()["room"]["id"], "after"),
    ]
    assert "now following newroom: the user was let into it" in tail.stderr


@pytest.mark.one_backend  # PostgreSQL: across replicas, below
def test_a_room_created_with_the_user_in_it_reaches_a_running_join_all(
    logged_server: ServerProcess,
) -> None:
    created_room_drill(logged_server, logged_server)


@pytest.mark.postgres
def test_a_room_created_on_another_replica_reaches_a_join_all(tmp_path: Path) -> None:
    """The Create's note travels through PostgreSQL as an invite's event does."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    with (
        postgres.fresh_database() as url,
        ServerProcess(tmp_path / "a", db=url) as a,
        ServerProcess(tmp_path / "b", db=url) as b,
    ):
        created_room_drill(a, b)
