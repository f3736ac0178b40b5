"""``replica-cost``: what one more replica costs each Send, and fan-out across replicas
(issue 27 part 4).

``CHATCTL_TEST_POSTGRES=postgresql://… python -m tests.bench --only replica-cost`` (opt-in,
like ``postgres``). For 1, 2 and 4 replicas on one database, each held to
``BUDGET_CORES`` of CPU (``cpu_budget``, as a container's limit; skipped, with the reason,
where cgroups are not writable), with no Join stream open anywhere, keyed Sends over 16
rooms (open loop, ``CONNS`` keep-alive connections a load generator), two ways. Each
replica's CPU is read from ``/proc``; what it uses idle (timers, housekeeping: about a
third of a percent of a core), measured over ``IDLE_SECONDS`` just before each load, is
taken off, so that a figure per Send is what Sends cost and not how long the load ran:

- **all to one**: ``ONE_RATE`` a second to the first replica, the others running idle.
  The sending replica does the same work whatever the number, so what the replicas' CPU
  per Send (all of them, from ``/proc``) gains with each one more is what that one pays
  for Sends made elsewhere: hearing them (a replica that hears every replica's
  notifications), or nothing (one that hears only the rooms it has streams in). Judged:
  four ≤ ``AT_MOST_4`` x one.
- **spread**: ``RATE`` a second to each replica, as a balancer spreads them: each replica
  as busy as one alone. Printed, not judged: a replica's CPU per Send depends on how busy
  it is (a busier event loop batches more per turn), and on 2 shared cores four replicas
  and PostgreSQL make the machine busy enough to move it.

The replicas run with ``--notify rooms`` (each hears only the rooms it has streams in);
all to one of four is measured with ``--notify both`` too, in the same run (the mode of a
rolling upgrade, in which every replica hears every Send as before per-room channels),
printed beside it, not judged.

Then fan-out: 100 messages a second sent to the first replica and read by 50 WebSocket
streams on the last, with 1 replica (the same one) and with 4 (unbudgeted: 50 streams
need more than a slice of a core): the message's latency from its Send to each stream.
"""

from __future__ import annotations

import contextlib
import os
import statistics
import time
from collections.abc import Iterator
from pathlib import Path

from tests import postgres
from tests.bench import cpu_budget, pg_bench
from tests.bench.harness import Mode, Row, ratio_row
from tests.bench.pg_remote_bench import cpu_seconds, run_together
from tests.bench.server_bench import USER, create_room, loadgen_args
from tests.helpers import ServerProcess

#: Sends a second to each replica (spread), or to the first alone, and the connections
#: that carry them (each load generator's).
RATE = 40
ONE_RATE = 160
CONNS = 8
ROOMS = 16
REPLICAS = (1, 2, 4)
#: seconds each replica's idle CPU is measured before a load.
IDLE_SECONDS = 2.0
#: each replica's CPU: four of them, PostgreSQL and the load generators fit in 2 cores.
BUDGET_CORES = 0.25
#: the issue's target: 4 replicas' CPU per Send at most this times one replica's.
AT_MOST_4 = 1.15
NOT_MEASURED = float("nan")


@contextlib.contextmanager
def replicas(
    count: int, workdir: Path, url: str, budget: bool, notify: str = "rooms"
) -> Iterator[list[ServerProcess]]:
    with contextlib.ExitStack() as stack:
        started = []
        for i in range(count):
            where = workdir / f"{count}-{int(budget)}-{notify}-{i}"
            where.mkdir(parents=True, exist_ok=True)
            extra = ["--notify", notify]
            server = stack.enter_context(ServerProcess(where, tcp=True, db=url, extra=extra))
            if budget:
                assert server.proc is not None
                group = stack.enter_context(
                    cpu_budget.CpuBudget(f"replica-cost-{count}-{i}", BUDGET_CORES)
                )
                group.add(server.proc.pid)
            started.append(server)
        yield started


