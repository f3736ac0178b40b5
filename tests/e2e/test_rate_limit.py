"""Rate limits as a team server's users meet them: a real ``chatctl serve --rate-limit``
with a user token. A burst past the bucket is 429 with Retry-After in m3o's error shape;
a ``send --lines`` batch of twice the bucket slows down rather than fails, every line
stored once, in order, whether it goes in bulk Sends (paced per message by the server)
or one Send a line (a server without bulk Sends: each 429 waited out); a single call
over the limit waits out its Retry-After inside its budget, and a wait longer than the
budget is reported at once."""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import httpx
import pytest

from tests.e2e.proxy import Handler, serve
from tests.helpers import ServerProcess, chatctl, cli_env

BURST = 10
TOKEN = "tok-ratelimited-alice-2f8c"
#: reads back what was stored, with a bucket of its own.
ADMIN = "tok-ratelimited-admin-7b1e"


def limited_server(
    start_server: Callable[..., ServerProcess], tmp_path: Path, *limits: str
) -> ServerProcess:
    tokens = tmp_path / "tokens"
    tokens.write_text(
        f"sha256:{hashlib.sha256(TOKEN.encode()).hexdigest()} tenant=team user=alice\n"
        f"sha256:{hashlib.sha256(ADMIN.encode()).hexdigest()} tenant=team admin\n"
    )
    tokens.chmod(0o600)
    return start_server(
        tcp=True, extra=["--tokens-file", str(tokens), "--log-level", "info", *limits]
    )


