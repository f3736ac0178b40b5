"""The chat domain's own types, shared by the rules, the stores and the fan-out.

- Rows: a room and a message as a store holds them (``RoomRow``, ``MessageRow``).
- Refusals: what the rules, ``access`` (and a store, for a Send) raise when a request
  cannot be done. Each is one kind of "no" (``Invalid``, ``Forbidden``, ``NotFound``,
  ``Conflict``) under one root, ``Refused`` (``schema.Refused``, also the root of
  ``schema.ValidationError`` and of the edge's ``decode.Refusal``); ``decode`` alone maps
  a kind to a status, a close code and m3o's error object, and nothing here knows HTTP.
  ``Unavailable`` is the storage failing (full, locked, unreachable, too slow): the
  cause is for the server's log, never for a client.
- ``Key``: an Idempotency-Key as the store needs it to claim it or find its first answer.
- ``NewMessage``: a message a Send asks the store to add to a room.
- Fan-out: what a committed change tells the live streams (``Published``, ``EventNote``,
  ``StreamsEnded``). A store delivers them to a ``Fanout`` (the hub) when, and only if,
  the change commits: after the commit in one process, or through the database to every
  replica.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any, Protocol

from chatctl.schema import Refused
from chatctl.wire import message_object, rfc3339

__all__ = [
    "REFUSALS",
    "Conflict",
    "EventNote",
    "Fanout",
    "Forbidden",
    "Invalid",
    "Key",
    "MessageRow",
    "NewMessage",
    "NotFound",
    "Note",
    "Published",
    "Refused",
    "RoomRow",
    "StreamsEnded",
    "Unavailable",
    "erased_message",
]


@dataclass(frozen=True, slots=True)
class RoomRow:
    #: the store's own key of the room; messages and members refer to it.
    pk: int
    tenant: str
    id: str
    name: str
    description: str
    created_at: str
    private: bool
    #: the user whose user token created the room; None when an admin token did, or the
    #: room predates creators being recorded (then only admin tokens may kick or delete).
    creator: str | None = None


@dataclass(frozen=True, slots=True)
class MessageRow:
    #: the message's position in the total order of its room.
    seq: int
    id: str
    client: str
    user_id: str
    sent_at: str
    subject: str
    text: str

    def to_wire(self, room_id: str) -> dict[str, Any]:
        """The message as m3o wrote it, of the room ``room_id``."""
        return message_object(
            self.id, self.client, room_id, self.user_id, self.sent_at, self.subject, self.text
        )


def erased_message(message: MessageRow) -> MessageRow:
    """A deleted message as it is answered from then on: its text and subject erased."""
    return MessageRow(
        message.seq, message.id, message.client, message.user_id, message.sent_at, "", ""
    )


# -- refusals ---------------------------------------------------------------------------


# ``Refused``, the root (``schema.Refused``, so that a request the shared schema refuses,
# ``schema.ValidationError``, is one of the same tree): a request the rules will not do.


class Invalid(Refused):
    """The request is wrong as asked (m3o's 400: a missing field, a non-member's Send)."""


class Forbidden(Refused):
    """Membership or privacy says no (403)."""


#: refusals of this process by limit (``rate_limit``: a token's rate, 429;
#: ``stream_cap``: its open streams, 429; ``quota``: a quota, 403), for ``/metrics``.
#: Plain counts, kept whether metrics are on or not (an addition costs nothing).
REFUSALS: Counter[str] = Counter()


class NotFound(Refused):
    """No such room, for this caller (404)."""


class Conflict(Refused):
    """An Idempotency-Key used before with another request (409)."""


class Unavailable(Exception):
    """The storage failed: nothing was changed that a retry with the same key could
    double. The message names the cause, for the server's log only."""


# -- idempotency ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Key:
    """An Idempotency-Key of a call: its first answer is kept until ``not_before`` passes."""

    tenant: str
    key: str
    endpoint: str
    #: SHA-256 of the request, so the same key with another request is refused.
    request_hash: str
    #: seconds since the epoch: when this call was made, and the oldest answer still kept.
    now: float
    not_before: float

    def replay(self, endpoint: str, request_hash: str, answer: str) -> str:
        """The first answer, if the key was used for this same request (else Conflict)."""
        if endpoint != self.endpoint or request_hash != self.request_hash:
            raise Conflict("Idempotency-Key was already used with a different request")
        return answer


@dataclass(frozen=True, slots=True)
class NewMessage:
    """A message to send, as the rules accepted it. The store gives it its id and time
    (``wire.UUIDv7``, ``wire.rfc3339``) when it takes its turn in the room, so that, made by
    one server, ids sort in the room's order."""

    room_id: str
    user_id: str
    client: str
    subject: str
    text: str

    def to_wire(self, message_id: str, ns: int) -> dict[str, Any]:
        """The message as m3o writes it, with its id and its time (ns since the epoch)."""
        return message_object(
            message_id,
            self.client,
            self.room_id,
            self.user_id,
            rfc3339(ns),
            self.subject,
            self.text,
        )


# -- fan-out ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Published:
    """A message committed to a room: every stream of it hears ``frame`` but the sender's
    own (unless they asked for their own)."""

    tenant: str
    room_id: str
    seq: int
    frame: str
    sender: str


@dataclass(frozen=True, slots=True)
class EventNote:
    """A membership event, for the streams that asked for events, but ``skip_user``'s."""

    tenant: str
    room_id: str
    frame: str
    skip_user: str


@dataclass(frozen=True, slots=True)
class StreamsEnded:
    """End the streams of a room: one user's (kicked, left), or every one (``user_id``
    None: deleted), with a final ``frame`` and close ``code``."""

    tenant: str
    room_id: str
    user_id: str | None
    code: int
    frame: str
    reason: str


Note = Published | EventNote | StreamsEnded


class RoomListener(Protocol):
    """What hears other replicas' changes room by room, only for the rooms with streams
    here and the users with streams of every room here (``hub_pg.Listener``); the hub says
    when a room's (a user's) first stream opens and its last ends."""

    def listen(self, tenant: str, room_id: str) -> None: ...

    def unlisten(self, tenant: str, room_id: str) -> None: ...

    def listen_user(self, tenant: str, user_id: str) -> None: ...

    def unlisten_user(self, tenant: str, user_id: str) -> None: ...

    async def heard(self, tenant: str, room_id: str) -> bool:
        """Return once the room's changes from now on are heard (a stream waits for this
        before its replay): True when they were not until now; raise Unavailable when
        that takes too long."""
        ...

    async def user_heard(self, tenant: str, user_id: str) -> bool:
        """Return once the rooms the user is let into from now on are heard."""
        ...


class Fanout(Protocol):
    """Where a store delivers what committed changes tell the live streams (``hub.Hub``)."""

    def deliver(self, note: Note) -> None: ...

    def let_in(self, note: EventNote) -> None:
        """An event heard on its user's channel: only let the user's streams of every room
        into the room (never an event to any stream)."""
        ...

    def listen_through(self, listener: RoomListener) -> None:
        """Tell ``listener`` which rooms and users have streams here, from now on."""
        ...

    def listening(self, tenant: str, room_id: str) -> bool:
        """True when a stream of the room is open here (a frame is worth making)."""
        ...

    def interrupt(self, reason: str) -> None:
        """Changes may go unheard for now: end every stream (clients resume with
        ``since``) and refuse new ones until ``resume``."""
        ...

    def resume(self) -> None: ...
