"""Bots: ``chatctl join --exec CMD --cursor FILE`` as a user runs one, real processes
against a real ``chatctl serve``: a bot that replies with ``chatctl send``, failures
reported or ending the tail (the kill -9 drill is tests/faults/test_bots.py)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import ServerProcess, cli_env, wait_for

BIN = Path(sys.executable).parent
CLI_DOC = Path(__file__).resolve().parents[2] / "docs" / "cli.md"
CHATCTL = (sys.executable, "-m", "chatctl")


def api(server: ServerProcess, endpoint: str, body: dict[str, Any], token: str | None = None) -> Any:  # noqa: E501
    with server.http(token) as client:
        r = client.post(f"/v1/chat/{endpoint}", json=body)
    r.raise_for_status()
    return r.json()


def running_in_group(pgid: int) -> list[int]:
    """The processes of a process group that are still running (not zombies, which a
    container's init may leave unreaped)."""
    running = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            running.append(int(stat.parent.name))
    return running


def docs_bot() -> str:
    """The bot script of docs/cli.md's "Bots: join --exec"."""
    section = CLI_DOC.read_text().split("\n## Bots: join --exec\n", 1)[1].split("\n## ")[0]
    found = re.search(r"```sh\n(#!/bin/sh\n.*?)```", section, re.S)
    assert found, "docs/cli.md's bots section has no bot script"
    return found.group(1)


def chatctl_in(cwd: Path, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """The real CLI as a subprocess, in ``cwd`` (where the bot script is)."""
    return subprocess.run(
        [*CHATCTL, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=60
    )


def script(path: Path, text: str) -> str:
    path.write_text("#!/bin/sh\n" + text)
    path.chmod(0o755)
    return f"./{path.name}"


@pytest.mark.one_backend
def test_a_bot_replies_with_chatctl_send_to_the_room_it_was_told(
    start_server: Any, tmp_path: Path
) -> None:
    """The bot's chatctl is told nothing but what join put in its environment: the URL
    was a flag, the user a flag; the token is the user's own CHATCTL_TOKEN."""
    server: ServerProcess = start_server(tokens=["bot-secret"])
    room = api(server, "Create", {"name": "help", "user_ids": ["alice"]}, "bot-secret")["room"]
    # docs/cli.md's bot, as written, run by a bot that first keeps what CMD was given.
    (tmp_path / "pingbot").write_text(docs_bot())
    (tmp_path / "pingbot").chmod(0o755)
    bot = script(
        tmp_path / "bot",
        'cat > "stdin.$CHATCTL_MESSAGE_ID"\n'
        'env > "env.$CHATCTL_MESSAGE_ID"\n'
        "exec ./pingbot\n",
    )
    env = cli_env(PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}", CHATCTL_TOKEN="bot-secret")
    proc = subprocess.Popen(
        [*CHATCTL, "--url", server.url, "join", "help", "--user", "helper", "--exec", bot,
         "--count", "1"],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        members = lambda: api(server, "List", {}, "bot-secret")["rooms"][0]["user_ids"]  # noqa: E731
        wait_for(lambda: "helper" in members() or proc.poll() is not None, 20, "join")
        ping = {"room_id": room["id"], "user_id": "alice", "text": "!ping"}
        sent = api(server, "Send", ping, "bot-secret")["message"]
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    history = api(server, "History", {"room_id": room["id"]}, "bot-secret")["messages"]
    reply = history[-1]
    assert (reply["user_id"], reply["text"]) == ("helper", "pong to alice")
    assert json.loads(out) == {"message": reply}  # CMD's stdout is the tail's
    assert json.loads((tmp_path / f"stdin.{sent['id']}").read_text()) == sent
    seen = dict(
        line.split("=", 1) for line in (tmp_path / f"env.{sent['id']}").read_text().splitlines()
        if "=" in line
    )  # fmt: skip
    assert {k: seen.get(k) for k in (
        "CHATCTL_MESSAGE_ID", "CHATCTL_ROOM_ID", "CHATCTL_USER_ID", "CHATCTL_TEXT",
        "CHATCTL_URL", "CHATCTL_USER",
    )} == {
        "CHATCTL_MESSAGE_ID": sent["id"], "CHATCTL_ROOM_ID": room["id"],
        "CHATCTL_USER_ID": "alice", "CHATCTL_TEXT": "!ping",
        "CHATCTL_URL": server.url, "CHATCTL_USER": "helper",
    }  # fmt: skip


@pytest.mark.one_backend
def test_a_failing_cmd_is_reported_and_stop_on_error_ends_the_tail_before_its_message(
    start_server: Any, tmp_path: Path
) -> None:
    server: ServerProcess = start_server(tokens=["tok-secret"])
    env = cli_env(PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}")
    room = api(server, "Create", {"name": "b", "user_ids": ["alice", "bot"]}, "tok-secret")
    room_id = room["room"]["id"]
    start = api(server, "Send", {"room_id": room_id, "user_id": "alice", "text": "start"},
                "tok-secret")["message"]["id"]  # fmt: skip
    for text in ("one", "fail", "three"):
        api(server, "Send", {"room_id": room_id, "user_id": "alice", "text": text}, "tok-secret")
    bot = script(
        tmp_path / "bot",
        'env > "env.$CHATCTL_TEXT"\n'
        '[ "$CHATCTL_TEXT" = fail ] && exit 3\n'
        'echo "handled $CHATCTL_TEXT"\n',
    )
    # --token as a flag: never handed to CMD in a variable of chatctl's making.
    base = ["--url", server.url, "--token", "tok-secret", "join", room_id, "--user", "bot"]

    went_on = chatctl_in(tmp_path, *base, "--since", start, "--exec", bot, "--cursor", "all",
                         "-c", "3", env=env)  # fmt: skip
    assert went_on.returncode == 0, went_on.stderr
    assert went_on.stdout.splitlines() == ["handled one", "handled three"]
    (report,) = went_on.stderr.splitlines()
    assert report.startswith(f"chatctl: --exec '{bot}' exited 3 on message ")
    assert "tok-secret" not in (tmp_path / "env.one").read_text()

    stopped = chatctl_in(tmp_path, *base, "--since", start, "--exec", bot, "--cursor", "part",
                         "--exec-stop-on-error", env=env)  # fmt: skip
    assert stopped.returncode == 1
    assert stopped.stdout.splitlines() == ["handled one"]
    assert stopped.stderr.splitlines()[0].endswith("; stopped (--exec-stop-on-error)")
    assert (tmp_path / "part").stat().st_mode & 0o777 == 0o600
    # Ctrl-C while CMD runs: CMD gets it too, chatctl exits 130 once CMD has ended, and
    # the message stays ahead of the cursor.
    saved = (tmp_path / "part").read_text()
    # The trap is set before the pid is written: the pid says CMD is ready for SIGINT.
    slow = "trap 'echo interrupted > got; exit 130' INT; echo $$ > pid; sleep 30 & wait"
    proc = subprocess.Popen(
        [*CHATCTL, *base, "--exec", slow, "--cursor", "part"],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        wait_for(lambda: (tmp_path / "pid").exists() or proc.poll() is not None, 20, "CMD")
        wait_for(lambda: (tmp_path / "pid").read_text().strip(), 5, "CMD's pid")
        proc.send_signal(signal.SIGINT)
        assert proc.wait(10) == 130, proc.communicate()
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()
    assert (tmp_path / "got").read_text() == "interrupted\n"
    assert running_in_group(int((tmp_path / "pid").read_text())) == []  # its sleep too
    assert (tmp_path / "part").read_text() == saved
    # The failed message is still ahead of the cursor: the next run starts with it.
    again = chatctl_in(tmp_path, *base, "--since", start, "--exec", 'echo "again $CHATCTL_TEXT"',
                       "--cursor", "part", "-c", "2", env=env)  # fmt: skip
    assert again.returncode == 0, again.stderr
    assert again.stdout.splitlines() == ["again fail", "again three"]
