"""JoinRooms (``join-rooms``): many rooms on one stream, over WebSocket and NDJSON: one
stream under the token's cap, each room announced and replayed, a room's end its own,
refusals of the whole request, a slow reader cut off once."""

from __future__ import annotations

import json
import socket
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from chatctl.schema import Limits
from chatctl.wire import NIL_UUID
from tests.server.conftest import LiveServer, alice_revocable
from tests.server.helpers import call, closed, frame, open_ws, run, until


def client(srv: LiveServer) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=srv.url, timeout=10)


async def rooms(http: httpx.AsyncClient, n: int, *users: str, private: bool = False) -> list[str]:
    made = []
    for i in range(n):
        body = {"name": f"r{i}", "user_ids": list(users), "private": private}
        made.append((await call(http, "Create", body))["room"]["id"])
    return made


async def send(http: httpx.AsyncClient, room_id: str, text: str, user: str = "a") -> Any:
    body = {"room_id": room_id, "user_id": user, "text": text}
    return (await call(http, "Send", body))["message"]


async def join_rooms(srv: LiveServer, body: dict[str, Any], **kw: Any) -> Any:
    ws = await open_ws(srv, "/v1/chat/JoinRooms", **kw)
    await ws.send(json.dumps(body))
    return ws


def test_many_rooms_are_one_stream_under_the_tokens_cap(
    live_server: Callable[..., LiveServer],
) -> None:
    """Three rooms, one stream (the hub counts one; a second stream is over a cap of
    one): each announced with its name, replayed after its own cursor, then live."""
    srv = live_server(max_streams_per_token=1)

    async def scenario() -> None:
        async with client(srv) as http:
            ids = await rooms(http, 3, "a", "b")
            old = await send(http, ids[1], "before")
            ws = await join_rooms(
                srv, {"user_id": "b", "room_ids": ids, "since_ids": [NIL_UUID, old["id"], NIL_UUID]}
            )
            added = [(await frame(ws))["room_added"] for _ in ids]
            assert [(r["room_id"], r["name"]) for r in added] == [
                (i, f"r{n}") for n, i in enumerate(ids)
            ]
            assert srv.app.state.hub.streams == 1
            over = await join_rooms(srv, {"user_id": "b", "all": True})
            frames, code = await closed(over)
            assert code == 4429 and frames[0]["code"] == 429
            sent = [await send(http, room, f"to {n}") for n, room in enumerate(ids)]
            assert [(await frame(ws))["message"] for _ in ids] == sent
            await ws.close()
            await until(lambda: srv.app.state.hub.streams == 0)

    run(scenario)


@pytest.mark.parametrize(
    ("body", "detail"),
    [
        ({"user_id": "b"}, "missing room ids: give room_ids, or all"),
        ({"room_ids": ["x"]}, "missing user id"),  # an admin token names the user
        (
            {"user_id": "b", "room_ids": ["x", "y"], "since_ids": [NIL_UUID]},
            "since_ids must hold one cursor for each room of room_ids, in its order",
        ),
    ],
)
def test_a_request_that_cannot_be_followed_is_refused_as_a_whole(
    server: LiveServer, body: dict[str, Any], detail: str
) -> None:
    async def scenario() -> None:
        ws = await join_rooms(server, body)
        frames, code = await closed(ws)
        assert code == 4400
        assert frames == [
            {"id": "chat.joinrooms", "code": 400, "detail": detail, "status": "Bad Request"}
        ]

    run(scenario)


def test_a_room_refused_or_ended_is_said_and_the_others_go_on(server: LiveServer) -> None:
    async def scenario() -> None:
        async with client(server) as http:
            public, gone = await rooms(http, 2, "a", "b")
            (private,) = await rooms(http, 1, "a", private=True)
            ws = await join_rooms(
                server, {"user_id": "b", "room_ids": [public, private, gone, "nope"]}
            )
            first = [await frame(ws) for _ in range(4)]
            assert first[:2] == [
                {
                    "room_ended": {
                        "room_id": private,
                        "code": 4403,
                        "detail": "private room: the user must be invited first",
                    }
                },
                {"room_ended": {"room_id": "nope", "code": 4404, "detail": "room not found"}},
            ]
            assert [f["room_added"]["room_id"] for f in first[2:]] == [public, gone]
            await call(http, "Delete", {"room_id": gone})
            ended = await frame(ws)
            assert ended["room_ended"]["room_id"] == gone and ended["room_ended"]["code"] == 4404
            message = await send(http, public, "still here")
            assert await frame(ws) == {"message": message}
            await call(http, "Kick", {"room_id": public, "user_id": "b"})
            assert (await frame(ws))["room_ended"]["code"] == 4403
            frames, code = await closed(ws)  # no room left, and no `all`
            assert (frames, code) == ([], 1000)

    run(scenario)


def test_a_create_lets_its_members_every_room_streams_follow_it_without_an_event(
    server: LiveServer,
) -> None:
    """A room created with two users whose ``all`` streams (with events) are open: each
    stream announces it as new, then its message; neither gets an event of the Create
    (the first member's stream is tapped before the second's note is delivered)."""
    carol, dave = (f"u-{uuid.uuid4()}" for _ in range(2))

    async def scenario() -> None:
        async with client(server) as http:
            (first,) = await rooms(http, 1, carol, dave)
            streams = [
                await join_rooms(server, {"user_id": user, "all": True, "events": True})
                for user in (carol, dave)
            ]
            for ws in streams:  # admitted: the room they were in is announced
                assert (await frame(ws))["room_added"]["room_id"] == first
            body = {"name": "new", "user_ids": [carol, dave, "a"]}
            new = (await call(http, "Create", body))["room"]["id"]
            message = await send(http, new, "hello")
            for ws in streams:
                added = (await frame(ws))["room_added"]
                assert (added["room_id"], added["new"]) == (new, True)
                assert await frame(ws) == {"message": message}
                await ws.close()

    run(scenario)


