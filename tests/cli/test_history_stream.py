"""A History without a limit read as it arrives (chatctl's server sends a long one in
parts): each message decoded once whole, however the body is cut into chunks; a
connection lost part-way picked up after the last message read; anything that is not a
History said so, never printed."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from pytest_httpx import HTTPXMock

from chatctl.client.history import _streamed_items
from chatctl.client.transport import _Retryable
from chatctl.errors import NotAnAPIError
from tests.conftest import Run
from tests.helpers import CHATCTL_HEADERS

URL = "http://chat.test"
ROOM = "d8057208-f81a-4e14-ad7f-c29daa2bb910"


def message(n: int, text: str | None = None) -> dict[str, Any]:
    return {"id": f"01a22c7b-0000-7000-8000-{n:012d}", "client": "c", "room_id": ROOM,
            "user_id": "u", "sent_at": "2026-11-30T00:00:00Z", "subject": "",
            "text": f"m{n}" if text is None else text}  # fmt: skip


def body(messages: list[dict[str, Any]], **dumps: Any) -> bytes:
    return json.dumps({"messages": messages}, ensure_ascii=False, **dumps).encode()


def pieces(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


@pytest.mark.parametrize("size", [1, 3, 7, 64, 100_000])
@pytest.mark.parametrize("dumps", [{"separators": (",", ":")}, {"indent": 2}, {}])
def test_every_message_once_however_the_body_is_cut(size: int, dumps: dict[str, Any]) -> None:
    messages = [message(n) for n in range(20)] + [message(20, 'é ☃ \U0001f600 }],[{ " \\\\')]
    got = list(_streamed_items(pieces(body(messages, **dumps), size), "messages", "x"))
    assert got == messages


def test_items_that_are_not_objects_are_skipped() -> None:
    data = b'{"messages": [1, "two", null, {"id": "a"}, [], {"id": "b"}]}'
    assert list(_streamed_items(pieces(data, 5), "messages", "x")) == [{"id": "a"}, {"id": "b"}]


@pytest.mark.parametrize(
    "data",
    [b"<html>hello</html>", b'{"rooms": []}', b'{"messages": [{"id": 1} {"id": 2}]}', b"\xff\xfe"],
)
def test_what_is_not_a_history_is_said_so(data: bytes) -> None:
    with pytest.raises(NotAnAPIError):
        list(_streamed_items([data], "messages", "x"))


def test_an_answer_cut_short_may_be_picked_up() -> None:
    data = body([message(1), message(2)])
    got = []
    with pytest.raises(_Retryable):
        for item in _streamed_items([data[:-30]], "messages", "x"):
            got.append(item)
    assert got == [message(1)]


class Cut(httpx.SyncByteStream):
    def __init__(self, data: bytes) -> None:
        self.data = data

    def __iter__(self) -> Iterator[bytes]:
        yield self.data
        raise httpx.RemoteProtocolError("peer closed connection without sending complete body")


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CHATCTL_URL", URL)
    monkeypatch.setenv("CHATCTL_USER", "u")


def test_a_dropped_history_is_picked_up_after_the_last_message(
    cli: Run, httpx_mock: HTTPXMock, env: None
) -> None:
    first = body([message(n) for n in range(1, 6)])
    httpx_mock.add_response(json={"rooms": []}, headers=CHATCTL_HEADERS)
    # Three whole messages, then the server is gone; asked again, it sends the rest.
    cut_at = first.index(json.dumps(message(4)).encode()) + 20
    httpx_mock.add_response(stream=Cut(first[:cut_at]), headers=CHATCTL_HEADERS)
    httpx_mock.add_response(content=body([message(4), message(5)]), headers=CHATCTL_HEADERS)
    r = cli("history", ROOM, "-o", "jsonl")
    assert r.code == 0, r.stderr
    assert [json.loads(line)["id"] for line in r.stdout.splitlines()] == [
        message(n)["id"] for n in range(1, 6)
    ]
    _, once, again = httpx_mock.get_requests()
    assert json.loads(once.content) == {"room_id": ROOM, "user_id": "u"}
    assert json.loads(again.content) == {"room_id": ROOM, "user_id": "u", "after": message(3)["id"]}


def test_after_and_before_go_with_the_streamed_call(
    cli: Run, httpx_mock: HTTPXMock, env: None
) -> None:
    httpx_mock.add_response(json={"rooms": []}, headers=CHATCTL_HEADERS)
    httpx_mock.add_response(content=body([message(2)]), headers=CHATCTL_HEADERS)
    a, b = message(1)["id"], message(3)["id"]
    r = cli("history", ROOM, "--after", a, "--before", b, "-o", "id")
    assert r.code == 0, r.stderr
    assert r.stdout.split() == [message(2)["id"]]
    sent = json.loads(httpx_mock.get_requests()[1].content)
    assert sent == {"room_id": ROOM, "user_id": "u", "after": a, "before": b}


@pytest.mark.parametrize(
    ("flags", "answered", "printed"),
    [
        ((), range(1, 6), [4, 5]),  # the latest 2 of what it sent
        (("--after", 1), range(2, 6), [2, 3]),  # the first 2 after the cursor
        (("--before", 5), range(1, 5), [3, 4]),
    ],
    ids=["latest", "after", "before"],
)
def test_a_server_that_pages_but_answers_more_than_the_limit(
    cli: Run,
    httpx_mock: HTTPXMock,
    env: None,
    flags: tuple[Any, ...],
    answered: range,
    printed: list[int],
) -> None:
    """It says it has paging, honours the cursors but not the limit: --limit is still
    what is printed, each message once, and the reading stops."""
    httpx_mock.add_response(json={"rooms": []}, headers=CHATCTL_HEADERS)
    everything = body([message(n) for n in answered])
    httpx_mock.add_response(content=everything, headers=CHATCTL_HEADERS, is_reusable=True)
    args = [message(f)["id"] if isinstance(f, int) else f for f in flags]
    r = cli("history", ROOM, *args, "--limit", "2", "-o", "id")
    assert r.code == 0, r.stderr
    assert r.stdout.split() == [message(n)["id"] for n in printed]
    assert len(httpx_mock.get_requests()) <= 3  # the List, then at most two pages
