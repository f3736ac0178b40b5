"""A write's work may await nothing but its session, on both stores (``store.Store.write``).

SQLite's writer runs a write's work to its end in one step, on its thread, where nothing
else could ever wake it; PostgreSQL could wait on anything, so a rule that awaited, say, a
``read`` inside a write would pass every PostgreSQL test and fail only on SQLite. Both
stores now refuse it the same way (``AwaitedOutside``), keeping nothing of the write.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from chatctl.server.domain import RoomRow
from chatctl.server.sql import Session
from chatctl.server.store import AwaitedOutside, Store
from chatctl.server.store_sqlite import SQLiteStore
from tests import postgres


@contextlib.asynccontextmanager
async def opened(backend: str, tmp_path: Path) -> AsyncIterator[Store]:
    with postgres.database_for(backend, str(tmp_path / "chat.db")) as db:
        store: Any
        if backend == "postgres":
            from chatctl.server.store_pg import PostgresStore

            store = await asyncio.to_thread(PostgresStore, db)
        else:
            store = SQLiteStore(db)
        await store.start()
        try:
            yield store
        finally:
            await store.close()


async def make_room(db: Session, room_id: str) -> RoomRow:
    return await db.create_room("", room_id, room_id, "", "t", False, ["ann"])


def outside_waits(store: Store) -> list[Callable[[], Awaitable[Any]]]:
    """What a rule might wrongly await inside a write."""

    async def a_read() -> Any:
        async def get(db: Session) -> RoomRow | None:
            return await db.get_room("", "r0")

        return await store.read(get)

    return [lambda: asyncio.sleep(0), lambda: asyncio.sleep(0.01), a_read]


@pytest.mark.parametrize("backend", postgres.BACKENDS)
def test_a_write_that_awaits_anything_but_its_session_fails_and_keeps_nothing(
    backend: str, tmp_path: Path
) -> None:
    if backend == "postgres":
        postgres.require()

    async def main() -> None:
        async with opened(backend, tmp_path) as store:
            for number, wait in enumerate(outside_waits(store)):

                async def work(
                    db: Session, number: int = number, wait: Callable[[], Awaitable[Any]] = wait
                ) -> RoomRow:
                    room = await make_room(db, f"r{number}")
                    await wait()
                    return room

                with pytest.raises(AwaitedOutside):
                    await store.write(work)

            async def rooms(db: Session) -> int:
                return await db.count_rooms("")

            assert await store.read(rooms) == 0  # each failed write rolled back
            # Awaiting only the session is what every rule does, and works.
            room = await store.write(lambda db: make_room(db, "kept"))
            assert room.id == "kept" and await store.read(rooms) == 1

    asyncio.run(main())
