"""Fan-out across replicas: a ``Hub`` whose publishing goes through PostgreSQL NOTIFY.

Every replica LISTENs on one channel of the shared database and hands what it hears to its
own streams, the replica that made the change included, so there is one path and one
order. What travels:

- ``m SEQ HEAD\\nFRAME``: a message, notified by ``PostgresStore.send_message`` (or
  ``add_message``) in the transaction that stored it (so only once committed, and in
  commit order, which is the room's seq order). HEAD is ``[tenant, room_id, room_pk,
  sender]``; FRAME is the Join frame, or empty when it would not fit a notification.
- ``e HEAD\\nFRAME``: a membership event (HEAD ``[tenant, room_id, skip_user]``).
- ``k HEAD\\nFRAME``: end one user's streams (kick, leave; HEAD ``[tenant, room_id, user,
  code, reason]``), and ``d``: end every stream of a room (deleted).

Events, kicks and deletes are notified like messages: by a statement of the transaction
that made the change (the hub is ``transactional``, so the rules publish inside it), so
they are sent exactly when it commits, and never for one that rolls back. A replica dying
between its commit and a separate notify can therefore not leave a kicked user's streams
open on the others.

Per room with streams here, the hub remembers the last seq it delivered. A message at the
next seq goes out as notified; one at or before it was already delivered; one past it (a
notification missed, or sent without its frame) makes the hub read the missing seqs from
the table, so a stream gets every message once and in order. The first message a room
hears after its first stream here starts the count: anything older reaches a new stream
only by its replay.

If the LISTEN connection drops, a notification may have been missed (a kick among them),
so every stream here is ended with 1001, as at shutdown, and clients resume with
``since``; until the hub listens again new streams are ended the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from typing import Any

import psycopg

from chatctl.server.hub import CLOSE_GOING_AWAY, Hub, StreamEnded, Subscriber
from chatctl.server.rules import encode, message_frame
from chatctl.server.store_pg import CHANNEL, PostgresStore

__all__ = ["PostgresHub"]

log = logging.getLogger("chatctl.server")

#: seconds between attempts to listen again after the connection dropped.
_RETRY = 0.5


class PostgresHub(Hub):
    """A hub for one replica of many, sharing a PostgreSQL database."""

    #: publishing is a NOTIFY in the store's current transaction, sent when it commits.
    transactional = True

    def __init__(self, store: PostgresStore, queue_size: int = 1000) -> None:
        super().__init__(queue_size)
        self.store = store
        self._delivered: dict[tuple[str, str], int] = {}
        self._listening = False
        self._task: asyncio.Task[None] | None = None
        self._started = asyncio.Event()

    # -- running ------------------------------------------------------------------------

    async def start(self) -> None:
        """Listen before the server takes requests; keep listening until ``stop``. Also
        opens the store's async pool, for Sends that await the database."""
        await self.store.open_async()
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
        await self.store.close_async()

    async def _listen(self) -> None:
        first = True
        while True:
            try:
                conn = await psycopg.AsyncConnection.connect(self.store.url, autocommit=True)
            except psycopg.OperationalError as exc:
                if first:
                    raise
                log.warning("cannot listen on PostgreSQL (%s); retrying", exc)
                await asyncio.sleep(_RETRY)
                continue
            try:
                async with conn:
                    await conn.execute(f"LISTEN {CHANNEL}")
                    self._listening = True
                    if first:
                        first = False
                        self._started.set()
                    else:
                        log.warning("listening on PostgreSQL again")
                    async for notify in conn.notifies():
                        try:
                            self._receive(notify.payload)
                        except Exception:  # a bad notification must not stop fan-out
                            log.exception("cannot apply notification %.200r", notify.payload)
            except psycopg.OperationalError as exc:
                log.warning("lost the PostgreSQL LISTEN connection (%s)", exc)
            self._lost()
            await asyncio.sleep(_RETRY)

    def _lost(self) -> None:
        """Notifications may have been missed: end every stream here; clients resume."""
        self._listening = False
        self._delivered.clear()
        subs = [sub for room in self._rooms.values() for sub in room]
        for sub in subs:
            self.unsubscribe(sub)
            sub.end(StreamEnded(CLOSE_GOING_AWAY, reason="fan-out interrupted: resume"))

    def subscribe(
        self, tenant: str, room_id: str, user_id: str, events: bool, include_own: bool = False
    ) -> Subscriber:
        sub = super().subscribe(tenant, room_id, user_id, events, include_own)
        if not self._listening and not sub.ended:
            self.unsubscribe(sub)
            sub.end(StreamEnded(CLOSE_GOING_AWAY, reason="fan-out interrupted: resume"))
        return sub

    # -- publishing: to every replica, through the database -----------------------------

    def publish_message(self, tenant: str, room_id: str, seq: int, frame: str, sender: str) -> None:
        """Nothing to do: the store notified every replica when the message committed."""

    def publish_event(self, tenant: str, room_id: str, frame: str, skip_user: str = "") -> None:
        """Notify every replica, when the current transaction commits."""
        self.store.notify("e " + encode([tenant, room_id, skip_user]) + "\n" + frame)

    def end_user(
        self, tenant: str, room_id: str, user_id: str, code: int, frame: str, reason: str = ""
    ) -> int:
        """End the user's streams on every replica when the current transaction commits;
        returns 0 (their count is not known)."""
        self.store.notify("k " + encode([tenant, room_id, user_id, code, reason]) + "\n" + frame)
        return 0

    def end_room(self, tenant: str, room_id: str, code: int, frame: str, reason: str = "") -> int:
        """End the room's streams on every replica when the current transaction commits;
        returns 0 (their count is not known)."""
        self.store.notify("d " + encode([tenant, room_id, code, reason]) + "\n" + frame)
        return 0

    # -- receiving: what any replica published ------------------------------------------

    def _receive(self, payload: str) -> None:
        kind, _, rest = payload.partition(" ")
        if kind == "m":
            seq_text, _, rest = rest.partition(" ")
            head_text, _, frame = rest.partition("\n")
            tenant, room_id, room_pk, sender = json.loads(head_text)
            self._message(tenant, room_id, room_pk, int(seq_text), sender, frame)
            return
        head_text, _, frame = rest.partition("\n")
        head: list[Any] = json.loads(head_text)
        if kind == "e":
            tenant, room_id, skip_user = head
            super().publish_event(tenant, room_id, frame, skip_user)
        elif kind == "k":
            tenant, room_id, user_id, code, reason = head
            super().end_user(tenant, room_id, user_id, code, frame, reason)
        elif kind == "d":
            tenant, room_id, code, reason = head
            super().end_room(tenant, room_id, code, frame, reason)
            self._delivered.pop((tenant, room_id), None)

    def _message(
        self, tenant: str, room_id: str, room_pk: int, seq: int, sender: str, frame: str
    ) -> None:
        key = (tenant, room_id)
        if key not in self._rooms:
            self._delivered.pop(key, None)  # nobody here: start afresh when someone joins
            return
        last = self._delivered.get(key)
        if last is not None and seq <= last:
            return  # delivered already (read from the table after a gap)
        if frame and (last is None or seq == last + 1):
            super().publish_message(tenant, room_id, seq, frame, sender)
            self._delivered[key] = seq
            return
        # A gap, or a frame too big to notify: the table has every seq up to this one.
        after = seq - 1 if last is None else last
        for row in self.store.messages_of(room_pk, after_seq=after, before_seq=seq + 1):
            super().publish_message(
                tenant, room_id, row.seq, message_frame(room_id, row), row.user_id
            )
            self._delivered[key] = row.seq
