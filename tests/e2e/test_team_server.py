"""A team server as issue 13 means it: a real ``chatctl serve`` process over TCP with a
tokens file holding admin, user and hashed tokens of two tenants (and an old-format one),
every endpoint and the Join stream tried with each kind of token, the attacks of the
issue among them. Each refusal is 403 (404 across tenants) and changes nothing: the
rooms, their members and their messages, read back with an admin token, are exactly as
before. Once on SQLite and once on PostgreSQL (``CHATCTL_TEST_POSTGRES``)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from tests import postgres
from tests.helpers import ServerProcess

#: token -> (its line's tail, stored in clear?)
TOKENS = {
    "tok-acme-admin-5c1e": ("tenant=acme admin", True),
    "tok-acme-ops-91f0": ("tenant=acme admin", False),
    "tok-alice-3b7d": ("tenant=acme user=alice", True),
    "tok-bob-e2a4": ("tenant=acme user=bob", False),
    "tok-carol-0d6b": ("tenant=acme user=carol", False),
    "tok-mallory-77aa": ("tenant=acme user=mallory", False),
    "tok-globex-admin-1f2e": ("tenant=globex admin", False),
    "tok-globex-alice-6c3a": ("tenant=globex user=alice", False),
    "tok-legacy-4d9b": ("", True),
}
ADMIN = "tok-acme-admin-5c1e"
OPS = "tok-acme-ops-91f0"  # an admin token of acme the file holds only as a hash
ALICE = "tok-alice-3b7d"
BOB = "tok-bob-e2a4"
CAROL = "tok-carol-0d6b"
MALLORY = "tok-mallory-77aa"
GLOBEX_ADMIN = "tok-globex-admin-1f2e"
GLOBEX_ALICE = "tok-globex-alice-6c3a"  # "alice" too, of another tenant
LEGACY = "tok-legacy-4d9b"  # the old format: an admin token of its own tenant
UNKNOWN = "tok-nobody-0000"


def tokens_file(path: Path, tokens: dict[str, tuple[str, bool]] = TOKENS) -> Path:
    lines = ["# the team server of the tests"]
    for token, (tail, clear) in tokens.items():
        stored = token if clear else "sha256:" + hashlib.sha256(token.encode()).hexdigest()
        lines.append(f"{stored} {tail}".rstrip())
    path.write_text("\n".join(lines) + "\n")
    path.chmod(0o600)
    return path


@contextlib.contextmanager
def team_server(
    backend: str,
    workdir: Path,
    tokens: dict[str, tuple[str, bool]] = TOKENS,
    extra: tuple[str, ...] = (),
) -> Iterator[ServerProcess]:
    """A team server on ``backend`` serving ``tokens``, with ``extra`` flags."""
    path = tokens_file(workdir / "tokens", tokens)
    # No rate limit here: these tests make many calls a second (limits are tested below).
    flags = ["--tokens-file", str(path), "--rate-limit", "off", *extra]
    with (
        postgres.database_for(backend, str(workdir / "chat.db")) as db,
        ServerProcess(workdir, tcp=True, db=db, extra=flags) as server,
    ):
        yield server


@pytest.fixture(scope="module", params=postgres.BACKENDS)
def team(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    """One team server per backend for the module: each test makes its own rooms."""
    with team_server(request.param, tmp_path_factory.mktemp("team")) as server:
        yield server


#: one keep-alive client per server and token, for the module (thousands of calls).
_clients: dict[tuple[str, str | None], httpx.Client] = {}


@pytest.fixture(scope="module", autouse=True)
def _close_clients() -> Iterator[None]:
    yield
    for client in _clients.values():
        client.close()
    _clients.clear()


def call(
    server: ServerProcess, token: str | None, endpoint: str, body: Any, **kw: Any
) -> httpx.Response:
    client = _clients.get((server.url, token))
    if client is None:
        client = _clients[(server.url, token)] = server.http(token)
    return client.post(f"/v1/chat/{endpoint}", json=body, **kw)


def ok(server: ServerProcess, token: str, endpoint: str, body: Any) -> dict[str, Any]:
    r = call(server, token, endpoint, body)
    assert r.status_code == 200, (endpoint, body, r.text)
    answer: dict[str, Any] = r.json()
    return answer


@dataclass
class Rooms:
    """alice's private room (alice, bob), alice's public room (alice, bob), and a private
    room an admin token made (no creator), each with one message."""

    private: str
    public: str
    admins: str

    @property
    def ids(self) -> tuple[str, str, str]:
        return (self.private, self.public, self.admins)


def make_rooms(server: ServerProcess) -> Rooms:
    private = ok(server, ALICE, "Create", {"name": "secrets", "user_ids": ["bob"], "private": True})
    public = ok(server, ALICE, "Create", {"name": "lobby", "user_ids": ["bob"]})
    admins = ok(
        server, ADMIN, "Create", {"name": "ops", "user_ids": ["alice", "bob"], "private": True}
    )
    rooms = Rooms(private["room"]["id"], public["room"]["id"], admins["room"]["id"])
    for room in rooms.ids:
        ok(server, ALICE, "Send", {"room_id": room, "text": f"hello {room[:8]}"})
    return rooms


def state(server: ServerProcess, rooms: Rooms) -> dict[str, Any]:
    """What the database holds of these rooms, read with an admin token: each room as List
    shows it (members in order), its barred users' effect aside, and its messages."""
    listed = {r["id"]: r for r in ok(server, ADMIN, "List", {})["rooms"] if r["id"] in rooms.ids}
    messages = {}
    for room_id, room in listed.items():
        reader = room["user_ids"][0] if room["user_ids"] else "nobody"
        history = call(server, ADMIN, "History", {"room_id": room_id, "user_id": reader})
        messages[room_id] = history.json() if history.status_code == 200 else history.status_code
    return {"rooms": listed, "messages": messages}


