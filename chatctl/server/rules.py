"""The chat rules: what each endpoint does, with no HTTP in sight.

``ChatService`` has one method per endpoint. Each takes the tenant (the caller's token;
every token is its own namespace) and a request already checked by
``schema.validate_request``, and returns the m3o response object (every field present,
snake_case), or raises ``RulesError`` carrying the HTTP code and m3o's detail. The edge
(``app``) turns that into ``{"id", "code", "detail", "status"}``.

Rules beyond m3o (contract part 2), and the choices this server makes where it is silent:

- Unknown room: 404 ``room not found``; a room of another tenant is unknown.
- Send needs the user in ``user_ids``: 400 ``user is not in the room`` on a public room,
  as m3o answered, and 403 on a private room (a membership refusal).
- Private rooms: Join, Send and History need membership (History reads ``user_id``).
- Kick bars the user from rejoining with Join until invited again, on private *and* public
  rooms: otherwise a kick from a public room would undo itself on the next reconnect, which
  is the m3o flaw the contract sets out to fix. Leave does not bar.
- Kick and Leave end that user's live streams in the room (final error frame, close 4403);
  Delete ends every stream of the room (close 4404).
- Events (``{"event": {...}}`` on streams that asked): ``joined`` when a Join stream is
  admitted (on a public room that may also have made the user a member), ``invited``,
  ``kicked`` and ``left`` when ``user_ids`` changed, ``deleted`` when the room is deleted.
  The user an event is about does not get it on their own streams.
- Messages: stored (committed) before they are acknowledged or fanned out; ids are UUIDv7;
  one total order per room (the store's seq); History oldest first.
- History pagination: ``limit`` alone gives the latest N; with ``after``, the first N after
  it; with ``before``, the latest N before it. ``limit`` above ``max_history_page`` is
  lowered to it; 0 means no limit. A cursor (``before``, ``after``, Join's ``since``) is a
  message id, and an id is a position: a UUID that is no message of the room resolves by
  id order (UUIDv7 sorts in time), so the nil UUID means "from the start" and a time can
  be a cursor. Anything but a UUID is 400.
- Join's ``since`` wins over ``history`` when both are given. A replay includes the
  joiner's own messages (it is the room's history); only live frames skip them. More than
  ``max_replay`` messages after ``since`` is 400: read them with History instead.
- Idempotency-Key: a successful answer is stored with its key, in the same transaction as
  the change, so a retry after a crash can never apply it twice. Errors are not stored
  (nothing changed, so repeating is already safe). The same key with another endpoint or
  body is 409.
- Count limits (rooms per tenant, members per room) are 400 with a detail naming the limit;
  413 is kept for bodies over ``max_body_bytes``.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from chatctl.errors import reason_phrase
from chatctl.schema import Event, Limits, Message, Room
from chatctl.server.hub import Hub
from chatctl.server.store import MessageRow, RoomRow, Store

__all__ = [
    "IDEMPOTENCY_TTL",
    "Admission",
    "ChatService",
    "RulesError",
    "UUIDv7",
    "encode",
    "error_frame",
    "message_frame",
    "rfc3339",
]

IDEMPOTENCY_TTL = 24 * 3600.0
#: close code for kicked/left (4000 + 403) and room deleted (4000 + 404).
CLOSE_FORBIDDEN = 4403
CLOSE_DELETED = 4404
_UUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")

#: messages read from the store per step of a ``since`` replay.
REPLAY_CHUNK = 500

#: compact JSON, as every frame and body the server writes.
encode = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


class RulesError(Exception):
    """A request the rules refuse: ``code`` is the HTTP status, ``detail`` m3o's text."""

    def __init__(self, code: int, detail: str) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail


def error_frame(endpoint_id: str, code: int, detail: str) -> str:
    """The m3o error object, encoded: also the final frame of an ended stream."""
    return encode(
        {"id": endpoint_id, "code": code, "detail": detail, "status": reason_phrase(code)}
    )


