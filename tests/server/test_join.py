"""The Join stream over WebSocket and NDJSON: live frames, replay, endings, events."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from websockets.frames import Frame, Opcode

from chatctl.schema import Limits
from tests.server.conftest import LiveServer
from tests.server.helpers import call, closed, frame, join, open_ws, run, until
from tests.server.test_unary import assert_message

KICK_FRAME = {"id": "chat.kick", "code": 403, "status": "Forbidden"}


def client(srv: LiveServer, token: str | None = None) -> httpx.AsyncClient:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.AsyncClient(base_url=srv.url, headers=headers, timeout=10)


async def new_room(http: httpx.AsyncClient, *users: str, private: bool = False) -> str:
    body = {"name": "r", "user_ids": list(users), "private": private}
    room_id: str = (await call(http, "Create", body))["room"]["id"]
    return room_id


async def send(http: httpx.AsyncClient, room_id: str, user: str, text: str) -> dict[str, Any]:
    body = {"room_id": room_id, "user_id": user, "text": text}
    message: dict[str, Any] = (await call(http, "Send", body))["message"]
    return message


def test_ws_join_streams_others_messages_not_own(server: LiveServer) -> None:
    async def scenario() -> None:
        async with client(server) as http:
            room_id = await new_room(http, "user-1")
            ws = await join(server, {"room_id": room_id, "user_id": "user-2"})
            room = (await call(http, "List", {"user_id": "user-2"}))["rooms"]
            assert [r["id"] for r in room] == [room_id]  # Join added user-2, as on m3o
            sent = [await send(http, room_id, "user-1", f"m{i}") for i in range(3)]
            # the server answers the client's pings
            pong = await ws.ping()
            await asyncio.wait_for(pong, 5)
            await send(http, room_id, "user-2", "my own")  # not echoed
            sent.append(await send(http, room_id, "user-1", "after"))
            for expected in sent:
                got = await frame(ws)
                assert list(got) == ["message"]
                assert_message(got["message"])
                assert got["message"] == expected
            await ws.close()
            await until(lambda: server.app.state.hub.streams == 0)

    run(scenario)


def test_ws_token_in_header_or_subprotocol(live_server: Callable[..., LiveServer]) -> None:
    srv = live_server(tokens=frozenset({"tok-1"}))

    async def scenario() -> None:
        async with client(srv, "tok-1") as http:
            room_id = await new_room(http, "a")
            by_header = await join(
                srv, {"room_id": room_id, "user_id": "b"}, headers={"Authorization": "Bearer tok-1"}
            )
            by_protocol = await join(
                srv, {"room_id": room_id, "user_id": "c"}, subprotocols=["tok-1"]
            )
            assert by_protocol.subprotocol == "tok-1"
            message = await send(http, room_id, "a", "hi")
            assert (await frame(by_header))["message"] == message
            assert (await frame(by_protocol))["message"] == message
            for ws in (by_header, by_protocol):
                await ws.close()
            anonymous = await join(srv, {"room_id": room_id, "user_id": "d"}, wait=False)
            frames, code = await closed(anonymous)
            unauthorized = {
                "id": "v1", "code": 401, "detail": "Unauthorized", "status": "Unauthorized"
            }
            assert frames == [unauthorized]
            assert code == 4401
            # A wrong token offered as the subprotocol (a browser's way) still gets one
            # back, or a browser fails the handshake and its page sees only 1006: then
            # the same 401 frame and 4401, which tell a page "wrong token" from "down".
            wrong = await join(
                srv, {"room_id": room_id, "user_id": "e"}, subprotocols=["nope", "x"], wait=False
            )
            assert wrong.subprotocol == "nope"
            assert await closed(wrong) == ([unauthorized], 4401)

    run(scenario)


@pytest.mark.parametrize(
    ("request_text", "code", "detail"),
    [
        ('{"room_id": "nope", "user_id": "u"}', 404, "room not found"),
        ('{"user_id": "u"}', 400, "missing room id"),
        ('{"room_id": "nope"}', 400, "missing user id"),
        ("{not json", 400, None),
        ("[1]", 400, None),
    ],
)
def test_ws_join_errors(
    server: LiveServer, request_text: str, code: int, detail: str | None
) -> None:
    async def scenario() -> None:
        ws = await open_ws(server, "/v1/chat/join")
        await ws.send(request_text)
        frames, close_code = await closed(ws)
        assert close_code == 4000 + code
        assert len(frames) == 1 and frames[0]["code"] == code
        assert list(frames[0]) == ["id", "code", "detail", "status"]
        if detail:
            assert frames[0]["detail"] == detail

    run(scenario)


def test_ws_unknown_path(server: LiveServer) -> None:
    async def scenario() -> None:
        ws = await open_ws(server, "/v1/chat/Send")
        frames, code = await closed(ws)
        assert frames[0]["id"] == "v1" and frames[0]["detail"] == "No such API"
        assert code == 4404

    run(scenario)


def test_ws_join_without_a_request_is_closed_4408(
    live_server: Callable[..., LiveServer],
) -> None:
    srv = live_server(join_request_timeout=0.2)

    async def scenario() -> None:
        ws = await open_ws(srv, "/v1/chat/Join")
        started = time.monotonic()
        frames, code = await closed(ws)  # sends nothing: the server must not wait forever
        assert code == 4408
        assert frames[0]["code"] == 408 and "first frame" in frames[0]["detail"]
        # asyncio may run a timer up to its clock's resolution early: 0.2 s, give or take.
        assert 0.19 <= time.monotonic() - started < 5
        assert srv.app.state.hub.streams == 0

    run(scenario)


def test_ws_survives_ping_cycles(live_server: Callable[..., LiveServer]) -> None:
    srv = live_server(ping_interval=0.05, ping_timeout=0.3)

    async def scenario() -> None:
        async with client(srv) as http:
            room_id = await new_room(http, "a")
            ws = await join(srv, {"room_id": room_id, "user_id": "b"}, ping_interval=None)
            pings = 0
            original = ws.protocol.events_received

            def counting() -> list[Frame]:
                nonlocal pings
                events = original()
                pings += sum(1 for e in events if isinstance(e, Frame) and e.opcode is Opcode.PING)
                return events

            ws.protocol.events_received = counting  # type: ignore[method-assign]
            # Several ping intervals and more than one pong timeout pass: time passing is
            # the point here, not a race being hidden.
            await until(lambda: pings >= 6, timeout=5)
            message = await send(http, room_id, "a", "still there?")
            assert (await frame(ws))["message"] == message

    run(scenario)


def test_since_replays_with_no_gap_and_no_duplicate(server: LiveServer) -> None:
    total = 150

    async def scenario() -> None:
        async with client(server) as http:
            room_id = await new_room(http, "a")
            sent: list[dict[str, Any]] = []
            halfway = asyncio.Event()

            async def sender() -> None:
                for i in range(total):
                    sent.append(await send(http, room_id, "a", f"m{i}"))
                    if i == 60:
                        halfway.set()

            task = asyncio.create_task(sender())
            await halfway.wait()
            since = sent[10]["id"]
            ws = await join(
                server, {"room_id": room_id, "user_id": "b", "since": since}, wait=False
            )
            got: list[dict[str, Any]] = []
            while len(got) < total - 11:
                got.append((await frame(ws))["message"])
            await task
            assert [m["id"] for m in got] == [m["id"] for m in sent[11:]]
            # and nothing more is pending: the next frame is the next message
            last = await send(http, room_id, "a", "last")
            assert (await frame(ws))["message"] == last

    run(scenario)


def test_history_n_replays_the_last_n(server: LiveServer) -> None:
    async def scenario() -> None:
        async with client(server) as http:
            room_id = await new_room(http, "a", "b")
            sent = [await send(http, room_id, u, f"m{i}") for i, u in enumerate("abab")]
            ws = await join(server, {"room_id": room_id, "user_id": "b", "history": 3})
            replayed = [(await frame(ws))["message"] for _ in range(3)]
            assert replayed == sent[1:]  # the joiner's own included: it is history
            live = await send(http, room_id, "a", "live")
            assert (await frame(ws))["message"] == live

    run(scenario)


def test_since_that_is_not_a_uuid_is_400(server: LiveServer) -> None:
    async def scenario() -> None:
        async with client(server) as http:
            room_id = await new_room(http, "a")
            ws = await join(
                server,
                {
                    "room_id": room_id,
                    "user_id": "b",
                    "since": "not-a-message-id",
                },
                wait=False,
            )
            frames, code = await closed(ws)
            assert code == 4400 and frames[0]["id"] == "chat.join"

    run(scenario)


def test_ndjson_join(server: LiveServer) -> None:
    async def scenario() -> None:
        async with client(server) as http:
            room_id = await new_room(http, "a")
            before = server.app.state.hub.streams
            body = {"room_id": room_id, "user_id": "b", "events": True}
            async with http.stream("POST", "/v1/chat/join", json=body) as r:
                assert r.status_code == 200
                assert r.headers["content-type"].startswith("application/x-ndjson")
                await until(lambda: server.app.state.hub.streams > before)
                lines = r.aiter_lines()
                first = await send(http, room_id, "a", "one")
                assert json.loads(await anext(lines)) == {"message": first}
                second = await send(http, room_id, "a", "two")
                assert json.loads(await anext(lines)) == {"message": second}
                await call(http, "Kick", {"room_id": room_id, "user_id": "b"})
                final = json.loads(await anext(lines))
                assert {k: final[k] for k in KICK_FRAME} == KICK_FRAME
                with pytest.raises(StopAsyncIteration):
                    await anext(lines)

    run(scenario)


def test_ndjson_join_errors_are_plain_errors(server: LiveServer) -> None:
    with httpx.Client(base_url=server.url) as http:
        r = http.post("/v1/chat/Join", json={"room_id": "nope", "user_id": "u"})
        assert r.status_code == 404
        assert r.json() == {
            "id": "chat.join",
            "code": 404,
            "detail": "room not found",
            "status": "Not Found",
        }


@pytest.mark.parametrize("how", ["Kick", "Leave"])
def test_kick_and_leave_end_streams_at_once(server: LiveServer, how: str) -> None:
    async def scenario() -> None:
        async with client(server) as http:
            room_id = await new_room(http, "a")
            ws = await join(server, {"room_id": room_id, "user_id": "b"})
            other = await join(server, {"room_id": room_id, "user_id": "c"})
            started = time.monotonic()
            room = (await call(http, how, {"room_id": room_id, "user_id": "b"}))["room"]
            assert room["user_ids"] == ["a", "c"]
            frames, code = await closed(ws)
            elapsed = time.monotonic() - started
            assert code == 4403
            assert len(frames) == 1
            assert frames[0]["id"] == f"chat.{how.lower()}" and frames[0]["code"] == 403
            assert frames[0]["status"] == "Forbidden"
            # At once: with the change, not at a ping (8 s) or the next message; the bound
            # leaves room for a machine running four test workers on two cores.
            assert elapsed < 0.5, elapsed
            # the others keep streaming
            message = await send(http, room_id, "a", "still here")
            assert (await frame(other))["message"] == message

    run(scenario)


def test_delete_ends_every_stream(server: LiveServer) -> None:
    async def scenario() -> None:
        async with client(server) as http:
            room_id = await new_room(http, "a")
            streams = [await join(server, {"room_id": room_id, "user_id": u}) for u in "bcd"]
            await call(http, "Delete", {"room_id": room_id})
            for ws in streams:
                frames, code = await closed(ws)
                assert code == 4404
                assert frames == [
                    {
                        "id": "chat.delete",
                        "code": 404,
                        "detail": "room deleted",
                        "status": "Not Found",
                    }
                ]

    run(scenario)


def test_kicked_user_cannot_rejoin_until_invited(server: LiveServer) -> None:
    async def scenario() -> None:
        async with client(server) as http:
            for private in (False, True):
                room_id = await new_room(http, "a", "b", private=private)
                await call(http, "Kick", {"room_id": room_id, "user_id": "b"})
                ws = await join(server, {"room_id": room_id, "user_id": "b"}, wait=False)
                frames, code = await closed(ws)
                assert code == 4403 and frames[0]["code"] == 403
                await call(http, "Invite", {"room_id": room_id, "user_id": "b"})
                ws = await join(server, {"room_id": room_id, "user_id": "b"})
                message = await send(http, room_id, "a", "welcome back")
                assert (await frame(ws))["message"] == message
                await ws.close()
            # Leave does not bar: on a public room Join adds the user again.
            room_id = await new_room(http, "a", "b")
            await call(http, "Leave", {"room_id": room_id, "user_id": "b"})
            ws = await join(server, {"room_id": room_id, "user_id": "b"})
            await ws.close()

    run(scenario)


def test_private_rooms(server: LiveServer) -> None:
    async def scenario() -> None:
        async with client(server) as http:
            room_id = await new_room(http, "a", private=True)
            ws = await join(server, {"room_id": room_id, "user_id": "b"}, wait=False)
            frames, code = await closed(ws)
            assert code == 4403 and frames[0]["id"] == "chat.join"
            r = await http.post(
                "/v1/chat/Send", json={"room_id": room_id, "user_id": "b", "text": "x"}
            )
            assert r.status_code == 403 and r.json()["detail"] == "user is not in the room"
            r = await http.post("/v1/chat/History", json={"room_id": room_id})
            assert r.status_code == 403 and r.json()["id"] == "chat.history"
            r = await http.post("/v1/chat/History", json={"room_id": room_id, "user_id": "b"})
            assert r.status_code == 403
            message = await send(http, room_id, "a", "members only")
            history = await call(http, "History", {"room_id": room_id, "user_id": "a"})
            assert history["messages"] == [message]
            await call(http, "Invite", {"room_id": room_id, "user_id": "b"})
            ws = await join(server, {"room_id": room_id, "user_id": "b"})
            message = await send(http, room_id, "a", "hi b")
            assert (await frame(ws))["message"] == message

    run(scenario)


def test_events(server: LiveServer) -> None:
    async def scenario() -> None:
        async with client(server) as http:
            room_id = await new_room(http, "a")
            watcher = await join(server, {"room_id": room_id, "user_id": "w", "events": True})
            plain = await join(server, {"room_id": room_id, "user_id": "p"})
            await call(http, "Invite", {"room_id": room_id, "user_id": "x"})
            joiner = await join(server, {"room_id": room_id, "user_id": "y"})
            await call(http, "Kick", {"room_id": room_id, "user_id": "x"})
            await call(http, "Leave", {"room_id": room_id, "user_id": "y"})
            message = await send(http, room_id, "a", "hello")
            await call(http, "Delete", {"room_id": room_id})
            expected = [
                ("joined", "p"),
                ("invited", "x"),
                ("joined", "y"),
                ("kicked", "x"),
                ("left", "y"),
            ]
            for kind, user in expected:
                got = await frame(watcher)
                assert list(got) == ["event"]
                event = got["event"]
                assert list(event) == ["type", "room_id", "user_id", "at"]
                assert (event["type"], event["user_id"], event["room_id"]) == (kind, user, room_id)
            assert (await frame(watcher)) == {"message": message}
            frames, code = await closed(watcher)
            assert frames[0]["event"]["type"] == "deleted" and code == 4404
            # a stream that did not ask sees messages only
            frames, code = await closed(plain)
            assert frames[0] == {"message": message} and code == 4404
            await closed(joiner)

    run(scenario)


def test_slow_reader_is_closed_4008_without_holding_up_the_room(
    live_server: Callable[..., LiveServer],
) -> None:
    srv = live_server(stream_queue=4, limits=Limits(max_text_chars=200_000))

    async def scenario() -> None:
        async with client(srv) as http:
            room_id = await new_room(http, "a")
            # max_queue=1: the client stops reading from the socket after one frame; a small
            # receive buffer (which also stops the kernel growing it) fills up soon.
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8192)
            sock.connect(("127.0.0.1", int(srv.url.rsplit(":", 1)[1])))
            slow = await join(
                srv,
                {"room_id": room_id, "user_id": "slow"},
                max_queue=1,
                sock=sock,
                compression=None,
            )
            fast = await join(srv, {"room_id": room_id, "user_id": "fast"})
            big = "x" * 150_000
            sent = 0
            while srv.app.state.hub.streams == 2:
                await send(http, room_id, "a", big)
                sent += 1
                assert (await frame(fast, timeout=2))["message"]["text"] == big
                assert sent < 500, "the slow reader was never closed"
            frames, code = await closed(slow, timeout=10)
            assert code == 4008
            assert len(frames) < sent

    run(scenario)


def test_shutdown_closes_streams_1001(live_server: Callable[..., LiveServer]) -> None:
    srv = live_server()

    async def scenario() -> None:
        async with client(srv) as http:
            room_id = await new_room(http, "a")
        ws = await join(srv, {"room_id": room_id, "user_id": "b"})
        srv.server.should_exit = True
        _frames, code = await closed(ws)
        assert code == 1001

    run(scenario)
