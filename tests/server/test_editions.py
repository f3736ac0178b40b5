"""Both of m3o's editions on one server (contract part 3, "Both editions"; part 4 for the
group edition's facts): every endpoint and the Join stream (WebSocket and NDJSON) answer
a request in the edition it names, on SQLite and on PostgreSQL; Create and List answer
in the server's edition (``--m3o-edition``, both keys by default); a message stored in
one edition reads the same in the other; the extensions work in both.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chatctl.schema import Limits
from chatctl.server.hub import Hub
from chatctl.wire import encode, event_frame, in_group_edition, message_frame, message_object
from tests import postgres
from tests.server.conftest import LiveServer, start_server
from tests.server.helpers import closed, frame, join, run
from tests.server.test_unary import ROOM_KEYS, assert_error, assert_room, call, ok

GROUP_MESSAGE_KEYS = ["id", "client", "group_id", "user_id", "sent_at", "subject", "text"]


@pytest.fixture(scope="module", params=postgres.BACKENDS)
def group_server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveServer]:
    """A server of m3o's final edition (``--m3o-edition group``), on each backend."""
    path = str(tmp_path_factory.mktemp("group") / "chat.db")
    with postgres.database_for(request.param, path) as db:
        srv = start_server(db=db, m3o_edition="group")
        yield srv
        srv.stop()


@pytest.fixture
def group_client(group_server: LiveServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=group_server.url, timeout=10) as c:
        yield c


def new_group(client: httpx.Client, *users: str, private: bool = False) -> str:
    body = {"name": "g", "user_ids": list(users), "private": private}
    created = ok(client, "Create", body)
    room = created.get("group", created.get("room"))
    assert room is not None, created
    gid: str = room["id"]
    return gid


def assert_group_message(message: dict[str, Any], gid: str) -> None:
    assert list(message) == GROUP_MESSAGE_KEYS
    assert message["group_id"] == gid
    assert uuid.UUID(message["id"]).version == 7


# -- the unary endpoints --------------------------------------------------------------


def test_every_endpoint_in_the_group_edition(client: httpx.Client) -> None:
    """The npm client's round trip, by hand: each answer in the group edition's keys."""
    created = ok(client, "Create", {"name": "general", "description": "d"})
    # Create names neither edition: by default both keys, the same group.
    assert list(created) == ["room", "group"] and created["room"] == created["group"]
    assert_room(created["group"])
    gid = created["group"]["id"]

    invited = ok(client, "Invite", {"group_id": gid, "user_id": "user-1"})
    assert list(invited) == ["group"] and invited["group"]["user_ids"] == ["user-1"]
    assert list(invited["group"]) == ROOM_KEYS

    sent = ok(
        client,
        "Send",
        {"group_id": gid, "user_id": "user-1", "client": "web", "subject": "s", "text": "hi"},
    )
    assert list(sent) == ["message"]
    assert_group_message(sent["message"], gid)

    history = ok(client, "History", {"group_id": gid})
    assert history == {"messages": [sent["message"]]}

    listed = ok(client, "List", {"user_id": "user-1"})
    assert list(listed) == ["rooms", "groups"] and listed["rooms"] == listed["groups"]
    assert [g["id"] for g in listed["groups"]] == [gid]

    kicked = ok(client, "Kick", {"group_id": gid, "user_id": "user-1"})
    assert list(kicked) == ["group"] and kicked["group"]["user_ids"] == []
    ok(client, "Invite", {"group_id": gid, "user_id": "user-1"})
    left = ok(client, "Leave", {"group_id": gid, "user_id": "user-1"})
    assert list(left) == ["group"] and left["group"]["user_ids"] == []
    deleted = ok(client, "Delete", {"group_id": gid})
    assert list(deleted) == ["group"] and deleted["group"]["id"] == gid
    assert_error(call(client, "History", {"group_id": gid}), 404, "chat.history", "group not found")


def test_group_edition_errors_keep_our_statuses(client: httpx.Client) -> None:
    """m3o's final edition's words (part 4), with this server's statuses (part 2)."""
    gid = new_group(client, "a")
    private = new_group(client, "a", private=True)
    unknown = str(uuid.uuid4())
    zed = {"user_id": "zed", "text": "x"}
    cases: list[tuple[str, dict[str, Any], int, str]] = [
        ("Invite", {"group_id": ""}, 400, "missing group id"),
        ("Delete", {"group_id": None}, 400, "missing group id"),
        ("Invite", {"group_id": gid}, 400, "missing user id"),
        ("Send", {"group_id": gid, "user_id": "a"}, 400, "missing text"),
        ("History", {"group_id": unknown}, 404, "group not found"),
        ("Kick", {"group_id": unknown, "user_id": "a"}, 404, "group not found"),
        ("Send", {"group_id": gid} | zed, 400, "user is not in the group"),
        ("Send", {"group_id": private} | zed, 403, "user is not in the group"),
        ("History", {"group_id": private}, 403, "private group: user_id must name a member"),
        ("Send", {"group_id": 7} | zed, 400, "group_id must be a string"),
    ]
    for endpoint, body, code, detail in cases:
        r = call(client, endpoint, body)
        assert_error(r, code, f"chat.{endpoint.lower()}")
        assert r.json()["detail"].startswith(detail), (endpoint, body, r.json())
        assert "room" not in r.json()["detail"]
    # The seed's words for the seed's names, on the same rooms.
    assert_error(
        call(client, "Send", {"room_id": gid, "user_id": "zed", "text": "x"}),
        400,
        "chat.send",
        "user is not in the room",
    )