def test_ndjson_join_rooms(server: LiveServer) -> None:
    async def scenario() -> None:
        async with client(server) as http:
            user = f"b-{uuid.uuid4().hex}"  # in no room of the other tests on this server
            ids = await rooms(http, 2, "a", user)
            body = {"user_id": user, "all": True}
            async with http.stream("POST", "/v1/chat/JoinRooms", json=body) as r:
                assert r.status_code == 200
                lines = r.aiter_lines()
                added = [json.loads(await anext(lines))["room_added"] for _ in ids]
                assert sorted(a["room_id"] for a in added) == sorted(ids)
                message = await send(http, ids[1], "one")
                assert json.loads(await anext(lines)) == {"message": message}
                (new,) = await rooms(http, 1, "a", private=True)
                await call(http, "Invite", {"room_id": new, "user_id": user})
                news = json.loads(await anext(lines))["room_added"]
                assert (news["room_id"], news["new"]) == (new, True)
                message = await send(http, new, "welcome")
                assert json.loads(await anext(lines)) == {"message": message}

    run(scenario)


def test_a_slow_reader_of_many_rooms_is_cut_off_once_with_4008(
    live_server: Callable[..., LiveServer],
) -> None:
    srv = live_server(stream_queue=4, limits=Limits(max_text_chars=200_000))

    async def scenario() -> None:
        async with client(srv) as http:
            ids = await rooms(http, 3, "a", "slow")
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8192)
            sock.connect(("127.0.0.1", int(srv.url.rsplit(":", 1)[1])))
            slow = await join_rooms(
                srv, {"user_id": "slow", "all": True}, max_queue=1, sock=sock, compression=None
            )
            await until(lambda: srv.app.state.hub.streams == 1)
            big = "x" * 150_000
            sent = 0
            while srv.app.state.hub.streams == 1:
                await send(http, ids[sent % 3], big)
                sent += 1
                assert sent < 500, "the slow reader was never cut off"
            frames, code = await closed(slow, timeout=10)
            assert code == 4008
            assert len([f for f in frames if "message" in f]) < sent

    run(scenario)


def test_a_user_tokens_stream_is_its_users_and_ends_when_revoked(tmp_path: Path) -> None:
    """A user token's JoinRooms acts as its user (another user_id: 403), follows the rooms
    that user is in, and is ended with 4401 when the token is revoked."""
    with alice_revocable(tmp_path) as (srv, revoke):
        admin = {"Authorization": "Bearer tok-admin-91"}
        with httpx.Client(base_url=srv.url, headers=admin) as http:
            mine = http.post("/v1/chat/Create", json={"name": "mine", "user_ids": ["alice"]})
            http.post("/v1/chat/Create", json={"name": "not mine", "user_ids": ["bob"]})
        alice = {"Authorization": "Bearer tok-alice-3c"}
        with connect(f"{srv.ws_url}/v1/chat/JoinRooms", additional_headers=alice) as ws:
            ws.send(json.dumps({"user_id": "bob", "all": True}))
            with pytest.raises(ConnectionClosed) as refused:
                ws.recv(timeout=10)
                ws.recv(timeout=10)
            assert refused.value.rcvd is not None and refused.value.rcvd.code == 4403
        with connect(f"{srv.ws_url}/v1/chat/JoinRooms", additional_headers=alice) as ws:
            ws.send(json.dumps({"all": True}))
            added = json.loads(ws.recv(timeout=10))["room_added"]
            assert (added["room_id"], added["name"]) == (mine.json()["room"]["id"], "mine")
            revoke()
            with pytest.raises(ConnectionClosed) as revoked:
                ws.recv(timeout=10)
                ws.recv(timeout=10)
            assert revoked.value.rcvd is not None and revoked.value.rcvd.code == 4401
        assert srv.app.state.hub.streams == 0


def test_a_group_edition_server_names_groups_in_every_frame(
    live_server: Callable[..., LiveServer],
) -> None:
    """On a server of m3o's final edition the stream's frames say group_id, its own too."""
    srv = live_server(m3o_edition="group")

    async def scenario() -> None:
        async with client(srv) as http:
            r = await http.post("/v1/chat/Create", json={"name": "g", "user_ids": ["a", "b"]})
            gid = r.json()["group"]["id"]
            ws = await join_rooms(srv, {"user_id": "b", "all": True})
            added = (await frame(ws))["room_added"]
            assert (added["group_id"], added["name"]) == (gid, "g") and "room_id" not in added
            body = {"group_id": gid, "user_id": "a", "text": "hi"}
            sent = (await http.post("/v1/chat/Send", json=body)).json()["message"]
            assert await frame(ws) == {"message": sent} and sent["group_id"] == gid
            await http.post("/v1/chat/Kick", json={"group_id": gid, "user_id": "b"})
            assert (await frame(ws))["room_ended"]["group_id"] == gid
            await ws.close()

    run(scenario)
