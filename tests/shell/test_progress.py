"""Batch work shows a progress bar on stderr when stderr is a terminal, and nothing at all
in a pipe: scripts and logs see only the data on stdout and real diagnostics on stderr."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from tests.helpers import ServerProcess
from tests.shell.conftest import make_room, on_pty, shell_env

LINES = "".join(f"line {n}\n" for n in range(5))


def batches(room: str) -> list[tuple[list[str], str | None]]:
    """Batch invocations (arguments, stdin): several USERs, --lines, NDJSON input."""
    ndjson = "".join(json.dumps({"room_id": room, "text": f"m{n}"}) + "\n" for n in range(4))
    return [
        (["invite", room, "u1", "u2", "u3", "u4"], None),
        (["send", room, "--lines"], LINES),
        (["send", "--input", "-"], ndjson),
    ]


def test_no_progress_in_a_pipe(chat_server: ServerProcess) -> None:
    room = make_room(chat_server, "alice")
    for args, stdin in batches(room.id):
        result = subprocess.run(
            [sys.executable, "-m", "chatctl", *args, "-o", "id"],
            input=stdin or "",
            capture_output=True,
            text=True,
            env=shell_env(chat_server, CHATCTL_USER="alice"),
            timeout=30,
        )
        assert result.returncode == 0, result.stderr
        assert result.stderr == ""
        assert result.stdout.strip()  # the data itself still arrives


@pytest.mark.parametrize("n", range(3))
def test_progress_on_a_terminal(chat_server: ServerProcess, n: int) -> None:
    room = make_room(chat_server, "alice")
    args, stdin = batches(room.id)[n]
    endpoint = "Invite" if args[0] == "invite" else "Send"
    result = on_pty(
        *args,
        "-o",
        "id",
        env=shell_env(chat_server, CHATCTL_USER="alice"),
        stdout_on_pty=False,
        stdin_data=stdin,
    )
    assert result.code == 0, result.terminal
    assert endpoint in result.terminal  # the bar's label, drawn on the terminal
    assert re.search(r"\d+/(\d+|\?)", result.terminal)  # and its count of done items
    assert result.stdout is not None and endpoint not in result.stdout


def test_join_says_when_it_is_live_on_a_terminal_only(chat_server: ServerProcess) -> None:
    """A person watching a quiet room sees that the tail is live; a script's stderr gets
    nothing of it."""
    room = make_room(chat_server)
    args = ["join", room.name, "--user", "watcher", "--timeout", "1"]
    shown = on_pty(*args, env=shell_env(chat_server), stdout_on_pty=False)
    assert shown.code == 0, shown.terminal
    assert f"chatctl: joined {room.name}, waiting for messages" in shown.terminal
    assert shown.stdout == ""
    piped = subprocess.run(
        [sys.executable, "-m", "chatctl", *args],
        capture_output=True,
        text=True,
        env=shell_env(chat_server),
        timeout=30,
    )
    assert piped.returncode == 0, piped.stderr
    assert piped.stderr == "" and piped.stdout == ""