def test_a_limits_flag_keeps_its_name(live_server: Any) -> None:
    srv = live_server(limits=Limits(max_members_per_room=1))
    with httpx.Client(base_url=srv.url) as c:
        gid = new_group(c, "a")
        r = call(c, "Invite", {"group_id": gid, "user_id": "b"})
        detail = "the group is full: at most 1 users (max_members_per_room)"
        assert_error(r, 400, "chat.invite", detail)


@pytest.mark.one_backend
def test_naming_both_is_refused(client: httpx.Client) -> None:
    gid = new_group(client, "a")
    for endpoint in ("Delete", "Invite", "Send", "History", "Kick", "Leave"):
        body = {"room_id": gid, "group_id": gid, "user_id": "a", "text": "x"}
        r = call(client, endpoint, body)
        assert_error(r, 400, f"chat.{endpoint.lower()}", "give room_id or group_id, not both")
    # Even with one of them null: the edition of the answer would be a guess.
    r = call(client, "Send", {"room_id": gid, "group_id": None, "user_id": "a", "text": "x"})
    assert_error(r, 400, "chat.send", "give room_id or group_id, not both")
    assert ok(client, "History", {"room_id": gid}) == {"messages": []}


def test_a_message_reads_the_same_in_either_edition(client: httpx.Client) -> None:
    gid = new_group(client, "a", "b")
    by_group = ok(client, "Send", {"group_id": gid, "user_id": "a", "text": "g"})["message"]
    by_room = ok(client, "Send", {"room_id": gid, "user_id": "b", "text": "r"})["message"]
    as_rooms = ok(client, "History", {"room_id": gid})["messages"]
    as_groups = ok(client, "History", {"group_id": gid})["messages"]
    assert [m["text"] for m in as_rooms] == ["g", "r"]
    assert as_rooms[1] == by_room
    assert as_groups[0] == by_group
    for room_edition, group_edition in zip(as_rooms, as_groups, strict=True):
        renamed = {("group_id" if k == "room_id" else k): v for k, v in room_edition.items()}
        assert list(group_edition) == GROUP_MESSAGE_KEYS and group_edition == renamed


def test_extensions_in_the_group_edition(client: httpx.Client) -> None:
    """Paging and the Idempotency-Key work the same in the group edition; a key's first
    answer comes back in the edition of the retry."""
    gid = new_group(client, "a")
    sent = [
        ok(client, "Send", {"group_id": gid, "user_id": "a", "text": f"m{i}"})["message"]
        for i in range(5)
    ]
    page = ok(client, "History", {"group_id": gid, "limit": 2})["messages"]
    assert [m["text"] for m in page] == ["m3", "m4"]
    page = ok(client, "History", {"group_id": gid, "after": sent[0]["id"], "limit": "2"})
    assert [m["text"] for m in page["messages"]] == ["m1", "m2"]
    before = ok(client, "History", {"group_id": gid, "before": sent[2]["id"]})["messages"]
    assert before == sent[:2]

    key = {"Idempotency-Key": f"k-{uuid.uuid4()}"}
    first = ok(client, "Send", {"room_id": gid, "user_id": "a", "text": "once"}, headers=key)
    again = ok(client, "Send", {"group_id": gid, "user_id": "a", "text": "once"}, headers=key)
    assert first["message"]["id"] == again["message"]["id"]
    assert list(again["message"]) == GROUP_MESSAGE_KEYS
    assert [m["text"] for m in ok(client, "History", {"group_id": gid})["messages"]][-1:] == [
        "once"
    ]
    assert len(ok(client, "History", {"group_id": gid})["messages"]) == 6


def test_a_long_history_in_the_group_edition(client: httpx.Client) -> None:
    """A History of more than one part (250 messages each) is renamed part by part."""
    gid = new_group(client, "a")
    for i in range(260):
        ok(client, "Send", {"group_id": gid, "user_id": "a", "text": f"m{i}"})
    r = call(client, "History", {"group_id": gid})
    assert "content-length" not in r.headers  # streamed in parts
    messages = r.json()["messages"]
    assert len(messages) == 260 and all(list(m) == GROUP_MESSAGE_KEYS for m in messages)


