"""The PostgreSQL store on its own: migrations, positions of ids from several replicas, and
frames too big for a notification. Needs CHATCTL_TEST_POSTGRES (see tests/postgres.py)."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from websockets.sync.client import connect

from tests import postgres
from tests.helpers import wait_for
from tests.server.conftest import start_server

pytestmark = pytest.mark.postgres


@pytest.fixture
def url() -> Iterator[str]:
    with postgres.fresh_database() as url:
        yield url


def test_migrations_apply_once_and_a_newer_schema_is_refused(url: str) -> None:
    import psycopg

    from chatctl.server.store_pg import MIGRATIONS, PostgresStore

    store = PostgresStore(url)
    assert store.schema_version == len(MIGRATIONS)
    store.close()
    again = PostgresStore(url)  # a second replica starting: nothing left to apply
    assert again.schema_version == len(MIGRATIONS)
    again.close()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("UPDATE chatctl_schema SET version = 99")
    with pytest.raises(RuntimeError, match="newer than this chatctl"):
        PostgresStore(url)


def test_an_id_from_another_replica_is_a_conservative_position(url: str) -> None:
    """Ids from two clocks need not sort in seq order; a UUID that is no message sits just
    before the first message (in seq order) whose id sorts after it."""
    from chatctl.server.store_pg import PostgresStore

    store = PostgresStore(url)
    room = store.create_room("", "room", "r", "", "2026-01-01T00:00:00.000000000Z", False, [])

    def uid(ms: int) -> str:
        return f"{ms:08x}-0000-7000-8000-000000000000"

    # seq 1..4 with ids made at 10, 30, 20 (a replica whose clock is behind), 40 ms
    for ms in (10, 30, 20, 40):
        store.add_message(room, uid(ms), "c", "u", "t", "", "x")
    nil = "00000000-0000-0000-0000-000000000000"
    assert store.message_position(room, nil) == 0
    assert store.message_position(room, uid(15)) == 1  # 30 (seq 2) is the first after it
    assert store.message_position(room, uid(25)) == 1  # so is 30, though 20 (seq 3) is not
    assert store.message_position(room, uid(35)) == 3
    assert store.message_position(room, "ffffffff-0000-7000-8000-000000000000") == 4
    assert store.message_seq(room, uid(20)) == 3
    store.close()


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
    """Kick, Leave, Invite, Join and Delete notify inside the transaction of the change:
    issued before the commit (another connection hears nothing yet), delivered with it, and
    never for a change that rolls back, so a replica dying between its commit and a
    separate notify cannot leave a kicked user's streams open on the others."""
    import psycopg
    from psycopg.pq import TransactionStatus

    from chatctl.schema import ENDPOINTS, validate_request
    from chatctl.server.hub_pg import PostgresHub
    from chatctl.server.rules import ChatService
    from chatctl.server.store_pg import CHANNEL, PostgresStore

    store = PostgresStore(url)
    hub = PostgresHub(store)
    service = ChatService(store, hub)

    def req(endpoint: str, **body: object) -> dict[str, object]:
        return validate_request(ENDPOINTS[endpoint], body)

    with psycopg.connect(url, autocommit=True) as listener:
        listener.execute(f"LISTEN {CHANNEL}")

        def heard(timeout: float = 0.3) -> list[str]:
            return [n.payload.split(" ", 1)[0] for n in listener.notifies(timeout=timeout)]

        # While each notify is issued: the store's connection is inside a transaction, and
        # the listener has heard nothing of it yet.
        issued: list[tuple[str, TransactionStatus, list[str]]] = []
        notify = store.notify

        def spy(payload: str) -> None:
            notify(payload)
            status = store._connection().info.transaction_status
            issued.append((payload.split(" ", 1)[0], status, heard(0.1)))

        store.notify = spy  # type: ignore[method-assign]
        room = service.create("", req("Create", name="r", user_ids=["a", "b", "c"]))["room"]["id"]
        assert heard() == []
        service.kick("", req("Kick", room_id=room, user_id="b"))
        assert heard() == ["k", "e"]
        service.leave("", req("Leave", room_id=room, user_id="c"))
        assert heard() == ["k", "e"]
        service.invite("", req("Invite", room_id=room, user_id="b"))
        assert heard() == ["e"]
        service.join("", req("Join", room_id=room, user_id="d"))
        assert heard() == ["e"]
        service.call("Kick", "", req("Kick", room_id=room, user_id="d"), "key-1")
        assert heard() == ["k", "e"]
        service.delete("", req("Delete", room_id=room))
        assert heard() == ["e", "d"]
        assert [kind for kind, _, _ in issued] == ["k", "e", "k", "e", "e", "e", "k", "e", "e", "d"]
        assert {status for _, status, _ in issued} == {TransactionStatus.INTRANS}
        assert all(early == [] for _, _, early in issued), issued

        # A kick whose transaction fails after its first notify was issued: rolled back,
        # the user is still a member and not barred, and no replica hears of it.
        store.notify = notify  # type: ignore[method-assign]
        room = service.create("", req("Create", name="r", user_ids=["a", "b"]))["room"]["id"]

        def dying(*args: object) -> None:
            raise RuntimeError("the replica died before its commit")

        hub.publish_event = dying  # type: ignore[method-assign]
        with pytest.raises(RuntimeError, match="died"):
            service.kick("", req("Kick", room_id=room, user_id="b"))
        assert heard(0.5) == []
        row = store.get_room("", room)
        assert row is not None
        assert store.members(row) == ["a", "b"]
        assert not store.is_barred(row, "b")
    store.close()


