"""``chatctl serve``: run the chat server, or look after the embedded local one.

Cheap to import (the root app imports it on every run): the server, uvicorn and
Starlette are imported only inside the command, when it serves.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from chatctl.errors import ExitStatus, UsageError
from chatctl.schema import Limits

__all__ = ["serve"]

_LISTEN = "Listening and access"


_LIMIT_HELP = {
    "max_body_bytes": "Largest request body or Join frame, in bytes (413, or close 1009).",
    "max_text_bytes": "Longest message text, in UTF-8 bytes.",
    "max_name_bytes": "Longest room name, in UTF-8 bytes.",
    "max_description_bytes": "Longest room description, in UTF-8 bytes.",
    "max_subject_bytes": "Longest message subject, in UTF-8 bytes.",
    "max_user_id_bytes": "Longest user id, in UTF-8 bytes.",
    "max_client_bytes": "Longest client label, in UTF-8 bytes.",
    "max_rooms_per_tenant": "Most rooms one token may hold.",
    "max_members_per_room": "Most users one room may hold.",
    "max_history_page": "Most messages one History call returns.",
    "max_replay": "Most messages a Join replays before going live.",
}


def _with_limit_options(command: Callable[..., None]) -> Callable[..., None]:
    """Give the command one ``--max-…`` option per field of ``Limits``, gathered into the
    ``limits`` argument: a new limit in the schema becomes a flag with nothing else to do."""
    defaults = Limits()
    options = [
        inspect.Parameter(
            field.name,
            inspect.Parameter.KEYWORD_ONLY,
            default=None,
            annotation=Annotated[
                int | None,
                typer.Option(
                    "--" + field.name.replace("_", "-"),
                    help=_LIMIT_HELP.get(field.name, field.name.replace("_", " ").capitalize())
                    + f" Default: {getattr(defaults, field.name)}.",
                    min=1,
                    metavar="N",
                    show_default=False,
                    rich_help_panel="Limits",
                ),
            ],
        )
        for field in dataclasses.fields(Limits)
    ]
    names = [option.name for option in options]

    @functools.wraps(command)
    def with_limits(**given: Any) -> None:
        chosen = {name: value for name in names if (value := given.pop(name)) is not None}
        command(**given, limits=dataclasses.replace(defaults, **chosen))

    own = inspect.signature(command, eval_str=True).parameters.values()
    with_limits.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
        [p for p in own if p.name != "limits"] + options
    )
    return with_limits


class LogLevel(enum.StrEnum):
    critical = "critical"
    error = "error"
    warning = "warning"
    info = "info"
    debug = "debug"


@_with_limit_options
def serve(
    host: Annotated[
        str,
        typer.Option(
            help="Address to listen on. Anything but loopback needs --token or --tokens-file.",
            rich_help_panel=_LISTEN,
        ),
    ] = "127.0.0.1",
    port: Annotated[
        int, typer.Option(help="TCP port to listen on.", min=0, max=65535, rich_help_panel=_LISTEN)
    ] = 8080,
    uds: Annotated[
        Path | None,
        typer.Option(
            help="Listen on this Unix socket instead of TCP (made mode 0600).",
            metavar="PATH",
            show_default=False,
            rich_help_panel=_LISTEN,
        ),
    ] = None,
    db: Annotated[
        str | None,
        typer.Option(
            help="SQLite database file, created mode 0600, or a postgresql:// URL shared by "
            "several replicas (needs chatctl[postgres]). Default: chat.db in the user's "
            "data dir (~/.local/share/chatctl on Linux).",
            metavar="PATH|URL",
            show_default=False,
        ),
    ] = None,
    token: Annotated[
        list[str] | None,
        typer.Option(
            "--token",
            help="Accept this bearer token (repeatable); each token is its own tenant. "
            "Prefer --tokens-file: a command line is visible to other users.",
            show_default=False,
            rich_help_panel=_LISTEN,
        ),
    ] = None,
    tokens_file: Annotated[
        Path | None,
        typer.Option(
            help="Accept the tokens in this file: one per line, # starts a comment.",
            metavar="PATH",
            show_default=False,
            rich_help_panel=_LISTEN,
        ),
    ] = None,
    db_timeout: Annotated[
        float,
        typer.Option(
            help="Seconds a call may wait on the database (PostgreSQL not answering, a "
            "SQLite file another process holds) before it answers 503.",
            min=0.1,
            metavar="SECONDS",
        ),
    ] = 5.0,
    log_level: Annotated[
        LogLevel, typer.Option(help="How much to log to stderr. Tokens are never logged.")
    ] = LogLevel.info,
    status: Annotated[
        bool,
        typer.Option(
            "--status",
            help="Say whether the embedded local server runs (exit 0) or not (exit 3), "
            "with its pid, socket, database and log.",
            rich_help_panel="Embedded local server",
        ),
    ] = False,
    stop: Annotated[
        bool,
        typer.Option(
            "--stop",
            help="Stop the embedded local server; its streams close with 1001 so clients resume.",
            rich_help_panel="Embedded local server",
        ),
    ] = False,
    idle_exit: Annotated[
        float | None,
        typer.Option(
            help="Exit after this many seconds with nothing open.", hidden=True, min=0.001
        ),
    ] = None,
    pid_file: Annotated[
        Path | None, typer.Option(help="Write the server's pid here.", hidden=True)
    ] = None,
    limits: Limits | None = None,
) -> None:
    """Serve the m3o Chat API over HTTP and WebSocket until SIGTERM or Ctrl-C.

    Any m3o client works against it with only its base URL changed.

    On 127.0.0.1 no token is needed; elsewhere give tokens, one tenant each.

    On SIGTERM it closes live streams with 1001 (clients resume) and exits 0.

    Without --url, the other commands start a private local server themselves;
    --status and --stop look after that one.

    Example: chatctl serve --host 0.0.0.0 --tokens-file ~/.config/chatctl/tokens
    """
    if status and stop:
        raise UsageError("--status and --stop cannot be used together")
    if status:
        _print_status()
        return
    if stop:
        _stop()
        return

    from chatctl.local import default_db_path
    from chatctl.server.config import ServerConfig
    from chatctl.server.serve import read_tokens_file, run_server

    tokens = set(token or ())
    if tokens_file is not None:
        tokens |= read_tokens_file(tokens_file)
    if "" in tokens:
        raise UsageError("--token cannot be empty")
    config = ServerConfig(
        db=db if db is not None else str(default_db_path()),
        tokens=frozenset(tokens),
        limits=limits or Limits(),
        idle_exit=idle_exit,
        db_timeout=db_timeout,
    )
    run_server(
        config,
        host=host,
        port=port,
        uds=None if uds is None else str(uds),
        log_level=log_level.value,
        pid_file=None if pid_file is None else str(pid_file),
    )


def _print_status() -> None:
    from chatctl.local import local_server_status

    found = local_server_status()
    state = f"running (pid {found.pid})" if found.running else "not running"
    typer.echo(f"local server: {state}")
    typer.echo(f"socket: {found.socket}")
    typer.echo(f"db: {found.db}")
    typer.echo(f"log: {found.log}")
    if not found.running:
        raise typer.Exit(int(ExitStatus.UNREACHABLE))


def _stop() -> None:
    from chatctl.local import stop_local_server

    pid = stop_local_server()
    if pid is None:
        typer.echo("the local server was not running", err=True)
    else:
        typer.echo(f"stopped the local server (pid {pid})", err=True)
