"""The whole suite: each section in turn, against servers it starts itself on loopback."""

from __future__ import annotations

import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from tests.bench import (
    bulk_bench,
    client_bench,
    core_ab_bench,
    fanout_bench,
    history_bench,
    pg_bench,
    pg_remote_bench,
    replica_cost_bench,
    server_bench,
    sync_bench,
    tail_bench,
)
from tests.bench.harness import Mode, Row, mode_from, raise_fd_limit, table

SECTIONS: dict[str, Callable[[Mode, Path], list[Row]]] = {
    "startup": client_bench.startup,
    "batch": client_bench.batch,
    "server": server_bench.server,
    "server-before": core_ab_bench.server_before,
    "history": history_bench.history,
    "bulk": bulk_bench.bulk,
    "sync": sync_bench.sync,
    "export": bulk_bench.export,
    "fanout": fanout_bench.fanout,
    "capacity": fanout_bench.capacity,
    "tail": tail_bench.tail,
    "postgres": pg_bench.postgres_section,
    "postgres-remote": pg_remote_bench.postgres_remote,
    "history-postgres": history_bench.history_postgres,
    "bulk-postgres": bulk_bench.bulk_postgres,
    "replica-cost": replica_cost_bench.replica_cost,
}
#: run only when named with --only: they need something the machine may not have
#: (PostgreSQL; for server-before, this checkout's git history).
OPT_IN = {
    "postgres",
    "postgres-remote",
    "history-postgres",
    "bulk-postgres",
    "replica-cost",
    "server-before",
}


def run(argv: Sequence[str] = (), only: Sequence[str] | None = None) -> tuple[list[Row], str]:
    mode = mode_from(argv)
    raise_fd_limit()
    rows: list[Row] = []
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="chatctl-bench-") as tmp:
        for name, section in SECTIONS.items():
            if (only and name not in only) or (not only and name in OPT_IN):
                continue
            t = time.monotonic()
            print(f"bench: {name} …", file=sys.stderr, flush=True)
            rows += section(mode, Path(tmp))
            print(f"bench: {name} done in {time.monotonic() - t:.0f} s", file=sys.stderr)
    text = table(rows, mode) + f"\n\ntotal {time.monotonic() - started:.0f} s"
    return rows, text
