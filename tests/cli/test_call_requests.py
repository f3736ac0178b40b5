"""``chatctl call ENDPOINT [JSON | -]``, request by request (pytest-httpx): what it sends
goes through the one client (the acting user, an Idempotency-Key for a change, the
extension gate), and what it refuses sends nothing. (Against the real server:
tests/e2e/test_call.py; a declared endpoint reached by it: tests/server/test_declarations.py.)
"""

from __future__ import annotations

import pytest
from pytest_httpx import HTTPXMock

from tests.cli.test_requests import MESSAGE, ROOM, URL
from tests.cli.test_whoami_requests import answer, ours, sent
from tests.conftest import Run


@pytest.fixture(autouse=True)
def server(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CHATCTL_URL", URL)
    monkeypatch.setenv("CHATCTL_TOKEN", "s3cret")
    monkeypatch.setenv("LOGNAME", "login-1")


def test_call_whoami_against_a_plain_server_sends_no_whoami_and_exits_2(
    cli: Run, httpx_mock: HTTPXMock
) -> None:
    answer(httpx_mock, "List", {"rooms": []})  # the one read that asks what it is
    r = cli("call", "whoami")
    assert (r.code, r.stdout) == (2, "")
    assert r.stderr.splitlines()[0] == f"error: {URL} does not support whoami (Whoami request)"
    assert sent(httpx_mock) == [("List", {})]


def test_call_send_binds_the_user_and_carries_an_idempotency_key(
    cli: Run, httpx_mock: HTTPXMock
) -> None:
    ours(httpx_mock, "Send", {"message": MESSAGE})
    r = cli(
        "call",
        "Send",
        "-",
        "--user",
        "alice",
        "-o",
        "json",
        input=f'{{"room_id": "{ROOM}", "text": "hi"}}',
    )
    assert r.code == 0, r.stderr
    assert sent(httpx_mock) == [("Send", {"room_id": ROOM, "text": "hi", "user_id": "alice"})]
    assert len(httpx_mock.get_requests()[-1].headers["Idempotency-Key"]) == 32


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (("call", "Join", "{}"), "error: Join is a stream, not a call: use chatctl join ROOM"),
        (("call", "Nope"), "error: no endpoint 'Nope'"),
        (("call", "List", "[]"), "error: the request is JSON but not an object"),
        (("call", "Send", '{"room_id": "r"}'), "error: missing text"),
    ],
    ids=["join", "unknown", "not-an-object", "invalid"],
)
def test_call_refuses_before_sending_anything(
    cli: Run, httpx_mock: HTTPXMock, args: tuple[str, ...], error: str
) -> None:
    r = cli(*args)
    assert (r.code, r.stdout) == (2, "")
    assert r.stderr.splitlines()[0] == error
    assert httpx_mock.get_requests() == []
