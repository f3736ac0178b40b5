"""Send's rules, proven equal where they are written more than once (issue 24, item 3).

A Send's rules (the Idempotency-Key, the room, the membership, the room's order) are
written three times in two languages, for speed: ``SQLiteSession.send`` and
``send_many``'s savepoint loop in Python, and ``_send_statement`` and ``_SEND_MANY`` as two
PostgreSQL statements. This test runs the same random sequences of Create, Invite, Kick,
Leave, Delete, Send and bulk Sends (with and without Idempotency-Keys, by admins and by
user tokens, senders members or not, private and public rooms, rooms that are gone)
through four lanes:

- SQLite, every Send alone (``ChatService.send``: ``SQLiteSession.send``);
- SQLite, every Send in a bulk batch (``ChatService.send_many``: the savepoint loop);
- PostgreSQL, every Send alone (``_SEND`` / ``_SEND_KEYED``);
- PostgreSQL, every Send in a bulk batch (``_SEND_MANY``),

and asserts that each step comes to the same outcome in all four: stored (and then the
same answer, the same message id for the same key) or refused, with the same refusal
type (HTTP status) and detail; and that each room ends with the same messages in the same
order. A bulk Send with ``stop`` is, in the one-by-one lanes, Sends until the first
refusal. A rule changed in one place fails here until it changes everywhere.

Driven in-process, at ``ChatService`` (the rules over a real store, a real SQLite file and
a real PostgreSQL database): the HTTP edge in front is the same code on both backends, and
going through it would cost ten times the time per step for nothing it could differ on.
Each example runs in its own tenant, so no state needs resetting between examples.

What legitimately differs is normalised: ids and times are made by each lane, so a room
is named by the step that created it and a message by the step that first answered it
(a key's replay answers the same label, or it is a failure); times are left out. After
each bulk Send the rooms' messages are compared too: a batch must not store a line it did
not answer as stored.

``EVERY_CASE`` goes through each case every run; ``--hypothesis-show-statistics`` shows
how often the drawn sequences reached each outcome. The default run takes ~15 s; a longer
one (the soak): ``CHATCTL_TEST_SEND_EXAMPLES=5000 pytest -n 0
tests/server/test_send_rules.py`` (read at import: the test run clears ``CHATCTL_*``).
"""

from __future__ import annotations

import asyncio
import json
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from chatctl.schema import ENDPOINTS, Limits, validate_request
from chatctl.server.domain import Conflict, Forbidden, Invalid, NotFound, Refused
from chatctl.server.rules import ChatService
from chatctl.server.sql import Session
from chatctl.server.store import Store
from chatctl.server.store_sqlite import SQLiteStore
from chatctl.server.tokens import Principal
from tests import postgres

pytestmark = pytest.mark.postgres

EXAMPLES = int(os.environ.get("CHATCTL_TEST_SEND_EXAMPLES", "0") or 0) or 100

USERS = ("ann", "bob", "cyd", "dee")
KEYS = ("k1", "k2", "k3")
#: Rooms are named by slot: the n-th Create of the sequence (a slot no Create filled, or
#: one whose room was deleted, is a room that does not exist).
SLOTS = 3
#: Small bounds, so that sequences reach them: a full room, a user's room quota.
#: (Byte quotas stay out of reach here: see the xfail test below.)
LIMITS = Limits(max_rooms_per_tenant=6, max_members_per_room=3, max_rooms_per_user=2)
STATUS = {Invalid: 400, Forbidden: 403, NotFound: 404, Conflict: 409}

# -- the steps ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Change:
    """Create (``room`` ignored, ``users`` its members), Invite, Kick, Leave or Delete."""

    endpoint: str
    actor: str | None  # a user token's user; None: an admin token
    room: int
    user: str
    users: tuple[str, ...] = ()
    private: bool = False
    key: str | None = None


@dataclass(frozen=True)
class Message:
    room: int
    user: str
    text: str
    key: str | None


@dataclass(frozen=True)
class Sends:
    """One Send (one message, ``bulk`` False) or a bulk Send of several."""

    actor: str | None
    messages: tuple[Message, ...]
    bulk: bool
    stop: bool = False


Step = Change | Sends

