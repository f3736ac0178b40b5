"""m3o's two editions on one server: which one a request speaks, and its answer in it.

m3o's seed edition names a room ``room_id`` / ``room`` / ``rooms``; its final edition
renamed them ``group_id`` / ``group`` / ``groups`` and changed nothing else (contract part
4). This server speaks both (contract part 3, "Both editions"):

- A request that names ``group_id`` is in the group edition and is answered in it: its
  answer's keys, the ``group_id`` of its messages and of its Join stream's frames, and
  the words of its errors (``missing group id``, ``group not found``, ``user is not in
  the group``), with this server's own statuses (404, 403) kept. One that names
  ``room_id`` is in the seed's, answered exactly as before. Naming both is refused.
- Create and List name neither: they are answered in the server's edition
  (``chatctl serve --m3o-edition``): ``both`` by default, ``{"room": R, "group": R}`` and
  ``{"rooms": […], "groups": […]}``, which every client of either edition reads; ``room``
  or ``group`` for exactly one edition's shape. A request missing its id is worded in
  that edition too (``both`` words it as the seed did).
- Nothing is stored per edition: the rules and stores work in the seed's names, and the
  edge renames an answer on its way out (``wire.in_group_edition``), so a message sent in
  one edition reads the same in the other, an Idempotency-Key's first answer comes back
  in the edition of the retry, and the extensions work the same in both.

A request in the seed's edition (the hot path) costs one dict lookup here.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any, Final, Literal

from chatctl.schema import Endpoint
from chatctl.wire import encode, group_wording, in_both_editions, in_group_edition

__all__ = [
    "BOTH",
    "EDITIONS",
    "GROUP",
    "ROOM",
    "Edition",
    "answer_in",
    "end_frame_in",
    "request_edition",
    "worded_in",
]

Edition = Literal["room", "group", "both"]
ROOM: Final = "room"
GROUP: Final = "group"
#: the server's default: Create and List answer with both editions' keys.
BOTH: Final = "both"
EDITIONS: tuple[Edition, ...] = (ROOM, GROUP, BOTH)


def request_edition(endpoint: Endpoint, body: Any, default: Edition) -> Edition:
    """The edition a request is answered in: ``group`` when it names ``group_id``,
    ``room`` when it names ``room_id`` (or both, which validation refuses in the seed's
    words), else the server's ``default``."""
    if endpoint.names_room and isinstance(body, dict):
        if "room_id" in body:
            return ROOM
        if "group_id" in body:
            return GROUP
    return default


def answer_in(edition: Edition, answer: str | AsyncIterator[str]) -> str | AsyncIterator[str]:
    """An answer of the rules (made in the seed's names), or a History's parts, in
    ``edition``."""
    if edition == ROOM:
        return answer
    if isinstance(answer, str):
        return in_group_edition(answer) if edition == GROUP else in_both_editions(answer)
    return _parts_in_group_edition(answer) if edition == GROUP else answer


async def _parts_in_group_edition(parts: AsyncIterator[str]) -> AsyncIterator[str]:
    # A History's parts are cut between messages, never inside a key.
    async for part in parts:
        yield in_group_edition(part)


def worded_in(edition: Edition, detail: str) -> str:
    """A refusal's detail in ``edition``'s words (``missing group id``, ``group not
    found``): the one place the server rewords one, for a refusal (``decode.Refusal``)
    and for the end of a stream (``end_frame_in``, its close reason)."""
    if edition == GROUP and "room" in detail:
        return group_wording(detail)
    return detail


def end_frame_in(edition: Edition, frame: str) -> str:
    """The final frame of a stream (an error object: kicked, room deleted) in
    ``edition``'s words; once per stream, so decoding it is fine."""
    if edition != GROUP:
        return frame
    error: dict[str, Any] = json.loads(frame)
    if isinstance(error.get("detail"), str):
        error["detail"] = worded_in(edition, error["detail"])
    return encode(error)
