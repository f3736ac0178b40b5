"""Deleting a message (issue 25, extension ``delete-message``) as a team uses it: a real
``chatctl serve`` with user and admin tokens, once on SQLite and once on PostgreSQL.

Its author, the room's creator and an admin token may delete a message; another member
is refused (403, exit 4), and so is a user token naming someone else. A tail that printed
the message prints its deletion (``join --events``, and a group-edition stream hears it
with ``group_id``); a tail resumed from before it never gets it, nor its text; History
and its paging go on as if it had never been sent, with its id still a cursor; deleting
it again, or retrying with the same Idempotency-Key, answers the same and tells no one
twice; and its text is gone from the database (the message's row and its Send's kept
answer), not only hidden.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests import postgres
from tests.conftest import Run
from tests.e2e.test_team_server import team_server
from tests.helpers import ServerProcess, cli_env, wait_for

ADMIN = "tok-del-admin"
ALICE = "tok-del-alice"  # creates the room
BOB = "tok-del-bob"
CAROL = "tok-del-carol"
MALLORY = "tok-del-mallory"  # tails the room
TOKENS = {
    ADMIN: ("tenant=acme admin", True),
    ALICE: ("tenant=acme user=alice", True),
    BOB: ("tenant=acme user=bob", True),
    CAROL: ("tenant=acme user=carol", True),
    MALLORY: ("tenant=acme user=mallory", True),
}
NIL = "00000000-0000-0000-0000-000000000000"


@pytest.fixture(params=postgres.BACKENDS)
def team(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ServerProcess]:
    with team_server(request.param, tmp_path, TOKENS) as server:
        yield server


def post(
    server: ServerProcess, token: str, endpoint: str, body: dict[str, Any], **headers: str
) -> httpx.Response:
    with server.http(token) as client:
        return client.post(f"/v1/chat/{endpoint}", json=body, headers=headers)


def ok(server: ServerProcess, token: str, endpoint: str, body: dict[str, Any], **h: str) -> Any:
    r = post(server, token, endpoint, body, **h)
    assert r.status_code == 200, (endpoint, body, r.text)
    return r.json()


class Lines:
    """What a stream printed, line by line, read in a thread."""

    def __init__(self) -> None:
        self.lines: list[dict[str, Any]] = []

    def read(self, lines: Iterator[str]) -> None:
        with contextlib.suppress(Exception):  # the stream is closed under it at the end
            for line in lines:
                if line.strip():
                    self.lines.append(json.loads(line))

    def events(self) -> list[dict[str, Any]]:
        return [
            line.get("event", line) for line in self.lines if "event" in line or "type" in line
        ]

    def wait(self, count: int, what: str) -> None:
        wait_for(lambda: len(self.lines) >= count, 20, what)


def test_who_may_delete_and_what_every_reader_sees(
    team: ServerProcess, cli: Run, monkeypatch: pytest.MonkeyPatch
) -> None:
    # alice's public room; bob and carol in it; messages of bob's and carol's.
    room = ok(team, ALICE, "Create", {"name": "general", "user_ids": ["bob", "carol"]})
    rid = room["room"]["id"]
    texts = [("bob", "secret-one"), ("carol", "secret-two"), ("bob", "kept-three")]
    texts += [("carol", "secret-four"), ("bob", "kept-five")]
    token_of = {"bob": BOB, "carol": CAROL}
    ids = []
    for n, (user, text) in enumerate(texts, 1):
        sent = ok(team, token_of[user], "Send", {"room_id": rid, "text": text}, **{
            "Idempotency-Key": f"send-{n}"
        })  # fmt: skip
        ids.append(sent["message"]["id"])
    m1, m2, m3, m4, m5 = ids

    # A live tail of mallory's (room edition, through the CLI) and a group-edition stream
    # of an admin's, each having printed all five before anything is deleted.
    tail = subprocess.Popen(
        [sys.executable, "-m", "chatctl", "join", rid, "--events", "--include-own",
         "--history", "5", "-o", "jsonl"],
        env=cli_env(team, CHATCTL_TOKEN=MALLORY), stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    printed = Lines()
    assert tail.stdout is not None
    reader = threading.Thread(target=printed.read, args=(tail.stdout,), daemon=True)
    reader.start()
    group = Lines()
    watcher = httpx.Client(base_url=team.url, headers={"Authorization": f"Bearer {ADMIN}"})
    join = {"group_id": rid, "user_id": "erin", "events": True, "history": 5}
    stream = watcher.send(watcher.build_request("POST", "/v1/chat/Join", json=join), stream=True)
    threading.Thread(target=group.read, args=(stream.iter_lines(),), daemon=True).start()
    try:
        printed.wait(5, "the tail to print the five messages")
        group.wait(5, "the group stream to replay the five messages")
        assert [m["text"] for m in printed.lines[:5]] == [t for _, t in texts]

        def delete(token: str, message: str, *flags: str) -> Any:
            monkeypatch.setenv("CHATCTL_URL", team.url)
            monkeypatch.setenv("CHATCTL_TOKEN", token)
            return cli("delete-message", rid, message, "-o", "json", *flags)

        # Another member: refused, nothing changed. A user token naming another user: too.
        refused = delete(CAROL, m1)
        assert refused.code == 4, refused.stderr
        assert "only the message's author, the room's creator or an admin" in refused.stderr
        as_other = delete(BOB, m2, "--user", "carol")
        assert as_other.code == 4 and "acts only as user bob" in as_other.stderr
        # The author; the room's creator (a message of someone else's); an admin token,
        # in the group edition.
        by_author = delete(BOB, m1)
        assert by_author.code == 0, by_author.stderr
        erased = json.loads(by_author.stdout)["message"]
        assert (erased["id"], erased["user_id"], erased["text"], erased["subject"]) == (
            m1, "bob", "", ""
        )  # fmt: skip
        assert delete(ALICE, m2).code == 0
        key = {"Idempotency-Key": "delete-four"}
        by_admin = ok(team, ADMIN, "DeleteMessage", {"group_id": rid, "message_id": m4}, **key)
        assert by_admin["message"]["group_id"] == rid and "room_id" not in by_admin["message"]
        assert by_admin["message"]["text"] == ""
        # Again: the same answer, nothing told; the same key: its first answer.
        again = delete(BOB, m1)
        assert again.code == 0 and json.loads(again.stdout)["message"] == erased
        retried = ok(team, ADMIN, "DeleteMessage", {"group_id": rid, "message_id": m4}, **key)
        assert retried == by_admin
        unknown = post(team, ADMIN, "DeleteMessage", {"room_id": rid, "message_id": NIL})
        assert unknown.status_code == 404 and unknown.json()["detail"] == "message not found"

        # Each live stream printed each deletion once, in order, the group one in its names.
        ok(team, BOB, "Send", {"room_id": rid, "text": "after"})
        printed.wait(9, "the tail to print three deletions and the next message")
        group.wait(8, "the group stream to hear three deletions and the next message")
        assert [(e["type"], e["message_id"], e["user_id"]) for e in printed.events()] == [
            ("message_deleted", m1, "bob"),
            ("message_deleted", m2, "carol"),
            ("message_deleted", m4, "carol"),
        ]
        assert printed.lines[-1]["text"] == "after"
        group_deleted = [e for e in group.events() if e["type"] == "message_deleted"]
        assert [e["message_id"] for e in group_deleted] == [m1, m2, m4]
        assert all(e["group_id"] == rid and "room_id" not in e for e in group_deleted)
    finally:
        tail.terminate()
        tail.wait(10)
        reader.join(5)
        tail.stdout.close()
        stream.close()
        watcher.close()

    # History and its paging: as if never sent; a deleted message's id is still a cursor.
    def history(**paging: Any) -> list[str]:
        body = {"room_id": rid, **paging}
        return [m["text"] for m in ok(team, ADMIN, "History", body)["messages"]]

    assert history() == ["kept-three", "kept-five", "after"]
    assert history(limit=2) == ["kept-five", "after"]
    assert history(after=m1, limit=1) == ["kept-three"]
    assert history(after=m2) == ["kept-three", "kept-five", "after"]
    assert history(before=m4, limit=5) == ["kept-three"]

    # A tail resumed from before the deleted messages replays none of them.
    resumed = subprocess.run(
        [sys.executable, "-m", "chatctl", "join", rid, "--since", m1, "--count", "3",
         "-o", "jsonl"],
        env=cli_env(team, CHATCTL_TOKEN=MALLORY), capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr
    assert [json.loads(line)["id"] for line in resumed.stdout.splitlines()][:2] == [m3, m5]
    assert "secret" not in resumed.stdout

    # The text is gone from storage: the rows, and the Sends' kept answers (a retry of a
    # Send with its key now answers the message as it is).
    retry = ok(team, BOB, "Send", {"room_id": rid, "text": "secret-one"}, **{
        "Idempotency-Key": "send-1"
    })  # fmt: skip
    assert retry["message"]["id"] == m1 and retry["message"]["text"] == ""
    assert not stored_texts_with(team, "secret-")


def stored_texts_with(server: ServerProcess, needle: str) -> list[str]:
    """Every stored text (messages, subjects, kept answers) holding ``needle``; on SQLite,
    also any trace of it in the database's files."""
    queries = (
        "SELECT text FROM messages UNION ALL SELECT subject FROM messages"
        " UNION ALL SELECT response FROM idempotency"
    )
    if str(server.db).startswith("postgresql:"):
        import psycopg

        with psycopg.connect(str(server.db)) as conn:
            rows = conn.execute(queries).fetchall()
        return [r[0] for r in rows if needle in r[0]]
    import sqlite3

    path = Path(server.db)
    with contextlib.closing(sqlite3.connect(path)) as db:
        rows = db.execute(queries).fetchall()
    found = [r[0] for r in rows if needle in r[0]]
    files = [p for p in path.parent.glob(path.name + "*") if needle.encode() in p.read_bytes()]
    return found + [f"in {p.name}" for p in files]


