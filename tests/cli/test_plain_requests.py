"""The exact requests each subcommand sends to a plain m3o server (pytest-httpx): an answer
without chatctl's ``Chat-Extensions`` header is such a server, in either edition. It gets
the seed's bodies only, exactly; its answers are printed as it sent them; and a change is
never sent twice to a server that cannot tell a retry from a new call.

(The same against the stand-ins, over real sockets and with ``join``:
``tests/compat/test_cli_plain_servers.py``.)
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from pytest_httpx import HTTPXMock

from tests.cli.test_requests import MESSAGE, ROOM, ROOM_OBJ, URL, body, check
from tests.conftest import Run
from tests.helpers import CHATCTL_HEADERS

GROUP_MESSAGE = {("group_id" if k == "room_id" else k): v for k, v in MESSAGE.items()}
MISSING_GROUP_ID = {"id": "chat.send", "code": 400, "detail": "missing group id", "status": "x"}


@pytest.fixture(autouse=True)
def server(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CHATCTL_URL", URL)
    monkeypatch.setenv("CHATCTL_TOKEN", "s3cret")
    monkeypatch.setenv("CHATCTL_USER", "user-1")


def answer(httpx_mock: HTTPXMock, endpoint: str, data: dict[str, Any], **kw: Any) -> None:
    httpx_mock.add_response(url=f"{URL}/v1/chat/{endpoint}", json=data, **kw)


def sent(httpx_mock: HTTPXMock) -> list[tuple[str, Any]]:
    return [(q.url.path.rsplit("/", 1)[1], body(q)) for q in httpx_mock.get_requests()]


# -- every subcommand, room by name: the List that resolves it says the edition ---------


@pytest.mark.parametrize("edition", ["room", "group"])
@pytest.mark.parametrize(
    ("args", "endpoint", "expect", "answer_key"),
    [
        (("send", "general", "hi", "--subject", "S"), "Send", {"user_id": "user-1", "text": "hi", "subject": "S"}, "message"),  # noqa: E501
        (("invite", "general", "bob"), "Invite", {"user_id": "bob"}, "room"),
        (("kick", "general", "bob", "--yes"), "Kick", {"user_id": "bob"}, "room"),
        (("leave", "general"), "Leave", {"user_id": "user-1"}, "room"),
        (("delete", "general", "--yes"), "Delete", {}, "room"),
        (("history", "general"), "History", {}, "messages"),
    ],
    ids=["send", "invite", "kick", "leave", "delete", "history"],
)
def test_seed_bodies_by_room_name(
    cli: Run,
    httpx_mock: HTTPXMock,
    edition: str,
    args: tuple[str, ...],
    endpoint: str,
    expect: dict[str, Any],
    answer_key: str,
) -> None:
    answer(httpx_mock, "List", {f"{edition}s": [ROOM_OBJ]})
    message = MESSAGE if edition == "room" else GROUP_MESSAGE
    data: dict[str, Any] = {
        "message": message,
        "messages": [message],
        "room": ROOM_OBJ,
    }
    key = answer_key if answer_key != "room" else edition
    answer(httpx_mock, endpoint, {key: data[answer_key]})
    r = cli(*args, "-o", "json")
    assert r.code == 0, r.stderr
    listing, request = httpx_mock.get_requests()
    check(listing, "List", {})
    check(request, endpoint, {f"{edition}_id": ROOM, **expect})
    # Printed as the server sent it, in its own names.
    assert json.loads(r.stdout) == {key: data[answer_key]}


@pytest.mark.parametrize("edition", ["room", "group"])
def test_create_and_list_seed_bodies(cli: Run, httpx_mock: HTTPXMock, edition: str) -> None:
    answer(httpx_mock, "Create", {edition: ROOM_OBJ})
    answer(httpx_mock, "List", {f"{edition}s": [ROOM_OBJ]})
    created = cli("create", "general", "-d", "The general chat room", "-u", "a", "-o", "json")
    assert created.code == 0, created.stderr
    listed = cli("list", "--user", "a", "-o", "json")
    assert listed.code == 0, listed.stderr
    create, list_ = httpx_mock.get_requests()
    check(create, "Create", {"name": "general", "description": "The general chat room", "user_ids": ["a"]})  # noqa: E501
    check(list_, "List", {"user_id": "a"})
    assert json.loads(created.stdout) == {edition: ROOM_OBJ}
    assert json.loads(listed.stdout) == {f"{edition}s": [ROOM_OBJ]}


# -- by id: the first call says the edition -----------------------------------------------


def test_by_id_a_group_server_is_learnt_from_its_refusal(
    cli: Run, httpx_mock: HTTPXMock
) -> None:
    """m3o checks the id first: ``missing group id`` means nothing was done, and the call
    is made again in the group names, as is every later call of the process."""
    httpx_mock.add_response(status_code=400, json=MISSING_GROUP_ID)
    httpx_mock.add_response(json={"message": GROUP_MESSAGE}, is_reusable=True)
    r = cli("send", ROOM, "--lines", "-o", "json", input="one\ntwo\n")
    assert r.code == 0, r.stderr
    assert sent(httpx_mock) == [
        ("Send", {"room_id": ROOM, "user_id": "user-1", "text": "one"}),
        ("Send", {"group_id": ROOM, "user_id": "user-1", "text": "one"}),
        ("Send", {"group_id": ROOM, "user_id": "user-1", "text": "two"}),
    ]
    assert [json.loads(line) for line in r.stdout.splitlines()] == [{"message": GROUP_MESSAGE}] * 2


def test_the_edition_is_learnt_once_and_only_one_retry_is_made(
    cli: Run, httpx_mock: HTTPXMock
) -> None:
    httpx_mock.add_response(status_code=400, json=MISSING_GROUP_ID)
    httpx_mock.add_response(
        status_code=400, json={**MISSING_GROUP_ID, "detail": "missing room id"}
    )
    r = cli("send", ROOM, "hi")
    assert r.code == 1
    assert "missing room id" in r.stderr
    assert [b for _, b in sent(httpx_mock)] == [
        {"room_id": ROOM, "user_id": "user-1", "text": "hi"},
        {"group_id": ROOM, "user_id": "user-1", "text": "hi"},
    ]


def test_input_may_name_the_group(cli: Run, httpx_mock: HTTPXMock) -> None:
    answer(httpx_mock, "Send", {"message": MESSAGE})
    line = {"group_id": ROOM, "user_id": "u", "text": "t"}
    r = cli("send", "-i", "-", input=json.dumps(line))
    assert r.code == 0, r.stderr
    # Unknown edition: the seed's names (a group server would refuse them, see above).
    assert sent(httpx_mock) == [("Send", {"room_id": ROOM, "user_id": "u", "text": "t"})]


def test_input_naming_two_rooms_is_refused(cli: Run, httpx_mock: HTTPXMock) -> None:
    line = {"group_id": ROOM, "room_id": "other", "user_id": "u", "text": "t"}
    r = cli("send", "-i", "-", input=json.dumps(line))
    assert r.code == 2 and "room_id and group_id differ" in r.stderr
    assert httpx_mock.get_requests() == []


# -- what the renderers make of the final edition ---------------------------------------


def test_tsv_puts_a_group_message_in_the_same_columns(cli: Run, httpx_mock: HTTPXMock) -> None:
    answer(httpx_mock, "List", {"groups": [ROOM_OBJ]})
    answer(httpx_mock, "History", {"messages": [GROUP_MESSAGE]})
    r = cli("history", "general", "-o", "tsv")
    assert r.code == 0, r.stderr
    assert r.stdout.split("\t")[2] == ROOM


def test_an_answer_with_both_editions_keys_shows_each_room_once(
    cli: Run, httpx_mock: HTTPXMock
) -> None:
    """chatctl's server answers Create and List with both keys (a server of both editions)."""
    answer(httpx_mock, "List", {"rooms": [ROOM_OBJ], "groups": [ROOM_OBJ]}, is_reusable=True)
    assert cli("list", "-o", "id").stdout == ROOM + "\n"
    table = cli("list", "-o", "table").stdout
    assert table.count(ROOM) == 1
    assert json.loads(cli("list", "-o", "json").stdout) == {
        "rooms": [ROOM_OBJ],
        "groups": [ROOM_OBJ],
    }


