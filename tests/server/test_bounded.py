"""Bounded work per request: a History without a limit streamed from the store in parts,
with other work running between them, and storage failures answered without their cause."""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from chatctl.schema import ENDPOINTS, validate_request
from chatctl.server import rules
from chatctl.server.answers import StreamedAnswer
from chatctl.server.domain import Unavailable
from chatctl.server.hub import Hub
from chatctl.server.rules import ChatService
from chatctl.server.store_sqlite import SQLiteStore
from tests import postgres
from tests.server.conftest import LiveServer
from tests.server.test_unary import assert_error, ok


def req(endpoint: str, **body: object) -> dict[str, Any]:
    return validate_request(ENDPOINTS[endpoint], body)


@pytest.mark.parametrize("backend", postgres.BACKENDS)
def test_history_without_a_limit_is_every_message_read_and_sent_in_parts(
    live_server: Callable[..., LiveServer],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    backend: str,
) -> None:
    monkeypatch.setattr(rules, "HISTORY_CHUNK", 5)
    with postgres.database_for(backend, str(tmp_path / "parts.db")) as db:
        srv = live_server(db=db)
        try:
            _history_in_parts(srv, monkeypatch)
        finally:
            srv.stop()  # before its database is dropped


def _history_in_parts(srv: LiveServer, monkeypatch: pytest.MonkeyPatch) -> None:
    store = srv.app.state.store
    reads = 0
    read = store.read

    async def counted(work: Any) -> Any:
        nonlocal reads
        reads += 1
        return await read(work)

    monkeypatch.setattr(store, "read", counted)
    with httpx.Client(base_url=srv.url) as client:
        room = ok(client, "Create", {"name": "big", "user_ids": ["u"]})["room"]["id"]
        sent = [
            ok(client, "Send", {"room_id": room, "user_id": "u", "text": f"m{n}"})["message"]
            for n in range(23)
        ]
        reads = 0
        r = client.post("/v1/chat/History", json={"room_id": room})
        assert r.status_code == 200 and r.headers["content-type"] == "application/json"
        assert "content-length" not in r.headers  # sent as it was read
        assert r.json() == {"messages": sent}
        assert reads == 5  # 5 + 5 + 5 + 5 + 3, each its own read of the store
        # A page (or a small room) is one body, with its length, as before.
        r = client.post("/v1/chat/History", json={"room_id": room, "limit": 4})
        assert r.headers["content-length"] == str(len(r.content))
        assert r.json() == {"messages": sent[-4:]}
        small = ok(client, "Create", {"name": "small", "user_ids": ["u"]})["room"]["id"]
        ok(client, "Send", {"room_id": small, "user_id": "u", "text": "one"})
        r = client.post("/v1/chat/History", json={"room_id": small})
        assert "content-length" in r.headers and len(r.json()["messages"]) == 1


def test_a_long_history_ends_where_the_room_was_when_asked_and_lets_others_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Messages sent while a History streams are not in it (it ends somewhere); between
    its parts, the event loop runs other tasks, whatever the reader's speed."""
    monkeypatch.setattr(rules, "HISTORY_CHUNK", 10)

    async def scenario() -> tuple[list[str], list[str]]:
        store = SQLiteStore(str(tmp_path / "chat.db"), Hub())
        service = ChatService(store)
        room = json.loads(await service.call("Create", "", req("Create", name="r", user_ids=["u"])))
        room_id = room["room"]["id"]
        for n in range(35):
            await service.send("", req("Send", room_id=room_id, user_id="u", text=f"m{n}"))
        answer = await service.history("", req("History", room_id=room_id))
        assert not isinstance(answer, str)
        events: list[str] = []
        body: list[bytes] = []
        others_sent = asyncio.Event()
        streamed = asyncio.Event()

        async def send(message: Any) -> None:  # a reader that never waits, but once
            if message["type"] == "http.response.body":
                body.append(message.get("body", b""))
                events.append("part")
                if len(body) == 1:
                    await others_sent.wait()  # ... after the first part, while others send

        async def others() -> None:
            for n in range(5):
                await service.send("", req("Send", room_id=room_id, user_id="u", text=f"x{n}"))
            others_sent.set()

        async def ticker() -> None:
            while not streamed.is_set():
                events.append("tick")
                await asyncio.sleep(0)

        tasks = [asyncio.create_task(others()), asyncio.create_task(ticker())]
        await StreamedAnswer(answer, "chat.history")({"type": "http"}, _never, send)
        streamed.set()
        await asyncio.gather(*tasks)
        texts = [m["text"] for m in json.loads(b"".join(body))["messages"]]
        await store.close()
        return texts, events

    texts, events = asyncio.run(scenario())
    assert texts == [f"m{n}" for n in range(35)]
    parts = [n for n, e in enumerate(events) if e == "part"]
    between = [events[a:b] for a, b in itertools.pairwise(parts)]
    assert sum("tick" in gap for gap in between) >= 3, events


