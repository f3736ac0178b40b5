"""A token's limits through two replicas behind one address (issue 26 item 8; docs/
server.md, "Rate limits across replicas"): with ``--replicas 2`` each replica enforces
half of the token's rate, burst and stream cap, so a burst through nginx (the docs' own
block, round-robin over an upstream) is refused as on one server. Needs
CHATCTL_TEST_POSTGRES and nginx."""

from __future__ import annotations

import hashlib
import math
import time
from pathlib import Path

import httpx
import pytest

from tests import postgres
from tests.helpers import ServerProcess
from tests.nginx import Nginx

TOKEN = "tok-replica-limits-alice-51c0"
RATE = 2  # per second: 20 more would take 10 s, however loaded the machine
BURST = 20
CALLS = 40


def burst(url: str) -> tuple[list[int], float, set[str]]:
    """CALLS List calls at once (one after another, as fast as they go): the statuses, how
    long they took (the bucket refills meanwhile), and the 429s' details."""
    headers = {"Authorization": f"Bearer {TOKEN}"}
    with httpx.Client(base_url=url, headers=headers, timeout=10) as http:
        started = time.monotonic()
        answers = [http.post("/v1/chat/List", json={}) for _ in range(CALLS)]
        took = time.monotonic() - started
    details = {r.json()["detail"] for r in answers if r.status_code == 429}
    return [r.status_code for r in answers], took, details


@pytest.mark.postgres
def test_a_tokens_burst_through_two_replicas_is_refused_as_on_one(tmp_path: Path) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text(f"sha256:{hashlib.sha256(TOKEN.encode()).hexdigest()} tenant=t user=a\n")
    tokens.chmod(0o600)
    limits = ["--tokens-file", str(tokens), "--rate-limit", f"{RATE}/s"]
    limits += ["--rate-burst", str(BURST)]
    for name in ("one", "a", "b"):
        (tmp_path / name).mkdir()
    with ServerProcess(tmp_path / "one", tcp=True, extra=limits) as one:
        alone, alone_took, _ = burst(one.url)
    with (
        postgres.fresh_database() as url,
        ServerProcess(tmp_path / "a", tcp=True, db=url, extra=[*limits, "--replicas", "2"]) as a,
        ServerProcess(tmp_path / "b", tcp=True, db=url, extra=[*limits, "--replicas", "2"]) as b,
    ):
        assert a.port is not None and b.port is not None
        with Nginx(tmp_path / "nginx", [a.port, b.port]) as nginx:
            shared, shared_took, details = burst(nginx.url)
    assert set(alone) == set(shared) == {200, 429}, (alone, shared)
    for statuses, took in ((alone, alone_took), (shared, shared_took)):
        # The burst, plus what the bucket refilled while the calls went (and, split two
        # ways, one more at most: each half rounds up).
        granted = statuses.count(200)
        assert BURST <= granted <= BURST + math.ceil(RATE * took) + 1, (statuses, took)
    # Each 429 names the token's whole budget, not a replica's share of it.
    assert all(f"rate limit of {RATE} requests/s per token exceeded" in d for d in details)


def test_each_replica_enforces_its_share_rounded_up() -> None:
    from chatctl.server.ratelimit import share

    assert [share(100, n) for n in (1, 2, 3, 7, 200)] == [100, 50, 34, 15, 1]
