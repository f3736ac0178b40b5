"""The peer for fan-out: a bare ``websockets`` broadcast server, nothing else.

``python -m tests.bench.bare_ws --port P``. A connection's first frame says what it is: a
JoinRequest makes it a reader (acked with ``{"ack": true}``); ``{"sender": true}`` makes it
the sender, each of whose later frames is a message text, wrapped into the same
``{"message": {...}}`` frame chatctl's server sends (encoded once), broadcast to every
reader and then answered with ``{"ok": true}`` (the sender waits for it, as for a Send's
answer). No storage, no rules: the ceiling a Python WebSocket server reaches.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
import uuid

from websockets.asyncio.server import ServerConnection, broadcast, serve

_encode = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


async def main(port: int) -> None:
    readers: set[ServerConnection] = set()

    async def handler(ws: ServerConnection) -> None:
        first = json.loads(await ws.recv())
        if first.get("sender"):
            async for text in ws:
                frame = {
                    "message": {
                        "id": str(uuid.uuid4()),
                        "client": "bench",
                        "room_id": "bare",
                        "user_id": "sender",
                        "sent_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                        "subject": "",
                        "text": text,
                    }
                }
                broadcast(readers, _encode(frame))
                # Answer the sender, as chatctl's Send answers its POST: both senders
                # then wait for the server before their next message, paced alike.
                await ws.send('{"ok":true}')
            return
        readers.add(ws)
        try:
            await ws.send('{"ack":true}')
            await ws.wait_closed()
        finally:
            readers.discard(ws)

    async with serve(handler, "127.0.0.1", port, ping_interval=15, max_queue=None):
        await asyncio.Future()


def run() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    args = p.parse_args()
    import uvloop

    uvloop.run(main(args.port))


if __name__ == "__main__":
    run()
