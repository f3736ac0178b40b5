"""Destructive commands ask first on a terminal, and refuse without --yes off one.

Run for real: the CLI as a process on a pseudo-terminal against a real server, with
--verbose so the terminal shows every request the CLI made.
"""

from __future__ import annotations

import subprocess
import sys

from tests.helpers import ServerProcess
from tests.shell.conftest import make_room, members_of, on_pty, room_ids, shell_env


def test_delete_answered_no_sends_nothing(chat_server: ServerProcess) -> None:
    room = make_room(chat_server)
    result = on_pty("delete", room.name, "-v", env=shell_env(chat_server), answer="n")
    assert result.code == 2
    assert "Delete room" in result.terminal and "[y/N]" in result.terminal
    assert "aborted; nothing was changed" in result.terminal
    assert "/v1/chat/Delete" not in result.terminal
    assert room.id in room_ids(chat_server)


def test_delete_answered_yes_deletes(chat_server: ServerProcess) -> None:
    room = make_room(chat_server)
    result = on_pty("delete", room.name, "-v", env=shell_env(chat_server), answer="y")
    assert result.code == 0, result.terminal
    assert "/v1/chat/Delete 200" in result.terminal
    assert room.id not in room_ids(chat_server)


def test_kick_answered_no_sends_nothing(chat_server: ServerProcess) -> None:
    room = make_room(chat_server, "alice", "mallory")
    result = on_pty("kick", room.name, "mallory", "-v", env=shell_env(chat_server), answer="n")
    assert result.code == 2
    assert "Kick mallory from" in result.terminal
    assert "/v1/chat/Kick" not in result.terminal
    assert "mallory" in members_of(chat_server, room)


def test_kick_answered_yes_kicks(chat_server: ServerProcess) -> None:
    room = make_room(chat_server, "alice", "mallory")
    result = on_pty("kick", room.name, "mallory", env=shell_env(chat_server), answer="y")
    assert result.code == 0, result.terminal
    assert members_of(chat_server, room) == ["alice"]


def test_off_a_terminal_destruction_needs_yes(chat_server: ServerProcess) -> None:
    room = make_room(chat_server, "mallory")
    for args in (["delete", room.name], ["kick", room.name, "mallory"]):
        result = subprocess.run(
            [sys.executable, "-m", "chatctl", *args],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            env=shell_env(chat_server),
            timeout=30,
        )
        assert result.returncode == 2
        assert "without --yes" in result.stderr
        assert "stdin is not a terminal" in result.stderr
    assert room.id in room_ids(chat_server)
    assert members_of(chat_server, room) == ["mallory"]
