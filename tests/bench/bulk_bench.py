"""``bulk``, ``bulk-postgres`` and ``export`` (issue 16): batches and exports past the
one-request-per-message floor, each beside its floor measured in the same run.

- ``bulk``: ``chatctl send ROOM --lines`` of 30,000 lines (bulk Sends: the server names
  ``bulk-send``) beside the minimal httpx loop of ``client_bench`` (one Send per message
  over one kept-alive connection, no key), on SQLite; both whole processes, start-up
  included, taking turns. Every line must be in History once, in order.
- ``bulk-postgres`` (opt-in, needs ``CHATCTL_TEST_POSTGRES``): the same on PostgreSQL.
- ``export``: ``chatctl history ROOM -o jsonl > FILE`` of a 1,000,000-message room beside
  a raw ``sqlite3`` SELECT of the same rows written as JSON lines to a file (no server,
  no HTTP); and the CLI's peak memory meanwhile.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import time
from pathlib import Path

from tests import postgres
from tests.bench.client_bench import MINIMAL_LOOP, USER, new_room, texts
from tests.bench.harness import (
    CHATCTL,
    PYTHON,
    Mode,
    Row,
    bench_env,
    chat_server,
    ratio_row,
    wall,
)
from tests.bench.server_bench import build_big_room
from tests.helpers import ServerProcess

#: the issue's batch, and its target over the loop.
LINES = 30_000
BULK_TARGET = 5.0
#: the issue's export target over the raw read, and a bound on the CLI's memory.
EXPORT_TARGET = 0.3
EXPORT_RSS_MB = 100.0


def bulk(mode: Mode, workdir: Path) -> list[Row]:
    with chat_server(workdir / "bulk") as server:
        return _bulk(mode, server, "SQLite")


def bulk_postgres(mode: Mode, workdir: Path) -> list[Row]:
    if not postgres.URL:
        raise SystemExit("the bulk-postgres section needs CHATCTL_TEST_POSTGRES")
    where = workdir / "bulk-postgres"
    where.mkdir(parents=True, exist_ok=True)
    with postgres.fresh_database() as url, ServerProcess(where, tcp=True, db=url) as server:
        return _bulk(mode, server, "PostgreSQL")


def _bulk(mode: Mode, server: ServerProcess, backend: str) -> list[Row]:
    # The loop at ~1,000 Sends/s would take half a minute for 30,000 on every turn: in
    # quick mode it sends fewer (a rate is a rate), chatctl always the 30,000.
    loop_lines = LINES if not mode.quick else 5_000
    env = bench_env(server.url)
    rates: dict[str, list[float]] = {"chatctl": [], "loop": []}
    complete = True
    with server.http() as c:
        for _ in range(mode.batch_repeats):
            for kind in rates:
                n = LINES if kind == "chatctl" else loop_lines
                room = new_room(c, kind)
                want = [f"{kind} line {i:05d}" for i in range(n)]
                if kind == "chatctl":
                    args = [CHATCTL, "send", room, "--lines", "--user", USER, "-o", "id"]
                    data = "".join(t + "\n" for t in want)
                else:
                    args = [PYTHON, "-c", MINIMAL_LOOP, server.url, "plain"]
                    data = "".join(
                        json.dumps({"room_id": room, "user_id": USER, "text": t}) + "\n"
                        for t in want
                    )
                seconds = wall(args, env=env, input=data.encode())
                rates[kind].append(n / seconds)
                complete = complete and texts(c, room) == want
    best = {k: sorted(v)[len(v) // 2] for k, v in rates.items()}
    size = "" if loop_lines == LINES else f"quick mode: the loop sends {loop_lines:,}; "
    row = ratio_row(
        f"send --lines of {LINES:,} (bulk), {backend}",
        best["chatctl"],
        "msg/s",
        "minimal httpx loop, 1 conn",
        best["loop"],
        at_least=BULK_TARGET,
        note=f"{size}medians of {mode.batch_repeats} alternating runs; whole processes, "
        f"start-up included; every line in History once, in order: {complete}",
    )
    row.passed = bool(row.passed and complete)
    return [row]


def raw_jsonl(db: Path, out: Path, n: int) -> float:
    """Seconds for a plain ``sqlite3`` read of the room's rows written as JSON lines."""
    encode = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
    started = time.perf_counter()
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    count = 0
    with open(out, "w", encoding="utf-8") as f:
        for row in con.execute(
            "SELECT id, client, room_pk, user_id, sent_at, subject, text FROM messages ORDER BY seq"
        ):
            f.write(
                encode({"id": row[0], "client": row[1], "room_id": row[2], "user_id": row[3],
                        "sent_at": row[4], "subject": row[5], "text": row[6]}) + "\n"
            )  # fmt: skip
            count += 1
    con.close()
    assert count == n, (count, n)
    return time.perf_counter() - started


def export(mode: Mode, workdir: Path) -> list[Row]:
    where = workdir / "export"
    where.mkdir(parents=True, exist_ok=True)
    db = where / "big.db"
    n = mode.big_room
    room = build_big_room(db, n)
    out = where / "export.jsonl"
    raw_seconds: list[float] = []
    cli_seconds: list[float] = []
    peak_kb = 0
    lines = 0
    with chat_server(where, db) as server, server.http() as c:
        env = bench_env(server.url)
        c.post("/v1/chat/History", json={"room_id": room, "limit": 10}).raise_for_status()
        for _ in range(max(1, mode.batch_repeats - 1)):
            raw_seconds.append(raw_jsonl(db, where / "raw.jsonl", n))
            seconds, kb = _export(env, room, out)
            cli_seconds.append(seconds)
            peak_kb = max(peak_kb, kb)
            with open(out, "rb") as f:
                lines = sum(1 for _ in f)
    raw = sorted(raw_seconds)[len(raw_seconds) // 2]
    cli = sorted(cli_seconds)[len(cli_seconds) // 2]
    size = f"{n:,}"
    quick = f" (quick mode: {size} messages, not 1,000,000)" if mode.quick else ""
    rate = ratio_row(
        f"history -o jsonl of {size} messages",
        n / cli,
        "msg/s",
        "sqlite3 SELECT as JSON lines",
        n / raw,
        at_least=EXPORT_TARGET,
        note=f"whole CLI process to a file, start-up included; {lines:,} lines written{quick}",
    )
    rate.passed = bool(rate.passed and lines == n)
    memory = Row(
        f"history -o jsonl of {size} messages: CLI peak RSS",
        peak_kb / 1024,
        "MB",
        target=f"< {EXPORT_RSS_MB:g} MB",
        passed=peak_kb / 1024 < EXPORT_RSS_MB,
        note="constant memory: the answer is decoded as it arrives and written as it goes",
    )
    return [rate, memory]


def _export(env: dict[str, str], room: str, out: Path) -> tuple[float, int]:
    """Seconds and peak resident KiB of ``chatctl history ROOM -o jsonl > out``."""
    errors = out.with_suffix(".err")
    started = time.perf_counter()
    with open(out, "wb") as stdout, open(errors, "wb") as stderr:
        proc = subprocess.Popen(
            [CHATCTL, "history", room, "--user", USER, "-o", "jsonl"],
            env=env,
            stdout=stdout,
            stderr=stderr,
        )
        # wait4: this very process's peak memory (ru_maxrss, KiB on Linux).
        _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise AssertionError(f"chatctl history exited {proc.returncode}: {errors.read_text()}")
    return seconds, usage.ru_maxrss
