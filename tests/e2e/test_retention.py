"""Retention (issue 26, part 3): ``serve --retain`` removes what is past it within one
look (``--retain-check``) on both stores, a room may keep less (``chatctl retain``, its
creator or an admin token), and a cursor older than what a room keeps meets its gap."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.helpers import ServerProcess, chatctl, cli_env, wait_for

START = "00000000-0000-0000-0000-000000000000"


def test_messages_past_retain_go_and_a_resume_from_before_them_gets_the_gap(
    start_server: Callable[..., ServerProcess],
) -> None:
    check = 0.2
    server = start_server(extra=["--retain", "1s", "--retain-check", str(check)])
    env = cli_env(server)
    with server.http() as http:
        created = http.post("/v1/chat/Create", json={"name": "general", "user_ids": ["alice"]})
        room = created.json()["room"]["id"]
        ids = [
            http.post(
                "/v1/chat/Send", json={"room_id": room, "user_id": "alice", "text": f"m{n}"}
            ).json()["message"]["id"]
            for n in range(3)
        ]
    # Gone within one look once past --retain (the last one sent 1 s before).
    sent_last = time.monotonic()
    wait_for(lambda: server.history(room) == [], 10, "the messages to be removed")
    assert time.monotonic() - sent_last < 1 + 2 * check + 3  # a look, not a sweep hours later

    # Resuming from an id retention removed: the gap, named, never a silent skip.
    joined = chatctl(
        "join", "general", "-u", "bob", "--since", ids[0], "--timeout", "0.5", "--events",
        "-o", "jsonl", env=env,
    )  # fmt: skip
    assert joined.returncode == 0, joined.stderr
    assert "were removed by the room's retention" in joined.stderr
    assert ids[-1] in joined.stderr  # the last one removed
    gap = json.loads(joined.stdout.splitlines()[0])
    assert gap["type"] == "gap" and gap["through"] == ids[-1]
    # Paging to such a cursor: the same, on stderr; stdout stays the messages.
    paged = chatctl("history", "general", "--after", ids[1], "-o", "jsonl", env=env)
    assert paged.returncode == 0 and paged.stdout == ""
    assert "were removed by the room's retention" in paged.stderr
    with server.http() as http:
        answer = http.post("/v1/chat/History", json={"room_id": room, "before": ids[1]}).json()
        assert answer["gap"]["through"] == ids[-1] and answer["messages"] == []
        # A cursor no older than what the room keeps: no gap.
        assert "gap" not in http.post("/v1/chat/History", json={"room_id": room}).json()


@pytest.mark.one_backend
def test_only_the_creator_or_an_admin_token_sets_a_room_s_retention(
    start_server: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text(
        "admin-token tenant=acme admin\n"
        "alice-token tenant=acme user=alice\n"
        "bob-token tenant=acme user=bob\n"
    )
    tokens.chmod(0o600)
    server = start_server(extra=["--tokens-file", str(tokens), "--retain", "30d"])
    with server.http("alice-token") as alice, server.http("bob-token") as bob:
        room = alice.post("/v1/chat/Create", json={"name": "g", "user_ids": ["bob"]})
        room_id = room.json()["room"]["id"]
        refused = bob.post("/v1/chat/Retain", json={"room_id": room_id, "retain": "1d"})
        assert refused.status_code == 403
        assert "only the room's creator or an admin token may set its retention" in refused.text
        mine = alice.post("/v1/chat/Retain", json={"room_id": room_id, "retain": "90d"})
        # The server's --retain is the ceiling: a room may keep less, never more.
        assert mine.json()["retention"] == {
            "room_id": room_id,
            "retain": "90d",
            "server_retain": "30d",
            "effective": "30d",
            "expired_through": "",
            "expired_at": "",
        }
    with server.http("admin-token") as admin:
        set_ = admin.post("/v1/chat/Retain", json={"group_id": room_id, "retain": "12h"})
        assert set_.json()["retention"]["effective"] == "12h"
        assert set_.json()["retention"]["group_id"] == room_id  # m3o's final edition
        bad = admin.post("/v1/chat/Retain", json={"room_id": room_id, "retain": "1 fortnight"})
        assert bad.status_code == 400 and "not a duration" in bad.text


@pytest.mark.one_backend
def test_retain_command_sets_shows_and_clears(start_server: Callable[..., ServerProcess]) -> None:
    """The storage is the same as --retain's (above, on both stores): one backend."""
    server = start_server(extra=["--retain-check", "0.1"])
    env = cli_env(server)
    with server.http() as http:
        created = http.post("/v1/chat/Create", json={"name": "ops", "user_ids": ["alice"]})
        room = created.json()["room"]["id"]
        http.post("/v1/chat/Send", json={"room_id": room, "user_id": "alice", "text": "old"})
    shown = chatctl("retain", "ops", "1s", "-o", "json", env=env)
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["retention"]["effective"] == "1s"
    wait_for(lambda: server.history(room) == [], 10, "the room's own retention to apply")
    cleared = json.loads(chatctl("retain", "ops", "off", "-o", "json", env=env).stdout)
    assert cleared["retention"]["retain"] == "" and cleared["retention"]["effective"] == ""
    assert cleared["retention"]["expired_through"] != ""
    bad = chatctl("retain", "ops", "soon", env=env)
    assert bad.returncode == 2 and "not a duration" in bad.stderr