@pytest.fixture
def rooms(team: ServerProcess) -> Rooms:
    return make_rooms(team)


# -- the attacks of the issue, one by one ---------------------------------------------------


def test_the_attacks_of_issue_13_are_refused_and_change_nothing(
    team: ServerProcess, rooms: Rooms
) -> None:
    # "with the team's token, mallory can invite herself into a private room, read it as
    # alice, send as alice, kick alice and delete the room; List shows her every private
    # room and its members" -- each with her own user token now.
    before = state(team, rooms)
    attacks: list[tuple[str, dict[str, Any], int, str]] = [
        ("Invite", {"room_id": rooms.private, "user_id": "mallory"}, 403, "chat.invite"),
        ("History", {"room_id": rooms.private, "user_id": "alice"}, 403, "chat.history"),
        ("History", {"room_id": rooms.private}, 403, "chat.history"),
        ("Send", {"room_id": rooms.private, "user_id": "alice", "text": "x"}, 403, "chat.send"),
        ("Send", {"room_id": rooms.public, "user_id": "alice", "text": "x"}, 403, "chat.send"),
        ("Kick", {"room_id": rooms.private, "user_id": "alice"}, 403, "chat.kick"),
        ("Kick", {"room_id": rooms.public, "user_id": "alice"}, 403, "chat.kick"),
        ("Delete", {"room_id": rooms.private}, 403, "chat.delete"),
        ("Delete", {"room_id": rooms.public}, 403, "chat.delete"),
        ("Leave", {"room_id": rooms.private, "user_id": "alice"}, 403, "chat.leave"),
        ("Leave", {"room_id": rooms.private}, 403, "chat.leave"),
    ]
    for endpoint, body, code, endpoint_id in attacks:
        r = call(team, MALLORY, endpoint, body)
        assert (r.status_code, r.json()["id"], r.json()["code"]) == (code, endpoint_id, code), (
            endpoint,
            body,
            r.text,
        )
        assert state(team, rooms) == before, (endpoint, body)
    # List: the public room, not the private ones, whoever she asks about.
    for body in ({}, {"user_id": "alice"}, {"user_id": "bob"}):
        seen = {r["id"] for r in ok(team, MALLORY, "List", body)["rooms"]}
        assert rooms.public in seen and not seen & {rooms.private, rooms.admins}, body
    # Join as alice, or into the private room as herself: refused before any frame.
    for body in ({"room_id": rooms.private, "user_id": "alice"}, {"room_id": rooms.private}):
        frames, code = join(team, MALLORY, body)
        assert code == 4403 and frames[0]["code"] == 403, (body, frames)
    assert state(team, rooms) == before


