"""PostgreSQL beside SQLite: Send throughput and fan-out latency for one server on SQLite,
one replica on PostgreSQL and two replicas on one PostgreSQL database.

``python -m tests.bench --only postgres`` (opt-in: not in the default run). Needs
``CHATCTL_TEST_POSTGRES`` (a server where it may create and drop databases).

All on one machine: the load generator, the readers, the replicas and PostgreSQL share its
cores, so two replicas measure what sharing one database costs, not how far it scales.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

from tests import postgres
from tests.bench.fanout_bench import drain, paced, readers, results, wait_members
from tests.bench.harness import PYTHON, Mode, Row, ratio_row
from tests.bench.server_bench import USER, create_room
from tests.helpers import ServerProcess

READERS = 50
CONNS = 32


@contextlib.contextmanager
def servers(kind: str, workdir: Path) -> Iterator[list[ServerProcess]]:
    """``sqlite``: one server; ``pg1``: one replica; ``pg2``: two replicas, one database."""
    count = 2 if kind == "pg2" else 1
    with contextlib.ExitStack() as stack:
        if kind == "sqlite":
            db = str(workdir / kind / "chat.db")
        else:
            db = stack.enter_context(postgres.fresh_database())
        started = []
        for i in range(count):
            where = workdir / kind / str(i)
            where.mkdir(parents=True, exist_ok=True)
            started.append(stack.enter_context(ServerProcess(where, tcp=True, db=db)))
        yield started


def send_load(mode: Mode, group: list[ServerProcess]) -> dict[str, float]:
    """32 connections closed loop into one room, split evenly over the replicas."""
    with group[0].http() as c:
        room = create_room(c, "load", [USER])
    body = json.dumps({"room_id": room, "user_id": USER, "text": "load test message"})
    procs = [
        subprocess.Popen(
            [
                PYTHON,
                "-m",
                "tests.bench.loadgen",
                "--port",
                str(server.port),
                "--conns",
                str(CONNS // len(group)),
                "--seconds",
                str(mode.load_seconds),
                "--body",
                body,
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        for server in group
    ]
    outs = [json.loads(p.communicate(timeout=600)[0].strip().splitlines()[-1]) for p in procs]
    if any(o["errors"] for o in outs):
        raise AssertionError(f"Send load had errors: {outs}")
    return {
        "rps": sum(o["rps"] for o in outs),
        "p50_ms": max(o["p50_ms"] for o in outs),
        "p99_ms": max(o["p99_ms"] for o in outs),
    }


def fanout(mode: Mode, group: list[ServerProcess]) -> dict[str, float]:
    """100 msg/s sent to the first replica, read by READERS streams on the last one."""
    sender, reader = group[0], group[-1]
    with sender.http() as c:
        room = create_room(c, "fanout", ["sender"])

        def send(text: str) -> None:
            c.post("/v1/chat/Send", json={"room_id": room, "user_id": "sender", "text": text})

        with readers(f"ws://127.0.0.1:{reader.port}/v1/chat/Join", room, READERS, ack=False) as p:
            wait_members(c, room, READERS + 1)
            n, _ = paced(send, "steady", 100, mode.fanout_seconds)
            drain(p, "steady", n * READERS)
            got = results(p)["steady"]
    return {**got, "expected": n * READERS}


def postgres_section(mode: Mode, workdir: Path) -> list[Row]:
    if not postgres.URL:
        raise SystemExit("the postgres section needs CHATCTL_TEST_POSTGRES")
    load: dict[str, dict[str, float]] = {}
    fan: dict[str, dict[str, float]] = {}
    for kind in ("sqlite", "pg1", "pg2"):
        with servers(kind, workdir) as group:
            load[kind] = send_load(mode, group)
            fan[kind] = fanout(mode, group)
    names = {"sqlite": "SQLite, 1 server", "pg1": "PostgreSQL, 1 replica"}
    names["pg2"] = "PostgreSQL, 2 replicas"
    rows: list[Row] = []
    for kind in ("pg1", "pg2"):
        rows.append(
            ratio_row(
                f"Send, {CONNS} conns closed loop: {names[kind]}",
                load[kind]["rps"],
                "req/s",
                names["sqlite"],
                load["sqlite"]["rps"],
                note=f"one room; conns split over the replicas; p50 {load[kind]['p50_ms']:.1f} ms,"
                f" p99 {load[kind]['p99_ms']:.1f} ms (SQLite p50 {load['sqlite']['p50_ms']:.1f},"
                f" p99 {load['sqlite']['p99_ms']:.1f} ms)",
            )
        )
    for kind in ("pg1", "pg2"):
        where = "sender and readers on it" if kind == "pg1" else "sent to A, read on B"
        rows.append(
            Row(
                f"fan-out 100 msg/s to {READERS} streams, p99: {names[kind]}",
                fan[kind]["p99_ms"],
                "ms",
                f"{names['sqlite']} p99",
                fan["sqlite"]["p99_ms"],
                "all delivered",
                fan[kind]["delivered"] == fan[kind]["expected"],
                note=f"{where}; p50 {fan[kind]['p50_ms']:.2f} ms (SQLite "
                f"{fan['sqlite']['p50_ms']:.2f} ms); delivered {fan[kind]['delivered']:.0f} of "
                f"{fan[kind]['expected']:.0f}",
            )
        )
    return rows