users = st.sampled_from(USERS)
actors = st.none() | users
rooms = st.integers(0, SLOTS - 1)
#: Mostly none, so that a key is more often retried than misused.
keys = st.one_of(st.none(), st.none(), st.sampled_from(KEYS))
change_keys = st.one_of(st.none(), st.none(), st.none(), st.none(), st.sampled_from(KEYS))
messages = st.builds(Message, rooms, users, st.sampled_from(("hi", "yo", "a longer text")), keys)

creates = st.builds(
    Change,
    st.just("Create"),
    actors,
    st.just(0),
    st.just(""),
    st.lists(users, min_size=1, max_size=3).map(tuple),
    st.booleans(),
    change_keys,
)
changes = st.builds(
    Change,
    st.sampled_from(("Invite", "Kick", "Leave", "Delete")),
    actors,
    rooms,
    users,
    st.just(()),
    st.just(False),
    change_keys,
)
singles = st.builds(Sends, actors, st.tuples(messages), st.just(False))
bulks = st.builds(
    Sends,
    actors,
    st.lists(messages, min_size=1, max_size=5).map(tuple),
    st.just(True),
    st.booleans(),
)


def with_retries(first: list[Step], then: list[Step], retries: list[tuple[int, int]]) -> list[Step]:
    """``first + then``, with some Sends of ``then`` done again later (a client retrying,
    with its key: the same answer, nothing stored twice)."""
    sequence = first + then
    for source, offset in retries:
        sends = [at for at, step in enumerate(sequence) if isinstance(step, Sends)]
        if sends:
            at = sends[source % len(sends)]
            sequence.insert(at + 1 + offset % (len(sequence) - at), sequence[at])
    return sequence


#: A room or two first (most Sends then find one), then anything, Sends the most.
steps = st.builds(
    with_retries,
    st.lists(creates, min_size=1, max_size=3),
    st.lists(st.one_of(creates, changes, singles, singles, singles, bulks), max_size=22),
    st.lists(st.tuples(st.integers(0, 40), st.integers(0, 40)), max_size=5),
)

#: One sequence through every case at least once, in each run whatever is drawn.
_HI, _YO = Message(0, "ann", "hi", "k1"), Message(0, "ann", "yo", "k1")
EVERY_CASE: list[Step] = [
    Change("Create", None, 0, "", ("ann", "bob"), private=True, key="k3"),
    Change("Create", "bob", 0, "", ("bob", "cyd")),
    Sends(None, (_HI,), bulk=False),
    Sends(None, (_HI,), bulk=False),  # replayed: the same message
    Sends(None, (_YO,), bulk=False),  # the key with another request: 409
    Sends(None, (Message(0, "k3-misused", "hi", "k3"),), bulk=False),  # Create's key: 409
    # a key twice in one bulk Send (PostgreSQL splits the batch), a non-member of a private
    # room (403), of a public room (400), no such room (404), then the same with stop
    bulk := Sends(
        None,
        (
            Message(1, "cyd", "a", "k2"),
            Message(1, "cyd", "a", "k2"),
            Message(0, "dee", "b", None),
            Message(1, "dee", "c", None),
            Message(2, "ann", "d", None),
            Message(1, "bob", "e", None),
        ),
        bulk=True,
    ),
    Sends(None, bulk.messages, bulk=True, stop=True),
    # with stop, a key misused (409) stops the batch: the line after it is not stored
    Sends(None, (Message(0, "bob", "x", "k1"), Message(0, "bob", "y", None)), True, True),
    Sends("bob", (Message(1, "bob", "as bob", None),), bulk=False),  # a user token
    Change("Kick", None, 0, "ann"),
    Sends(None, (_HI,), bulk=False),  # a kicked user's key still replays its answer
    Sends(None, (Message(0, "ann", "after the kick", None),), bulk=False),
    Change("Invite", None, 0, "ann"),
    Change("Leave", None, 1, "cyd"),
    Sends(None, (Message(1, "cyd", "gone", None),), bulk=False),
    Change("Delete", "bob", 1, ""),
    Sends(None, (Message(1, "bob", "deleted", None),), bulk=False),
]

# -- a lane: one store, one way of sending ------------------------------------------------


