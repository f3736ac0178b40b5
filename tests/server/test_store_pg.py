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
