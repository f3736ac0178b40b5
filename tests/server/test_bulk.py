"""Bulk Send (contract part 3): many SendRequests as NDJSON in one request, one answer line
per request line, in order, on both backends; per-line keys; whole-request errors; the
body read a group at a time, answers flushed as each group commits."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from chatctl.server.bulk import BulkSend
from chatctl.server.config import ServerConfig
from chatctl.server.domain import Unavailable
from tests.server.conftest import LiveServer
from tests.server.helpers import join, run
from tests.server.test_unary import assert_error, call, ok

NDJSON = {"Content-Type": "application/x-ndjson"}


def room_of(client: httpx.Client, *users: str, private: bool = False) -> str:
    body = {"name": "bulk", "user_ids": list(users), "private": private}
    return str(ok(client, "Create", body)["room"]["id"])


def ndjson(*requests: Any) -> bytes:
    return b"".join(
        (r if isinstance(r, bytes) else json.dumps(r).encode()) + b"\n" for r in requests
    )


def bulk_send(client: httpx.Client, body: bytes, **headers: str) -> list[dict[str, Any]]:
    hdrs = {**NDJSON, **{k.replace("_", "-"): v for k, v in headers.items()}}
    r = client.post("/v1/chat/Send", content=body, headers=hdrs)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/x-ndjson"
    assert "bulk-send" in r.headers["chat-extensions"]
    assert r.text.endswith("\n") or not r.text
    return [json.loads(line) for line in r.text.splitlines()]


def texts_in(client: httpx.Client, room: str) -> list[str]:
    return [m["text"] for m in ok(client, "History", {"room_id": room})["messages"]]


def test_one_answer_per_line_in_order_each_line_on_its_own(client: httpx.Client) -> None:
    room = room_of(client, "u")
    private = room_of(client, "u", private=True)
    lines = [
        {"room_id": room, "user_id": "u", "text": "one", "subject": "s", "client": "web"},
        b"not json",
        {"room_id": room, "user_id": "u"},  # no text
        {"room_id": room, "user_id": "stranger", "text": "x"},
        {"room_id": "00000000-0000-0000-0000-000000000000", "user_id": "u", "text": "x"},
        {"room_id": private, "user_id": "stranger", "text": "x"},
        b"",  # an empty line is an empty body, as m3o read one: {}
        b"[1, 2]",
        {"room_id": room, "user_id": "u", "text": "two"},
    ]
    answers = bulk_send(client, ndjson(*lines))
    assert len(answers) == len(lines)
    first = answers[0]["message"]
    assert {k: first[k] for k in ("room_id", "user_id", "text", "subject", "client")} == {
        "room_id": room,
        "user_id": "u",
        "text": "one",
        "subject": "s",
        "client": "web",
    }
    errors = [(a["id"], a["code"], a["detail"]) for a in answers[1:-1]]
    assert [e[:2] for e in errors] == [
        ("v1", 400),
        ("chat.send", 400),
        ("chat.send", 400),
        ("chat.send", 404),
        ("chat.send", 403),
        ("chat.send", 400),
        ("chat.send", 400),
    ]
    assert errors[1][2] == "missing text" and errors[2][2] == "user is not in the room"
    assert errors[5][2] == "missing room id"
    # Each is the answer the line would get alone.
    alone = client.post("/v1/chat/Send", content=b"not json")
    assert alone.json() == answers[1]
    assert texts_in(client, room) == ["one", "two"]
    assert list(answers[0]) == ["message"]
    assert list(answers[1]) == ["id", "code", "detail", "status"]


def test_a_line_over_the_body_limit_is_413_and_the_rest_goes_on(
    live_server: Callable[..., LiveServer],
) -> None:
    srv = live_server(limits=dataclass_replace_limits(max_body_bytes=200, max_text_chars=100))
    with httpx.Client(base_url=srv.url) as client:
        room = room_of(client, "u")
        big = {"room_id": room, "user_id": "u", "text": "y" * 400}
        # Sent as one line and in pieces: the long line is never held whole.
        answers = bulk_send(client, ndjson({"room_id": room, "user_id": "u", "text": "a"}, big))
        assert answers[1]["code"] == 413 and answers[1]["id"] == "v1"
        answers = bulk_send(
            client,
            ndjson({"room_id": room, "user_id": "u", "text": "b"})
            + b'{"text": "'
            + b"z" * 1000
            + b'"}\r\n'
            + ndjson({"room_id": room, "user_id": "u", "text": "c"}),
        )
        assert [a.get("code") for a in answers] == [None, 413, None]
        assert texts_in(client, room) == ["a", "b", "c"]


def dataclass_replace_limits(**limits: int) -> Any:
    import dataclasses

    return dataclasses.replace(ServerConfig(db="").limits, **limits)


def test_stop_ends_the_answer_at_the_first_refused_line(client: httpx.Client) -> None:
    room = room_of(client, "u")
    lines = [
        {"room_id": room, "user_id": "u", "text": "one"},
        {"room_id": room, "user_id": "stranger", "text": "refused"},
        {"room_id": room, "user_id": "u", "text": "never"},
    ]
    answers = bulk_send(client, ndjson(*lines), chat_on_error="stop")
    assert [a.get("code") for a in answers] == [None, 400]
    answers = bulk_send(client, ndjson(lines[0], b"{oops", lines[2]), chat_on_error="stop")
    assert [a.get("code") for a in answers] == [None, 400]
    assert texts_in(client, room) == ["one", "one"]


def test_a_resent_batch_stores_each_line_once_and_answers_its_first_answer(
    client: httpx.Client,
) -> None:
    room = room_of(client, "u")
    lines = [{"room_id": room, "user_id": "u", "text": f"m{n}"} for n in range(1, 11)]
    first = bulk_send(client, ndjson(*lines[:6]), idempotency_key="batch-1")
    # The whole batch again (a client that lost the answer): the first six are replays.
    again = bulk_send(client, ndjson(*lines), idempotency_key="batch-1")
    assert again[:6] == first
    # The unanswered rest from line 8 (its numbers kept): 8, 9, 10 answer as before.
    rest = bulk_send(client, ndjson(*lines[7:]), idempotency_key="batch-1", chat_first_line="8")
    assert rest == again[7:]
    assert texts_in(client, room) == [f"m{n}" for n in range(1, 11)]
    # Line n's key is batch-1/n: a unary Send with it is a replay of that line...
    r = client.post("/v1/chat/Send", json=lines[4], headers={"Idempotency-Key": "batch-1/5"})
    assert r.json() == first[4]
    # ...and another request with a line's key is a conflict, for that line only.
    changed = [*lines[:2], {**lines[2], "text": "changed"}, *lines[3:5]]
    answers = bulk_send(client, ndjson(*changed), idempotency_key="batch-1")
    assert [a.get("code") for a in answers] == [None, None, 409, None, None]
    assert answers[2]["id"] == "chat.send"
    # Another batch key is another batch.
    bulk_send(client, ndjson(lines[0]), idempotency_key="batch-2")
    assert texts_in(client, room) == [*(f"m{n}" for n in range(1, 11)), "m1"]


@pytest.mark.parametrize(
    ("endpoint", "headers", "code", "id"),
    [
        ("List", {}, 415, "v1"),
        ("Join", {}, 415, "v1"),
        ("Send", {"Content-Type": "application/x-ndjson; charset=latin-1"}, 415, "v1"),
        ("Send", {"Idempotency-Key": "k" * 201}, 400, "chat.send"),
        ("Send", {"Chat-First-Line": "0"}, 400, "chat.send"),
        ("Send", {"Chat-First-Line": "two"}, 400, "chat.send"),
        ("Send", {"Chat-On-Error": "panic"}, 400, "chat.send"),
    ],
)
def test_errors_of_the_whole_request_are_one_error_object(
    client: httpx.Client, endpoint: str, headers: dict[str, str], code: int, id: str
) -> None:
    room = room_of(client, "u")
    body = ndjson({"room_id": room, "user_id": "u", "text": "never"})
    r = client.post(f"/v1/chat/{endpoint}", content=body, headers={**NDJSON, **headers})
    assert_error(r, code, id)
    assert texts_in(client, room) == []


def test_an_old_client_sending_lines_as_json_gets_a_clean_400(client: httpx.Client) -> None:
    room = room_of(client, "u")
    body = ndjson(*({"room_id": room, "user_id": "u", "text": t} for t in "ab"))
    r = client.post("/v1/chat/Send", content=body, headers={"Content-Type": "application/json"})
    assert_error(r, 400, "v1")
    assert texts_in(client, room) == []
    r = client.post("/v1/chat/Send", content=b"", headers=NDJSON)
    assert r.status_code == 200 and r.content == b""  # no lines, no answers


def test_a_token_server_wants_the_token_first(live_server: Callable[..., LiveServer]) -> None:
    srv = live_server(tokens=frozenset({"t1"}))
    with httpx.Client(base_url=srv.url) as client:
        r = client.post("/v1/chat/Send", content=b"{}\n", headers=NDJSON)
        assert_error(r, 401, "v1")


def test_live_streams_get_the_messages_in_order(server: LiveServer) -> None:
    async def scenario() -> None:
        async with httpx.AsyncClient(base_url=server.url) as http:
            r = await http.post("/v1/chat/Create", json={"name": "b", "user_ids": ["u", "v"]})
            room = r.json()["room"]["id"]
            ws = await join(server, {"room_id": room, "user_id": "v"})
            lines = [{"room_id": room, "user_id": "u", "text": f"m{n}"} for n in range(600)]
            r = await http.post("/v1/chat/Send", content=ndjson(*lines), headers=NDJSON)
            ids = [json.loads(line)["message"]["id"] for line in r.text.splitlines()]
            got = []
            while len(got) < len(lines):
                got.append(json.loads(await asyncio.wait_for(ws.recv(), 10))["message"])
            assert [m["text"] for m in got] == [line["text"] for line in lines]
            assert [m["id"] for m in got] == ids

    run(scenario)


def test_answers_arrive_as_groups_commit_while_the_body_still_comes(server: LiveServer) -> None:
    """A client that sends a line and waits for its answer before the next gets it: the
    answer of a group is written before the server reads on."""

    async def scenario() -> None:
        host, port = server.url.removeprefix("http://").split(":")
        async with httpx.AsyncClient(base_url=server.url) as http:
            r = await http.post("/v1/chat/Create", json={"name": "b", "user_ids": ["u"]})
            room = r.json()["room"]["id"]
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(
            b"POST /v1/chat/Send HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-ndjson\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
        )
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        assert head.startswith(b"HTTP/1.1 200"), head
        for n in range(3):
            line = ndjson({"room_id": room, "user_id": "u", "text": f"m{n}"})
            writer.write(b"%x\r\n%s\r\n" % (len(line), line))
            size = int((await asyncio.wait_for(reader.readuntil(b"\r\n"), 10)).strip(), 16)
            answer = json.loads((await reader.readexactly(size + 2))[:-2])
            assert answer["message"]["text"] == f"m{n}"
        writer.write(b"0\r\n\r\n")
        assert (await asyncio.wait_for(reader.readuntil(b"0\r\n\r\n"), 10)) == b"0\r\n\r\n"
        writer.close()

    run(scenario)


# -- the server on its own: groups, read-ahead, storage failures ------------------------


class Service:
    """ChatService's send_many as a bulk Send sees it, holding each group until let go."""

    def __init__(self, fail_on: int | None = None) -> None:
        self.groups: list[int] = []
        self.go = asyncio.Event()
        self.fail_on = fail_on

    async def send_many(
        self,
        tenant: str,
        requests: list[tuple[dict[str, Any], str | None]],
        *,
        stop: bool,
        actor: Any = None,
    ) -> list[str]:
        self.groups.append(len(requests))
        if len(self.groups) == self.fail_on:
            raise Unavailable("disk full")
        await self.go.wait()
        return [json.dumps({"message": {"text": r["text"], "key": k}}) for r, k in requests]


