"""The m3o stand-ins behave as m3o's handler and gateway did (what
``tests/compat/m3o_standin.py`` says it copies), so that tests against them mean something.

Each fact here was read from micro/services ``chat/handler/handler.go`` (room edition
before 2022-07-20, group edition after) and micro v3's gateway; see the contract copy's
"Also m3o: its final edition" part.
"""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from websockets.exceptions import ConnectionClosedError, InvalidStatus
from websockets.sync.client import ClientConnection, connect

from tests.compat.m3o_standin import RunningStandIn
from tests.helpers import wait_for

ROOM_FIELDS = {"id", "name", "description", "created_at", "user_ids", "private"}


def post(srv: RunningStandIn, endpoint: str, body: Any, **headers: str) -> httpx.Response:
    headers = {"Authorization": f"Bearer {srv.token}", **headers}
    return httpx.post(f"{srv.url}/v1/chat/{endpoint}", json=body, headers=headers, timeout=10)


def error(r: httpx.Response) -> tuple[int, str, str]:
    data = r.json()
    assert data["code"] == r.status_code
    return r.status_code, data["id"], data["detail"]


@contextlib.contextmanager
def join(srv: RunningStandIn, body: dict[str, Any]) -> Iterator[ClientConnection]:
    headers = {"Authorization": f"Bearer {srv.token}"}
    with connect(f"{srv.ws_url}/v1/chat/Join", additional_headers=headers, open_timeout=10) as ws:
        ws.send(json.dumps(body))
        yield ws


def member(srv: RunningStandIn, gid: str, user: str) -> bool:
    noun = srv.edition
    groups = post(srv, "List", {"user_id": user}).json()[f"{noun}s"]
    return any(g["id"] == gid for g in groups)


def test_every_endpoint_in_the_editions_names(m3o_server: RunningStandIn) -> None:
    srv, noun = m3o_server, m3o_server.edition
    nid = f"{noun}_id"
    created = post(srv, "Create", {"name": "general", "description": "The general chat"})
    group = created.json()[noun]
    assert set(group) == ROOM_FIELDS and group["user_ids"] == [] and group["private"] is False
    gid = group["id"]
    assert post(srv, "Invite", {nid: gid, "user_id": "alice"}).json()[noun]["user_ids"] == ["alice"]
    sent = post(srv, "Send", {nid: gid, "user_id": "alice", "text": "hi"}).json()["message"]
    assert sent[nid] == gid and sent["text"] == "hi" and sent["client"]  # a UUID if empty
    assert error(post(srv, "Send", {nid: gid, "user_id": "eve", "text": "x"})) == (
        400,
        "chat.send",
        f"user is not in the {noun}",
    )
    assert [m["id"] for m in post(srv, "History", {nid: gid}).json()["messages"]] == [sent["id"]]
    assert [g["id"] for g in post(srv, "List", {}).json()[f"{noun}s"]] == [gid]
    assert post(srv, "List", {"user_id": "bob"}).json()[f"{noun}s"] == []
    # Kick and Leave do not check membership.
    assert post(srv, "Kick", {nid: gid, "user_id": "nobody"}).json()[noun]["user_ids"] == ["alice"]
    assert post(srv, "Leave", {nid: gid, "user_id": "alice"}).json()[noun]["user_ids"] == []
    assert post(srv, "Delete", {nid: gid}).json()[noun]["id"] == gid
    assert error(post(srv, "History", {nid: gid})) == (400, "chat.history", f"{noun} not found")
    # The other edition's names are not understood: the id is simply missing.
    other = "room_id" if noun == "group" else "group_id"
    assert error(post(srv, "Invite", {other: gid, "user_id": "a"}))[2] == f"missing {noun} id"


def test_validation_order_ids_and_details(m3o_group_server: RunningStandIn) -> None:
    srv = m3o_group_server
    assert error(post(srv, "Send", {})) == (400, "chat.send", "missing group id")
    assert error(post(srv, "Send", {"group_id": "g"})) == (400, "chat.send", "missing user id")
    assert error(post(srv, "Send", {"group_id": "g", "user_id": "u"}))[2] == "missing text"
    assert error(post(srv, "Send", {"group_id": "g", "user_id": "u", "text": "t"})) == (
        400,
        "chat.send",
        "group not found",
    )
    # Create validates nothing.
    assert post(srv, "Create", {}).json()["group"]["name"] == ""
    # Join's "missing" errors carried Send's id; its "not found" its own.
    with join(srv, {"user_id": "u"}) as ws:
        assert json.loads(ws.recv(timeout=5))["id"] == "chat.send"
    with join(srv, {"group_id": "nope", "user_id": "u"}) as ws:
        frame = json.loads(ws.recv(timeout=5))
        assert (frame["id"], frame["code"], frame["detail"]) == (
            "chat.join",
            400,
            "group not found",
        )
        # ... and then the gateway dropped the connection without a close frame.
        with pytest.raises(ConnectionClosedError) as closed:
            ws.recv(timeout=5)
        assert closed.value.rcvd is None


def test_unknown_fields_ignored_on_calls_refused_on_join(m3o_room_server: RunningStandIn) -> None:
    srv = m3o_room_server
    rid = post(srv, "Create", {"name": "r", "user_ids": ["a"]}).json()["room"]["id"]
    ids = [
        post(srv, "Send", {"room_id": rid, "user_id": "a", "text": str(i)}).json()["message"]["id"]
        for i in range(3)
    ]
    # No paging: limit and after are unknown fields, ignored; every message, every time.
    paged = post(srv, "History", {"room_id": rid, "limit": 1, "after": ids[0]}).json()
    assert sorted(m["id"] for m in paged["messages"]) == sorted(ids)
    # A list field beside an unknown one panicked in micro's field-by-field decoding.
    r = post(srv, "Create", {"name": "x", "user_ids": ["a"], "extra": True})
    assert r.status_code == 500 and "panic recovered" in r.json()["detail"]
    # Join's request was decoded strictly: an extension field fails the stream.
    with join(srv, {"room_id": rid, "user_id": "b", "since": ids[0]}) as ws:
        frame = json.loads(ws.recv(timeout=5))
        assert frame["code"] == 500 and 'unknown field "since"' in frame["detail"]
        with pytest.raises(ConnectionClosedError):
            ws.recv(timeout=5)


