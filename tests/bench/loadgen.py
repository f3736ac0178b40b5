"""A load generator in its own process: N kept-alive HTTP/1.1 connections over raw sockets.

``python -m tests.bench.loadgen --port P --path /v1/chat/Send --body JSON --conns 32
--seconds 5 [--rate R]`` prints one JSON line: requests, seconds, rps, p50_ms, p99_ms, errors.

Closed loop by default (each connection sends its next request when the answer arrives);
with ``--rate`` the connections share an open-loop schedule of R requests/second, and
latency is counted from each request's scheduled time, so queueing is not hidden.
Raw sockets, not httpx: the generator shares the machine's cores with the server and must
cost as little as possible per request.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import time

from tests.bench.harness import percentile, run_client


async def _read_response(reader: asyncio.StreamReader) -> int:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length = 0
    for line in head.split(b"\r\n"):
        if line[:15].lower() == b"content-length:":
            length = int(line[15:])
    if length:
        await reader.readexactly(length)
    return status


async def main(args: argparse.Namespace) -> dict[str, float]:
    body = args.body.encode()
    request = (
        f"{args.method} {args.path} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    latencies: list[float] = []
    errors = 0
    warm_until = time.perf_counter() + args.warmup
    stop_at = warm_until + args.seconds
    interval = 1 / args.rate if args.rate else 0.0
    next_slot = [warm_until]

    async def connection() -> None:
        nonlocal errors
        reader, writer = await asyncio.open_connection("127.0.0.1", args.port)
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
                writer.write(request)
                status = await _read_response(reader)
                done = time.perf_counter()
                if status >= 400:
                    errors += 1
                if start >= warm_until:
                    latencies.append(done - start)
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    await asyncio.gather(*(connection() for _ in range(args.conns)))
    ms = [x * 1000 for x in latencies]
    return {
        "requests": len(ms),
        "seconds": args.seconds,
        "rps": len(ms) / args.seconds,
        "p50_ms": percentile(ms, 50),
        "p99_ms": percentile(ms, 99),
        "errors": errors,
    }


def run() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--path", default="/v1/chat/Send")
    p.add_argument("--method", default="POST")
    p.add_argument("--body", default="")
    p.add_argument("--conns", type=int, default=32)
    p.add_argument("--seconds", type=float, default=5)
    p.add_argument("--warmup", type=float, default=1)
    p.add_argument("--rate", type=float, default=0)
    args = p.parse_args()
    run_client(main(args))


if __name__ == "__main__":
    run()
