"""Room commands: create, delete, list."""

from typing import Annotated

import typer

from chatctl.cli import complete, run
from chatctl.cli.options import with_common_options

app = typer.Typer()


@app.command()
@with_common_options
def create(
    name: Annotated[
        str | None, typer.Argument(help="Name of the new room.", show_default=False)
    ] = None,
    description: Annotated[
        str | None, typer.Option("--description", "-d", help="What the room is for.")
    ] = None,
    user: Annotated[
        list[str] | None,
        typer.Option(
            "--user", "-u", help="A user allowed in the room (repeatable).", show_default=False
        ),
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

    Example: chatctl create general -d "The general chat room" -u alice -u bob
    """
    requests = run.build_requests(
        "Create",
        {"name": name, "description": description, "user_ids": user or None, "private": private},
    )
    run.call_all("Create", requests, total=len(requests))


@app.command()
@with_common_options
def delete(
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

    Example: chatctl list -o id | xargs chatctl delete --yes
    """
    requests = run.build_requests("Delete", {}, each=("room_id", rooms or []))
    if len(requests) == 1:
        what = f"delete room {rooms[0] if rooms else requests[0]['room_id']} and all its messages"
    else:
        what = f"delete {len(requests)} rooms and all their messages"
    run.confirm_destruction(what, yes)
    run.call_all("Delete", requests, total=len(requests))


@app.command("list")
@with_common_options
def list_rooms(
    user: Annotated[
        str | None,
        typer.Option(
            "--user", "-u", help="Only rooms this user is a member of.", show_default=False
        ),
    ] = None,
) -> None:
    """List rooms.

    Example: chatctl list --user alice -o tsv | cut -f2
    """
    requests = run.build_requests("List", {"user_id": user})
    run.call_all("List", requests, total=len(requests))
