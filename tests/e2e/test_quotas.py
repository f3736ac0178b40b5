"""Quotas inside a tenant (issue 23), on a real ``chatctl serve`` process with a tokens
file: one member acting in bad faith cannot exhaust the tenant for the others. Each
tenant of the file serves one test, so their counts do not meet. Once on SQLite and once
on PostgreSQL (``CHATCTL_TEST_POSTGRES``)."""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import pytest

from tests import postgres
from tests.e2e.test_team_server import _close_clients, call, ok, team_server
from tests.helpers import ServerProcess

__all__ = ["_close_clients"]  # closes the keep-alive clients of call() after the module

#: the tenants' figures; each user token's share is half of them.
ROOMS_PER_TENANT = 4
MEMBERS_PER_ROOM = 8
BYTES_PER_TENANT_DAY = 3000


def _tokens() -> dict[str, tuple[str, bool]]:
    tokens = {}
    for tenant in ("rooms", "invites", "bytes"):
        tokens[f"tok-{tenant}-admin"] = (f"tenant={tenant} admin", False)
        for user in ("alice", "bob", "carol"):
            tokens[f"tok-{tenant}-{user}"] = (f"tenant={tenant} user={user}", False)
    return tokens


@pytest.fixture(scope="module", params=postgres.BACKENDS)
def quotas_server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    extra = ("--max-rooms-per-tenant", str(ROOMS_PER_TENANT))
    extra += ("--max-members-per-room", str(MEMBERS_PER_ROOM))
    extra += ("--max-bytes-per-tenant-day", str(BYTES_PER_TENANT_DAY))
    workdir = tmp_path_factory.mktemp("quotas")
    with team_server(request.param, workdir, _tokens(), extra) as server:
        yield server


def refused(r: httpx.Response, code: int, *words: str) -> str:
    """The detail of m3o's error object, checked to be a ``code`` naming ``words``."""
    assert r.status_code == code, r.text
    body = r.json()
    assert list(body) == ["id", "code", "detail", "status"] and body["code"] == code
    assert all(word in body["detail"] for word in words), body["detail"]
    detail: str = body["detail"]
    return detail


def test_one_member_creating_rooms_leaves_the_others_room_to_create(
    quotas_server: ServerProcess,
) -> None:
    server = quotas_server
    share = ROOMS_PER_TENANT // 2
    made = [ok(server, "tok-rooms-alice", "Create", {"name": f"a{i}"}) for i in range(share)]
    # alice goes on until refused: her quota, named with its figure and its flag.
    r = call(server, "tok-rooms-alice", "Create", {"name": "one too many"})
    refused(r, 403, "quota", "alice", f"at most {share} rooms", "max_rooms_per_user")
    # bob, of the same tenant, can still create.
    ok(server, "tok-rooms-bob", "Create", {"name": "bob's"})
    # An admin token is bound by the tenant's figure only: it takes the last room ...
    ok(server, "tok-rooms-admin", "Create", {"name": "the admin's"})
    # ... and then the tenant is full, for carol (400, as before: a count limit).
    r = call(server, "tok-rooms-carol", "Create", {"name": "carol's"})
    refused(r, 400, f"at most {ROOMS_PER_TENANT} per tenant", "max_rooms_per_tenant")
    # A room alice deletes is hers to make again.
    ok(server, "tok-rooms-alice", "Delete", {"room_id": made[0]["room"]["id"]})
    ok(server, "tok-rooms-alice", "Create", {"name": "again"})
    rooms = ok(server, "tok-rooms-admin", "List", {})["rooms"]
    assert sorted(r["name"] for r in rooms) == ["a1", "again", "bob's", "the admin's"]


