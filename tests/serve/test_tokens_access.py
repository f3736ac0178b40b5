"""The access rules of admin and user tokens, endpoint by endpoint, for every kind of
actor and room (``chatctl.server.access``; the contract's table says the same)."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from chatctl.server.access import (
    RoomFacts,
    authorize,
    bind,
    creator_of,
    idempotency_scope,
    visible,
)
from chatctl.server.decode import STATUS
from chatctl.server.domain import NotFound
from chatctl.server.domain import Refused as Refusal
from chatctl.server.tokens import OPEN, Principal

ALICE = Principal("tenant:acme", "alice", False, "a" * 64)
ADMIN = Principal("tenant:acme", None, True, "b" * 64)
LEGACY = Principal("c" * 64, None, True, "c" * 64)

ENDPOINTS = ["Create", "Delete", "Invite", "Send", "History", "Kick", "Leave", "List", "Join"]
ROOM_ENDPOINTS = [e for e in ENDPOINTS if e not in ("Create", "List")]

# Who alice is to the room (she holds a user token); the room's creator is "carol" unless
# alice is it.
ACTORS = {
    "creator": {"creator": "alice", "actor_is_member": True},
    "creator-who-left": {"creator": "alice", "actor_is_member": False},
    "member": {"creator": "carol", "actor_is_member": True},
    "outsider": {"creator": "carol", "actor_is_member": False},
    "in-admin-room": {"creator": None, "actor_is_member": True},
}

# The contract's table, for a user token, as (endpoint, who alice is, private?) -> allowed.
# Send, Join and History are never refused here: their membership rules hold for every
# token alike and live in the chat rules.
CREATOR = {"creator", "creator-who-left"}
MEMBERS = {"creator", "member", "in-admin-room"}


def allowed(endpoint: str, actor: str, private: bool, barred: bool) -> bool:
    if endpoint in ("Delete", "Kick"):
        return actor in CREATOR
    if endpoint == "Invite":
        return actor in CREATOR or (actor in MEMBERS and not barred)
    if endpoint == "Leave":
        return not private or actor in MEMBERS | CREATOR
    return endpoint in ("Send", "Join", "History")


def request_for(endpoint: str) -> dict[str, Any]:
    target = {"Invite": "bob", "Kick": "bob"}
    return {"room_id": "r1", "user_id": target.get(endpoint, "alice")}


@pytest.mark.parametrize("barred", [False, True], ids=["", "target-barred"])
@pytest.mark.parametrize("private", [False, True], ids=["public", "private"])
@pytest.mark.parametrize("actor", list(ACTORS))
@pytest.mark.parametrize("endpoint", ROOM_ENDPOINTS)
def test_user_token(endpoint: str, actor: str, private: bool, barred: bool) -> None:
    room = RoomFacts(private=private, target_barred=barred, **ACTORS[actor])
    request = bind(ALICE, endpoint, request_for(endpoint))
    if allowed(endpoint, actor, private, barred):
        authorize(ALICE, endpoint, request, room)
    else:
        with pytest.raises(Refusal) as refused:
            authorize(ALICE, endpoint, request, room)
        assert STATUS[type(refused.value)] == 403
    assert visible(ALICE, room) == (not private or actor in MEMBERS | CREATOR)


@pytest.mark.parametrize("private", [False, True], ids=["public", "private"])
@pytest.mark.parametrize("principal", [ADMIN, LEGACY, OPEN], ids=["admin", "legacy", "open"])
@pytest.mark.parametrize("endpoint", ROOM_ENDPOINTS)
def test_admin_tokens_keep_m3os_behaviour(
    endpoint: str, principal: Principal, private: bool
) -> None:
    # Acting as anyone: another user in every user_id, in a room it neither made nor is in.
    request = {"room_id": "r1", "user_id": "bob"}
    assert bind(principal, endpoint, request) == request
    room = RoomFacts(private=private, creator="carol", actor_is_member=False, target_barred=True)
    authorize(principal, endpoint, request, room)
    assert visible(principal, room)


@pytest.mark.parametrize("endpoint", ["Send", "Join", "History", "Leave"])
@pytest.mark.parametrize("absent", [{}, {"user_id": None}, {"user_id": ""}], ids=str)
def test_an_absent_user_means_the_tokens_user(endpoint: str, absent: dict[str, Any]) -> None:
    request = {"room_id": "r1", "text": "hi", **absent}
    assert bind(ALICE, endpoint, request) == {**request, "user_id": "alice"}
    assert bind(ALICE, endpoint, {"room_id": "r1", "user_id": "alice"})["user_id"] == "alice"


@pytest.mark.parametrize("endpoint", ["Send", "Join", "History", "Leave"])
def test_naming_another_user_is_403(endpoint: str) -> None:
    with pytest.raises(Refusal) as refused:
        bind(ALICE, endpoint, {"room_id": "r1", "user_id": "bob"})
    assert STATUS[type(refused.value)] == 403
    assert "alice" in refused.value.detail and "bob" in refused.value.detail


def test_a_user_of_the_wrong_type_is_left_for_validation() -> None:
    assert bind(ALICE, "Send", {"user_id": 5}) == {"user_id": 5}
    assert bind(ALICE, "Create", {"user_ids": "alice"}) == {"user_ids": "alice"}


@pytest.mark.parametrize("endpoint", ["Invite", "Kick", "List", "Delete"])
def test_fields_that_do_not_name_the_actor_are_left_alone(endpoint: str) -> None:
    # Invite and Kick name their target; List's user_id is a filter; Delete names nobody.
    assert bind(ALICE, endpoint, {"room_id": "r1", "user_id": "bob"}) == {
        "room_id": "r1",
        "user_id": "bob",
    }
    assert "user_id" not in bind(ALICE, endpoint, {"room_id": "r1"})


@pytest.mark.parametrize(
    ("given_ids", "stored"),
    [
        (None, ["alice"]),
        ([], ["alice"]),
        (["bob", "dan"], ["alice", "bob", "dan"]),
        (["bob", "alice"], ["bob", "alice"]),
    ],
)
def test_create_by_a_user_token(given_ids: list[str] | None, stored: list[str]) -> None:
    request = {"name": "general"} if given_ids is None else {"name": "g", "user_ids": given_ids}
    assert bind(ALICE, "Create", request)["user_ids"] == stored
    assert creator_of(ALICE) == "alice"
    assert bind(ADMIN, "Create", request) == request
    assert creator_of(ADMIN) is None


def test_idempotency_keys_of_user_tokens_are_their_own() -> None:
    bob = Principal("tenant:acme", "bob", False, "d" * 64)
    keys = {idempotency_scope(p, "k-1") for p in (ALICE, bob, ADMIN)}
    assert len(keys) == 3
    assert idempotency_scope(ADMIN, "k-1") == "k-1"  # as before user tokens
    assert idempotency_scope(LEGACY, "k-1") == "k-1"


class Rooms:
    """A tenant's rooms as facts, enough to play the attacks of issue 13 through the
    rules: who created each, who is in it, who is barred."""

    def __init__(self) -> None:
        self.rooms: dict[str, dict[str, Any]] = {}

    def create(self, principal: Principal, room_id: str, private: bool, **req: Any) -> None:
        request = bind(principal, "Create", req)
        self.rooms[room_id] = {
            "private": private,
            "creator": creator_of(principal),
            "members": set(request.get("user_ids") or []),
            "barred": set(),
        }

    def facts(self, principal: Principal, room_id: str, target: str = "") -> RoomFacts | None:
        room = self.rooms.get(room_id)
        if room is None:
            return None
        return RoomFacts(
            room["private"],
            room["creator"],
            principal.user in room["members"],
            target in room["barred"],
        )

    def attempt(self, principal: Principal, endpoint: str, **req: Any) -> int:
        """The status the access rules give (200: allowed on to the chat rules)."""
        try:
            request = bind(principal, endpoint, req)
            facts = self.facts(principal, req["room_id"], request.get("user_id", ""))
            if facts is None:  # as the rules find no room of another tenant
                raise NotFound("room not found")
            authorize(principal, endpoint, request, facts)
        except Refusal as refusal:
            return STATUS[type(refusal)]
        return 200


def test_the_attacks_of_issue_13_are_refused() -> None:
    mallory = Principal("tenant:acme", "mallory", False, "e" * 64)
    rooms = Rooms()
    rooms.create(ALICE, "secret", private=True, user_ids=["bob"])
    assert rooms.rooms["secret"]["members"] == {"alice", "bob"}
    attacks = {
        "self-invite": ("Invite", {"user_id": "mallory"}),
        "read as alice": ("History", {"user_id": "alice"}),
        "join as alice": ("Join", {"user_id": "alice"}),
        "send as alice": ("Send", {"user_id": "alice", "text": "hi"}),
        "kick the creator": ("Kick", {"user_id": "alice"}),
        "kick bob": ("Kick", {"user_id": "bob"}),
        "delete": ("Delete", {}),
        "leave as bob": ("Leave", {"user_id": "bob"}),
        "peek by leaving": ("Leave", {}),
    }
    for what, (endpoint, req) in attacks.items():
        assert rooms.attempt(mallory, endpoint, room_id="secret", **req) == 403, what
    facts = rooms.facts(mallory, "secret")
    assert facts is not None and not visible(mallory, facts)
    # Another tenant's token does not find the room at all.
    globex = Principal("tenant:globex", None, True, "f" * 64)
    other_tenant = Rooms()
    assert other_tenant.attempt(globex, "Delete", room_id="secret") == 404
    # What alice and bob may do.
    assert rooms.attempt(ALICE, "Kick", room_id="secret", user_id="bob") == 200
    rooms.rooms["secret"]["members"].discard("bob")
    rooms.rooms["secret"]["barred"].add("bob")
    bob = Principal("tenant:acme", "bob", False, "d" * 64)
    assert rooms.attempt(bob, "Invite", room_id="secret", user_id="bob") == 403
    rooms.rooms["secret"]["members"].add("dan")
    dan = Principal("tenant:acme", "dan", False, "9" * 64)
    assert rooms.attempt(dan, "Invite", room_id="secret", user_id="bob") == 403  # barred
    assert rooms.attempt(dan, "Invite", room_id="secret", user_id="erin") == 200
    assert rooms.attempt(ALICE, "Invite", room_id="secret", user_id="bob") == 200
    assert rooms.attempt(ALICE, "Delete", room_id="secret") == 200


ACTOR_ENDPOINTS = st.sampled_from(["Send", "Join", "History", "Leave"])
VALUES = st.one_of(st.none(), st.text(max_size=5), st.integers(), st.just("alice"))


@given(endpoint=ACTOR_ENDPOINTS, user_id=VALUES, extra=st.dictionaries(st.text(), VALUES))
def test_a_user_token_never_acts_as_anyone_else(endpoint: str, user_id: Any, extra: Any) -> None:
    request = {**extra, "user_id": user_id}
    try:
        out = bind(ALICE, endpoint, request)
    except Refusal as refusal:
        assert STATUS[type(refusal)] == 403
        assert isinstance(user_id, str) and user_id not in ("", "alice")
        return
    # Either the actor, or a value validation refuses (not a string).
    assert out["user_id"] == "alice" or not isinstance(out["user_id"], str)
    assert {k: v for k, v in out.items() if k != "user_id"} == {
        k: v for k, v in request.items() if k != "user_id"
    }
