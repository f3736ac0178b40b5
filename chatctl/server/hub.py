"""Live fan-out: who is streaming which room, and handing each of them the next frames.

A ``Subscriber`` is one Join stream (WebSocket or NDJSON). The hub is the stores'
``domain.Fanout``: a store delivers each committed change's notes here (``deliver``), in
this process after the commit (SQLite), or as every replica hears them from the database
(PostgreSQL, ``hub_pg.Listener``). Delivering never waits: a frame is appended to each
subscriber's bounded queue, and the stream's own task writes it out. A subscriber whose
queue is full is ended with close code 4008 instead of holding up the room; it resumes
with ``since``. Frames are encoded once and the same ``str`` goes to every subscriber;
a subscriber of m3o's group edition (``group``) gets it renamed, once per frame for all of
them (``wire.in_group_edition``).

A stream of many rooms (``JoinRooms``) is one ``RoomsSubscriber``, with a ``RoomTap`` in
each of its rooms: a tap hands its room's frames to the stream's one queue, and being
kicked from, leaving or losing one room ends that room only (``room_ended``); a full queue,
a revoked token or a shutdown ends the whole stream. A stream of every room its user is in
(``all``) is also told, here, of each "invited" or "joined" event of its user, and of
each room created with the user in it (a "created" note, which no stream gets as an event)
(``deliver``): the room is tapped at once, before any later message of it is delivered.

On PostgreSQL the hub tells the replica's listener (``listen_through``) when a room's first
stream (or tap) opens and its last ends, and when a user's first stream of every room
opens and its last ends, so that the replica hears only the rooms it has streams in and
the rooms those users are let into; a stream waits, before its replay, until its room is
heard (``hearing``), and a stream of every room until its user is (``hearing_user``).

Each subscriber keeps the token it was admitted with (``owner``: the token's id, its
SHA-256; ``""`` on an open server), so that a revoked token's streams can be ended
(``end_tokens``).

The hub also counts open connections and remembers when the server last did anything,
for the idle-exit watchdog of the embedded local server (``active``, ``last_activity``,
``idle_for()``).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import deque
from collections.abc import Collection

from chatctl.server.domain import EventNote, Note, Published, RoomListener
from chatctl.wire import CLOSE_GOING_AWAY, CLOSE_TOO_SLOW, CREATED_PREFIX, in_group_edition

__all__ = ["Hub", "RoomTap", "RoomsSubscriber", "StreamEnded", "Subscriber"]

#: an item of a subscriber's queue: the message's seq (0 for events) and the encoded frame.
Item = tuple[int, str]


class StreamEnded(Exception):
    """The stream must end: ``code`` is the close code, ``frame`` an optional final frame.

    ``code`` is None when the client went away (nothing left to send).
    """

    def __init__(self, code: int | None, frame: str | None = None, reason: str = "") -> None:
        super().__init__(code)
        self.code = code
        self.frame = frame
        self.reason = reason


class Subscriber:
    """One live stream of a room."""

    __slots__ = (
        "_ended",
        "_items",
        "_wake",
        "events",
        "group",
        "include_own",
        "maxsize",
        "owner",
        "room_id",
        "tenant",
        "user_id",
    )

    def __init__(
        self,
        tenant: str,
        room_id: str,
        user_id: str,
        events: bool,
        maxsize: int,
        include_own: bool = False,
        owner: str = "",
        group: bool = False,
    ) -> None:
        self.tenant = tenant
        #: True for a stream in m3o's group edition (``group_id`` in its frames).
        self.group = group
        self.owner = owner
        self.include_own = include_own
        self.room_id = room_id
        self.user_id = user_id
        self.events = events
        self.maxsize = maxsize
        self._items: deque[Item] = deque()
        self._wake = asyncio.Event()
        self._ended: StreamEnded | None = None

    @property
    def ended(self) -> bool:
        return self._ended is not None

    @property
    def queued(self) -> int:
        """Frames waiting for this stream's writer (``metrics``: fan-out depth)."""
        return len(self._items)

    def push(self, item: Item) -> bool:
        """Queue a frame; False when the queue is full (the caller ends the stream)."""
        if self._ended is not None:
            return True
        if len(self._items) >= self.maxsize:
            return False
        self._items.append(item)
        self._wake.set()
        return True

    def end(self, ended: StreamEnded, *, drop_pending: bool = False) -> None:
        """End the stream; the first reason wins. Pending frames are still delivered first
        unless ``drop_pending`` (a reader too slow to take them)."""
        if self._ended is not None:
            return
        self._ended = ended
        if drop_pending:
            self._items.clear()
        self._wake.set()

    def end_room(self, ended: StreamEnded) -> None:
        """Its room ends for it (kicked, left, deleted): a stream of one room ends."""
        self.end(ended)

    async def next_batch(self) -> list[Item]:
        """Wait for frames; raises StreamEnded once the queue is drained after an end."""
        while not self._items:
            if self._ended is not None:
                raise self._ended
            self._wake.clear()
            await self._wake.wait()
        batch = list(self._items)
        self._items.clear()
        return batch