def test_a_member_cannot_kick_the_creator_nor_delete_nor_undo_a_kick(
    team: ServerProcess, rooms: Rooms
) -> None:
    before = state(team, rooms)
    for endpoint, body in (
        ("Kick", {"room_id": rooms.private, "user_id": "alice"}),
        ("Kick", {"room_id": rooms.private, "user_id": "bob"}),  # not even oneself
        ("Delete", {"room_id": rooms.private}),
        ("Kick", {"room_id": rooms.admins, "user_id": "alice"}),  # an admin's room
    ):
        assert call(team, BOB, endpoint, body).status_code == 403, (endpoint, body)
    assert state(team, rooms) == before
    # alice, the creator, kicks carol (invited by bob, a member); bob cannot undo it.
    ok(team, BOB, "Invite", {"room_id": rooms.private, "user_id": "carol"})
    ok(team, ALICE, "Kick", {"room_id": rooms.private, "user_id": "carol"})
    after_kick = state(team, rooms)
    refused = call(team, BOB, "Invite", {"room_id": rooms.private, "user_id": "carol"})
    assert refused.status_code == 403 and "kicked" in refused.json()["detail"]
    assert state(team, rooms) == after_kick
    ok(team, ALICE, "Invite", {"room_id": rooms.private, "user_id": "carol"})
    # A room no user token created (an admin's, or one from before creators were
    # recorded) is kicked from and deleted by admin tokens only.
    assert call(team, ALICE, "Delete", {"room_id": rooms.admins}).status_code == 403
    ok(team, OPS, "Delete", {"room_id": rooms.admins})


def test_another_users_idempotency_key_replays_nothing(team: ServerProcess, rooms: Rooms) -> None:
    body = {"room_id": rooms.private}
    key = {"Idempotency-Key": "delete-secrets-1"}
    # mallory first: refused, and a refusal is never kept; then alice deletes with the key.
    assert call(team, MALLORY, "Delete", body, headers=key).status_code == 403
    deleted = call(team, ALICE, "Delete", body, headers=key)
    assert deleted.status_code == 200
    # mallory replaying alice's key gets her own answer, not alice's kept 200.
    again = call(team, MALLORY, "Delete", body, headers=key)
    assert again.status_code == 404  # the room is gone; nothing of alice's answer
    assert call(team, ALICE, "Delete", body, headers=key).json() == deleted.json()


# -- every endpoint x every kind of token --------------------------------------------------

#: the kinds of token, and the token of each.
KINDS = {
    "admin": ADMIN,
    "admin, hashed": OPS,
    "user, the creator": ALICE,
    "user, hashed, a member": BOB,
    "user, hashed, an outsider": MALLORY,
    "other tenant, admin": GLOBEX_ADMIN,
    "other tenant, same user id": GLOBEX_ALICE,
    "old format": LEGACY,
    "unknown": UNKNOWN,
    "none": "",
}
_K = list(KINDS)


def row(*statuses: int) -> dict[str, int]:
    """Statuses in the order of KINDS (the last two, unknown and no token, are 401)."""
    assert len(statuses) == len(KINDS) - 2
    return dict(zip(_K, [*statuses, 401, 401], strict=True))