# -- History: read once, in time order, selected on the client ---------------------------


def msg(n: int, stamp: str) -> dict[str, Any]:
    # Ids in an order of their own, as m3o's random ones are.
    return {**MESSAGE, "id": f"{(7 - n) * 11111111:08d}-0000-4000-8000-000000000000",
            "sent_at": stamp, "text": f"m{n}"}  # fmt: skip


#: m3o's sent_at drops trailing zeros, so the text does not sort: m1 .9 s is before m2
#: .95 s and m3 .9501 s, and the answer is in key (id) order.
STAMPS = ["2022-02-17T16:18:35.5Z", "2022-02-17T16:18:35.9Z", "2022-02-17T16:18:35.95Z",
          "2022-02-17T16:18:35.9501Z", "2022-02-17T16:18:36Z"]  # fmt: skip
MESSAGES = [msg(n, stamp) for n, stamp in enumerate(STAMPS)]


@pytest.mark.parametrize(
    ("flags", "texts"),
    [
        ((), ["m0", "m1", "m2", "m3", "m4"]),
        (("--limit", "2"), ["m3", "m4"]),
        (("--after", MESSAGES[1]["id"]), ["m2", "m3", "m4"]),
        (("--after", MESSAGES[0]["id"], "--limit", "2"), ["m1", "m2"]),
        (("--before", MESSAGES[3]["id"], "--limit", "2"), ["m1", "m2"]),
        # A time cursor (a UUIDv7 that is no message's id): from its millisecond on
        # (this one is 16:18:35.950).
        (("--after", "017f087a-6f2e-7000-8000-000000000000"), ["m2", "m3", "m4"]),
        (("--after", "00000000-0000-0000-0000-000000000000", "-n", "1"), ["m0"]),
    ],
    ids=["all", "latest", "after", "after-first", "before-latest", "time-cursor", "start"],
)
def test_history_is_read_once_and_selected_in_time_order(
    cli: Run, httpx_mock: HTTPXMock, flags: tuple[str, ...], texts: list[str]
) -> None:
    answer(httpx_mock, "List", {"rooms": [ROOM_OBJ]})
    keyed = sorted(MESSAGES, key=lambda m: m["id"])
    assert [m["text"] for m in keyed] != texts  # the server's order is not time order
    answer(httpx_mock, "History", {"messages": keyed})
    r = cli("history", "general", *flags, "-o", "jsonl")
    assert r.code == 0, r.stderr
    assert [json.loads(line)["text"] for line in r.stdout.splitlines()] == texts
    # One History call, the seed's body: no reader, no paging.
    assert sent(httpx_mock)[1:] == [("History", {"room_id": ROOM})]


