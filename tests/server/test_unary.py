"""The unary endpoints answer m3o's seed payloads in exactly the documented shape."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from tests.server.conftest import LiveServer

TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z$")
ROOM_KEYS = ["id", "name", "description", "created_at", "user_ids", "private"]
MESSAGE_KEYS = ["id", "client", "room_id", "user_id", "sent_at", "subject", "text"]


def assert_room(room: dict[str, Any]) -> None:
    assert list(room) == ROOM_KEYS
    uuid.UUID(room["id"])
    assert isinstance(room["name"], str) and isinstance(room["description"], str)
    assert TIME.match(room["created_at"]), room["created_at"]
    assert isinstance(room["user_ids"], list)
    assert all(isinstance(u, str) for u in room["user_ids"])
    assert isinstance(room["private"], bool)


def assert_message(message: dict[str, Any]) -> None:
    assert list(message) == MESSAGE_KEYS
    assert uuid.UUID(message["id"]).version == 7
    assert TIME.match(message["sent_at"]), message["sent_at"]
    assert all(isinstance(message[k], str) for k in MESSAGE_KEYS)


def call(client: httpx.Client, endpoint: str, body: Any = None, **kw: Any) -> httpx.Response:
    if body is None:
        return client.post(f"/v1/chat/{endpoint}", **kw)
    return client.post(f"/v1/chat/{endpoint}", json=body, **kw)


def ok(client: httpx.Client, endpoint: str, body: Any = None, **kw: Any) -> dict[str, Any]:
    r = call(client, endpoint, body, **kw)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/json"
    data: dict[str, Any] = r.json()
    return data


def assert_error(r: httpx.Response, code: int, id: str, detail: str | None = None) -> None:
    assert r.status_code == code, r.text
    body = r.json()
    assert list(body) == ["id", "code", "detail", "status"]
    assert body["id"] == id and body["code"] == code
    assert isinstance(body["detail"], str) and body["detail"]
    assert body["status"] == httpx.codes.get_reason_phrase(code)
    if detail is not None:
        assert body["detail"] == detail


def test_seed_payloads(live_server: Callable[..., LiveServer]) -> None:
    """Exactly the seed's shapes on a server of its edition (``--m3o-edition room``; the
    default answers Create and List with both editions' keys, tests/server/test_editions.py)."""
    with httpx.Client(base_url=live_server(m3o_edition="room").url) as client:
        seed_round_trip(client)


def seed_round_trip(client: httpx.Client) -> None:
    created = ok(client, "Create", {"name": "general", "description": "The general chat room"})
    assert list(created) == ["room"]
    room = created["room"]
    assert_room(room)
    assert room["name"] == "general" and room["description"] == "The general chat room"
    assert room["user_ids"] == [] and room["private"] is False
    room_id = room["id"]

    invited = ok(client, "Invite", {"room_id": room_id, "user_id": "user-1"})
    assert_room(invited["room"])
    assert invited["room"]["user_ids"] == ["user-1"]
    assert invited["room"]["created_at"] == room["created_at"]

    sent = ok(
        client,
        "Send",
        {
            "room_id": room_id,
            "user_id": "user-1",
            "client": "web",
            "subject": "Random",
            "text": "Hey whats up?",
        },
    )
    assert list(sent) == ["message"]
    message = sent["message"]
    assert_message(message)
    assert message["client"] == "web" and message["room_id"] == room_id
    assert message["user_id"] == "user-1" and message["subject"] == "Random"
    assert message["text"] == "Hey whats up?"

    history = ok(client, "History", {"room_id": room_id})
    assert history == {"messages": [message]}

    listed = ok(client, "List", {})
    assert list(listed) == ["rooms"]
    assert [r["id"] for r in listed["rooms"]] == [room_id]
    assert_room(listed["rooms"][0])

    kicked = ok(client, "Kick", {"room_id": room_id, "user_id": "user-1"})
    assert_room(kicked["room"])
    assert kicked["room"]["user_ids"] == []
    ok(client, "Invite", {"room_id": room_id, "user_id": "user-1"})
    left = ok(client, "Leave", {"room_id": room_id, "user_id": "user-1"})
    assert left["room"]["user_ids"] == []

    deleted = ok(client, "Delete", {"room_id": room_id})
    assert_room(deleted["room"])
    assert deleted["room"]["id"] == room_id
    assert_error(
        call(client, "History", {"room_id": room_id}), 404, "chat.history", "room not found"
    )
    assert ok(client, "List") == {"rooms": []}


