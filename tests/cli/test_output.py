"""How a live tail reads on a terminal: one line per message, a stable colour per user."""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys

from chatctl.output import make_renderer

MESSAGE = {
    "id": "m1",
    "client": "web",
    "room_id": "r",
    "user_id": "user-1",
    "sent_at": "2022-02-17T16:18:35.683008885Z",
    "subject": "Random",
    "text": "Hey whats up?",
}


def test_terminal_lines_for_messages_and_events() -> None:
    out = io.StringIO()
    printer = make_renderer("table", out, live=True)
    printer.response({"message": MESSAGE})
    printer.response({"message": {**MESSAGE, "subject": "", "text": "no subject"}})
    printer.response(
        {
            "event": {
                "type": "kicked",
                "user_id": "bob",
                "room_id": "r",
                "at": "2022-02-17T16:19:00.000000000Z",
            }
        }
    )
    assert [line.rstrip() for line in out.getvalue().splitlines()] == [
        "16:18:35 user-1: [Random] Hey whats up?",
        "16:18:35 user-1: no subject",
        "16:19:00 * bob kicked",
    ]


def test_pipe_lines_are_json_objects() -> None:
    out = io.StringIO()
    printer = make_renderer("jsonl", out, live=True)  # the default in a pipe
    printer.response({"message": MESSAGE})
    printer.response({"event": {"type": "joined", "user_id": "bob", "room_id": "r", "at": "t"}})
    assert out.getvalue().splitlines()[1] == (
        '{"type": "joined", "user_id": "bob", "room_id": "r", "at": "t"}'
    )


def test_a_users_colour_is_the_same_in_every_run() -> None:
    probe = "from chatctl.output import user_style; print(user_style('alice'), user_style('bob'))"
    colours = {
        subprocess.run(
            [sys.executable, "-c", probe],
            env={**os.environ, "PYTHONHASHSEED": seed},
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        for seed in ("1", "2", "3")
    }
    assert len(colours) == 1


def test_a_table_closed_after_a_failure_writes_nothing() -> None:
    def close_after(error: Exception | None, **close: bool) -> str:
        out = io.StringIO()
        table = make_renderer("table", out)
        with contextlib.suppress(ValueError):
            try:
                if error is not None:
                    raise error
            finally:
                table.close(**close)
        return out.getvalue()

    assert "nothing to show" in close_after(None)
    assert close_after(ValueError()) == ""  # closed in a finally the error goes through
    assert close_after(None, failed=True) == ""