def backend_pids(url: str) -> list[int]:
    """The PostgreSQL backends serving the database of ``url`` (this machine's)."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pid FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
        ).fetchall()
    return [int(pid) for (pid,) in rows]


def cpu_per_send(
    mode: Mode, servers: list[ServerProcess], seconds: float, url: str, *, spread: bool
) -> dict[str, float]:
    """Keyed Sends, ``RATE`` a second to each server (``spread``) or ``ONE_RATE`` to the
    first alone (the others idle): the servers' CPU per Send answered, the idle servers'
    alone (``others_us``), and their PostgreSQL backends' (the pools' and listeners')."""
    with servers[0].http() as c:
        rooms = [create_room(c, f"cost-{i}", [USER]) for i in range(ROOMS)]
    bodies: list[dict[str, object]] = [
        {"room_id": room, "user_id": USER, "text": "load test message"} for room in rooms
    ]
    senders = servers if spread else servers[:1]
    commands = []
    for server in senders:
        assert server.port is not None
        rate = RATE if spread else ONE_RATE
        commands.append(
            loadgen_args(server.port, None, mode, conns=CONNS, rate=rate, seconds=seconds,
                         keyed=True, bodies=bodies)
        )  # fmt: skip
    pids = [s.proc.pid for s in servers if s.proc is not None]
    # What the replicas use doing nothing (timers, housekeeping), over a window of its own
    # just before the load: taken off, so that a figure per Send is what Sends cost.
    idle = [cpu_seconds(pid) for pid in pids]
    time.sleep(IDLE_SECONDS)  # the idle window's length, not a wait on anything
    idle = [(cpu_seconds(pid) - was) / IDLE_SECONDS for pid, was in zip(pids, idle, strict=True)]
    before = {pid: cpu_seconds(pid) for pid in backend_pids(url)}
    cpus = [cpu_seconds(pid) for pid in pids]
    started = time.monotonic()
    outs = run_together(commands)
    wall = time.monotonic() - started
    raw = [cpu_seconds(pid) - was for pid, was in zip(pids, cpus, strict=True)]
    cpus = [max(0.0, c - rate * wall) for c, rate in zip(raw, idle, strict=True)]
    # Backends opened during the load (a pool growing) count from their start.
    pg = sum(cpu_seconds(pid) - before.get(pid, 0.0) for pid in backend_pids(url))
    sends = max(1.0, sum(o["rps"] for o in outs) * seconds)
    return {
        "us": sum(cpus) / sends * 1e6,
        "raw_us": sum(raw) / sends * 1e6,
        "idle_cores": sum(idle) / len(idle),
        "others_us": sum(cpus[len(senders) :]) / sends * 1e6,
        "pg_us": pg / sends * 1e6,
        "rps": sum(o["rps"] for o in outs),
        "errors": sum(o["errors"] for o in outs),
        "p99_ms": max(o["p99_ms"] for o in outs),
    }


def replica_cost(mode: Mode, workdir: Path) -> list[Row]:
    if not postgres.URL:
        raise SystemExit("the replica-cost section needs CHATCTL_TEST_POSTGRES")
    workdir = workdir / "replica-cost"
    seconds = 3.0 if mode.quick else 6.0
    rounds = 1 if mode.quick else 3
    no_budget = cpu_budget.unavailable()
    runs: dict[int, list[dict[str, float]]] = {n: [] for n in REPLICAS}
    ones: dict[int, list[dict[str, float]]] = {n: [] for n in REPLICAS}
    both: list[dict[str, float]] = []
    fan: dict[int, dict[str, float]] = {}
    with postgres.fresh_database() as url:
        if not no_budget:
            for _ in range(rounds):
                for n in REPLICAS:  # one configuration at a time: idle replicas would listen
                    with replicas(n, workdir, url, budget=True) as servers:
                        ones[n].append(cpu_per_send(mode, servers, seconds, url, spread=False))
                        runs[n].append(cpu_per_send(mode, servers, seconds, url, spread=True))
                with replicas(REPLICAS[-1], workdir, url, budget=True, notify="both") as servers:
                    both.append(cpu_per_send(mode, servers, seconds, url, spread=False))
        for n in (1, 4):
            with replicas(n, workdir, url, budget=False) as servers:
                fan[n] = pg_bench.fanout(mode, servers)
    out = one_rows(ones, seconds, rounds, no_budget)
    if both and ones[1]:
        n = REPLICAS[-1]
        others = statistics.median(r["others_us"] for r in both)
        note = (
            f"as all to 1 of {n} above, every replica with --notify both (a rolling "
            f"upgrade's: each hears every Send on the shared channel); of that, the idle "
            f"replicas {others:.0f} µs"
        )
        figure = f"replicas' CPU per Send, all to 1 of {n}, --notify both"
        median_both = statistics.median(r["us"] for r in both)
        one = statistics.median(r["us"] for r in ones[1])
        out.append(ratio_row(figure, median_both, "µs", "all to 1 of 1", one, note=note))
    return out + rows(runs, fan, seconds, rounds, no_budget)


