"""Fan-out across replicas: every replica hears, through PostgreSQL, what any replica did.

``store_pg.PostgresStore`` notifies on one channel of the shared database (``CHANNEL``), in
the transaction of each change (so only once it commits, in commit order, which is each
room's seq order). ``Listener`` LISTENs on that channel and hands each change to this
replica's hub as a ``domain`` note, the replica that made the change included, so there
is one path and one order. What travels (written by ``notifications``, and by
``store_pg``'s Send statements through ``message_notify``; read by ``Listener``, a message
through ``read_message``; this module is the format's one home):

- ``m SEQ HEAD\\nFRAME``: a message (HEAD ``[tenant, room_id, room_pk, sender]``); FRAME
  is the Join frame, or empty when it would not fit a notification.
- ``e HEAD\\nFRAME``: a membership event (HEAD ``[tenant, room_id, skip_user]``).
- ``k HEAD\\nFRAME``: end one user's streams (kick, leave; HEAD ``[tenant, room_id, user,
  code, reason]``), and ``d``: end every stream of a room (deleted).

Per room with streams here, the listener remembers the last seq it delivered. A message
at the next seq goes out as notified; one at or before it was already delivered; one past
it (a notification missed, or sent without its frame) makes it read the missing seqs from
the table, so a stream gets every message once and in order (a message deleted since is
not read, and not sent). The first message a room
hears after its first stream here starts the count: anything older reaches a new stream
only by its replay.

If the LISTEN connection drops, a notification may have been missed (a kick among them),
so every stream here is ended with 1001, as at shutdown, and clients resume with
``since``; until it listens again new streams are ended the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import psycopg

from chatctl.ids import cursor_time_ns
from chatctl.server import sql
from chatctl.server.domain import (
    EventNote,
    Fanout,
    Note,
    Published,
    RoomRow,
    StreamsEnded,
    Unavailable,
)
from chatctl.server.store import Store
from chatctl.wire import CLOSE_GOING_AWAY, encode, message_frame

__all__ = [
    "CHANNEL",
    "NOTIFY_LIMIT",
    "Listener",
    "MessageNotification",
    "lag_of",
    "message_notify",
    "note_frame",
    "notifications",
    "read_message",
]

log = logging.getLogger("chatctl.server")

#: the LISTEN/NOTIFY channel every replica of one database shares.
CHANNEL = "chatctl"
#: PostgreSQL refuses a NOTIFY payload of 8000 bytes or more; stay a little under.
NOTIFY_LIMIT = 7900

#: seconds between attempts to listen again after the connection dropped.
_RETRY = 0.5
_INTERRUPTED = "fan-out interrupted: resume"


class Listener:
    """Hears every replica's changes and delivers them to this replica's streams."""

    def __init__(self, url: str, timeout: float, store: Store, fanout: Fanout) -> None:
        #: the database to LISTEN on, and its connect timeout (``--db-timeout``).
        self.url = url
        self.timeout = timeout
        #: where a missed message is read back from.
        self.store = store
        self.fanout = fanout
        self._delivered: dict[tuple[str, str], int] = {}
        #: told each heard message's lag in seconds, when metrics are on (``lag_of``).
        self.lag: Callable[[float], None] | None = None
        self._task: asyncio.Task[None] | None = None
        self._started = asyncio.Event()

    async def start(self) -> None:
        """Listen before the server takes requests; keep listening until ``stop``."""
        self._task = asyncio.create_task(self._listen())
        started = asyncio.create_task(self._started.wait())
        await asyncio.wait([self._task, started], return_when=asyncio.FIRST_COMPLETED)
        started.cancel()
        if self._task.done():
            self._task.result()  # the first connection failed: raise why

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _listen(self) -> None:
        first = True
        while True:
            try:
                conn = await psycopg.AsyncConnection.connect(
                    self.url,
                    autocommit=True,
                    connect_timeout=max(2, round(self.timeout)),
                )
            except psycopg.OperationalError as exc:
                if first:
                    raise
                log.warning("cannot listen on PostgreSQL (%s); retrying", exc)
                await asyncio.sleep(_RETRY)
                continue
            try:
                async with conn:
                    await conn.execute(f"LISTEN {CHANNEL}")
                    if first:
                        first = False
                        self._started.set()
                    else:
                        log.warning("listening on PostgreSQL again")
                    self.fanout.resume()
                    async for notify in conn.notifies():
                        try:
                            await self._receive(notify.payload)
                        except Exception:  # a bad notification must not stop fan-out
                            log.exception("cannot apply notification %.200r", notify.payload)
            except psycopg.OperationalError as exc:
                log.warning("lost the PostgreSQL LISTEN connection (%s)", exc)
            self._delivered.clear()
            self.fanout.interrupt(_INTERRUPTED)
            await asyncio.sleep(_RETRY)

    async def _receive(self, payload: str) -> None:
        kind, _, rest = payload.partition(" ")
        if kind == "m":
            await self._message(read_message(payload))
            return
        head_text, _, frame = rest.partition("\n")
        head: list[Any] = json.loads(head_text)
        if kind == "e":
            tenant, room_id, skip_user = head
            self.fanout.deliver(EventNote(tenant, room_id, frame, skip_user))
        elif kind == "k":
            tenant, room_id, user_id, code, reason = head
            self.fanout.deliver(StreamsEnded(tenant, room_id, user_id, code, frame, reason))
        elif kind == "d":
            tenant, room_id, code, reason = head
            self.fanout.deliver(StreamsEnded(tenant, room_id, None, code, frame, reason))
            self._delivered.pop((tenant, room_id), None)

    async def _message(self, message: MessageNotification) -> None:
        tenant, room_id, room_pk, seq, sender, frame = message
        key = (tenant, room_id)
        if not self.fanout.listening(tenant, room_id):
            self._delivered.pop(key, None)  # nobody here: start afresh when someone joins
            return
        last = self._delivered.get(key)
        if last is not None and seq <= last:
            return  # delivered already (read from the table after a gap)
        if self.lag is not None and frame:
            lag = lag_of(frame)
            if lag is not None:
                self.lag(lag)
        if frame and (last is None or seq == last + 1):
            self.fanout.deliver(Published(tenant, room_id, seq, frame, sender))
            self._delivered[key] = seq
            return
        # A gap, or a frame too big to notify: the table has every seq up to this one.
        after = seq - 1 if last is None else last
        room = RoomRow(room_pk, tenant, room_id, "", "", "", False)

        async def missing(db: sql.Session) -> list[Any]:
            return await db.messages(room, after_seq=after, before_seq=seq + 1)

        try:
            rows = await self.store.read(missing)
        except Unavailable as exc:
            # The streams of this room would miss these: end them; they resume.
            log.warning("cannot read missed messages of a room (%s); ending its streams", exc)
            self._delivered.pop(key, None)
            note = StreamsEnded(tenant, room_id, None, CLOSE_GOING_AWAY, "", _INTERRUPTED)
            self.fanout.deliver(note)
            return
        for row in rows:
            answer = message_frame(row.to_wire(room_id))
            self.fanout.deliver(Published(tenant, room_id, row.seq, answer, row.user_id))
        # Every seq up to this one is delivered now: a deleted message's is read as none.
        self._delivered[key] = seq


def lag_of(frame: str) -> float | None:
    """Seconds from a message's id being made (a UUIDv7's millisecond, by the replica that
    stored it, just before its statement) to now: how late this replica hears it. None
    when the frame names no such id. Across machines it includes their clocks' skew."""
    at = frame.find('"id":"')
    made = cursor_time_ns(frame[at + 6 : at + 42]) if at >= 0 else None
    if not made:
        return None
    return max(0.0, time.time() - made / 1e9)


