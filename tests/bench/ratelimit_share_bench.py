"""What a token bucket shared through PostgreSQL would cost a replica (issue 26 item 8),
measured to choose between sharing it and splitting it (docs/server.md, "Rate limits
across replicas").

A shared bucket is one more statement per call: an upsert of the token's row in an UNLOGGED
table (no WAL, no fsync: a bucket need not survive a crash; refill by
the database's clock, take one if there is one), under that row's lock, so a token's
calls from every replica take turns on it. Measured in one run, on one connection and on
8 at once (a replica's pool), directly and through a 1 ms hop each way
(``delay_proxy``): a List's statement alone (the peer) beside the same statement after
the bucket's upsert, for one token (every call on one row, the worst case) and for many.

    CHATCTL_TEST_POSTGRES=postgresql://postgres@127.0.0.1:5432/postgres \\
        python -m tests.bench.ratelimit_share_bench
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

import psycopg

from tests import postgres
from tests.bench.delay_proxy import DelayProxy

CALLS = 2000

_BUCKET = """
INSERT INTO buckets AS b (token, tokens, at, granted)
VALUES (%(token)s, %(burst)s - 1, extract(epoch FROM clock_timestamp()), true)
ON CONFLICT (token) DO UPDATE SET
    granted = least(%(burst)s, b.tokens
        + (extract(epoch FROM clock_timestamp()) - b.at) * %(rate)s) >= 1,
    tokens = least(%(burst)s, b.tokens
        + (extract(epoch FROM clock_timestamp()) - b.at) * %(rate)s)
        - CASE WHEN least(%(burst)s, b.tokens
            + (extract(epoch FROM clock_timestamp()) - b.at) * %(rate)s) >= 1
            THEN 1 ELSE 0 END,
    at = extract(epoch FROM clock_timestamp())
RETURNING granted, tokens
"""
_LIST = (
    "SELECT r.id, r.name, array_agg(m.user_id ORDER BY m.position) FROM rooms r"
    " JOIN members m ON m.room_pk = r.pk WHERE r.tenant = %s GROUP BY r.pk, r.id, r.name"
)


async def _setup(url: str) -> None:
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        await conn.execute(
            "CREATE UNLOGGED TABLE buckets (token text PRIMARY KEY, tokens float8 NOT NULL,"
            " at float8 NOT NULL, granted boolean NOT NULL)"
        )
        await conn.execute(
            "CREATE TABLE rooms (pk bigserial PRIMARY KEY, tenant text, id text, name text)"
        )
        await conn.execute(
            "CREATE TABLE members (position bigserial PRIMARY KEY, room_pk bigint, user_id text)"
        )
        await conn.execute("CREATE INDEX ON rooms (tenant)")
        await conn.execute("CREATE INDEX ON members (room_pk)")
        for n in range(20):
            await conn.execute(
                "INSERT INTO rooms (tenant, id, name) VALUES ('t', %s, %s)", (f"r{n}", f"r{n}")
            )
            await conn.execute(
                "INSERT INTO members (room_pk, user_id) SELECT pk, u FROM rooms,"
                " unnest(array['a','b','c']) u WHERE id = %s",
                (f"r{n}",),
            )


async def _rate(url: str, connections: int, bucket: bool, tokens: int) -> float:
    conns = [
        await psycopg.AsyncConnection.connect(url, autocommit=True) for _ in range(connections)
    ]
    per = CALLS // connections

    async def worker(i: int, conn: psycopg.AsyncConnection[Any]) -> None:
        for n in range(per):
            if bucket:
                params = {"token": f"tok{(i * per + n) % tokens}", "burst": 1e9, "rate": 1e9}
                await conn.execute(_BUCKET, params)
            await (await conn.execute(_LIST, ("t",))).fetchall()

    started = time.perf_counter()
    await asyncio.gather(*(worker(i, c) for i, c in enumerate(conns)))
    took = time.perf_counter() - started
    for conn in conns:
        await conn.close()
    return per * connections / took


async def _measure(url: str, where: str) -> None:
    for connections in (1, 8):
        plain = await _rate(url, connections, False, 1)
        one = await _rate(url, connections, True, 1)
        many = await _rate(url, connections, True, 1000)
        print(
            f"{where:<18} {connections} conn: List alone {plain:8.0f}/s | + shared bucket,"
            f" one token {one:8.0f}/s ({one / plain:.2f}x) | 1000 tokens {many:8.0f}/s"
            f" ({many / plain:.2f}x)"
        )


def main() -> None:
    os.environ.setdefault("CHATCTL_TEST_POSTGRES", postgres.URL)
    with postgres.fresh_database() as url:
        asyncio.run(_setup(url))
        asyncio.run(_measure(url, "direct"))
        with DelayProxy.to(url, delay_ms=1.0) as proxy:
            asyncio.run(_measure(proxy.url_for(url), "1 ms each way"))


if __name__ == "__main__":
    main()