#: (endpoint, request with ROOM for alice's private room of alice and bob) -> the status
#: each kind of token gets, in KINDS' order: admin, admin hashed, alice (the creator), bob
#: (a member), mallory (an outsider), globex admin, globex alice, old format.
#: 400 is m3o's validation (an admin names the user it acts as); a user token naming
#: another user is 403 before the room is looked up, so globex alice gets 403 there.
CASES: list[tuple[str, dict[str, Any], dict[str, int]]] = [
    ("Delete", {"room_id": "ROOM"}, row(200, 200, 200, 403, 403, 404, 404, 404)),
    ("Kick", {"room_id": "ROOM", "user_id": "bob"}, row(200, 200, 200, 403, 403, 404, 404, 404)),
    ("Invite", {"room_id": "ROOM", "user_id": "dave"}, row(200, 200, 200, 200, 403, 404, 404, 404)),
    ("Send", {"room_id": "ROOM", "user_id": "alice", "text": "t"},
     row(200, 200, 200, 403, 403, 404, 404, 404)),
    ("History", {"room_id": "ROOM", "user_id": "bob"}, row(200, 200, 403, 200, 403, 404, 403, 404)),
    ("Leave", {"room_id": "ROOM", "user_id": "bob"}, row(200, 200, 403, 200, 403, 404, 403, 404)),
    ("Send", {"room_id": "ROOM", "text": "t"}, row(400, 400, 200, 200, 403, 400, 404, 400)),
    ("History", {"room_id": "ROOM"}, row(403, 403, 200, 200, 403, 404, 404, 404)),
    ("Leave", {"room_id": "ROOM"}, row(400, 400, 200, 200, 403, 400, 404, 400)),
]  # fmt: skip


@pytest.mark.parametrize("kind", list(KINDS))
def test_every_endpoint_with_every_kind_of_token(team: ServerProcess, kind: str) -> None:
    token = KINDS[kind] or None
    for endpoint, template, statuses in CASES:
        rooms = make_rooms(team)
        body = {k: rooms.private if v == "ROOM" else v for k, v in template.items()}
        before = state(team, rooms)
        r = call(team, token, endpoint, body)
        want = statuses[kind]
        assert r.status_code == want, (endpoint, body, kind, r.text)
        if want != 200:
            assert r.json()["code"] == want
            assert state(team, rooms) == before, (endpoint, body, kind)
        elif endpoint == "Send":  # sent as the token's user when none was named
            user = body.get("user_id") or {ALICE: "alice", BOB: "bob"}[token or ""]
            assert r.json()["message"]["user_id"] == user


@pytest.mark.parametrize("kind", list(KINDS))
def test_create_and_list_with_every_kind_of_token(team: ServerProcess, kind: str) -> None:
    token = KINDS[kind] or None
    rooms = make_rooms(team)
    r = call(team, token, "Create", {"name": "new", "user_ids": ["zoe"], "private": True})
    if kind in ("unknown", "none"):
        assert r.status_code == 401 and r.json() == {
            "id": "v1", "code": 401, "detail": "Unauthorized", "status": "Unauthorized"
        }  # fmt: skip
        assert call(team, token, "List", {}).status_code == 401
        return
    assert r.status_code == 200, r.text
    created = r.json()["room"]
    user = {ALICE: "alice", BOB: "bob", MALLORY: "mallory", GLOBEX_ALICE: "alice"}.get(token or "")
    # A user token's user is the creator and first member; an admin's room has just zoe.
    assert created["user_ids"] == ([user, "zoe"] if user else ["zoe"])
    seen = {room["id"] for room in ok(team, token or "", "List", {})["rooms"]}
    assert created["id"] in seen  # a user sees the private room it made
    # Of acme's rooms: admins all, alice and bob the rooms they are in, mallory only the
    # public one; the other tenants none.
    visible = {
        "admin": rooms.ids,
        "admin, hashed": rooms.ids,
        "user, the creator": rooms.ids,
        "user, hashed, a member": rooms.ids,
        "user, hashed, an outsider": (rooms.public,),
    }.get(kind, ())
    assert {r for r in rooms.ids if r in seen} == set(visible), kind
    # Asking about another user shows nothing more.
    about_alice = {r["id"] for r in ok(team, token or "", "List", {"user_id": "alice"})["rooms"]}
    assert {r for r in rooms.ids if r in about_alice} == set(visible)


