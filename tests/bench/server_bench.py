"""Figure 3: the server's Send under 32 connections beside a minimal Starlette+SQLite app,
and History's latest page in a very large room."""

from __future__ import annotations

import json
import sqlite3
import time
import uuid
from pathlib import Path

from chatctl.server.store_sqlite import SQLiteStore
from chatctl.wire import UUIDv7, rfc3339
from tests.bench.harness import (
    PYTHON,
    Mode,
    Row,
    chat_server,
    peer_server,
    process,
    ratio_row,
    run_json,
)

USER = "bench"


def load(
    port: int,
    body: dict[str, object] | None,
    mode: Mode,
    *,
    conns: int = 32,
    path: str = "/v1/chat/Send",
    rate: float = 0,
    seconds: float | None = None,
) -> dict:
    args = [
        PYTHON,
        "-m",
        "tests.bench.loadgen",
        "--port",
        str(port),
        "--path",
        path,
        "--conns",
        str(conns),
        "--seconds",
        str(seconds or mode.load_seconds),
    ]
    args += ["--body", json.dumps(body)] if body is not None else ["--method", "GET"]
    if rate:
        args += ["--rate", str(rate)]
    result: dict = run_json(args)
    if result["errors"]:
        raise AssertionError(f"load on {path} had {result['errors']} errors")
    return result


def create_room(server_http, name: str, users: list[str]) -> str:  # type: ignore[no-untyped-def]
    r = server_http.post(
        "/v1/chat/Create", json={"name": name, "description": "", "user_ids": users}
    )
    r.raise_for_status()
    return str(r.json()["room"]["id"])


def send_load(mode: Mode, workdir: Path) -> list[Row]:
    """Closed loop at 32 connections: chatctl serve, then the minimal app, twice each,
    alternating, so drift on the shared machine hits both."""
    chat: list[dict] = []
    floor: list[dict] = []
    args, port, log = peer_server("minimal_app", workdir, "--db", str(workdir / "minimal.db"))
    with chat_server(workdir / "server") as server, server.http() as c, process(args, port, log):
        room = create_room(c, "load", [USER])
        body = {"room_id": room, "user_id": USER, "text": "load test message"}
        assert server.port is not None
        for _ in range(2):
            chat.append(load(server.port, body, mode))
            floor.append(load(port, body, mode))
        # Latency below saturation: the same 32 connections at half the measured peak.
        half = max(r["rps"] for r in chat) / 2
        paced = load(server.port, body, mode, rate=half)
    best = max(chat, key=lambda r: r["rps"])
    best_floor = max(floor, key=lambda r: r["rps"])
    rps = sorted(r["rps"] for r in chat)[-1]
    floor_rps = sorted(r["rps"] for r in floor)[-1]
    return [
        ratio_row(
            "server Send, 32 conns closed loop",
            rps,
            "req/s",
            "minimal Starlette+SQLite app",
            floor_rps,
            at_least=0.6,
            note="best of 2 alternating runs each; load generator in its own process",
        ),
        Row(
            "server Send p99, 32 conns saturated",
            best["p99_ms"],
            "ms",
            "minimal app p99",
            best_floor["p99_ms"],
            "≤ 10 ms",
            best["p99_ms"] <= 10,
            note=f"closed loop at saturation: latency ≈ 32 / throughput (Little's law); "
            f"p50 {best['p50_ms']:.1f} ms",
        ),
        Row(
            "server Send p99, 32 conns at half peak",
            paced["p99_ms"],
            "ms",
            f"paced {half:,.0f} req/s",
            None,
            "≤ 10 ms",
            paced["p99_ms"] <= 10,
            note=f"open loop, latency from the scheduled send time; p50 {paced['p50_ms']:.2f} ms",
        ),
    ]


def build_big_room(db: Path, n: int) -> str:
    """A room of ``n`` messages, written straight into a fresh database file."""
    store = SQLiteStore(str(db))
    room = store.create_room(
        "", str(uuid.uuid4()), "big", "", rfc3339(time.time_ns()), False, [USER]
    )
    store.close()
    ids = UUIDv7()
    start = time.time_ns() - n * 1_000_000
    con = sqlite3.connect(db)
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("PRAGMA synchronous=OFF")
    with con:
        con.executemany(
            "INSERT INTO messages (room_pk, id, client, user_id, sent_at, subject, text)"
            " VALUES (?, ?, 'bench', ?, ?, '', ?)",
            (
                (
                    room.pk,
                    ids(start + i * 1_000_000),
                    USER,
                    rfc3339(start + i * 1_000_000),
                    f"message {i}",
                )
                for i in range(n)
            ),
        )
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    con.close()
    return room.id


def history(mode: Mode, workdir: Path) -> list[Row]:
    workdir = workdir / "history"
    workdir.mkdir(parents=True, exist_ok=True)
    db = workdir / "big.db"
    started = time.perf_counter()
    room = build_big_room(db, mode.big_room)
    built = time.perf_counter() - started
    with chat_server(workdir, db) as server:
        assert server.port is not None
        health = load(server.port, None, mode, conns=1, path="/health")
        r = load(
            server.port, {"room_id": room, "limit": 50}, mode, conns=1, path="/v1/chat/History"
        )
    size = f"{mode.big_room:,}"
    note = f"one connection, back to back; room built in {built:.0f} s by direct SQL inserts"
    if mode.quick:
        note += f" (quick mode: {size} messages, not 1,000,000)"
    return [
        Row(
            f"History latest 50 of {size}: p99",
            r["p99_ms"],
            "ms",
            "GET /health p99, same server",
            health["p99_ms"],
            "≤ 5 ms",
            r["p99_ms"] <= 5,
            note=f"p50 {r['p50_ms']:.2f} ms (/health p50 {health['p50_ms']:.2f} ms); {note}",
        ),
    ]


def server(mode: Mode, workdir: Path) -> list[Row]:
    return send_load(mode, workdir) + history(mode, workdir)