def test_send_defaults_and_every_field(client: httpx.Client) -> None:
    room = ok(client, "Create", {"name": "r", "user_ids": ["a"]})["room"]
    message = ok(client, "Send", {"room_id": room["id"], "user_id": "a", "text": "hi"})["message"]
    assert_message(message)
    assert message["subject"] == ""
    uuid.UUID(message["client"])  # m3o filled in a random UUID


@pytest.mark.one_backend
def test_paths_are_case_insensitive(client: httpx.Client) -> None:
    for path in ("/v1/chat/create", "/v1/chat/CREATE", "/V1/Chat/cReAtE"):
        assert_room(client.post(path, json={"name": path}).json()["room"])


@pytest.mark.one_backend
def test_empty_body_means_empty_object(client: httpx.Client) -> None:
    assert list(ok(client, "List")) == ["rooms", "groups"]
    room = ok(client, "Create")["room"]
    assert room["name"] == "" and room["user_ids"] == []
    r = client.post("/v1/chat/Send", content=b"")
    assert_error(r, 400, "chat.send", "missing room id")


@pytest.mark.one_backend
@pytest.mark.parametrize(
    ("endpoint", "body", "detail"),
    [
        ("Send", {}, "missing room id"),
        ("Send", {"room_id": "x"}, "missing user id"),
        ("Send", {"room_id": "x", "user_id": "u"}, "missing text"),
        ("Delete", {}, "missing room id"),
        ("Invite", {"room_id": "x"}, "missing user id"),
        ("Kick", {"user_id": "u"}, "missing room id"),
        ("Leave", {"room_id": "x"}, "missing user id"),
        ("History", {}, "missing room id"),
        ("Join", {}, "missing room id"),
    ],
)
def test_missing_fields(client: httpx.Client, endpoint: str, body: Any, detail: str) -> None:
    assert_error(call(client, endpoint, body), 400, f"chat.{endpoint.lower()}", detail)


@pytest.mark.parametrize(
    "endpoint", ["Delete", "Invite", "Send", "History", "Kick", "Leave", "Join"]
)
def test_unknown_room(client: httpx.Client, endpoint: str) -> None:
    body = {"room_id": str(uuid.uuid4()), "user_id": "u", "text": "t"}
    assert_error(call(client, endpoint, body), 404, f"chat.{endpoint.lower()}", "room not found")


def test_send_needs_membership(client: httpx.Client) -> None:
    room = ok(client, "Create", {"name": "r"})["room"]
    r = call(client, "Send", {"room_id": room["id"], "user_id": "stranger", "text": "x"})
    assert_error(r, 400, "chat.send", "user is not in the room")


@pytest.mark.one_backend
@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/v1/chat/Nope"),
        ("POST", "/v1/other/Send"),
        ("GET", "/"),
        ("OPTIONS", "/nope"),
        ("POST", "/v1/chat/"),
        ("POST", "/v1/chat/Send/extra"),
    ],
)
def test_unknown_path(client: httpx.Client, method: str, path: str) -> None:
    """(Another method on a known path is 405: tests/server/test_methods.py.)"""
    assert_error(client.request(method, path), 404, "v1", "No such API")


@pytest.mark.one_backend
def test_health_and_openapi(client: httpx.Client) -> None:
    assert client.get("/health").json() == {"status": "ok"}
    ready = client.get("/ready")
    assert ready.json() == {"status": "ready"} and ready.headers["cache-control"] == "no-store"
    doc = client.get("/openapi.json").json()
    assert {"/health", "/ready"} <= set(doc["paths"])
    assert doc["openapi"].startswith("3.1")
    for name in ("Create", "Delete", "Invite", "Send", "History", "Kick", "List", "Join", "Leave"):
        assert f"/v1/chat/{name}" in doc["paths"]
    props = doc["components"]["schemas"]["HistoryRequest"]["properties"]
    assert props["limit"]["x-chatctl-extension"] is True
    assert "Error" in doc["components"]["schemas"]