def test_list_shows_a_creator_the_private_room_it_left(team: ServerProcess, rooms: Rooms) -> None:
    ok(team, ALICE, "Leave", {"room_id": rooms.private})
    listed = {r["id"]: r for r in ok(team, ALICE, "List", {})["rooms"]}
    assert listed[rooms.private]["user_ids"] == ["bob"]  # hers still: she made it
    assert rooms.private not in {r["id"] for r in ok(team, MALLORY, "List", {})["rooms"]}
    # ... and, its creator, she may come back.
    ok(team, ALICE, "Invite", {"room_id": rooms.private, "user_id": "alice"})


def bulk(
    server: ServerProcess, token: str, lines: list[dict[str, Any]], key: str | None = None
) -> list[dict[str, Any]]:
    """A bulk Send (NDJSON in): each line's answer."""
    headers = {"Content-Type": "application/x-ndjson"}
    if key is not None:
        headers["Idempotency-Key"] = key
    body = "".join(json.dumps(line) + "\n" for line in lines)
    with server.http(token) as http:
        r = http.post("/v1/chat/Send", content=body, headers=headers)
    assert r.status_code == 200, r.text
    return [json.loads(line) for line in r.text.splitlines()]


def test_a_bulk_send_acts_as_the_tokens_user_line_by_line(
    team: ServerProcess, rooms: Rooms
) -> None:
    before = state(team, rooms)
    # mallory: as herself into the private room, as alice anywhere: every line refused.
    answers = bulk(team, MALLORY, [
        {"room_id": rooms.private, "text": "let me in"},
        {"room_id": rooms.public, "user_id": "alice", "text": "I am alice"},
        {"room_id": rooms.private, "user_id": "alice", "text": "I am alice"},
    ])  # fmt: skip
    assert [(a["id"], a["code"]) for a in answers] == [("chat.send", 403)] * 3, answers
    assert "acts only as user mallory, not alice" in answers[1]["detail"]
    assert state(team, rooms) == before
    # bob: lines without a user are his; one naming alice is refused, the others stored.
    answers = bulk(team, BOB, [
        {"room_id": rooms.private, "text": "one"},
        {"room_id": rooms.private, "user_id": "alice", "text": "as alice"},
        {"room_id": rooms.private, "user_id": "bob", "text": "two"},
    ], key="bob-batch")  # fmt: skip
    assert [a.get("message", {}).get("user_id") for a in answers] == ["bob", None, "bob"]
    assert answers[1]["code"] == 403
    # alice's batch with bob's batch key is hers, not a replay of his lines.
    mine = bulk(team, ALICE, [{"room_id": rooms.private, "text": "mine"}], key="bob-batch")
    assert mine[0]["message"]["user_id"] == "alice" and mine[0]["message"]["text"] == "mine"
    texts = [
        m["text"]
        for m in ok(team, ADMIN, "History", {"room_id": rooms.private, "user_id": "alice"})[
            "messages"
        ]
    ]
    assert texts == [f"hello {rooms.private[:8]}", "one", "two", "mine"]


# -- Join, over a WebSocket (header or subprotocol) and NDJSON ------------------------------


