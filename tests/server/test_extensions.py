"""Part 2 of the contract over HTTP: pagination, idempotency, limits."""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from chatctl.ids import cursor_time_ns, time_ns
from chatctl.schema import Limits
from chatctl.server import sql
from tests.helpers import wait_for
from tests.server.conftest import LiveServer
from tests.server.test_unary import assert_error, call, ok


def make_room(client: httpx.Client, n: int) -> tuple[str, list[dict[str, Any]]]:
    room_id = ok(client, "Create", {"name": "p", "user_ids": ["a"]})["room"]["id"]
    sent = [
        ok(client, "Send", {"room_id": room_id, "user_id": "a", "text": f"m{i}"})["message"]
        for i in range(n)
    ]
    return room_id, sent


def texts(client: httpx.Client, body: dict[str, Any]) -> list[str]:
    return [m["text"] for m in ok(client, "History", body)["messages"]]


def test_history_pagination(client: httpx.Client) -> None:
    room_id, sent = make_room(client, 10)
    ids = [m["id"] for m in sent]
    assert ids == sorted(ids)  # UUIDv7: time-ordered
    every = [f"m{i}" for i in range(10)]
    assert texts(client, {"room_id": room_id}) == every
    assert texts(client, {"room_id": room_id, "limit": 3}) == ["m7", "m8", "m9"]
    assert texts(client, {"room_id": room_id, "limit": "3"}) == ["m7", "m8", "m9"]  # proto3 JSON
    assert texts(client, {"room_id": room_id, "after": ids[2], "limit": 3}) == ["m3", "m4", "m5"]
    assert texts(client, {"room_id": room_id, "after": ids[7]}) == ["m8", "m9"]
    assert texts(client, {"room_id": room_id, "before": ids[5], "limit": 2}) == ["m3", "m4"]
    assert texts(client, {"room_id": room_id, "before": ids[2]}) == ["m0", "m1"]
    assert texts(client, {"room_id": room_id, "after": ids[1], "before": ids[4]}) == ["m2", "m3"]
    assert texts(client, {"room_id": room_id, "after": ids[9]}) == []
    # Walking back page by page from the end visits every message once.
    pages: list[str] = []
    before = ""
    while True:
        page = ok(client, "History", {"room_id": room_id, "limit": 4, "before": before})
        if not page["messages"]:
            break
        pages = [m["text"] for m in page["messages"]] + pages
        before = page["messages"][0]["id"]
    assert pages == every


def test_a_messages_id_and_sent_at_are_one_instant(client: httpx.Client) -> None:
    """The id's millisecond is sent_at's, so a time shown to the millisecond is a cursor
    that splits the room exactly there (``chatctl join --since``)."""
    _, sent = make_room(client, 20)
    for m in sent:
        assert cursor_time_ns(m["id"]) == (time_ns(m["sent_at"]) or 0) // 10**6 * 10**6, m


def test_history_cursors_are_positions(client: httpx.Client) -> None:
    room_id, sent = make_room(client, 3)
    _, other = make_room(client, 1)  # its id sorts after every message of room_id
    for cursor in ("after", "before"):
        r = call(client, "History", {"room_id": room_id, cursor: "nope"})
        assert_error(r, 400, "chat.history")
        assert cursor in r.json()["detail"]
    # A UUID that is no message of the room is a position in id (time) order.
    assert texts(client, {"room_id": room_id, "after": other[0]["id"]}) == []
    assert texts(client, {"room_id": room_id, "before": other[0]["id"]}) == ["m0", "m1", "m2"]
    nil = "00000000-0000-0000-0000-000000000000"
    assert texts(client, {"room_id": room_id, "after": nil, "limit": 2}) == ["m0", "m1"]
    assert texts(client, {"room_id": room_id, "before": nil}) == []
    upper = sent[1]["id"].upper()
    assert texts(client, {"room_id": room_id, "after": upper}) == ["m2"]
    assert_error(call(client, "History", {"room_id": room_id, "limit": -1}), 400, "chat.history")
    assert_error(call(client, "History", {"room_id": room_id, "limit": 1.5}), 400, "chat.history")


