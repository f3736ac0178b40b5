"""Whoami (contract part 3): who the token acts as, from the token alone. An open server
says so; an old-format token is its own tenant, named by its hash, which Whoami never
shows (nor the token). User tokens of every kind: tests/e2e/test_team_server.py."""

from __future__ import annotations

import hashlib
from collections.abc import Callable

import httpx
import pytest

from tests.server.conftest import LiveServer


@pytest.mark.one_backend
def test_an_open_server_is_one_admin_and_says_it_is_open(shared_server: LiveServer) -> None:
    r = httpx.post(f"{shared_server.url}/v1/chat/whoami", timeout=10)  # no body: {}
    assert r.status_code == 200, r.text
    assert r.json() == {"identity": {"tenant": "", "user_id": "", "admin": True, "open": True}}
    assert "whoami" in r.headers["chat-extensions"].split(", ")


def test_an_old_format_token_shows_neither_itself_nor_its_hash(
    live_server: Callable[..., LiveServer],
) -> None:
    token = "tok-old-5e1f"
    srv = live_server(tokens=frozenset({token}))
    with httpx.Client(base_url=srv.url, timeout=10) as http:
        r = http.post("/v1/chat/Whoami", json={}, headers={"Authorization": f"Bearer {token}"})
        assert r.status_code == 200, r.text
        assert r.json() == {"identity": {"tenant": "", "user_id": "", "admin": True, "open": False}}
        assert token not in r.text and hashlib.sha256(token.encode()).hexdigest() not in r.text
        refused = http.post("/v1/chat/Whoami", json={}, headers={"Authorization": "Bearer nope"})
        assert refused.status_code == 401
        assert refused.json()["id"] == "v1"