def join(
    server: ServerProcess,
    token: str | None,
    body: dict[str, Any],
    *,
    subprotocol: bool = False,
    frames: int = 1,
) -> tuple[list[dict[str, Any]], int | None]:
    """Open a Join and read from it: (the frames read, the close code). A refused Join is
    its error frame and a close; an admitted one is left after ``frames`` frames (or 1.5 s
    of nothing), with None for the code."""
    url = f"ws://127.0.0.1:{server.port}/v1/chat/Join"
    options: dict[str, Any] = {"open_timeout": 10}
    if token and subprotocol:
        options["subprotocols"] = [token]
    elif token:
        options["additional_headers"] = {"Authorization": f"Bearer {token}"}
    read: list[dict[str, Any]] = []
    with connect(url, **options) as ws:
        # A Join refused for its token is refused before its request is read: the send
        # may find the socket closed, and what the server said is still there to read.
        with contextlib.suppress(ConnectionClosed):
            ws.send(json.dumps(body))
        try:
            while True:
                read.append(json.loads(ws.recv(timeout=1.5 if frames == 0 else 10)))
                if "code" not in read[-1] and len(read) >= frames:
                    return read, None
        except TimeoutError:
            return read, None
        except ConnectionClosed as closed:
            assert closed.rcvd is not None
            return read, closed.rcvd.code


JOINS: dict[str, tuple[str, dict[str, Any], int | None]] = {
    # kind: (token, request without room_id, close code; None: admitted)
    "user, as itself": (ALICE, {}, None),
    "user, hashed, by subprotocol": (BOB, {}, None),
    "user, naming itself": (BOB, {"user_id": "bob"}, None),
    "user, as someone else": (BOB, {"user_id": "alice"}, 4403),
    "user, an outsider": (MALLORY, {}, 4403),
    "admin, as a member": (ADMIN, {"user_id": "bob"}, None),
    "admin, hashed, as an outsider": (OPS, {"user_id": "mallory"}, 4403),
    "other tenant, same user id": (GLOBEX_ALICE, {}, 4404),
    "other tenant, admin": (GLOBEX_ADMIN, {"user_id": "alice"}, 4404),
    "old format": (LEGACY, {"user_id": "alice"}, 4404),
    "unknown": (UNKNOWN, {"user_id": "alice"}, 4401),
    "none": ("", {"user_id": "alice"}, 4401),
}


@pytest.mark.parametrize("kind", list(JOINS))
def test_join_with_every_kind_of_token(team: ServerProcess, rooms: Rooms, kind: str) -> None:
    token, request_, code = JOINS[kind]
    before = state(team, rooms)
    body = {"room_id": rooms.private, "history": 1, **request_}
    frames, closed = join(team, token or None, body, subprotocol="subprotocol" in kind)
    assert closed == code, (kind, frames)
    if code is None:  # admitted: the replay came, sent by alice
        assert [f["message"]["text"] for f in frames] == [f"hello {rooms.private[:8]}"]
    else:
        assert len(frames) == 1 and frames[0]["code"] == code - 4000, frames
        assert state(team, rooms) == before  # a refused Join adds nobody


def test_an_ndjson_join_acts_as_the_tokens_user(team: ServerProcess, rooms: Rooms) -> None:
    body = {"room_id": rooms.private, "history": 1}
    with team.http(BOB) as http, http.stream("POST", "/v1/chat/Join", json=body) as r:
        assert r.status_code == 200
        first = json.loads(next(r.iter_lines()))
    assert first["message"]["text"] == f"hello {rooms.private[:8]}"
    before = state(team, rooms)
    refused = call(team, MALLORY, "Join", body)
    assert refused.status_code == 403 and refused.json()["id"] == "chat.join"
    refused = call(team, BOB, "Join", {**body, "user_id": "alice"})
    assert refused.status_code == 403 and refused.json()["id"] == "chat.join"
    assert state(team, rooms) == before


# -- the stream cap per token (the rate: test_rate_limit.py) -------------------------------


@pytest.fixture
def limited(start_server: Callable[..., ServerProcess], tmp_path: Path) -> ServerProcess:
    path = tokens_file(tmp_path / "tokens")
    return start_server(
        tcp=True,
        extra=[
            "--tokens-file", str(path), "--rate-limit", "5/s", "--rate-burst", "5",
            "--max-streams-per-token", "2",
        ],
    )  # fmt: skip


