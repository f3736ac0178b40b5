"""The exact requests of a batch of Sends (pytest-httpx): bulk Sends to a server that names
``bulk-send`` in ``Chat-Extensions``, each message keyed KEY/n either way; the unanswered
rest sent again from its first line with the same keys; one seed-shaped Send per line to
any other server."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from pytest_httpx import HTTPXMock

from tests.conftest import Run
from tests.helpers import CHATCTL_HEADERS

URL = "http://chat.test"
ROOM = "d8057208-f81a-4e14-ad7f-c29daa2bb910"


@pytest.fixture(autouse=True)
def server(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CHATCTL_URL", URL)
    monkeypatch.setenv("CHATCTL_TOKEN", "s3cret")
    monkeypatch.setenv("CHATCTL_USER", "user-1")


def message(key: str, body: dict[str, Any]) -> dict[str, Any]:
    return {"message": {"id": f"id-{key}", "client": "", "room_id": body["room_id"],
                        "user_id": body["user_id"], "sent_at": "2026-11-30T00:00:00Z",
                        "subject": "", "text": body["text"]}}  # fmt: skip


class Cut(httpx.SyncByteStream):
    """An answer's body that breaks off after some lines (a server killed mid-answer)."""

    def __init__(self, lines: list[bytes]) -> None:
        self.lines = lines

    def __iter__(self) -> Iterator[bytes]:
        yield from self.lines
        raise httpx.RemoteProtocolError("peer closed connection without sending complete body")


@dataclass
class Fake:
    """A chatctl server for the mock transport: answers Sends, unary or bulk, recording
    every message as (its key, its body). ``plan`` shapes the next bulk answers."""

    headers: dict[str, str] = field(default_factory=lambda: dict(CHATCTL_HEADERS))
    sent: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    bulk_requests: list[httpx.Request] = field(default_factory=list)
    plan: list[Callable[[list[bytes], list[bytes]], httpx.Response]] = field(default_factory=list)

    def __call__(self, request: httpx.Request) -> httpx.Response:
        key = request.headers["Idempotency-Key"]
        if request.headers["Content-Type"] == "application/json":
            body = json.loads(request.content)
            self.sent.append((key, body))
            return httpx.Response(200, json=message(key, body), headers=self.headers)
        self.bulk_requests.append(request)
        first = int(request.headers["Chat-First-Line"])
        lines = request.content.splitlines()
        answers = []
        for n, line in enumerate(lines, first):
            body = json.loads(line)
            answers.append(json.dumps(message(f"{key}/{n}", body)).encode() + b"\n")
        if self.plan:
            return self.plan.pop(0)(lines, answers)
        for n, line in enumerate(lines, first):
            self.sent.append((f"{key}/{n}", json.loads(line)))
        return ndjson(answers, self.headers)


def ndjson(answers: list[bytes], headers: dict[str, str]) -> httpx.Response:
    return httpx.Response(
        200, content=b"".join(answers), headers={**headers, "content-type": "application/x-ndjson"}
    )


def texts(n: int) -> str:
    return "".join(f"line {i}\n" for i in range(1, n + 1))


def ndjson_input(n: int) -> str:
    return "".join(
        json.dumps({"room_id": ROOM, "text": f"line {i}"}) + "\n" for i in range(1, n + 1)
    )


def test_a_batch_goes_in_bulk_after_one_send_says_the_server_has_it(
    cli: Run, httpx_mock: HTTPXMock
) -> None:
    fake = Fake()
    httpx_mock.add_callback(fake, is_reusable=True)
    r = cli("send", "-i", "-", "-o", "id", "--batch-key", "import-1", input=ndjson_input(5))
    assert r.code == 0, r.stderr
    # The first alone (nothing known of the server yet), the other four in one bulk Send.
    assert [k for k, _ in fake.sent] == [f"import-1/{n}" for n in range(1, 6)]
    assert all(b == {"room_id": ROOM, "user_id": "user-1", "text": f"line {n}"}
               for n, (_, b) in enumerate(fake.sent, 1))  # fmt: skip
    (bulk,) = fake.bulk_requests
    assert bulk.url == f"{URL}/v1/chat/Send"
    assert bulk.headers["Content-Type"] == "application/x-ndjson"
    assert bulk.headers["Authorization"] == "Bearer s3cret"
    assert bulk.headers["Idempotency-Key"] == "import-1"
    assert bulk.headers["Chat-First-Line"] == "2"
    assert bulk.headers["Chat-On-Error"] == "stop"
    assert bulk.content.endswith(b"\n") and len(bulk.content.splitlines()) == 4
    assert r.stdout.split() == [f"id-import-1/{n}" for n in range(1, 6)]


