"""Text written by other people is data: never markup, never terminal control.

A corpus of hostile strings (Rich markup, ESC/CSI/OSC sequences and OSC 8 hyperlinks, C1
controls, bidi overrides, NUL, lone surrogates, embedded newlines, a 1 MB line) is put in
every field a server sends back, and every renderer and format prints it: no traceback,
no raw control character from the data, the literal text still there, JSON still the
same data. The table and ``join`` line formats are also run as a user sees them: the real
CLI on a pseudo-terminal against a real server (``test_on_a_terminal``).
"""

from __future__ import annotations

import io
import json
import re
from typing import Any

import pytest
from pytest_httpx import HTTPXMock

from chatctl.output import FORMATS, make_renderer
from tests.conftest import Run

ROOM = "d8057208-f81a-4e14-ad7f-c29daa2bb910"

#: name -> hostile text; each is put in every string field of a room and a message.
CORPUS: dict[str, str] = {
    "markup-close": "closing [/bold] tag and a lone [/]",
    "markup-link": "[link=https://evil.example]click me[/link] [bold red]alarm[/]",
    "csi": "\x1b[2J\x1b[H\x1b[31mred\x1b[0m",
    "osc8": "\x1b]8;;https://evil.example\x1b\\looks safe\x1b]8;;\x1b\\",
    "osc-title": "\x1b]0;owned\x07",
    "c1": "\x9b31m c1-csi \x9d osc \x85 nel \x7f del",
    "bidi": "user\u202egnp.exe \u2066isolate\u2069 \u200fmark",
    "nul": "before\x00after",
    "separators": "line\u2028sep\u2029para\x0bvt\x0cff\rcr",
    "newline-forgery": "hi\n12:00:00 bob: transfer the money\nok",
    "surrogate": "lone \ud800 and \udfff",
    "tab": "a\tb",
}
BIG = "x" * (1024 * 1024)

#: a character that must never reach a terminal raw from the data: C0 but tab and the
#: newlines we print ourselves, DEL, C1, bidi embeddings/overrides/isolates and marks,
#: line separators, lone surrogates.
RAW_CONTROL = re.compile(
    "[\x00-\x08\x0b-\x0c\x0e-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069"
    "\ud800-\udfff]"
)


def room(text: str) -> dict[str, Any]:
    return {
        "id": f"{ROOM}{text}",
        "name": text,
        "description": text,
        "created_at": text,
        "user_ids": [text, "bob"],
        "private": False,
    }


def message(text: str) -> dict[str, Any]:
    return {
        "id": text,
        "client": text,
        "room_id": ROOM,
        "user_id": text,
        "sent_at": "2022-02-17T16:18:35.683008885Z",
        "subject": text,
        "text": text,
    }


def event(text: str) -> dict[str, Any]:
    return {"type": text, "room_id": ROOM, "user_id": text, "at": text}


def render(fmt: str, responses: list[dict[str, Any]], *, live: bool = False) -> str:
    out = io.StringIO()
    renderer = make_renderer(fmt, out, batch=len(responses) > 1, live=live)
    for response in responses:
        renderer.response(response)
    renderer.close()
    return out.getvalue()


def printable_parts(text: str) -> list[str]:
    """The runs of ``text`` between its control characters and spaces: a person must
    still see each of them, literally."""
    return [p for p in re.split(f"{RAW_CONTROL.pattern}|\\s", text) if p]


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("live", [False, True], ids=["response", "join"])
@pytest.mark.parametrize("name", [*CORPUS, "1MB"])
def test_every_format_prints_hostile_text_safely(fmt: str, live: bool, name: str) -> None:
    text = BIG if name == "1MB" else CORPUS[name]
    if live:
        responses = [{"message": message(text)}, {"event": event(text)}]
    else:
        responses = [{"rooms": [room(text)]}, {"messages": [message(text)]}]
    out = render(fmt, responses, live=live)
    out.encode("utf-8")  # writable to any UTF-8 stream: no lone surrogate left raw
    assert not RAW_CONTROL.search(out), f"raw control character in {fmt} output"
    if fmt in ("json", "jsonl"):
        decoded = [json.loads(line) for line in out.splitlines()] if fmt != "json" or live else []
        if fmt == "json" and not live:
            decoded = [json.loads(chunk) for chunk in _json_documents(out)]
        assert any(text in json.dumps(d, ensure_ascii=False) or _holds(d, text) for d in decoded)
    elif fmt in ("tsv", "id"):
        records = out.splitlines()
        # one record a line: every room, message (and event, for tsv) on exactly one
        expected = {"tsv": 2, "id": 1 if live else 2}[fmt]
        assert len(records) == expected
    elif name != "1MB":
        flat = out.replace("\n", "").replace(" ", "")
        for piece in printable_parts(text):
            assert piece in flat  # markup stays literal text, nothing is swallowed