@pytest.mark.one_backend
def test_streams_are_capped_per_token_not_rate_limited(limited: ServerProcess) -> None:
    room = ok(limited, ALICE, "Create", {"name": "capped"})["room"]["id"]
    ok(limited, ALICE, "Send", {"room_id": room, "text": "first"})
    body = {"room_id": room, "history": 1}
    # Joins past the rate (5/s): 7 in a row, one at a time, none refused.
    for _ in range(7):
        assert join(limited, ALICE, body)[1] is None
    url = f"ws://127.0.0.1:{limited.port}/v1/chat/Join"
    auth = {"Authorization": f"Bearer {ALICE}"}
    with connect(url, additional_headers=auth) as one, connect(url, additional_headers=auth) as two:
        for ws in (one, two):
            ws.send(json.dumps(body))
            assert json.loads(ws.recv(timeout=10))["message"]["text"] == "first"  # admitted
        frames, code = join(limited, ALICE, body)
        assert code == 4429
        assert frames == [{
            "id": "v1", "code": 429, "status": "Too Many Requests",
            "detail": "too many streams: at most 2 per token (max_streams_per_token)",
        }]  # fmt: skip
        ndjson = call(limited, ALICE, "Join", body)
        assert ndjson.status_code == 429 and ndjson.json() == frames[0]
        # Another token's streams are its own.
        assert join(limited, BOB, body)[1] is None
    # Those two closed: room for more (the server notices a closed stream at once).
    deadline = time.monotonic() + 10
    while join(limited, ALICE, body)[1] is not None:
        assert time.monotonic() < deadline


@pytest.mark.one_backend
@pytest.mark.parametrize(
    ("token", "tenant", "user", "admin"),
    [
        (ALICE, "acme", "alice", False),
        (BOB, "acme", "bob", False),  # held as a hash
        (ADMIN, "acme", "", True),
        (OPS, "acme", "", True),
        (GLOBEX_ALICE, "globex", "alice", False),
        (LEGACY, "", "", True),  # its own tenant, keyed by its hash: not shown
    ],
    ids=["user", "hashed-user", "admin", "hashed-admin", "other-tenant", "legacy"],
)
def test_whoami_says_whom_each_token_acts_as(
    team: ServerProcess, token: str, tenant: str, user: str, admin: bool
) -> None:
    r = call(team, token, "Whoami", {})
    assert r.status_code == 200, r.text
    identity = {"tenant": tenant, "user_id": user, "admin": admin, "open": False}
    assert r.json() == {"identity": identity}
    assert token not in r.text and hashlib.sha256(token.encode()).hexdigest() not in r.text
    assert call(team, UNKNOWN, "Whoami", {}).status_code == 401


# -- the CLI with a user token ----------------------------------------------------------------


def test_the_cli_with_a_user_token_says_what_went_wrong(team: ServerProcess, rooms: Rooms) -> None:
    from tests.helpers import chatctl, cli_env

    alice = cli_env(team, CHATCTL_TOKEN=ALICE, CHATCTL_USER="alice")
    r = chatctl("send", rooms.private, "as bob", "--user", "bob", env=alice)
    assert r.returncode == 4
    assert r.stderr.splitlines() == [
        "error: this token acts only as user alice, not bob (chat.send, HTTP 403)",
        "hint: leave out --user: this token acts only as alice",
    ]
    bob = cli_env(team, CHATCTL_TOKEN=BOB, CHATCTL_USER="bob")
    r = chatctl("kick", rooms.private, "alice", "--yes", env=bob)
    assert r.returncode == 4
    assert r.stderr.splitlines() == [
        "error: only the room's creator or an admin token may kick (to leave the room yourself,"
        " use Leave) (chat.kick, HTTP 403)",
        "hint: ask the room's creator, or someone with an admin token",
    ]
    r = chatctl("send", rooms.private, "fine", "-o", "id", env=alice)
    assert r.returncode == 0, r.stderr