@pytest.mark.postgres
def test_a_deletion_on_one_replica_reaches_the_tail_on_the_other(tmp_path: Path) -> None:
    """hub_pg: the event is notified by the deleting transaction and heard by every
    replica; a replica that reads a gap of seqs back from the table skips the message."""
    from websockets.sync.client import connect

    with postgres.fresh_database() as url:
        (tmp_path / "a").mkdir()
        (tmp_path / "b").mkdir()
        with (
            ServerProcess(tmp_path / "a", tcp=True, db=url) as a,
            ServerProcess(tmp_path / "b", tcp=True, db=url) as b,
            a.http() as on_a,
        ):
            rid = on_a.post("/v1/chat/Create", json={"name": "r", "user_ids": ["s"]}).json()
            rid = rid["room"]["id"]
            sent = on_a.post("/v1/chat/Send", json={"room_id": rid, "user_id": "s", "text": "x"})
            first = sent.json()["message"]["id"]
            join = {"room_id": rid, "user_id": "w", "events": True, "history": 1}
            with connect(f"ws://127.0.0.1:{b.port}/v1/chat/Join", open_timeout=10) as ws:
                ws.send(json.dumps(join))
                assert json.loads(ws.recv(timeout=10))["message"]["id"] == first
                r = on_a.post("/v1/chat/DeleteMessage", json={"room_id": rid, "message_id": first})
                assert r.status_code == 200, r.text
                event = json.loads(ws.recv(timeout=10))["event"]
                assert (event["type"], event["message_id"]) == ("message_deleted", first)
                # The next message comes straight after: nothing of the deleted one again.
                on_a.post("/v1/chat/Send", json={"room_id": rid, "user_id": "s", "text": "y"})
                assert json.loads(ws.recv(timeout=10))["message"]["text"] == "y"


