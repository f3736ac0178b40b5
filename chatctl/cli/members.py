"""Membership commands: invite, kick, leave."""

from typing import Annotated, Any

import typer

from chatctl.cli import complete, run
from chatctl.cli.options import RoomArg, with_common_options

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


def _per_user(endpoint: str, room: str | None, users: list[str] | None) -> list[dict[str, Any]]:
    return run.build_requests(endpoint, {}, room=room, each=("user_id", users or []))


@app.command()
@with_common_options
def invite(room: RoomArg = None, users: NewUsersArg = None) -> None:
    """Invite users to a room (one call per user).

    Example: chatctl invite general alice bob
    """
    requests = _per_user("Invite", room, users)
    run.call_all("Invite", requests, total=len(requests))


@app.command()
@with_common_options
def kick(
    room: RoomArg = None,
    users: UsersArg = None,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
) -> None:
    """Kick users from a room (one call per user); their live streams end at once.

    Example: chatctl kick general mallory --yes
    """
    requests = _per_user("Kick", room, users)
    who = ", ".join(str(r.get("user_id")) for r in requests)
    run.confirm_destruction(f"kick {who} from {room or 'the room'}", yes)
    run.call_all("Kick", requests, total=len(requests))


@app.command()
@with_common_options
def leave(
    room: RoomArg = None,
    user: Annotated[
        str | None,
        typer.Option(
            "--user",
            "-u",
            help="Who leaves (default: you).",
            show_default=False,
            autocompletion=complete.members,
        ),
    ] = None,
) -> None:
    """Leave a room.

    Example: chatctl leave general --user alice
    """
    requests = run.build_requests(
        "Leave", {"user_id": user}, {"user_id": run.acting_user(None)}, room=room
    )
    run.call_all("Leave", requests, total=len(requests))
