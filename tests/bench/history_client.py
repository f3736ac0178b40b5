"""The History reader, in its own process: reads a whole room without ``limit`` while a
prober asks ``GET /health`` at a steady rate.

``python -m tests.bench.history_client --port P --room ID [--health-rate 100]
[--idle-seconds 2]`` first probes /health alone for ``--idle-seconds`` (the baseline), then
POSTs ``/v1/chat/History`` for the room with no limit and reads the whole body as it
arrives (Content-Length or chunked), counting bytes and messages, while the probes go on;
they stop when the body ends. Prints one JSON line: messages, bytes, seconds, first_byte_s,
and for each phase (``idle``, ``stream``) the probes' count, p50_ms, p99_ms, max_ms and
errors. Each probe goes out at its scheduled time, on an idle connection or a new one,
and its latency counts from that time (a stalled server shows in full).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections import defaultdict

from tests.bench.harness import percentile, run_client
from tests.bench.loadgen import read_response, request_bytes

#: one message object per occurrence: the key opens every message, and a quote inside a
#: JSON string is escaped, so no text can fake it.
_MESSAGE_KEY = b'"id":'


async def read_history(port: int, room: str) -> dict[str, float]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1 << 20)
    body = json.dumps({"room_id": room}).encode()
    started = time.perf_counter()
    writer.write(request_bytes("POST", "/v1/chat/History", body))
    head = await reader.readuntil(b"\r\n\r\n")
    first_byte = time.perf_counter() - started
    status = int(head[9:12])
    if status != 200:
        raise SystemExit(f"History answered {status}: {head!r}")
    length = None
    chunked = False
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
        elif name.strip().lower() == b"transfer-encoding" and b"chunked" in value.lower():
            chunked = True
    size = messages = 0
    tail = b""

    def take(data: bytes) -> None:
        nonlocal size, messages, tail
        size += len(data)
        joined = tail + data
        messages += joined.count(_MESSAGE_KEY)
        # Keep what could start a key split across two reads, but never a whole one.
        keep = len(_MESSAGE_KEY) - 1
        tail = joined[-keep:] if not joined.endswith(_MESSAGE_KEY) else b""

    if chunked:
        while True:
            n = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            if n == 0:
                await reader.readuntil(b"\r\n")
                break
            take((await reader.readexactly(n + 2))[:-2])
    else:
        assert length is not None, "a response with neither Content-Length nor chunks"
        left = length
        while left:
            data = await reader.read(min(left, 1 << 20))
            if not data:
                raise SystemExit("History body ended early")
            left -= len(data)
            take(data)
    seconds = time.perf_counter() - started
    writer.close()
    return {"messages": messages, "bytes": size, "seconds": seconds, "first_byte_s": first_byte}


async def main(args: argparse.Namespace) -> dict[str, object]:
    samples: dict[str, list[float]] = defaultdict(list)
    errors: dict[str, int] = defaultdict(int)
    idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    phase = "idle"
    request = request_bytes("GET", "/health", b"")

    async def probe(slot: float, phase: str) -> None:
        conn = idle.pop() if idle else None
        try:
            if conn is None:
                conn = await asyncio.open_connection("127.0.0.1", args.port)
            conn[1].write(request)
            status, _ = await asyncio.wait_for(read_response(conn[0]), 60)
            if status != 200:
                errors[phase] += 1
        except (OSError, asyncio.IncompleteReadError):
            errors[phase] += 1
            if conn is not None:
                conn[1].close()
            conn = None
        samples[phase].append((time.perf_counter() - slot) * 1000)
        if conn is not None:
            idle.append(conn)

    stop = asyncio.Event()
    probes: list[asyncio.Task[None]] = []

    async def schedule() -> None:
        interval = 1 / args.health_rate
        slot = time.perf_counter()
        while not stop.is_set():
            delay = slot - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            probes.append(asyncio.create_task(probe(slot, phase)))
            slot += interval

    scheduler = asyncio.create_task(schedule())
    await asyncio.sleep(args.idle_seconds)
    phase = "stream"
    result: dict[str, object] = dict(await read_history(args.port, args.room))
    stop.set()
    await scheduler
    await asyncio.gather(*probes)
    for _, writer in idle:
        writer.close()
    for name in ("idle", "stream"):
        values = samples[name]
        result[name] = {
            "count": len(values),
            "p50_ms": percentile(values, 50),
            "p99_ms": percentile(values, 99),
            "max_ms": max(values, default=float("nan")),
            "errors": errors[name],
        }
    return result


def run() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--room", required=True)
    p.add_argument("--health-rate", type=float, default=100)
    p.add_argument("--idle-seconds", type=float, default=2)
    run_client(main(p.parse_args()))


if __name__ == "__main__":
    run()