@dataclass
class Lane:
    name: str
    service: ChatService
    bulk: bool
    tenant: str = ""
    rooms: dict[int, str] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)
    #: each key's message, once a Send with it was answered
    keyed: dict[str, str] = field(default_factory=dict)
    replays: int = 0

    def principal(self, user: str | None) -> Principal | None:
        if user is None:
            return None
        return Principal(self.tenant, user, admin=False, token_id=f"token-{user}")

    def room_id(self, slot: int) -> str:
        return self.rooms.get(slot, f"no-room-{slot}")

    def label(self, real: str, step: int) -> str:
        return self.labels.setdefault(real, f"m{step}.{len(self.labels)}")

    async def run(self, sequence: list[Step]) -> list[Any]:
        self.tenant = f"t-{uuid.uuid4().hex}"
        self.rooms, self.labels, self.keyed, self.replays = {}, {}, {}, 0
        outcomes: list[Any] = []
        creates = 0
        for number, step in enumerate(sequence):
            if isinstance(step, Change):
                outcomes.append(await self.change(step, creates))
                creates += step.endpoint == "Create"
            else:
                answers = await self.send(step, number)
                # After a batch, what it stored too (not only what it answered).
                outcomes.append((answers, await self.rooms_now() if step.bulk else None))
        outcomes.append(await self.rooms_now())
        return outcomes

    async def change(self, step: Change, slot: int) -> Any:
        if step.endpoint == "Create":
            body: dict[str, Any] = {"name": f"room{slot}", "user_ids": list(step.users)}
            body["private"] = step.private
        else:
            body = {"room_id": self.room_id(step.room)}
            if step.endpoint != "Delete":
                body["user_id"] = step.user
        request = validate_request(ENDPOINTS[step.endpoint], body)
        try:
            answer = await self.service.call(
                step.endpoint, self.tenant, request, step.key, actor=self.principal(step.actor)
            )
        except Refused as refusal:
            return refused(refusal)
        assert isinstance(answer, str)
        room = json.loads(answer)["room"]
        if step.endpoint == "Create":
            self.rooms.setdefault(slot, room["id"])  # a key's replay names the first room
        del room["created_at"]
        room["id"] = next((f"r{n}" for n, real in self.rooms.items() if real == room["id"]))
        return room

    async def send(self, step: Sends, number: int) -> list[Any]:
        actor = self.principal(step.actor)
        requests = [
            (
                validate_request(
                    ENDPOINTS["Send"],
                    {
                        "room_id": self.room_id(m.room),
                        # a user token sends as its user (``access.bind``)
                        "user_id": m.user if step.actor is None else step.actor,
                        "client": "c",
                        "text": m.text,
                    },
                ),
                m.key,
            )
            for m in step.messages
        ]
        answers: list[str | Refused] = []
        if self.bulk:
            answers = await self.service.send_many(
                self.tenant, requests, stop=step.stop, actor=actor
            )
        else:
            for request, key in requests:
                try:
                    answers.append(await self.service.send(self.tenant, request, key, actor=actor))
                except Refused as refusal:
                    answers.append(refusal)
                    if step.stop:
                        break
        outcomes: list[Any] = []
        for (_, key), answer in zip(requests, answers, strict=False):
            if isinstance(answer, Refused):
                outcomes.append(refused(answer))
                continue
            message = json.loads(answer)["message"]
            label = self.label(message["id"], number)
            if key is not None:
                # The same key answers the same message, in every lane.
                if key in self.keyed:
                    self.replays += 1
                assert self.keyed.setdefault(key, label) == label, (self.name, key)
            outcomes.append(self.message(message, label))
        return outcomes

    def message(self, message: dict[str, Any], label: str) -> dict[str, Any]:
        room = next((f"r{n}" for n, real in self.rooms.items() if real == message["room_id"]))
        return {**message, "id": label, "room_id": room, "sent_at": None}

    async def rooms_now(self) -> dict[str, Any]:
        """Every room's messages, in the room's order; None for a room that is gone."""

        async def read(db: Session) -> dict[str, Any]:
            found: dict[str, Any] = {}
            for slot, real in sorted(self.rooms.items()):
                room = await db.get_room(self.tenant, real)
                rows = [] if room is None else await db.messages(room)
                found[f"r{slot}"] = (
                    None
                    if room is None
                    else [
                        (self.labels.get(row.id, "unanswered"), row.user_id, row.text)
                        for row in rows
                    ]
                )
            return found

        return await self.service.store.read(read)


def refused(refusal: Refused) -> tuple[int, str]:
    return STATUS[type(refusal)], refusal.detail


# -- the stores, for the whole module -----------------------------------------------------


