"""``--jq EXPR``: what it is applied to in each format, and that a bad expression or a
format that is not JSON is exit 2 with nothing sent (pytest-httpx: no request at all)."""

from __future__ import annotations

import io
import json

import pytest
from pytest_httpx import HTTPXMock

from chatctl.cli.jq import compile_filter
from chatctl.output import make_renderer
from tests.conftest import Result, Run
from tests.helpers import CHATCTL_HEADERS

URL = "http://chat.test"
ROOM = "d8057208-f81a-4e14-ad7f-c29daa2bb910"
ROOMS = [
    {"id": ROOM, "name": "general", "user_ids": ["alice", "bob"]},
    {"id": "e8057208-f81a-4e14-ad7f-c29daa2bb910", "name": "ops", "user_ids": ["alice"]},
]


@pytest.fixture(autouse=True)
def server(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CHATCTL_URL", URL)
    monkeypatch.setenv("CHATCTL_TOKEN", "s3cret")
    monkeypatch.setenv("CHATCTL_USER", "alice")


@pytest.mark.parametrize(
    "args",
    [
        ["list", "--jq", ".rooms[."],
        ["--jq", "nosuchfunction(1)", "list"],
        ["send", ROOM, "hi", "--jq", "{"],
        ["join", ROOM, "--jq", ".text |"],
    ],
)
def test_a_bad_expression_is_exit_2_before_anything_is_sent(
    cli: Run, httpx_mock: HTTPXMock, args: list[str]
) -> None:
    r = cli(*args)
    assert r.code == 2
    assert httpx_mock.get_requests() == []
    first, hint = r.stderr.splitlines()
    assert first.startswith("error: --jq ") and "is not a jq expression: " in first
    assert hint.startswith("hint: quote it for the shell")
    assert r.stdout == ""


@pytest.mark.parametrize("fmt", ["table", "tsv", "id"])
def test_jq_with_a_format_that_is_not_json_is_exit_2(
    cli: Run, httpx_mock: HTTPXMock, fmt: str
) -> None:
    r = cli("send", ROOM, "hi", "-o", fmt, "--jq", ".id")
    assert r.code == 2
    assert httpx_mock.get_requests() == []
    assert f"-o {fmt} is not JSON" in r.stderr


def _list(cli: Run, httpx_mock: HTTPXMock, *args: str) -> Result:
    """``chatctl list ARGS`` against a server that has ROOMS."""
    httpx_mock.add_response(json={"rooms": ROOMS}, headers=CHATCTL_HEADERS)
    return cli("list", *args)


def test_json_filters_the_whole_answer_and_prints_strings_raw(
    cli: Run, httpx_mock: HTTPXMock
) -> None:
    r = _list(cli, httpx_mock, "-o", "json", "--jq", ".rooms[].name")
    assert r.code == 0, r.stderr
    assert r.stdout == "general\nops\n"


def test_jsonl_filters_each_line_and_other_values_are_compact_json(
    cli: Run, httpx_mock: HTTPXMock
) -> None:
    r = _list(cli, httpx_mock, "-o", "jsonl", "--jq", "{name, n: (.user_ids | length)}, .private")
    assert r.code == 0, r.stderr
    assert [json.loads(line) for line in r.stdout.splitlines()] == [
        {"name": "general", "n": 2},
        None,
        {"name": "ops", "n": 1},
        None,
    ]


def test_jq_without_o_means_json_even_where_a_table_would_be_printed(
    cli: Run, httpx_mock: HTTPXMock, monkeypatch: pytest.MonkeyPatch
) -> None:
    from chatctl import output

    monkeypatch.setattr(output, "default_format", lambda stream=None: "table")
    r = _list(cli, httpx_mock, "--jq", ".rooms | length")
    assert r.code == 0, r.stderr
    assert r.stdout == "2\n"


def test_an_expression_that_fails_on_the_answer_is_exit_1(
    cli: Run, httpx_mock: HTTPXMock
) -> None:
    r = _list(cli, httpx_mock, "--jq", ".rooms.name")
    assert r.code == 1
    assert r.stderr.splitlines()[0].startswith(
        "error: cannot write the output: --jq '.rooms.name' failed: Cannot index array with"
    )
    assert r.stdout == ""


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize(
    ("stream", "expected"),
    [
        (io.StringIO(), "\x1b[2Jgone\nline two\u202e\n"),
        (_Terminal(), "\\x1b[2Jgone\nline two\\u202e\n"),
    ],
)
def test_a_raw_string_is_exact_in_a_pipe_and_escaped_on_a_terminal(
    stream: io.StringIO, expected: str
) -> None:
    """As ls shows a file name: a program reading the pipe gets the text itself; a
    terminal is never sent its control characters (a message's text is anyone's)."""
    out = make_renderer("jsonl", stream, keep=compile_filter(".text"))
    out.response({"message": {"text": "\x1b[2Jgone\nline two\u202e"}})
    out.close()
    assert stream.getvalue() == expected
