"""Dynamic shell completion: room names and ids, and room members, from the server.

The shell runs these on every TAB, so they answer fast or not at all: one List call that
must be answered within ``TIMEOUT`` seconds, no retries, and any failure offers nothing.
They never start the embedded local server: with no URL configured they ask it only when
it already runs.

Each callback takes the click context (to see the room and the connection options already
on the command line) and the word being completed, as Typer's ``autocompletion=`` expects.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import typer

if TYPE_CHECKING:
    from chatctl.client import Client

__all__ = ["TIMEOUT", "members", "non_members", "rooms"]

#: seconds the server has to answer before a completion gives up and offers nothing.
TIMEOUT = 0.3


def rooms(ctx: typer.Context, incomplete: str) -> list[tuple[str, str]]:
    """ROOM: room names (with descriptions); ids where a name is shared or an id is begun,
    or where the name holds characters a shell line cannot (controls, newlines)."""
    from chatctl.output import visible

    listed = _rooms(ctx)
    taken = set(_given(ctx, "rooms"))
    names = [str(r.get("name", "")) for r in listed]
    offers: list[tuple[str, str]] = []
    for room, name in zip(listed, names, strict=True):
        about = visible(room.get("description") or "")
        room_id = visible(room.get("id", ""))
        if visible(name) != name:
            offers.append((room_id, visible(name)))
            continue
        if name and names.count(name) == 1 and name not in taken:
            offers.append((name, about))
        if room_id not in taken and (names.count(name) > 1 or (incomplete and room_id)):
            offers.append((room_id, f"{name}: {about}" if about else name))
    return offers


def members(ctx: typer.Context, incomplete: str) -> list[str]:
    """USER of kick and leave: the members of the room named earlier on the line."""
    room = _room_named(ctx, _rooms(ctx))
    if room is None:
        return []
    return _fresh(ctx, room.get("user_ids") or [])


def non_members(ctx: typer.Context, incomplete: str) -> list[str]:
    """USER of invite: users of the other rooms who are not yet in this one."""
    listed = _rooms(ctx)
    room = _room_named(ctx, listed)
    if room is None:
        return []
    inside = set(room.get("user_ids") or [])
    known = {u for r in listed for u in (r.get("user_ids") or [])}
    return _fresh(ctx, sorted(known - inside))


def _fresh(ctx: typer.Context, users: Iterable[Any]) -> list[str]:
    from chatctl.output import visible

    typed = set(_given(ctx, "users"))
    return [str(u) for u in users if str(u) not in typed and visible(u) == str(u)]


def _given(ctx: typer.Context, name: str) -> list[str]:
    value = ctx.params.get(name)
    return [str(v) for v in value] if isinstance(value, list | tuple) else []


def _room_named(ctx: typer.Context, listed: list[dict[str, Any]]) -> dict[str, Any] | None:
    wanted = ctx.params.get("room")
    if not wanted:
        # While an option's value is being completed (leave ROOM --user <TAB>), click
        # leaves the arguments before it unparsed, in ctx.args.
        wanted = next((a for a in ctx.args if not a.startswith("-")), None)
    if not wanted:
        return None
    matches = [r for r in listed if wanted in (r.get("id"), r.get("name"))]
    return matches[0] if len(matches) == 1 else None


def _rooms(ctx: typer.Context) -> list[dict[str, Any]]:
    """The rooms List returns, or none when the server cannot answer in time."""
    try:
        url, token = _connection(ctx)
        if url is None:
            return []
        from chatctl.client import Client  # imported outside the server's time budget

        client = Client(url, token, timeout=TIMEOUT, retries=0)
    except Exception:  # a completion offers nothing rather than an error
        return []
    # The client's budget is a deadline every read and write checks: a dripping server
    # is cut off when it passes.
    return _list_rooms(client)


def _list_rooms(client: Client) -> list[dict[str, Any]]:
    from chatctl.schema import rooms_in

    try:
        with client:
            return rooms_in(client.call("List", {}))
    except Exception:
        return []


def _connection(ctx: typer.Context) -> tuple[str | None, str | None]:
    """The URL and token the command would use; no URL when only a stopped local server
    would answer (completion must not start one)."""
    from chatctl import config

    given: dict[str, Any] = {}
    level: Any = ctx
    while level is not None:  # the subcommand's options win over the root's
        for key in ("url", "token", "profile"):
            if given.get(key) is None:
                given[key] = level.params.get(key)
        level = level.parent
    settings = config.resolve(given["url"], given["token"], None, given["profile"])
    if settings.url is not None:
        return settings.url, settings.token
    from chatctl.local import local_server_status

    local = local_server_status()
    return (f"unix:{local.socket}" if local.running else None), settings.token
