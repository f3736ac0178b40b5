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
import sys
import unicodedata
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
    "invisible": "al\u200dice \u200bzw\u200c \u2060wj \ufeffbom \xadshy \U000e0041tag \u3164fill",
    "comma": "alice,bob",
}
BIG = "x" * (1024 * 1024)

#: Unicode's default-ignorable code points (DerivedCoreProperties.txt, Unicode 15): what
#: draws nothing, so that a name holding one looks like a name without it.
DEFAULT_IGNORABLE = [
    (0x00AD, 0x00AD), (0x034F, 0x034F), (0x061C, 0x061C), (0x115F, 0x1160),
    (0x17B4, 0x17B5), (0x180B, 0x180F), (0x200B, 0x200F), (0x202A, 0x202E),
    (0x2060, 0x206F), (0x3164, 0x3164), (0xFE00, 0xFE0F), (0xFEFF, 0xFEFF),
    (0xFFA0, 0xFFA0), (0xFFF0, 0xFFF8), (0x1BCA0, 0x1BCA3), (0x1D173, 0x1D17A),
    (0xE0000, 0xE0FFF),
]  # fmt: skip
def ranges(chars: list[str]) -> list[tuple[str, str]]:
    """Sorted characters as runs (first, last): a class of runs is quick to search."""
    runs: list[tuple[str, str]] = []
    for c in chars:
        if runs and ord(c) == ord(runs[-1][1]) + 1:
            runs[-1] = (runs[-1][0], c)
        else:
            runs.append((c, c))
    return runs


#: every character that draws nothing, or is a format character (Cf).
INVISIBLE = sorted(
    {chr(c) for first, last in DEFAULT_IGNORABLE for c in range(first, last + 1)}
    | {chr(c) for c in range(sys.maxunicode + 1) if unicodedata.category(chr(c)) == "Cf"}
)

#: a character that must never reach a terminal raw from the data: C0 but tab and the
#: newlines we print ourselves, DEL, C1, line separators, lone surrogates, and every
#: invisible or format character (bidi controls and marks, zero-width ones, BOM, tags...).
RAW_CONTROL = re.compile(
    "[\x00-\x08\x0b-\x0c\x0e-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff"
    + "".join(f"{re.escape(a)}-{re.escape(b)}" for a, b in ranges(INVISIBLE))
    + "]"
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
    assert re.match(r"^2022-02-17 \d\d:\d\d:\d\d\.\d\d\d mallory: hi", first)
    # The forged line starts under the text, never at column 0 where messages start.
    assert [line.strip() for line in more] == ["12:00:00 bob: transfer the money", "ok"]
    assert all(line.startswith(" " * len("2022-02-17 00:00:00.000 mallory: ")) for line in more)


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


def test_invisible_characters_are_shown_escaped_and_json_keeps_them() -> None:
    """``al\\u200dice`` never passes for ``alice`` where people read (table, join, tsv,
    id); JSON is the same data (escaped as JSON escapes, so a terminal shows it too)."""
    sly = {**message("hi"), "id": "m\u200b1", "user_id": "al\u200dice"}
    room_ = {**room("general"), "user_ids": ["al\u200dice", "bob\ufeff"]}
    for fmt in ("table", "tsv"):
        out = render(fmt, [{"rooms": [room_]}, {"messages": [sly]}])
        assert "al\\u200dice" in out and "bob\\ufeff" in out and "m\\u200b1" in out
        assert "alice" not in out and "\u200d" not in out
    live = render("table", [{"message": sly}], live=True)
    assert "al\\u200dice: [hi] hi" in live
    assert render("id", [{"messages": [sly]}]) == "m\\u200b1\n"
    as_json = render("jsonl", [{"messages": [sly]}])
    assert "al\\u200dice" in as_json and json.loads(as_json) == sly


def test_every_invisible_character_is_escaped_but_an_emoji_stays_whole() -> None:
    every = "".join(INVISIBLE)
    out = render(
        "table", [{"message": {**message(every), "subject": "", "user_id": "u"}}], live=True
    )
    assert not RAW_CONTROL.search(out)
    flat = out.replace("\n", "").replace(" ", "")  # folded on an 80-column terminal
    assert "\\U000e0041" in flat and "\\xad" in flat and "\\u2064" in flat
    # A ZWJ sequence (woman, ZWJ, laptop), a red heart (VS16) and a keycap are emoji, not
    # disguises: they stay whole. The same characters after a letter are escaped.
    for emoji in ("\U0001f469\u200d\U0001f4bb", "\u2764\ufe0f", "1\ufe0f\u20e3"):
        assert emoji in render("table", [{"message": message(emoji)}], live=True)
        assert emoji in render("jsonl", [{"messages": [message(emoji)]}])
    assert "al\\ufe0fi\\u200dce" in render("tsv", [{"messages": [message("al\ufe0fi\u200dce")]}])
    assert json.loads(render("jsonl", [{"messages": [message(every)]}])) == message(every)


def test_member_lists_are_unambiguous_in_every_format() -> None:
    """``alice,bob`` and ``carol`` are two members, whatever the format."""
    tricky = {**room("r"), "user_ids": ["alice,bob", "carol", "back\\slash", "tab\tid"]}
    table = render("table", [{"rooms": [tricky]}])
    assert "alice\\,bob, carol, back\\\\slash, tab\\tid" in table
    tsv = render("tsv", [{"rooms": [tricky]}]).rstrip("\n").split("\t")
    assert len(tsv) == 6  # the tab inside an id is escaped, not a field of its own
    assert "alice\\,bob,carol,back\\\\slash,tab\\tid" in tsv
    # A reader splits on the bare commas, then unescapes each item: two lists, two answers.
    items = re.split(r"(?<!\\),", "alice\\,bob,carol")
    assert items == ["alice\\,bob", "carol"]
    for fmt in ("json", "jsonl"):
        out = render(fmt, [{"rooms": [tricky]}])
        assert tricky["user_ids"] in [d.get("user_ids") for d in _objects(out)]


def _objects(out: str) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    for doc in _json_documents(out):
        value = json.loads(doc)
        found += value.get("rooms", [value])
    return found


def test_tabs_are_expanded_from_the_text_column_and_never_break_wrapping() -> None:
    """Tab stops every 8 columns from where the text starts; on a 200-column terminal a
    long tabbed message wraps at 200 and its further lines start under its text."""
    from chatctl.output import _console, message_line

    text = "a\tb\tc " + "word " * 50 + "\nnext\tline"
    out = io.StringIO()
    _console(out, width=200).print(message_line({**message(text), "subject": "", "user_id": "u"}))
    lines = out.getvalue().splitlines()
    head = "2022-02-17 16:18:35.683 u: "
    assert lines[0].startswith(head + "a       b       c word")
    assert len(lines) == 3 and all(len(line.rstrip()) <= 200 for line in lines)
    assert len(lines[0].rstrip()) > 190  # filled to the width, not cut short by the tabs
    assert lines[2].rstrip() == " " * len(head) + "next    line"
    assert "\t" not in out.getvalue()
    assert render("tsv", [{"messages": [message("a\tb")]}]).count("\t") == 6
