"""The PostgreSQL store on its own: migrations, index use, positions of ids from several
replicas, frames too big for a notification, notifications that commit with their change,
a Send in one round trip, and a database that stops answering. Needs
CHATCTL_TEST_POSTGRES (see tests/postgres.py)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any, TypeVar

import pytest
from websockets.sync.client import connect

from chatctl.schema import ENDPOINTS, validate_request
from chatctl.server import sql
from chatctl.server.domain import Key, NewMessage, Note, RoomRow, Unavailable
from chatctl.server.sql import Session
from tests import postgres
from tests.helpers import wait_for
from tests.server.conftest import start_server
from tests.server.helpers import Ticker

pytestmark = pytest.mark.postgres

T = TypeVar("T")


@pytest.fixture
def url() -> Iterator[str]:
    with postgres.fresh_database() as url:
        yield url


class Heard:
    """A fan-out that keeps what it is told (a replica's hub, without streams)."""

    def __init__(self) -> None:
        self.notes: list[Note] = []

    def deliver(self, note: Note) -> None:
        self.notes.append(note)

    def listening(self, tenant: str, room_id: str) -> bool:
        return True

    def interrupt(self, reason: str) -> None:
        pass

    def resume(self) -> None:
        pass

    def let_in(self, note: Any) -> None:
        self.notes.append(note)

    def listen_through(self, listener: Any) -> None:
        pass


@contextlib.asynccontextmanager
async def started(url: str, **kw: Any) -> AsyncIterator[Any]:
    from chatctl.server.store_pg import PostgresStore

    # Built off the loop: it connects (and migrates) synchronously, as at a server's start.
    store = await asyncio.to_thread(PostgresStore, url, **kw)
    await store.start()
    try:
        yield store
    finally:
        await store.close()


def req(endpoint: str, **body: object) -> dict[str, Any]:
    return validate_request(ENDPOINTS[endpoint], body)


async def new_room(store: Any, room_id: str, users: list[str], private: bool = False) -> RoomRow:
    async def create(db: Session) -> RoomRow:
        return await db.create_room("", room_id, room_id, "", "t", private, users)

    room: RoomRow = await store.write(create)
    return room


def test_migrations_apply_once_and_a_newer_schema_is_refused(url: str) -> None:
    import psycopg

    from chatctl.server.migrations import SchemaTooNew
    from chatctl.server.store_pg import MIGRATIONS, PostgresStore

    async def version() -> int:
        async with started(url) as store:
            return int(await store.schema_version())

    assert asyncio.run(version()) == len(MIGRATIONS)
    assert asyncio.run(version()) == len(MIGRATIONS)  # a second replica: nothing to apply
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("UPDATE chatctl_schema SET version = 99")
    with pytest.raises(SchemaTooNew, match="needs a chatctl that knows schema 99"):
        PostgresStore(url)


def test_rooms_from_before_creators_have_none_and_new_ones_keep_theirs(url: str) -> None:
    import psycopg

    from chatctl.server.store_pg import MIGRATIONS

    before = 2  # the version before rooms.creator
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE TABLE chatctl_schema (version integer NOT NULL)")
        for migration in MIGRATIONS[:before]:
            conn.execute(migration.encode())
        conn.execute("INSERT INTO chatctl_schema VALUES (%s)", (before,))
        conn.execute(
            "INSERT INTO rooms (tenant, id, name, description, created_at, private)"
            " VALUES ('', 'old', 'old', '', 't', true)"
        )

    async def scenario() -> tuple[RoomRow | None, RoomRow | None]:
        async with started(url) as store:

            async def create(db: Session) -> RoomRow:
                return await db.create_room("", "new", "new", "", "t", True, ["bob"], "alice")

            await store.write(create)

            async def read(db: Session) -> tuple[RoomRow | None, RoomRow | None]:
                return await db.get_room("", "old"), await db.get_room("", "new")

            rooms: tuple[RoomRow | None, RoomRow | None] = await store.read(read)
            return rooms

    old, new = asyncio.run(scenario())
    assert old is not None and old.creator is None
    assert new is not None and new.creator == "alice"


def test_every_statement_has_an_index_to_use(url: str) -> None:
    """EXPLAIN each statement the PostgreSQL store runs (the shared ones and its own, the
    Send included) with sequential scans priced out: a Seq Scan left in a plan means no
    index can serve it. (On tables this small the planner would otherwise pick one.)"""
    import psycopg

    from chatctl.server import store_pg
    from tests.server.test_store import statements

    asyncio.run(version_only(url))
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SET enable_seqscan = off")
        seen = 0
        for statement in [*statements(sql, store_pg), store_pg._SEND, store_pg._SEND_KEYED]:
            spelled = store_pg.PostgresSession._dialect(statement)
            # An array parameter (a bulk Send's columns, ``_SEND_MANY``) gets a list.
            named = {
                name: ["1"] if f"%({name})s::text[]" in spelled
                else [1.0] if f"%({name})s::float8[]" in spelled
                else "1"
                for name in _names(spelled)
            }  # fmt: skip
            args: Any = named if named else ["1"] * spelled.count("%s")
            explained = conn.execute("EXPLAIN " + spelled, args).fetchall()
            plan = "\n".join(row[0] for row in explained)
            scanned = [line for line in plan.splitlines() if "Seq Scan on" in line]
            assert not [s for s in scanned if "purging" not in s], (statement, plan)
            seen += 1
    assert seen > 25


def _names(statement: str) -> set[str]:
    import re

    return set(re.findall(r"%\((\w+)\)s", statement))


async def version_only(url: str) -> None:
    async with started(url):
        pass


def test_an_id_from_another_replica_is_a_conservative_position(url: str) -> None:
    """Ids from two clocks need not sort in seq order; a UUID that is no message sits just
    before the first message (in seq order) whose id sorts after it."""

    def uid(ms: int) -> str:
        return f"{ms:08x}-0000-7000-8000-000000000000"

    async def scenario() -> list[int | None]:
        async with started(url) as store:
            room = await new_room(store, "room", ["u"])

            # seq 1..4 with ids made at 10, 30, 20 (a replica whose clock is behind), 40 ms
            async def insert(db: Session) -> None:
                for seq, ms in enumerate((10, 30, 20, 40), 1):
                    await db._change(
                        "INSERT INTO messages (room_pk, seq, id, client, user_id, sent_at,"
                        " subject, text) VALUES (?, ?, ?, 'c', 'u', 't', '', 'x')",
                        (room.pk, seq, uid(ms)),
                    )

            await store.write(insert)

            async def positions(db: Session) -> list[int | None]:
                nil = "00000000-0000-0000-0000-000000000000"
                cursors = [nil, uid(15), uid(25), uid(35), "ffffffff-0000-7000-8000-000000000000"]
                found: list[int | None] = [await db.message_position(room, c) for c in cursors]
                return [*found, await db.message_seq(room, uid(20))]

            found: list[int | None] = await store.read(positions)
            return found

    # 30 (seq 2) is the first after 15, and after 25 too, though 20 (seq 3) is not
    assert asyncio.run(scenario()) == [0, 1, 1, 3, 4, 3]


def message(room: RoomRow, text: str = "x") -> NewMessage:
    return NewMessage(room.id, "u", "c", "", text)


def test_a_message_too_big_for_a_notification_is_read_from_the_table(url: str) -> None:
    srv = start_server(db=url)
    try:
        import httpx

        with httpx.Client(base_url=srv.url) as http:
            room = http.post(
                "/v1/chat/Create", json={"name": "big", "description": "", "user_ids": ["s"]}
            ).json()["room"]["id"]
            with connect(f"{srv.ws_url}/v1/chat/Join") as ws:
                ws.send(json.dumps({"room_id": room, "user_id": "w"}))
                wait_for(lambda: srv.app.state.hub.streams == 1)
                texts = ["small", "é" * 9000, "after"]
                for text in texts:
                    r = http.post(
                        "/v1/chat/Send", json={"room_id": room, "user_id": "s", "text": text}
                    )
                    assert r.status_code == 200
                got = [json.loads(ws.recv(timeout=5))["message"]["text"] for _ in texts]
        assert got == texts
    finally:
        srv.stop()


def test_membership_notifications_commit_with_the_change(url: str) -> None:
    """Create, Kick, Leave, Invite, Join and Delete notify inside the transaction of the change:
    issued before the commit (another connection hears nothing yet), delivered with it, and
    never for a change that rolls back, so a replica dying between its commit and a
    separate notify cannot leave a kicked user's streams open on the others."""
    import psycopg
    from psycopg.pq import TransactionStatus

    from chatctl.server.hub_pg import CHANNEL
    from chatctl.server.rules import ChatService
    from chatctl.server.store_pg import PostgresSession

    with psycopg.connect(url, autocommit=True) as listener:
        listener.execute(f"LISTEN {CHANNEL}")

        def heard(expected: int = 0, quiet: float = 0.3) -> list[str]:
            """The kinds of what the listener hears: the ``expected`` notifications (waited
            for, up to 10 s), and whatever else comes before ``quiet`` seconds pass."""
            got = list(listener.notifies(timeout=10, stop_after=expected)) if expected else []
            got += listener.notifies(timeout=quiet)
            return [n.payload.split(" ", 1)[0] for n in got]

        # While each notify is issued: the session's connection is inside a transaction,
        # and the listener has heard nothing of it yet.
        issued: list[tuple[list[str], TransactionStatus, list[str]]] = []
        notify = PostgresSession.notify

        async def spy(self: PostgresSession) -> None:
            await notify(self)
            kinds = [type(n).__name__ for n in self.notes]
            issued.append((kinds, self._conn.info.transaction_status, heard(quiet=0.1)))

        async def scenario() -> None:
            async with started(url) as store:
                service = ChatService(store)
                created = await service.call(
                    "Create", "", req("Create", name="r", user_ids=["a", "b", "c"])
                )
                room = json.loads(created)["room"]["id"]
                # One "created" note a member, for their every-room streams (JoinRooms all).
                assert heard(3) == ["e", "e", "e"]
                await service.call("Kick", "", req("Kick", room_id=room, user_id="b"))
                assert heard(2) == ["k", "e"]
                await service.call("Leave", "", req("Leave", room_id=room, user_id="c"))
                assert heard(2) == ["k", "e"]
                await service.call("Invite", "", req("Invite", room_id=room, user_id="b"))
                assert heard(1) == ["e"]
                await service.join("", req("Join", room_id=room, user_id="d"))
                assert heard(1) == ["e"]
                await service.call("Kick", "", req("Kick", room_id=room, user_id="d"), "key-1")
                assert heard(2) == ["k", "e"]
                await service.call("Delete", "", req("Delete", room_id=room))
                assert heard(2) == ["e", "d"]

                # A kick whose transaction fails after its notify was issued: rolled back,
                # the user is still a member and not barred, and no replica hears of it.
                created = await service.call(
                    "Create", "", req("Create", name="r", user_ids=["a", "b"])
                )
                room = json.loads(created)["room"]["id"]
                assert heard(2) == ["e", "e"]

                async def dying(self: PostgresSession) -> None:
                    await notify(self)
                    raise RuntimeError("the replica died before its commit")

                PostgresSession.notify = dying  # type: ignore[method-assign]
                with pytest.raises(RuntimeError, match="died"):
                    await service.call("Kick", "", req("Kick", room_id=room, user_id="b"))
                PostgresSession.notify = spy  # type: ignore[method-assign]
                assert heard(quiet=0.5) == []

                async def state(db: Session) -> tuple[list[str], bool]:
                    row = await db.get_room("", room)
                    assert row is not None
                    return await db.members(row), await db.is_barred(row, "b")

                assert await store.read(state) == (["a", "b"], False)

        PostgresSession.notify = spy  # type: ignore[method-assign]
        try:
            asyncio.run(scenario())
        finally:
            PostgresSession.notify = notify  # type: ignore[method-assign]
    issued = [entry for entry in issued if entry[0]]  # writes that told the streams anything
    assert [len(kinds) for kinds, _, _ in issued] == [3, 2, 2, 1, 1, 2, 2, 2]
    assert {status for _, status, _ in issued} == {TransactionStatus.INTRANS}
    assert all(early == [] for _, _, early in issued), issued


def test_a_send_is_one_round_trip_keyed_or_not_and_refuses_as_the_rules_do(url: str) -> None:
    """A Send is one statement (key, room, membership, seq, insert, notify), with or
    without an Idempotency-Key, and a retry with the key is one more that finds its first
    answer: 404 for no room, 400/403 for a non-member of a public/private room, and
    nothing stored, kept or notified for a refusal."""
    import psycopg

    from chatctl.server.hub_pg import CHANNEL
    from chatctl.server.rules import ChatService

    executed: list[str] = []
    execute = psycopg.AsyncConnection.execute

    async def counting(self: Any, query: Any, *args: Any, **kw: Any) -> Any:
        executed.append(str(query)[:40])
        return await execute(self, query, *args, **kw)

    async def scenario() -> list[object]:
        async with started(url) as store:
            service = ChatService(store)
            public = json.loads(
                await service.call("Create", "", req("Create", name="p", user_ids=["a"]))
            )
            private = json.loads(
                await service.call(
                    "Create", "", req("Create", name="q", user_ids=["a"], private=True)
                )
            )
            out: list[object] = []
            calls = [
                (public["room"]["id"], "a", None),
                (public["room"]["id"], "a", "key-1"),
                (public["room"]["id"], "a", "key-1"),  # a retry: the first answer
                (public["room"]["id"], "x", "key-2"),
                (private["room"]["id"], "x", None),
                ("nope", "a", "key-3"),
            ]
            psycopg.AsyncConnection.execute = counting  # type: ignore[method-assign]
            try:
                for room_id, user, key in calls:
                    executed.clear()
                    body = req("Send", room_id=room_id, user_id=user, text="one")
                    try:
                        answer = json.loads(await service.send("", body, key))
                        out.append(answer["message"]["id"])
                    except Exception as exc:
                        out.append(type(exc).__name__)
                    assert len(executed) == 1, executed
            finally:
                psycopg.AsyncConnection.execute = execute  # type: ignore[method-assign]
            return out

    with psycopg.connect(url, autocommit=True) as listener:
        listener.execute(f"LISTEN {CHANNEL}")
        out = asyncio.run(scenario())
        heard = [n.payload for n in listener.notifies(timeout=0.5)]
    assert isinstance(out[0], str) and isinstance(out[1], str) and out[2] == out[1]
    assert out[3:] == ["Invalid", "Forbidden", "NotFound"]
    # The two Creates' "created" notes (their one member each), then the two messages.
    assert [p.split(" ", 1)[0] for p in heard[:2]] == ["e", "e"]
    heard = heard[2:]
    assert [p.split(" ", 2)[:2] for p in heard] == [["m", "1"], ["m", "2"]]
    head, _, frame = heard[1].split(" ", 2)[2].partition("\n")
    assert json.loads(head)[3] == "a"
    assert json.loads(frame)["message"]["id"] == out[1]
    with psycopg.connect(url, autocommit=True) as conn:
        keys = conn.execute("SELECT key FROM idempotency ORDER BY key").fetchall()
    assert keys == [("key-1",)]  # refusals keep nothing


def test_a_replica_hears_a_room_only_while_it_has_streams_there(url: str) -> None:
    """Issue 27: a replica LISTENs on a room's channel only while a stream of the room is
    open on it, so another room's Sends, or this room's before its first stream and after
    its last, cost it nothing; a stream waits until its room is heard before replaying."""
    from chatctl.server.hub import Hub
    from chatctl.server.hub_pg import Listener

    received: list[str] = []
    receive = Listener._receive

    async def spy(self: Listener, payload: str) -> None:
        received.append(read_text(payload))
        await receive(self, payload)

    def read_text(payload: str) -> str:
        return str(json.loads(payload.partition("\n")[2])["message"]["text"])

    async def scenario() -> tuple[list[str], list[str]]:
        hub = Hub()
        async with started(url, fanout=hub, notify="rooms") as store:
            for room_id in ("r", "o"):
                await new_room(store, room_id, ["a"])

            async def send(room_id: str, text: str) -> None:
                await store.send("", NewMessage(room_id, "a", "c", "", text), None)

            async def frames(sub: Any) -> list[str]:
                batch = await asyncio.wait_for(sub.next_batch(), 10)
                return [json.loads(frame)["message"]["text"] for _, frame in batch]

            await send("r", "before its first stream")
            r = hub.subscribe("", "r", "w", events=False)
            await hub.hearing(r)
            await send("o", "another room")
            await send("r", "while streamed")
            got_r = await frames(r)
            hub.unsubscribe(r)  # its last stream: UNLISTEN, done before o's LISTEN below
            o = hub.subscribe("", "o", "w", events=False)
            await hub.hearing(o)
            await send("r", "after its last stream")
            await send("o", "marker")  # heard after anything r notified before it
            got_o = await frames(o)
            hub.unsubscribe(o)
            return got_r, got_o

    Listener._receive = spy  # type: ignore[method-assign]
    try:
        got_r, got_o = asyncio.run(scenario())
    finally:
        Listener._receive = receive  # type: ignore[method-assign]
    assert (got_r, got_o) == (["while streamed"], ["marker"])
    assert received == ["while streamed", "marker"]


def test_a_stream_waits_until_its_room_is_heard_and_gives_up_after_the_db_timeout(
    url: str,
) -> None:
    """A stream does not read its replay before its room's LISTEN is done (what is stored
    meanwhile would reach it neither way); when the database does not answer the LISTEN
    within --db-timeout, ``hearing`` raises Unavailable (the stream ends 503 and the
    client resumes), and once it answers again a stream is heard."""
    from chatctl.server.hub import Hub
    from tests.bench.delay_proxy import DelayProxy

    async def scenario(proxy: DelayProxy) -> tuple[float, list[str]]:
        hub = Hub()
        async with started(proxy.url_for(url), fanout=hub, timeout=1.0, notify="rooms") as store:
            await new_room(store, "r", ["a"])
            proxy.pause()
            try:
                sub = hub.subscribe("", "r", "w", events=False)
                began = time.monotonic()
                with pytest.raises(Unavailable, match="cannot listen to the room"):
                    await hub.hearing(sub)
                waited = time.monotonic() - began
                hub.unsubscribe(sub)
            finally:
                proxy.resume()
            again = hub.subscribe("", "r", "w", events=False)
            await hub.hearing(again)
            await store.send("", NewMessage("r", "a", "c", "", "heard"), None)
            batch = await asyncio.wait_for(again.next_batch(), 10)
            return waited, [json.loads(frame)["message"]["text"] for _, frame in batch]

    with DelayProxy.to(url) as proxy:
        waited, texts = asyncio.run(scenario(proxy))
    assert 0.9 <= waited < 5, waited
    assert texts == ["heard"]


def test_a_join_replays_what_was_stored_before_its_room_was_heard(
    url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The hand-over from replay to live with per-room LISTEN: the room's LISTEN is held up
    0.5 s; a message stored after the Join was admitted, before the LISTEN is done, is in
    the replay (read only once the room is heard), and the next comes live: each once, in
    order. (A replay read at once would miss it, and so would the notifications, which
    this replica was not yet listening to.)"""
    import httpx

    from chatctl.ids import START
    from chatctl.server import hub_pg

    follow = hub_pg.Listener._follow

    async def slow(self: hub_pg.Listener, conn: Any) -> None:
        if self._wanted.keys() - self._listening:
            await asyncio.sleep(0.5)  # a LISTEN slow to be done
        await follow(self, conn)

    monkeypatch.setattr(hub_pg.Listener, "_follow", slow)
    srv = start_server(db=url, notify="rooms")
    try:
        listener = srv.app.state.store._listener
        with httpx.Client(base_url=srv.url) as http:

            def send(text: str) -> None:
                body = {"room_id": room, "user_id": "s", "text": text}
                assert http.post("/v1/chat/Send", json=body).status_code == 200

            room = http.post(
                "/v1/chat/Create", json={"name": "r", "description": "", "user_ids": ["s"]}
            ).json()["room"]["id"]
            send("zero")
            with connect(f"{srv.ws_url}/v1/chat/Join") as ws:
                ws.send(json.dumps({"room_id": room, "user_id": "w", "since": START}))
                wait_for(lambda: srv.app.state.hub.streams == 1)  # admitted, subscribed
                assert not listener._listening  # its LISTEN is still held up
                send("one")
                wait_for(lambda: hub_pg.channel("", room) in listener._listening)
                send("two")
                got = [json.loads(ws.recv(timeout=5))["message"]["text"] for _ in range(3)]
                with pytest.raises(TimeoutError):
                    ws.recv(timeout=0.3)  # and nothing twice
        assert got == ["zero", "one", "two"]
    finally:
        srv.stop()


@pytest.mark.parametrize("mode", ["both", "rooms"])
def test_a_message_notification_written_by_the_send_sql_reads_back_as_sent(
    url: str, mode: str
) -> None:
    """The message notification's one format (hub_pg): what the real Send statements
    (unkeyed, keyed, several at once) make PostgreSQL notify is read back by
    ``hub_pg.read_message`` as the message stored, odd characters and all, and a frame too
    big for a notification travels as none. It goes on the room's channel as the listener
    names it (in Python; the statements name it in SQL), and in mode ``both`` (beside an
    older release) right after on the shared channel too, the same payload."""
    import psycopg

    from chatctl.server.hub_pg import CHANNEL, MessageNotification, channel, read_message

    tenant, user = 'te"n\\ant\n\u00e9', "us'er\t\u2028x"
    now = time.time()
    key = Key(tenant, "k", "Send", "hash", now, now - 60)

    async def scenario(listener: psycopg.Connection[Any]) -> tuple[RoomRow, list[str | None]]:
        async with started(url, notify=mode) as store:

            async def create(db: Session) -> RoomRow:
                return await db.create_room(tenant, "r'\"\\", "r", "", "t", False, [user])

            room: RoomRow = await store.write(create)
            listener.execute(f'LISTEN "{channel(tenant, room.id)}"')
            sent = [
                (await store.send(tenant, NewMessage(room.id, user, "c", "", "one"), None)).answer,
                (await store.send(tenant, NewMessage(room.id, user, "c", "", "two"), key)).answer,
            ]
            many = await store.send_many(
                tenant,
                [
                    (NewMessage(room.id, user, "c", "", "three"), None),
                    (NewMessage(room.id, user, "c", "", "\u00e9" * 5000), None),
                ],
            )
            return room, sent + [r.answer for r in many]

    copies = 2 if mode == "both" else 1
    with psycopg.connect(url, autocommit=True) as listener:
        listener.execute(f"LISTEN {CHANNEL}")
        room, answers = asyncio.run(scenario(listener))
        heard = [
            (n.channel, n.payload)
            for n in listener.notifies(timeout=10, stop_after=copies * len(answers))
        ]
        heard += [(n.channel, n.payload) for n in listener.notifies(timeout=0.3)]
    frames = [a or "" for a in answers[:3]] + [""]  # the last is too big to notify
    channels = [channel(tenant, room.id), CHANNEL][:copies]
    assert [(name, read_message(p)) for name, p in heard] == [
        (name, MessageNotification(tenant, room.id, room.pk, seq, user, frame))
        for seq, frame in enumerate(frames, 1)
        for name in channels
    ]
    assert json.loads(frames[2])["message"]["text"] == "three"
    with pytest.raises(ValueError, match="not a message"):
        read_message("e []\n")


def test_the_same_key_on_two_replicas_at_once_stores_one_message(url: str) -> None:
    async def scenario() -> tuple[list[str | None], int]:
        async with started(url) as a, started(url) as b:
            room = await new_room(a, "r", ["u"])
            now = time.time()
            answers: list[str | None] = []
            for n in range(20):
                key = Key("", f"race-{n}", "Send", "h", now, now - 60)
                results = await asyncio.gather(
                    a.send("", message(room, f"a{n}"), key),
                    b.send("", message(room, f"b{n}"), key),
                )
                assert results[0].answer == results[1].answer
                answers.append(results[0].answer)

            async def count(db: Session) -> int:
                return await db.last_seq(room)

            return answers, await a.read(count)

    answers, stored = asyncio.run(scenario())
    assert stored == 20 and len(set(answers)) == 20


class PausableProxy:
    """A TCP proxy to PostgreSQL that can stop forwarding, as a paused or unreachable
    database does: connections stay open, nothing answers."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.paused = asyncio.Event()
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []
        self._pumps: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> PausableProxy:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for pump in self._pumps:
            pump.cancel()
        await asyncio.gather(*self._pumps, return_exceptions=True)
        for writer in self._writers:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(*self.target)
        self._writers += [writer, up_writer]

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(Exception):
                while data := await src.read(65536):
                    while self.paused.is_set():
                        await asyncio.sleep(0.01)
                    dst.write(data)
                    await dst.drain()
            dst.close()

        for src, dst in ((reader, up_writer), (up_reader, writer)):
            task = asyncio.create_task(pump(src, dst))
            self._pumps.add(task)
            task.add_done_callback(self._pumps.discard)


def test_a_database_that_stops_answering_is_unavailable_within_the_timeout(url: str) -> None:
    """PostgreSQL stops answering (paused, or the network dropped it): a Send gives up
    after the store's timeout and a second with Unavailable, the event loop serving others
    meanwhile; once it answers again the store recovers by itself."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    target = (parts.hostname or "127.0.0.1", parts.port or 5432)

    async def scenario() -> tuple[float, int, str | None]:
        async with PausableProxy(target) as proxy:
            via = url.replace(f"{parts.hostname}:{parts.port}", f"127.0.0.1:{proxy.port}")
            async with started(via, timeout=0.5) as store:
                room = await new_room(store, "r", ["u"])
                proxy.paused.set()
                with Ticker() as ticker, pytest.raises(Unavailable):
                    started_at = time.monotonic()
                    await store.send("", message(room, "late"), None)
                waited, ticks = time.monotonic() - started_at, ticker.ticks
                proxy.paused.clear()
                answer = None
                deadline = time.monotonic() + 10
                while answer is None and time.monotonic() < deadline:
                    try:
                        answer = (await store.send("", message(room, "back"), None)).answer
                    except Unavailable:
                        await asyncio.sleep(0.1)
                return waited, ticks, answer

    waited, ticks, answer = asyncio.run(scenario())
    assert 0.5 <= waited < 3, waited
    assert ticks >= 20, "the event loop was held while the database did not answer"
    assert answer is not None and json.loads(answer)["message"]["text"] == "back"


def test_postgresql_gives_up_on_its_side_within_the_timeout(url: str) -> None:
    """``--db-timeout`` is PostgreSQL's own ``statement_timeout`` (and half of it its
    ``lock_timeout``) on every pooled connection: a Send waiting on a row lock another
    session holds, and a statement running too long, are cancelled by PostgreSQL itself,
    well before the replica's own deadline (the timeout and a second); the connection
    serves the next call."""
    import psycopg

    async def scenario() -> tuple[list[str], float, str, float, str, str | None]:
        async with started(url, timeout=1.0) as store:

            async def settings(db: Session) -> list[str]:
                names = ("statement_timeout", "lock_timeout")
                return [str((await db._row(f"SHOW {name}", ()) or ("",))[0]) for name in names]

            shown = await store.read(settings)
            room = await new_room(store, "r", ["u"])
            async with await psycopg.AsyncConnection.connect(url) as locker:
                await locker.execute("SELECT pk FROM rooms FOR UPDATE")  # held: no commit
                started_at = time.monotonic()
                with pytest.raises(Unavailable) as locked:
                    await store.send("", message(room, "locked out"), None)
                lock_wait = time.monotonic() - started_at

            async def slow(db: Session) -> object:
                return await db._row("SELECT pg_sleep(10)", ())

            started_at = time.monotonic()
            with pytest.raises(Unavailable) as slowed:
                await store.read(slow)
            statement_wait = time.monotonic() - started_at
            answer = (await store.send("", message(room, "back"), None)).answer
            return shown, lock_wait, str(locked.value), statement_wait, str(slowed.value), answer

    shown, lock_wait, locked, statement_wait, slowed, answer = asyncio.run(scenario())
    assert shown == ["1s", "500ms"]
    assert "lock timeout" in locked and 0.4 <= lock_wait < 1.5, (locked, lock_wait)
    assert "statement timeout" in slowed and 0.9 <= statement_wait < 1.8, (slowed, statement_wait)
    assert answer is not None and json.loads(answer)["message"]["text"] == "back"


def test_a_big_room_is_deleted_at_once_and_its_messages_in_steps(
    url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sql, "PURGE_CHUNK", 20)

    async def scenario() -> tuple[int, int, int, int]:
        async with started(url) as a, started(url) as b:  # two replicas
            small = await new_room(a, "small", ["u"])
            big = await new_room(a, "big", ["u"])
            for _ in range(45):
                await a.send("", message(big), None)
            await a.send("", message(small), None)

            async def left(room_pk: int) -> int:
                async def count(db: Session) -> int:
                    return await db._count(
                        "SELECT count(*) FROM messages WHERE room_pk = ?", (room_pk,)
                    )

                return int(await a.read(count))

            def deleting(room: RoomRow) -> Callable[[Session], Awaitable[None]]:
                async def work(db: Session) -> None:
                    await db.delete_room(room)

                return work

            await a.write(deleting(small))
            small_left = await left(small.pk)
            await a.write(deleting(big))
            big_left = await left(big.pk)
            # Another replica takes up the work (the one that deleted may have died).
            steps = 0
            while await b.purge_step():
                steps += 1
                assert steps < 10
            return small_left, big_left, steps, await left(big.pk)

    assert asyncio.run(scenario()) == (0, 25, 2, 0)


def test_several_sends_in_one_transaction(url: str) -> None:
    from tests.server.test_store import several_sends_in_one_go, several_sends_that_stop

    async def scenario() -> None:
        async with started(url) as store:
            await several_sends_in_one_go(store)
            await several_sends_that_stop(store)

    asyncio.run(scenario())
