"""The chat rules: what each endpoint does, with no HTTP and no database in sight.

``ChatService`` has one method per endpoint. Each takes the tenant (whose rooms: the
token's, see ``tokens``), a request already checked by ``schema.validate_request`` (and,
for a user token, bound to its user: ``access.bind``), and the actor (``tokens.Principal``;
None means an admin of the tenant, as every m3o token was), and returns m3o's answer,
encoded (``wire``): every field present, snake_case. A refusal is a ``domain`` error
(``NotFound``, ``Forbidden``, ``Invalid``, ``Conflict``) carrying m3o's detail; the edge
maps it to an HTTP status, and the streams a change ends get the refusal a Join would now
get (``decode.streams_ended`` makes its frame and close code): the statuses below are
that mapping's, none is written here. The rules are written once against ``store.Store``,
awaiting it, and never ask which database is behind it.

Rules beyond m3o (contract part 2), and the choices this server makes where it is silent:

- Who may do what (contract part 3): ``access.authorize`` once the room is loaded, in the
  same transaction as the change (Delete, Invite, Kick, Leave); Create records a user
  token's user as the room's creator; List shows a user token only what
  ``access.visible`` allows. Admin tokens are never asked anything more than on m3o.
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
  The user an event is about does not get it on their own streams. Create tells each
  member's every-room streams (JoinRooms ``all``) of the room with a ``created`` note,
  never sent as an event: no Join of a room can be open before it exists, and the
  members a room starts with are its state, not a change of it.
- DeleteMessage (extension ``delete-message``): by the message's author, the room's
  creator or an admin token (``access.authorize``). The row stays with its text and
  subject erased (its id and seq remain a position, so every cursor stays exact), every
  read leaves it out (History, replays, a limit counts only what is left), and streams
  that asked for events get ``message_deleted``. Deleting it again answers the same,
  changes nothing and tells no one.
- Messages: stored (committed) before they are acknowledged or fanned out; ids are UUIDv7;
  one total order per room (the store's seq); History oldest first.
- History pagination: ``limit`` alone gives the latest N; with ``after``, the first N after
  it; with ``before``, the latest N before it. ``limit`` above ``max_history_page`` is
  lowered to it; 0 means no limit. Without a limit History answers every message, as m3o
  did, but read and sent ``HISTORY_CHUNK`` at a time, up to the room's last message when
  it was asked. A cursor (``before``, ``after``, Join's ``since``) is a message id, and an
  id is a position: a UUID that is no message of the room resolves by id order (UUIDv7
  sorts in time), so the nil UUID means "from the start" and a time can be a cursor.
  Anything but a UUID is 400.
- Join's ``since`` wins over ``history`` when both are given. A replay includes the
  joiner's own messages (it is the room's history); only live frames skip them. More than
  ``max_replay`` messages after ``since`` is 400: read them with History instead.
- Idempotency-Key: a successful answer is kept with its key, in the same transaction as
  the change, so a retry after a crash can never apply it twice. Errors are not kept
  (nothing changed, so repeating is already safe). The same key with another endpoint or
  body is 409.
- Count limits (rooms per tenant, members per room) are 400 with a detail naming the limit;
  413 is kept for bodies over ``max_body_bytes``.
- Quotas (``quotas``): on a server with tokens, a user token's rooms, the members it adds
  to a room it did not create, and its message bytes a day; a tenant's message bytes a
  day. Over one: 403 with a detail naming the quota, its figure and its flag.
- A new user id (Create's ``user_ids``, Invite's, a Join that adds the user to a public
  room) and a new room name hold only visible characters, and no id holds ','
  (``schema.unseen_character``): 400 naming the rule. Ids already in a room keep working
  (Send, Leave, Kick, History, a member's Join): nothing was rewritten.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from chatctl.schema import Limits, unseen_character
from chatctl.server import access, importer, retention
from chatctl.server.decode import streams_ended
from chatctl.server.domain import (
    EventNote,
    Forbidden,
    Invalid,
    Key,
    MessageRow,
    NewMessage,
    NotFound,
    Refused,
    RoomRow,
    erased_message,
)
from chatctl.server.quotas import (
    ByteMeter,
    Charge,
    invites_refusal,
    message_bytes,
    rooms_refusal,
)
from chatctl.server.sql import Session
from chatctl.server.store import SendResult, Store
from chatctl.server.tokens import OPEN, Principal
from chatctl.wire import (
    encode,
    event_frame,
    is_uuid,
    message_frame,
    random_uuid,
    rfc3339,
    room_object,
)

__all__ = ["HISTORY_CHUNK", "IDEMPOTENCY_TTL", "Admission", "Answer", "ChatService"]

IDEMPOTENCY_TTL = 24 * 3600.0
#: messages read from the store per step of a ``since`` replay.
REPLAY_CHUNK = 500
#: messages read from the store per step of a History without a limit.
HISTORY_CHUNK = 250

#: an answer: the encoded JSON, or (a History of any size) its parts, to send in turn.
Answer = str | AsyncIterator[str]
_Change = Callable[[Session, str, dict[str, Any], Principal | None], Awaitable[str]]


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
    #: the cursor ``since_seq`` was read from, as given ("" for none).
    since: str = ""
    #: the frame sent before the replay when ``since`` is older than what the room keeps
    #: (``retention.gap``).
    gap: str | None = None


@dataclass(frozen=True, slots=True)
class RoomsAdmission:
    """A stream of many rooms the rules accepted (``JoinRooms``)."""

    user_id: str
    #: the rooms admitted, each replayed as a Join of it would be.
    rooms: list[Admission]
    #: the rooms of ``room_ids`` refused, each with why (the stream says so and goes on).
    refused: list[tuple[str, Refused]]


class ChatService:
    """The endpoints of the Chat API over a store (Whoami is the edge's)."""

    def __init__(self, store: Store, limits: Limits | None = None) -> None:
        self.store = store
        self.limits = limits or Limits()
        #: the byte quotas' counts (``quotas``); ``sync_quotas`` keeps them in the store.
        self.meter = ByteMeter(self.limits)
        #: the server's ``--retain`` in seconds (None: messages are kept forever unless
        #: their room says otherwise): ``retention``.
        self.retain: int | None = None
        self._changes: dict[str, _Change] = {
            "Create": self._create,
            "Delete": self._delete,
            "Invite": self._invite,
            "Kick": self._kick,
            "Leave": self._leave,
            "Retain": self._retain,
            "Import": self._import,
            "DeleteMessage": self._delete_message,
        }

    # -- the unary endpoints ------------------------------------------------------------

    async def call(
        self,
        endpoint: str,
        tenant: str,
        request: dict[str, Any],
        idempotency_key: str | None = None,
        *,
        actor: Principal | None = None,
    ) -> Answer:
        """Answer one unary call by endpoint name (``Send``); the edge's single entry.
        History needs nothing of the actor beyond ``access.bind``; Send, its byte quota."""
        if endpoint == "Send":
            return await self.send(tenant, request, idempotency_key, actor=actor)
        if endpoint == "History":
            return await self.history(tenant, request)
        if endpoint == "List":
            return await self.list_rooms(tenant, request, actor)
        change = self._changes.get(endpoint)
        if change is None:
            raise NotFound(f"{endpoint} is not a unary endpoint")
        key = self._key(tenant, endpoint, request, idempotency_key)

        async def work(db: Session) -> str:
            if key is not None:
                prior = await db.claim_key(key)
                if prior is not None:
                    return prior
            answer = await change(db, tenant, request, actor)
            if key is not None:
                await db.keep_answer(key, answer)
            return answer

        return await self.store.write(work)

    @staticmethod
    def _key(tenant: str, endpoint: str, request: dict[str, Any], key: str | None) -> Key | None:
        if key is None:
            return None
        request_hash = hashlib.sha256(
            json.dumps(request, sort_keys=True).encode("utf-8", "surrogatepass")
        ).hexdigest()
        now = time.time()
        return Key(tenant, key, endpoint, request_hash, now, now - IDEMPOTENCY_TTL)

    async def forget_expired_keys(self) -> int:
        """Delete keys past their 24 h (they are ignored on read; this bounds the table),
        and the byte quotas' counts of days gone by."""

        async def purge(db: Session) -> int:
            await db.purge_daily_bytes(ByteMeter.oldest_kept())
            return await db.purge_keys(time.time() - IDEMPOTENCY_TTL)

        return await self.store.write(purge)

    async def sync_quotas(self) -> None:
        """Keep the byte quotas' counts in the store (``quotas.ByteMeter.sync``)."""
        await self.meter.sync(self.store.write)

    async def send(
        self,
        tenant: str,
        req: dict[str, Any],
        key: str | None = None,
        *,
        actor: Principal | None = None,
    ) -> str:
        new = _new_message(req)
        sending = self._key(tenant, "Send", req, key)
        try:
            charge = await self._charge(tenant, new, actor)
        except Forbidden:
            kept = await self._kept_answer(sending)
            if kept is None:
                raise
            return kept
        try:
            sent = await self.store.send(tenant, new, sending)
        except BaseException:
            self._refund(charge)
            raise
        if not sent.stored:
            self._refund(charge)
        if sent.answer is None:
            raise _send_refusal(sent)
        return sent.answer

    async def _charge(self, tenant: str, new: NewMessage, actor: Principal | None) -> Charge | None:
        """Count a message against the byte quotas (Forbidden when over one); None on an
        open server or for the rules' own callers (no actor), which have none."""
        if actor is None or actor is OPEN:
            return None
        size = message_bytes(new.text, new.subject)
        return await self.meter.charge(self.store.read, tenant, actor.user or "", size)

    def _refund(self, charge: Charge | None) -> None:
        if charge is not None:
            self.meter.refund(charge)

    async def _kept_answer(self, key: Key | None) -> str | None:
        """For a Send over a quota: its key's first answer, if that Send was stored before,
        so that a retry is answered as the first try was (and counted once)."""
        if key is None:
            return None

        async def kept(db: Session) -> str | None:
            return await db.kept_answer(key)

        return await self.store.read(kept)

    async def send_many(
        self,
        tenant: str,
        requests: Sequence[tuple[dict[str, Any], str | None]],
        *,
        stop: bool = False,
        actor: Principal | None = None,
    ) -> list[str | Refused]:
        """Several Sends (each request with its own Idempotency-Key, if any) in one
        transaction, in order: each one's answer, or its refusal; with ``stop``, none is
        done after the first refusal, and the list ends with it (bulk sends). A Send over
        a byte quota is refused as it would be alone."""
        outcomes: list[str | Refused | None] = []  # None: handed to the store, in order
        batch: list[tuple[NewMessage, Key | None]] = []
        charges: list[Charge | None] = []
        for req, key in requests:
            new = _new_message(req)
            sending = self._key(tenant, "Send", req, key)
            try:
                charges.append(await self._charge(tenant, new, actor))
            except Refused as over:
                try:
                    kept: str | Refused | None = await self._kept_answer(sending)
                except Refused as conflict:  # the key was used with another request
                    kept = conflict
                outcomes.append(over if kept is None else kept)
                if stop and not isinstance(kept, str):
                    break
                continue
            outcomes.append(None)
            batch.append((new, sending))
        try:
            results = await self.store.send_many(tenant, batch, stop=stop) if batch else []
        except BaseException:
            for charge in charges:
                self._refund(charge)
            raise
        for i, charge in enumerate(charges):
            if i >= len(results) or not results[i].stored:
                self._refund(charge)
        answers: list[str | Refused] = []
        stored = iter(results)
        for outcome in outcomes:
            if outcome is None:
                result = next(stored, None)
                if result is None:  # the store stopped at an earlier refusal
                    break
                answers.append(_send_refusal(result) if result.answer is None else result.answer)
                if stop and result.answer is None:
                    break
            else:
                answers.append(outcome)
        return answers

    async def _create(
        self, db: Session, tenant: str, req: dict[str, Any], actor: Principal | None
    ) -> str:
        limits = self.limits
        user_ids = list(dict.fromkeys(req["user_ids"]))  # m3o's "unless present", in order
        if len(user_ids) > limits.max_members_per_room:
            raise Invalid(
                f"too many users: a room holds at most {limits.max_members_per_room}"
                " (max_members_per_room)"
            )
        user = None if actor is None else actor.user
        if user is not None and await db.count_rooms_created(tenant, user) >= (
            limits.rooms_per_user
        ):
            raise rooms_refusal(limits, user)
        if await db.count_rooms(tenant) >= limits.max_rooms_per_tenant:
            raise Invalid(
                f"too many rooms: at most {limits.max_rooms_per_tenant} per tenant"
                " (max_rooms_per_tenant)"
            )
        room = await db.create_room(
            tenant,
            str(uuid.uuid4()),
            req["name"],
            req["description"],
            rfc3339(time.time_ns()),
            req["private"],
            user_ids,
            None if actor is None else access.creator_of(actor),
        )
        # Each member's every-room streams (JoinRooms ``all``) follow the room from now on,
        # on every replica, as after an invite; no stream gets it as an event (``hub``).
        for user_id in user_ids:
            frame = event_frame("created", room.id, user_id, room.created_at)
            db.publish(EventNote(tenant, room.id, frame, user_id))
        return _room_answer(room, user_ids)

    async def _delete(
        self, db: Session, tenant: str, req: dict[str, Any], actor: Principal | None
    ) -> str:
        room = await self._room(db, tenant, req["room_id"])
        await _authorize(db, actor, "Delete", req, room)
        members = await db.members(room)
        await db.delete_room(room)
        _event(db, "deleted", room, "")
        db.publish(streams_ended(tenant, room.id, None, "Delete", NotFound("room deleted")))
        return _room_answer(room, members)

    async def _retain(
        self, db: Session, tenant: str, req: dict[str, Any], actor: Principal | None
    ) -> str:
        room = await self._room(db, tenant, req["room_id"])
        await _authorize(db, actor, "Retain", req, room)
        return await retention.retain_change(db, room, req["retain"], self.retain)

    async def _import(
        self, db: Session, tenant: str, req: dict[str, Any], actor: Principal | None
    ) -> str:
        room = await self._room(db, tenant, req["room_id"])
        await _authorize(db, actor, "Import", req, room)
        return await importer.import_messages(db, room, req["messages"], self.limits)

    async def _invite(
        self, db: Session, tenant: str, req: dict[str, Any], actor: Principal | None
    ) -> str:
        room = await self._room(db, tenant, req["room_id"])
        await _authorize(db, actor, "Invite", req, room)
        user_id = req["user_id"]
        await db.set_barred(room, user_id, False)
        if not await db.is_member(room, user_id):
            inviter = None if actor is None else actor.user
            if (
                inviter is not None
                and inviter != room.creator
                and await db.count_invited_by(room, inviter) >= self.limits.invites_per_user
            ):
                raise invites_refusal(self.limits, inviter)
            await self._check_room_size(db, room)
            await db.add_member(room, user_id, inviter)
            _event(db, "invited", room, user_id)
        return _room_answer(room, await db.members(room))

    async def _kick(
        self, db: Session, tenant: str, req: dict[str, Any], actor: Principal | None
    ) -> str:
        return await self._remove(db, tenant, req, actor, "Kick", "kicked", "user was kicked")

    async def _leave(
        self, db: Session, tenant: str, req: dict[str, Any], actor: Principal | None
    ) -> str:
        return await self._remove(db, tenant, req, actor, "Leave", "left", "user left the room")

    async def _remove(
        self,
        db: Session,
        tenant: str,
        req: dict[str, Any],
        actor: Principal | None,
        endpoint: str,
        event: str,
        detail: str,
    ) -> str:
        room = await self._room(db, tenant, req["room_id"])
        await _authorize(db, actor, endpoint, req, room)
        user_id = req["user_id"]
        removed = await db.remove_member(room, user_id)
        if event == "kicked":
            await db.set_barred(room, user_id, True)
        db.publish(streams_ended(tenant, room.id, user_id, endpoint, Forbidden(detail)))
        if removed:
            _event(db, event, room, user_id)
        return _room_answer(room, await db.members(room))

    async def _delete_message(
        self, db: Session, tenant: str, req: dict[str, Any], actor: Principal | None
    ) -> str:
        room = await self._room(db, tenant, req["room_id"])
        message_id = req["message_id"]
        if not is_uuid(message_id):
            raise Invalid("message_id must be a message id (a UUID)")
        found = await db.find_message(room, message_id.lower())
        if found is None:
            raise NotFound("message not found")
        message, _ = found
        await _authorize(db, actor, "DeleteMessage", req, room, message.user_id)
        # Deleting a deleted message changes nothing and answers the same: a retry
        # without its Idempotency-Key (or by someone else) is safe, and tells no one twice.
        at = rfc3339(time.time_ns())
        if await db.erase_message(room, message, at):
            frame = event_frame("message_deleted", room.id, message.user_id, at, message.id)
            # Every stream that asked for events, the author's own included: another
            # of their tails may have printed it.
            db.publish(EventNote(tenant, room.id, frame, ""))
        return message_frame(erased_message(message).to_wire(room.id))

    async def history(self, tenant: str, req: dict[str, Any]) -> Answer:
        limit: int | None = min(req["limit"], self.limits.max_history_page) or None

        gaps: list[dict[str, Any]] = []

        async def first(db: Session) -> tuple[RoomRow, int | None, list[MessageRow]]:
            gaps.clear()
            room = await self._room(db, tenant, req["room_id"])
            if room.private and not (req["user_id"] and await db.is_member(room, req["user_id"])):
                raise Forbidden("private room: user_id must name a member of the room")
            after = await self._cursor(db, room, "after", req["after"], gaps=gaps)
            before = await self._cursor(db, room, "before", req["before"], before=True, gaps=gaps)
            if limit is None and before is None:
                # Every message up to the last one now: a long answer ends somewhere.
                before = await db.last_seq(room) + 1
            rows = await db.messages(
                room,
                after_seq=after,
                before_seq=before,
                limit=limit or HISTORY_CHUNK,
                latest=limit is not None and after is None,
            )
            return room, before, rows

        room, before, rows = await self.store.read(first)
        # A cursor older than what the room keeps: the gap, after the messages (a reader
        # of a streamed History finds ``{"messages": [`` first, as ever).
        end = "]}" if not gaps else '],"gap":' + encode(gaps[0]) + "}"
        if limit is not None or len(rows) < HISTORY_CHUNK:
            return '{"messages":[' + _messages_json(room.id, rows) + end
        return self._history_parts(room, before, rows, end)

    async def _history_parts(
        self, room: RoomRow, before: int | None, rows: list[MessageRow], end: str = "]}"
    ) -> AsyncIterator[str]:
        """A long History's JSON in parts: each read of the store is one part, so the
        answer's memory and the time the event loop is held do not grow with the room."""
        yield '{"messages":[' + _messages_json(room.id, rows)
        while len(rows) == HISTORY_CHUNK:
            after = rows[-1].seq

            async def more(db: Session, after: int = after) -> list[MessageRow]:
                return await db.messages(
                    room, after_seq=after, before_seq=before, limit=HISTORY_CHUNK
                )

            rows = await self.store.read(more)
            if rows:
                yield "," + _messages_json(room.id, rows)
        yield end

    async def list_rooms(
        self, tenant: str, req: dict[str, Any], actor: Principal | None = None
    ) -> str:
        async def rooms(db: Session) -> list[tuple[RoomRow, list[str]]]:
            return await db.list_rooms(tenant, req["user_id"] or None)

        found = await self.store.read(rooms)
        if actor is not None and actor.user is not None:
            # A user token sees public rooms and the private ones its user is in or made.
            found = [
                (room, members)
                for room, members in found
                if access.visible(
                    actor, access.RoomFacts(room.private, room.creator, actor.user in members)
                )
            ]
        listed = [_room_object(room, members) for room, members in found]
        return encode({"rooms": listed})

    # -- Join ---------------------------------------------------------------------------

    async def join(self, tenant: str, req: dict[str, Any]) -> Admission:
        """Admit a Join stream (adding the user on a public room), or refuse it.

        The caller subscribes to the hub right after this returns, before awaiting
        anything, then replays with ``replay``.
        """

        async def admit(db: Session) -> Admission:
            return await self._admit(db, tenant, req, req["room_id"], req["since"])

        return await self.store.write(admit)

    async def join_rooms(self, tenant: str, req: dict[str, Any]) -> RoomsAdmission:
        """Admit a stream of many rooms (``JoinRooms``): each of ``room_ids`` as a Join of
        it would be (a room refused is left out and said, the others go on), and with
        ``all`` every other room the user is in, replayed after ``all_since``. Only a
        request that names no room, or too many, is refused as a whole."""
        room_ids: list[str] = req["room_ids"]
        since_ids: list[str] = req["since_ids"] or [""] * len(room_ids)
        if len(since_ids) != len(room_ids):
            raise Invalid("since_ids must hold one cursor for each room of room_ids, in its order")
        bound = self.limits.max_rooms_per_tenant
        if len(room_ids) > bound:
            raise Invalid(f"at most {bound} rooms a stream (max_rooms_per_tenant)")
        every_room = bool(req["all"])
        if not room_ids and not every_room:
            raise Invalid("missing room ids: give room_ids, or all")
        user_id = req["user_id"]

        async def admit(db: Session) -> RoomsAdmission:
            rooms: list[Admission] = []
            refused: list[tuple[str, Refused]] = []
            wanted = dict(zip(room_ids, since_ids, strict=True))
            for room_id, since in wanted.items():
                try:
                    rooms.append(await self._admit(db, tenant, req, room_id, since, quiet=True))
                except Refused as exc:
                    refused.append((room_id, exc))
            if every_room:
                for room, _members in await db.list_rooms(tenant, user_id):
                    if room.id in wanted:
                        continue
                    if len(rooms) >= bound:
                        break
                    try:
                        rooms.append(
                            await self._admit(
                                db, tenant, req, room.id, req["all_since"], quiet=True, room=room
                            )
                        )
                    except Refused as exc:  # e.g. more than max_replay to replay
                        refused.append((room.id, exc))
            return RoomsAdmission(user_id, rooms, refused)

        return await self.store.write(admit)

    async def room(self, tenant: str, room_id: str) -> RoomRow | None:
        """The room, if it still exists."""

        async def read(db: Session) -> RoomRow | None:
            return await db.get_room(tenant, room_id)

        return await self.store.read(read)

    async def _admit(
        self,
        db: Session,
        tenant: str,
        req: dict[str, Any],
        room_id: str,
        since: str,
        *,
        quiet: bool = False,
        room: RoomRow | None = None,
    ) -> Admission:
        """One room's Join: its since as a seq (within ``max_replay``), the user added on
        a public room; ``quiet``: a member's "joined" event only when they were added."""
        if room is None:
            room = await self._room(db, tenant, room_id)
        user_id = req["user_id"]
        since_seq = None
        gaps: list[dict[str, Any]] = []
        if since:
            since_seq = await self._cursor(db, room, "since", since, gaps=gaps)
            assert since_seq is not None
            cap = self.limits.max_replay
            if await db.count_messages_after(room, since_seq, cap + 1) > cap:
                raise Invalid(
                    f"more than {cap} messages since {since} (max_replay); read them with History"
                )
        added = False
        if not await db.is_member(room, user_id):
            if room.private:
                raise Forbidden("private room: the user must be invited first")
            if await db.is_barred(room, user_id):
                raise Forbidden("user was kicked from the room; invite them again")
            unseen = unseen_character(user_id, "id", "user_id")
            if unseen is not None:  # a new member: only a member may keep such an id
                raise Invalid(unseen)
            await self._check_room_size(db, room)
            await db.add_member(room, user_id)
            added = True
        if added or not quiet:
            _event(db, "joined", room, user_id)
        return Admission(
            room,
            user_id,
            bool(req["events"]),
            since_seq,
            min(req.get("history", 0), self.limits.max_replay),
            bool(req.get("include_own")),
            since,
            encode({"event": gaps[0]}) if gaps else None,
        )

    async def from_cursor(self, admission: Admission, cursor: str) -> Admission:
        """The stream replaying every message after ``cursor`` instead (a time as a
        UUIDv7): what reached it by no notification while its room was not yet heard
        (``hub.Hub.hearing``)."""

        async def read(db: Session) -> int | None:
            return await self._cursor(db, admission.room, "since", cursor)

        seq = await self.store.read(read)
        return dataclasses.replace(admission, since_seq=seq, history=0, gap=None)

    async def replay(self, admission: Admission) -> AsyncIterator[list[tuple[int, str]]]:
        """The frames a new stream replays, in chunks of (seq, frame), oldest first.

        A ``since`` replay reads until the store has nothing newer, so messages stored
        while earlier chunks were being sent are included; the caller then drops live
        frames whose seq it has already replayed.
        """
        room = admission.room
        if admission.gap is not None:
            yield [(0, admission.gap)]  # seq 0: not a message, as events are
        if admission.since_seq is not None:
            after = admission.since_seq
            while True:

                async def chunk(db: Session, after: int = after) -> list[MessageRow]:
                    return await db.messages(room, after_seq=after, limit=REPLAY_CHUNK)

                rows = await self.store.read(chunk)
                if not rows:
                    return
                yield [(row.seq, message_frame(row.to_wire(room.id))) for row in rows]
                after = rows[-1].seq
        elif admission.history:

            async def last(db: Session) -> list[MessageRow]:
                return await db.messages(room, limit=admission.history, latest=True)

            rows = await self.store.read(last)
            if rows:
                yield [(row.seq, message_frame(row.to_wire(room.id))) for row in rows]

    # -- helpers ------------------------------------------------------------------------

    @staticmethod
    async def _room(db: Session, tenant: str, room_id: str) -> RoomRow:
        room = await db.get_room(tenant, room_id)
        if room is None:
            raise NotFound("room not found")
        return room

    @staticmethod
    async def _cursor(
        db: Session,
        room: RoomRow,
        name: str,
        message_id: str,
        *,
        before: bool = False,
        gaps: list[dict[str, Any]] | None = None,
    ) -> int | None:
        """A cursor as a seq bound: messages after it (or, with ``before``, before it).

        An id is a position: a UUID that is no message of the room (a time turned into a
        UUIDv7, or the nil UUID for "from the start") falls between the messages whose
        ids sort around it. One older than what the room keeps adds its gap to ``gaps``
        (``retention.gap``).
        """
        if not message_id:
            return None
        if not is_uuid(message_id):
            raise Invalid(f"{name} must be a message id (a UUID)")
        cursor = message_id.lower()
        seq = await db.message_seq(room, cursor)
        if seq is not None:
            return seq
        if gaps is not None and not gaps:
            found = await retention.gap(db, room, cursor)
            if found is not None:
                gaps.append(found)
        position = await db.message_position(room, cursor)
        return position + 1 if before else position

    async def _check_room_size(self, db: Session, room: RoomRow) -> None:
        bound = self.limits.max_members_per_room
        if await db.count_members(room) >= bound:
            raise Invalid(f"the room is full: at most {bound} users (max_members_per_room)")


async def _authorize(
    db: Session,
    actor: Principal | None,
    endpoint: str,
    req: dict[str, Any],
    room: RoomRow,
    message_author: str | None = None,
) -> None:
    """Refuse what a user token may not do to this room (``access.authorize``), with the
    facts read in the change's own transaction. Admin tokens: nothing to ask."""
    if actor is None or actor.user is None:
        return
    facts = access.RoomFacts(
        room.private,
        room.creator,
        actor_is_member=await db.is_member(room, actor.user),
        target_barred=endpoint == "Invite" and await db.is_barred(room, req["user_id"]),
        message_author=message_author,
    )
    access.authorize(actor, endpoint, req, facts)


def _new_message(req: dict[str, Any]) -> NewMessage:
    return NewMessage(
        req["room_id"],  # the room's id: rooms are found by exact id
        req["user_id"],
        req["client"] or random_uuid(),  # m3o filled in a random UUID
        req["subject"],
        req["text"],
    )


def _send_refusal(sent: SendResult) -> Refused:
    """Why a Send stored nothing."""
    if sent.refusal is not None:
        return sent.refusal
    if not sent.room_found:
        return NotFound("room not found")
    return (Forbidden if sent.private else Invalid)("user is not in the room")


def _event(db: Session, kind: str, room: RoomRow, user_id: str) -> None:
    frame = event_frame(kind, room.id, user_id, rfc3339(time.time_ns()))
    db.publish(EventNote(room.tenant, room.id, frame, user_id))


def _room_object(room: RoomRow, members: list[str]) -> dict[str, Any]:
    return room_object(room.id, room.name, room.description, room.created_at, members, room.private)


def _room_answer(room: RoomRow, members: list[str]) -> str:
    return encode({"room": _room_object(room, members)})


def _messages_json(room_id: str, rows: list[MessageRow]) -> str:
    """Messages as the items of a JSON array, without its brackets."""
    return encode([row.to_wire(room_id) for row in rows])[1:-1]