#: an item of a many-room stream's queue: the room, the message's seq (0 for an event,
#: ADDED or ENDED for news of the room itself) and the frame (ENDED: the StreamEnded's
#: reason and close code as ``code reason``; ADDED: the time the user was let in).
RoomItem = tuple[str, int, str]
ADDED = -1
ENDED = -2


class RoomsSubscriber:
    """One live stream of many rooms (``JoinRooms``): a ``RoomTap`` per room, one queue."""

    def __init__(
        self,
        hub: Hub,
        tenant: str,
        user_id: str,
        events: bool,
        maxsize: int,
        include_own: bool = False,
        owner: str = "",
        group: bool = False,
        *,
        every_room: bool = False,
        max_rooms: int = 10_000,
    ) -> None:
        self.hub = hub
        self.tenant = tenant
        self.user_id = user_id
        self.events = events
        self.maxsize = maxsize
        self.include_own = include_own
        self.owner = owner
        self.group = group
        #: rooms the user is let into while it lasts are added (``all``).
        self.every_room = every_room
        self.max_rooms = max_rooms
        #: the cursor a room without one resumes from (set when it is admitted).
        self.since = ""
        self.taps: dict[str, RoomTap] = {}
        self._items: deque[RoomItem] = deque()
        self._wake = asyncio.Event()
        self._ended: StreamEnded | None = None

    @property
    def ended(self) -> bool:
        return self._ended is not None

    def tap(self, room_id: str) -> bool:
        """Follow one more room (live frames from now on); False when it is followed
        already, or the stream holds ``max_rooms`` (the room is then left out)."""
        if room_id in self.taps or self._ended is not None or len(self.taps) >= self.max_rooms:
            return False
        tap = RoomTap(self, room_id)
        self.taps[room_id] = tap
        self.hub._add(tap)
        return True

    def push_room(self, item: RoomItem) -> bool:
        if self._ended is not None:
            return True
        if len(self._items) >= self.maxsize:
            return False
        self._items.append(item)
        self._wake.set()
        return True

    def added(self, room_id: str, at: str) -> None:
        """The user was let into a room while the stream lasts (``all``)."""
        if self.tap(room_id):
            self._items.append((room_id, ADDED, at))  # news of the room: never refused
            self._wake.set()

    def room_ended(self, room_id: str, ended: StreamEnded) -> None:
        """One room ends for the stream (kicked, left, deleted); the others go on."""
        tap = self.taps.pop(room_id, None)
        if tap is None or self._ended is not None:
            return
        self.hub.unsubscribe(tap)
        self._items.append((room_id, ENDED, f"{ended.code or 1000} {ended.reason}"))
        self._wake.set()

    def end(self, ended: StreamEnded, *, drop_pending: bool = False) -> None:
        """End the whole stream; the first reason wins."""
        if self._ended is not None:
            return
        self._ended = ended
        if drop_pending:
            self._items.clear()
        self._wake.set()

    def release(self) -> None:
        """Off the hub: every tap, and the watch on its user's new rooms."""
        for tap in self.taps.values():
            self.hub.unsubscribe(tap)
        self.taps.clear()
        self.hub._unwatch(self)

    async def next_batch(self) -> list[RoomItem]:
        """Wait for frames; raises StreamEnded once the queue is drained after an end."""
        while not self._items:
            if self._ended is not None:
                raise self._ended
            self._wake.clear()
            await self._wake.wait()
        batch = list(self._items)
        self._items.clear()
        return batch


