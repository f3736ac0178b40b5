"""Who may do what in a room: the authorization model of admin and user tokens.

Pure functions over facts, no store and no HTTP: the principal (``tokens.Principal``),
the endpoint, the request, and what the store knows of the room (``RoomFacts``). They
return the request as it will be carried out, or raise ``domain.Forbidden`` (403), the
same refusals the rules raise, mapped to statuses at the edge only. Contract:
``m3o-chat-api.md``, part 3, "Who may do what", which has the same rules as a table.

**Admin tokens** (every old-format token, ``tenant=NAME admin``, and the open server)
act as any user, as every m3o token did: nothing here refuses them.

**A user token** acts as its user U, in its tenant, and only as U:

- Every ``user_id`` that names the actor (Send, Join, History, Leave, DeleteMessage) must be U or
  absent; absent means U (``bind``). Naming anyone else is 403: a user token cannot
  send, read, join or leave as someone else.
- Create: U is the room's creator, and a member (added first to ``user_ids`` when not
  named). ``user_ids`` may name others: the creator may invite anyone anyway.
- Invite: U must be a member of the room, or its creator. A member may invite, as in
  most team chats' private channels: a member already reads everything and could pass it
  on, so inviting gives nothing away that membership has not. Undoing a kick (inviting a
  user the room barred) is moderation, and is the creator's (or an admin's) alone;
  otherwise any member could undo the creator's kick.
- Kick, Delete and Retain: only the room's creator (or an admin token). A creator may kick
  themself; anyone else leaves with Leave (which does not bar).
- DeleteMessage: the message's author or the room's creator (or an admin token): a
  moderator's power is the one who may kick; a member may take back their own message,
  even after leaving the room (it is still theirs), but no one else's.
- Leave: of oneself only; on a private room U must be in it (otherwise the answer, the
  room with its members, would show a private room to an outsider).
- List: public rooms, and private rooms U is in or created. ``user_id`` filters within
  those (it may name another user: it shows nothing U could not see already).
- Join, History and Send keep the rules that do not depend on the token (private rooms
  need membership, a kick bars rejoining, Send needs membership).

A room of another tenant does not exist for the actor: 404, whatever the token.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from chatctl.schema import ENDPOINTS
from chatctl.server.domain import Forbidden
from chatctl.server.tokens import NAMED_TENANT, OPEN, Principal

__all__ = [
    "RoomFacts",
    "authorize",
    "bind",
    "creator_of",
    "idempotency_scope",
    "visible",
    "whoami",
]


@dataclass(frozen=True, slots=True)
class RoomFacts:
    """What the store knows of a room, as far as the access rules need it."""

    private: bool
    #: the user whose token created the room; None when an admin token did (or the room
    #: predates creators being recorded): then only admin tokens may kick or delete.
    creator: str | None
    #: the actor's user is in ``user_ids`` (only asked for user tokens).
    actor_is_member: bool = False
    #: Invite: the invited user was kicked and is barred until invited again.
    target_barred: bool = False
    #: DeleteMessage: the user who sent the message.
    message_author: str | None = None


def bind(principal: Principal, endpoint: str, request: Mapping[str, Any]) -> dict[str, Any]:
    """The request with the actor's user filled in, or Forbidden when it names another.

    Works on a request as parsed (before validation: ``null`` or ``""`` count as absent,
    and a value of the wrong type is left for validation to refuse) and on a validated
    one alike. For an admin token the request is returned as it is.
    """
    out = dict(request)
    user = principal.user
    if user is None:
        return out
    declared = ENDPOINTS.get(endpoint)
    # ``user_id`` names the actor where the endpoint declares it (``schema.Endpoint.actor``:
    # Send, Join, History, Leave); for Invite and Kick it names the target, for List it
    # is a filter.
    if declared is not None and declared.actor:
        given = out.get("user_id")
        if given is None or given == "":
            out["user_id"] = user
        elif isinstance(given, str) and given != user:
            raise Forbidden(f"this token acts only as user {user}, not {given}")
    elif endpoint == "Create":
        members = out.get("user_ids")
        if members is None:
            out["user_ids"] = [user]
        elif isinstance(members, list) and user not in members:
            out["user_ids"] = [user, *members]
    return out


def creator_of(principal: Principal) -> str | None:
    """The creator Create records: the token's user; None for an admin token."""
    return principal.user


def authorize(
    principal: Principal, endpoint: str, request: Mapping[str, Any], room: RoomFacts
) -> None:
    """Refuse (Forbidden) what the actor may not do to this room.

    Call it with the request ``bind`` returned, once the room is known (a room of another
    tenant is not: the rules' NotFound); Create and List name no room and are not checked
    here (see ``bind`` and ``visible``).
    """
    user = principal.user
    if user is None:
        return
    creator = room.creator == user
    if endpoint == "Import":
        raise Forbidden("only an admin token may import messages")
    if endpoint in ("Delete", "Kick", "Retain") and not creator:
        verb = {"Delete": "delete the room", "Kick": "kick", "Retain": "set its retention"}[
            endpoint
        ]
        hint = "" if endpoint == "Delete" else " (to leave the room yourself, use Leave)"
        raise Forbidden(f"only the room's creator or an admin token may {verb}{hint}")
    if endpoint == "Invite":
        if room.target_barred and not creator:
            raise Forbidden(
                f"{request.get('user_id')} was kicked from the room: only its creator or an"
                " admin token may invite them back",
            )
        if not (room.actor_is_member or creator):
            raise Forbidden("only a member of the room (or its creator) may invite")
    if endpoint == "DeleteMessage" and not (creator or room.message_author == user):
        raise Forbidden(
            "only the message's author, the room's creator or an admin token may delete it"
        )
    if endpoint == "Leave" and room.private and not (room.actor_is_member or creator):
        raise Forbidden("private room: the user is not in it")


def visible(principal: Principal, room: RoomFacts) -> bool:
    """Whether List shows the room to the actor."""
    return (
        principal.user is None
        or not room.private
        or room.actor_is_member
        or room.creator == principal.user
    )


def idempotency_scope(principal: Principal, key: str) -> str:
    """The Idempotency-Key as stored. A user token's keys are its own: otherwise a user
    could replay another user's key and get back the answer to a call (a Delete, say)
    they were never allowed to make. Admin tokens keep the tenant's keys as before."""
    return key if principal.user is None else f"{principal.token_id}:{key}"


def whoami(principal: Principal) -> dict[str, Any]:
    """Who the token acts as, for Whoami (contract part 3), answered from the token alone:
    its tenant's name (``""`` for a token that is its own tenant, whose key is a hash, and
    on an open server), its user (``""`` for an admin token, which acts as anyone), whether
    it is an admin, and whether the server is open (no tokens). Never the token, nor any
    hash: a tenant keyed by one is unnamed."""
    tenant = principal.tenant
    return {
        "tenant": tenant[len(NAMED_TENANT) :] if tenant.startswith(NAMED_TENANT) else "",
        "user_id": principal.user or "",
        "admin": principal.admin,
        "open": principal == OPEN,
    }
