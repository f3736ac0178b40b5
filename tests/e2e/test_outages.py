"""What a server's outage looks like from the CLI when no stream has run yet, or for a
call: small real HTTP servers on loopback (tests/e2e/proxy.py) answering as a proxy in
front of a stopped server, or as a server without its database, would (issue 22). The
tail that outlives them once it has run: tests/faults/test_deploys.py."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Literal

import pytest

from chatctl.client import Client
from chatctl.errors import APIError
from tests.e2e.proxy import ANSWERED, serve
from tests.helpers import ServerProcess, chatctl, cli_env

Answer = tuple[int, dict[str, str], bytes]


@pytest.mark.parametrize(("flags", "attempts"), [((), 4), (("--no-reconnect",), 1)])
def test_a_join_whose_first_handshake_gets_a_proxys_502_gives_up_quickly(
    flags: tuple[str, ...], attempts: int
) -> None:
    """Before any stream started, a proxy's page is tried again three times (not with
    --no-reconnect), then reported: a wrong --url does not hang."""
    asked: list[str] = []

    def gateway(request: BaseHTTPRequestHandler, body: bytes) -> Answer:
        asked.append(request.path)
        return 502, {"Content-Type": "text/html"}, b"<html><h1>502 Bad Gateway</h1></html>"

    room = "0b7f3a52-3b5e-4c1e-9d7a-2f0c6f1e8a11"
    with serve(gateway) as url:
        started = time.monotonic()
        r = chatctl("--url", url, "join", room, "--user", "w", *flags, env=cli_env())
        took = time.monotonic() - started
    assert r.returncode == 1, r.stderr
    assert r.stderr.startswith("error: Bad Gateway (the answer is not an m3o error object")
    assert "HTTP 502" in r.stderr and "<h1>" not in r.stderr and "Traceback" not in r.stderr
    assert asked == ["/v1/chat/Join"] * attempts
    assert took < 10, took


def test_a_history_answered_503_then_not_at_all_reports_the_503() -> None:
    """A long History read: its first attempt answered 503, the retry not within the
    budget. The answer is reported (exit 1), not silence."""
    asked: list[float] = []

    def unavailable(request: BaseHTTPRequestHandler, body: bytes) -> Answer:
        asked.append(time.monotonic())
        if len(asked) > 1:
            time.sleep(3)  # past the client's budget: it stops waiting first
        error = {"id": "chat.history", "code": 503, "detail": "storage unavailable", "status": ""}
        return 503, {"Content-Type": "application/json"}, json.dumps(error).encode()

    with (
        serve(unavailable) as url,
        Client(url, timeout=1.5) as client,
        pytest.raises(APIError) as refused,
    ):
        list(client.history({"room_id": "r"}))
    assert refused.value.code == 503 and refused.value.detail == "storage unavailable"
    assert len(asked) == 2


def test_a_bulk_send_answered_503_then_not_at_all_reports_the_503(tmp_path: Path) -> None:
    """A batch in bulk Sends: the bulk Send answered 503, its retry not within the budget.
    That line's outcome is the 503 (exit 1, the line named), not a timeout, as for a call;
    the line answered before it is printed."""
    bulk: list[float] = []
    released = threading.Event()
    extensions = {"Content-Type": "application/json", "Chat-Extensions": "bulk-send, idempotency"}

    def server(request: BaseHTTPRequestHandler, body: bytes) -> Answer | Literal["answered"]:
        if request.headers.get("Content-Type", "").startswith("application/x-ndjson"):
            bulk.append(time.monotonic())
            if len(bulk) > 1:
                released.wait(10)  # past the client's budget: it stops waiting first
                return ANSWERED  # nothing, once the CLI is gone
            error = {"id": "chat.send", "code": 503, "detail": "storage unavailable", "status": ""}
            return 503, extensions, json.dumps(error).encode()
        sent = json.loads(body)
        message = {
            "id": "4f0c7a52-3b5e-4c1e-9d7a-2f0c6f1e8a11",
            "room_id": sent["room_id"],
            "user_id": sent["user_id"],
            "subject": "",
            "text": sent["text"],
            "sent_at": "2026-12-07T09:00:00.000000Z",
        }
        return 200, extensions, json.dumps({"message": message}).encode()

    room = "0b7f3a52-3b5e-4c1e-9d7a-2f0c6f1e8a11"
    lines = tmp_path / "lines.ndjson"
    lines.write_text("".join(json.dumps({"room_id": room, "text": f"t{n}"}) + "\n" for n in "abc"))
    with serve(server) as url:
        r = chatctl(
            "--url", url, "--timeout", "1.5", "send", "-i", str(lines), "-u", "w", "-o", "id",
            env=cli_env(),
        )  # fmt: skip
        released.set()
    assert r.returncode == 1, r.stderr
    assert r.stdout.split() == ["4f0c7a52-3b5e-4c1e-9d7a-2f0c6f1e8a11"]
    assert "line 2" in r.stderr and "storage unavailable" in r.stderr, r.stderr
    # Line 2 may still be stored: rerun with the batch's key, the same input stores it once.
    assert "may still land: rerun with --batch-key " in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
    assert len(bulk) == 2


@pytest.mark.one_backend
@pytest.mark.parametrize("outcome", ["503", "silence"])
def test_a_send_stored_but_not_acknowledged_names_the_rerun_that_stores_it_once(
    start_server: Callable[..., ServerProcess], outcome: str
) -> None:
    """A PostgreSQL pause's case: the server gave up on a Send (503) whose statement
    still landed, or its answer never came within --timeout. A plain rerun would store
    the message twice: the CLI says it may be stored and names the key it sent it with;
    a rerun with that key stores nothing more and prints the stored message's id."""
    server = start_server(tcp=True)
    env = cli_env(server, CHATCTL_USER="u")
    with server.http() as http:
        room = http.post("/v1/chat/Create", json={"name": "r", "user_ids": ["u"]}).json()
    room_id = room["room"]["id"]
    released = threading.Event()
    keys: list[str] = []

    def stored_unacknowledged(request: BaseHTTPRequestHandler, body: bytes) -> Answer | str:
        key = request.headers["Idempotency-Key"]
        keys.append(key)
        with server.http() as http:  # the write lands...
            stored = http.post("/v1/chat/Send", content=body, headers={"Idempotency-Key": key})
        extensions = {
            "Content-Type": "application/json",
            "Chat-Extensions": stored.headers["chat-extensions"],
        }
        if outcome == "silence":
            released.wait(10)  # ...and its answer is not heard within the budget
            return ANSWERED
        error = {"id": "chat.send", "code": 503, "detail": "storage unavailable", "status": ""}
        return 503, extensions, json.dumps(error).encode()  # ...but is answered 503

    with serve(stored_unacknowledged) as url:
        sent = chatctl(
            "--url", url, "--timeout", "1.5", "send", room_id, "hello", env=env
        )  # fmt: skip
        released.set()
    assert sent.returncode == (1 if outcome == "503" else 3), sent.stderr
    error, hint = sent.stderr.splitlines()
    assert ("storage unavailable" if outcome == "503" else "did not answer") in error
    assert hint.startswith("hint: ") and "may" in hint and "chatctl history" in hint, hint
    batch_key = hint.split("--batch-key ", 1)[1].split()[0]
    assert {k.rsplit("/", 1)[0] for k in keys} == {batch_key}  # the key it was sent with
    again = chatctl("send", room_id, "hello", "--batch-key", batch_key, "-o", "id", env=env)
    assert again.returncode == 0, again.stderr
    with server.http() as http:
        stored = http.post("/v1/chat/History", json={"room_id": room_id}).json()["messages"]
    assert [m["text"] for m in stored] == ["hello"]
    assert again.stdout.split() == [stored[0]["id"]]


def test_a_write_answered_503_says_it_may_be_stored_and_how_to_check() -> None:
    """Any other change answered 503 once sent (no key of its own to rerun with): the hint
    says it may still be stored and to check before trying again."""

    def unavailable(request: BaseHTTPRequestHandler, body: bytes) -> Answer:
        error = {"id": "chat.invite", "code": 503, "detail": "storage unavailable", "status": ""}
        extensions = {"Content-Type": "application/json", "Chat-Extensions": "idempotency-key"}
        return 503, extensions, json.dumps(error).encode()

    room = "0b7f3a52-3b5e-4c1e-9d7a-2f0c6f1e8a11"
    with serve(unavailable) as url:
        r = chatctl("--url", url, "--timeout", "1", "invite", room, "bob", env=cli_env())
    assert r.returncode == 1, r.stderr
    assert r.stderr.splitlines()[1:] == [
        "hint: the server's storage is not answering, and a write it gave up on may still "
        "land: check (chatctl history / list) before trying again"
    ]