def test_a_room_name_resolves_among_the_acting_users_rooms_first(
    team: ServerProcess, tmp_path: Path
) -> None:
    """Issue 22: bob names a public room like alice's; each one's commands by that name
    still reach their own room (no user configured: the token's), and so do an admin
    token's acting as one of them. Where the acting user's rooms do not settle it (carol
    is in neither; alice in both, once invited), the name is ambiguous: exit 2, nothing
    sent."""
    from tests.helpers import chatctl, fresh_home_env

    name = f"general-{uuid.uuid4().hex[:8]}"
    alices = ok(team, ALICE, "Create", {"name": name})["room"]["id"]
    bobs = ok(team, BOB, "Create", {"name": name})["room"]["id"]
    env = fresh_home_env(tmp_path / "home", CHATCTL_URL=team.url)
    alice, carol = {**env, "CHATCTL_TOKEN": ALICE}, {**env, "CHATCTL_TOKEN": CAROL}
    for token, room in ((ALICE, alices), (BOB, bobs)):
        r = chatctl("send", name, "mine", "-o", "json", env={**env, "CHATCTL_TOKEN": token})
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout)["message"]["room_id"] == room
    r = chatctl("history", name, "--user", "bob", "-o", "id", "--token", ADMIN, env=env)
    assert r.returncode == 0, r.stderr
    assert [ok(team, ADMIN, "History", {"room_id": bobs})["messages"][0]["id"]] == r.stdout.split()

    def ambiguous(r: Any) -> None:
        assert r.returncode == 2, r.stderr
        assert r.stderr.startswith(f"error: 2 rooms are named '{name}': ")
        assert r.stderr.splitlines()[1] == "hint: name the room by its id instead"

    ambiguous(chatctl("send", name, "whose?", env=carol))
    ok(team, BOB, "Invite", {"room_id": bobs, "user_id": "alice"})
    ambiguous(chatctl("send", name, "which?", env=alice))
    for room in (alices, bobs):
        assert len(ok(team, ADMIN, "History", {"room_id": room})["messages"]) == 1


@pytest.mark.one_backend
def test_a_join_closed_before_it_sends_its_request_says_why(
    team: ServerProcess, rooms: Rooms
) -> None:
    """An unknown token's stream is closed (4401) right after the handshake. When that
    close has arrived before the client sends its JoinRequest, the send must not escape
    as a traceback: the stream reports the close, as at any other moment, and the CLI
    says it in one line with the token hint."""
    from websockets.protocol import State

    from chatctl.client import Client
    from chatctl.errors import StreamClosed
    from tests.helpers import chatctl, cli_env, wait_for

    client = Client(team.url, UNKNOWN)
    try:
        stream = client.join()
        wait_for(lambda: stream.ws.state is State.CLOSED, 10, "the server to close the stream")
        stream.start({"room_id": rooms.private, "user_id": "alice"})
        with pytest.raises(StreamClosed) as closed:
            stream.next(timeout=10)
        assert closed.value.close_code == 4401
        stream.close()
    finally:
        client.close()
    env = cli_env(team, CHATCTL_TOKEN=UNKNOWN, CHATCTL_USER="alice")
    r = chatctl("join", rooms.private, "--count", "1", env=env)
    assert r.returncode == 4
    assert r.stderr.splitlines() == [
        "error: stream closed: Unauthorized (close 4401)",
        "hint: set a token with --token, CHATCTL_TOKEN or: chatctl config set token -",
    ]
    # With no user configured, the Whoami asked after the handshake is refused first.
    del env["CHATCTL_USER"]
    r = chatctl("join", rooms.private, "--count", "1", env=env)
    assert r.returncode == 4
    assert r.stderr.splitlines() == [
        "error: Unauthorized (v1, HTTP 401)",
        "hint: set a token with --token, CHATCTL_TOKEN or: chatctl config set token -",
    ]