class Stores:
    """The lanes, on one event loop for the module (a plain class: a failing example's
    report shows its steps, not the lanes' state)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, lanes: list[Lane]) -> None:
        self.loop = loop
        self.lanes = lanes

    def __repr__(self) -> str:
        return "stores"


@pytest.fixture(scope="module")
def stores(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stores]:
    from chatctl.server.store_pg import PostgresStore

    postgres.require()
    loop = asyncio.new_event_loop()
    sqlite = SQLiteStore(str(tmp_path_factory.mktemp("send-rules") / "chat.db"))
    with postgres.fresh_database() as url:
        pg = PostgresStore(url)
        loop.run_until_complete(pg.start())
        backends: list[tuple[str, Store]] = [("sqlite", sqlite), ("postgres", pg)]
        lanes = [
            Lane(f"{name} {'bulk' if bulk else 'single'}", ChatService(store, LIMITS), bulk)
            for name, store in backends
            for bulk in (False, True)
        ]
        try:
            yield Stores(loop, lanes)
        finally:
            loop.run_until_complete(pg.close())
            sqlite.close_now()
            loop.close()


def test_lanes_are_what_they_claim(stores: Stores) -> None:
    """The four lanes: both stores, each Send alone and in batches."""
    assert [lane.name for lane in stores.lanes] == [
        "sqlite single",
        "sqlite bulk",
        "postgres single",
        "postgres bulk",
    ]


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(sequence=steps)
@example(sequence=EVERY_CASE)
def test_send_rules_agree_on_both_stores(stores: Stores, sequence: list[Step]) -> None:
    outcomes = agree(stores.loop, stores.lanes, sequence)
    # What the sequences reached (``--hypothesis-show-statistics``): every kind of refusal
    # of a Send, keys replayed and in conflict, stops.
    for step, outcome in zip(sequence, outcomes, strict=False):
        if isinstance(step, Change):
            event(
                f"{step.endpoint}: "
                + (f"{outcome[0]} {outcome[1]}" if isinstance(outcome, tuple) else "done")
            )
        else:
            for message, sent in zip(step.messages, outcome[0], strict=False):
                keyed = "keyed " if message.key else ""
                event(
                    f"{keyed}Send: {sent[0]} {sent[1]}"
                    if isinstance(sent, tuple)
                    else f"{keyed}Send: stored"
                )
            if step.stop and len(outcome[0]) < len(step.messages):
                event("bulk Send stopped early")
    if stores.lanes[0].replays:
        event("keyed Send: a stored message replayed")


@pytest.mark.xfail(
    strict=True,
    reason="ChatService.send_many charges every line's bytes before the store refuses any:"
    " a bulk Send's later line is over the byte quota where, alone, it is refused as a"
    " non-member's (rules.py; found by this test)",
)
def test_a_bulk_send_counts_bytes_as_sends_alone_would(stores: Stores) -> None:
    capped = Limits(max_bytes_per_user_day=40)
    lanes = [
        Lane(lane.name, ChatService(lane.service.store, capped), lane.bulk) for lane in stores.lanes
    ]
    long = Message(0, "ann", "a longer text", None)  # 13 bytes; ann is no member
    sequence: list[Step] = [
        Change("Create", None, 0, "", ("bob",)),
        Sends("ann", (long,) * 4, bulk=True),
    ]
    agree(stores.loop, lanes, sequence)


def agree(loop: asyncio.AbstractEventLoop, lanes: list[Lane], sequence: list[Step]) -> list[Any]:
    """Run ``sequence`` through every lane; fail naming the first step they differ at, or
    answer the outcomes they agree on."""

    async def all_lanes() -> list[list[Any] | BaseException]:
        # Each lane to its end (one failing must not leave the others running).
        return await asyncio.gather(*(lane.run(sequence) for lane in lanes), return_exceptions=True)

    results: list[list[Any]] = []
    for result in loop.run_until_complete(all_lanes()):
        if isinstance(result, BaseException):
            raise result
        results.append(result)
    for number, outcomes in enumerate(zip(*results, strict=True)):
        if any(outcome != outcomes[0] for outcome in outcomes):
            what = sequence[number] if number < len(sequence) else "the rooms at the end"
            each = "".join(
                f"\n  {lane.name}: {outcome}" for lane, outcome in zip(lanes, outcomes, strict=True)
            )
            pytest.fail(f"the lanes differ at step {number}, {what}:{each}")
    return results[0]
