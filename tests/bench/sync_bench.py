"""``sync`` (issue 27): what durable acknowledgements cost on SQLite.

The default server (``--sync full``: each group commit's WAL fsynced before its Sends
are answered) beside ``--sync normal`` (answered once the commit is in the OS page
cache), both running at once on the same machine and disk, loaded in turns:

- keyed Sends at 32 connections over 16 rooms, closed loop (the load generator of
  ``server_bench``): many Sends share each commit, and so each fsync. Target ≥ 0.8x.
- ``chatctl send ROOM --lines`` of 30,000 lines (bulk Sends; a bulk request is one
  commit). Target ≥ 0.9x.
- one connection of keyed Sends, one at a time (the minimal httpx loop of
  ``client_bench``): every Send waits for its own fsync; no target, it shows the disk.

The note gives the machine's fsync: the median ``fdatasync`` of a 4 KiB write in the
servers' directory.
"""

from __future__ import annotations

import json
import os
import statistics
import time
from pathlib import Path

from tests.bench.client_bench import MINIMAL_LOOP, USER, new_room, texts
from tests.bench.harness import CHATCTL, PYTHON, Mode, Row, bench_env, chat_server, ratio_row, wall
from tests.bench.server_bench import load

LINES = 30_000
KEYED_TARGET = 0.8
BULK_TARGET = 0.9
#: rounds of each load, full mode (quick: 3); each figure is their median.
ROUNDS = 5


def fdatasync_ms(directory: Path, n: int = 200) -> float:
    path = directory / "fsync-probe"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    times = []
    try:
        for _ in range(n):
            os.write(fd, b"x" * 4096)
            started = time.perf_counter()
            os.fdatasync(fd)
            times.append((time.perf_counter() - started) * 1000)
    finally:
        os.close(fd)
        path.unlink()
    return statistics.median(times)


def sync(mode: Mode, workdir: Path) -> list[Row]:
    where = workdir / "sync"
    where.mkdir(parents=True, exist_ok=True)
    probe = fdatasync_ms(where)
    load_before = os.getloadavg()[0]
    rounds = 3 if mode.quick else ROUNDS
    keyed: dict[str, list[float]] = {"full": [], "normal": []}
    bulk: dict[str, list[float]] = {"full": [], "normal": []}
    single: dict[str, list[float]] = {"full": [], "normal": []}
    complete = True
    single_n = 1_000 if mode.quick else 3_000
    with (
        chat_server(where / "full") as full,
        chat_server(where / "normal", extra=["--sync", "normal"]) as normal,
    ):
        servers = {"full": full, "normal": normal}
        bodies: dict[str, list[dict[str, object]]] = {}
        for name, server in servers.items():
            with server.http() as c:
                rooms = [new_room(c, f"load-{i}") for i in range(16)]
            bodies[name] = [
                {"room_id": rooms[i % 16], "user_id": USER, "text": "load test message"}
                for i in range(32)
            ]
        for turn in range(rounds):
            # Rotate who goes first, so drift on the shared machine hits both alike.
            order = ["full", "normal"] if turn % 2 == 0 else ["normal", "full"]
            for name in order:
                server = servers[name]
                assert server.port is not None
                result = load(server.port, None, mode, keyed=True, bodies=bodies[name])
                keyed[name].append(result["rps"])
            for name in order:
                server = servers[name]
                env = bench_env(server.url)
                with server.http() as c:
                    room = new_room(c, f"bulk-{turn}")
                    want = [f"bulk line {i:05d}" for i in range(LINES)]
                    args = [CHATCTL, "send", room, "--lines", "--user", USER, "-o", "id"]
                    data = "".join(t + "\n" for t in want).encode()
                    bulk[name].append(LINES / wall(args, env=env, input=data))
                    complete = complete and texts(c, room) == want
                    room = new_room(c, f"single-{turn}")
                    lines = "".join(
                        json.dumps({"room_id": room, "user_id": USER, "text": f"one {i}"}) + "\n"
                        for i in range(single_n)
                    )
                    args = [PYTHON, "-c", MINIMAL_LOOP, server.url, "keyed"]
                    single[name].append(single_n / wall(args, env=env, input=lines.encode()))
    med = {
        what: {k: statistics.median(v) for k, v in runs.items()}
        for what, runs in (("keyed", keyed), ("bulk", bulk), ("single", single))
    }
    note = (
        f"medians of {rounds} rounds, both servers up at once, taking turns; this disk's "
        f"fdatasync of 4 KiB: median {probe:.2f} ms; load average {load_before:.1f} before, "
        f"{os.getloadavg()[0]:.1f} after"
    )
    bulk_row = ratio_row(
        f"send --lines of {LINES:,} (bulk), --sync full",
        med["bulk"]["full"],
        "msg/s",
        "the same, --sync normal",
        med["bulk"]["normal"],
        at_least=BULK_TARGET,
        note=f"{note}; whole processes, start-up included; every line in History once, "
        f"in order: {complete}",
    )
    bulk_row.passed = bool(bulk_row.passed and complete)
    return [
        ratio_row(
            "Send + Idempotency-Key, 32 conns, --sync full",
            med["keyed"]["full"],
            "req/s",
            "the same, --sync normal",
            med["keyed"]["normal"],
            at_least=KEYED_TARGET,
            note=f"{note}; 16 rooms, closed loop, load generator in its own process",
        ),
        bulk_row,
        ratio_row(
            "Send + Idempotency-Key, 1 conn one by one, --sync full",
            med["single"]["full"],
            "msg/s",
            "the same, --sync normal",
            med["single"]["normal"],
            note=f"no target: each Send waits for its own fsync here; {single_n:,} Sends a run"
            f" (minimal httpx loop, whole process)",
        ),
    ]