def rfc3339(ns: int) -> str:
    """RFC 3339 UTC with nanoseconds, as m3o wrote times: 2022-02-17T16:12:43.942557998Z."""
    seconds, fraction = divmod(ns, 1_000_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{fraction:09d}Z"


class UUIDv7:
    """A monotonic UUIDv7 generator (RFC 9562, method 3: 12-bit sub-millisecond counter).

    Within a process ids strictly increase even when many are made in one millisecond or
    the clock steps back: the 60-bit (milliseconds, counter) prefix is forced past the last
    one. Order in a room is the store's seq, not the id, so a clock that steps back across
    a restart cannot reorder a room.
    """

    def __init__(self) -> None:
        self._last = 0

    def __call__(self, ns: int | None = None) -> str:
        if ns is None:
            ns = time.time_ns()
        stamp = (ns // 1_000_000) << 12
        if stamp <= self._last:
            stamp = self._last + 1
        self._last = stamp
        rand = int.from_bytes(os.urandom(8), "big") & ((1 << 62) - 1)
        value = (stamp >> 12) << 80 | 0x7 << 76 | (stamp & 0xFFF) << 64 | 0b10 << 62 | rand
        return str(uuid.UUID(int=value))


@dataclass(frozen=True)
class Admission:
    """A Join the rules accepted: what the stream replays before it goes live."""

    room: RoomRow
    user_id: str
    events: bool
    #: replay every message after this seq (``since``) ...
    since_seq: int | None
    #: ... or else the last N messages (``history``); 0 for none.
    history: int
    #: live frames include the joiner's own messages (``include_own``).
    include_own: bool = False


@runtime_checkable
class OneStepSend(Protocol):
    """A store that does a whole Send in one step (``store_pg.PostgresStore``, where each
    step is a round trip): find the room, check membership, store the message under the
    room's next seq and notify every replica at commit.

    Returns None when there is no such room, else (the room is private, the seq), the seq
    None when the user is not a member and nothing was stored. ``send_message_async`` is
    the same, awaiting the database instead of holding up the event loop.
    """

    def send_message(
        self,
        tenant: str,
        room_id: str,
        message_id: str,
        client: str,
        user_id: str,
        sent_at: str,
        subject: str,
        text: str,
    ) -> tuple[bool, int | None] | None: ...

    async def send_message_async(
        self,
        tenant: str,
        room_id: str,
        message_id: str,
        client: str,
        user_id: str,
        sent_at: str,
        subject: str,
        text: str,
    ) -> tuple[bool, int | None] | None: ...


#: deferred fan-out: run after the transaction that stored the change committed (an
#: in-memory hub), or inside it as its last step (a transactional hub: PostgreSQL NOTIFY,
#: which the database delivers only if and when that transaction commits).
_Effects = list[Callable[[], None]]


class ChatService:
    """The nine endpoints of the Chat API over a store and a hub."""

    def __init__(self, store: Store, hub: Hub, limits: Limits | None = None) -> None:
        self.store = store
        self.hub = hub
        self.limits = limits or Limits()
        self.new_message_id = UUIDv7()
        self._next_purge = 0.0
        self._one_step = store if isinstance(store, OneStepSend) else None
        self._handlers: dict[str, Callable[[str, dict[str, Any], _Effects], dict[str, Any]]] = {
            "Create": self._create,
            "Delete": self._delete,
            "Invite": self._invite,
            "Send": self._send,
            "Kick": self._kick,
            "Leave": self._leave,
        }

    # -- the unary endpoints ------------------------------------------------------------

    def call(
        self,
        endpoint: str,
        tenant: str,
        request: dict[str, Any],
        idempotency_key: str | None = None,
    ) -> dict[str, Any]:
        """Answer one unary call by endpoint name (``Send``); the edge's single entry."""
        if endpoint == "History":
            return self.history(tenant, request)
        if endpoint == "List":
            return self.list_rooms(tenant, request)
        handler = self._handlers.get(endpoint)
        if handler is None:
            raise RulesError(404, f"{endpoint} is not a unary endpoint")
        effects: _Effects = []
        if idempotency_key is None and endpoint == "Send":
            # The hot path: a Send writes one row, and SQLite's autocommit makes a single
            # statement atomic and durable by itself; BEGIN/COMMIT around it would only
            # cost two more trips through the library. (PostgreSQL's store notifies in the
            # statement that stores the message, so its hub has nothing to publish here.)
            response = handler(tenant, request, effects)
            for effect in effects:
                effect()
            return response
        with self.store.transaction():
            if idempotency_key is None:
                response = handler(tenant, request, effects)
            else:
                request_hash = hashlib.sha256(
                    json.dumps(request, sort_keys=True).encode("utf-8", "surrogatepass")
                ).hexdigest()
                now = time.time()
                prior = self.store.get_idempotency(tenant, idempotency_key, now - IDEMPOTENCY_TTL)
                if prior is not None:
                    if prior.endpoint != endpoint or prior.request_hash != request_hash:
                        raise RulesError(
                            409, "Idempotency-Key was already used with a different request"
                        )
                    decoded: dict[str, Any] = json.loads(prior.response)
                    return decoded
                response = handler(tenant, request, effects)
                self.store.put_idempotency(
                    tenant, idempotency_key, endpoint, request_hash, encode(response), now
                )
                self._maybe_purge(now)
            if self.hub.transactional:
                # Notifications that commit with the change, or not at all: a replica dying
                # between the commit and a separate notify cannot leave streams open.
                for effect in effects:
                    effect()
                return response
        # Committed: only now may anyone hear of it.
        for effect in effects:
            effect()
        return response

    def create(
        self, tenant: str, request: dict[str, Any], key: str | None = None
    ) -> dict[str, Any]:
        return self.call("Create", tenant, request, key)

    def delete(
        self, tenant: str, request: dict[str, Any], key: str | None = None
    ) -> dict[str, Any]:
        return self.call("Delete", tenant, request, key)

    def invite(
        self, tenant: str, request: dict[str, Any], key: str | None = None
    ) -> dict[str, Any]:
        return self.call("Invite", tenant, request, key)

    def send(self, tenant: str, request: dict[str, Any], key: str | None = None) -> dict[str, Any]:
        return self.call("Send", tenant, request, key)

    def kick(self, tenant: str, request: dict[str, Any], key: str | None = None) -> dict[str, Any]:
        return self.call("Kick", tenant, request, key)

    def leave(self, tenant: str, request: dict[str, Any], key: str | None = None) -> dict[str, Any]:
        return self.call("Leave", tenant, request, key)

    def _create(self, tenant: str, req: dict[str, Any], effects: _Effects) -> dict[str, Any]:
        limits = self.limits
        user_ids = list(dict.fromkeys(req["user_ids"]))  # m3o's "unless present", in order
        if len(user_ids) > limits.max_members_per_room:
            raise RulesError(
                400,
                f"too many users: a room holds at most {limits.max_members_per_room}"
                " (max_members_per_room)",
            )
        if self.store.count_rooms(tenant) >= limits.max_rooms_per_tenant:
            raise RulesError(
                400,
                f"too many rooms: at most {limits.max_rooms_per_tenant} per token"
                " (max_rooms_per_tenant)",
            )
        room = self.store.create_room(
            tenant,
            str(uuid.uuid4()),
            req["name"],
            req["description"],
            rfc3339(time.time_ns()),
            req["private"],
            user_ids,
        )
        return {"room": _room_json(room, user_ids)}

    def _delete(self, tenant: str, req: dict[str, Any], effects: _Effects) -> dict[str, Any]:
        room = self._room(tenant, req["room_id"])
        members = self.store.members(room)
        self.store.delete_room(room)
        frame = error_frame("chat.delete", 404, "room deleted")

        def fan_out() -> None:
            self._event("deleted", room, "")
            self.hub.end_room(tenant, room.id, CLOSE_DELETED, frame, "room deleted")

        effects.append(fan_out)
        return {"room": _room_json(room, members)}

    def _invite(self, tenant: str, req: dict[str, Any], effects: _Effects) -> dict[str, Any]:
        room = self._room(tenant, req["room_id"])
        user_id = req["user_id"]
        self.store.set_barred(room, user_id, False)
        if not self.store.is_member(room, user_id):
            self._check_room_size(room)
            self.store.add_member(room, user_id)
            effects.append(lambda: self._event("invited", room, user_id))
        return {"room": _room_json(room, self.store.members(room))}

    def _send(self, tenant: str, req: dict[str, Any], effects: _Effects) -> dict[str, Any]:
        if self._one_step is not None:
            return self._send_in_one_step(self._one_step, tenant, req)
        room = self._room(tenant, req["room_id"])
        user_id = req["user_id"]
        if not self.store.is_member(room, user_id):
            raise RulesError(403 if room.private else 400, "user is not in the room")
        ns = time.time_ns()
        message: Message = {
            "id": self.new_message_id(ns),
            "client": req["client"] or str(uuid.uuid4()),
            "room_id": room.id,
            "user_id": user_id,
            "sent_at": rfc3339(ns),
            "subject": req["subject"],
            "text": req["text"],
        }
        seq = self.store.add_message(
            room,
            message["id"],
            message["client"],
            user_id,
            message["sent_at"],
            message["subject"],
            message["text"],
        )
        response = {"message": message}

        def fan_out() -> None:
            # Encoded once, and only when someone is listening; every subscriber gets the
            # same str.
            if self.hub.has_subscribers(tenant, room.id):
                self.hub.publish_message(tenant, room.id, seq, encode(response), user_id)

        effects.append(fan_out)
        return response

    def _send_in_one_step(
        self, store: OneStepSend, tenant: str, req: dict[str, Any]
    ) -> dict[str, Any]:
        """``_send`` in one call of the store, which also notifies (nothing to publish)."""
        message = self._new_message(req)
        return _sent(message, store.send_message(tenant, *_send_args(message)))

    @property
    def sends_async(self) -> bool:
        """True when ``send_async`` awaits the store (rather than holding up the loop)."""
        return self._one_step is not None

    async def send_async(self, tenant: str, req: dict[str, Any]) -> dict[str, Any]:
        """Send without an Idempotency-Key, awaiting the store: with a one-step store the
        event loop serves other requests while this one waits on the database. The answer
        still comes only once the message committed."""
        store = self._one_step
        if store is None:
            return self.call("Send", tenant, req)
        message = self._new_message(req)
        return _sent(message, await store.send_message_async(tenant, *_send_args(message)))

    def _new_message(self, req: dict[str, Any]) -> Message:
        ns = time.time_ns()
        return {
            "id": self.new_message_id(ns),
            "client": req["client"] or str(uuid.uuid4()),
            "room_id": req["room_id"],  # the room's id: rooms are found by exact id
            "user_id": req["user_id"],
            "sent_at": rfc3339(ns),
            "subject": req["subject"],
            "text": req["text"],
        }

    def _kick(self, tenant: str, req: dict[str, Any], effects: _Effects) -> dict[str, Any]:
        return self._remove(tenant, req, effects, "kicked", "chat.kick", "user was kicked")

    def _leave(self, tenant: str, req: dict[str, Any], effects: _Effects) -> dict[str, Any]:
        return self._remove(tenant, req, effects, "left", "chat.leave", "user left the room")

    def _remove(
        self,
        tenant: str,
        req: dict[str, Any],
        effects: _Effects,
        event: str,
        endpoint_id: str,
        detail: str,
    ) -> dict[str, Any]:
        room = self._room(tenant, req["room_id"])
        user_id = req["user_id"]
        removed = self.store.remove_member(room, user_id)
        if event == "kicked":
            self.store.set_barred(room, user_id, True)
        frame = error_frame(endpoint_id, 403, detail)

        def fan_out() -> None:
            self.hub.end_user(tenant, room.id, user_id, CLOSE_FORBIDDEN, frame, detail)
            if removed:
                self._event(event, room, user_id)

        effects.append(fan_out)
        return {"room": _room_json(room, self.store.members(room))}

    def history(self, tenant: str, req: dict[str, Any]) -> dict[str, Any]:
        room = self._room(tenant, req["room_id"])
        if room.private and not (req["user_id"] and self.store.is_member(room, req["user_id"])):
            raise RulesError(403, "private room: user_id must name a member of the room")
        after = self._cursor(room, "after", req["after"])
        before = self._cursor(room, "before", req["before"], before=True)
        limit: int | None = min(req["limit"], self.limits.max_history_page) or None
        rows = self.store.messages(
            room,
            after_seq=after,
            before_seq=before,
            limit=limit,
            latest=limit is not None and after is None,
        )
        return {"messages": [_message_json(room.id, row) for row in rows]}

    def list_rooms(self, tenant: str, req: dict[str, Any]) -> dict[str, Any]:
        user_id = req["user_id"] or None
        rooms = self.store.list_rooms(tenant, user_id)
        return {"rooms": [_room_json(room, members) for room, members in rooms]}

    # -- Join ---------------------------------------------------------------------------

    def join(self, tenant: str, req: dict[str, Any]) -> Admission:
        """Admit a Join stream (adding the user on a public room) or raise RulesError.

        The caller subscribes to the hub right after this returns, before awaiting
        anything, then replays with ``replay``.
        """
        room = self._room(tenant, req["room_id"])
        user_id = req["user_id"]
        since_seq = None
        if req["since"]:
            since_seq = self._cursor(room, "since", req["since"])
            assert since_seq is not None
            cap = self.limits.max_replay
            if self.store.count_messages_after(room, since_seq, cap + 1) > cap:
                raise RulesError(
                    400,
                    f"more than {cap} messages since {req['since']} (max_replay);"
                    " read them with History",
                )
        with self.store.transaction():
            if not self.store.is_member(room, user_id):
                if room.private:
                    raise RulesError(403, "private room: the user must be invited first")
                if self.store.is_barred(room, user_id):
                    raise RulesError(403, "user was kicked from the room; invite them again")
                self._check_room_size(room)
                self.store.add_member(room, user_id)
            if self.hub.transactional:
                self._event("joined", room, user_id)  # sent with the commit, as every change
        if not self.hub.transactional:
            self._event("joined", room, user_id)
        return Admission(
            room,
            user_id,
            bool(req["events"]),
            since_seq,
            min(req["history"], self.limits.max_replay),
            bool(req.get("include_own")),
        )

    def replay(self, admission: Admission) -> Iterator[list[tuple[int, str]]]:
        """The frames a new stream replays, in chunks of (seq, frame), oldest first.

        A ``since`` replay reads until the store has nothing newer, so messages stored
        while earlier chunks were being sent are included; the caller then drops live
        frames whose seq it has already replayed.
        """
        room = admission.room
        if admission.since_seq is not None:
            after = admission.since_seq
            while True:
                rows = self.store.messages(room, after_seq=after, limit=REPLAY_CHUNK)
                if not rows:
                    return
                yield [(row.seq, message_frame(room.id, row)) for row in rows]
                after = rows[-1].seq
        elif admission.history:
            rows = self.store.messages(room, limit=admission.history, latest=True)
            if rows:
                yield [(row.seq, message_frame(room.id, row)) for row in rows]

    # -- helpers ------------------------------------------------------------------------

    def _room(self, tenant: str, room_id: str) -> RoomRow:
        room = self.store.get_room(tenant, room_id)
        if room is None:
            raise RulesError(404, "room not found")
        return room

    def _cursor(
        self, room: RoomRow, name: str, message_id: str, *, before: bool = False
    ) -> int | None:
        """A cursor as a seq bound: messages after it (or, with ``before``, before it).

        An id is a position: a UUID that is no message of the room (a time turned into a
        UUIDv7, or the nil UUID for "from the start") falls between the messages whose
        ids sort around it.
        """
        if not message_id:
            return None
        if not _UUID.match(message_id):
            raise RulesError(400, f"{name} must be a message id (a UUID)")
        cursor = message_id.lower()
        seq = self.store.message_seq(room, cursor)
        if seq is not None:
            return seq
        position = self.store.message_position(room, cursor)
        return position + 1 if before else position

    def _check_room_size(self, room: RoomRow) -> None:
        bound = self.limits.max_members_per_room
        if self.store.count_members(room) >= bound:
            raise RulesError(400, f"the room is full: at most {bound} users (max_members_per_room)")

    def _event(self, kind: str, room: RoomRow, user_id: str) -> None:
        event: Event = {
            "type": kind,
            "room_id": room.id,
            "user_id": user_id,
            "at": rfc3339(time.time_ns()),
        }
        self.hub.publish_event(room.tenant, room.id, encode({"event": event}), user_id)

    def _maybe_purge(self, now: float) -> None:
        # Expired keys are ignored on read; deleting them hourly only bounds the table.
        if now >= self._next_purge:
            self.store.purge_idempotency(now - IDEMPOTENCY_TTL)
            self._next_purge = now + 3600.0


def _send_args(message: Message) -> tuple[str, str, str, str, str, str, str]:
    """A message as ``OneStepSend.send_message`` takes it, after the tenant."""
    return (
        message["room_id"],
        message["id"],
        message["client"],
        message["user_id"],
        message["sent_at"],
        message["subject"],
        message["text"],
    )


def _sent(message: Message, outcome: tuple[bool, int | None] | None) -> dict[str, Any]:
    """A one-step Send's answer, or its refusal."""
    if outcome is None:
        raise RulesError(404, "room not found")
    private, seq = outcome
    if seq is None:
        raise RulesError(403 if private else 400, "user is not in the room")
    return {"message": message}


def _room_json(room: RoomRow, members: list[str]) -> dict[str, Any]:
    out: Room = {
        "id": room.id,
        "name": room.name,
        "description": room.description,
        "created_at": room.created_at,
        "user_ids": members,
        "private": room.private,
    }
    return dict(out)


def message_frame(room_id: str, row: MessageRow) -> str:
    """A stored message as a Join frame: ``{"message": {...}}``, compact."""
    return encode({"message": _message_json(room_id, row)})


def _message_json(room_id: str, row: MessageRow) -> dict[str, Any]:
    out: Message = {
        "id": row.id,
        "client": row.client,
        "room_id": room_id,
        "user_id": row.user_id,
        "sent_at": row.sent_at,
        "subject": row.subject,
        "text": row.text,
    }
    return dict(out)