def test_keep_going_asks_the_server_to_go_on_after_a_refused_line(
    cli: Run, httpx_mock: HTTPXMock
) -> None:
    fake = Fake()
    refusal = json.dumps({"id": "chat.send", "code": 403, "detail": "no", "status": "Forbidden"})

    def refuse_the_second(lines: list[bytes], answers: list[bytes]) -> httpx.Response:
        answers[1] = refusal.encode() + b"\n"
        return ndjson(answers, fake.headers)

    fake.plan.append(refuse_the_second)
    httpx_mock.add_callback(fake, is_reusable=True)
    r = cli("send", "-i", "-", "-o", "id", "--keep-going", input=ndjson_input(4))
    assert r.code == 1
    assert fake.bulk_requests[0].headers["Chat-On-Error"] == "continue"
    assert len(r.stdout.split()) == 3
    assert r.stderr.splitlines() == [
        "error: line 3: no (chat.send, HTTP 403)",
        "error: 1 failed; 3 messages sent",
    ]


def test_a_cut_answer_is_resumed_from_the_first_unanswered_line_with_the_same_keys(
    cli: Run, httpx_mock: HTTPXMock
) -> None:
    fake = Fake()

    def cut_after_two(lines: list[bytes], answers: list[bytes]) -> httpx.Response:
        # The server stored three and was killed while answering the third.
        for n, line in enumerate(lines[:3], 2):
            fake.sent.append((f"k/{n}", json.loads(line)))
        return httpx.Response(
            200,
            stream=Cut(answers[:2]),
            headers={**fake.headers, "content-type": "application/x-ndjson"},
        )

    def unavailable_from_the_second(lines: list[bytes], answers: list[bytes]) -> httpx.Response:
        fake.sent.append(("k/4 again", json.loads(lines[0])))  # a replay on the server
        busy = {"id": "chat.send", "code": 503, "detail": "storage unavailable", "status": ""}
        return ndjson([answers[0], json.dumps(busy).encode() + b"\n"], fake.headers)

    fake.plan += [cut_after_two, unavailable_from_the_second]
    httpx_mock.add_callback(fake, is_reusable=True)
    r = cli("send", "-i", "-", "-o", "id", "--batch-key", "k", input=ndjson_input(8))
    assert r.code == 0, r.stderr
    firsts = [int(b.headers["Chat-First-Line"]) for b in fake.bulk_requests]
    assert firsts == [2, 4, 5]
    assert {b.headers["Idempotency-Key"] for b in fake.bulk_requests} == {"k"}
    assert [len(b.content.splitlines()) for b in fake.bulk_requests] == [7, 5, 4]
    assert r.stdout.split() == [f"id-k/{n}" for n in range(1, 9)]


def test_a_server_that_turns_bulk_down_gets_the_rest_one_by_one(
    cli: Run, httpx_mock: HTTPXMock
) -> None:
    fake = Fake()
    refused = {"id": "v1", "code": 415, "detail": "no", "status": "Unsupported Media Type"}
    fake.plan.append(lambda lines, answers: httpx.Response(415, json=refused, headers=fake.headers))
    httpx_mock.add_callback(fake, is_reusable=True)
    r = cli("send", "-i", "-", "-o", "id", "--batch-key", "b", input=ndjson_input(4))
    assert r.code == 0, r.stderr
    assert [k for k, _ in fake.sent] == ["b/1", "b/2", "b/3", "b/4"]
    assert len(fake.bulk_requests) == 1


def test_a_plain_server_gets_one_seed_shaped_send_per_line(cli: Run, httpx_mock: HTTPXMock) -> None:
    fake = Fake(headers={})  # no Chat-Extensions: not chatctl's server
    httpx_mock.add_callback(fake, is_reusable=True)
    r = cli("send", ROOM, "--lines", "-o", "id", input=texts(30))
    assert r.code == 0, r.stderr
    requests = httpx_mock.get_requests()
    assert len(requests) == 30 and not fake.bulk_requests
    for n, request in enumerate(requests, 1):
        assert request.headers["Content-Type"] == "application/json"
        assert json.loads(request.content) == {
            "room_id": ROOM,
            "user_id": "user-1",
            "text": f"line {n}",
        }
        assert "Chat-First-Line" not in request.headers


def test_streamed_lines_keep_their_numbers_across_requests(cli: Run, httpx_mock: HTTPXMock) -> None:
    fake = Fake()
    httpx_mock.add_callback(fake, is_reusable=True)
    r = cli("send", ROOM, "--lines", "-o", "id", "--batch-key", "s", input=texts(2500))
    assert r.code == 0, r.stderr
    assert [k for k, _ in fake.sent] == [f"s/{n}" for n in range(1, 2501)]
    assert [b["text"] for _, b in fake.sent] == [f"line {n}" for n in range(1, 2501)]
    assert all(len(b.content.splitlines()) <= 1000 for b in fake.bulk_requests)
    assert r.stdout.split() == [f"id-s/{n}" for n in range(1, 2501)]


@pytest.mark.parametrize("key", ["", "x" * 201, "tab\there"])
def test_a_batch_key_must_be_usable(cli: Run, httpx_mock: HTTPXMock, key: str) -> None:
    r = cli("send", ROOM, "--lines", "--batch-key", key, input="a\n")
    assert r.code == 2 and "--batch-key" in r.stderr
    assert httpx_mock.get_requests() == []
