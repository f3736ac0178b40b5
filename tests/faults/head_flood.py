"""A flood of request heads that never end, in its own process (so that the probe of the
test process keeps its own CPU): ``python -m tests.faults.head_flood --port P --conns N
--seconds S``.

Each of N connections sends ``GET /v1/chat/List`` and then one header line as fast as
the server takes it, without a token, until the server answers or closes; then it opens
another, until S seconds have passed. At the end it prints one JSON line: how many heads
were answered 431, how many closed without an answer, how many got any other answer
(``other``, with the first few) and how many were neither answered nor closed within 5 s
of the flood's end (``unanswered``), and the bytes sent.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import time
from collections import Counter

HEAD = b"GET /v1/chat/List HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Flood: "
CHUNK = b"a" * 65536
#: how long after the flood's end a connection may take to be answered or closed.
GRACE = 5.0


async def flood(port: int, until: float, tally: Counter[str], others: list[str]) -> None:
    loop = asyncio.get_running_loop()
    while loop.time() < until:
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            tally["connect_failed"] += 1
            await asyncio.sleep(0.01)
            continue

        async def pump(writer: asyncio.StreamWriter = writer) -> None:
            writer.write(HEAD)
            while True:
                writer.write(CHUNK)
                await writer.drain()
                tally["bytes"] += len(CHUNK)

        pumping = asyncio.create_task(pump())
        try:
            answer = await asyncio.wait_for(reader.read(4096), until - loop.time() + GRACE)
        except (ConnectionError, OSError):
            answer = b""
        except TimeoutError:
            answer = None
        pumping.cancel()
        with contextlib.suppress(BaseException):
            await pumping
        writer.transport.abort()  # on to the next at once, unsent bytes dropped
        if answer is None:
            tally["unanswered"] += 1
        elif answer.startswith(b"HTTP/1.1 431 "):
            tally["answered_431"] += 1
        elif not answer:
            tally["closed"] += 1
        else:
            tally["other"] += 1
            if len(others) < 3:
                others.append(answer[:200].decode("latin-1"))


async def main(args: argparse.Namespace) -> dict[str, object]:
    loop = asyncio.get_running_loop()
    until = loop.time() + args.seconds
    tally: Counter[str] = Counter()
    others: list[str] = []
    started = time.monotonic()
    await asyncio.gather(*(flood(args.port, until, tally, others) for _ in range(args.conns)))
    return {
        "answered_431": tally["answered_431"],
        "closed": tally["closed"],
        "other": tally["other"],
        "others": others,
        "unanswered": tally["unanswered"],
        "connect_failed": tally["connect_failed"],
        "mib_sent": round(tally["bytes"] / 2**20),
        "seconds": round(time.monotonic() - started, 1),
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--conns", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=10.0)
    print(json.dumps(asyncio.run(main(parser.parse_args()))), flush=True)