CLI_DOC = Path(__file__).resolve().parents[2] / "docs/cli.md"


@pytest.mark.one_backend
def test_the_docs_retain_recipe(start_server: Callable[..., ServerProcess]) -> None:
    """docs/cli.md's recipe, as written: the room keeps a week; the gap on stderr only."""
    import subprocess

    recipe = CLI_DOC.read_text().split("# Keep ops for a week", 1)[1].splitlines()[1]
    server = start_server(extra=["--retain", "1s", "--retain-check", "0.1"])
    with server.http() as http:
        room = http.post("/v1/chat/Create", json={"name": "ops", "user_ids": ["al"]}).json()
        room_id = room["room"]["id"]
        sent, _ = (
            http.post("/v1/chat/Send", json={"room_id": room_id, "user_id": "al", "text": text})
            for text in ("x", "y")
        )
    wait_for(lambda: server.history(room_id) == [], 10, "the messages to be removed")
    env = cli_env(server, OLD_ID=sent.json()["message"]["id"])
    env["PATH"] = f"{Path(sys.executable).parent}:{env['PATH']}"
    done = subprocess.run(["bash", "-c", recipe], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    # stdout: retain's answer (the server's 1s is shorter than a week), then no message.
    assert json.loads(done.stdout)["retention"]["effective"] == "1s"
    assert "removed by the room's retention" in done.stderr


@pytest.mark.one_backend  # the gap itself is proven on both stores above
def test_a_tail_of_many_rooms_tells_a_room_s_gap_on_stderr_as_a_tail_of_one_does(
    start_server: Callable[..., ServerProcess],
) -> None:
    """``join ROOM ROOM`` and ``join --all`` (one JoinRooms stream) from a cursor older
    than what a room keeps: the gap on stderr, after the room's name; stdout stays the
    messages, and has the gap event with --events (as ``join ROOM --events``)."""
    server = start_server(extra=["--retain", "1s", "--retain-check", "0.2"])
    env = cli_env(server)
    with server.http() as http:
        general, _ops = (
            http.post("/v1/chat/Create", json={"name": n, "user_ids": ["alice"]}).json()["room"][
                "id"
            ]
            for n in ("general", "ops")
        )
        ids = [
            http.post(
                "/v1/chat/Send", json={"room_id": general, "user_id": "alice", "text": f"m{n}"}
            ).json()["message"]["id"]
            for n in range(2)
        ]
    wait_for(lambda: server.history(general) == [], 10, "the messages to be removed")

    named = chatctl(
        "join", "general", "ops", "-u", "alice", "--since", ids[0], "--timeout", "0.5",
        "-o", "jsonl", env=env,
    )  # fmt: skip
    assert named.returncode == 0, named.stderr
    assert named.stdout == ""
    told = [line for line in named.stderr.splitlines() if "room's retention" in line]
    assert len(told) == 1 and told[0].startswith("chatctl: general: messages up to "), named.stderr
    assert ids[-1] in told[0]  # the last one removed

    every = chatctl(
        "join", "--all", "-u", "alice", "--since", ids[0], "--timeout", "0.5", "--events",
        "-o", "jsonl", env=env,
    )  # fmt: skip
    assert every.returncode == 0, every.stderr
    assert "general: messages up to " in every.stderr
    gap = json.loads(every.stdout.splitlines()[0])
    assert (gap["type"], gap["room_id"], gap["through"]) == ("gap", general, ids[-1])
