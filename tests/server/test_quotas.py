"""The byte quotas' counts (``quotas.ByteMeter``): kept in the database, where replicas
and restarts share them; given back for what was not stored; a bulk Send refused line by
line. The quotas on a real team server: tests/e2e/test_quotas.py."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from chatctl.schema import Limits
from chatctl.server.domain import Forbidden
from chatctl.server.quotas import ByteMeter, utc_day
from chatctl.server.rules import ChatService
from chatctl.server.sql import Session
from chatctl.server.tokens import Principal
from tests import postgres
from tests.server.test_user_ids import _started

ALICE = Principal("tenant:acme", "alice", False, "a" * 64)
ROOM = {"name": "r", "description": "", "user_ids": ["alice"], "private": False}


@pytest.fixture(params=postgres.BACKENDS)
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    with postgres.database_for(request.param, str(tmp_path / "chat.db")) as db:
        yield db


def test_byte_counts_are_kept_in_the_database(database: str) -> None:
    """What one server counted, another on the same database (a replica, or the same one
    after a restart) counts too, once synced: a quota holds across them."""
    limits = Limits(max_bytes_per_tenant_day=2000)  # alice's share: 1,000 a day

    async def scenario() -> None:
        stores = [await _started(database), await _started(database)]
        try:
            first, second = (ChatService(store, limits) for store in stores)
            created = json.loads(await first.call("Create", "tenant:acme", ROOM))["room"]
            send = {"room_id": created["id"], "user_id": "alice", "client": "", "subject": ""}
            await first.send("tenant:acme", {**send, "text": "x" * 600}, actor=ALICE)
            await first.sync_quotas()
            with pytest.raises(Forbidden, match="at most 1000 message bytes a day"):
                await second.send("tenant:acme", {**send, "text": "y" * 600}, actor=ALICE)
            await second.send("tenant:acme", {**send, "text": "y" * 400}, actor=ALICE)
            await second.sync_quotas()

            async def counted(db: Session) -> dict[str, int]:
                return await db.daily_bytes("tenant:acme", utc_day())

            assert await stores[0].read(counted) == {"alice": 1000}
        finally:
            for store in stores:
                await store.close()

    asyncio.run(scenario())


def test_a_send_given_back_while_a_sync_is_under_way_is_counted_right() -> None:
    meter = ByteMeter(Limits(max_bytes_per_tenant_day=1000))
    database: dict[str, int] = {}

    class Db:
        async def daily_bytes(self, tenant: str, day: str) -> dict[str, int]:
            return dict(database)

        async def add_daily_bytes(self, tenant: str, day: str, payer: str, count: int) -> None:
            database[payer] = database.get(payer, 0) + count

    async def read(work: Callable[[Any], Awaitable[Any]]) -> Any:
        return await work(Db())

    async def scenario() -> None:
        first = await meter.charge(read, "t", "alice", 300)
        second = await meter.charge(read, "t", "alice", 100)

        async def write(work: Callable[[Any], Awaitable[Any]]) -> Any:
            meter.refund(second)  # the Send it paid for stored nothing, as the sync runs
            return await work(Db())

        await meter.sync(write)
        await meter.sync(read)
        assert database == {"alice": 300}
        meter.refund(first)
        await meter.sync(read)
        assert database == {"alice": 0}
        # Nothing was lost on the way: alice's whole share is hers again.
        await meter.charge(read, "t", "alice", 500)
        with pytest.raises(Forbidden, match="max_bytes_per_user_day"):
            await meter.charge(read, "t", "alice", 1)

    asyncio.run(scenario())


@pytest.mark.parametrize("stop", [False, True], ids=["go-on", "stop"])
def test_a_bulk_send_refuses_the_lines_over_a_quota(tmp_path: Path, stop: bool) -> None:
    limits = Limits(max_bytes_per_tenant_day=2000)

    async def scenario() -> None:
        store = await _started(str(tmp_path / "chat.db"))
        try:
            service = ChatService(store, limits)
            room = json.loads(await service.call("Create", "tenant:acme", ROOM))["room"]["id"]
            line = {"room_id": room, "user_id": "alice", "client": "", "subject": ""}
            sizes = [600, 600, 300, 100]
            answers = await service.send_many(
                "tenant:acme",
                [({**line, "text": "x" * n}, None) for n in sizes],
                stop=stop,
                actor=ALICE,
            )
            kinds = [type(a).__name__ for a in answers]
            if stop:
                assert kinds == ["str", "Forbidden"]
            else:
                assert kinds == ["str", "Forbidden", "str", "str"]
            await service.sync_quotas()

            async def counted(db: Session) -> dict[str, int]:
                return await db.daily_bytes("tenant:acme", utc_day())

            assert await store.read(counted) == {"alice": 600 if stop else 1000}
        finally:
            await store.close()

    asyncio.run(scenario())


def test_a_retry_at_the_cap_gets_the_first_answer(database: str) -> None:
    """A Send whose answer was lost is retried with its Idempotency-Key: at the cap it is
    answered as the first try was (and counted once), alone or in a bulk Send; a new Send
    is refused."""
    limits = Limits(max_bytes_per_tenant_day=2000)  # alice's share: 1,000 a day

    async def scenario() -> None:
        store = await _started(database)
        try:
            service = ChatService(store, limits)
            room = json.loads(await service.call("Create", "tenant:acme", ROOM))["room"]["id"]
            send = {"room_id": room, "user_id": "alice", "client": "", "subject": ""}
            full = {**send, "text": "x" * 600}
            first = await service.send("tenant:acme", full, "k1", actor=ALICE)
            lines = [({**send, "text": "y" * 400}, "k2")]
            [second] = await service.send_many("tenant:acme", lines, actor=ALICE)
            assert await service.send("tenant:acme", full, "k1", actor=ALICE) == first
            again = await service.send_many("tenant:acme", lines, stop=True, actor=ALICE)
            assert again == [second]
            with pytest.raises(Forbidden, match="max_bytes_per_user_day"):
                await service.send("tenant:acme", {**send, "text": "z"}, "k3", actor=ALICE)
            await service.sync_quotas()

            async def counted(db: Session) -> dict[str, int]:
                return await db.daily_bytes("tenant:acme", utc_day())

            assert await store.read(counted) == {"alice": 1000}
        finally:
            await store.close()

    asyncio.run(scenario())
