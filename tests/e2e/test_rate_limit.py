"""Rate limits as a team server's users meet them: a real ``chatctl serve --rate-limit``
with a user token. A burst past the bucket is 429 with Retry-After in m3o's error shape;
the CLI waits each Retry-After out inside its budget, so a ``send --lines`` batch of twice
the bucket slows down rather than fails, every line stored once, in order; a wait longer
than the budget is reported at once."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from pathlib import Path

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
    server = limited_server(start_server, tmp_path, "--rate-limit", "10/s", "--rate-burst", "10")
    env = cli_env(server, CHATCTL_TOKEN=TOKEN, CHATCTL_USER="alice")
    room = chatctl("create", "limited", "-o", "id", env=env).stdout.strip()
    lines = [f"line {n}" for n in range(2 * BURST)]
    r = chatctl(
        "send", room, "--lines", "-o", "id", "-v",
        env=env, input="\n".join(lines) + "\n", timeout=120,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert " 429 " in r.stderr  # -v showed the refused attempts
    refused = re.findall(r"POST /v1/chat/Send 429 ", server.log.read_text())
    assert refused, "the limit was never hit"
    ids = r.stdout.split()
    with server.http(ADMIN) as http:
        stored = http.post("/v1/chat/History", json={"room_id": room}).json()["messages"]
    assert [m["text"] for m in stored] == lines  # each once, in order
    assert [m["id"] for m in stored] == ids
    assert {m["user_id"] for m in stored} == {"alice"}


def test_a_retry_after_longer_than_the_budget_is_reported_at_once(
    start_server: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    server = limited_server(start_server, tmp_path, "--rate-limit", "1/h", "--rate-burst", "1")
    env = cli_env(server, CHATCTL_TOKEN=TOKEN, CHATCTL_USER="alice")
    assert chatctl("list", env=env).returncode == 0
    r = chatctl("list", "--timeout", "0.5", env=env)
    assert r.returncode == 1
    assert r.stderr.splitlines() == [
        "error: rate limit of 1 request/h per token exceeded; retry after 3600 s (v1, HTTP 429)",
        "hint: the server limits this token's calls (retry after 3600s); retry later, "
        "or raise --timeout",
    ]
