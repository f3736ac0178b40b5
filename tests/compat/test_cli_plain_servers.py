"""chatctl against m3o servers that are not chatctl's: the final "group" edition and a plain
room-edition server (the stand-ins of ``m3o_standin.py``), with no flag or setting beyond
the URL, token and user. Every subcommand, ``join`` included, works; ``history`` prints
each message once, in time order; and every call such a server receives carries a seed
request body (no chatctl extension field: m3o answers 500 to some and its Join refuses
any). The only request of the other edition's names a server ever gets is the first one
naming a room by id, before the edition is known: refused with 400 ``missing group id``
before anything is done, and sent again in the server's names.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.compat.m3o_standin import RunningStandIn
from tests.conftest import Result
from tests.helpers import wait_for

#: The seed's request fields, per endpoint (the room edition's names; "room" -> "group").
SEED_FIELDS = {
    "Create": {"name", "description", "user_ids", "private"},
    "Delete": {"room_id"},
    "Invite": {"room_id", "user_id"},
    "Send": {"room_id", "user_id", "text", "subject", "client"},
    "History": {"room_id"},
    "Kick": {"room_id", "user_id"},
    "Leave": {"room_id", "user_id"},
    "List": {"user_id"},
    "Join": {"room_id", "user_id"},
}


def seed_fields(srv: RunningStandIn, endpoint: str) -> set[str]:
    return {f.replace("room", srv.edition) for f in SEED_FIELDS[endpoint]}


def assert_seed_bodies(srv: RunningStandIn, *, refused: int = 0) -> None:
    """Every body the server received has only fields of the seed's request in its own
    edition's names, but for ``refused`` ones in the other edition's, each answered 400."""
    other = [r for r in srv.requests if r.endpoint and set(r.body or {}) & {"room_id", "group_id"}]
    other = [r for r in other if f"{srv.edition}_id" not in r.body]
    assert len(other) == refused, [(r.endpoint, r.body) for r in other]
    assert all(r.status == 400 for r in other)
    extra = [
        (r.endpoint, sorted(set(r.body) - seed_fields(srv, r.endpoint)))
        for r in srv.requests
        if r.endpoint
        and r not in other
        and isinstance(r.body, dict)
        and set(r.body) - seed_fields(srv, r.endpoint)
    ]
    assert extra == [], f"extension fields sent to a plain m3o server: {extra}"


@pytest.fixture
def plain_cli(
    cli: Callable[..., Result], m3o_server: RunningStandIn, monkeypatch: pytest.MonkeyPatch
) -> Callable[..., Result]:
    """The real CLI, in-process, pointed at the stand-in by the environment only."""
    monkeypatch.setenv("CHATCTL_URL", m3o_server.url)
    monkeypatch.setenv("CHATCTL_TOKEN", m3o_server.token)
    monkeypatch.setenv("CHATCTL_USER", "alice")
    return cli


def env_for(srv: RunningStandIn, user: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CHATCTL_", "M3O_"))}
    return env | {"CHATCTL_URL": srv.url, "CHATCTL_TOKEN": srv.token, "CHATCTL_USER": user}


def make_room(
    srv: RunningStandIn, name: str = "general", users: tuple[str, ...] = ("alice",)
) -> str:
    noun = srv.edition
    rid: str = srv.call("Create", {"name": name, "user_ids": list(users)})[noun]["id"]
    srv.forget_requests()
    return rid


def send(srv: RunningStandIn, rid: str, user: str, text: str) -> dict[str, Any]:
    message: dict[str, Any] = srv.call(
        "Send", {f"{srv.edition}_id": rid, "user_id": user, "text": text}
    )["message"]
    return message


def test_create_prints_the_new_id(
    plain_cli: Callable[..., Result], m3o_server: RunningStandIn
) -> None:
    done = plain_cli("create", "general", "-u", "alice", "-o", "id")
    assert done.code == 0, done.stderr
    (body,) = m3o_server.sent("Create")
    assert body == {"name": "general", "user_ids": ["alice"]}
    assert done.stdout.split() == [m3o_server.call("List", {})[f"{m3o_server.edition}s"][0]["id"]]


def test_json_output_is_the_answer_as_the_server_sent_it(
    plain_cli: Callable[..., Result], m3o_server: RunningStandIn
) -> None:
    rid = make_room(m3o_server)
    done = plain_cli("list", "-o", "json")
    assert done.code == 0, done.stderr
    # Key for key, in the server's order (m3o's gateway sorts them; chatctl's server
    # does not), nothing added, renamed or dropped.
    as_sent = json.dumps(m3o_server.call("List", {}))
    assert json.dumps(json.loads(done.stdout)) == as_sent
    assert [g["id"] for g in json.loads(done.stdout)[f"{m3o_server.edition}s"]] == [rid]
    sent = plain_cli("send", "general", "hi", "-o", "json")
    assert sent.code == 0, sent.stderr
    (message,) = m3o_server.call("History", {f"{m3o_server.edition}_id": rid})["messages"]
    assert json.dumps(json.loads(sent.stdout)) == json.dumps({"message": message})


def test_list_shows_the_rooms(plain_cli: Callable[..., Result], m3o_server: RunningStandIn) -> None:
    rid = make_room(m3o_server)
    done = plain_cli("list", "-o", "tsv")
    assert done.code == 0, done.stderr
    assert [line.split("\t")[:2] for line in done.stdout.splitlines()] == [[rid, "general"]]
    table = plain_cli("list", "-o", "table")
    assert "NAME" in table.stdout and "general" in table.stdout and rid in table.stdout
    assert_seed_bodies(m3o_server)


@pytest.mark.parametrize(
    ("args", "endpoint", "expect"),
    [
        (("send", "general", "hello"), "Send", {"user_id": "alice", "text": "hello"}),
        (("invite", "general", "bob"), "Invite", {"user_id": "bob"}),
        (("kick", "general", "alice", "--yes"), "Kick", {"user_id": "alice"}),
        (("leave", "general"), "Leave", {"user_id": "alice"}),
        (("delete", "general", "--yes"), "Delete", {}),
    ],
    ids=["send", "invite", "kick", "leave", "delete"],
)
def test_a_subcommand_by_room_name(
    plain_cli: Callable[..., Result],
    m3o_server: RunningStandIn,
    args: tuple[str, ...],
    endpoint: str,
    expect: dict[str, Any],
) -> None:
    rid = make_room(m3o_server)
    done = plain_cli(*args, "-o", "json")
    assert done.code == 0, done.stderr
    assert m3o_server.sent(endpoint) == [{f"{m3o_server.edition}_id": rid, **expect}]
    assert m3o_server.sent("List") == [{}]  # the name, resolved: the edition is known
    assert_seed_bodies(m3o_server)


def test_a_room_by_id_in_either_edition(
    plain_cli: Callable[..., Result], m3o_server: RunningStandIn
) -> None:
    """By id, nothing says the edition before the first call: the seed's names first; a
    group server refuses them (400 ``missing group id``, before doing anything) and the
    call is made again in its names, as is every later call of the process."""
    rid = make_room(m3o_server)
    done = plain_cli("invite", rid, "bob", "carol", "-o", "json")
    assert done.code == 0, done.stderr
    noun = m3o_server.edition
    answers = [json.loads(line) for line in done.stdout.splitlines()]
    assert [list(a) for a in answers] == [[noun], [noun]]  # printed as the server sent it
    assert answers[-1][noun]["user_ids"] == ["alice", "bob", "carol"]
    asked = [{f"{noun}_id": rid, "user_id": u} for u in ("bob", "carol")]
    if noun == "group":
        assert m3o_server.sent("Invite") == [{"room_id": rid, "user_id": "bob"}, *asked]
        assert_seed_bodies(m3o_server, refused=1)
    else:
        assert m3o_server.sent("Invite") == asked
        assert_seed_bodies(m3o_server)


def test_input_in_the_names_of_either_edition(
    plain_cli: Callable[..., Result], m3o_server: RunningStandIn
) -> None:
    rid = make_room(m3o_server)
    lines = [
        {"group_id": rid, "user_id": "alice", "text": "as group"},
        {"room_id": rid, "user_id": "alice", "text": "as room"},
    ]
    done = plain_cli(
        "send", "general", "-i", "-", "-o", "id", input="".join(json.dumps(x) + "\n" for x in lines)
    )
    assert done.code == 0, done.stderr
    noun = m3o_server.edition
    assert [(b[f"{noun}_id"], b["text"]) for b in m3o_server.sent("Send")] == [
        (rid, "as group"),
        (rid, "as room"),
    ]
    assert_seed_bodies(m3o_server)


def test_tables_and_tsv_show_a_message_of_either_edition(
    plain_cli: Callable[..., Result], m3o_server: RunningStandIn
) -> None:
    rid = make_room(m3o_server)
    send(m3o_server, rid, "alice", "hello")
    tsv = plain_cli("history", "general", "-o", "tsv")
    assert tsv.code == 0, tsv.stderr
    (row,) = [line.split("\t") for line in tsv.stdout.splitlines()]
    assert row[2:4] == [rid, "alice"] and row[-1] == "hello"  # the room in its column
    table = plain_cli("history", "general", "-o", "table")
    assert "TEXT" in table.stdout and "hello" in table.stdout


def run_history(srv: RunningStandIn, *extra: str, room: str = "general") -> tuple[int, str, str]:
    """``chatctl history ROOM -o jsonl``, stopped as soon as it is plainly paging forever
    (more History calls than a read-once needs), else within a deadline."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "chatctl", "history", room, "-o", "jsonl", *extra],
        env=env_for(srv, "alice"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(lambda: proc.poll() is not None or len(srv.sent("History")) > 10, 30, "history")
        if proc.poll() is None:
            pytest.fail(f"history is still paging after {len(srv.sent('History'))} History calls")
        out, err = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=10)
    return proc.returncode, out, err