def test_a_limit_over_the_page_size_is_lowered_to_it(
    live_server: Callable[..., LiveServer],
) -> None:
    """A limit over max_history_page gets the latest page, not a refusal, nor more."""
    srv = live_server(limits=Limits(max_history_page=2))
    with httpx.Client(base_url=srv.url) as client:
        room_id, _ = make_room(client, 3)
        assert texts(client, {"room_id": room_id, "limit": 10**30}) == ["m1", "m2"]
        assert texts(client, {"room_id": room_id, "limit": 3}) == ["m1", "m2"]
        assert texts(client, {"room_id": room_id, "limit": 1}) == ["m2"]
        assert texts(client, {"room_id": room_id}) == ["m0", "m1", "m2"]  # no limit: all


def test_idempotency(live_server: Callable[..., LiveServer]) -> None:
    srv = live_server(tokens=frozenset({"t1", "t2"}))
    with httpx.Client(base_url=srv.url) as client:
        t1 = {"Authorization": "Bearer t1"}
        room_id = ok(client, "Create", {"name": "i", "user_ids": ["a"]}, headers=t1)["room"]["id"]
        body = {"room_id": room_id, "user_id": "a", "text": "once"}
        key = {**t1, "Idempotency-Key": "k-1"}
        first = client.post("/v1/chat/Send", json=body, headers=key)
        again = client.post("/v1/chat/Send", json=body, headers=key)
        assert first.status_code == again.status_code == 200
        assert again.content == first.content
        assert len(ok(client, "History", {"room_id": room_id}, headers=t1)["messages"]) == 1
        # the same key with another body, or on another endpoint: 409, nothing changes
        other = client.post("/v1/chat/Send", json={**body, "text": "twice"}, headers=key)
        assert_error(other, 409, "chat.send")
        assert_error(client.post("/v1/chat/Create", json={}, headers=key), 409, "chat.create")
        assert len(ok(client, "History", {"room_id": room_id}, headers=t1)["messages"]) == 1
        # a Create repeated with its key makes one room
        create_key = {**t1, "Idempotency-Key": "create-1"}
        rooms = {
            ok(client, "Create", {"name": "x"}, headers=create_key)["room"]["id"] for _ in "ab"
        }
        assert len(rooms) == 1
        assert len(ok(client, "List", {}, headers=t1)["rooms"]) == 2
        # keys are per tenant
        t2_key = {"Authorization": "Bearer t2", "Idempotency-Key": "k-1"}
        assert ok(client, "Create", {"name": "t2"}, headers=t2_key)["room"]["name"] == "t2"
        # an error is not remembered: after the fix, the same key works
        fix_key = {**t1, "Idempotency-Key": "k-2"}
        bad = {"room_id": room_id, "user_id": "b", "text": "x"}
        assert_error(client.post("/v1/chat/Send", json=bad, headers=fix_key), 400, "chat.send")
        ok(client, "Invite", {"room_id": room_id, "user_id": "b"}, headers=t1)
        ok(client, "Send", bad, headers=fix_key)
        # read-only endpoints ignore the header
        ok(client, "List", {}, headers={**t1, "Idempotency-Key": "k-1"})
        too_long = {**t1, "Idempotency-Key": "k" * 300}
        assert_error(client.post("/v1/chat/Send", json=body, headers=too_long), 400, "chat.send")


def test_limits(live_server: Callable[..., LiveServer]) -> None:
    limits = Limits(
        max_text_chars=10,
        max_name_chars=5,
        max_rooms_per_tenant=2,
        max_members_per_room=2,
    )
    srv = live_server(limits=limits)
    with httpx.Client(base_url=srv.url) as client:
        r = call(client, "Create", {"name": "toolong"})
        assert_error(r, 400, "chat.create")
        assert "max_name_chars" in r.json()["detail"]
        r = call(client, "Create", {"user_ids": ["a", "b", "c"]})
        assert "max_members_per_room" in r.json()["detail"]
        room_id = ok(client, "Create", {"user_ids": ["a", "b"]})["room"]["id"]
        r = call(client, "Invite", {"room_id": room_id, "user_id": "c"})
        assert_error(r, 400, "chat.invite")
        assert "max_members_per_room" in r.json()["detail"]
        ok(client, "Invite", {"room_id": room_id, "user_id": "a"})  # already in: fine
        # Characters, as the OpenAPI document's maxLength counts them (not UTF-8 bytes).
        r = call(client, "Send", {"room_id": room_id, "user_id": "a", "text": "é" * 11})
        assert_error(r, 400, "chat.send")
        detail = "text is longer than the limit of 10 characters (max_text_chars)"
        assert r.json()["detail"] == detail
        ok(client, "Send", {"room_id": room_id, "user_id": "a", "text": "😀" * 10})
        ok(client, "Create", {})
        r = call(client, "Create", {})
        assert_error(r, 400, "chat.create")
        assert "max_rooms_per_tenant" in r.json()["detail"]


