"""Import (issue 26, part 5): ``chatctl history ROOM -o jsonl | chatctl import ROOM``
moves a room between servers with its History unchanged (ids, times, senders, texts,
order), from chatctl's server (both stores) and from a plain m3o server; a second run
stores nothing twice; an id the room has with other content is refused."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.compat.m3o_standin import RunningStandIn
from tests.helpers import ServerProcess, chatctl, cli_env

CLI_DOC = Path(__file__).resolve().parents[2] / "docs/cli.md"
KEPT = ("id", "user_id", "sent_at", "subject", "text", "client")


def _history(env: dict[str, str], room: str) -> list[dict[str, Any]]:
    done = chatctl("history", room, "-o", "jsonl", env=env)
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in done.stdout.splitlines()]


def _api_history(server: ServerProcess, room: str) -> list[dict[str, Any]]:
    with server.http() as http:
        room_id = http.post("/v1/chat/List", json={}).json()["rooms"]
        found = [r["id"] for r in room_id if r["name"] == room]
        answer = http.post("/v1/chat/History", json={"room_id": found[0]}).json()
        messages: list[dict[str, Any]] = answer["messages"]
        return messages


def _kept(messages: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    return [tuple(m.get(k) for k in KEPT) for m in messages]


def _move(source: dict[str, str], target: dict[str, str], room: str) -> dict[str, Any]:
    exported = chatctl("history", room, "-o", "jsonl", env=source)
    assert exported.returncode == 0, exported.stderr
    imported = chatctl("import", room, "-o", "json", env=target, input=exported.stdout)
    assert imported.returncode == 0, imported.stderr
    answer: dict[str, Any] = json.loads(imported.stdout)["imported"]
    return answer


def test_a_room_moves_from_a_chatctl_server_with_its_history_unchanged(
    start_server: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    (tmp_path / "source").mkdir()
    with ServerProcess(tmp_path / "source") as old:
        source = cli_env(old)
        with old.http() as http:
            created = http.post("/v1/chat/Create", json={"name": "ops", "user_ids": ["a", "b"]})
            for user, text, subject in [
                ("a", "first", ""),
                ("b", "ünïcödé ✓ and a\ttab", "re: first"),
                ("a", "third", ""),
            ]:
                sent = {"room_id": created.json()["room"]["id"], "user_id": user, "text": text}
                http.post("/v1/chat/Send", json={**sent, "subject": subject})
        new = start_server()
        target = cli_env(new)
        with new.http() as http:
            created = http.post("/v1/chat/Create", json={"name": "ops", "user_ids": ["carol"]})
            room_id = created.json()["room"]["id"]
        moved = _move(source, target, "ops")
        assert (moved["stored"], moved["skipped"]) == (3, 0)
        before = _api_history(old, "ops")
        assert _kept(_api_history(new, "ops")) == _kept(before)
        # Run again: nothing stored twice.
        again = _move(source, target, "ops")
        assert (again["stored"], again["skipped"]) == (0, 3)
        assert _kept(_api_history(new, "ops")) == _kept(before)
        # New messages on the target come after the imported ones.
        with new.http() as http:
            later = {"room_id": room_id, "user_id": "carol", "text": "later"}
            assert http.post("/v1/chat/Send", json=later).status_code == 200
        assert [m["text"] for m in _api_history(new, "ops")][-2:] == ["third", "later"]

        # An id the room has, with other content: refused, nothing of the batch stored.
        changed = [{**m, "text": "rewritten"} if m["text"] == "third" else m for m in before]
        extra = {**before[0], "id": "01890000-0000-7000-8000-000000000001", "text": "new"}
        with new.http() as http:
            body = {"room_id": room_id, "messages": [*changed, extra]}
            refused = http.post("/v1/chat/Import", json=body)
        assert refused.status_code == 409
        assert "messages[2]: id " in refused.text
        assert "is already in the room with other content" in refused.text
        assert len(_api_history(new, "ops")) == 4


@pytest.mark.one_backend
def test_a_room_moves_from_a_plain_m3o_server(
    m3o_room_server: RunningStandIn, start_server: Callable[..., ServerProcess]
) -> None:
    source = cli_env(CHATCTL_URL=m3o_room_server.url, CHATCTL_TOKEN=m3o_room_server.token)
    auth = {"Authorization": f"Bearer {m3o_room_server.token}"}
    with httpx.Client(base_url=m3o_room_server.url, headers=auth, timeout=10) as http:
        created = http.post("/v1/chat/Create", json={"name": "ops", "user_ids": ["al", "bo"]})
        for user, text in [("al", "one"), ("bo", "two"), ("al", "three"), ("bo", "x")]:
            sent = {"room_id": created.json()["room"]["id"], "user_id": user, "text": text}
            assert http.post("/v1/chat/Send", json=sent).status_code == 200
    new = start_server()
    target = cli_env(new)
    with new.http() as http:
        http.post("/v1/chat/Create", json={"name": "ops"})
    # docs/cli.md's recipe, as written.
    recipe = CLI_DOC.read_text().split("# Move ops from the old server", 1)[1].splitlines()[1]
    env = {**target, "OLD_URL": m3o_room_server.url, "OLD_TOKEN": m3o_room_server.token}
    env["PATH"] = f"{Path(sys.executable).parent}:{env['PATH']}"
    done = subprocess.run(["bash", "-o", "pipefail", "-c", recipe], env=env, text=True,
                          capture_output=True, timeout=60)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "imported 4 messages into ops (0 already there, skipped)" in done.stderr
    before = _history(source, "ops")  # m3o answers in key order: chatctl sorts by time
    assert [m["text"] for m in before] == ["one", "two", "three", "x"]
    assert _kept(_api_history(new, "ops")) == _kept(before)  # m3o's UUIDv4 ids kept
    again = _move(source, target, "ops")
    assert (again["stored"], again["skipped"]) == (0, 4)
    assert _kept(_api_history(new, "ops")) == _kept(before)
    # The target is m3o's: import needs chatctl's server (exit 2, nothing sent).
    back = chatctl("import", "ops", env=source, input="")
    assert back.returncode == 2, back.stderr


@pytest.mark.one_backend
def test_only_admin_tokens_import_and_bad_messages_store_nothing(
    start_server: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text("admin-token tenant=acme admin\nalice-token tenant=acme user=alice\n")
    tokens.chmod(0o600)
    server = start_server(extra=["--tokens-file", str(tokens)])
    message = {
        "id": "0193a000-0000-7000-8000-000000000001",
        "user_id": "alice",
        "sent_at": "2024-11-01T09:00:00.5Z",
        "text": "hi",
    }
    with server.http("alice-token") as alice, server.http("admin-token") as admin:
        room_id = alice.post("/v1/chat/Create", json={"name": "g"}).json()["room"]["id"]
        body = {"room_id": room_id, "messages": [message]}
        refused = alice.post("/v1/chat/Import", json=body)
        assert refused.status_code == 403
        assert "only an admin token may import messages" in refused.text
        older = {
            **message,
            "id": "0193a000-0000-7000-8000-000000000002",
            "sent_at": "2020-01-01T00:00:00Z",
        }
        for bad, status, detail in [
            ({**message, "id": "not-a-uuid"}, 400, "messages[1]: id must be a message id"),
            ({**message, "sent_at": "yesterday"}, 400, "messages[1]: sent_at must be an RFC 3339"),
            ({**message, "user_id": ""}, 400, "messages[1]: missing user_id"),
            (older, 409, "messages[1]: sent at 2020-01-01T00:00:00Z, before the room's last"),
        ]:
            answer = admin.post("/v1/chat/Import", json={**body, "messages": [message, bad]})
            assert (answer.status_code, detail in answer.text) == (status, True), answer.text
        history = admin.post("/v1/chat/History", json={"room_id": room_id}).json()["messages"]
        assert history == []  # each call all or nothing
        done = admin.post("/v1/chat/Import", json={"group_id": room_id, "messages": [message]})
        assert done.json() == {"imported": {"group_id": room_id, "stored": 1, "skipped": 0}}