def test_history_prints_each_message_once_in_time_order(m3o_server: RunningStandIn) -> None:
    rid = make_room(m3o_server)
    sent = [send(m3o_server, rid, "alice", f"message {i}")["id"] for i in range(6)]
    code, out, err = run_history(m3o_server)
    assert code == 0, err
    # m3o answers in its store's key order (random ids): printed by sent_at, each once.
    assert [json.loads(line)["id"] for line in out.splitlines()] == sent
    # Read once, with the seed's body: no user_id, no paging.
    assert m3o_server.sent("History") == [{f"{m3o_server.edition}_id": rid}]
    assert_seed_bodies(m3o_server)


@pytest.mark.parametrize(
    ("flags", "chosen"),
    [
        (("--limit", "2"), [4, 5]),
        (("--after", "{1}", "--limit", "2"), [2, 3]),
        (("--before", "{3}"), [0, 1, 2]),
        (("--before", "{4}", "--limit", "2"), [2, 3]),
        (("--after", "{0}", "--before", "{3}"), [1, 2]),
    ],
    ids=["latest", "after", "before", "before-latest", "between"],
)
def test_history_limit_and_cursors_are_applied_on_the_client(
    m3o_server: RunningStandIn, flags: tuple[str, ...], chosen: list[int]
) -> None:
    rid = make_room(m3o_server)
    texts = [send(m3o_server, rid, "alice", f"message {i}") for i in range(6)]
    ids = [m["id"] for m in texts]
    code, out, err = run_history(m3o_server, *(f.format(*ids) for f in flags))
    assert code == 0, err
    assert [json.loads(line)["text"] for line in out.splitlines()] == [
        texts[i]["text"] for i in chosen
    ]
    assert m3o_server.sent("History") == [{f"{m3o_server.edition}_id": rid}]