def test_history_and_list_answer_in_key_order(m3o_room_server: RunningStandIn) -> None:
    srv = m3o_room_server
    rid = post(srv, "Create", {"name": "r", "user_ids": ["a"]}).json()["room"]["id"]
    for i in range(6):
        post(srv, "Send", {"room_id": rid, "user_id": "a", "text": str(i)})
    for _ in range(3):
        post(srv, "Create", {"name": "more"})
    messages = post(srv, "History", {"room_id": rid}).json()["messages"]
    assert [m["id"] for m in messages] == sorted(m["id"] for m in messages)
    assert sorted(m["text"] for m in messages) == [str(i) for i in range(6)]
    rooms = post(srv, "List", {}).json()["rooms"]
    assert [r["id"] for r in rooms] == sorted(r["id"] for r in rooms)


def test_join_adds_the_user_skips_own_and_shares_one_queue(
    m3o_group_server: RunningStandIn,
) -> None:
    srv = m3o_group_server
    gid = post(srv, "Create", {"name": "g", "user_ids": ["alice"]}).json()["group"]["id"]
    with join(srv, {"group_id": gid, "user_id": "bob"}) as one:
        wait_for(lambda: member(srv, gid, "bob"), 10, "Join to add bob")
        with join(srv, {"group_id": gid, "user_id": "bob"}) as two:
            wait_for(lambda: len(srv.sent("Join")) == 2, 10, "the second Join")
            post(srv, "Send", {"group_id": gid, "user_id": "bob", "text": "own"})
            for text in ("first", "second"):
                post(srv, "Send", {"group_id": gid, "user_id": "alice", "text": text})
            got = [json.loads(ws.recv(timeout=5))["message"]["text"] for ws in (one, two)]
            # One consumer group per user: each message reached one of bob's streams.
            assert sorted(got) == ["first", "second"]
            with pytest.raises(TimeoutError):
                one.recv(timeout=0.3)
    frame_keys = ["id", "client", "group_id", "user_id", "sent_at", "subject", "text"]
    with join(srv, {"group_id": gid, "user_id": "carol"}) as ws:
        wait_for(lambda: member(srv, gid, "carol"), 10, "Join to add carol")
        post(srv, "Send", {"group_id": gid, "user_id": "alice", "text": "x"})
        assert list(json.loads(ws.recv(timeout=5))["message"]) == frame_keys


def test_tokens_on_calls_and_streams(m3o_group_server: RunningStandIn) -> None:
    srv = m3o_group_server
    r = httpx.post(f"{srv.url}/v1/chat/List", json={})
    assert (r.status_code, r.text) == (401, "unauthorized request\n")
    with pytest.raises(InvalidStatus) as refused:
        connect(f"{srv.ws_url}/v1/chat/Join", open_timeout=10).close()
    assert refused.value.response.status_code == 401
    # A browser's way: the token as the offered subprotocol, which is echoed.
    with connect(f"{srv.ws_url}/v1/chat/Join", subprotocols=[srv.token]) as ws:  # type: ignore[list-item]
        assert ws.subprotocol == srv.token
    preflight = httpx.options(
        f"{srv.url}/v1/chat/Create",
        headers={"Origin": "http://page.example", "Access-Control-Request-Method": "POST"},
    )
    assert preflight.status_code == 200
    assert preflight.headers["access-control-allow-origin"] == "http://page.example"
    assert "Authorization" in preflight.headers["access-control-allow-headers"]


def test_join_over_plain_http_writes_frames_back_to_back(m3o_room_server: RunningStandIn) -> None:
    srv = m3o_room_server
    rid = post(srv, "Create", {"name": "r", "user_ids": ["a"]}).json()["room"]["id"]
    received = bytearray()
    done = threading.Event()

    def tail() -> None:
        headers = {"Authorization": f"Bearer {srv.token}"}
        body = {"room_id": rid, "user_id": "b"}
        url = f"{srv.url}/v1/chat/Join"
        with httpx.stream("POST", url, json=body, headers=headers, timeout=10) as r:
            for chunk in r.iter_bytes():
                received.extend(chunk)
                if received.count(b'"text"') == 2:
                    break
        done.set()

    reader = threading.Thread(target=tail, daemon=True)
    reader.start()
    wait_for(lambda: member(srv, rid, "b"), 10, "the HTTP Join to add b")
    for text in ("one", "two"):
        post(srv, "Send", {"room_id": rid, "user_id": "a", "text": text})
    assert done.wait(10)
    assert b"}{" in received and b"\n" not in received


def test_requests_are_recorded_as_sent(m3o_room_server: RunningStandIn) -> None:
    srv = m3o_room_server
    r = httpx.post(
        f"{srv.url}/v1/chat/create",
        content=b'{"name": "a", "limit": 3}',
        headers={"Authorization": f"Bearer {srv.token}", "Content-Type": "application/json"},
    )
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    (rec,) = srv.requests
    assert (rec.endpoint, rec.body, rec.raw, rec.status) == (
        "Create",
        {"name": "a", "limit": 3},
        b'{"name": "a", "limit": 3}',
        200,
    )
    assert rec.headers["authorization"] == f"Bearer {srv.token}"