def one_rows(
    ones: dict[int, list[dict[str, float]]], seconds: float, rounds: int, no_budget: str | None
) -> list[Row]:
    """All the Sends to one replica, the others idle: what the others cost each Send."""
    out: list[Row] = []
    median = {n: statistics.median(r["us"] for r in rs) for n, rs in ones.items() if rs}
    for n in REPLICAS:
        figure = f"replicas' CPU per Send, all to 1 of {n}"
        if n not in median:
            out.append(Row(figure, NOT_MEASURED, "µs", note=f"not measured: {no_budget}"))
            continue
        others = statistics.median(r["others_us"] for r in ones[n])
        raw = statistics.median(r["raw_us"] for r in ones[n])
        idle = statistics.median(r["idle_cores"] for r in ones[n])
        pg_us = statistics.median(r["pg_us"] for r in ones[n])
        rps = statistics.median(r["rps"] for r in ones[n])
        note = (
            f"{ONE_RATE} keyed Sends/s (open loop, {CONNS} conns) over {ROOMS} rooms to one "
            f"replica, {n - 1} more running idle, no stream open, each held to "
            f"{BUDGET_CORES:g} core; {seconds:g} s"
            + (f", median of {rounds} rounds" if rounds > 1 else "")
            + f"; {rps:.0f} Sends/s answered; the replicas' CPU beyond what they use idle "
            f"({idle * 100:.2f}% of a core each, measured {IDLE_SECONDS:g} s before), "
            f"{raw:.0f} µs per Send with it; of that, the idle replicas {others:.0f} µs; "
            f"PostgreSQL's backends for these replicas {pg_us:.0f} µs per Send"
        )
        if n == 1:
            out.append(Row(figure, median[n], "µs", note=note))
        else:
            out.append(
                ratio_row(figure, median[n], "µs", "all to 1 of 1", median[1],
                          at_most=AT_MOST_4 if n == 4 else None, note=note)
            )  # fmt: skip
    return out


def rows(
    runs: dict[int, list[dict[str, float]]],
    fan: dict[int, dict[str, float]],
    seconds: float,
    rounds: int,
    no_budget: str | None,
) -> list[Row]:
    out: list[Row] = []
    how = (
        f"{RATE} keyed Sends/s to each replica (open loop, {CONNS} conns each) over {ROOMS} "
        f"rooms, no stream open, each replica held to {BUDGET_CORES:g} core; {seconds:g} s"
        + (f", median of {rounds} rounds" if rounds > 1 else "")
    )
    median = {n: statistics.median(r["us"] for r in rs) for n, rs in runs.items() if rs}
    for n in REPLICAS:
        figure = f"replicas' CPU per Send, spread over {n}"
        if n not in median:
            out.append(Row(figure, NOT_MEASURED, "µs", note=f"not measured: {no_budget}"))
            continue
        rps = statistics.median(r["rps"] for r in runs[n])
        errors = sum(r["errors"] for r in runs[n])
        p99 = statistics.median(r["p99_ms"] for r in runs[n])
        pg_us = statistics.median(r["pg_us"] for r in runs[n])
        note = (
            f"{how}; {rps:.0f} Sends/s answered, p99 {p99:.0f} ms; errors {errors}; "
            f"{os.cpu_count()} cores; PostgreSQL's backends for these replicas "
            f"{pg_us:.0f} µs per Send"
        )
        if n == 1:
            out.append(Row(figure, median[n], "µs", note=note))
        else:
            out.append(ratio_row(figure, median[n], "µs", "1 replica", median[1], note=note))
    for n in (1, 4):
        f = fan[n]
        where = "on the same replica" if n == 1 else "on the 4th of 4 replicas"
        note = (
            f"100 msg/s sent to the first replica, {pg_bench.READERS} streams {where}; "
            f"p50 {f['p50_ms']:.1f} ms; delivered {f['delivered']} of {f['expected']}"
        )
        figure = f"fan-out p99, {n} replica{'s' if n > 1 else ''}"
        if n == 1:
            out.append(Row(figure, f["p99_ms"], "ms", note=note))
        else:
            out.append(ratio_row(figure, f["p99_ms"], "ms", "1 replica", fan[1]["p99_ms"],
                                 note=note))  # fmt: skip
    return out