def test_a_send_in_one_round_trip_refuses_as_the_rules_do_and_notifies_only_when_stored(
    url: str,
) -> None:
    """PostgreSQL does a Send in one statement (room, membership, seq, insert, notify), sync
    or awaited: 404 for no room, 400/403 for a non-member of a public/private room, and
    nothing stored or notified for a refusal."""
    import asyncio

    import psycopg

    from chatctl.schema import ENDPOINTS, validate_request
    from chatctl.server.hub_pg import PostgresHub
    from chatctl.server.rules import ChatService, RulesError
    from chatctl.server.store_pg import CHANNEL, PostgresStore

    store = PostgresStore(url)
    service = ChatService(store, PostgresHub(store))
    assert service.sends_async

    def req(endpoint: str, **body: object) -> dict[str, object]:
        return validate_request(ENDPOINTS[endpoint], body)

    public = service.create("", req("Create", name="p", user_ids=["a"]))["room"]["id"]
    private = service.create("", req("Create", name="q", user_ids=["a"], private=True))
    private_id = private["room"]["id"]

    async def sends() -> list[object]:
        await store.open_async()
        try:
            out: list[object] = []
            for room, user in [(public, "a"), (public, "x"), (private_id, "x"), ("nope", "a")]:
                try:
                    send = req("Send", room_id=room, user_id=user, text="one")
                    answer = await service.send_async("", send)
                    out.append(answer["message"]["room_id"])
                except RulesError as exc:
                    out.append(exc.code)
            return out
        finally:
            await store.close_async()

    with psycopg.connect(url, autocommit=True) as listener:
        listener.execute(f"LISTEN {CHANNEL}")
        assert asyncio.run(sends()) == [public, 400, 403, 404]
        with pytest.raises(RulesError) as refused:  # the same, without the async pool
            service.send("", req("Send", room_id=private_id, user_id="x", text="no"))
        assert refused.value.code == 403
        service.send("", req("Send", room_id=public, user_id="a", text="two"))
        heard = [n.payload for n in listener.notifies(timeout=0.5)]
    assert [p.split(" ", 2)[:2] for p in heard] == [["m", "1"], ["m", "2"]]
    head, _, frame = heard[1].split(" ", 2)[2].partition("\n")
    assert json.loads(head)[:2] == ["", public] and json.loads(head)[3] == "a"
    assert json.loads(frame)["message"]["text"] == "two"
    room = store.get_room("", public)
    assert room is not None
    assert [m.seq for m in store.messages(room)] == [1, 2]
    store.close()


def test_a_big_room_is_deleted_at_once_and_its_messages_in_steps(
    url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from chatctl.server import store as store_module
    from chatctl.server.store_pg import PostgresStore

    monkeypatch.setattr(store_module, "PURGE_CHUNK", 20)
    a, b = PostgresStore(url), PostgresStore(url)  # two replicas
    small = a.create_room("", "small", "s", "", "t", False, ["u"])
    big = a.create_room("", "big", "b", "", "t", False, ["u"])
    for n in range(45):
        a.add_message(big, f"{n:08x}-0000-7000-8000-000000000000", "c", "u", "t", "", "x")
    a.add_message(small, "00000001-0000-7000-8000-000000000000", "c", "u", "t", "", "x")

    def left(room_pk: int) -> int:
        row = a._execute("SELECT count(*) FROM messages WHERE room_pk = %s", (room_pk,))
        return int(row.fetchone()[0])

    a.delete_room(small)
    assert left(small.pk) == 0
    a.delete_room(big)
    assert a.get_room("", "big") is None and left(big.pk) == 25
    # Another replica takes up the work (the one that deleted may have died).
    steps = 0
    while b.purge_step():
        steps += 1
        assert steps < 10
    assert steps == 2 and left(big.pk) == 0
    assert a._execute("SELECT count(*) FROM purging").fetchone() == (0,)
    a.close()
    b.close()
