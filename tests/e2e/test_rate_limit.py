"""A rate-limited server slows a batch down rather than failing it: the CLI waits out each
429's Retry-After inside the call's budget. The limiter is a small real server (a token
bucket) in front of the real chat server, so every line is checked as stored, once, in
order."""

from __future__ import annotations

from collections.abc import Callable

from tests.e2e.proxy import TokenBucket, serve
from tests.helpers import ServerProcess, chatctl, cli_env

BURST = 10


def test_a_batch_of_twice_the_bucket_completes_in_order(
    start_server: Callable[..., ServerProcess],
) -> None:
    server = start_server(tcp=True)
    env = cli_env(server, CHATCTL_USER="u")
    room = chatctl("create", "limited", "-u", "u", "-o", "id", env=env).stdout.strip()
    bucket = TokenBucket(rate=BURST, burst=BURST)
    lines = [f"line {n}" for n in range(2 * BURST)]
    with serve(bucket, upstream=server.url) as url:
        r = chatctl(
            "send", room, "--lines", "-o", "id", "-v",
            env={**env, "CHATCTL_URL": url}, input="\n".join(lines) + "\n", timeout=120,
        )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert bucket.refused > 0  # the limit was really hit
    assert " 429 " in r.stderr  # and -v showed each refused attempt
    ids = r.stdout.split()
    with server.http() as http:
        stored = http.post("/v1/chat/History", json={"room_id": room}).json()["messages"]
    assert [m["text"] for m in stored] == lines
    assert [m["id"] for m in stored] == ids


def test_a_retry_after_longer_than_the_budget_is_reported_at_once(
    start_server: Callable[..., ServerProcess],
) -> None:
    server = start_server(tcp=True)
    bucket = TokenBucket(rate=0.001, burst=0)
    with serve(bucket, upstream=server.url) as url:
        r = chatctl("list", "--timeout", "0.5", env=cli_env(CHATCTL_URL=url))
    assert r.returncode == 1
    assert r.stderr.splitlines() == [
        "error: too many requests (v1, HTTP 429)",
        "hint: the server limits this token's calls (retry after 1s); retry later, "
        "or raise --timeout",
    ]
