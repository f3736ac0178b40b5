"""The real CLI against the real server: a subprocess server on a Unix socket, a real
SQLite file, the CLI as a user runs it."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.helpers import ServerProcess, chatctl, cli_env

STAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z$")


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    return result.stdout


def test_all_nine_endpoints(server: ServerProcess) -> None:
    env = cli_env(server, CHATCTL_USER="user-1")
    room = json.loads(
        ok(chatctl("create", "general", "-d", "The general chat room", "-o", "json", env=env))
    )["room"]
    assert set(room) == {"id", "name", "description", "created_at", "user_ids", "private"}
    assert room["user_ids"] == [] and room["private"] is False and STAMP.match(room["created_at"])

    invited = json.loads(ok(chatctl("invite", "general", "user-1", "-o", "json", env=env)))
    assert invited["room"]["user_ids"] == ["user-1"]

    sent = json.loads(
        ok(
            chatctl(
                "send",
                "general",
                "Hey whats up?",
                "--subject",
                "Random",
                "--client",
                "web",
                "-o",
                "json",
                env=env,
            )
        )
    )["message"]
    assert {k: sent[k] for k in ("client", "room_id", "user_id", "subject", "text")} == {
        "client": "web",
        "room_id": room["id"],
        "user_id": "user-1",
        "subject": "Random",
        "text": "Hey whats up?",
    }
    assert STAMP.match(sent["sent_at"])

    assert json.loads(ok(chatctl("history", "general", "-o", "json", env=env))) == {
        "messages": [sent]
    }
    assert ok(chatctl("list", "-o", "id", env=env)).split() == [room["id"]]
    assert ok(chatctl("list", "--user", "nobody", "-o", "id", env=env)) == ""

    # join: user-2 tails; user-1's message arrives as one JSON line.
    tail = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "chatctl",
            "join",
            "general",
            "--user",
            "user-2",
            "--count",
            "1",
            "--events",
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        # Wait until user-2 has joined (Join adds the user), then send.
        from tests.helpers import wait_for

        wait_for(
            lambda: (
                "user-2" in ok(chatctl("list", "--user", "user-2", "-o", "tsv", env=env)) or None
            ),
            20,
            "user-2 to join",
        )
        ok(chatctl("send", "general", "for the tail", env=env))
        out, err = tail.communicate(timeout=20)
    finally:
        tail.kill()
    assert tail.returncode == 0, err
    assert json.loads(out.splitlines()[-1])["text"] == "for the tail"

    left = json.loads(ok(chatctl("leave", "general", "--user", "user-2", "-o", "json", env=env)))
    assert "user-2" not in left["room"]["user_ids"]
    kicked = json.loads(ok(chatctl("kick", "general", "user-1", "--yes", "-o", "json", env=env)))
    assert kicked["room"]["user_ids"] == []
    deleted = json.loads(ok(chatctl("delete", "general", "--yes", "-o", "json", env=env)))
    assert deleted["room"]["id"] == room["id"]
    assert ok(chatctl("list", "-o", "id", env=env)) == ""


def test_errors_from_the_real_server(server: ServerProcess) -> None:
    env = cli_env(server, CHATCTL_USER="u")
    missing = "0190f2b4-0000-7000-8000-000000000000"
    r = chatctl("history", missing, "--limit", "1", env=env)
    assert r.returncode == 5
    assert r.stderr.splitlines()[0] == "error: room not found (chat.history, HTTP 404)"
    ok(chatctl("create", "r", env=env))
    r = chatctl("send", "r", "hi", env=env)
    assert r.returncode == 1
    assert "user is not in the room" in r.stderr and "hint: invite" in r.stderr


@pytest.mark.one_backend
def test_closed_pipe_is_quiet(server: ServerProcess) -> None:
    env = cli_env(server)
    for n in range(3):
        ok(chatctl("create", f"room-{n}", env=env))
    shell = subprocess.run(
        [
            "bash",
            "-o",
            "pipefail",
            "-c",
            f"{sys.executable} -m chatctl list -o jsonl | head -1",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert shell.returncode == 0, shell.stderr
    assert shell.stderr == ""
    assert len(shell.stdout.splitlines()) == 1


def test_ndjson_batch_against_the_server(server: ServerProcess) -> None:
    env = cli_env(server, CHATCTL_USER="u")
    room = json.loads(ok(chatctl("create", "batch", "-u", "u", "-o", "json", env=env)))["room"][
        "id"
    ]
    lines = "\n".join(json.dumps({"room_id": room, "text": f"n{i}"}) for i in range(50))
    out = ok(chatctl("send", "-i", "-", "-o", "jsonl", env=env, input=lines))
    assert [json.loads(x)["text"] for x in out.splitlines()] == [f"n{i}" for i in range(50)]
    history = ok(chatctl("history", room, "-o", "tsv", env=env))
    assert [row.split("\t")[6] for row in history.splitlines()] == [f"n{i}" for i in range(50)]


def test_concurrent_senders_one_order(server: ServerProcess) -> None:
    """10 CLI processes x 100 messages into one room: all 1,000 stored, one order for all."""
    env = cli_env(server)
    room = json.loads(ok(chatctl("create", "busy", "-o", "json", env=env)))["room"]["id"]
    senders = [f"s{n}" for n in range(10)]
    for s in senders:
        ok(chatctl("invite", room, s, env=env))

    def send_all(user: str) -> str:
        text = "".join(f"{user}-{i}\n" for i in range(100))
        return ok(
            chatctl(
                "send",
                room,
                "--lines",
                "--user",
                user,
                "-o",
                "id",
                env=env,
                input=text,
                timeout=120,
            )
        )

    with ThreadPoolExecutor(10) as pool:
        acked = [line for out in pool.map(send_all, senders) for line in out.split()]
    assert len(acked) == 1000 == len(set(acked))

    readers = [
        json.loads(ok(chatctl("history", room, "-o", "json", env=env)))["messages"]
        for _ in range(3)
    ]
    orders = [[m["id"] for m in msgs] for msgs in readers]
    assert orders[0] == orders[1] == orders[2]
    assert sorted(orders[0]) == sorted(acked)
    # Ids are UUIDv7 in the room's order, and each sender's messages keep their own order.
    assert orders[0] == sorted(orders[0])
    for s in senders:
        mine = [m["text"] for m in readers[0] if m["user_id"] == s]
        assert mine == [f"{s}-{i}" for i in range(100)]


def test_fresh_home_uses_the_local_server_and_leaves_nothing(tmp_path: object) -> None:
    import os
    from pathlib import Path

    from tests.helpers import fresh_home_env

    home = Path(str(tmp_path)) / "home"
    env = fresh_home_env(home)
    try:
        ok(chatctl("create", "general", "-u", env.get("USER", "root"), env=env))
        user = ok(chatctl("list", "-o", "json", env=env))
        members = json.loads(user)["rooms"][0]["user_ids"]
        ok(chatctl("send", "general", "hello from a fresh home", "--user", members[0], env=env))
        history = json.loads(ok(chatctl("history", "general", "-o", "json", env=env)))["messages"]
        assert [m["text"] for m in history] == ["hello from a fresh home"]
        status = ok(chatctl("serve", "--status", env=env))
        pid = int(re.search(r"pid (\d+)", status).group(1))  # type: ignore[union-attr]
        sock = home / "run" / "chatctl" / "server.sock"
        assert sock.exists() and (sock.stat().st_mode & 0o777) == 0o600
        db = home / ".local/share/chatctl/chat.db"
        assert (db.stat().st_mode & 0o777) == 0o600
    finally:
        chatctl("serve", "--stop", env=env)
    from tests.helpers import wait_for

    def gone() -> bool:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        return False

    wait_for(gone, 10, "the local server to exit")
    assert chatctl("serve", "--status", env=env).returncode == 3


def test_the_acting_user_is_the_same_for_every_command(server: ServerProcess) -> None:
    """No --user anywhere: the login name acts. history of a private room works as send
    does, and a refusal's hint says how to act as someone else."""
    import getpass

    me = getpass.getuser()
    env = cli_env(server)
    room = ok(chatctl("create", "mine", "--private", "-u", me, "-o", "id", env=env)).strip()
    ok(chatctl("send", room, "only members read this", env=env))
    history = json.loads(ok(chatctl("history", room, "-o", "json", env=env)))["messages"]
    assert [m["text"] for m in history] == ["only members read this"]
    refused = chatctl("history", room, "--user", "mallory", env=env)
    assert refused.returncode == 4
    assert refused.stderr.splitlines()[1].startswith("hint: ") and "--user" in refused.stderr
