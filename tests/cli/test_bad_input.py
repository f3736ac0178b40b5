"""Bad input gets one clear line on stderr, a documented exit status, no traceback, and
nothing is sent that should not be."""

from __future__ import annotations

import json
import socket

import pytest
from pytest_httpx import HTTPXMock

from tests.cli.test_requests import ROOM, ROOM_OBJ
from tests.conftest import Run
from tests.helpers import CHATCTL_HEADERS


@pytest.fixture(autouse=True)
def server(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CHATCTL_URL", "http://chat.test")
    monkeypatch.setenv("CHATCTL_USER", "u")


def assert_clean_error(stderr: str) -> None:
    assert "Traceback" not in stderr
    assert stderr.startswith("error: ")


def test_malformed_json_names_line_and_column_and_sends_nothing(
    cli: Run, httpx_mock: HTTPXMock
) -> None:
    good = json.dumps({"room_id": ROOM, "user_id": "u", "text": "ok"})
    r = cli("send", "-i", "-", input=f'{good}\n{good}\n{{"room_id": "x" "text": 1}}\n')
    assert r.code == 2
    assert_clean_error(r.stderr)
    assert "line 3, column 17" in r.stderr
    assert httpx_mock.get_requests() == []


def test_malformed_single_object(cli: Run, httpx_mock: HTTPXMock) -> None:
    r = cli("create", "-i", "-", input='{\n  "name": "x",\n  "private": tru\n}\n')
    assert r.code == 2
    assert "line 3, column 14" in r.stderr
    assert httpx_mock.get_requests() == []


def test_wrong_type_in_input_is_refused_before_sending(cli: Run, httpx_mock: HTTPXMock) -> None:
    lines = [
        {"room_id": ROOM, "user_id": "u", "text": "fine"},
        {"room_id": ROOM, "user_id": "u", "text": 5},
    ]
    r = cli("send", "-i", "-", input="\n".join(json.dumps(x) for x in lines))
    assert r.code == 2
    assert "text must be a string (request 2 of 2)" in r.stderr
    assert httpx_mock.get_requests() == []


def test_missing_text_is_a_usage_error(cli: Run, httpx_mock: HTTPXMock) -> None:
    r = cli("send", ROOM)
    assert r.code == 2
    assert "missing text" in r.stderr
    assert httpx_mock.get_requests() == []


def test_input_not_an_object(cli: Run) -> None:
    r = cli("list", "-i", "-", input="[1, 2]")
    assert r.code == 2
    assert "not an object" in r.stderr


@pytest.mark.parametrize(
    "text",
    [
        '{"room_id": ' + "[" * 100_000 + "]" * 100_000 + "}",
        '{"a": 1}\n{"b": ' + "[" * 5000 + "]" * 5000 + "}",
    ],
    ids=["whole", "a-line"],
)
def test_input_nested_too_deeply_is_one_line(
    cli: Run, httpx_mock: HTTPXMock, text: str
) -> None:
    r = cli("send", "-i", "-", input=text)
    assert r.code == 2
    assert_clean_error(r.stderr)
    assert "holds JSON nested more than 32 deep" in r.stderr.splitlines()[0]
    assert httpx_mock.get_requests() == []


def test_unknown_flag(cli: Run, httpx_mock: HTTPXMock) -> None:
    r = cli("list", "--frobnicate")
    assert r.code == 2
    assert "No such option: --frobnicate" in r.stderr
    assert "Traceback" not in r.stderr


def test_bad_output_format(cli: Run) -> None:
    r = cli("list", "-o", "xml")
    assert r.code == 2
    assert "table, json, jsonl, tsv, id" in r.stderr


def test_ambiguous_room_name_lists_the_matches(cli: Run, httpx_mock: HTTPXMock) -> None:
    other = {**ROOM_OBJ, "id": "11111111-2222-3333-4444-555555555555", "description": "the other"}
    httpx_mock.add_response(json={"rooms": [ROOM_OBJ, other]})
    r = cli("send", "general", "hi")
    assert r.code == 2
    assert ROOM in r.stderr and other["id"] in r.stderr and "the other" in r.stderr
    assert len(httpx_mock.get_requests()) == 1  # only the List; nothing was sent


def test_unknown_room_name(cli: Run, httpx_mock: HTTPXMock) -> None:
    httpx_mock.add_response(json={"rooms": [ROOM_OBJ]})
    r = cli("send", "genral", "hi")
    assert r.code == 5
    assert r.stderr.splitlines()[0] == "error: no room named 'genral'"


def test_unreachable_server_exits_3_with_one_line(
    cli: Run, monkeypatch: pytest.MonkeyPatch
) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound but not listening: connection refused
        monkeypatch.setenv("CHATCTL_URL", f"http://127.0.0.1:{port}")
        r = cli("list")
    assert r.code == 3
    assert_clean_error(r.stderr)
    assert (
        r.stderr.splitlines()[0]
        == f"error: cannot reach http://127.0.0.1:{port}: connection refused"
    )


@pytest.mark.parametrize(
    ("status", "detail", "code"),
    [
        (401, "Unauthorized", 4),
        (403, "user is not allowed in this private room", 4),
        (404, "room not found", 5),
        (400, "room not found", 5),  # m3o's own servers
        (400, "group not found", 5),
        (400, "user is not in the room", 1),
    ],
)
def test_error_answers_map_to_exit_statuses(
    cli: Run, httpx_mock: HTTPXMock, status: int, detail: str, code: int
) -> None:
    ident = "v1" if status == 401 else "chat.history"
    httpx_mock.add_response(
        status_code=status, json={"id": ident, "code": status, "detail": detail, "status": "x"}
    )
    r = cli("history", ROOM, "--limit", "5")
    assert r.code == code
    assert r.stderr.splitlines()[0] == f"error: {detail} ({ident}, HTTP {status})"


def test_not_in_room_gives_a_hint(cli: Run, httpx_mock: HTTPXMock) -> None:
    httpx_mock.add_response(
        status_code=400,
        json={
            "id": "chat.send",
            "code": 400,
            "detail": "user is not in the room",
            "status": "Bad Request",
        },
    )
    r = cli("send", ROOM, "hi")
    assert r.code == 1
    assert r.stderr.splitlines() == [
        "error: user is not in the room (chat.send, HTTP 400)",
        "hint: invite the user first (chatctl invite ROOM USER) or join it (chatctl join ROOM)",
    ]


def test_retries_503_with_the_same_idempotency_key(cli: Run, httpx_mock: HTTPXMock) -> None:
    # chatctl's server (its 503 says so) honours the key: a retry cannot store it twice.
    httpx_mock.add_response(
        status_code=503,
        json={"id": "chat.send", "code": 503, "detail": "busy", "status": "x"},
        headers=CHATCTL_HEADERS,
    )
    httpx_mock.add_response(json={"message": {"id": "m"}})
    r = cli("send", ROOM, "hi")
    assert r.code == 0, r.stderr
    first, second = httpx_mock.get_requests()
    assert first.headers["Idempotency-Key"] == second.headers["Idempotency-Key"]


def test_delete_off_a_terminal_needs_yes(cli: Run, httpx_mock: HTTPXMock) -> None:
    r = cli("delete", ROOM)
    assert r.code == 2
    assert "without --yes" in r.stderr
    assert httpx_mock.get_requests() == []


def test_unknown_profile(cli: Run) -> None:
    r = cli("--profile", "nope", "list")
    assert r.code == 2
    assert "no profile named 'nope'" in r.stderr


def test_retries_429_after_retry_after_with_the_same_idempotency_key(
    cli: Run, httpx_mock: HTTPXMock
) -> None:
    httpx_mock.add_response(
        status_code=429,
        headers={"Retry-After": "0"},
        json={"id": "v1", "code": 429, "detail": "too many requests", "status": "x"},
    )
    httpx_mock.add_response(json={"message": {"id": "m"}})
    r = cli("send", ROOM, "hi", "-o", "id")
    assert r.code == 0, r.stderr
    assert r.stdout == "m\n"
    first, second = httpx_mock.get_requests()
    assert first.headers["Idempotency-Key"] == second.headers["Idempotency-Key"]


def test_a_403_hint_names_the_acting_user_flag(cli: Run, httpx_mock: HTTPXMock) -> None:
    httpx_mock.add_response(
        url="http://chat.test/v1/chat/List", json={"rooms": []}, headers=CHATCTL_HEADERS
    )
    httpx_mock.add_response(
        url="http://chat.test/v1/chat/History",
        status_code=403,
        json={"id": "chat.history", "code": 403, "detail": "private room", "status": "x"},
    )
    r = cli("history", ROOM)
    assert r.code == 4
    assert r.stderr.splitlines()[1].startswith("hint: ") and "--user" in r.stderr
    # With a user token --user cannot help: the hint says so rather than send them there.
    assert "a user token acts only as its own user" in r.stderr
