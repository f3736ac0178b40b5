"""The exact requests each subcommand sends (pytest-httpx), and that -o json prints the
response unchanged. The seed payloads are m3o's own, from the wire contract."""

from __future__ import annotations

import json
from typing import Any

import pytest
from pytest_httpx import HTTPXMock

from tests.conftest import Run
from tests.helpers import CHATCTL_HEADERS

URL = "http://chat.test"
ROOM = "d8057208-f81a-4e14-ad7f-c29daa2bb910"
ROOM_OBJ = {
    "id": ROOM,
    "name": "general",
    "description": "The general chat room",
    "created_at": "2022-02-17T16:12:43.942557998Z",
    "user_ids": [],
    "private": False,
}
MESSAGE = {
    "id": "d44c6dc0-89d7-4a36-b528-cfd6c728ccef",
    "client": "web",
    "room_id": ROOM,
    "user_id": "user-1",
    "sent_at": "2022-02-17T16:18:35.683008885Z",
    "subject": "Random",
    "text": "Hey whats up?",
}


@pytest.fixture(autouse=True)
def server(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CHATCTL_URL", URL)
    monkeypatch.setenv("CHATCTL_TOKEN", "s3cret")
    monkeypatch.setenv("CHATCTL_USER", "user-1")


def body(request: Any) -> Any:
    return json.loads(request.content)


def check(request: Any, endpoint: str, expected: dict[str, Any]) -> None:
    assert request.method == "POST"
    assert str(request.url) == f"{URL}/v1/chat/{endpoint}"
    assert request.headers["Authorization"] == "Bearer s3cret"
    assert request.headers["Content-Type"] == "application/json"
    assert body(request) == expected


def test_create_seed_payload(cli: Run, httpx_mock: HTTPXMock) -> None:
    httpx_mock.add_response(json={"room": ROOM_OBJ})
    r = cli("create", "general", "--description", "The general chat room", "-o", "json")
    assert r.code == 0, r.stderr
    (request,) = httpx_mock.get_requests()
    check(request, "Create", {"name": "general", "description": "The general chat room"})
    assert "Idempotency-Key" in request.headers
    assert json.loads(r.stdout) == {"room": ROOM_OBJ}


def test_create_private_with_users(cli: Run, httpx_mock: HTTPXMock) -> None:
    httpx_mock.add_response(json={"room": ROOM_OBJ})
    r = cli("create", "ops", "-u", "a", "-u", "b", "--private")
    assert r.code == 0, r.stderr
    check(
        httpx_mock.get_requests()[0],
        "Create",
        {"name": "ops", "user_ids": ["a", "b"], "private": True},
    )


def test_invite_seed_payload_one_call_per_user(cli: Run, httpx_mock: HTTPXMock) -> None:
    httpx_mock.add_response(json={"room": {**ROOM_OBJ, "user_ids": ["user-1"]}}, is_reusable=True)
    r = cli("invite", ROOM, "user-1", "user-2")
    assert r.code == 0, r.stderr
    first, second = httpx_mock.get_requests()
    check(first, "Invite", {"room_id": ROOM, "user_id": "user-1"})
    check(second, "Invite", {"room_id": ROOM, "user_id": "user-2"})
    assert first.headers["Idempotency-Key"] != second.headers["Idempotency-Key"]
    # Two responses from one command: one compact JSON object per line.
    assert [json.loads(line)["room"]["id"] for line in r.stdout.splitlines()] == [ROOM, ROOM]


def test_send_seed_payload_and_json_unchanged(cli: Run, httpx_mock: HTTPXMock) -> None:
    httpx_mock.add_response(json={"message": MESSAGE})
    r = cli("send", ROOM, "Hey whats up?", "--client", "web", "--subject", "Random", "-o", "json")
    assert r.code == 0, r.stderr
    check(
        httpx_mock.get_requests()[0],
        "Send",
        {
            "room_id": ROOM,
            "user_id": "user-1",
            "client": "web",
            "subject": "Random",
            "text": "Hey whats up?",
        },
    )
    assert json.loads(r.stdout) == {"message": MESSAGE}


def test_send_text_from_stdin(cli: Run, httpx_mock: HTTPXMock) -> None:
    httpx_mock.add_response(json={"message": MESSAGE})
    r = cli("send", ROOM, "-", input="multi\nline\n")
    assert r.code == 0, r.stderr
    assert body(httpx_mock.get_requests()[0])["text"] == "multi\nline"


def test_send_lines_in_order(cli: Run, httpx_mock: HTTPXMock) -> None:
    httpx_mock.add_response(json={"message": MESSAGE}, is_reusable=True)
    r = cli("send", ROOM, "--lines", "-o", "id", input="one\ntwo\n\nthree\n")
    assert r.code == 0, r.stderr
    assert [body(q)["text"] for q in httpx_mock.get_requests()] == ["one", "two", "three"]
    assert r.stdout.splitlines() == [MESSAGE["id"]] * 3


def test_history_reads_chatctls_server_in_one_streamed_call(
    cli: Run, httpx_mock: HTTPXMock
) -> None:
    # Asked by id, nothing is known of the server yet: a small seed-shaped List asks
    # (read-only, filtered by the reader) before any extension is sent. Then all of the
    # room is one History without a limit, which chatctl's server streams in parts.
    httpx_mock.add_response(json={"rooms": []}, headers=CHATCTL_HEADERS)
    httpx_mock.add_response(json={"messages": [MESSAGE, MESSAGE]}, headers=CHATCTL_HEADERS)
    r = cli("history", ROOM, "-o", "json")
    assert r.code == 0, r.stderr
    probe, history = httpx_mock.get_requests()
    check(probe, "List", {"user_id": "user-1"})
    check(history, "History", {"room_id": ROOM, "user_id": "user-1"})
    assert json.loads(r.stdout) == {"messages": [MESSAGE, MESSAGE]}


def test_history_limit_is_latest(cli: Run, httpx_mock: HTTPXMock) -> None:
    httpx_mock.add_response(json={"rooms": []}, headers=CHATCTL_HEADERS)
    httpx_mock.add_response(json={"messages": [MESSAGE]}, headers=CHATCTL_HEADERS)
    r = cli("history", ROOM, "--limit", "1", "-o", "jsonl")
    assert r.code == 0, r.stderr
    check(
        httpx_mock.get_requests()[1], "History", {"room_id": ROOM, "user_id": "user-1", "limit": 1}
    )
    assert [json.loads(line) for line in r.stdout.splitlines()] == [MESSAGE]


def test_list_seed_payload(
    cli: Run, httpx_mock: HTTPXMock, monkeypatch: pytest.MonkeyPatch
) -> None:
    httpx_mock.add_response(json={"rooms": [ROOM_OBJ]})
    r = cli("list", "-o", "json")
    assert r.code == 0, r.stderr
    check(httpx_mock.get_requests()[0], "List", {})
    assert json.loads(r.stdout) == {"rooms": [ROOM_OBJ]}


def test_list_by_user(cli: Run, httpx_mock: HTTPXMock) -> None:
    httpx_mock.add_response(json={"rooms": []})
    assert cli("list", "--user", "bob").code == 0
    check(httpx_mock.get_requests()[0], "List", {"user_id": "bob"})


@pytest.mark.parametrize("command", ["kick", "leave"])
def test_kick_and_leave_seed_payload(cli: Run, httpx_mock: HTTPXMock, command: str) -> None:
    httpx_mock.add_response(json={"room": ROOM_OBJ})
    args = [command, ROOM] + (["user-1", "--yes"] if command == "kick" else [])
    r = cli(*args)
    assert r.code == 0, r.stderr
    check(
        httpx_mock.get_requests()[0], command.capitalize(), {"room_id": ROOM, "user_id": "user-1"}
    )


def test_delete_seed_payload(cli: Run, httpx_mock: HTTPXMock) -> None:
    httpx_mock.add_response(json={"room": ROOM_OBJ})
    r = cli("delete", ROOM, "--yes", "-o", "json")
    assert r.code == 0, r.stderr
    check(httpx_mock.get_requests()[0], "Delete", {"room_id": ROOM})
    assert json.loads(r.stdout) == {"room": ROOM_OBJ}


def test_room_name_resolved_through_list(cli: Run, httpx_mock: HTTPXMock) -> None:
    httpx_mock.add_response(json={"rooms": [ROOM_OBJ]})
    httpx_mock.add_response(json={"message": MESSAGE})
    r = cli("send", "general", "hi")
    assert r.code == 0, r.stderr
    listing, send = httpx_mock.get_requests()
    check(listing, "List", {})
    assert body(send)["room_id"] == ROOM


def test_input_with_flags_overriding(cli: Run, httpx_mock: HTTPXMock) -> None:
    httpx_mock.add_response(json={"message": MESSAGE})
    given = {"room_id": ROOM, "user_id": "someone", "text": "from input", "subject": "S"}
    r = cli("send", "-i", "-", "--subject", "flag wins", input=json.dumps(given))
    assert r.code == 0, r.stderr
    assert body(httpx_mock.get_requests()[0]) == {**given, "subject": "flag wins"}


def test_input_keeps_its_user_over_the_default(cli: Run, httpx_mock: HTTPXMock) -> None:
    httpx_mock.add_response(json={"message": MESSAGE})
    r = cli("send", "-i", "-", input=json.dumps({"room_id": ROOM, "user_id": "x", "text": "t"}))
    assert r.code == 0, r.stderr
    assert body(httpx_mock.get_requests()[0])["user_id"] == "x"


def test_ndjson_input_one_call_and_one_result_per_line(cli: Run, httpx_mock: HTTPXMock) -> None:
    httpx_mock.add_response(json={"message": MESSAGE}, is_reusable=True)
    lines = [{"room_id": ROOM, "user_id": "u", "text": f"m{i}"} for i in range(3)]
    r = cli("send", "-i", "-", "-o", "json", input="\n".join(json.dumps(x) for x in lines) + "\n")
    assert r.code == 0, r.stderr
    assert [body(q)["text"] for q in httpx_mock.get_requests()] == ["m0", "m1", "m2"]
    assert [json.loads(line) for line in r.stdout.splitlines()] == [{"message": MESSAGE}] * 3


def test_options_after_the_subcommand(cli: Run, httpx_mock: HTTPXMock) -> None:
    httpx_mock.add_response(url="http://other.test/v1/chat/List", json={"rooms": []})
    r = cli("list", "--url", "http://other.test", "--token", "t2", "-o", "json")
    assert r.code == 0, r.stderr
    assert httpx_mock.get_requests()[0].headers["Authorization"] == "Bearer t2"


def test_options_before_the_subcommand(cli: Run, httpx_mock: HTTPXMock) -> None:
    httpx_mock.add_response(url="http://other.test/v1/chat/List", json={"rooms": []})
    r = cli("--url", "http://other.test", "-o", "json", "list")
    assert r.code == 0, r.stderr


def test_verbose_logs_without_the_token(cli: Run, httpx_mock: HTTPXMock) -> None:
    httpx_mock.add_response(json={"rooms": []})
    r = cli("list", "--verbose")
    assert r.code == 0
    assert "POST http://chat.test/v1/chat/List 200" in r.stderr
    assert "s3cret" not in r.stderr + r.stdout


@pytest.mark.parametrize(
    ("fmt", "expected"),
    [
        ("jsonl", json.dumps(ROOM_OBJ) + "\n"),
        ("id", ROOM + "\n"),
        (
            "tsv",
            f"{ROOM}\tgeneral\tThe general chat room\t2022-02-17T16:12:43.942557998Z\t\tfalse\n",
        ),
    ],
)
def test_output_formats(cli: Run, httpx_mock: HTTPXMock, fmt: str, expected: str) -> None:
    httpx_mock.add_response(json={"rooms": [ROOM_OBJ]})
    r = cli("list", "-o", fmt)
    assert r.code == 0, r.stderr
    assert r.stdout == expected


def test_table_output(cli: Run, httpx_mock: HTTPXMock) -> None:
    httpx_mock.add_response(json={"rooms": [ROOM_OBJ]})
    r = cli("list", "-o", "table")
    assert r.code == 0
    assert "general" in r.stdout and "NAME" in r.stdout


def test_m3o_token_used_when_nothing_else(
    cli: Run, httpx_mock: HTTPXMock, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CHATCTL_TOKEN")
    monkeypatch.setenv("M3O_API_TOKEN", "m3o-tok")
    httpx_mock.add_response(json={"rooms": []})
    assert cli("list").code == 0
    assert httpx_mock.get_requests()[0].headers["Authorization"] == "Bearer m3o-tok"


def test_names_are_resolved_with_one_list(cli: Run, httpx_mock: HTTPXMock) -> None:
    other = {**ROOM_OBJ, "id": "11111111-2222-3333-4444-555555555555", "name": "random"}
    httpx_mock.add_response(
        url=f"{URL}/v1/chat/List", json={"rooms": [ROOM_OBJ, other]}, is_reusable=True
    )
    httpx_mock.add_response(url=f"{URL}/v1/chat/Invite", json={"room": ROOM_OBJ}, is_reusable=True)
    httpx_mock.add_response(url=f"{URL}/v1/chat/Delete", json={"room": ROOM_OBJ}, is_reusable=True)
    assert cli("invite", "general", "a", "b").code == 0
    assert cli("delete", "general", "random", "--yes", "-o", "id").code == 0
    sent = [
        (q.url.path.rsplit("/", 1)[1], body(q).get("room_id"), body(q).get("user_id"))
        for q in httpx_mock.get_requests()
    ]
    assert sent == [
        ("List", None, None),
        ("Invite", ROOM, "a"),
        ("Invite", ROOM, "b"),
        ("List", None, None),
        ("Delete", ROOM, None),
        ("Delete", other["id"], None),
    ]


def test_history_from_a_server_that_does_not_page_prints_each_message_once(
    cli: Run, httpx_mock: HTTPXMock
) -> None:
    """m3o's own History ignores limit and after and answers every message each time."""
    second = {**MESSAGE, "id": "e55d7dd1-0000-4000-8000-000000000000", "text": "two"}
    httpx_mock.add_response(json={"messages": [MESSAGE, second]}, is_reusable=True)
    r = cli("history", ROOM, "-o", "jsonl")
    assert r.code == 0, r.stderr
    assert [json.loads(line)["text"] for line in r.stdout.splitlines()] == ["Hey whats up?", "two"]
    r = cli("history", ROOM, "--limit", "5", "-o", "id")
    assert r.stdout.split() == [MESSAGE["id"], second["id"]]