def test_the_body_is_read_a_group_ahead_at_most_and_answered_in_groups() -> None:
    """However much the client has sent, the server holds at most one group and what
    arrived with it: a receive() that always has more is called only when the lines it
    gave are all stored and answered."""

    async def scenario() -> tuple[list[int], list[int], list[bytes]]:
        service = Service()
        service.go.set()
        config = ServerConfig(db="")
        answer = BulkSend(service, config, "", "k", 1, False, group_lines=4)  # type: ignore[arg-type]
        line = json.dumps({"room_id": "r", "user_id": "u", "text": "t"}).encode() + b"\n"
        received = 0
        ahead: list[int] = []  # lines received but not yet answered, at each receive

        async def receive() -> dict[str, Any]:
            nonlocal received
            ahead.append(received - answered)
            received += 6
            return {"type": "http.request", "body": line * 6, "more_body": received < 42}

        sent: list[bytes] = []
        answered = 0

        async def send(message: Any) -> None:
            nonlocal answered
            if message["type"] == "http.response.body":
                sent.append(message["body"])
                answered += message["body"].count(b"\n")

        await answer({"type": "http"}, receive, send)
        return ahead, service.groups, sent

    ahead, groups, sent = asyncio.run(scenario())
    assert ahead == [0] * 7  # nothing read before the lines read so far were answered
    assert groups == [4, 2] * 7
    answers = [json.loads(line) for part in sent for line in part.splitlines()]
    assert [a["message"]["key"] for a in answers] == [f"k/{n}" for n in range(1, 43)]
    assert sent[-1] == b""


