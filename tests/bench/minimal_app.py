"""The floor for the server's Send: a raw ASGI app doing the same insert, nothing else.

``python -m tests.bench.minimal_app --port P --db PATH``: ``POST /v1/chat/Send`` reads the
body, parses the JSON, inserts one row (WAL, ``synchronous=NORMAL``, autocommit, as the chat
store) and answers the message as JSON. No framework, router or middleware: a plain ASGI
callable under the same uvicorn settings as ``chatctl serve``, so the ratio is against what
any Python server on this stack must at least do.

With an ``Idempotency-Key`` header (what the CLI sends) it does the least a retry-safe
Send needs, as a fair floor for keyed Sends: in one transaction, look the key up (a
replay answers the stored response), insert the message, and store the key with a hash
of the request and the response.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sqlite3
import time
import uuid
from typing import Any

import uvicorn

_SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    seq INTEGER PRIMARY KEY, room_id TEXT, id TEXT, user_id TEXT, sent_at TEXT, text TEXT
);
CREATE TABLE IF NOT EXISTS idempotency (
    key TEXT PRIMARY KEY, request_hash TEXT, response TEXT, created_at REAL
) WITHOUT ROWID;
"""
_INSERT = "INSERT INTO messages (room_id, id, user_id, sent_at, text) VALUES (?, ?, ?, ?, ?)"
_HEADERS = [(b"content-type", b"application/json")]


def create_app(db_path: str) -> Any:
    db = sqlite3.connect(db_path, isolation_level=None, check_same_thread=False)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    db.executescript(_SCHEMA)

    def store(raw: bytes, key: bytes | None) -> bytes:
        if key is not None:
            db.execute("BEGIN IMMEDIATE")
            try:
                row = db.execute(
                    "SELECT response FROM idempotency WHERE key = ?", (key.decode(),)
                ).fetchone()
                if row is not None:
                    db.execute("COMMIT")
                    return bytes(row[0], "utf-8")
                response = insert(raw)
                db.execute(
                    "INSERT INTO idempotency (key, request_hash, response, created_at)"
                    " VALUES (?, ?, ?, ?)",
                    (key.decode(), hashlib.sha256(raw).hexdigest(), response.decode(), time.time()),
                )
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
            return response
        return insert(raw)

    def insert(raw: bytes) -> bytes:
        body = json.loads(raw)
        message = {
            "id": str(uuid.uuid4()),
            "room_id": body["room_id"],
            "user_id": body["user_id"],
            "sent_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "text": body["text"],
        }
        db.execute(
            _INSERT,
            (
                message["room_id"],
                message["id"],
                message["user_id"],
                message["sent_at"],
                body["text"],
            ),
        )
        return json.dumps({"message": message}).encode()

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        if scope["path"] != "/v1/chat/Send" or scope["method"] != "POST":
            await send({"type": "http.response.start", "status": 404, "headers": []})
            await send({"type": "http.response.body", "body": b""})
            return
        chunks = []
        while True:
            message = await receive()
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        key = None
        for name, value in scope["headers"]:
            if name == b"idempotency-key":
                key = value
        body = store(b"".join(chunks), key)
        await send({"type": "http.response.start", "status": 200, "headers": _HEADERS})
        await send({"type": "http.response.body", "body": body})

    return app


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--db", required=True)
    args = p.parse_args()
    # The settings chatctl serve gives uvicorn (chatctl/server/serve.py); lifespan off:
    # the app has no start-up work.
    uvicorn.run(
        create_app(args.db),
        host="127.0.0.1",
        port=args.port,
        interface="asgi3",
        lifespan="off",
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
