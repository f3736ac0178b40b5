"""``chatctl call`` against the real server (a subprocess on a Unix socket, a real SQLite
file): any endpoint with a raw JSON request, the acting user filled in, the answer as the
API gives it."""

from __future__ import annotations

import json

import pytest

from tests.e2e.test_cli_e2e import ok
from tests.helpers import ServerProcess, chatctl, cli_env


@pytest.mark.one_backend
def test_call_list_and_send_from_stdin(server: ServerProcess) -> None:
    env = cli_env(server, CHATCTL_USER="alice")
    room = json.loads(
        ok(chatctl("call", "Create", '{"name": "general", "user_ids": ["alice"]}', env=env))
    )["room"]
    request = json.dumps({"room_id": room["id"], "text": "hello", "subject": "hi"})
    sent = json.loads(ok(chatctl("call", "send", "-", env=env, input=request)))["message"]
    assert {k: sent[k] for k in ("room_id", "user_id", "text", "subject")} == {
        "room_id": room["id"],
        "user_id": "alice",  # CHATCTL_USER, as every command acts
        "text": "hello",
        "subject": "hi",
    }
    listed = json.loads(ok(chatctl("call", "List", env=env)))
    assert [r["id"] for r in listed["rooms"]] == [room["id"]]
    lines = ok(
        chatctl("call", "History", json.dumps({"room_id": room["id"]}), "-o", "jsonl", env=env)
    )
    assert [json.loads(line)["id"] for line in lines.splitlines()] == [sent["id"]]
    # Bad input is refused against the declaration before anything is sent (exit 2).
    r = chatctl("call", "Send", json.dumps({"room_id": room["id"]}), env=env)
    assert (r.returncode, r.stdout) == (2, "")
    assert r.stderr.splitlines()[0] == "error: missing text"