def notifications(notes: list[Note]) -> list[str]:
    """Notes as notification payloads (``Listener`` reads them back): what a
    ``store_pg`` transaction notifies at its end."""
    payloads = []
    for note in notes:
        if isinstance(note, EventNote):
            head: list[Any] = ["e", note.tenant, note.room_id, note.skip_user]
        elif isinstance(note, StreamsEnded):
            if note.user_id is None:
                head = ["d", note.tenant, note.room_id, note.code, note.reason]
            else:
                head = ["k", note.tenant, note.room_id, note.user_id, note.code, note.reason]
        else:  # a Published message notifies in the statement that stores it
            continue
        payloads.append(head[0] + " " + encode(head[1:]) + "\n" + note.frame)
    return payloads


class MessageNotification(NamedTuple):
    """A stored message as its notification tells it (``read_message``)."""

    tenant: str
    room_id: str
    room_pk: int
    seq: int
    sender: str
    #: the Join frame, or empty when it would not fit a notification (``note_frame``).
    frame: str


def message_notify(
    seq: str, tenant: str, room_id: str, room_pk: str, sender: str, frame: str
) -> str:
    """SQL: the ``pg_notify`` call that tells a stored message (``m SEQ HEAD\\nFRAME``),
    made of SQL expressions for its parts (``frame`` as ``note_frame`` makes it). A message
    notifies in the statement that stores it (``store_pg``'s Send statements interpolate
    this), so its Send stays one round trip; ``read_message`` reads it back."""
    return f"""pg_notify(
        '{CHANNEL}',
        'm ' || {seq} || ' '
        || json_build_array({tenant}, {room_id}, {room_pk}, {sender})::text
        || E'\\n' || {frame}
    )"""


def read_message(payload: str) -> MessageNotification:
    """A message's notification payload (as ``message_notify`` writes it) read back."""
    kind, _, rest = payload.partition(" ")
    if kind != "m":
        raise ValueError(f"not a message notification: {payload[:40]!r}")
    seq_text, _, rest = rest.partition(" ")
    head_text, _, frame = rest.partition("\n")
    tenant, room_id, room_pk, sender = json.loads(head_text)
    return MessageNotification(tenant, room_id, room_pk, int(seq_text), sender, frame)


def note_frame(tenant: str, message: dict[str, Any], answer: str) -> str:
    """The frame a message's notification carries: empty when too big to notify."""
    # The head's size, bounded: the room's pk is at most 19 digits.
    head = len(encode([tenant, message["room_id"], 0, message["user_id"]])) + 20
    return "" if head + len(answer.encode()) + 32 > NOTIFY_LIMIT else answer
