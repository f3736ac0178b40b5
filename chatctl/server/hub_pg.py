"""Fan-out across replicas: a replica hears, through PostgreSQL, what any replica did in
the rooms it has streams in.

``store_pg.PostgresStore`` notifies on each room's own channel (``channel``: a hash of
tenant and room id, a valid identifier whatever they are), in the transaction of each
change (so only once it commits, in commit order, which is each room's seq order).
``Listener`` LISTENs on the channel of each room with a stream on this replica, and only
while it has one (the hub says when: ``domain.RoomListener``), so a Send costs the
replicas nothing where nobody follows its room. It hands each change to this replica's
hub as a ``domain`` note, the replica that made the change included, so there is one path
and one order. What travels (written by ``notifications``, and by ``store_pg``'s Send
statements through ``message_notify``; read by ``Listener``, a message through
``read_message``; this module is the format's one home):

- ``m SEQ HEAD\\nFRAME``: a message (HEAD ``[tenant, room_id, room_pk, sender]``); FRAME
  is the Join frame, or empty when it would not fit a notification.
- ``e HEAD\\nFRAME``: a membership event (HEAD ``[tenant, room_id, skip_user]``).
- ``k HEAD\\nFRAME``: end one user's streams (kick, leave; HEAD ``[tenant, room_id, user,
  code, reason]``), and ``d``: end every stream of a room (deleted).

A user's streams of every room (``all``) must hear the rooms the user is let into, which
no stream here follows yet: an "invited" or "joined" event, and a Create's "created" note,
also go (the latter only) on the user's channel (``user_channel``), listened to while
such a stream of the user is open here; heard there, they only let the user's streams
into the room (``Fanout.let_in``), never reach a room's streams.

Rolling upgrades (``NOTIFY_MODES``): a release before per-room channels LISTENs and
NOTIFYs on one channel every replica shares (``CHANNEL``). In mode ``both`` (what
``--notify auto`` takes on a database upgraded from such a release: ``store_pg.recorded_notify``)
a replica also publishes every notification there, after its room's (and user's) copy,
and listens there as well as on its rooms' channels, so it serves beside such a release
and beside replicas in mode ``rooms``; the twin a notification has on the shared channel
is dropped (it comes right after its copy, a transaction's notifications being delivered
together and in order; a message is dropped by its seq anyway). Mode ``rooms`` (once no
older release runs) uses only the rooms' and users' channels.

The hand-over from replay to live: a stream subscribes to the hub, then waits until its
room's channel is listened to (``heard``: at once when another stream of the room is
open here, else after this LISTEN is done), and only then reads its replay, so anything
stored after the replay's read is notified to it: a message reaches it at worst twice
(the stream drops a seq it replayed), never not at all.

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
import hashlib
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
from chatctl.wire import CLOSE_GOING_AWAY, CREATED_PREFIX, encode, message_frame

__all__ = [
    "CHANNEL",
    "NOTIFY_LIMIT",
    "NOTIFY_MODES",
    "Listener",
    "MessageNotification",
    "channel",
    "channel_sql",
    "lag_of",
    "message_notify",
    "note_frame",
    "notifications",
    "read_message",
    "user_channel",
]

log = logging.getLogger("chatctl.server")

#: the LISTEN/NOTIFY channel every replica of a release before per-room channels shares
#: (mode ``both`` publishes and listens there too).
CHANNEL = "chatctl"
#: ``both``: the shared channel as well as the rooms' (beside an older release);
#: ``rooms``: only the rooms' and users' channels (``serve --notify``).
NOTIFY_MODES = ("both", "rooms")
#: every room's channel starts so; a hash of its tenant and id follows (``channel``).
CHANNEL_PREFIX = "chatctl_r"
#: every user's channel starts so (``user_channel``).
USER_PREFIX = "chatctl_u"
#: hex digits of the SHA-256 kept: 128 bits, and a name of 41 bytes (PostgreSQL: ≤ 63).
_HASH_HEX = 32
#: the events that let their user into a room (an ``all`` stream follows it then).
_LETS_IN = ('{"event":{"type":"invited",', '{"event":{"type":"joined",')
#: PostgreSQL refuses a NOTIFY payload of 8000 bytes or more; stay a little under.
NOTIFY_LIMIT = 7900

#: seconds between attempts to listen again after the connection dropped.
_RETRY = 0.5
_INTERRUPTED = "fan-out interrupted: resume"


class Listener:
    """Hears the changes of the rooms with streams here (and the rooms their users are let
    into) and delivers them to this replica's streams (``domain.RoomListener``: the hub
    says which rooms and users)."""

    def __init__(
        self, url: str, timeout: float, store: Store, fanout: Fanout, mode: str = "both"
    ) -> None:
        #: the database to LISTEN on, and its connect timeout (``--db-timeout``).
        self.url = url
        self.timeout = timeout
        #: where a missed message is read back from.
        self.store = store
        self.fanout = fanout
        #: ``both``: the shared channel too (``NOTIFY_MODES``); ``rooms``: not.
        self.mode = mode
        self._delivered: dict[tuple[str, str], int] = {}
        #: told each heard message's lag in seconds, when metrics are on (``lag_of``).
        self.lag: Callable[[float], None] | None = None
        self._task: asyncio.Task[None] | None = None
        self._started = asyncio.Event()
        #: the channels wanted (rooms with streams here, users with ``all`` streams here;
        #: two may share one), each with how many asked.
        self._wanted: dict[str, int] = {}
        #: the channels LISTENed on the current connection (the shared one not counted).
        self._listening: set[str] = set()
        #: set when ``_wanted`` changed or a stream waits to be heard.
        self._changed = asyncio.Event()
        #: streams waiting until their channel is listened to, by channel.
        self._waiting: dict[str, list[asyncio.Future[None]]] = {}
        #: notifications received and not yet handed to the hub, in order, each with its
        #: channel: read from the connection by one task, applied by another, so that
        #: LISTEN and UNLISTEN can interrupt the reading without cutting an application
        #: short.
        self._inbox: asyncio.Queue[tuple[str, str]] = asyncio.Queue()
        #: the last notification applied from a room's or user's channel (mode ``both``:
        #: its twin on the shared channel comes next, and is dropped).
        self._last_copy = ""
        self._applier: asyncio.Task[None] | None = None
        fanout.listen_through(self)

    # -- the hub's side (domain.RoomListener) -------------------------------------------

    def listen(self, tenant: str, room_id: str) -> None:
        """The room's first stream here opened: listen to its channel."""
        self._want(channel(tenant, room_id))

    def unlisten(self, tenant: str, room_id: str) -> None:
        """The room's last stream here ended: stop listening to its channel."""
        self._unwant(channel(tenant, room_id))
        self._delivered.pop((tenant, room_id), None)

    def listen_user(self, tenant: str, user_id: str) -> None:
        """The user's first ``all`` stream here opened: hear the rooms they are let into."""
        self._want(user_channel(tenant, user_id))

    def unlisten_user(self, tenant: str, user_id: str) -> None:
        self._unwant(user_channel(tenant, user_id))

    async def heard(self, tenant: str, room_id: str) -> bool:
        """Return once the room's changes from now on reach this replica (its channel is
        listened to): True when it was not yet (changes made meanwhile may not have been
        heard); raise Unavailable when that takes longer than the database timeout."""
        return await self._heard(channel(tenant, room_id))

    async def user_heard(self, tenant: str, user_id: str) -> bool:
        """Return once the rooms the user is let into from now on are heard."""
        return await self._heard(user_channel(tenant, user_id))

    def _want(self, name: str) -> None:
        self._wanted[name] = self._wanted.get(name, 0) + 1
        self._changed.set()

    def _unwant(self, name: str) -> None:
        left = self._wanted.get(name, 0) - 1
        if left > 0:
            self._wanted[name] = left
        else:
            self._wanted.pop(name, None)
            self._changed.set()

    async def _heard(self, name: str) -> bool:
        if name in self._listening:
            return False
        waiter = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(name, []).append(waiter)
        self._changed.set()
        try:
            await asyncio.wait_for(waiter, self.timeout)
        except TimeoutError:
            raise Unavailable(f"cannot listen to the room within {self.timeout:g} s") from None
        return True

    # -- running --------------------------------------------------------------------------

    async def start(self) -> None:
        """Listen before the server takes requests; keep listening until ``stop``."""
        self._applier = asyncio.create_task(self._apply_inbox())
        self._task = asyncio.create_task(self._listen())
        started = asyncio.create_task(self._started.wait())
        await asyncio.wait([self._task, started], return_when=asyncio.FIRST_COMPLETED)
        started.cancel()
        if self._task.done():
            self._task.result()  # the first connection failed: raise why

    async def stop(self) -> None:
        for task in (self._task, self._applier):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

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
                    if self.mode == "both":
                        await conn.execute(f"LISTEN {CHANNEL}")
                    await self._follow(conn)  # the rooms with streams now (none at first)
                    if first:
                        first = False
                        self._started.set()
                    else:
                        log.warning("listening on PostgreSQL again")
                    self.fanout.resume()
                    await self._serve(conn)
            except psycopg.OperationalError as exc:
                log.warning("lost the PostgreSQL LISTEN connection (%s)", exc)
            self._listening.clear()
            self._delivered.clear()
            while not self._inbox.empty():  # every stream ends: what they missed too
                self._inbox.get_nowait()
            self._last_copy = ""
            self.fanout.interrupt(_INTERRUPTED)
            self._release_waiting()  # their streams just ended
            await asyncio.sleep(_RETRY)

    async def _serve(self, conn: psycopg.AsyncConnection[Any]) -> None:
        """Read notifications into the inbox; LISTEN and UNLISTEN as the rooms with
        streams change, interrupting the reading (which reads nothing partially)."""
        while True:
            reading = asyncio.create_task(self._read(conn))
            changed = asyncio.create_task(self._changed.wait())
            try:
                await asyncio.wait([reading, changed], return_when=asyncio.FIRST_COMPLETED)
            finally:
                for task in (reading, changed):
                    task.cancel()
                await asyncio.gather(reading, changed, return_exceptions=True)
            if not reading.cancelled():
                reading.result()  # the connection failed: raise why
                raise psycopg.OperationalError("the notifications ended")
            await self._follow(conn)

    async def _read(self, conn: psycopg.AsyncConnection[Any]) -> None:
        async for notify in conn.notifies():
            self._inbox.put_nowait((notify.channel, notify.payload))

    async def _follow(self, conn: psycopg.AsyncConnection[Any]) -> None:
        """LISTEN to the channels wanted and no others, then wake who waited for them."""
        while True:
            self._changed.clear()
            gone = self._listening - self._wanted.keys()
            new = self._wanted.keys() - self._listening
            # Off the set before UNLISTEN is sent: a stream of such a room joining now
            # waits for the LISTEN after it.
            self._listening -= gone
            commands = [f'UNLISTEN "{name}"' for name in sorted(gone)]
            commands += [f'LISTEN "{name}"' for name in sorted(new)]
            if commands:
                await conn.execute("; ".join(commands).encode())
            self._listening |= new
            for name in list(self._waiting):
                if name in self._listening or name not in self._wanted:
                    for waiter in self._waiting.pop(name):
                        if not waiter.done():
                            waiter.set_result(None)
            if not self._changed.is_set():
                return

    def _release_waiting(self) -> None:
        for waiters in self._waiting.values():
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(None)
        self._waiting.clear()

    async def _apply_inbox(self) -> None:
        while True:
            name, payload = await self._inbox.get()
            if name == CHANNEL:
                twin, self._last_copy = payload == self._last_copy, ""
                if twin:
                    continue  # the twin of the copy just applied (mode both)
            else:
                self._last_copy = payload
            try:
                if name.startswith(USER_PREFIX):
                    self._let_in(payload)
                else:
                    await self._receive(payload)
            except Exception:  # a bad notification must not stop fan-out
                log.exception("cannot apply notification %.200r", payload)

    def _let_in(self, payload: str) -> None:
        """A user's channel: an event that may let the user's ``all`` streams into a room."""
        kind, _, rest = payload.partition(" ")
        head_text, _, frame = rest.partition("\n")
        if kind == "e":
            tenant, room_id, skip_user = json.loads(head_text)
            self.fanout.let_in(EventNote(tenant, room_id, frame, skip_user))

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