def test_history_json_is_one_object(cli: Run, httpx_mock: HTTPXMock) -> None:
    answer(httpx_mock, "List", {"rooms": [ROOM_OBJ]})
    answer(httpx_mock, "History", {"messages": MESSAGES[::-1]})
    r = cli("history", "general", "-o", "json")
    assert r.code == 0, r.stderr
    assert json.loads(r.stdout) == {"messages": MESSAGES}


def test_history_cursor_that_is_no_message_of_the_room(cli: Run, httpx_mock: HTTPXMock) -> None:
    answer(httpx_mock, "List", {"rooms": [ROOM_OBJ]})
    answer(httpx_mock, "History", {"messages": MESSAGES})
    r = cli("history", "general", "--after", "d44c6dc0-89d7-4a36-b528-cfd6c728ffff")
    assert r.code == 5
    assert "no message of the room has this id" in r.stderr


def test_history_by_id_asks_with_a_small_list_before_any_extension(
    cli: Run, httpx_mock: HTTPXMock
) -> None:
    answer(httpx_mock, "List", {"rooms": []})
    answer(httpx_mock, "History", {"messages": [MESSAGE]})
    r = cli("history", ROOM, "--user", "bob", "-n", "5", "-o", "id")
    assert r.code == 0, r.stderr
    assert sent(httpx_mock) == [("List", {"user_id": "bob"}), ("History", {"room_id": ROOM})]
    assert r.stdout == MESSAGE["id"] + "\n"


def test_chatctls_server_gets_its_extensions(cli: Run, httpx_mock: HTTPXMock) -> None:
    """The same command against chatctl's server (its header) pages with the reader."""
    answer(httpx_mock, "List", {"rooms": [ROOM_OBJ]}, headers=CHATCTL_HEADERS)
    answer(httpx_mock, "History", {"messages": [MESSAGE]}, headers=CHATCTL_HEADERS)
    answer(httpx_mock, "History", {"messages": []}, headers=CHATCTL_HEADERS)
    r = cli("history", "general", "--user", "bob", "-n", "5", "-o", "id")
    assert r.code == 0, r.stderr
    assert sent(httpx_mock) == [
        ("List", {}),
        ("History", {"room_id": ROOM, "user_id": "bob", "limit": 5}),
        ("History", {"room_id": ROOM, "user_id": "bob", "limit": 4, "before": MESSAGE["id"]}),
    ]


