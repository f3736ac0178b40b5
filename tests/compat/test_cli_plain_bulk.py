"""A batch of Sends to an m3o server that is not chatctl's (the stand-ins, both editions):
no bulk Send, ever; exactly one seed-shaped Send per line, in input order, each a JSON
body with the seed's fields only, named as the server's edition names them; and against
chatctl's own server, the same batch in bulk, to be sure the test can tell them apart."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.compat.m3o_standin import RunningStandIn
from tests.compat.test_cli_plain_servers import env_for, make_room, seed_fields
from tests.helpers import ServerProcess, cli_env

LINES = 300


def run_send(env: dict[str, str], *args: str, input: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "chatctl", "send", *args, "-o", "id"],
        env=env,
        input=input,
        capture_output=True,
        text=True,
        timeout=120,
    )


def assert_one_seed_send_per_line(srv: RunningStandIn, rid: str, texts: list[str]) -> None:
    sends = [r for r in srv.requests if r.endpoint == "Send"]
    # Before the edition is known, a first Send may name the other edition's id and be
    # refused before anything is done (the client's edition probe): at most one.
    probes = [r for r in sends if r.status == 400 and f"{srv.edition}_id" not in r.body]
    assert len(probes) <= 1 and all(r is sends[0] for r in probes)
    sends = [r for r in sends if r not in probes]
    assert all(r.status == 200 for r in sends)
    assert [r.body["text"] for r in sends] == texts  # one each, in order
    for r in sends:
        assert r.method == "POST" and r.path == "/v1/chat/Send"
        assert r.headers["content-type"] == "application/json"
        assert set(r.body) <= seed_fields(srv, "Send")
        assert r.body[f"{srv.edition}_id"] == rid and r.body["user_id"] == "alice"
        assert "chat-first-line" not in r.headers
    # Nothing else but a List (resolving the room's name) reached it.
    assert {r.endpoint for r in srv.requests} <= {"Send", "List"}
    stored = srv.call("History", {f"{srv.edition}_id": rid})["messages"]
    assert sorted(m["text"] for m in stored) == sorted(texts)


@pytest.mark.parametrize("m3o_server", ["group", "room"], indirect=True)
def test_send_lines_to_a_plain_server_is_one_seed_send_per_line(
    m3o_server: RunningStandIn,
) -> None:
    rid = make_room(m3o_server)
    texts = [f"line {n}" for n in range(1, LINES + 1)]
    done = run_send(
        env_for(m3o_server, "alice"), "general", "--lines", input="".join(t + "\n" for t in texts)
    )
    assert done.returncode == 0, done.stderr
    assert len(done.stdout.split()) == LINES
    assert_one_seed_send_per_line(m3o_server, rid, texts)


@pytest.mark.parametrize("m3o_server", ["group", "room"], indirect=True)
def test_send_ndjson_to_a_plain_server_is_one_seed_send_per_line(
    m3o_server: RunningStandIn,
) -> None:
    rid = make_room(m3o_server)
    texts = [f"object {n}" for n in range(1, 51)]
    lines = "".join(json.dumps({"room_id": rid, "text": t}) + "\n" for t in texts)
    done = run_send(env_for(m3o_server, "alice"), "-i", "-", "--batch-key", "k", input=lines)
    assert done.returncode == 0, done.stderr
    assert_one_seed_send_per_line(m3o_server, rid, texts)


def test_the_same_batch_to_chatctls_server_goes_in_bulk(tmp_path: Path) -> None:
    with ServerProcess(tmp_path, tcp=True) as server:
        env = cli_env(server, CHATCTL_USER="alice")
        made = subprocess.run(
            [sys.executable, "-m", "chatctl", "create", "general", "-u", "alice", "-o", "id"],
            env=env, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert made.returncode == 0, made.stderr
        texts = [f"line {n}" for n in range(1, LINES + 1)]
        done = run_send(
            env, made.stdout.strip(), "--lines", "--verbose", input="".join(t + "\n" for t in texts)
        )
        assert done.returncode == 0, done.stderr
        posts = [line for line in done.stderr.splitlines() if line.startswith("POST ")]
        assert len(posts) < LINES / 10, posts  # bulk Sends, a few lines each at least
        assert any(line.endswith(" lines)") for line in posts)
        with server.http() as c:
            r = c.post("/v1/chat/History", json={"room_id": made.stdout.strip()})
        assert [m["text"] for m in r.json()["messages"]] == texts
        assert [m["id"] for m in r.json()["messages"]] == done.stdout.split()