def test_a_member_cannot_fill_the_room_its_creator_made(quotas_server: ServerProcess) -> None:
    server = quotas_server
    share = MEMBERS_PER_ROOM // 2
    room = ok(server, "tok-invites-alice", "Create", {"name": "alice's", "private": True})
    room_id = room["room"]["id"]
    ok(server, "tok-invites-alice", "Invite", {"room_id": room_id, "user_id": "bob"})
    for i in range(share):
        ok(server, "tok-invites-bob", "Invite", {"room_id": room_id, "user_id": f"junk{i}"})
    # bob is refused past the room's share, naming the quota and its figure ...
    r = call(server, "tok-invites-bob", "Invite", {"room_id": room_id, "user_id": "junk-more"})
    refused(r, 403, "quota", "bob", f"at most {share} users", "max_invites_per_user")
    # ... while the creator's invite works (she is bound by the room's size only).
    ok(server, "tok-invites-alice", "Invite", {"room_id": room_id, "user_id": "carol"})
    # Inviting someone already in the room adds nobody, so it is no quota's business.
    ok(server, "tok-invites-bob", "Invite", {"room_id": room_id, "user_id": "junk0"})
    rooms = ok(server, "tok-invites-admin", "List", {})["rooms"]
    members = next(r["user_ids"] for r in rooms if r["id"] == room_id)
    assert members == ["alice", "bob", *(f"junk{i}" for i in range(share)), "carol"]
    # Once the creator kicks one of bob's, bob has a seat of his share again.
    ok(server, "tok-invites-alice", "Kick", {"room_id": room_id, "user_id": "junk0"})
    ok(server, "tok-invites-bob", "Invite", {"room_id": room_id, "user_id": "dave"})


def test_a_member_over_the_byte_quota_is_refused_with_the_quota_named(
    quotas_server: ServerProcess,
) -> None:
    server = quotas_server
    share = BYTES_PER_TENANT_DAY // 2
    room_id = ok(
        server, "tok-bytes-admin", "Create", {"name": "r", "user_ids": ["alice", "bob", "x"]}
    )["room"]["id"]
    text = "é" * 500  # 1,000 bytes of UTF-8 in 500 characters
    ok(server, "tok-bytes-alice", "Send", {"room_id": room_id, "text": text})
    r = call(server, "tok-bytes-alice", "Send", {"room_id": room_id, "text": text})
    refused(
        r, 403, "quota", "alice", f"at most {share} message bytes a day", "max_bytes_per_user_day"
    )
    # What alice has left, she may still send; a bulk Send is counted line by line.
    bulk = "\n".join(
        json.dumps({"room_id": room_id, "text": t}) for t in ("a" * 400, "b" * 400, "c" * 50)
    )
    with server.http("tok-bytes-alice") as client:
        answer = client.post(
            "/v1/chat/Send", content=bulk, headers={"Content-Type": "application/x-ndjson"}
        )
    lines = [json.loads(line) for line in answer.text.splitlines()]
    assert "message" in lines[0] and "message" in lines[2], lines
    assert lines[1]["code"] == 403 and "max_bytes_per_user_day" in lines[1]["detail"]
    # bob has his own share; a Send refused for another reason costs nothing.
    ok(server, "tok-bytes-bob", "Send", {"room_id": room_id, "text": text})
    r = call(server, "tok-bytes-bob", "Send", {"room_id": "no-such-room", "text": "z" * 50})
    refused(r, 404, "room not found")
    # An admin token is bound by the tenant's figure only: 2,450 bytes are stored today,
    # so 600 more (sent as x) would pass the tenant's 3,000, and 550 fill it.
    admin_sends = {"room_id": room_id, "user_id": "x", "text": "y" * 600}
    r = call(server, "tok-bytes-admin", "Send", admin_sends)
    refused(r, 403, "quota", f"at most {BYTES_PER_TENANT_DAY}", "max_bytes_per_tenant_day")
    ok(server, "tok-bytes-admin", "Send", {**admin_sends, "text": "y" * 550})
    history = ok(server, "tok-bytes-admin", "History", {"room_id": room_id})["messages"]
    assert [len(m["text"]) for m in history] == [500, 400, 50, 500, 550]


def test_the_cli_says_which_quota_and_what_to_do(quotas_server: ServerProcess) -> None:
    from tests.helpers import chatctl, cli_env

    # The invites tenant: nobody has sent anything there.
    carol = cli_env(quotas_server, CHATCTL_TOKEN="tok-invites-carol", CHATCTL_USER="carol")
    share = BYTES_PER_TENANT_DAY // 2
    room_id = ok(quotas_server, "tok-invites-carol", "Create", {"name": "carol's"})["room"]["id"]
    r = chatctl("send", room_id, "x" * (share + 1), env=carol)
    assert (r.returncode, r.stdout) == (4, "")
    assert r.stderr.splitlines() == [
        f"error: quota: user carol may store at most {share} message bytes a day in this tenant"
        " (max_bytes_per_user_day); it renews at 00:00 UTC (chat.send, HTTP 403)",
        "hint: it renews at 00:00 UTC; or ask the server's operator to raise it",
    ]
