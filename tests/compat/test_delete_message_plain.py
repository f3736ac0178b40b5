"""``chatctl delete-message`` where the server cannot delete a message: a plain m3o server
of either edition (the stand-ins), and a chatctl server from before the extension (it
announces others, not ``delete-message``). Exit 2, one line saying so and a hint, and no
DeleteMessage sent: the only request is the List that asks what the server is."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from pytest_httpx import HTTPXMock

from tests.compat.m3o_standin import RunningStandIn
from tests.conftest import Result

MESSAGE_ID = "0190f2b4-0000-7000-8000-000000000001"
#: what a chatctl server of before issue 25 announces.
OLDER = {
    "Chat-Extensions": "paging, history-user, resume, replay, events, include-own, "
    "idempotency-key, bulk-send, whoami"
}


def test_a_plain_m3o_server_gets_nothing_and_the_command_exits_2(
    cli: Callable[..., Result], m3o_server: RunningStandIn, monkeypatch: pytest.MonkeyPatch
) -> None:
    noun = m3o_server.edition
    rid = m3o_server.call("Create", {"name": "general", "user_ids": ["alice"]})[noun]["id"]
    sent = m3o_server.call("Send", {f"{noun}_id": rid, "user_id": "alice", "text": "oops"})
    m3o_server.forget_requests()
    monkeypatch.setenv("CHATCTL_URL", m3o_server.url)
    monkeypatch.setenv("CHATCTL_TOKEN", m3o_server.token)
    monkeypatch.setenv("CHATCTL_USER", "alice")
    done = cli("delete-message", rid, sent["message"]["id"])
    assert done.code == 2
    assert done.stdout == ""
    error, hint = done.stderr.splitlines()
    assert error == (
        f"error: delete-message is not supported by {m3o_server.url}: it is an m3o server"
        " without chatctl's delete-message extension"
    )
    assert hint.startswith("hint: m3o's API cannot delete a message")
    assert [r.endpoint for r in m3o_server.requests if r.endpoint] == ["List"]
    history = m3o_server.call("History", {f"{noun}_id": rid})["messages"]
    assert [m["text"] for m in history] == ["oops"]


def test_a_chatctl_server_without_the_extension_gets_nothing(
    cli: Callable[..., Result], httpx_mock: HTTPXMock, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = "http://chat.example"
    monkeypatch.setenv("CHATCTL_URL", url)
    monkeypatch.setenv("CHATCTL_USER", "alice")
    httpx_mock.add_response(url=f"{url}/v1/chat/List", json={"rooms": []}, headers=OLDER)
    room = "0190f2b4-0000-7000-8000-0000000000aa"
    done = cli("delete-message", room, MESSAGE_ID)
    assert done.code == 2, done.stderr
    assert "without chatctl's delete-message extension" in done.stderr
    assert [r.url.path for r in httpx_mock.get_requests()] == ["/v1/chat/List"]
