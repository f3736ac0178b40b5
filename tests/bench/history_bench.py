"""``history``: History of a 1,000,000-message room without ``limit`` (issue 15).

m3o's answer to a History without ``limit`` is every message of the room. The server must
give it without holding memory in proportion to the room, nor the event loop for the
whole answer: the reader (``history_client``, its own process) consumes the whole body
while it probes ``GET /health`` 100 times a second; this process samples the server's
resident memory meanwhile. Beside it, the same rows read straight from the database file
with ``sqlite3`` and written as JSON (the floor for an export; no target here).

The room is built by direct SQL (``server_bench.build_big_room``), in seconds. On
PostgreSQL (``history-postgres``, opt-in, needs ``CHATCTL_TEST_POSTGRES``) the rows are
copied in with ``COPY``.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

from tests import postgres
from tests.bench.harness import PYTHON, Mode, Row, chat_server, ratio_row, rss_mb, run_json

# The server's id and time helpers through server_bench, so a move of them inside the
# server touches one import in the suite.
from tests.bench.server_bench import USER, UUIDv7, build_big_room, create_room, rfc3339
from tests.helpers import ServerProcess

#: the issue's bounds while the whole room streams.
RSS_GROWTH_MB = 50.0
HEALTH_P99_MS = 20.0


class PeakRSS:
    """The highest resident memory of a process while in the ``with`` block: the kernel's
    high-water mark (reset at entry where allowed) and samples every 10 ms."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _hwm(self) -> float:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        return 0.0

    def _sample(self) -> None:
        while not self._stop.wait(0.01):
            with contextlib.suppress(OSError):
                self.peak = max(self.peak, rss_mb(self.pid))

    def __enter__(self) -> PeakRSS:
        self._reset = False
        with contextlib.suppress(OSError):
            Path(f"/proc/{self.pid}/clear_refs").write_text("5")  # resets VmHWM
            self._reset = True
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        if self._reset:
            self.peak = max(self.peak, self._hwm())


def raw_export_rate(db: Path, n: int) -> float:
    """Messages/s of a plain ``sqlite3`` read of the room's rows, written as JSON lines to
    nowhere: what a History body costs without any server."""
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    encode = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
    started = time.perf_counter()
    count = 0
    for row in con.execute(
        "SELECT id, client, user_id, sent_at, subject, text FROM messages ORDER BY seq"
    ):
        encode(
            {"id": row[0], "client": row[1], "user_id": row[2], "sent_at": row[3],
             "subject": row[4], "text": row[5]}
        )  # fmt: skip
        count += 1
    con.close()
    assert count == n, (count, n)
    return n / (time.perf_counter() - started)


def stream(server: ServerProcess, room: str) -> tuple[dict, float, float]:
    """Read the whole room through the server; (the reader's result, RSS before, peak)."""
    assert server.port is not None and server.proc is not None
    with server.http() as c:  # warm: the room row cached, the first page read
        for _ in range(3):
            c.post("/v1/chat/History", json={"room_id": room, "limit": 50}).raise_for_status()
    before = rss_mb(server.proc.pid)
    with PeakRSS(server.proc.pid) as peak:
        result = run_json(
            [PYTHON, "-m", "tests.bench.history_client", "--port", str(server.port),
             "--room", room],
            timeout=1800,
        )  # fmt: skip
    return result, before, peak.peak


def rows(backend: str, n: int, mode: Mode, built: float, got: dict, before: float,
         peak: float, raw_rate: float | None) -> list[Row]:  # fmt: skip
    size = f"{n:,}"
    quick = f" (quick mode: {size} messages, not 1,000,000)" if mode.quick else ""
    complete = got["messages"] == n
    idle, during = got["idle"], got["stream"]
    growth = peak - before
    what = f"History without limit of {size}, {backend}"
    out = [
        Row(
            f"{what}: server RSS growth",
            growth,
            "MB",
            "RSS before",
            before,
            f"< {RSS_GROWTH_MB:g} MB",
            growth < RSS_GROWTH_MB,
            note=f"peak {peak:.0f} MB (VmHWM and 10 ms samples); room built in {built:.0f} s by "
            f"direct SQL{quick}",
        ),
        Row(
            f"{what}: /health p99 meanwhile",
            during["p99_ms"],
            "ms",
            "/health p99 before it",
            idle["p99_ms"],
            f"≤ {HEALTH_P99_MS:g} ms",
            during["p99_ms"] <= HEALTH_P99_MS and not during["errors"],
            note=f"{during['count']} probes at 100/s, each at its time (open loop), "
            f"max {during['max_ms']:.0f} ms, errors {during['errors']}",
        ),
    ]
    rate = n / got["seconds"]
    note = (
        f"{got['messages']:,} of {size} messages read, {got['bytes'] / 1e6:.0f} MB in "
        f"{got['seconds']:.1f} s, first byte after {got['first_byte_s'] * 1000:.0f} ms"
    )
    if raw_rate is not None:
        row = ratio_row(
            f"{what}: messages/s", rate, "msg/s", "sqlite3 SELECT as JSON, no server",
            raw_rate, note=f"no target; {note}",
        )  # fmt: skip
    else:
        row = Row(f"{what}: messages/s", rate, "msg/s", note=f"no target; {note}")
    row.target, row.passed = "all read", complete
    out.append(row)
    return out


def history(mode: Mode, workdir: Path) -> list[Row]:
    workdir = workdir / "history-unlimited"
    workdir.mkdir(parents=True, exist_ok=True)
    db = workdir / "big.db"
    n = mode.big_room
    started = time.perf_counter()
    room = build_big_room(db, n)
    built = time.perf_counter() - started
    raw_rate = raw_export_rate(db, n)
    with chat_server(workdir, db) as server:
        got, before, peak = stream(server, room)
    return rows("SQLite", n, mode, built, got, before, peak, raw_rate)


@contextlib.contextmanager
def big_pg_room(n: int, workdir: Path) -> Iterator[tuple[ServerProcess, str]]:
    """A server on a fresh PostgreSQL database holding a room of ``n`` messages."""
    import psycopg

    with postgres.fresh_database() as url, ServerProcess(workdir, tcp=True, db=url) as server:
        with server.http() as c:
            room = create_room(c, "big", [USER])
        ids = UUIDv7()
        start = time.time_ns() - n * 1_000_000
        with psycopg.connect(url, autocommit=True) as conn:
            (pk,) = conn.execute("SELECT pk FROM rooms WHERE id = %s", (room,)).fetchone() or (0,)
            with conn.transaction():
                with conn.cursor().copy(
                    "COPY messages (room_pk, seq, id, client, user_id, sent_at, subject, text)"
                    " FROM STDIN"
                ) as copy:
                    for i in range(n):
                        at = start + i * 1_000_000
                        copy.write_row(
                            (pk, i + 1, ids(at), "bench", USER, rfc3339(at), "", f"message {i}")
                        )
                conn.execute("UPDATE rooms SET last_seq = %s WHERE pk = %s", (n, pk))
            conn.execute("ANALYZE messages")
        yield server, room


def history_postgres(mode: Mode, workdir: Path) -> list[Row]:
    if not postgres.URL:
        raise SystemExit("the history-postgres section needs CHATCTL_TEST_POSTGRES")
    workdir = workdir / f"history-pg-{uuid.uuid4().hex[:6]}"
    workdir.mkdir(parents=True, exist_ok=True)
    n = mode.big_room
    started = time.perf_counter()
    with big_pg_room(n, workdir) as (server, room):
        built = time.perf_counter() - started
        got, before, peak = stream(server, room)
    return rows("PostgreSQL", n, mode, built, got, before, peak, None)
