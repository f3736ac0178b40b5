"""A tail of many rooms on a terminal: each line begins with its room's name, escaped as
every name is, in the room's own colour (the same in every run); events too."""

from __future__ import annotations

import io

from rich.console import Console

from chatctl.output import LineRenderer, make_renderer, room_style
from tests.conftest import Run

MESSAGE = {
    "id": "m1",
    "client": "web",
    "room_id": "r1",
    "user_id": "user-1",
    "sent_at": "2022-02-17T16:18:35.683008885Z",
    "subject": "",
    "text": "hi",
}


def test_each_line_begins_with_its_rooms_name_escaped() -> None:
    out = io.StringIO()
    printer = make_renderer("table", out, live=True)
    assert isinstance(printer, LineRenderer)
    printer.rooms = {"r1": "ops", "r2": "evil\x1b[2J\u202e"}
    printer.response({"message": MESSAGE})
    printer.response({"message": {**MESSAGE, "room_id": "r2", "text": "boo"}})
    printer.response({"message": {**MESSAGE, "room_id": "r3", "text": "unnamed"}})
    event = {"type": "joined", "user_id": "bob", "room_id": "r1", "at": MESSAGE["sent_at"]}
    printer.response({"event": event})
    assert [line.rstrip() for line in out.getvalue().splitlines()] == [
        "ops 2022-02-17 16:18:35.683 user-1: hi",
        "evil\\x1b[2J\\u202e 2022-02-17 16:18:35.683 user-1: boo",
        "r3 2022-02-17 16:18:35.683 user-1: unnamed",
        "ops 2022-02-17 16:18:35.683 * bob joined",
    ]


def test_a_rooms_colour_is_its_own_and_the_same_every_time() -> None:
    colours = {room_style(f"room-{i}") for i in range(20)}
    assert len(colours) > 3  # rooms are told apart
    assert room_style("room-1") == room_style("room-1")
    out = io.StringIO()
    printer = make_renderer("table", out, live=True)
    assert isinstance(printer, LineRenderer)
    printer._console = Console(file=out, force_terminal=True, color_system="standard")
    printer.rooms = {"r1": "ops"}
    printer.response({"message": MESSAGE})
    assert "\x1b[" in out.getvalue() and "ops" in out.getvalue()


def test_flags_of_one_room_are_refused_for_many_before_anything_is_sent(cli: Run) -> None:
    for flags in (["--history", "2"], ["--exec", "true"], ["--cursor", "pos.json"]):
        r = cli("join", "--all", *flags)
        assert r.code == 2, (flags, r.stderr)
        assert "one ROOM" in r.stderr
    r = cli("join", "ops", "general", "--history", "1")
    assert r.code == 2 and "--history follows one room" in r.stderr