class RoomTap(Subscriber):
    """One room of a ``RoomsSubscriber``: its frames go to the stream's queue."""

    __slots__ = ("stream",)

    def __init__(self, stream: RoomsSubscriber, room_id: str) -> None:
        super().__init__(
            stream.tenant,
            room_id,
            stream.user_id,
            stream.events,
            stream.maxsize,
            stream.include_own,
            stream.owner,
            stream.group,
        )
        self.stream = stream

    @property
    def ended(self) -> bool:
        return self.stream.ended

    def push(self, item: Item) -> bool:
        return self.stream.push_room((self.room_id, item[0], item[1]))

    def end(self, ended: StreamEnded, *, drop_pending: bool = False) -> None:
        self.stream.end(ended, drop_pending=drop_pending)

    def end_room(self, ended: StreamEnded) -> None:
        if ended.code == CLOSE_GOING_AWAY:  # a replica that missed changes: resume all
            self.stream.end(ended)
        else:
            self.stream.room_ended(self.room_id, ended)


class Hub:
    """Every live stream, grouped by (tenant, room id)."""

    def __init__(self, queue_size: int = 1000) -> None:
        self.queue_size = queue_size
        self._rooms: dict[tuple[str, str], set[Subscriber]] = {}
        #: the streams of every room of a user (``all``), by (tenant, user id).
        self._watchers: dict[tuple[str, str], set[RoomsSubscriber]] = {}
        #: every open many-room stream (ended with the rest, even one without rooms yet).
        self._many: set[RoomsSubscriber] = set()
        self._streams = 0
        #: open connections and in-flight requests, streams included (the app counts).
        self.active = 0
        self.last_activity = time.monotonic()
        self.closed = False
        #: why new streams are refused for now (a replica not hearing the others), or "".
        self.interrupted = ""
        #: frames queued to streams so far, messages and events (``metrics``).
        self.delivered = 0
        #: who hears other replicas' changes of the rooms with streams here (PostgreSQL).
        self._listener: RoomListener | None = None

    # -- idle tracking ------------------------------------------------------------------

    @property
    def streams(self) -> int:
        """Open Join streams."""
        return self._streams

    def touch(self) -> None:
        self.last_activity = time.monotonic()

    def idle_for(self) -> float:
        """Seconds with nothing open and nothing done; 0 while anything is open."""
        if self.active:
            return 0.0
        return time.monotonic() - self.last_activity

    async def until_quiet(self, timeout: float) -> None:
        """Wait until no request or stream is open, for at most ``timeout`` seconds (at
        shutdown: the streams just ended write their close frames)."""
        deadline = time.monotonic() + timeout
        while self.active and time.monotonic() < deadline:
            await asyncio.sleep(0.01)

    # -- subscribing --------------------------------------------------------------------

    def subscribe(
        self,
        tenant: str,
        room_id: str,
        user_id: str,
        events: bool,
        include_own: bool = False,
        owner: str = "",
        group: bool = False,
    ) -> Subscriber:
        sub = Subscriber(
            tenant, room_id, user_id, events, self.queue_size, include_own, owner, group
        )
        if self.closed or self.interrupted:
            reason = "server shutting down" if self.closed else self.interrupted
            sub.end(StreamEnded(CLOSE_GOING_AWAY, reason=reason))
            return sub
        self._room_of(tenant, room_id).add(sub)
        self._streams += 1
        self.touch()
        return sub

    def _room_of(self, tenant: str, room_id: str) -> set[Subscriber]:
        """The room's streams here; its first one makes the listener listen to it."""
        subs = self._rooms.get((tenant, room_id))
        if subs is None:
            subs = self._rooms[(tenant, room_id)] = set()
            if self._listener is not None:
                self._listener.listen(tenant, room_id)
        return subs

    def listen_through(self, listener: RoomListener) -> None:
        self._listener = listener

    async def hearing(self, sub: Subscriber) -> bool:
        """Return once the stream's room is heard from every replica, so that what is
        stored after its replay's read reaches it live (at once without replicas): True
        when it was not heard until now (what was stored since the stream subscribed
        may have reached it by no notification); raise Unavailable when that takes
        longer than the database timeout."""
        if self._listener is not None and not sub.ended:
            return await self._listener.heard(sub.tenant, sub.room_id)
        return False

    async def hearing_user(self, stream: RoomsSubscriber) -> None:
        """Return once the rooms the stream's user is let into are heard (``all``)."""
        if self._listener is not None and not stream.ended:
            await self._listener.user_heard(stream.tenant, stream.user_id)

    def subscribe_rooms(
        self,
        tenant: str,
        user_id: str,
        events: bool,
        include_own: bool = False,
        owner: str = "",
        group: bool = False,
        *,
        every_room: bool = False,
        max_rooms: int = 10_000,
    ) -> RoomsSubscriber:
        """A stream of many rooms (``RoomsSubscriber.tap`` adds each); with
        ``every_room``, each room its user is let into from now on is added as it is."""
        stream = RoomsSubscriber(
            self,
            tenant,
            user_id,
            events,
            self.queue_size,
            include_own,
            owner,
            group,
            every_room=every_room,
            max_rooms=max_rooms,
        )
        if self.closed or self.interrupted:
            reason = "server shutting down" if self.closed else self.interrupted
            stream.end(StreamEnded(CLOSE_GOING_AWAY, reason=reason))
            return stream
        if every_room:
            watchers = self._watchers.get((tenant, user_id))
            if watchers is None:
                watchers = self._watchers[(tenant, user_id)] = set()
                if self._listener is not None:
                    self._listener.listen_user(tenant, user_id)
            watchers.add(stream)
        self._many.add(stream)
        self._streams += 1
        self.touch()
        return stream

    def _add(self, tap: RoomTap) -> None:
        """A room of a many-room stream (counted once, as its stream)."""
        self._room_of(tap.tenant, tap.room_id).add(tap)

    def _unwatch(self, stream: RoomsSubscriber) -> None:
        key = (stream.tenant, stream.user_id)
        watchers = self._watchers.get(key)
        if watchers is not None:
            watchers.discard(stream)
            if not watchers:
                del self._watchers[key]
                if self._listener is not None:
                    self._listener.unlisten_user(*key)
        if stream in self._many:
            self._many.discard(stream)
            self._streams -= 1
            self.touch()

    def unsubscribe(self, sub: Subscriber) -> None:
        key = (sub.tenant, sub.room_id)
        subs = self._rooms.get(key)
        if subs is None or sub not in subs:
            return
        subs.discard(sub)
        if not isinstance(sub, RoomTap):
            self._streams -= 1
        if not subs:
            del self._rooms[key]
            if self._listener is not None:
                self._listener.unlisten(*key)
        self.touch()

    def listening(self, tenant: str, room_id: str) -> bool:
        """True when a stream of the room is open here."""
        return (tenant, room_id) in self._rooms

    def subscribers(self, tenant: str, room_id: str) -> tuple[Subscriber, ...]:
        return tuple(self._rooms.get((tenant, room_id), ()))

    def all_subscribers(self) -> list[Subscriber]:
        """Every live stream here (``metrics`` reads their queues)."""
        return [sub for room in self._rooms.values() for sub in room]

    # -- delivering -----------------------------------------------------------------------

    def deliver(self, note: Note) -> None:
        """Hand what a committed change tells the streams to the streams it concerns."""
        if isinstance(note, Published):
            self.publish_message(note.tenant, note.room_id, note.seq, note.frame, note.sender)
        elif isinstance(note, EventNote):
            if not note.frame.startswith(CREATED_PREFIX):  # a Create's: no stream's event
                self.publish_event(note.tenant, note.room_id, note.frame, note.skip_user)
            if self._watchers and (note.tenant, note.skip_user) in self._watchers:
                self._let_in(note)
        elif note.user_id is None:
            self.end_room(note.tenant, note.room_id, note.code, note.frame, note.reason)
        else:
            self.end_user(
                note.tenant, note.room_id, note.user_id, note.code, note.frame, note.reason
            )

    def let_in(self, note: EventNote) -> None:
        """An event heard on its user's channel (PostgreSQL): it only lets the user's
        streams of every room into its room, as ``deliver`` would."""
        if self._watchers and (note.tenant, note.skip_user) in self._watchers:
            self._let_in(note)

    def interrupt(self, reason: str) -> None:
        """Changes may go unheard for now (a replica lost its database listener): end
        every stream with 1001 so clients resume, and refuse new ones until ``resume``."""
        self.interrupted = reason
        self.end_all(reason=reason, closing=False)

    def resume(self) -> None:
        self.interrupted = ""

    def publish_message(self, tenant: str, room_id: str, seq: int, frame: str, sender: str) -> None:
        """Hand a stored message to every stream of the room but the sender's own."""
        subs = self._rooms.get((tenant, room_id))
        if not subs:
            return
        item = (seq, frame)
        group_item: Item | None = None
        pushed = 0
        for sub in tuple(subs):
            if sub.user_id != sender or sub.include_own:
                pushed += 1
                if sub.group:
                    if group_item is None:
                        group_item = (seq, in_group_edition(frame))
                    if not sub.push(group_item):
                        self._too_slow(sub)
                elif not sub.push(item):
                    self._too_slow(sub)
        self.delivered += pushed

    def publish_event(self, tenant: str, room_id: str, frame: str, skip_user: str = "") -> None:
        """Hand a membership event to the streams that asked for events."""
        subs = self._rooms.get((tenant, room_id))
        if not subs:
            return
        item = (0, frame)
        group_item: Item | None = None
        for sub in tuple(subs):
            if sub.events and sub.user_id != skip_user:
                self.delivered += 1
                if sub.group:
                    if group_item is None:
                        group_item = (0, in_group_edition(frame))
                    if not sub.push(group_item):
                        self._too_slow(sub)
                elif not sub.push(item):
                    self._too_slow(sub)

    def _let_in(self, note: EventNote) -> None:
        """An event of a user some stream follows every room of: one that lets them into
        a room (invited, joined, or created with them in it) adds the room to those
        streams, before any later message of it is delivered."""
        event = json.loads(note.frame).get("event", {})
        if event.get("type") not in ("invited", "joined", "created"):
            return
        for stream in tuple(self._watchers.get((note.tenant, note.skip_user), ())):
            stream.added(note.room_id, str(event.get("at", "")))

    def _too_slow(self, sub: Subscriber) -> None:
        self.unsubscribe(sub)
        if isinstance(sub, RoomTap):  # the whole stream is cut off, each of its rooms
            sub.stream.release()
        sub.end(
            StreamEnded(CLOSE_TOO_SLOW, reason="too slow: resume with since"), drop_pending=True
        )

    # -- ending streams -----------------------------------------------------------------

    def end_user(
        self, tenant: str, room_id: str, user_id: str, code: int, frame: str, reason: str = ""
    ) -> int:
        """End one user's streams in a room (kicked, left); returns how many."""
        ended = 0
        for sub in self.subscribers(tenant, room_id):
            if sub.user_id == user_id:
                self.unsubscribe(sub)
                sub.end_room(StreamEnded(code, frame, reason))
                ended += 1
        return ended

    def end_room(self, tenant: str, room_id: str, code: int, frame: str, reason: str = "") -> int:
        """End every stream of a room (deleted); returns how many."""
        subs = self.subscribers(tenant, room_id)
        for sub in subs:
            self.unsubscribe(sub)
            sub.end_room(StreamEnded(code, frame, reason))
        return len(subs)

    def end_tokens(self, token_ids: Collection[str], ended: StreamEnded) -> int:
        """End every stream opened with one of these tokens (revoked); returns how many.
        Every other stream carries on."""
        if not token_ids:
            return 0
        subs: list[Subscriber | RoomsSubscriber] = [
            sub for room in self._rooms.values() for sub in room if sub.owner in token_ids
        ]
        subs += [many for many in self._many if many.owner in token_ids]
        return self._end(subs, ended)

    def end_all(
        self,
        code: int = CLOSE_GOING_AWAY,
        reason: str = "server shutting down",
        *,
        closing: bool = True,
    ) -> int:
        """End every stream; with ``closing`` (shutdown), refuse new ones for good.
        Returns how many ended."""
        self.closed = self.closed or closing
        subs: list[Subscriber | RoomsSubscriber] = [
            sub for room in self._rooms.values() for sub in room
        ]
        subs += self._many
        return self._end(subs, StreamEnded(code, reason=reason))

    def _end(self, subs: list[Subscriber | RoomsSubscriber], ended: StreamEnded) -> int:
        """End these streams (a room of a many-room stream ends all of it); how many."""
        for sub in subs:
            if isinstance(sub, Subscriber):
                self.unsubscribe(sub)
            sub.end(ended)
        return sum(not isinstance(sub, RoomTap) for sub in subs)
