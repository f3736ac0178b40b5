"""Bulk Send: many SendRequests in one request, answered line by line as they commit.

``POST /v1/chat/Send`` with ``Content-Type: application/x-ndjson`` (contract part 3,
"Bulk Send"): the body is one SendRequest per line; the answer (200,
``application/x-ndjson``) is one line per request line, in order: its SendResponse, or
the m3o error object it would have got alone. The server reads the body as it comes, a
group of lines at a time (``GROUP_LINES``, ``GROUP_BYTES``), validates the group, stores
it in one transaction (``ChatService.send_many``, so its messages fan out in order after
the commit), writes the group's answers, and only then reads on: it is never more than a
group (and the transport's buffer) ahead of its answers, however long the body, and the
event loop is held for one group's parsing at a time.

- Keys: with ``Idempotency-Key: K`` (the batch key), line n is sent with the key ``K/n``,
  kept in the same transaction as its message, exactly as a Send with that key alone
  would be. ``Chat-First-Line: F`` numbers the body's lines from F (default 1), so that a
  client resending the unanswered rest of a batch from line F keeps every line's key.
- Errors of the whole request (before any line is read) are one m3o error object with
  its status: 415 for another endpoint or charset, 400 for a malformed header. After
  that, each line's refusal is its own answer line, and the batch goes on with the next
  (``Chat-On-Error: stop``: the answer ends after the first refused line, and nothing
  after it is stored). A storage failure answers 503 for each line of its group, and
  the answer ends there: nothing of that group or after it was stored.
- Rate limits count messages, not requests: ``pace`` (when the server limits its tokens)
  is asked before each group, and the batch waits (reading nothing meanwhile) until the
  token may send that many.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from starlette.requests import ClientDisconnect, Request
from starlette.types import Receive, Scope, Send

from chatctl.schema import ENDPOINTS, Endpoint
from chatctl.server import access
from chatctl.server.answers import Answer
from chatctl.server.decode import NDJSON_TYPES, Refusal, decode, too_large
from chatctl.server.domain import Refused, Unavailable
from chatctl.server.editions import Edition, answer_in
from chatctl.server.tokens import OPEN, Principal
from chatctl.wire import encode

if TYPE_CHECKING:
    from chatctl.server.config import ServerConfig
    from chatctl.server.rules import ChatService

__all__ = [
    "FIRST_LINE",
    "GROUP_BYTES",
    "GROUP_LINES",
    "MAX_BATCH_KEY",
    "NDJSON",
    "ON_ERROR",
    "BulkSend",
    "bulk_send",
]

log = logging.getLogger("chatctl.server")

NDJSON = NDJSON_TYPES[0]
#: lines stored in one transaction at most, and their bytes (at least one line): what the
#: event loop parses between two awaits, and how far the server reads ahead of its answers.
GROUP_LINES = 256
GROUP_BYTES = 1 << 20
#: request headers: the number of the body's first line, and what a refused line does.
FIRST_LINE = "chat-first-line"
ON_ERROR = "chat-on-error"
#: a batch key's length at most, so that ``K/n`` stays within a unary key's 255.
MAX_BATCH_KEY = 200
SEND = ENDPOINTS["Send"]

#: seconds to wait before a token may send ``count`` more messages (0: now); the edge's
#: rate limiter, when the server has one.
Pace = Callable[[int], float]


def bulk_send(
    endpoint: Endpoint,
    tenant: str,
    request: Request,
    service: ChatService,
    config: ServerConfig,
    pace: Pace | None = None,
    principal: Principal = OPEN,
) -> BulkSend:
    """The answer to an NDJSON request, once its headers are checked (else a Refusal).
    ``principal``: who sends (a user token's lines are bound to its user, and its line
    keys are its own, as for a Send alone)."""
    if endpoint is not SEND:
        raise Refusal(
            "v1",
            415,
            f"{endpoint.name} takes application/json; only Send takes {NDJSON} (a bulk Send)",
        )
    headers = request.headers
    charset = _charset(headers.get("content-type", ""))
    if charset not in (None, "utf-8", "utf8"):
        raise Refusal("v1", 415, f"{NDJSON} must be UTF-8, not {charset}")
    key = headers.get("idempotency-key")
    if key is not None and not 0 < len(key) <= MAX_BATCH_KEY:
        detail = f"the Idempotency-Key of a bulk Send must be 1 to {MAX_BATCH_KEY} characters"
        raise Refusal(SEND.id, 400, detail)
    first = headers.get(FIRST_LINE, "1").strip()
    if not (first.isdigit() and first.isascii() and 0 < len(first) <= 15 and int(first) > 0):
        raise Refusal(SEND.id, 400, f"{FIRST_LINE} must be a line number (1 or more)")
    on_error = headers.get(ON_ERROR, "continue").strip().lower()
    if on_error not in ("continue", "stop"):
        raise Refusal(SEND.id, 400, f"{ON_ERROR} must be continue or stop")
    return BulkSend(
        service, config, tenant, key, int(first), on_error == "stop", pace, principal=principal
    )


def _charset(content_type: str) -> str | None:
    for param in content_type.split(";")[1:]:
        name, _, value = param.partition("=")
        if name.strip().lower() == "charset":
            return value.strip().strip('"').lower()
    return None


class _Lines:
    """A request body's lines as they arrive: each line's bytes (without its line end),
    or None for one longer than ``limit`` (its bytes dropped as they come, never held)."""

    def __init__(self, receive: Receive, limit: int) -> None:
        self.receive = receive
        self.limit = limit
        self.ready: deque[bytes | None] = deque()
        self._partial = bytearray()
        self._too_long = False
        self._more = True

    async def group(self, lines: int, size: int) -> list[bytes | None]:
        """The next lines, up to ``lines`` of them and ``size`` bytes (at least one), from
        what has arrived: waits only when no whole line is there yet. Empty at the end."""
        while not self.ready and self._more:
            message = await self.receive()
            if message["type"] == "http.disconnect":
                raise ClientDisconnect()
            self._take(message.get("body", b""))
            if not message.get("more_body", False):
                self._more = False
                if self._partial or self._too_long:
                    self._end_line(b"")
        return self._from_ready(lines, size)

    def _from_ready(self, lines: int, size: int) -> list[bytes | None]:
        group: list[bytes | None] = []
        taken = 0
        ready = self.ready
        while ready and len(group) < lines:
            line = ready[0]
            taken += 0 if line is None else len(line)
            if group and taken > size:
                break
            group.append(ready.popleft())
        return group

    def arrived(self, lines: int, size: int) -> list[bytes | None]:
        """Like ``group``, but only from what has arrived already: never waits."""
        return self._from_ready(lines, size) if self.ready else []

    def _take(self, chunk: bytes) -> None:
        pieces = chunk.split(b"\n")
        for piece in pieces[:-1]:
            self._end_line(piece)
        tail = pieces[-1]
        if self._too_long:
            return
        self._partial += tail
        if len(self._partial) > self.limit:
            self._too_long = True
            self._partial = bytearray()

    def _end_line(self, piece: bytes) -> None:
        if self._too_long:
            self._too_long = False
            self.ready.append(None)
            return
        if self._partial:
            piece = bytes(self._partial) + piece
            self._partial = bytearray()
        if piece.endswith(b"\r"):
            piece = piece[:-1]
        self.ready.append(piece if len(piece) <= self.limit else None)


class _Group:
    """One group of a bulk Send: its answer lines (refusals filled in while validating,
    the rest when stored) and the requests to store, each with its index and key."""

    __slots__ = ("answers", "go_on", "requests", "size")

    def __init__(self, size: int, answers: list[str]) -> None:
        #: the lines it numbers (a batch that stops in it still counts them all).
        self.size = size
        self.answers = answers
        self.requests: list[tuple[int, dict[str, Any], str | None, Edition]] = []
        #: False once the batch stops in this group (a refusal with ``stop``, a failure).
        self.go_on = True

    def cut(self, i: int) -> None:
        """The batch stops at line ``i`` of the group: it is the last one answered."""
        del self.answers[i + 1 :]
        self.requests = [r for r in self.requests if r[0] <= i]
        self.go_on = False


class BulkSend(Answer):
    """The streamed answer of a bulk Send: reads, stores and answers a group at a time."""

    def __init__(
        self,
        service: ChatService,
        config: ServerConfig,
        tenant: str,
        key: str | None,
        first: int,
        stop: bool,
        pace: Pace | None = None,
        *,
        group_lines: int = GROUP_LINES,
        principal: Principal = OPEN,
    ) -> None:
        super().__init__(NDJSON.encode())
        self.service = service
        self.config = config
        self.tenant = tenant
        self.key = key
        self.first = first
        self.stop = stop
        self.pace = pace
        self.principal = principal
        self.group_lines = group_lines
        #: the edition of a line that names no room (Send names one: ``room_id`` or
        #: ``group_id``), as for a Send alone.
        self.edition: Edition = config.m3o_edition

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
        lines = _Lines(receive, self.config.limits.max_body_bytes)
        number = self.first
        ahead: _Group | None = None  # the next group, read and validated
        try:
            while True:
                if ahead is None:
                    lines_read = await lines.group(self.group_lines, GROUP_BYTES)
                    if not lines_read:
                        break
                    ahead = self._validate(lines_read, number)
                group, ahead = ahead, None
                number += group.size
                await self._paced(len(group.requests))
                storing = asyncio.ensure_future(self._store(group))
                await asyncio.sleep(0)  # the store has it now (SQLite: its writer thread)
                # Meanwhile, validate what has arrived already (never waiting for more).
                if group.go_on and (arrived := lines.arrived(self.group_lines, GROUP_BYTES)):
                    ahead = self._validate(arrived, number)
                answers = await storing
                body = ("\n".join(answers) + "\n").encode()
                await send({"type": "http.response.body", "body": body, "more_body": True})
                if not group.go_on:
                    break
        except (ClientDisconnect, OSError):
            return  # nobody is left to read the rest; what committed stays committed
        await send({"type": "http.response.body", "body": b""})

    async def _paced(self, count: int) -> None:
        if self.pace is None or not count:
            return
        while (wait := self.pace(count)) > 0:
            await asyncio.sleep(wait)

    def _validate(self, lines: list[bytes | None], number: int) -> _Group:
        """A group's lines as requests to store, or their refusals (with ``stop``, up to
        the first)."""
        group = _Group(len(lines), [""] * len(lines))
        for i, raw in enumerate(lines):
            try:
                request, edition = self._request(raw)
            except Refusal as refusal:
                group.answers[i] = encode(refusal.body())
                if self.stop:
                    group.cut(i)
                    break
                continue
            key = None
            if self.key is not None:
                key = access.idempotency_scope(self.principal, f"{self.key}/{number + i}")
            group.requests.append((i, request, key, edition))
        return group

    async def _store(self, group: _Group) -> list[str]:
        """Store a group's requests in one transaction: its answer lines (fewer than its
        lines when the batch stops in it)."""
        requests = group.requests
        if not requests:
            return group.answers
        answers = group.answers
        try:
            results = await self.service.send_many(
                self.tenant,
                [(r, k) for _, r, k, _ in requests],
                stop=self.stop,
                actor=self.principal,
            )
        except Unavailable as exc:
            failed = encode(Refusal.of(SEND.id, exc).body())
            for i, _, _, _ in requests:
                answers[i] = failed
            group.go_on = False
            return answers
        for (i, _, _, edition), result in zip(requests, results, strict=False):
            if isinstance(result, Refused):
                answers[i] = encode(Refusal.of(SEND.id, result, edition).body())
                if self.stop:
                    group.cut(i)
                    return group.answers
            else:
                answer = answer_in(edition, result)
                assert isinstance(answer, str)
                answers[i] = answer
        return answers

    def _request(self, raw: bytes | None) -> tuple[dict[str, Any], Edition]:
        """One line as a validated SendRequest and the edition it speaks (``group_id`` or
        ``room_id``: each line is answered in its own), or the Refusal it would get alone
        (worded in that edition)."""
        if raw is None:
            raise too_large(self.config.limits.max_body_bytes, "request line")
        return decode(SEND, raw, self.principal, self.config, self.edition)
