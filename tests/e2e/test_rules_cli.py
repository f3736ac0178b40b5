"""The room rules as a CLI user meets them: exit statuses 4/5 with the server's detail."""

from __future__ import annotations

import json
import time
from pathlib import Path

from tests.e2e.test_join import Tail, make_room
from tests.helpers import ServerProcess, chatctl, cli_env


def test_private_room_refuses_non_members(server: ServerProcess) -> None:
    env = cli_env(server)
    r = chatctl("create", "secret", "--private", "-u", "alice", "-o", "id", env=env)
    room = r.stdout.strip()
    denied = chatctl("send", room, "hi", "--user", "mallory", env=env)
    assert denied.returncode == 4
    assert "(chat.send, HTTP 403)" in denied.stderr.splitlines()[0]
    history = chatctl("history", room, "--user", "mallory", env=env)
    assert history.returncode == 4
    assert chatctl("send", room, "hi", "--user", "alice", env=env).returncode == 0
    join = chatctl("join", room, "--user", "mallory", "--no-reconnect", env=env)
    assert join.returncode == 4 and "403" in join.stderr


def test_kicked_tail_ends_within_100ms_and_cannot_rejoin(tmp_path: Path) -> None:
    with ServerProcess(tmp_path, tcp=True) as server:
        env = cli_env(server)
        room = make_room(server, "watcher")
        r = chatctl("create", "p", "--private", "-u", "watcher", "-o", "id", env=env)
        private = r.stdout.strip()
        tail = Tail(server, private)
        tail.wait_joined()
        with server.http() as http:
            kicked = time.monotonic()
            http.post(
                "/v1/chat/Kick", json={"room_id": private, "user_id": "watcher"}
            ).raise_for_status()
        code, err = tail.finish(10)
        ended = time.monotonic()
        assert code == 4, err
        assert "kicked" in err.lower()
        # The stream closes within 100 ms (tests/server); the process exits soon after.
        assert ended - kicked < 1.0
        rejoin = chatctl("join", private, "--user", "watcher", "--no-reconnect", env=env)
        assert rejoin.returncode == 4
        assert "invite" in rejoin.stderr
        assert room


def test_tenants_cannot_see_each_other(tmp_path: Path) -> None:
    with ServerProcess(tmp_path, tcp=True, tokens=["tok-a", "tok-b"]) as server:
        a = cli_env(server, CHATCTL_TOKEN="tok-a")
        b = cli_env(server, CHATCTL_TOKEN="tok-b")
        room = json.loads(chatctl("create", "mine", "-u", "u", "-o", "json", env=a).stdout)["room"][
            "id"
        ]
        assert chatctl("list", "-o", "id", env=b).stdout == ""
        for args in (
            ["history", room, "--limit", "1"],
            ["send", room, "x", "--user", "u"],
            ["kick", room, "u", "--yes"],
            ["delete", room, "--yes"],
        ):
            r = chatctl(*args, env=b)
            assert r.returncode == 5, (args, r.stderr)
            assert "room not found" in r.stderr
        r = chatctl("list", env=cli_env(server))
        assert r.returncode == 4 and "HTTP 401" in r.stderr
        assert chatctl("history", room, env=a).returncode == 0
