"""Figures 4 and 5: fan-out to 200 joined streams, and capacity with thousands held idle.

The readers are ``ws_clients`` in their own process; the sender is this process, pacing
Sends (HTTP for chatctl's server, a WebSocket for the bare broadcast server) with the send
time written into each text. Both senders are paced the same way: on one clock, each
message waiting for the server's answer before the next. Frames are counted once the
readers' backlog has drained.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
from websockets.sync.client import connect

from tests.bench.harness import (
    PYTHON,
    Mode,
    Row,
    chat_server,
    peer_server,
    process,
    ratio_row,
    rss_mb,
)
from tests.bench.server_bench import USER, create_room, load
from tests.helpers import wait_for

READERS = 200
#: a send rate is sustained while every frame arrives and p99 stays under this.
SUSTAINED_P99_MS = 100.0


@contextmanager
def readers(url: str, room: str, conns: int, *, ack: bool) -> Iterator[subprocess.Popen[str]]:
    args = [
        PYTHON,
        "-m",
        "tests.bench.ws_clients",
        "--url",
        url,
        "--room",
        room,
        "--conns",
        str(conns),
    ] + (["--ack"] if ack else [])
    proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if line.strip() != "READY":
            raise AssertionError(f"client harness failed: {line!r}")
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def results(proc: subprocess.Popen[str]) -> dict[str, dict[str, float]]:
    out, _ = proc.communicate("STOP\n", timeout=60)
    data: dict[str, dict[str, float]] = json.loads(out.strip().splitlines()[-1])
    return data


def paced(
    send: Callable[[str], None], phase: str, rate: float, seconds: float
) -> tuple[int, float]:
    """Send at ``rate`` per second for ``seconds``; returns how many and the rate achieved."""
    n = int(rate * seconds)
    start = time.perf_counter()
    for i in range(n):
        slot = start + i / rate
        delay = slot - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        send(f"{phase} {i} {time.time_ns()}")
    return n, n / (time.perf_counter() - start)


#: a backlog counts as drained when no frame arrived for this long (the rest is lost).
STALL_SECONDS = 2.0


def drain(proc: subprocess.Popen[str], phase: str, expected: int, limit: float = 120) -> int:
    """Wait until the readers have every frame of ``phase`` (or none came for
    ``STALL_SECONDS``, or ``limit`` passed): frames are counted after the backlog has
    drained, not at a fixed moment. Returns how many arrived."""
    assert proc.stdin is not None and proc.stdout is not None
    deadline = time.monotonic() + limit
    last, last_change = -1, time.monotonic()
    while True:
        proc.stdin.write("COUNT\n")
        proc.stdin.flush()
        got = int(json.loads(proc.stdout.readline()).get(phase, 0))
        now = time.monotonic()
        if got != last:
            last, last_change = got, now
        if got >= expected or now - last_change > STALL_SECONDS or now > deadline:
            return got
        time.sleep(0.05)


def ramp(mode: Mode, send: Callable[[str], None], proc: subprocess.Popen[str]) -> dict[int, dict]:
    """Each rate of the ramp in turn, each step's backlog drained before the next starts
    (so a step's latency is its own, not the queue its predecessor left)."""
    sent: dict[int, tuple[int, float]] = {}
    for rate in mode.ramp:
        sent[rate] = paced(send, f"r{rate}", rate, mode.ramp_seconds)
        drain(proc, f"r{rate}", sent[rate][0] * READERS)
    got = results(proc)
    out = {}
    for rate, (n, achieved) in sent.items():
        g = got.get(f"r{rate}", {"delivered": 0, "p99_ms": float("inf")})
        out[rate] = {"sent": n, "achieved": achieved, **g}
    return out


def best_sustained(steps: dict[int, dict]) -> tuple[float, int]:
    """The highest delivered frames/s of a step that delivered all with p99 in bound."""
    best, at = 0.0, 0
    for rate, s in steps.items():
        complete = s["delivered"] >= s["sent"] * READERS
        if complete and s["p99_ms"] <= SUSTAINED_P99_MS:
            delivered_rate = s["achieved"] * READERS
            if delivered_rate > best:
                best, at = delivered_rate, rate
    return best, at


def wait_members(c: httpx.Client, room: str, n: int) -> None:
    def joined() -> bool:
        rooms = c.post("/v1/chat/List", json={}).json()["rooms"]
        return any(r["id"] == room and len(r["user_ids"]) >= n for r in rooms)

    wait_for(joined, 120, f"{n} members in the room")


def fanout(mode: Mode, workdir: Path) -> list[Row]:
    with chat_server(workdir / "fanout") as server, server.http() as c:
        ws_url = f"ws://127.0.0.1:{server.port}/v1/chat/Join"
        room = create_room(c, "fanout", ["sender"])

        def send(text: str) -> None:
            c.post("/v1/chat/Send", json={"room_id": room, "user_id": "sender", "text": text})

        with readers(ws_url, room, READERS, ack=False) as proc:
            wait_members(c, room, READERS + 1)
            n, _ = paced(send, "steady", 100, mode.fanout_seconds)
            drain(proc, "steady", n * READERS)
            steady = results(proc)["steady"]
        room = create_room(c, "ramp", ["sender"])
        with readers(ws_url, room, READERS, ack=False) as proc:
            wait_members(c, room, READERS + 1)
            chat_steps = ramp(mode, send, proc)

    args, port, log = peer_server("bare_ws", workdir)
    with (
        process(args, port, log),
        readers(f"ws://127.0.0.1:{port}/", "bare", READERS, ack=True) as proc,
        connect(f"ws://127.0.0.1:{port}/") as sender,
    ):
        sender.send('{"sender": true}')

        def send_bare(text: str) -> None:
            sender.send(text)
            sender.recv(timeout=30)  # the server's answer, as an HTTP Send waits for its own

        bare_steps = ramp(mode, send_bare, proc)

    expected = n * READERS
    chat_best, chat_at = best_sustained(chat_steps)
    bare_best, bare_at = best_sustained(bare_steps)

    def steps_text(steps: dict[int, dict]) -> str:
        return ", ".join(
            f"{r}/s: p99 {s['p99_ms']:.0f} ms, {s['delivered'] / max(1, s['sent'] * READERS):.0%}"
            for r, s in steps.items()
        )

    return [
        Row(
            f"fan-out 100 msg/s to {READERS} streams: p99",
            steady["p99_ms"],
            "ms",
            "p50",
            steady["p50_ms"],
            "≤ 25 ms",
            steady["p99_ms"] <= 25,
            note=f"latency: receive time - send time written in the text by the sender "
            f"(before its POST); {mode.fanout_seconds:g} s",
        ),
        Row(
            f"fan-out delivered of {expected:,} frames",
            steady["delivered"],
            "frames",
            "sent x streams",
            expected,
            "all",
            steady["delivered"] == expected,
        ),
        ratio_row(
            f"fan-out sustained delivery to {READERS} streams",
            chat_best,
            "frames/s",
            "bare websockets broadcast",
            bare_best,
            at_least=0.5,
            note=f"ramp {mode.ramp_seconds:g} s per rate until p99 > "
            f"{SUSTAINED_P99_MS:g} ms or a frame is lost; chatctl best at "
            f"{chat_at}/s ({steps_text(chat_steps)}); bare best at {bare_at}/s "
            f"({steps_text(bare_steps)})",
        ),
    ]


def capacity(mode: Mode, workdir: Path) -> list[Row]:
    n = mode.idle_streams
    with chat_server(workdir / "capacity") as server, server.http() as c:
        assert server.port is not None and server.proc is not None
        pid = server.proc.pid
        room = create_room(c, "busy", [USER])
        idle = create_room(c, "idle", [])
        body = {"room_id": room, "user_id": USER, "text": "load test message"}
        before = load(server.port, body, mode)
        rss_before = rss_mb(pid)
        ws_url = f"ws://127.0.0.1:{server.port}/v1/chat/Join"
        with readers(ws_url, idle, n, ack=False):
            wait_members(c, idle, n)
            rss = rss_mb(pid)
            held = load(server.port, body, mode)
    size = f"{n:,}" + (" (quick mode; full: 5,000)" if mode.quick else "")
    return [
        Row(
            f"server RSS with {n:,} idle joined streams",
            rss,
            "MB",
            "RSS before they joined",
            rss_before,
            "≤ 300 MB",
            rss <= 300,
            note=f"{size}; VmRSS of the server process from /proc",
        ),
        ratio_row(
            f"server Send with {n:,} streams held",
            held["rps"],
            "req/s",
            "without them",
            before["rps"],
            at_least=0.5,
            note="32 connections closed loop into another room; streams idle",
        ),
    ]