def test_group_server_answers_create_and_list_as_groups(group_client: httpx.Client) -> None:
    created = ok(group_client, "Create", {"name": "n", "user_ids": ["a"]})
    assert list(created) == ["group"]
    gid = created["group"]["id"]
    assert list(ok(group_client, "List", {"user_id": "a"})) == ["groups"]
    # A request missing its id is worded in the server's edition...
    assert_error(call(group_client, "Send", {}), 400, "chat.send", "missing group id")
    assert_error(call(group_client, "History"), 400, "chat.history", "missing group id")
    # ... but one naming room_id is answered in the seed's, whatever the server's.
    invited = ok(group_client, "Invite", {"room_id": gid, "user_id": "b"})
    assert list(invited) == ["room"]
    unknown = {"room_id": str(uuid.uuid4())}
    assert_error(call(group_client, "Delete", unknown), 404, "chat.delete", "room not found")


def test_room_server_answers_the_seeds_shapes(live_server: Any) -> None:
    srv = live_server(m3o_edition="room")
    with httpx.Client(base_url=srv.url) as c:
        created = ok(c, "Create", {"name": "n"})
        assert list(created) == ["room"]
        assert list(ok(c, "List", {})) == ["rooms"]
        assert_error(call(c, "Send", {}), 400, "chat.send", "missing room id")
        # group_id is still understood on a seed-edition server.
        gid = created["room"]["id"]
        assert list(ok(c, "Invite", {"group_id": gid, "user_id": "u"})) == ["group"]


@pytest.mark.one_backend
def test_the_document_follows_the_servers_edition(
    client: httpx.Client, group_client: httpx.Client
) -> None:
    """Create's link to the other calls reads the room at the key the server answers."""
    from openapi_spec_validator import OpenAPIV31SpecValidator

    for c, key in ((client, "room"), (group_client, "group")):
        doc = c.get("/openapi.json").json()
        OpenAPIV31SpecValidator(doc).validate()
        links = doc["paths"]["/v1/chat/Create"]["post"]["responses"]["200"]["links"]
        assert {link["requestBody"]["room_id"] for link in links.values()} == {
            f"$response.body#/{key}/id"
        }


# -- Join -----------------------------------------------------------------------------


async def until_message(ws: Any, most: int = 5) -> list[dict[str, Any]]:
    """A stream's frames up to and including its first message frame."""
    frames = [await frame(ws)]
    while "message" not in frames[-1] and len(frames) < most:
        frames.append(await frame(ws))
    return frames


def test_join_streams_in_the_edition_it_was_asked_in(server: LiveServer) -> None:
    """A room-edition and a group-edition stream of one room each get every frame in
    their own names: messages, events, and the final frame when the room is deleted."""

    async def scenario() -> None:
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
            created = (await http.post("/v1/chat/Create", json={"user_ids": ["a"]})).json()
            gid = created["group"]["id"]
            by_room = await join(server, {"room_id": gid, "user_id": "r", "events": True})
            by_group = await join(server, {"group_id": gid, "user_id": "g", "events": True})
            await join(server, {"room_id": gid, "user_id": "x"})  # an event for both
            body = {"group_id": gid, "user_id": "a", "text": "hello"}
            message = (await http.post("/v1/chat/Send", json=body)).json()["message"]
            room_frames = await until_message(by_room)
            group_frames = await until_message(by_group)
            # On PostgreSQL a membership event reaches the hub by NOTIFY, so a stream that
            # went live just after a join may still see it: what is asserted is each
            # stream's naming and the joins it must see, in order.
            events = [(f["event"]["type"], f["event"]["user_id"]) for f in room_frames[:-1]]
            assert events[-2:] == [("joined", "g"), ("joined", "x")], events
            for f in room_frames[:-1]:
                assert list(f["event"]) == ["type", "room_id", "user_id", "at"]
                assert f["event"]["room_id"] == gid
            assert group_frames[-2]["event"]["user_id"] == "x"
            for f in group_frames[:-1]:
                assert list(f["event"]) == ["type", "group_id", "user_id", "at"]
                assert f["event"]["group_id"] == gid
            assert room_frames[-1] == {"message": _renamed_back(message)}
            assert group_frames[-1] == {"message": message}
            await http.post("/v1/chat/Delete", json={"room_id": gid})
            room_end, room_code = await closed(by_room)
            group_end, group_code = await closed(by_group)
            assert room_code == group_code == 4404
            assert room_end[-1]["detail"] == "room deleted"
            assert group_end[-1]["detail"] == "group deleted"
            assert group_end[-1]["id"] == "chat.delete" and group_end[-1]["code"] == 404

    run(scenario)


