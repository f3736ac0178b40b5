"""The server names its extensions on every answer (contract part 2, ``Chat-Extensions``),
so a client knows before it sends one: unary answers and errors of every kind, the NDJSON
Join, and the Join WebSocket's handshake (read before the JoinRequest is sent)."""

from __future__ import annotations

import json
from collections.abc import Callable

import httpx
import pytest
from websockets.sync.client import connect

from tests.helpers import CHATCTL_HEADERS
from tests.server.conftest import LiveServer

#: Written out, not imported: clients of other projects read this exact header.
HEADER = "Chat-Extensions"
VALUE = (
    "paging, history-user, resume, replay, events, include-own, idempotency-key, bulk-send,"
    " whoami, delete-message, join-rooms, retention, import"
)


def test_on_unary_answers_and_every_kind_of_error(
    live_server: Callable[..., LiveServer],
) -> None:
    srv = live_server(tokens=frozenset({"t1"}))
    auth = {"Authorization": "Bearer t1"}
    with httpx.Client(base_url=srv.url, timeout=10) as http:
        answers = {
            "200 Create": http.post("/v1/chat/Create", json={"name": "r"}, headers=auth),
            "200 List": http.post("/v1/chat/List", json={}, headers=auth),
            "400 validation": http.post("/v1/chat/Send", json={}, headers=auth),
            "400 not JSON": http.post("/v1/chat/Send", content=b"{", headers=auth),
            "401": http.post("/v1/chat/List", json={}),
            "404 room": http.post("/v1/chat/History", json={"room_id": "x"}, headers=auth),
            "404 path": http.post("/v1/chat/Nope", json={}, headers=auth),
            "413": http.post("/v1/chat/Send", content=b" " * (2 << 20), headers=auth),
            "health": http.get("/health"),
            "openapi": http.get("/openapi.json"),
        }
    for what, r in answers.items():
        assert r.headers.get(HEADER) == VALUE, f"{what}: {r.status_code} {dict(r.headers)}"


@pytest.mark.one_backend
def test_on_the_ndjson_join(server: LiveServer) -> None:
    with httpx.Client(base_url=server.url, timeout=10) as http:
        room_id = http.post("/v1/chat/Create", json={"name": "r"}).json()["room"]["id"]
        with http.stream(
            "POST", "/v1/chat/Join", json={"room_id": room_id, "user_id": "u"}
        ) as r:
            assert r.status_code == 200
            assert r.headers.get(HEADER) == VALUE


@pytest.mark.one_backend
@pytest.mark.parametrize("room", ["known", "unknown"])
def test_on_the_websocket_handshake_before_the_request(server: LiveServer, room: str) -> None:
    with httpx.Client(base_url=server.url, timeout=10) as http:
        room_id = http.post("/v1/chat/Create", json={"name": "r"}).json()["room"]["id"]
    if room == "unknown":
        room_id = "00000000-0000-7000-8000-000000000000"
    with connect(f"{server.ws_url}/v1/chat/Join", open_timeout=10) as ws:
        # Known from the 101 alone, before the JoinRequest (which may use them) is sent.
        assert ws.response is not None
        assert ws.response.headers.get(HEADER) == VALUE
        ws.send(json.dumps({"room_id": room_id, "user_id": "u", "since": room_id}))
        if room == "unknown":
            assert json.loads(ws.recv(timeout=10))["code"] == 404


@pytest.mark.one_backend
def test_the_suites_mock_of_the_server_says_what_the_server_says(server: LiveServer) -> None:
    # CHATCTL_HEADERS stands for chatctl's server in pytest-httpx tests: a mock that lacks
    # an extension the server has would test the CLI against a server that does not exist.
    with httpx.Client(base_url=server.url, timeout=10) as http:
        r = http.post("/v1/chat/List", json={})
    assert r.status_code == 200
    ours = {k: v for k, v in r.headers.items() if k.lower().startswith("chat-")}
    assert ours == {k.lower(): v for k, v in CHATCTL_HEADERS.items()}
