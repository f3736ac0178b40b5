"""``join --exec`` / ``--cursor``: what is refused before anything is sent (pytest-httpx),
and the cursor file and CMD's environment on their own."""

from __future__ import annotations

import io
import json
import os
import time
from pathlib import Path
from typing import Any

import pytest
from pytest_httpx import HTTPXMock

from chatctl.cli import bots
from chatctl.errors import UsageError
from chatctl.output import Renderer
from tests.cli.test_requests import MESSAGE, ROOM, ROOM_OBJ, URL
from tests.conftest import Run


@pytest.fixture(autouse=True)
def server(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CHATCTL_URL", URL)
    monkeypatch.setenv("CHATCTL_TOKEN", "s3cret")
    monkeypatch.setenv("CHATCTL_USER", "user-1")


def sent(httpx_mock: HTTPXMock) -> list[tuple[str, Any]]:
    requests = httpx_mock.get_requests()
    return [(str(r.url).rsplit("/", 1)[1], json.loads(r.content)) for r in requests]


def test_cursor_on_a_plain_m3o_server_is_exit_2_before_join(
    cli: Run, httpx_mock: HTTPXMock, tmp_path: Path
) -> None:
    httpx_mock.add_response(url=f"{URL}/v1/chat/List", json={"rooms": [ROOM_OBJ]})
    r = cli("join", "general", "--exec", "true", "--cursor", str(tmp_path / "cursor"))
    assert r.code == 2
    assert r.stderr.splitlines()[0] == (
        f"error: join --cursor is not supported by {URL}: it is an m3o server without "
        "chatctl's resume extension"
    )
    assert sent(httpx_mock) == [("List", {})]  # the room's name; no Join
    assert not (tmp_path / "cursor").exists()


def test_a_saved_cursor_on_a_plain_m3o_server_names_cursor(
    cli: Run, httpx_mock: HTTPXMock, tmp_path: Path
) -> None:
    cursor = tmp_path / "cursor"
    bots.CursorFile(cursor).save(ROOM, MESSAGE["id"])
    httpx_mock.add_response(url=f"{URL}/v1/chat/List", json={"rooms": [ROOM_OBJ]})
    r = cli("join", "general", "--exec", "true", "--cursor", str(cursor))
    assert r.code == 2
    assert r.stderr.startswith("error: join --cursor is not supported by ")


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (["--exec-stop-on-error"], "error: --exec-stop-on-error needs --exec CMD"),
        (["--exec-timeout", "0"], "error: --exec-timeout needs --exec CMD"),
        (["--exec", " "], "error: --exec needs a command, e.g. --exec ./bot"),
        (["--cursor", "/nonexistent/dir/cursor"], "error: cannot write the cursor file "),
    ],
)
def test_bot_flags_that_cannot_work_are_exit_2_with_nothing_sent(
    cli: Run, httpx_mock: HTTPXMock, args: list[str], error: str
) -> None:
    r = cli("join", ROOM, *args)
    assert r.code == 2
    assert r.stderr.startswith(error)
    assert httpx_mock.get_requests() == []


def test_a_cursor_file_that_is_not_ours_is_exit_2(
    cli: Run, httpx_mock: HTTPXMock, tmp_path: Path
) -> None:
    cursor = tmp_path / "cursor"
    cursor.write_text("not a cursor\n")
    r = cli("join", ROOM, "--exec", "true", "--cursor", str(cursor))
    assert r.code == 2
    assert r.stderr.splitlines() == [
        f"error: {cursor} is not a chatctl cursor file",
        f"hint: remove {cursor} to start from now (or from --since), or name another file",
    ]
    assert httpx_mock.get_requests() == []
    assert cursor.read_text() == "not a cursor\n"


def test_the_cursor_file_is_replaced_whole_private_and_read_back(tmp_path: Path) -> None:
    path = tmp_path / "cursor"
    cursor = bots.CursorFile(path)
    assert cursor.position(ROOM) is None
    # A symlink planted at the temporary name is replaced, never written through.
    victim = tmp_path / "victim"
    victim.write_text("keep")
    (tmp_path / f".cursor.{os.getpid()}.tmp").symlink_to(victim)
    cursor.save(ROOM, MESSAGE["id"])
    assert victim.read_text() == "keep"
    assert path.stat().st_mode & 0o777 == 0o600
    assert json.loads(path.read_text()) == {"rooms": {ROOM: MESSAGE["id"]}}
    cursor.close()  # the next tail's
    assert bots.CursorFile(path).position(ROOM) == MESSAGE["id"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [".cursor.lock", "cursor", "victim"]


def test_one_tail_a_cursor_file(tmp_path: Path) -> None:
    first = bots.CursorFile(tmp_path / "cursor")
    with pytest.raises(UsageError) as second:
        bots.CursorFile(tmp_path / "cursor")
    assert second.value.message == (
        f"another chatctl join is using the cursor file {tmp_path / 'cursor'}"
    )
    assert bots.CursorFile(tmp_path / "other").position(ROOM) is None
    first.close()
    assert bots.CursorFile(tmp_path / "cursor").position(ROOM) is None


def test_message_fields_fit_an_environment_variable() -> None:
    big = "é" * 100_000  # 200,000 bytes: past Linux's 128 KiB a variable
    value = bots._env_value(big)
    assert big.startswith(value) and len(value.encode()) == bots.ENV_VALUE_BYTES
    assert bots._env_value("a\0b\ud800c") == "a\ufffdb\ufffd\ufffd\ufffdc"
    assert bots._env_value(None) == "" and bots._env_value(["x"]) == '["x"]'


def _bot(command: str, **options: Any) -> tuple[bots.Bot, io.StringIO]:
    from chatctl.cli.context import Invocation

    stderr = io.StringIO()
    inv = Invocation(stdout=io.StringIO(), stderr=stderr)
    return bots.Bot(inv, command, None, **options).attach(_Null(), {}), stderr


class _Null(Renderer):
    def __init__(self) -> None:
        super().__init__(io.StringIO())


@pytest.mark.parametrize(
    ("command", "said"),
    [
        ("exit 3", "exited 3"),
        ("kill -9 $$", "was killed by signal 9 (SIGKILL)"),
        ("sleep 30", "did not end within 0.2s and was stopped"),
    ],
)
def test_how_cmd_failed_is_said_and_stop_on_error_raises_it(command: str, said: str) -> None:
    started = time.monotonic()
    bot, stderr = _bot(command, timeout=0.2)
    bot.response({"message": MESSAGE})
    assert stderr.getvalue() == f"chatctl: --exec {command!r} {said} on message {MESSAGE['id']}\n"
    stopping, _ = _bot(command, timeout=0.2, stop_on_error=True)
    with pytest.raises(bots.ExecFailed) as failed:
        stopping.response({"message": MESSAGE})
    assert failed.value.message.endswith(f"{said} on message {MESSAGE['id']}; stopped "
                                         "(--exec-stop-on-error)")  # fmt: skip
    assert time.monotonic() - started < 5  # a timeout stops CMD's group (its sleep too)
