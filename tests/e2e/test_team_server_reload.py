"""Tokens change while the server runs: ``chatctl serve token add/revoke`` (or an edit and
SIGHUP) on a real ``chatctl serve`` with live streams. A new token works; a revoked one's
next call is 401 and its open streams (WebSocket and NDJSON) end at once with 401's
error frame and close 4401; every other stream carries on. On PostgreSQL, each replica
watches its own copy of the file and ends its own streams."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from tests import postgres
from tests.helpers import ServerProcess, chatctl, cli_env, wait_for

REVOKED = {"id": "v1", "code": 401, "detail": "token revoked", "status": "Unauthorized"}


def add_token(path: Path, *args: str) -> str:
    r = chatctl("serve", "token", "add", "-t", "acme", "-f", str(path), *args, env=cli_env())
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


def token_id(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()[:12]


class Stream:
    """A Join WebSocket read on a thread: the frames it got and how it closed."""

    def __init__(self, server: ServerProcess, token: str, room: str, user: str) -> None:
        self._stack = contextlib.ExitStack()
        self.ws: ClientConnection = self._stack.enter_context(
            connect(
                f"ws://127.0.0.1:{server.port}/v1/chat/Join",
                additional_headers={"Authorization": f"Bearer {token}"},
                open_timeout=10,
            )
        )
        self.ws.send(json.dumps({"room_id": room, "user_id": user}))
        self.frames: list[dict[str, Any]] = []
        self.code: int | None = None
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        try:
            while True:
                self.frames.append(json.loads(self.ws.recv()))
        except ConnectionClosed as closed:
            self.code = closed.rcvd.code if closed.rcvd else 1006

    def texts(self) -> list[str]:
        return [f["message"]["text"] for f in self.frames if "message" in f]

    def close(self) -> None:
        self._stack.close()
        self.thread.join(10)


class NDJSONStream:
    """A Join over NDJSON (a plain POST), read on a thread."""

    def __init__(self, server: ServerProcess, token: str, room: str) -> None:
        self.lines: list[dict[str, Any]] = []
        self.ended = False
        self._http = server.http(token)
        self._body = {"room_id": room}
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        with self._http.stream("POST", "/v1/chat/Join", json=self._body, timeout=None) as r:
            for line in r.iter_lines():
                self.lines.append(json.loads(line))
        self.ended = True

    def close(self) -> None:
        self._http.close()


def send(server: ServerProcess, token: str, room: str, text: str) -> None:
    with server.http(token) as http:
        r = http.post("/v1/chat/Send", json={"room_id": room, "user_id": "carol", "text": text})
        assert r.status_code == 200, r.text


def status(server: ServerProcess, token: str) -> int:
    with server.http(token) as http:
        return http.post("/v1/chat/List", json={}).status_code


def rewrite(path: Path, text: str) -> None:
    """Replace the file in one rename, as an editor or a config tool does."""
    tmp = path.with_name(path.name + ".new")
    tmp.write_text(text)
    tmp.chmod(0o600)
    os.replace(tmp, path)


@pytest.fixture
def team(
    start_server: Callable[..., ServerProcess], tmp_path: Path
) -> Iterator[tuple[ServerProcess, Path, dict[str, str], str]]:
    path = tmp_path / "tokens"
    tokens = {
        "admin": add_token(path, "--admin"),
        "alice": add_token(path, "-u", "alice"),
        "bob": add_token(path, "-u", "bob"),
    }
    server = start_server(tcp=True, extra=["--tokens-file", str(path), "--log-level", "info"])
    with server.http(tokens["admin"]) as http:
        created = http.post(
            "/v1/chat/Create", json={"name": "team", "user_ids": ["alice", "bob", "carol"]}
        )
    yield server, path, tokens, created.json()["room"]["id"]


@pytest.mark.parametrize("trigger", ["file change", "SIGHUP"])
def test_a_revoked_tokens_streams_close_4401_and_others_carry_on(
    team: tuple[ServerProcess, Path, dict[str, str], str], trigger: str
) -> None:
    server, path, tokens, room = team
    alice = Stream(server, tokens["alice"], room, "alice")
    alice_ndjson = NDJSONStream(server, tokens["alice"], room)
    bob = Stream(server, tokens["bob"], room, "bob")
    # Live: each stream gets a message sent now (sent until all three have one).
    n = 0

    def all_live() -> bool:
        nonlocal n
        n += 1
        send(server, tokens["admin"], room, f"before {n}")
        return bool(alice.texts() and alice_ndjson.lines and bob.texts())

    wait_for(all_live, 10, "the three streams to be live", interval=0.05)

    if trigger == "file change":
        # The real CLI, as an operator would: the server notices within about a second.
        r = chatctl("serve", "token", "revoke", token_id(tokens["alice"]), "-f", str(path),
                    env=cli_env())  # fmt: skip
        assert r.returncode == 0, r.stderr
        dave = add_token(path, "-u", "dave")
    else:
        # An edit of the file, then SIGHUP: applied at once, not by the watcher.
        dave = "tok-dave-" + "5" * 20
        digest = hashlib.sha256(dave.encode()).hexdigest()
        alice_id = token_id(tokens["alice"])
        kept = [line for line in path.read_text().splitlines() if alice_id not in line]
        rewrite(path, "\n".join([*kept, f"sha256:{digest} tenant=acme user=dave"]) + "\n")
        server_proc = server.proc
        assert server_proc is not None
        server_proc.send_signal(signal.SIGHUP)

    # alice's streams end with 401's frame: the WebSocket closes 4401, the NDJSON ends.
    wait_for(lambda: alice.code is not None, 10, "alice's WebSocket to close")
    assert alice.code == 4401
    assert alice.frames[-1] == REVOKED
    wait_for(lambda: alice_ndjson.ended, 10, "alice's NDJSON stream to end")
    assert alice_ndjson.lines[-1] == REVOKED
    # Her next call is 401; the new token works; bob's token and stream carry on.
    assert status(server, tokens["alice"]) == 401
    # dave's line was written after the revoke: the watcher may have reloaded between the
    # two writes, and takes the second within about a second more.
    wait_for(lambda: status(server, dave) == 200, 10, "dave's new token to be loaded")
    assert status(server, tokens["bob"]) == 200
    send(server, tokens["admin"], room, "after")
    wait_for(lambda: "after" in bob.texts(), 10, "bob's stream to carry on")
    assert bob.code is None
    log = server.log.read_text()
    if trigger == "SIGHUP":
        assert f"SIGHUP: reloaded tokens file {path}: 3 tokens (1 added, 1 removed" in log
    else:
        assert f"tokens file {path} reloaded:" in log
    assert "ended 2 streams of revoked tokens" in log
    for token in tokens.values():
        assert token not in log
    for stream in (alice, bob):
        stream.close()
    alice_ndjson.close()


def test_each_replica_revokes_from_its_own_copy(tmp_path: Path) -> None:
    postgres.require()
    copies = [tmp_path / "one" / "tokens", tmp_path / "two" / "tokens"]
    for copy in copies:
        copy.parent.mkdir()
    tokens = {
        "admin": add_token(copies[0], "--admin"),
        "alice": add_token(copies[0], "-u", "alice"),
        "bob": add_token(copies[0], "-u", "bob"),
    }
    rewrite(copies[1], copies[0].read_text())
    with postgres.fresh_database() as db:
        replicas = [
            ServerProcess(copy.parent, tcp=True, db=db, extra=["--tokens-file", str(copy)])
            for copy in copies
        ]
        with replicas[0], replicas[1]:
            with replicas[0].http(tokens["admin"]) as http:
                room = http.post(
                    "/v1/chat/Create", json={"name": "r", "user_ids": ["alice", "bob", "carol"]}
                ).json()["room"]["id"]
            streams = {
                (who, i): Stream(replica, tokens[who], room, who)
                for i, replica in enumerate(replicas)
                for who in ("alice", "bob")
            }
            n = 0

            def all_live() -> bool:
                nonlocal n
                n += 1
                send(replicas[0], tokens["admin"], room, f"before {n}")
                return all(stream.texts() for stream in streams.values())

            wait_for(all_live, 15, "every stream on both replicas to be live", interval=0.05)
            for copy in copies:  # each replica's operator revokes in its own copy
                r = chatctl("serve", "token", "revoke", token_id(tokens["alice"]), "-f", str(copy),
                            env=cli_env())  # fmt: skip
                assert r.returncode == 0, r.stderr
            for i in range(2):
                wait_for(lambda i=i: streams["alice", i].code is not None, 10, "alice's streams")
                assert streams["alice", i].code == 4401
                assert status(replicas[i], tokens["alice"]) == 401
            send(replicas[1], tokens["admin"], room, "after")
            for i in range(2):
                wait_for(lambda i=i: "after" in streams["bob", i].texts(), 10, "bob's streams")
            for stream in streams.values():
                stream.close()