def test_history_by_id_asks_with_one_small_list_first(m3o_server: RunningStandIn) -> None:
    """Paging needs an extension: before sending any, a process that knows nothing of the
    server asks with a seed-shaped List of the reader's rooms."""
    rid = make_room(m3o_server)
    send(m3o_server, rid, "alice", "hi")
    m3o_server.forget_requests()
    code, out, err = run_history(m3o_server, room=rid)
    assert code == 0, err
    assert [json.loads(line)["text"] for line in out.splitlines()] == ["hi"]
    assert [(r.endpoint, r.body) for r in m3o_server.requests] == [
        ("List", {"user_id": "alice"}),
        ("History", {f"{m3o_server.edition}_id": rid}),
    ]


@contextlib.contextmanager
def joining(srv: RunningStandIn, *args: str, user: str = "bob") -> Iterator[subprocess.Popen[str]]:
    """``chatctl join ARGS -o jsonl`` as ``user``, killed at the end if still running."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "chatctl", "join", *args, "-o", "jsonl"],
        env=env_for(srv, user),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=10)  # reaps it and closes its pipes


def streams(srv: RunningStandIn, rid: str, user: str) -> int:
    """How many live Join streams ``user`` has in the room (the stand-in's own count)."""
    return len(srv.app.chat.tenant(srv.token).consumers.get((rid, user), []))


def wait_streaming(
    srv: RunningStandIn, proc: subprocess.Popen[str], rid: str, user: str = "bob"
) -> None:
    def live() -> bool:
        if proc.poll() is not None:
            err = proc.stderr.read() if proc.stderr else ""
            pytest.fail(f"join exited {proc.returncode}: {err}")
        return streams(srv, rid, user) > 0

    wait_for(live, 20, f"{user}'s Join stream")


def finish(proc: subprocess.Popen[str]) -> tuple[list[dict[str, Any]], str]:
    out, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    return [json.loads(line) for line in out.splitlines()], err  # jsonl: one message a line


@pytest.mark.parametrize("by", ["name", "id"])
def test_join_prints_what_others_send(m3o_server: RunningStandIn, by: str) -> None:
    rid = make_room(m3o_server, users=("alice",))
    with joining(m3o_server, "general" if by == "name" else rid, "--count", "1") as proc:
        wait_streaming(m3o_server, proc, rid)
        sent = send(m3o_server, rid, "alice", "hello bob")
        printed, _ = finish(proc)
    assert [m["id"] for m in printed] == [sent["id"]]
    noun = m3o_server.edition
    # By name, the List resolving it said the edition; by id, a small one asks (the Join
    # of a plain server fails on a field of the other edition's names).
    listed = [{}] if by == "name" else [{"user_id": "bob"}]
    assert m3o_server.sent("List") == listed
    assert m3o_server.sent("Join") == [{f"{noun}_id": rid, "user_id": "bob"}]
    assert_seed_bodies(m3o_server)


@pytest.mark.parametrize("flag", ["--since", "--events", "--include-own"])
def test_join_flags_that_need_chatctls_server_are_refused(
    m3o_server: RunningStandIn, flag: str
) -> None:
    make_room(m3o_server)
    args = [flag, str(uuid.uuid4())] if flag == "--since" else [flag]
    with joining(m3o_server, "general", *args) as proc:
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 2, err
    assert "not supported" in err and "hint: " in err, err
    # Nothing of a Join reached the server: m3o's Join fails on an unknown field.
    assert m3o_server.sent("Join") == []
    assert_seed_bodies(m3o_server)


def test_join_history_is_read_from_history(m3o_server: RunningStandIn) -> None:
    rid = make_room(m3o_server)
    before = [send(m3o_server, rid, "alice", f"old {i}") for i in range(3)]
    with joining(m3o_server, "general", "--history", "2", "--count", "3") as proc:
        wait_streaming(m3o_server, proc, rid)
        live = send(m3o_server, rid, "alice", "new")
        printed, _ = finish(proc)
    assert [m["id"] for m in printed] == [m["id"] for m in (*before[1:], live)]
    assert m3o_server.sent("History") == [{f"{m3o_server.edition}_id": rid}]
    assert_seed_bodies(m3o_server)


@pytest.mark.parametrize("then", ["a message", "nothing"])
def test_join_after_a_drop_prints_what_was_sent_meanwhile_once(
    m3o_server: RunningStandIn, then: str
) -> None:
    """A plain server cannot resume: the CLI joins again without ``since`` and prints what
    was sent while it was away from History, when the new stream's first message comes
    (``then`` = a message) or a moment after it opened (nothing comes)."""
    rid = make_room(m3o_server)
    app = m3o_server.app
    count = "3" if then == "a message" else "2"
    with joining(m3o_server, "general", "--count", count) as proc:
        wait_streaming(m3o_server, proc, rid)
        # Published to bob's queue ahead of the end drop_streams puts there: it is sent
        # on the first stream before that stream ends.
        first = send(m3o_server, rid, "alice", "before the drop")
        app.join_gate.clear()  # the next Join waits before it is subscribed
        try:
            wait_for(lambda: len(m3o_server.sent("Join")) == 1, 5)
            assert app.drop_streams(m3o_server.token) == 1
            wait_for(lambda: len(m3o_server.sent("Join")) == 2, 20, "join to reconnect")
            # bob has no stream now: this one can only come from History.
            assert streams(m3o_server, rid, "bob") == 0
            meanwhile = send(m3o_server, rid, "alice", "while bob was away")
        finally:
            app.join_gate.set()
        wait_streaming(m3o_server, proc, rid)
        after = [send(m3o_server, rid, "alice", "after")] if then == "a message" else []
        printed, err = finish(proc)
    assert [m["id"] for m in printed] == [m["id"] for m in (first, meanwhile, *after)]
    assert "cannot resume" in err
    noun = m3o_server.edition
    assert m3o_server.sent("Join") == [{f"{noun}_id": rid, "user_id": "bob"}] * 2
    assert_seed_bodies(m3o_server)


def test_an_error_frame_ends_the_stream(m3o_server: RunningStandIn) -> None:
    """m3o ends a stream with its error and drops the connection: reported, not rejoined."""
    make_room(m3o_server)
    missing = str(uuid.uuid4())
    with joining(m3o_server, missing) as proc:
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 5, err  # not found, as m3o's 400 "<noun> not found" means
    assert f"{m3o_server.edition} not found (chat.join, HTTP 400)" in err
    assert len(m3o_server.sent("Join")) == 1