def test_a_storage_failure_answers_503_for_its_group_and_ends_the_answer() -> None:
    async def scenario() -> list[dict[str, Any]]:
        service = Service(fail_on=2)
        service.go.set()
        answer = BulkSend(service, ServerConfig(db=""), "", None, 1, False, group_lines=3)  # type: ignore[arg-type]
        lines = [json.dumps({"room_id": "r", "user_id": "u", "text": f"{n}"}) for n in range(9)]
        lines[4] = "oops"
        body = ("\n".join(lines) + "\n").encode()
        done = False

        async def receive() -> dict[str, Any]:
            nonlocal done
            if done:
                raise AssertionError("read on after the failure")
            done = True
            return {"type": "http.request", "body": body, "more_body": False}

        out: list[bytes] = []

        async def send(message: Any) -> None:
            if message["type"] == "http.response.body":
                out.append(message["body"])

        await answer({"type": "http"}, receive, send)
        return [json.loads(line) for part in out for line in part.splitlines()]

    answers = asyncio.run(scenario())
    assert [a.get("code") for a in answers] == [None, None, None, 503, 400, 503]
    assert "disk" not in json.dumps(answers)


def test_rate_limits_pace_the_batch_per_message() -> None:
    """The seam for per-token limits: asked before each group with its count of lines."""

    async def scenario() -> list[int]:
        service = Service()
        service.go.set()
        asked: list[int] = []
        waits = iter([0.01, 0.0, 0.0, 0.0])

        def pace(count: int) -> float:
            asked.append(count)
            return next(waits, 0.0)

        answer = BulkSend(service, ServerConfig(db=""), "", None, 1, False, pace, group_lines=5)  # type: ignore[arg-type]
        line = json.dumps({"room_id": "r", "user_id": "u", "text": "t"}).encode() + b"\n"

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": line * 7, "more_body": False}

        async def send(message: Any) -> None:
            pass

        await answer({"type": "http"}, receive, send)
        return asked

    assert asyncio.run(scenario()) == [5, 5, 2]