def test_join_replay_and_refusals_in_the_group_edition(server: LiveServer) -> None:
    async def scenario() -> None:
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
            created = (await http.post("/v1/chat/Create", json={"user_ids": ["a"]})).json()
            gid = created["group"]["id"]
            body = {"group_id": gid, "user_id": "a", "text": "before"}
            first = (await http.post("/v1/chat/Send", json=body)).json()["message"]
            body["text"] = "after"
            second = (await http.post("/v1/chat/Send", json=body)).json()["message"]
            ws = await join(server, {"group_id": gid, "user_id": "b", "since": first["id"]})
            assert await frame(ws) == {"message": second}  # replayed, in the group's names
            ws = await join(server, {"group_id": gid, "user_id": "c", "history": 2})
            assert [await frame(ws), await frame(ws)] == [{"message": first}, {"message": second}]

            unknown = str(uuid.uuid4())
            ws = await join(server, {"group_id": unknown, "user_id": "b"}, wait=False)
            frames, code = await closed(ws)
            assert frames == [
                {"id": "chat.join", "code": 404, "detail": "group not found", "status": "Not Found"}
            ]
            assert code == 4404
            ws = await join(server, {"group_id": "", "user_id": "b"}, wait=False)
            frames, code = await closed(ws)
            assert frames[0]["detail"] == "missing group id" and code == 4400

    run(scenario)


def test_ndjson_join_in_the_group_edition(server: LiveServer) -> None:
    with httpx.Client(base_url=server.url, timeout=10) as c:
        gid = new_group(c, "a")
        sent = ok(c, "Send", {"group_id": gid, "user_id": "a", "text": "x"})["message"]
        body = {"group_id": gid, "user_id": "b", "history": 1}
        with c.stream("POST", "/v1/chat/Join", json=body) as r:
            assert r.headers["content-type"] == "application/x-ndjson"
            line = next(r.iter_lines())
        assert json.loads(line) == {"message": sent}
        r = call(c, "Join", {"group_id": str(uuid.uuid4()), "user_id": "b"})
        assert_error(r, 404, "chat.join", "group not found")


# -- the encoding ---------------------------------------------------------------------


def test_fan_out_renames_a_frame_once_for_every_group_stream() -> None:
    """The hub makes one group-edition frame for all group streams (the same object),
    and the room-edition streams get the frame as it was made."""

    async def scenario() -> None:
        hub = Hub()
        subs = [hub.subscribe("t", "r", f"u{i}", True, group=i % 2 == 0) for i in range(6)]
        message = message_frame(message_object("i", "c", "r", "s", "t", "", "x"))
        event = event_frame("joined", "r", "u9", "now")
        hub.publish_message("t", "r", 1, message, "sender")
        hub.publish_event("t", "r", event, "u9")
        batches = [[text for _, text in await sub.next_batch()] for sub in subs]
        groups, rooms = batches[0::2], batches[1::2]
        for i, made in enumerate((message, event)):
            assert all(r[i] is made for r in rooms)
            assert all(g[i] is groups[0][i] for g in groups)
            assert groups[0][i] == made.replace('"room_id":', '"group_id":')

    asyncio.run(scenario())


#: strings made of the pieces of a key, quotes, backslashes and anything else.
hostile = st.lists(
    st.sampled_from(['"', "\\", ":", ",", "{", "}", "room", "_id", "s", "group", '"room_id":'])
    | st.text(max_size=3),
    max_size=12,
).map("".join)


@settings(max_examples=300, deadline=None)
@given(hostile, hostile, hostile, hostile, hostile)
def test_the_rename_touches_keys_only(
    client: str, user: str, subject: str, text: str, rid: str
) -> None:
    """The text rename of ``wire.in_group_edition`` equals decoding, renaming the keys and
    encoding again, whatever the strings hold (quotes, backslashes, ``"room_id":`` ...)."""
    message = message_object("id", client, rid, user, "at", subject, text)
    for encoded, expected in (
        (message_frame(message), {"message": _renamed(message)}),
        (encode({"messages": [message, message]}), {"messages": [_renamed(message)] * 2}),
        (encode({"room": {"id": rid, "name": text}}), {"group": {"id": rid, "name": text}}),
        (encode({"rooms": [{"name": user}]}), {"groups": [{"name": user}]}),
        (event_frame(text, rid, user, subject), None),
    ):
        renamed = in_group_edition(encoded)
        if expected is None:
            decoded = json.loads(encoded)
            expected = {"event": _renamed(decoded["event"])}
        assert json.loads(renamed) == expected
        assert list(json.loads(renamed)) == list(expected)


def _renamed(obj: dict[str, Any]) -> dict[str, Any]:
    return {("group_id" if k == "room_id" else k): v for k, v in obj.items()}


def _renamed_back(obj: dict[str, Any]) -> dict[str, Any]:
    return {("room_id" if k == "group_id" else k): v for k, v in obj.items()}
