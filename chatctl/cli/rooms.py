"""Room commands: create, delete, list."""

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