def test_each_line_is_answered_in_its_own_edition(client: httpx.Client) -> None:
    """A line naming ``group_id`` (m3o's final edition) is answered as a Send alone in that
    edition would be: its message's ``group_id``, its refusals in the group's words."""
    room = room_of(client, "u")
    nowhere = "00000000-0000-0000-0000-000000000000"
    answers = bulk_send(
        client,
        ndjson(
            {"group_id": room, "user_id": "u", "text": "in the group edition"},
            {"room_id": room, "user_id": "u", "text": "in the seed's"},
            {"group_id": nowhere, "user_id": "u", "text": "x"},
            {"group_id": room, "user_id": "stranger", "text": "x"},
        ),
    )
    assert answers[0]["message"]["group_id"] == room and "room_id" not in answers[0]["message"]
    assert answers[1]["message"]["room_id"] == room and "group_id" not in answers[1]["message"]
    assert answers[2]["detail"] == "group not found"
    assert answers[3]["detail"] == "user is not in the group"
    alone = client.post("/v1/chat/Send", json={"group_id": nowhere, "user_id": "u", "text": "x"})
    assert alone.json() == answers[2]


def test_a_bulk_send_held_back_by_its_rate_limit_is_not_cut_as_a_slow_body(
    live_server: Callable[..., LiveServer],
) -> None:
    """While the rate limit holds a bulk Send back, the server reads no more of its body
    (a group ahead, then uvicorn's 64 KiB buffer) and the client waits on it: that time is
    the server's, not a slow client's, so the body floor (here 0.5 s, and 100 MB/s) does not
    cut the request."""
    srv = live_server(
        tokens=frozenset({"t1"}),
        rate_limit=1000.0,
        rate_burst=100,
        body_timeout=0.5,
        body_min_rate=100_000_000.0,
    )
    texts = [f"{n:04d} " + "x" * 400 for n in range(2000)]  # 0.9 MB, paced over 1.9 s
    with httpx.Client(base_url=srv.url, headers={"Authorization": "Bearer t1"}, timeout=30) as c:
        room = room_of(c, "u")
        body = ndjson(*({"room_id": room, "user_id": "u", "text": t} for t in texts))
        lines = bulk_send(c, body)
        assert [line["message"]["text"] for line in lines] == texts
        while (r := call(c, "History", {"room_id": room})).status_code == 429:
            time.sleep(float(r.headers["Retry-After"]))  # the bucket refills, as told
        assert [m["text"] for m in r.json()["messages"]] == texts
