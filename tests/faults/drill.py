"""What the fault drills share: a writer that retries like a real client, a thread-safe
tally of acknowledged messages, History in one call, the messages of a stream until told
to stop, and a process's resident memory.

Every wait has a deadline; a retry pause is a backoff against a server that is down, not
a sleep standing in for a condition.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
from websockets.sync.client import ClientConnection

from tests.helpers import ServerProcess

#: statuses a writer retries with the same Idempotency-Key (the server is restarting).
RETRY_STATUSES = frozenset({502, 503, 504})


@dataclass
class Tally:
    """Messages acknowledged to writers: id -> text, in the order acknowledgements came."""

    acked: dict[str, str] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)
    changed: threading.Condition = field(init=False)

    def __post_init__(self) -> None:
        self.changed = threading.Condition(self.lock)

    def add(self, message_id: str, text: str) -> None:
        with self.changed:
            assert message_id not in self.acked, f"id {message_id} acknowledged twice"
            self.acked[message_id] = text
            self.changed.notify_all()

    def __len__(self) -> int:
        with self.lock:
            return len(self.acked)

    def wait_for_count(self, count: int, timeout: float, what: str) -> None:
        with self.changed:
            if not self.changed.wait_for(lambda: len(self.acked) >= count, timeout):
                raise AssertionError(
                    f"timed out after {timeout}s waiting for {what}: "
                    f"{len(self.acked)} of {count} acknowledged"
                )


def send_until_acked(
    server: ServerProcess,
    http: list[httpx.Client],
    body: dict[str, Any],
    *,
    deadline: float,
    stop: threading.Event | None = None,
) -> dict[str, Any] | None:
    """Send once, retrying with the same Idempotency-Key until answered (or the deadline).

    ``http`` holds the writer's one client, replaced after a connection error (its socket
    died with the server). Returns the message, or None when ``stop`` was set first.
    """
    key = uuid.uuid4().hex
    while True:
        try:
            response = http[0].post("/v1/chat/Send", json=body, headers={"Idempotency-Key": key})
        except httpx.TransportError:
            http[0].close()
            http[0] = server.http()
        else:
            if response.status_code not in RETRY_STATUSES:
                assert response.status_code == 200, response.text
                message: dict[str, Any] = response.json()["message"]
                return message
        if time.monotonic() > deadline:
            raise AssertionError(f"send of {body['text']!r} not acknowledged by the deadline")
        if stop is not None and stop.is_set():
            return None
        time.sleep(0.02)


class Writers:
    """``count`` threads each sending unique texts over raw HTTP until stopped."""

    def __init__(
        self, server: ServerProcess, room_id: str, users: list[str], tally: Tally, timeout: float
    ) -> None:
        self.server = server
        self.room_id = room_id
        self.tally = tally
        self.stop = threading.Event()
        self.deadline = time.monotonic() + timeout
        self.errors: list[BaseException] = []
        self.threads = [
            threading.Thread(target=self._run, args=(user,), daemon=True) for user in users
        ]

    def __enter__(self) -> Writers:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(30)
        assert not any(t.is_alive() for t in self.threads), "a writer thread did not stop"

    def _run(self, user: str) -> None:
        http = [self.server.http()]
        try:
            n = 0
            while not self.stop.is_set():
                text = f"{user}-{n}"
                body = {"room_id": self.room_id, "user_id": user, "text": text}
                message = send_until_acked(
                    self.server, http, body, deadline=self.deadline, stop=self.stop
                )
                if message is None:
                    return
                assert message["text"] == text
                self.tally.add(message["id"], text)
                n += 1
        except BaseException as exc:
            self.errors.append(exc)
        finally:
            http[0].close()


def create_room(server: ServerProcess, name: str, users: list[str]) -> str:
    with server.http() as c:
        r = c.post("/v1/chat/Create", json={"name": name, "description": "", "user_ids": users})
        assert r.status_code == 200, r.text
        return str(r.json()["room"]["id"])


def history(server: ServerProcess, room_id: str) -> list[dict[str, Any]]:
    """Every message of the room, oldest first (no limit: one page)."""
    with server.http() as c:
        r = c.post("/v1/chat/History", json={"room_id": room_id}, timeout=60)
        assert r.status_code == 200, r.text
        messages: list[dict[str, Any]] = r.json()["messages"]
        return messages


def messages(ws: ClientConnection, stop: threading.Event) -> Iterator[dict[str, Any]]:
    """The messages a Join's stream sends (its other frames passed over) until ``stop`` is
    set, looked at every 0.2 s; a close ends it with websockets' ConnectionClosed."""
    while not stop.is_set():
        try:
            frame = json.loads(ws.recv(timeout=0.2))
        except TimeoutError:
            continue
        message = frame.get("message")
        if message is not None:
            yield message


def rss_kib(pid: int) -> int:
    """Resident set size of a process, from /proc (KiB)."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError(f"no VmRSS for pid {pid}")


def report(name: str, **figures: object) -> None:
    """One line of figures per drill, shown with ``-s`` (and kept in the soak log)."""
    print(f"\n[drill {name}] " + " ".join(f"{k}={v}" for k, v in figures.items()), flush=True)
