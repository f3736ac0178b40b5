"""Import (issue 26, contract part 3 "Import"): messages stored with their own ids, times
and senders, so that a room moves between servers with its History unchanged.

An admin token's ``POST /v1/chat/Import`` carries up to ``MAX_IMPORT`` messages, oldest
first, as History answers them; each call is one transaction (all of it, or nothing):

- **Ids**: any UUID (chatctl's are UUIDv7; m3o's were random UUIDv4s), kept as they are
  (lowercase). An id the room already has with the same sender, time, text, subject and
  client is *skipped* (counted, not stored twice: an import run again changes nothing),
  and so is one the room has deleted (DeleteMessage: it stays deleted);
  with anything else different it collides: 409, nothing of the call stored.
- **Order**: a room's order is its seq, given as messages are stored, so they must come
  in time order and no earlier than the room's last message (409 otherwise: it conflicts
  with what the room holds): an import fills an empty room, or carries on after what a
  room has, never slots in between. Skipped messages are exempt, so a run cut short is
  simply run again.
- **Senders** need not be members (they may have left long ago); **times** are kept as
  written (any RFC 3339 form).
- Imported messages are history: not sent to live streams, not counted against byte
  quotas (an admin token's call).
"""

from __future__ import annotations

from typing import Any

from chatctl.schema import Limits
from chatctl.server.domain import Conflict, Invalid, MessageRow, RoomRow
from chatctl.server.sql import Session
from chatctl.wire import encode, is_uuid, parse_time

__all__ = ["MAX_IMPORT", "import_messages"]

#: messages one Import call may carry.
MAX_IMPORT = 1000

#: (field, the Limits attribute bounding it, required)
_FIELDS = (
    ("user_id", "max_user_id_chars", True),
    ("text", "max_text_chars", False),
    ("subject", "max_subject_chars", False),
    ("client", "max_client_chars", False),
)


def _checked(item: dict[str, Any], i: int, limits: Limits) -> tuple[MessageRow, float]:
    """One message of the request as a row to store (seq 0) and its time; Invalid naming
    it by its place otherwise."""
    where = f"messages[{i}]"
    message_id = item.get("id")
    if not isinstance(message_id, str) or not is_uuid(message_id):
        raise Invalid(f"{where}: id must be a message id (a UUID)")
    values: dict[str, str] = {}
    for name, limit, required in _FIELDS:
        value = item.get(name)
        if value is None:
            value = ""
        if not isinstance(value, str):
            raise Invalid(f"{where}: {name} must be a string")
        if required and not value:
            raise Invalid(f"{where}: missing {name}")
        bound = getattr(limits, limit)
        if len(value) > bound:
            raise Invalid(f"{where}: {name} is longer than the limit of {bound} characters")
        values[name] = value
    sent_at = item.get("sent_at")
    stamp = parse_time(sent_at) if isinstance(sent_at, str) and len(sent_at) <= 64 else None
    if stamp is None or not isinstance(sent_at, str):
        raise Invalid(f"{where}: sent_at must be an RFC 3339 time")
    row = MessageRow(
        0,
        message_id.lower(),
        values["client"],
        values["user_id"],
        sent_at,
        values["subject"],
        values["text"],
    )
    return row, stamp


def _same(a: MessageRow, b: MessageRow) -> bool:
    return (a.client, a.user_id, a.sent_at, a.subject, a.text) == (
        b.client,
        b.user_id,
        b.sent_at,
        b.subject,
        b.text,
    )


async def import_messages(
    db: Session, room: RoomRow, items: list[dict[str, Any]], limits: Limits
) -> str:
    """Store ``items`` in ``room`` (one transaction: the caller's write); the answer."""
    if len(items) > MAX_IMPORT:
        raise Invalid(f"at most {MAX_IMPORT} messages in one Import")
    checked = [_checked(item, i, limits) for i, item in enumerate(items)]
    last_sent = await db.last_sent(room)
    last = None if last_sent is None else parse_time(last_sent)
    stored = skipped = 0
    for i, (row, stamp) in enumerate(checked):
        found = await db.find_message(room, row.id)
        if found is not None:
            there, deleted = found
            if not deleted and not _same(there, row):
                raise Conflict(
                    f"messages[{i}]: id {row.id} is already in the room with other content"
                )
            skipped += 1
            continue
        if last is not None and stamp < last:
            raise Conflict(
                f"messages[{i}]: sent at {row.sent_at}, before the room's last message"
                f" ({last_sent}): import in time order, after what the room has"
            )
        await db.insert_imported(room, row)
        last, last_sent = stamp, row.sent_at
        stored += 1
    return encode({"imported": {"room_id": room.id, "stored": stored, "skipped": skipped}})