def test_join_since_on_a_known_plain_server_sends_nothing(cli: Run, httpx_mock: HTTPXMock) -> None:
    answer(httpx_mock, "List", {"groups": [ROOM_OBJ]})
    r = cli("join", "general", "--since", MESSAGE["id"])
    assert r.code == 2
    assert r.stderr.splitlines()[0] == (
        f"error: join --since is not supported by {URL}: it is an m3o server without "
        "chatctl's resume extension"
    )
    assert r.stderr.splitlines()[1].startswith("hint: that needs chatctl's own server")
    assert sent(httpx_mock) == [("List", {})]


# -- retries: a change is never sent twice to a server that cannot tell ------------------


def test_a_change_lost_mid_call_is_not_retried(cli: Run, httpx_mock: HTTPXMock) -> None:
    httpx_mock.add_exception(httpx.ReadError("connection reset by peer"))
    answer(httpx_mock, "List", {"rooms": []})  # what the server is: asked, plain
    r = cli("send", ROOM, "hi")
    assert r.code == 3
    assert sent(httpx_mock) == [
        ("Send", {"room_id": ROOM, "user_id": "user-1", "text": "hi"}),
        ("List", {"user_id": "user-1"}),
    ]
    assert "may or may not have been done" in r.stderr


@pytest.mark.parametrize("status", [502, 503, 504])
def test_a_change_a_gateway_failed_is_not_retried(
    cli: Run, httpx_mock: HTTPXMock, status: int
) -> None:
    httpx_mock.add_response(url=f"{URL}/v1/chat/Invite", status_code=status, text="Bad Gateway")
    answer(httpx_mock, "List", {"rooms": []})
    r = cli("invite", ROOM, "bob")
    assert r.code == 1
    assert [e for e, _ in sent(httpx_mock)] == ["Invite", "List"]
    assert "may or may not have been done" in r.stderr


def test_a_change_lost_mid_call_to_chatctls_server_is_retried_with_its_key(
    cli: Run, httpx_mock: HTTPXMock
) -> None:
    """The first call of a process: nothing known yet, so a List asks; chatctl's server
    honours the key, so the retry is safe (it answers the first call's result)."""
    httpx_mock.add_exception(httpx.ReadError("connection reset by peer"))
    answer(httpx_mock, "List", {"rooms": []}, headers=CHATCTL_HEADERS)
    answer(httpx_mock, "Send", {"message": MESSAGE}, headers=CHATCTL_HEADERS)
    r = cli("send", ROOM, "hi", "-o", "id")
    assert r.code == 0, r.stderr
    first, _, again = httpx_mock.get_requests()
    assert first.headers["Idempotency-Key"] == again.headers["Idempotency-Key"]
    assert r.stdout == MESSAGE["id"] + "\n"


def test_a_change_lost_mid_call_is_not_retried_when_the_server_cannot_be_asked(
    cli: Run, httpx_mock: HTTPXMock
) -> None:
    httpx_mock.add_exception(httpx.ReadError("connection reset by peer"))
    httpx_mock.add_exception(httpx.ConnectError("connection refused"), is_reusable=True)
    r = cli("send", ROOM, "hi")
    assert r.code == 3
    assert [e for e, _ in sent(httpx_mock)].count("Send") == 1
    assert "may or may not have been done" in r.stderr


def test_a_change_that_never_reached_the_server_is_retried(
    cli: Run, httpx_mock: HTTPXMock
) -> None:
    httpx_mock.add_exception(httpx.ConnectError("connection refused"))
    httpx_mock.add_response(json={"message": MESSAGE})
    r = cli("send", ROOM, "hi", "-o", "id")
    assert r.code == 0, r.stderr
    first, second = httpx_mock.get_requests()
    assert first.headers["Idempotency-Key"] == second.headers["Idempotency-Key"]


def test_a_429_is_retried_the_server_did_nothing(cli: Run, httpx_mock: HTTPXMock) -> None:
    httpx_mock.add_response(
        status_code=429,
        headers={"Retry-After": "0"},
        json={"id": "v1", "code": 429, "detail": "too many requests", "status": "x"},
    )
    httpx_mock.add_response(json={"message": MESSAGE})
    assert cli("send", ROOM, "hi").code == 0
    assert len(httpx_mock.get_requests()) == 2


def test_a_read_is_retried(cli: Run, httpx_mock: HTTPXMock) -> None:
    httpx_mock.add_response(status_code=503, text="unavailable")
    httpx_mock.add_response(json={"rooms": []})
    assert cli("list").code == 0
    assert len(httpx_mock.get_requests()) == 2