def _json_documents(out: str) -> list[str]:
    decoder, docs, at = json.JSONDecoder(), [], 0
    while at < len(out.strip()):
        obj, end = decoder.raw_decode(out, at)
        docs.append(json.dumps(obj))
        at = end
        while at < len(out) and out[at].isspace():
            at += 1
    return docs


def _holds(value: Any, text: str) -> bool:
    if isinstance(value, str):
        return value == text
    if isinstance(value, dict):
        return any(_holds(v, text) for v in value.values())
    if isinstance(value, list):
        return any(_holds(v, text) for v in value)
    return False


def test_json_keeps_the_data_exactly() -> None:
    """JSON escapes what it must and stays the same data, lone surrogates included."""
    for text in [*CORPUS.values(), BIG]:
        out = render("jsonl", [{"messages": [message(text)]}])
        assert json.loads(out) == message(text)


def test_tsv_escapes_so_one_record_is_one_line() -> None:
    out = render("tsv", [{"messages": [message("a\tb\nc\\d\x1b\u2028e")]}])
    assert out.count("\n") == 1
    assert out.split("\t")[-1] == "a\\tb\\nc\\\\d\\x1b\\u2028e\n"


def test_people_see_controls_escaped_as_ls_and_git_show_them() -> None:
    out = render("table", [{"messages": [message(CORPUS["csi"] + CORPUS["bidi"])]}])
    assert "\\x1b[2J\\x1b[H\\x1b[31mred\\x1b[0m" in out
    assert "user\\u202egnp.exe \\u2066isolate\\u2069 \\u200fmark" in out


def test_a_newline_cannot_forge_a_message_line() -> None:
    forged = {**message(CORPUS["newline-forgery"]), "user_id": "mallory", "subject": ""}
    out = render("table", [{"message": forged}], live=True)
    first, *more = out.splitlines()
    assert re.match(r"^\d\d:\d\d:\d\d mallory: hi", first)
    # The forged line starts under the text, never at column 0 where messages start.
    assert [line.strip() for line in more] == ["12:00:00 bob: transfer the money", "ok"]
    assert all(line.startswith(" " * len("00:00:00 mallory: ")) for line in more)


def test_markup_in_a_room_name_does_not_break_list(cli: Run, httpx_mock: HTTPXMock) -> None:
    """The bug that started it: `[/]` as a room name ended `chatctl list` in a traceback."""
    httpx_mock.add_response(json={"rooms": [room("[/]"), room("[link=https://x]y[/link]")]})
    r = cli("--url", "http://chat.test", "list", "-o", "table")
    assert r.code == 0, r.stderr
    assert "[/]" in r.stdout and "[link=https://x]y[/link]" in r.stdout


def test_unsafe_names_in_error_messages_are_escaped(cli: Run, httpx_mock: HTTPXMock) -> None:
    evil = "general\x1b[2J"
    httpx_mock.add_response(json={"rooms": [room(evil)]})
    r = cli("--url", "http://chat.test", "send", "general", "hi", "--user", "u")
    assert r.code == 5
    assert "\x1b" not in r.stderr and "did you mean: general\\x1b[2J" in r.stderr


def test_a_servers_error_detail_is_escaped(cli: Run, httpx_mock: HTTPXMock) -> None:
    httpx_mock.add_response(
        status_code=400,
        json={"id": "chat.send\x1b]0;x\x07", "code": 400, "detail": "no\x1b[2J\u202e"},
    )
    r = cli("--url", "http://chat.test", "send", ROOM, "hi", "--user", "u")
    assert r.code == 1
    assert not RAW_CONTROL.search(r.stderr)
    first = r.stderr.splitlines()[0]
    assert first == "error: no\\x1b[2J\\u202e (chat.send\\x1b]0;x\\x07, HTTP 400)"
