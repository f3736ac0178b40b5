"""The floor for the server's Send: a minimal Starlette app, one SQLite insert per request.

``python -m tests.bench.minimal_app --port P --db PATH``: ``POST /v1/chat/Send`` parses the
JSON body, inserts one row (WAL, ``synchronous=NORMAL``, autocommit, as the chat store)
and answers the message as JSON. No rules, no validation, no idempotency: what any Python
server on the same uvicorn settings must at least do.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import time
import uuid

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route


def create_app(db_path: str) -> Starlette:
    db = sqlite3.connect(db_path, isolation_level=None, check_same_thread=False)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    db.execute(
        "CREATE TABLE IF NOT EXISTS messages (seq INTEGER PRIMARY KEY, room_id TEXT,"
        " id TEXT, user_id TEXT, sent_at TEXT, text TEXT)"
    )

    async def send(request: Request) -> Response:
        body = json.loads(await request.body())
        message = {
            "id": str(uuid.uuid4()),
            "room_id": body["room_id"],
            "user_id": body["user_id"],
            "sent_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "text": body["text"],
        }
        db.execute(
            "INSERT INTO messages (room_id, id, user_id, sent_at, text) VALUES (?, ?, ?, ?, ?)",
            (
                message["room_id"],
                message["id"],
                message["user_id"],
                message["sent_at"],
                message["text"],
            ),
        )
        return Response(json.dumps({"message": message}), media_type="application/json")

    return Starlette(routes=[Route("/v1/chat/Send", send, methods=["POST"])])


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--db", required=True)
    args = p.parse_args()
    # The settings chatctl serve gives uvicorn (chatctl/server/serve.py).
    uvicorn.run(
        create_app(args.db),
        host="127.0.0.1",
        port=args.port,
        loop="uvloop",
        http="httptools",
        ws="websockets-sansio",
        log_config=None,
        log_level="warning",
        access_log=False,
        proxy_headers=False,
        server_header=False,
    )


if __name__ == "__main__":
    main()