def notifications(notes: list[Note], mode: str = "both") -> list[tuple[str, str]]:
    """Notes as notifications, each its channel and its payload (``Listener`` reads them
    back), in order: what a ``store_pg`` transaction notifies at its end. A note goes on
    its room's channel; an event letting a user into a room on the user's channel too (a
    Create's "created" note only there); in mode ``both`` each also on the shared channel,
    after its other copies."""
    pairs: list[tuple[str, str]] = []
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
        payload = head[0] + " " + encode(head[1:]) + "\n" + note.frame
        if isinstance(note, EventNote) and note.frame.startswith(CREATED_PREFIX):
            pairs.append((user_channel(note.tenant, note.skip_user), payload))
        else:
            pairs.append((channel(note.tenant, note.room_id), payload))
            if isinstance(note, EventNote) and note.frame.startswith(_LETS_IN):
                pairs.append((user_channel(note.tenant, note.skip_user), payload))
        if mode == "both":
            pairs.append((CHANNEL, payload))
    return pairs


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
    payload = f"""'m ' || {seq} || ' '
        || json_build_array({tenant}, {room_id}, {room_pk}, {sender})::text
        || E'\\n' || {frame}"""
    # The room's copy first, then (mode both: the parameter ``shared``) the shared one.
    return f"""concat(
        pg_notify({channel_sql(tenant, room_id)}, {payload}),
        CASE WHEN %(shared)s THEN pg_notify('{CHANNEL}', {payload}) END
    )"""


def channel(tenant: str, room_id: str) -> str:
    """The room's LISTEN/NOTIFY channel: a valid identifier of 41 bytes whatever the
    tenant and room id are (``channel_sql`` makes the same in SQL)."""
    key = f"{len(tenant)}:{tenant}{room_id}".encode()
    return CHANNEL_PREFIX + hashlib.sha256(key).hexdigest()[:_HASH_HEX]


def user_channel(tenant: str, user_id: str) -> str:
    """The channel of the rooms a user is let into (never a room's: its own prefix)."""
    key = f"{len(tenant)}:{tenant}{user_id}".encode()
    return USER_PREFIX + hashlib.sha256(key).hexdigest()[:_HASH_HEX]


def channel_sql(tenant: str, room_id: str) -> str:
    """SQL: ``channel`` of the SQL expressions ``tenant`` and ``room_id`` (text); the
    tenant's length first, so that no two pairs make one string."""
    key = f"length({tenant})::text || ':' || {tenant} || {room_id}"
    digest = f"encode(sha256(convert_to({key}, 'UTF8')), 'hex')"
    return f"'{CHANNEL_PREFIX}' || left({digest}, {_HASH_HEX})"


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
