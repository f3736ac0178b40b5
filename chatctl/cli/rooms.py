"""Room commands: create, delete, list, retain."""

from typing import Annotated

import typer

from chatctl.cli import complete, run
from chatctl.cli.context import invocation
from chatctl.cli.options import user_option, with_common_options

app = typer.Typer()


@app.command()
@with_common_options
def create(
    ctx: typer.Context,
    name: Annotated[
        str | None, typer.Argument(help="Name of the new room.", show_default=False)
    ] = None,
    description: Annotated[
        str | None, typer.Option("--description", "-d", help="What the room is for.")
    ] = None,
    user: Annotated[
        list[str] | None,
        user_option("A user allowed in the room (repeatable)."),
    ] = None,
    private: Annotated[
        bool | None,
        typer.Option(
            "--private",
            help="Invite only: Join, Send and History need membership.",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Create a room.

    Example: chatctl create ops -d "on call" -u alice -u bob --private
    """
    inv = invocation(ctx)
    calls = run.build_requests(
        inv,
        "Create",
        {"name": name, "description": description, "user_ids": user or None, "private": private},
    )
    run.call_all(inv, "Create", calls, total=len(calls))


@app.command()
@with_common_options
def delete(
    ctx: typer.Context,
    rooms: Annotated[
        list[str] | None,
        typer.Argument(
            help="Rooms to delete, by id or name.",
            show_default=False,
            autocompletion=complete.rooms,
        ),
    ] = None,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
) -> None:
    """Delete rooms and all their messages.

    Example: chatctl delete ops --yes
    Example: chatctl list -o id | xargs chatctl delete --yes
    """
    from chatctl.output import visible

    inv = invocation(ctx)
    calls = run.build_requests(inv, "Delete", {}, each=("room_id", rooms or []))
    if len(calls) == 1:
        room = rooms[0] if rooms else calls[0].body["room_id"]
        what = f"delete room {visible(room)} and all its messages"
    else:
        what = f"delete {len(calls)} rooms and all their messages"
    run.confirm_destruction(inv, what, yes)
    run.call_all(inv, "Delete", calls, total=len(calls))


@app.command("list")
@with_common_options
def list_rooms(
    ctx: typer.Context,
    user: Annotated[
        str | None,
        user_option("Only rooms this user is a member of."),
    ] = None,
) -> None:
    """List rooms.

    Example: chatctl list --user alice -o tsv | cut -f2
    """
    inv = invocation(ctx)
    calls = run.build_requests(inv, "List", {"user_id": user})
    run.call_all(inv, "List", calls, total=len(calls))


@app.command()
@with_common_options
def retain(
    ctx: typer.Context,
    room: Annotated[
        str,
        typer.Argument(
            help="The room, by id or name.", show_default=False, autocompletion=complete.rooms
        ),
    ],
    duration: Annotated[
        str | None,
        typer.Argument(
            help="Keep its messages this long (30d, 12h, 90m, 1d12h), or off for the"
            " server's own. Leave out to show the setting.",
            metavar="[DURATION|off]",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Set how long a room keeps its messages, or show it (its creator or an admin token).

    Older messages are removed within the server's --retain-check; the server's --retain
    is a ceiling a room may only shorten. A client resuming or paging from before what
    is kept is told of the gap. Needs chatctl's server: another m3o server cannot (exit 2).

    Example: chatctl create archive -u alice -o id && chatctl retain archive 30d

    Example: chatctl retain archive -o json
    """
    from chatctl.cli import plain
    from chatctl.errors import UsageError
    from chatctl.schema import RETENTION
    from chatctl.wire import parse_duration

    inv = invocation(ctx)
    if duration is not None and duration.strip().lower() != "off":
        try:
            parse_duration(duration)
        except ValueError as exc:
            raise UsageError(f"DURATION: {exc}; or off") from None
    calls = run.build_requests(inv, "Retain", {"retain": duration or ""}, room=room)
    if not inv.client.facts(inv.acting_user()).has(RETENTION):
        raise plain.unsupported(inv, "retain", RETENTION)
    run.call_all(inv, "Retain", calls, total=1)