#: for each endpoint that takes an Idempotency-Key: its body for a room with members a, b
#: (and a message from a), and what changed once and only once.
KEYED: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "Create": lambda room: {"name": "keyed"},
    "Delete": lambda room: {"room_id": room["id"]},
    "Invite": lambda room: {"room_id": room["id"], "user_id": "c"},
    "Send": lambda room: {"room_id": room["id"], "user_id": "a", "text": "keyed"},
    "Kick": lambda room: {"room_id": room["id"], "user_id": "b"},
    "Leave": lambda room: {"room_id": room["id"], "user_id": "b"},
}


def state(client: httpx.Client, room_id: str) -> tuple[list[Any], list[str]]:
    """Every room (names and members) and the room's messages, to compare before/after."""
    rooms = [(r["name"], r["user_ids"]) for r in ok(client, "List", {})["rooms"]]
    r = call(client, "History", {"room_id": room_id})
    return rooms, [m["text"] for m in r.json()["messages"]] if r.status_code == 200 else []


@pytest.mark.parametrize("endpoint", sorted(KEYED))
def test_idempotency_key_is_per_endpoint(client: httpx.Client, endpoint: str) -> None:
    """On every endpoint that changes something, a key's first answer comes back for a
    repeat, byte for byte, changing nothing more (even after the room changed since);
    the same key on another endpoint is 409 and changes nothing."""
    room = ok(client, "Create", {"name": "r", "user_ids": ["a", "b"]})["room"]
    ok(client, "Send", {"room_id": room["id"], "user_id": "a", "text": "first"})
    key = {"Idempotency-Key": f"per-endpoint-{endpoint}"}
    body = KEYED[endpoint](room)
    first = call(client, endpoint, body, headers=key)
    assert first.status_code == 200, first.text
    # A change since: a repeat that ran again would now answer or change otherwise.
    if endpoint not in ("Create", "Delete"):
        ok(client, "Invite", {"room_id": room["id"], "user_id": "d"})
    after_first = state(client, room["id"])
    again = call(client, endpoint, body, headers=key)
    assert again.status_code == 200 and again.content == first.content
    assert state(client, room["id"]) == after_first
    for other in sorted(set(KEYED) - {endpoint}):
        r = call(client, other, KEYED[other](room), headers=key)
        assert_error(r, 409, f"chat.{other.lower()}")
    assert state(client, room["id"]) == after_first


def test_a_deleted_rooms_messages_are_purged_while_the_server_runs(
    live_server: Callable[..., LiveServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sql, "PURGE_CHUNK", 20)  # 3 steps for 50 messages
    srv = live_server()
    with httpx.Client(base_url=srv.url) as client:
        room_id = ok(client, "Create", {"name": "big", "user_ids": ["u"]})["room"]["id"]
        for n in range(50):
            ok(client, "Send", {"room_id": room_id, "user_id": "u", "text": f"m{n}"})
        ok(client, "Delete", {"room_id": room_id})
        assert_error(call(client, "History", {"room_id": room_id}), 404, "chat.history")
        other = ok(client, "Create", {"name": "next", "user_ids": ["u"]})["room"]["id"]
        assert ok(client, "History", {"room_id": other})["messages"] == []

    def left() -> int:
        # A second connection, as a backup tool would read the file.
        with contextlib.closing(sqlite3.connect(srv.config.db)) as db:
            (n,) = db.execute("SELECT COUNT(*) FROM messages").fetchone()
            return int(n)

    wait_for(lambda: left() == 0, 10, "the deleted room's messages to be purged")
