"""Membership commands: invite, kick, leave."""

from typing import Annotated

import typer

from chatctl.cli import complete, run
from chatctl.cli.context import Invocation, invocation
from chatctl.cli.options import RoomArg, user_option, with_common_options

app = typer.Typer()

UsersArg = Annotated[
    list[str] | None,
    typer.Argument(
        help="One or more user ids.", show_default=False, autocompletion=complete.members
    ),
]
NewUsersArg = Annotated[
    list[str] | None,
    typer.Argument(
        help="One or more user ids.", show_default=False, autocompletion=complete.non_members
    ),
]


def _per_user(
    inv: Invocation, endpoint: str, room: str | None, users: list[str] | None
) -> list[run.Call]:
    return run.build_requests(inv, endpoint, {}, room=room, each=("user_id", users or []))


@app.command()
@with_common_options
def invite(ctx: typer.Context, room: RoomArg = None, users: NewUsersArg = None) -> None:
    """Invite users to a room (one call per user).

    Example: chatctl invite general bob carol
    """
    inv = invocation(ctx)
    calls = _per_user(inv, "Invite", room, users)
    run.call_all(inv, "Invite", calls, total=len(calls))


@app.command()
@with_common_options
def kick(
    ctx: typer.Context,
    room: RoomArg = None,
    users: UsersArg = None,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
) -> None:
    """Kick users from a room (one call per user); their live streams end at once.

    Example: chatctl kick general carol --yes
    """
    from chatctl.output import visible

    inv = invocation(ctx)
    calls = _per_user(inv, "Kick", room, users)
    who = ", ".join(visible(c.body.get("user_id")) for c in calls)
    run.confirm_destruction(inv, f"kick {who} from {visible(room or 'the room')}", yes)
    run.call_all(inv, "Kick", calls, total=len(calls))


@app.command()
@with_common_options
def leave(
    ctx: typer.Context,
    room: RoomArg = None,
    user: Annotated[
        str | None,
        user_option("Who leaves (default: you).", autocompletion=complete.members),
    ] = None,
) -> None:
    """Leave a room.

    Example: chatctl leave general --user bob
    """
    inv = invocation(ctx)
    calls = run.build_requests(
        inv, "Leave", {"user_id": user}, {"user_id": inv.acting_user(user)}, room=room
    )
    run.call_all(inv, "Leave", calls, total=len(calls))