@pytest.mark.postgres
def test_a_replica_reading_missed_seqs_skips_a_deleted_message() -> None:
    """A notification past a gap (here: without its frame, as a big message's is) makes a
    replica read the missing seqs from the table; a deleted one is not there to send, and
    the count moves past it all the same."""
    import asyncio

    from chatctl.server.domain import NewMessage, Published
    from chatctl.server.hub_pg import Listener, MessageNotification
    from chatctl.server.sql import Session
    from tests.server.test_store_pg import Heard, new_room, started

    async def scenario(url: str) -> tuple[list[int], int]:
        async with started(url) as store:
            room = await new_room(store, "room", ["u"])
            for text in ("one", "two", "three"):
                await store.send("", NewMessage(room.id, "u", "c", "", text), None)

            async def delete_seq(db: Session, seq: int) -> None:
                (row,) = [r for r in await db.messages(room) if r.seq == seq]
                assert await db.erase_message(room, row, "t")

            await store.write(lambda db: delete_seq(db, 2))
            await store.write(lambda db: delete_seq(db, 3))
            heard = Heard()
            listener = Listener(url, 5.0, store, heard)
            listener._delivered[("", room.id)] = 1
            await listener._message(MessageNotification("", room.id, room.pk, 3, "u", ""))
            seqs = [n.seq for n in heard.notes if isinstance(n, Published)]
            return seqs, listener._delivered[("", room.id)]

    with postgres.fresh_database() as url:
        assert asyncio.run(scenario(url)) == ([], 3)


CLI_DOC = Path(__file__).resolve().parents[2] / "docs/cli.md"


def doc_recipe() -> str:
    """The command line of docs/cli.md's "Deleting a message" recipe."""
    section = CLI_DOC.read_text().split("\n## Deleting a message", 1)[1].split("\n## ", 1)[0]
    block = section.split("```sh\n", 1)[1].split("```", 1)[0]
    (line,) = [line for line in block.splitlines() if line and not line.startswith("#")]
    return line


@pytest.mark.one_backend
def test_the_docs_recipe_deletes_the_message_it_finds(team: ServerProcess) -> None:
    rid = ok(team, ALICE, "Create", {"name": "ops", "user_ids": ["bob"]})["room"]["id"]
    ok(team, BOB, "Send", {"room_id": rid, "text": "the password is hunter2"})
    ok(team, ALICE, "Send", {"room_id": rid, "text": "ok, rotating it"})
    # alice runs it: the room's creator, deleting bob's message.
    done = subprocess.run(
        ["bash", "-o", "pipefail", "-c", doc_recipe()],
        env=cli_env(team, CHATCTL_TOKEN=ALICE, PATH=f"{Path(sys.executable).parent}:/usr/bin:/bin"),
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    texts = [m["text"] for m in ok(team, ALICE, "History", {"room_id": rid})["messages"]]
    assert texts == ["ok, rotating it"]


def test_a_terminal_line_names_the_deleted_message_and_its_author() -> None:
    from chatctl.output import event_line

    event = {"type": "message_deleted", "room_id": "r", "user_id": "alice", "message_id": "m1"}
    line = event_line({**event, "at": "2026-12-07T09:41:09.002Z"}).plain
    assert line.endswith(" * message m1 of alice deleted")
