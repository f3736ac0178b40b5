"""Whom the CLI acts as when no user is configured (no --user, CHATCTL_USER or profile
user), request by request (pytest-httpx): a plain m3o server gets exactly what it always
got (the login name, never a Whoami); chatctl's server, which says who a token is, is
asked once, and only by a command that needs a user. (The same against a real team
server over TLS: tests/e2e/test_tls.py.)"""

from __future__ import annotations

import json
from typing import Any

import pytest
from pytest_httpx import HTTPXMock

from tests.cli.test_requests import MESSAGE, ROOM, ROOM_OBJ, URL
from tests.conftest import Run
from tests.helpers import CHATCTL_HEADERS

BOB = {"identity": {"tenant": "acme", "user_id": "bob", "admin": False, "open": False}}
ADMIN = {"identity": {"tenant": "acme", "user_id": "", "admin": True, "open": False}}
OTHER = "0190f2b4-0000-7000-8000-000000000001"
DETAIL = "this token acts only as user bob, not login-1"
BOUND = {"id": "chat.send", "code": 403, "detail": DETAIL, "status": "Forbidden"}


@pytest.fixture(autouse=True)
def server(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CHATCTL_URL", URL)
    monkeypatch.setenv("CHATCTL_TOKEN", "s3cret")
    monkeypatch.setenv("LOGNAME", "login-1")  # getpass.getuser(): the default user


def answer(httpx_mock: HTTPXMock, endpoint: str, data: dict[str, Any], **kw: Any) -> None:
    httpx_mock.add_response(url=f"{URL}/v1/chat/{endpoint}", json=data, **kw)


def ours(httpx_mock: HTTPXMock, endpoint: str, data: dict[str, Any], **kw: Any) -> None:
    answer(httpx_mock, endpoint, data, headers=CHATCTL_HEADERS, **kw)


def sent(httpx_mock: HTTPXMock) -> list[tuple[str, Any]]:
    requests = httpx_mock.get_requests()
    return [(q.url.path.rsplit("/", 1)[1], json.loads(q.content)) for q in requests]


# -- a plain m3o server: the login name, as ever, and never a Whoami -----------------------


@pytest.mark.parametrize(
    ("args", "endpoint", "data", "expect"),
    [
        (("send", ROOM, "hi"), "Send", {"message": MESSAGE}, [("Send", {"room_id": ROOM, "user_id": "login-1", "text": "hi"})]),  # noqa: E501
        (("leave", ROOM), "Leave", {"room": ROOM_OBJ}, [("Leave", {"room_id": ROOM, "user_id": "login-1"})]),  # noqa: E501
        (("history", ROOM), "History", {"messages": [MESSAGE]}, [("List", {"user_id": "login-1"}), ("History", {"room_id": ROOM})]),  # noqa: E501
        (("send", "general", "hi"), "Send", {"message": MESSAGE}, [("List", {}), ("Send", {"room_id": ROOM, "user_id": "login-1", "text": "hi"})]),  # noqa: E501
    ],
    ids=["send-by-id", "leave-by-id", "history-by-id", "send-by-name"],
)
def test_a_plain_server_gets_the_login_name_and_no_whoami(
    cli: Run,
    httpx_mock: HTTPXMock,
    args: tuple[str, ...],
    endpoint: str,
    data: dict[str, Any],
    expect: list[tuple[str, Any]],
) -> None:
    answer(httpx_mock, "List", {"rooms": [ROOM_OBJ]}, is_optional=True)
    answer(httpx_mock, endpoint, data)
    r = cli(*args, "-o", "json")
    assert r.code == 0, r.stderr
    assert sent(httpx_mock) == expect


def test_a_plain_servers_403_is_not_answered_with_a_whoami(
    cli: Run, httpx_mock: HTTPXMock
) -> None:
    """A server without the header that refuses the login name (an older chatctl): the
    refusal is reported, with a hint that fits (nothing was given: give the user)."""
    answer(httpx_mock, "Send", BOUND, status_code=403)
    r = cli("send", ROOM, "hi")
    assert r.code == 4
    assert sent(httpx_mock) == [("Send", {"room_id": ROOM, "user_id": "login-1", "text": "hi"})]
    assert r.stderr.splitlines()[1] == (
        "hint: this server does not say whom a token acts as: give it, with --user bob,"
        " CHATCTL_USER or: chatctl config set user bob"
    )


def test_two_rooms_of_one_name_on_a_plain_server_resolve_by_membership(
    cli: Run, httpx_mock: HTTPXMock
) -> None:
    mine = {**ROOM_OBJ, "user_ids": ["login-1"]}
    theirs = {**ROOM_OBJ, "id": OTHER, "user_ids": ["bob"]}
    answer(httpx_mock, "List", {"rooms": [theirs, mine]})
    answer(httpx_mock, "Send", {"message": MESSAGE})
    r = cli("send", "general", "hi")
    assert r.code == 0, r.stderr
    assert [name for name, _ in sent(httpx_mock)] == ["List", "Send"]
    assert sent(httpx_mock)[1][1]["room_id"] == ROOM


def test_whoami_against_a_plain_server_is_one_line_exit_2(
    cli: Run, httpx_mock: HTTPXMock
) -> None:
    answer(httpx_mock, "List", {"rooms": []})
    r = cli("whoami")
    assert r.code == 2
    assert r.stdout == ""
    assert r.stderr.splitlines() == [
        f"error: whoami is not supported by {URL}: it is an m3o server without chatctl's"
        " whoami extension",
        "hint: an m3o token acts as any user: name yours with --user, CHATCTL_USER or:"
        " chatctl config set user ID",
    ]
    assert sent(httpx_mock) == [("List", {"user_id": "login-1"})]


# -- chatctl's server: the token's user, asked once, only when needed ----------------------


def test_by_name_the_list_says_and_one_whoami_binds_every_message(
    cli: Run, httpx_mock: HTTPXMock
) -> None:
    # A server of this extension alone: one Send a message (bulk Sends: tests/e2e).
    only = {"headers": {"Chat-Extensions": "whoami"}}
    answer(httpx_mock, "List", {"rooms": [ROOM_OBJ]}, **only)
    answer(httpx_mock, "Whoami", BOB, **only)
    answer(httpx_mock, "Send", {"message": MESSAGE}, is_reusable=True, **only)
    r = cli("send", "general", "-i", "-", input='{"text": "a"}\n{"text": "b"}\n')
    assert r.code == 0, r.stderr
    assert sent(httpx_mock) == [
        ("List", {}),
        ("Whoami", {}),
        ("Send", {"text": "a", "room_id": ROOM, "user_id": "bob"}),
        ("Send", {"text": "b", "room_id": ROOM, "user_id": "bob"}),
    ]


def test_by_id_a_refusal_of_the_login_name_asks_and_sends_again_as_the_token(
    cli: Run, httpx_mock: HTTPXMock
) -> None:
    """Nothing known of the server: the first Send is what any m3o server gets; its 403
    (which changed nothing) and header say to ask, and it goes once more as bob."""
    ours(httpx_mock, "Send", BOUND, status_code=403)
    ours(httpx_mock, "Whoami", BOB)
    ours(httpx_mock, "Send", {"message": MESSAGE})
    r = cli("send", ROOM, "hi", "-o", "id")
    assert r.code == 0, r.stderr
    assert sent(httpx_mock) == [
        ("Send", {"room_id": ROOM, "user_id": "login-1", "text": "hi"}),
        ("Whoami", {}),
        ("Send", {"room_id": ROOM, "user_id": "bob", "text": "hi"}),
    ]
    keys = [q.headers["Idempotency-Key"] for q in httpx_mock.get_requests() if "Send" in q.url.path]
    assert keys[0] == keys[1]  # one logical call


def test_an_admin_token_keeps_the_login_name(cli: Run, httpx_mock: HTTPXMock) -> None:
    ours(httpx_mock, "List", {"rooms": [ROOM_OBJ]})
    ours(httpx_mock, "Whoami", ADMIN)
    ours(httpx_mock, "Leave", {"room": ROOM_OBJ})
    r = cli("leave", "general")
    assert r.code == 0, r.stderr
    assert sent(httpx_mock)[1:] == [("Whoami", {}), ("Leave", {"room_id": ROOM, "user_id": "login-1"})]  # noqa: E501


@pytest.mark.parametrize(
    ("args", "endpoint", "data"),
    [
        (("send", "general", "hi", "--user", "carol"), "Send", {"message": MESSAGE}),
        (("invite", "general", "carol"), "Invite", {"room": ROOM_OBJ}),
        (("list",), "List", {"rooms": [ROOM_OBJ]}),
    ],
    ids=["user-given", "invite", "list"],
)
def test_no_whoami_when_no_user_is_needed_or_one_is_given(
    cli: Run, httpx_mock: HTTPXMock, args: tuple[str, ...], endpoint: str, data: dict[str, Any]
) -> None:
    ours(httpx_mock, "List", {"rooms": [ROOM_OBJ]}, is_reusable=True)
    ours(httpx_mock, endpoint, data, is_optional=True)
    r = cli(*args)
    assert r.code == 0, r.stderr
    assert "Whoami" not in [name for name, _ in sent(httpx_mock)]


@pytest.mark.parametrize(
    ("fmt", "out"),
    [
        ("json", json.dumps(BOB, indent=2) + "\n"),
        ("jsonl", json.dumps(BOB["identity"]) + "\n"),
        ("tsv", "acme\tbob\tfalse\tfalse\n"),
        ("id", "bob\n"),
        ("table", "TENANT  USER  ADMIN  OPEN\nacme    bob   no     no  \n"),
    ],
)
def test_whoami_in_every_format(cli: Run, httpx_mock: HTTPXMock, fmt: str, out: str) -> None:
    ours(httpx_mock, "List", {"rooms": []})
    ours(httpx_mock, "Whoami", BOB)
    r = cli("whoami", "-o", fmt)
    assert r.code == 0, r.stderr
    assert r.stdout == out
    assert sent(httpx_mock) == [("List", {"user_id": "login-1"}), ("Whoami", {})]


# -- a hint that fits what happened ----------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "hint"),
    [
        ("--user", "leave out --user: this token acts only as bob"),
        ("CHATCTL_USER", "this token acts only as bob: unset CHATCTL_USER (or set it to bob)"),
        (
            "profile",
            "this token acts only as bob, and the profile's user is carol: "
            "chatctl config set user bob",
        ),
        ("input", "the input names user carol: leave user_id out, or make it bob"),
    ],
)
def test_a_refusal_to_act_as_another_user_says_where_that_user_came_from(
    cli: Run,
    httpx_mock: HTTPXMock,
    monkeypatch: pytest.MonkeyPatch,
    isolated_env: Any,
    given: str,
    hint: str,
) -> None:
    ours(httpx_mock, "Send", {**BOUND, "detail": "this token acts only as user bob, not carol"},
         status_code=403)  # fmt: skip
    args = ["send", ROOM, "hi"]
    if given == "--user":
        args += ["--user", "carol"]
    elif given == "CHATCTL_USER":
        monkeypatch.setenv("CHATCTL_USER", "carol")
    elif given == "profile":
        config = isolated_env / "chatctl.toml"
        config.write_text('[profiles.default]\nuser = "carol"\n')
    else:
        args = ["send", ROOM, "-i", "-"]
    r = cli(*args, input='{"text": "hi", "user_id": "carol"}')
    assert r.code == 4
    assert r.stderr.splitlines()[1] == f"hint: {hint}"
    assert [name for name, _ in sent(httpx_mock)] == ["Send"]  # a user was given: no Whoami


@pytest.mark.parametrize(
    ("reason", "hint"),
    [
        ("user was kicked", "only the room's creator (or an admin token) can invite a kicked"),
        ("user left the room", "join it again with: chatctl join ROOM"),
        ("private room: the user must be invited first", "the room is private or the user"),
        ("this token acts only as user bob, not login-1", "this server does not say whom"),
    ],
)
def test_a_stream_closed_403_hints_after_its_reason(reason: str, hint: str) -> None:
    from chatctl.cli.main import hint_for
    from chatctl.errors import StreamClosed

    said = hint_for(StreamClosed(4403, reason))
    assert said is not None and said.startswith(hint)
