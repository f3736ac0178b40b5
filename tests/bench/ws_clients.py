"""The client harness, in its own process: N joined WebSocket streams (asyncio + websockets).

``python -m tests.bench.ws_clients --url ws://127.0.0.1:P/v1/chat/Join --room ID --conns N
[--ack]`` connects N streams (user ``reader-i``), sends each its JoinRequest, and prints
``READY`` (with ``--ack``, after each got the peer server's ack frame). Then it reads every
frame until a line ``STOP`` on stdin, and prints one JSON line: per phase, how many frames
were delivered and their delivery latency (receive time minus the send time the sender
wrote into the text, ``"PHASE N TIME_NS"``; one machine, one clock). A line ``COUNT``
prints the frames delivered so far per phase (one JSON line), so the sender can wait for
a backlog to drain before it counts.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections import defaultdict

from websockets.asyncio.client import connect

from tests.bench.harness import percentile, run_client


async def main(args: argparse.Namespace) -> dict[str, dict[str, float]]:
    latencies: dict[str, list[float]] = defaultdict(list)
    connected: list[object] = []
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    ready = asyncio.Semaphore(0)

    async def stream(i: int) -> None:
        async with connect(
            args.url, max_queue=None, ping_interval=None, open_timeout=60, close_timeout=1
        ) as ws:
            await ws.send(json.dumps({"room_id": args.room, "user_id": f"reader-{i}"}))
            if args.ack:
                await ws.recv()
            connected.append(ws)
            ready.release()
            async for raw in ws:
                now = time.time_ns()
                text = json.loads(raw)["message"]["text"]
                phase, _, sent = text.split(" ")
                latencies[phase].append((now - int(sent)) / 1e6)

    tasks = []
    # Open in waves: a burst of thousands of handshakes would overflow the listen backlog.
    for i in range(args.conns):
        tasks.append(asyncio.create_task(stream(i)))
        if i % 100 == 99:
            for _ in range(100):
                await ready.acquire()
    for _ in range(args.conns % 100):
        await ready.acquire()
    print("READY", flush=True)

    def on_stdin() -> None:
        command = sys.stdin.readline().strip()
        if command == "COUNT":
            counts = {phase: len(values) for phase, values in latencies.items()}
            print(json.dumps(counts), flush=True)
        elif command in ("STOP", ""):
            stop.set()

    loop.add_reader(sys.stdin.fileno(), on_stdin)
    await stop.wait()
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return {
        phase: {
            "delivered": len(values),
            "p50_ms": percentile(values, 50),
            "p99_ms": percentile(values, 99),
        }
        for phase, values in latencies.items()
    }


def run() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--url", required=True)
    p.add_argument("--room", required=True)
    p.add_argument("--conns", type=int, default=200)
    p.add_argument("--ack", action="store_true")
    args = p.parse_args()
    run_client(main(args))


if __name__ == "__main__":
    run()
