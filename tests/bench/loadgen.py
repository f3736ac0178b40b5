"""A load generator in its own process: N kept-alive HTTP/1.1 connections over raw sockets.

``python -m tests.bench.loadgen --port P --path /v1/chat/Send --body JSON --conns 32
--seconds 5 [--rate R] [--key]`` prints one JSON line: requests, seconds, rps, p50_ms,
p99_ms, max_ms, errors and statuses (the count of each status that was not 2xx, and of
``reset``/``timeout`` for connections that failed).

Closed loop by default (each connection sends its next request when the answer arrives);
with ``--rate`` the connections share an open-loop schedule of R requests/second, and
latency is counted from each request's scheduled time, so queueing is not hidden. With
``--rate`` and ``--spawn`` no request waits for a connection of the generator's own: each
goes out at its time, on an idle connection or a new one (a health checker's probes, each
with its own deadline).
``--bodies`` gives a JSON list instead of one body: connection i sends body i mod n (Sends
spread over rooms). ``--key`` puts a unique ``Idempotency-Key`` on every request, as the
CLI does. A failed request is counted, not fatal: a reset or a request unanswered after
``--timeout`` seconds costs the connection, which is opened again.
Raw sockets, not httpx: the generator shares the machine's cores with the server and must
cost as little as possible per request.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import time
import uuid
from collections import Counter

from tests.bench.harness import percentile, run_client


async def read_response(reader: asyncio.StreamReader) -> tuple[int, int]:
    """One response: its status and body size (Content-Length or chunked)."""
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length = 0
    chunked = False
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = int(value)
        elif name == b"transfer-encoding" and b"chunked" in value.lower():
            chunked = True
    if not chunked:
        if length:
            await reader.readexactly(length)
        return status, length
    size = 0
    while True:
        line = await reader.readuntil(b"\r\n")
        n = int(line.split(b";")[0], 16)
        if n == 0:
            await reader.readuntil(b"\r\n")  # no trailers are sent
            return status, size
        await reader.readexactly(n + 2)
        size += n


def request_bytes(method: str, path: str, body: bytes, key: str | None = None) -> bytes:
    head = f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
    if body:
        head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
    if key is not None:
        head += f"Idempotency-Key: {key}\r\n"
    return (head + "\r\n").encode() + body


async def main(args: argparse.Namespace) -> dict[str, object]:
    bodies = [json.dumps(b).encode() for b in json.loads(args.bodies)] if args.bodies else []
    bodies = bodies or [args.body.encode()]
    latencies: list[float] = []
    statuses: Counter[str] = Counter()
    ok = 0
    warm_until = time.perf_counter() + args.warmup
    stop_at = warm_until + args.seconds
    interval = 1 / args.rate if args.rate else 0.0
    next_slot = [warm_until]
    run_id = uuid.uuid4().hex[:12]

    async def connection(i: int) -> None:
        nonlocal ok
        body = bodies[i % len(bodies)]
        fixed = request_bytes(args.method, args.path, body)
        n = 0
        reader: asyncio.StreamReader | None = None
        writer: asyncio.StreamWriter | None = None
        try:
            while True:
                now = time.perf_counter()
                if interval:
                    slot = next_slot[0]
                    next_slot[0] += interval
                    if slot >= stop_at:
                        return
                    if slot > now:
                        await asyncio.sleep(slot - now)
                    start = slot
                else:
                    if now >= stop_at:
                        return
                    start = now
                n += 1
                request = (
                    request_bytes(args.method, args.path, body, f"{run_id}-{i}-{n}")
                    if args.key
                    else fixed
                )
                outcome: str | int
                try:
                    if writer is None:
                        reader, writer = await asyncio.open_connection("127.0.0.1", args.port)
                    assert reader is not None
                    writer.write(request)
                    outcome = (await asyncio.wait_for(read_response(reader), args.timeout))[0]
                except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as exc:
                    outcome = "reset" if not isinstance(exc, TimeoutError) else "timeout"
                if not isinstance(outcome, int) and writer is not None:
                    writer.close()
                    reader = writer = None
                done = time.perf_counter()
                if start < warm_until:
                    continue
                latencies.append(done - start)
                if isinstance(outcome, int) and outcome < 400:
                    ok += 1
                else:
                    statuses[str(outcome)] += 1
        finally:
            if writer is not None:
                writer.close()
                with contextlib.suppress(Exception):
                    await writer.wait_closed()

    idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []

    async def probe(slot: float) -> None:
        """One request at its scheduled time on an idle connection, or a new one."""
        nonlocal ok
        conn = idle.pop() if idle else None
        outcome: str | int
        try:
            if conn is None:
                conn = await asyncio.open_connection("127.0.0.1", args.port)
            conn[1].write(request_bytes(args.method, args.path, bodies[0]))
            outcome = (await asyncio.wait_for(read_response(conn[0]), args.timeout))[0]
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as exc:
            outcome = "reset" if not isinstance(exc, TimeoutError) else "timeout"
            if conn is not None:
                conn[1].close()
            conn = None
        if slot >= warm_until:
            latencies.append(time.perf_counter() - slot)
            if isinstance(outcome, int) and outcome < 400:
                ok += 1
            else:
                statuses[str(outcome)] += 1
        if conn is not None:
            idle.append(conn)

    if args.spawn:
        probes = []
        slot = time.perf_counter()
        while slot < stop_at:
            delay = slot - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            probes.append(asyncio.create_task(probe(slot)))
            slot += interval
        await asyncio.gather(*probes)
        for _, writer in idle:
            writer.close()
    else:
        await asyncio.gather(*(connection(i) for i in range(args.conns)))
    ms = [x * 1000 for x in latencies]
    return {
        "requests": len(ms),
        "seconds": args.seconds,
        "rps": ok / args.seconds,
        "p50_ms": percentile(ms, 50),
        "p99_ms": percentile(ms, 99),
        "max_ms": max(ms, default=float("nan")),
        "errors": sum(statuses.values()),
        "statuses": dict(statuses),
    }


def run() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--path", default="/v1/chat/Send")
    p.add_argument("--method", default="POST")
    p.add_argument("--body", default="")
    p.add_argument("--bodies", default="", help="a JSON list of bodies, one per connection")
    p.add_argument("--key", action="store_true", help="a unique Idempotency-Key per request")
    p.add_argument("--conns", type=int, default=32)
    p.add_argument("--seconds", type=float, default=5)
    p.add_argument("--warmup", type=float, default=1)
    p.add_argument("--rate", type=float, default=0)
    p.add_argument("--timeout", type=float, default=30, help="seconds a request may take")
    p.add_argument(
        "--spawn",
        action="store_true",
        help="with --rate: each request at its time, on a new connection if none is idle",
    )
    args = p.parse_args()
    if args.spawn and not args.rate:
        p.error("--spawn needs --rate")
    run_client(main(args))


if __name__ == "__main__":
    run()