@pytest.mark.one_backend
def test_ready_is_503_while_shutting_down(live_server: Callable[..., LiveServer]) -> None:
    """A server ending its streams at shutdown (``ChatServer.shutdown`` closes the hub)
    still answers, but /ready tells the load balancer to send nothing more."""
    srv = live_server()
    with httpx.Client(base_url=srv.url) as c:
        assert c.get("/ready").status_code == 200
        srv.app.state.hub.closed = True  # as hub.end_all(closing=True) leaves it
        r = c.get("/ready")
        assert (r.status_code, r.json()) == (
            503,
            {"status": "not ready", "reasons": ["shutting down"]},
        )
        assert c.get("/health").status_code == 200


def test_tokens(live_server: Callable[..., LiveServer]) -> None:
    srv = live_server(tokens=frozenset({"tok-a", "tok-b"}))
    with httpx.Client(base_url=srv.url) as c:
        assert_error(c.post("/v1/chat/List"), 401, "v1", "Unauthorized")
        bad = {"Authorization": "Bearer nope"}
        assert_error(c.post("/v1/chat/List", headers=bad), 401, "v1", "Unauthorized")
        basic = {"Authorization": "Basic tok-a"}
        assert_error(c.post("/v1/chat/List", headers=basic), 401, "v1")
        a = {"Authorization": "Bearer tok-a"}
        b = {"Authorization": "Bearer tok-b"}
        room = ok(c, "Create", {"name": "a's", "user_ids": ["u"]}, headers=a)["room"]
        assert ok(c, "List", {}, headers=b) == {"rooms": [], "groups": []}
        assert [r["id"] for r in ok(c, "List", {}, headers=a)["rooms"]] == [room["id"]]
        body = {"room_id": room["id"], "user_id": "u", "text": "x"}
        assert_error(call(c, "Send", body, headers=b), 404, "chat.send", "room not found")
        assert_error(call(c, "Delete", body, headers=b), 404, "chat.delete", "room not found")
        ok(c, "Send", body, headers=a)
        # health needs no token
        assert c.get("/health").status_code == 200


def test_oversized_body(live_server: Callable[..., LiveServer]) -> None:
    from chatctl.schema import Limits

    srv = live_server(limits=Limits(max_body_bytes=1000))
    with httpx.Client(base_url=srv.url) as c:
        r = c.post("/v1/chat/Create", content=b'{"name": "' + b"x" * 2000 + b'"}')
        assert_error(r, 413, "v1")

        def chunks() -> Any:  # no Content-Length: the server must count
            for _ in range(10):
                yield b" " * 200

        r = c.post("/v1/chat/Create", content=chunks())
        assert "content-length" not in r.request.headers
        assert_error(r, 413, "v1")


@pytest.mark.one_backend
@pytest.mark.parametrize(
    "body",
    [b"{", b"nope", b"\xff\xfe{}", b"[" * 100_000 + b"]" * 100_000, b'{"name": 1e999999}'],
)
def test_malformed_json(client: httpx.Client, body: bytes) -> None:
    r = client.post("/v1/chat/Create", content=body)
    assert r.status_code == 400, r.text
    assert r.json()["id"] in ("v1", "chat.create")


@pytest.mark.one_backend
@pytest.mark.parametrize(
    "body",
    [[], "x", 1, None, {"name": 5}, {"user_ids": "a"}, {"private": "yes"}, {"name": "\ud800"}],
)
def test_wrong_types(client: httpx.Client, body: Any) -> None:
    # json.dumps escapes lone surrogates, which httpx's own encoder refuses to send.
    r = client.post("/v1/chat/Create", content=json.dumps(body).encode())
    if body is None:
        assert r.status_code == 200
        return
    assert_error(r, 400, "chat.create")


def test_a_bug_is_a_500_in_m3o_shape(
    live_server: Callable[..., LiveServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    srv = live_server()

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(srv.app.state.service, "call", broken)
    # The traceback is logged (that is the point of a 500); keep it out of the test output.
    monkeypatch.setattr("chatctl.server.app.log.disabled", True)
    with httpx.Client(base_url=srv.url) as c:
        r = c.post("/v1/chat/List")
    assert_error(r, 500, "v1", "internal server error")