@pytest.mark.one_backend
def test_a_burst_past_the_bucket_is_429_with_retry_after(
    start_server: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    server = limited_server(start_server, tmp_path, "--rate-limit", "10/s", "--rate-burst", "10")
    with server.http(TOKEN) as http:
        answers = [http.post("/v1/chat/List", json={}) for _ in range(BURST + 5)]
    assert [r.status_code for r in answers[:BURST]] == [200] * BURST
    refused = [r for r in answers if r.status_code == 429]
    assert refused, [r.status_code for r in answers]
    assert all(r.headers["retry-after"] == "1" for r in refused)
    assert refused[0].json() == {
        "id": "v1",
        "code": 429,
        "detail": "rate limit of 10 requests/s per token exceeded; retry after 1 s",
        "status": "Too Many Requests",
    }


def test_a_batch_of_twice_the_bucket_completes_in_order(
    start_server: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    # chatctl's server takes a batch as a bulk Send, which the server paces per message
    # (the token's rate, a burst at a time): slowed, never refused part-way.
    server = limited_server(start_server, tmp_path, "--rate-limit", "10/s", "--rate-burst", "10")
    env = cli_env(server, CHATCTL_TOKEN=TOKEN, CHATCTL_USER="alice")
    room = chatctl("create", "limited", "-o", "id", env=env).stdout.strip()
    lines = [f"line {n}" for n in range(2 * BURST)]
    started = time.monotonic()
    r = chatctl(
        "send", room, "--lines", "-o", "id", env=env, input="\n".join(lines) + "\n", timeout=120
    )
    took = time.monotonic() - started
    assert r.returncode == 0, r.stderr
    # The second half waited for the bucket to refill: 10 messages at 10/s.
    assert took >= 0.95, took
    ids = r.stdout.split()
    with server.http(ADMIN) as http:
        stored = http.post("/v1/chat/History", json={"room_id": room}).json()["messages"]
    assert [m["text"] for m in stored] == lines  # each once, in order
    assert [m["id"] for m in stored] == ids
    assert {m["user_id"] for m in stored} == {"alice"}


def hiding_bulk_send(http: httpx.Client) -> Handler:
    """A proxy's handler that forwards every call through ``http`` to the real server
    (whose bucket answers) and its answer back with its Retry-After, leaving
    ``bulk-send`` out of Chat-Extensions: a chatctl server from before bulk Sends, to
    which the CLI sends a batch one Send per line."""

    def handle(request: BaseHTTPRequestHandler, body: bytes) -> tuple[int, dict[str, str], bytes]:
        forwarded = {
            k: v
            for k, v in request.headers.items()
            if k.lower() in ("authorization", "content-type", "idempotency-key")
        }
        r = http.post(request.path, content=body, headers=forwarded)
        names = [n.strip() for n in r.headers.get("chat-extensions", "").split(",")]
        headers = {
            "Content-Type": r.headers.get("content-type", "application/json"),
            "Chat-Extensions": ", ".join(n for n in names if n and n != "bulk-send"),
        }
        if "retry-after" in r.headers:
            headers["Retry-After"] = r.headers["retry-after"]
        return r.status_code, headers, r.content

    return handle


def test_a_batch_sent_one_send_a_line_waits_out_the_429s_in_order(
    start_server: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    # A server without bulk Sends gets the batch one Send per line, as fast as they are
    # answered: past the bucket each is refused with Retry-After, which the CLI waits
    # out (same Idempotency-Key) within its budget, and goes on with the next line.
    server = limited_server(start_server, tmp_path, "--rate-limit", "5/s", "--rate-burst", "10")
    with (
        httpx.Client(base_url=server.url, timeout=30) as upstream,
        serve(hiding_bulk_send(upstream)) as url,
    ):
        env = cli_env(CHATCTL_URL=url, CHATCTL_TOKEN=TOKEN, CHATCTL_USER="alice")
        room = chatctl("create", "one by one", "-o", "id", env=env).stdout.strip()
        lines = [f"line {n}" for n in range(2 * BURST)]
        started = time.monotonic()
        r = chatctl(
            "send", room, "--lines", "-o", "id", "-v", env=env,
            input="\n".join(lines) + "\n", timeout=120,
        )  # fmt: skip
        took = time.monotonic() - started
    assert r.returncode == 0, r.stderr
    # One Send a line (no bulk Send), some refused by the server's bucket and retried.
    sends = re.findall(r"POST \S+/v1/chat/Send (\d{3}) ", r.stderr)
    assert sends.count("200") == len(lines), r.stderr
    assert "429" in sends and set(sends) == {"200", "429"}, r.stderr
    assert took >= 1.9, took  # 20 Sends, a bucket of 10 refilled at 5/s: 2 s at least
    ids = r.stdout.split()
    with server.http(ADMIN) as http:
        stored = http.post("/v1/chat/History", json={"room_id": room}).json()["messages"]
    assert [m["text"] for m in stored] == lines  # each once, in order
    assert [m["id"] for m in stored] == ids
    assert {m["user_id"] for m in stored} == {"alice"}


@pytest.mark.one_backend
def test_a_call_over_the_limit_waits_out_its_retry_after(
    start_server: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    # One call at a time: the bucket (3, refilled one every 2 s) is emptied first, so
    # the CLI's send is refused with Retry-After: 2, waits, and is stored on its retry.
    server = limited_server(start_server, tmp_path, "--rate-limit", "30/m", "--rate-burst", "3")
    env = cli_env(server, CHATCTL_TOKEN=TOKEN, CHATCTL_USER="alice")
    with server.http(TOKEN) as http:
        room = http.post("/v1/chat/Create", json={"name": "slow"}).json()["room"]["id"]
        while http.post("/v1/chat/List", json={}).status_code != 429:
            pass
    r = chatctl("send", room, "after the wait", "-o", "id", "-v", env=env, timeout=60)
    assert r.returncode == 0, r.stderr
    assert re.search(r"POST \S+/v1/chat/Send 429 ", r.stderr), r.stderr  # -v shows the refusal
    with server.http(ADMIN) as http:
        stored = http.post("/v1/chat/History", json={"room_id": room}).json()["messages"]
    assert [(m["id"], m["text"]) for m in stored] == [(r.stdout.strip(), "after the wait")]


@pytest.mark.one_backend
def test_a_retry_after_longer_than_the_budget_is_reported_at_once(
    start_server: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    server = limited_server(start_server, tmp_path, "--rate-limit", "1/h", "--rate-burst", "1")
    env = cli_env(server, CHATCTL_TOKEN=TOKEN, CHATCTL_USER="alice")
    assert chatctl("list", env=env).returncode == 0
    r = chatctl("list", "--timeout", "0.5", env=env)
    assert r.returncode == 1
    # The wait is counted from the first call, rounded up: 3600 s, or 3599 s when the
    # second call came more than a second later (a loaded machine).
    wait = next(w for w in ("3600", "3599") if f"after {w} s" in r.stderr)
    assert r.stderr.splitlines() == [
        f"error: rate limit of 1 request/h per token exceeded; retry after {wait} s (v1, HTTP 429)",
        f"hint: the server limits this token's calls (retry after {wait}s); retry later, "
        "or raise --timeout",
    ]