async def _never() -> Any:
    raise AssertionError("the answer does not read the request")


def test_storage_failures_answer_503_without_their_cause(
    live_server: Callable[..., LiveServer],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The cause may name internal hosts: it goes to the server's log, not to clients."""
    srv = live_server()
    store = srv.app.state.store
    # PostgreSQL's messages may end in a CONTEXT line: logged on the request's one line.
    cause = "connection to db-7.internal.example:5432 refused\nCONTEXT:  while connecting"

    async def failing(*args: Any, **kwargs: Any) -> Any:
        raise Unavailable(cause)

    with httpx.Client(base_url=srv.url) as client:
        room = ok(client, "Create", {"name": "r", "user_ids": ["u"]})["room"]["id"]
        monkeypatch.setattr(store, "read", failing)
        monkeypatch.setattr(store, "send", failing)
        with caplog.at_level(logging.WARNING, logger="chatctl.server"):
            for endpoint, body in [
                ("History", {"room_id": room}),
                ("List", {}),
                ("Send", {"room_id": room, "user_id": "u", "text": "x"}),
            ]:
                r = client.post(f"/v1/chat/{endpoint}", json=body)
                assert_error(r, 503, f"chat.{endpoint.lower()}")
                assert "storage unavailable" in r.json()["detail"]
                assert "internal" not in r.text and "5432" not in r.text
        logged = [r.getMessage() for r in caplog.records if "storage unavailable" in r.getMessage()]
        assert len(logged) == 3 and all(" ".join(cause.split()) in m for m in logged), logged
        assert not any("\n" in m for m in logged), logged


def test_a_stream_the_storage_fails_is_told_to_join_again_not_to_reuse_a_key(
    live_server: Callable[..., LiveServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A call refused 503 is retried with its Idempotency-Key; a stream has none and is
    resumed: its error frame and close 4503's reason say so (and stay short, for a tail's
    line), on the WebSocket and the NDJSON Join alike."""
    srv = live_server()
    store = srv.app.state.store

    async def failing(*args: Any, **kwargs: Any) -> Any:
        raise Unavailable("database not answering")

    stream_detail = "storage unavailable: join again, resuming with since"
    with httpx.Client(base_url=srv.url, timeout=10) as client:
        room = ok(client, "Create", {"name": "r", "user_ids": ["u"]})["room"]["id"]
        monkeypatch.setattr(store, "write", failing)  # a Join's admission writes
        monkeypatch.setattr(store, "send", failing)
        join = {"room_id": room, "user_id": "u"}
        with connect(f"{srv.ws_url}/v1/chat/Join", open_timeout=10) as ws:
            ws.send(json.dumps(join))
            frame = json.loads(ws.recv(timeout=10))
            with pytest.raises(ConnectionClosed):
                ws.recv(timeout=10)
        assert (frame["code"], frame["detail"]) == (503, stream_detail)
        assert ws.close_code == 4503 and ws.close_reason == stream_detail
        ndjson = client.post("/v1/chat/Join", json=join)
        assert ndjson.json()["detail"] == stream_detail
        sent = client.post("/v1/chat/Send", json=join | {"text": "x"})
    assert sent.json()["detail"] == (
        "storage unavailable: try again (with the same Idempotency-Key, if any)"
    )
