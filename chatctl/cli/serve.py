"""``chatctl serve``: run the chat server, look after the embedded local one, and manage
the tokens a server accepts (``chatctl serve token add|list|revoke``), and bring a
database's schema up to date (``chatctl serve migrate``).

``serve`` is a group whose callback serves when no subcommand is given, so ``chatctl
serve [flags]`` works as it always did beside ``chatctl serve token …``.

Cheap to import (the root app imports it on every run): the server, uvicorn and
Starlette are imported only inside the command, when it serves.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import inspect
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from chatctl.cli.options import OutputOpt
from chatctl.errors import ExitStatus, UsageError
from chatctl.schema import Limits

__all__ = ["app", "migrate", "serve", "token_app"]

if TYPE_CHECKING:
    from chatctl.server.tokens import TokenLine, TokenRegistry

_LISTEN = "Listening and access"
_PER_TOKEN = "Per-token limits"
_CLIENTS = "Browsers and m3o clients"
_CONNECTIONS = "Connections"
_OBSERVE = "Logs and metrics"
_RETENTION = "Retention"
#: ServerConfig's defaults, repeated: the CLI does not import the server to show its help
#: (tests/faults/test_heads.py holds them equal).
DEFAULT_MAX_HEAD_BYTES = 64 * 1024
DEFAULT_MAX_PENDING_HEADS = 256


_LIMIT_HELP = {
    "max_body_bytes": "Largest request body or Join frame, in bytes (413, or close 1009).",
    "max_text_chars": "Longest message text, in characters (Unicode code points).",
    "max_name_chars": "Longest room name, in characters (Unicode code points).",
    "max_description_chars": "Longest room description, in characters (Unicode code points).",
    "max_subject_chars": "Longest message subject, in characters (Unicode code points).",
    "max_user_id_chars": "Longest user id, in characters (Unicode code points).",
    "max_client_chars": "Longest client label, in characters (Unicode code points).",
    "max_rooms_per_tenant": "Most rooms one tenant may hold (all its tokens together).",
    "max_members_per_room": "Most users one room may hold.",
    "max_history_page": "Most messages a History page returns (a larger limit is lowered to it;"
    " without a limit, History answers every message, sent in parts).",
    "max_replay": "Most messages a Join replays before going live.",
    "max_bytes_per_tenant_day": "Most message bytes (UTF-8 text and subject) one tenant may store"
    " per UTC day; over it, 403. Not on an open server.",
    "max_rooms_per_user": "Most rooms a user token's user may have created in its tenant; over"
    " it, 403. Default: half of --max-rooms-per-tenant.",
    "max_invites_per_user": "Most users a user token may add to one room it did not create"
    " (the creator is bound by --max-members-per-room only); over it, 403. Default: half of"
    " --max-members-per-room.",
    "max_bytes_per_user_day": "Most message bytes a user token's user may store in its tenant"
    " per UTC day; over it, 403. Default: half of --max-bytes-per-tenant-day.",
}


def _default_words(default: int | None) -> str:
    """A limit's default for its help; a quota without one says its own (a share)."""
    return "" if default is None else f" Default: {default}."


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
                    + _default_words(getattr(defaults, field.name)),
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
    # Before the field limits counted characters they were --max-…-bytes: hidden aliases, so
    # that a unit file written then keeps starting (a count of characters is never stricter).
    old_names = {
        name.removesuffix("chars") + "bytes": name for name in names if name.endswith("_chars")
    }
    options += [
        inspect.Parameter(
            old,
            inspect.Parameter.KEYWORD_ONLY,
            default=None,
            annotation=Annotated[
                int | None, typer.Option("--" + old.replace("_", "-"), min=1, hidden=True)
            ],
        )
        for old in old_names
    ]

    @functools.wraps(command)
    def with_limits(**given: Any) -> None:
        for old, name in old_names.items():
            value = given.pop(old)
            if given[name] is None:
                given[name] = value
        chosen = {name: value for name in names if (value := given.pop(name)) is not None}
        command(**given, limits=dataclasses.replace(defaults, **chosen))

    own = inspect.signature(command, eval_str=True).parameters.values()
    with_limits.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
        [p for p in own if p.name != "limits"] + options
    )
    return with_limits


class M3oEdition(enum.StrEnum):
    both = "both"
    room = "room"
    group = "group"


class LogFormat(enum.StrEnum):
    text = "text"
    json = "json"


class SyncMode(enum.StrEnum):
    full = "full"
    normal = "normal"


class NotifyMode(enum.StrEnum):
    auto = "auto"
    both = "both"
    rooms = "rooms"


class RecordedNotify(enum.StrEnum):
    both = "both"
    rooms = "rooms"


class LogLevel(enum.StrEnum):
    critical = "critical"
    error = "error"
    warning = "warning"
    info = "info"
    debug = "debug"


app = typer.Typer(
    name="serve",
    invoke_without_command=True,
    no_args_is_help=False,
    add_completion=False,
)
token_app = typer.Typer(
    name="token",
    no_args_is_help=True,
    help="Manage the tokens a server accepts: add a token (printed once; only its SHA-256 "
    "is stored), list them (no secrets), revoke one.\n\n"
    "A server serving the file picks up a change within a second, or at once on SIGHUP.\n\n"
    "Example: chatctl serve token list --tokens-file /etc/chatctl/tokens -o json",
)
app.add_typer(token_app, name="token")


@app.callback(invoke_without_command=True)
@_with_limit_options
def serve(
    ctx: typer.Context,
    host: Annotated[
        str,
        typer.Option(
            help="Address to listen on. Anything but loopback needs --token or --tokens-file "
            "(and, without --tls-cert, warns that tokens travel in clear text).",
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
            "several replicas (needs the postgres extra). Default: chat.db in the user's "
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
            "Hidden from ps once the server starts, but prefer --tokens-file: a command line "
            "stays in shell history and is visible to other users until then.",
            show_default=False,
            rich_help_panel=_LISTEN,
        ),
    ] = None,
    tokens_file: Annotated[
        Path | None,
        typer.Option(
            help="Accept the tokens in this file, one a line: TOKEN (an admin token, its own "
            "tenant), TOKEN tenant=NAME admin, TOKEN tenant=NAME user=ID (acts only as ID); "
            "sha256:HEX instead of TOKEN; # starts a comment. Re-read on SIGHUP and when it "
            "changes. See: chatctl serve token --help.",
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
    sync: Annotated[
        SyncMode | None,
        typer.Option(
            help="SQLite only: when a change is answered. full: once its commit is fsynced "
            "to disk, so it survives a power cut or kernel crash. normal: once it is in the "
            "OS page cache, faster on a slow disk; it survives the server's crash, but a "
            "power cut or kernel crash may lose the last changes already answered. "
            "Default: full.",
            show_default=False,
        ),
    ] = None,
    notify: Annotated[
        NotifyMode | None,
        typer.Option(
            help="PostgreSQL only: where replicas tell each other of changes. both: on "
            "each room's channel and on the one channel releases before 0.2.0 share, "
            "listening to both, so this replica serves beside such a release during a "
            "rolling upgrade. rooms: only on the channels of the rooms with streams, so "
            "a replica pays nothing for rooms it has no stream of; once no older release "
            "runs (see docs/deployment.md). auto (the default): what the database records: "
            "both after serve migrate upgraded one an older release made, until serve "
            "migrate --notify rooms; rooms otherwise.",
            show_default=False,
        ),
    ] = None,
    max_head_bytes: Annotated[
        int,
        typer.Option(
            help="Largest request head (request line and headers), counted as it arrives, "
            "before any token is read; over it: 431 and the connection closed.",
            min=1024,
            metavar="N",
            rich_help_panel=_CONNECTIONS,
        ),
    ] = DEFAULT_MAX_HEAD_BYTES,
    max_pending_heads: Annotated[
        int,
        typer.Option(
            help="Connections that may be waiting for their request head at once (opened, "
            "head not yet whole); past it, the one waiting longest is closed.",
            min=1,
            metavar="N",
            rich_help_panel=_CONNECTIONS,
        ),
    ] = DEFAULT_MAX_PENDING_HEADS,
    tls_cert: Annotated[
        Path | None,
        typer.Option(
            help="Serve https and wss with this certificate (PEM, the chain after it). "
            "Re-read with the key on SIGHUP.",
            metavar="FILE",
            show_default=False,
            rich_help_panel=_LISTEN,
        ),
    ] = None,
    tls_key: Annotated[
        Path | None,
        typer.Option(
            help="The certificate's private key (PEM, unencrypted), readable by its owner "
            "only (or by root and a group: mode 0640, owned by root).",
            metavar="FILE",
            show_default=False,
            rich_help_panel=_LISTEN,
        ),
    ] = None,
    rate_limit: Annotated[
        str | None,
        typer.Option(
            help="Requests each token may make, as N/s (or N/m, N/h), or off; over it: 429 "
            "with Retry-After. Join streams are not counted. Default: 50/s with tokens, off "
            "without.",
            metavar="RATE",
            show_default=False,
            rich_help_panel=_PER_TOKEN,
        ),
    ] = None,
    rate_burst: Annotated[
        int | None,
        typer.Option(
            help="Requests a token may make at once before --rate-limit holds it back. "
            "Default: 100, or twice the per-second rate given.",
            min=1,
            metavar="N",
            show_default=False,
            rich_help_panel=_PER_TOKEN,
        ),
    ] = None,
    max_streams_per_token: Annotated[
        int | None,
        typer.Option(
            help="Join streams one token may hold open at once (0: no cap). Default: 100 "
            "with tokens, no cap without.",
            min=0,
            metavar="N",
            show_default=False,
            rich_help_panel=_PER_TOKEN,
        ),
    ] = None,
    replicas: Annotated[
        int,
        typer.Option(
            help="This server is one of N replicas behind one address that spreads each "
            "request over them in turn (nginx, Caddy, HAProxy in HTTP mode): each enforces 1/N "
            "of --rate-limit, --rate-burst and --max-streams-per-token (rounded up), so a "
            "token's budget is one server's. Give every replica the same N.",
            min=1,
            metavar="N",
            rich_help_panel=_PER_TOKEN,
        ),
    ] = 1,
    cors_origin: Annotated[
        list[str] | None,
        typer.Option(
            "--cors-origin",
            help="Let web pages of this origin call the server (repeatable): "
            "scheme://host[:port] as the browser shows it, or * for any page. Tokens go in "
            "the Authorization header (a WebSocket's as its subprotocol), never in cookies. "
            "A Join WebSocket from another browser origin is refused.",
            metavar="ORIGIN",
            show_default=False,
            rich_help_panel=_CLIENTS,
        ),
    ] = None,
    m3o_edition: Annotated[
        M3oEdition,
        typer.Option(
            "--m3o-edition",
            help="The m3o edition Create and List answer in (they name neither room nor "
            "group): both (a room and a group key, which clients of either edition read), "
            "room (the seed's) or group (m3o's final). Calls naming room_id or group_id "
            "are answered in their own edition whatever this says.",
            rich_help_panel=_CLIENTS,
        ),
    ] = M3oEdition.both,
    log_level: Annotated[
        LogLevel, typer.Option(help="How much to log to stderr. Tokens are never logged.")
    ] = LogLevel.info,
    log_format: Annotated[
        LogFormat,
        typer.Option(
            help="text: one line a record (UTC times); json: one JSON object a line, an "
            "access line's fields by name (client, request_id, tenant, user, token id, "
            "method, path, status, ms).",
            rich_help_panel=_OBSERVE,
        ),
    ] = LogFormat.text,
    proxy_headers: Annotated[
        bool,
        typer.Option(
            "--proxy-headers",
            help="Behind a proxy: the client address logged is the one the proxy names in "
            "X-Forwarded-For (X-Forwarded-Proto its scheme), believed only from "
            "--forwarded-allow-ips.",
            rich_help_panel=_OBSERVE,
        ),
    ] = False,
    forwarded_allow_ips: Annotated[
        str | None,
        typer.Option(
            help="Comma-separated proxy addresses or networks whose X-Forwarded-For is "
            "believed, or * (any: only when nothing else can reach the port). Default: "
            "127.0.0.1.",
            metavar="ADDRS",
            show_default=False,
            rich_help_panel=_OBSERVE,
        ),
    ] = None,
    metrics: Annotated[
        bool,
        typer.Option(
            "--metrics",
            help="Serve GET /metrics in Prometheus's text format (counts and times only: "
            "no room, user, tenant or token). Off by default: anyone who reaches the "
            "port may read it.",
            rich_help_panel=_OBSERVE,
        ),
    ] = False,
    retain: Annotated[
        str | None,
        typer.Option(
            help="Keep messages this long (30d, 12h, 1d12h), then remove them, in every room;"
            " a room may keep less (chatctl retain). Default: forever.",
            metavar="DURATION",
            show_default=False,
            rich_help_panel=_RETENTION,
        ),
    ] = None,
    retain_check: Annotated[
        float,
        typer.Option(
            help="Seconds between looks for messages past their retention.",
            min=0.01,
            metavar="SECONDS",
            rich_help_panel=_RETENTION,
        ),
    ] = 60.0,
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
        Path | None,
        typer.Option(
            help="Write the server's pid to this file (mode 0600) once it is bound, and remove "
            "it at exit (for a supervisor without systemd; under systemd use Type=notify).",
            metavar="PATH",
            show_default=False,
        ),
    ] = None,
    limits: Limits | None = None,
) -> None:
    """Serve the m3o Chat API over HTTP and WebSocket until SIGTERM or Ctrl-C.

    Any m3o client works against it with only its base URL changed.

    On 127.0.0.1 no token is needed; elsewhere give tokens (chatctl serve token add).

    Admin tokens act as any user of their tenant; user tokens only as their own user.

    On SIGTERM it closes live streams with 1001 (clients resume) and exits 0.

    On SIGHUP it re-reads the tokens file (read also when it changes) and TLS certificate.

    It binds its port before it opens the database, and tells systemd when it is ready
    (Type=notify); docs/deployment.md has a unit.

    Without --url, the other commands start a private local server themselves;
    --status and --stop look after that one.

    Example: chatctl serve --host 0.0.0.0 --tokens-file tokens --tls-cert c.pem --tls-key k.pem

    Example: chatctl serve --tokens-file tokens --cors-origin https://app.example.com
    """
    if ctx.invoked_subcommand is not None:
        _no_serving_options(ctx)
        return
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
    from chatctl.server.serve import run_server
    from chatctl.server.store import is_postgres_url

    db = db if db is not None else str(default_db_path())
    if sync is not None and is_postgres_url(db):
        raise UsageError(
            "--sync is for a SQLite database; PostgreSQL's own synchronous_commit decides"
            " when a commit is durable"
        )
    if notify is not None and not is_postgres_url(db):
        raise UsageError(
            "--notify is for a PostgreSQL database, where replicas tell each other of changes"
        )
    registry = _registry(token or [], tokens_file)
    per_token = _per_token_limits(
        registry is not None, rate_limit, rate_burst, max_streams_per_token
    )
    config = ServerConfig(
        db=db,
        limits=limits or Limits(),
        idle_exit=idle_exit,
        db_timeout=db_timeout,
        sync=(sync or SyncMode.full).value,
        notify=(notify or NotifyMode.auto).value,
        registry=registry,
        **per_token,
        replicas=replicas,
        tls_cert=None if tls_cert is None else str(tls_cert),
        tls_key=None if tls_key is None else str(tls_key),
        cors_origins=_cors_origins(cors_origin or []),
        m3o_edition=m3o_edition.value,
        max_head_bytes=max_head_bytes,
        max_pending_heads=max_pending_heads,
        metrics=metrics,
        retain=_retain_seconds(retain),
        retain_check=retain_check,
    )
    if forwarded_allow_ips is not None and not proxy_headers:
        raise UsageError("--forwarded-allow-ips goes with --proxy-headers: give both")
    run_server(
        config,
        host=host,
        port=port,
        uds=None if uds is None else str(uds),
        log_level=log_level.value,
        pid_file=None if pid_file is None else str(pid_file),
        log_format=log_format.value,
        proxy_headers=proxy_headers,
        forwarded_allow_ips=forwarded_allow_ips,
    )


def _retain_seconds(retain: str | None) -> int | None:
    """--retain in seconds; a usage error names a bad one."""
    from chatctl.wire import parse_duration

    if retain is None or retain.strip().lower() in ("off", "forever"):
        return None
    try:
        return parse_duration(retain)
    except ValueError as exc:
        raise UsageError(f"--retain: {exc}") from None


def _cors_origins(given: list[str]) -> tuple[str, ...]:
    """--cors-origin values as browsers send an Origin; a usage error names a bad one."""
    from chatctl.server.cors import parse_origin

    origins: list[str] = []
    for text in given:
        try:
            origin = parse_origin(text)
        except ValueError as exc:
            raise UsageError(f"--cors-origin: {exc}") from None
        if origin not in origins:
            origins.append(origin)
    return tuple(origins)


def _no_serving_options(ctx: typer.Context) -> None:
    """``chatctl serve --port 1 token list``: the serving flags would do nothing; say so."""
    for param in ctx.command.params:
        source = ctx.get_parameter_source(param.name or "")
        if source is not None and source.name in ("COMMANDLINE", "ENVIRONMENT"):
            raise UsageError(
                f"{param.opts[0]} is an option of chatctl serve itself, not of"
                f" chatctl serve {ctx.invoked_subcommand}"
            )


def _registry(tokens: list[str], tokens_file: Path | None) -> TokenRegistry | None:
    """The tokens the server accepts; None for an open server (neither --token nor
    --tokens-file). A tokens file with no token yet refuses everyone until one is added
    (the server reads it again when it changes)."""
    from chatctl.server.tokens import TokenRegistry, check_file_mode

    mode = None
    if tokens_file is not None:
        mode = check_file_mode(tokens_file)  # refuses a file others may write
    registry = TokenRegistry(tokens_file, tokens)
    if registry.open:
        return None
    if not registry.lines:
        typer.echo(
            f"warning: tokens file {tokens_file} holds no token yet: every call is refused"
            f" (401) until one is added: chatctl serve token add --tokens-file {tokens_file}",
            err=True,
        )
    if (
        tokens_file is not None
        and mode is not None
        and mode & 0o004
        and any(line.clear for line in registry.lines if line.line)
    ):
        typer.echo(
            f"warning: tokens file {tokens_file} holds tokens in clear and others can read"
            f" it (mode {mode:04o}): chmod 600 {tokens_file}, or keep only sha256: lines"
            " (chatctl serve token add writes them)",
            err=True,
        )
    return registry


def _per_token_limits(
    tokens: bool, rate_limit: str | None, burst: int | None, max_streams: int | None
) -> dict[str, Any]:
    """The ServerConfig fields of the per-token limits, defaults applied: on for a server
    with tokens, off for an open one (the embedded local server)."""
    import math

    from chatctl.server.config import (
        DEFAULT_MAX_STREAMS_PER_TOKEN,
        DEFAULT_RATE_BURST,
        DEFAULT_RATE_LIMIT,
    )
    from chatctl.server.ratelimit import parse_rate

    if rate_limit is None:
        rate = DEFAULT_RATE_LIMIT if tokens else None
        default_burst = DEFAULT_RATE_BURST
    else:
        try:
            rate = parse_rate(rate_limit)
        except ValueError as exc:
            raise UsageError(f"--rate-limit: {exc}") from None
        default_burst = max(1, math.ceil(2 * rate)) if rate else DEFAULT_RATE_BURST
    if burst is not None and rate is None:
        raise UsageError("--rate-burst needs a rate: give --rate-limit N/s too")
    if max_streams is None:
        max_streams = DEFAULT_MAX_STREAMS_PER_TOKEN if tokens else 0
    return {
        "rate_limit": rate,
        "rate_burst": burst if burst is not None else default_burst,
        "max_streams_per_token": max_streams or None,
    }


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


# -- chatctl serve migrate ----------------------------------------------------------------


@app.command("migrate")
def migrate(
    db: Annotated[
        str | None,
        typer.Option(
            help="The database, as given to chatctl serve --db: a SQLite file or a "
            "postgresql:// URL (a password is best left to PGPASSWORD, ~/.pgpass or a "
            "service file). Default: serve's default SQLite file.",
            metavar="PATH|URL",
            show_default=False,
        ),
    ] = None,
    check: Annotated[
        bool,
        typer.Option(
            "--check",
            help="Change nothing; exit 0 if the schema is current (or newer and "
            "compatible), 1 if it needs migrating.",
        ),
    ] = False,
    db_timeout: Annotated[
        float,
        typer.Option(
            help="Seconds to wait for a lock the replicas hold (the migration itself is "
            "not timed) or to connect.",
            min=0.1,
            metavar="SECONDS",
        ),
    ] = 5.0,
    notify: Annotated[
        RecordedNotify | None,
        typer.Option(
            help="PostgreSQL only: record where replicas started with --notify auto tell "
            "each other of changes (serve --notify). rooms once no release before 0.2.0 "
            "serves the database, then restart the replicas one at a time.",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Bring the database's schema up to this chatctl's, online.

    Migrations only add (expand), so replicas of the previous release keep serving the
    migrated database: upgrade replicas one at a time after it, and roll back by running
    the previous release again. serve sets up a new database itself, and migrates a
    SQLite file itself, but refuses an older PostgreSQL one until this is run.

    A database a newer release migrated past what this one can use: exit 6.

    Example: chatctl serve migrate --check --db postgresql://chat@db.internal/chat

    Example: chatctl serve migrate --db postgresql://chat@db.internal/chat
    """
    from chatctl.local import default_db_path
    from chatctl.server.upgrade import upgrade

    line = upgrade(
        db if db is not None else str(default_db_path()),
        check=check,
        timeout=db_timeout,
        notify=None if notify is None else notify.value,
    )
    typer.echo(line, err=True)


# -- chatctl serve token ------------------------------------------------------------------

TokensFileOpt = Annotated[
    Path,
    typer.Option(
        "--tokens-file",
        "-f",
        help="The tokens file, as given to chatctl serve --tokens-file.",
        metavar="PATH",
        show_default=False,
    ),
]


def _who(line: TokenLine) -> str:
    tenant = "its own tenant" if line.tenant is None else f"tenant {line.tenant}"
    return f"admin of {tenant}" if line.user is None else f"user {line.user} of {tenant}"


@token_app.command("add")
def token_add(
    tenant: Annotated[
        str,
        typer.Option(
            "--tenant",
            "-t",
            help="The tenant: whose rooms the token reaches (letters, digits, . _ @ -).",
            show_default=False,
        ),
    ],
    tokens_file: TokensFileOpt,
    user: Annotated[
        str | None,
        typer.Option(
            "--user", "-u", help="Make a user token: it acts only as this user.", show_default=False
        ),
    ] = None,
    admin: Annotated[
        bool,
        typer.Option("--admin", help="Make an admin token: it acts as any user of the tenant."),
    ] = False,
    comment: Annotated[
        str | None,
        typer.Option(
            "--comment",
            "-c",
            help="A note kept beside the token (whose, what for).",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Make a new token, print it once, and add only its SHA-256 to the tokens file.

    The token is all that goes to stdout: keep it now, it cannot be shown again.

    The file is created mode 0600; one that others can read or write is refused.

    Example: chatctl serve token add -t acme -u alice -f /etc/chatctl/tokens -c "alice's laptop"
    Example: TOKEN=$(chatctl serve token add --tenant acme --admin --tokens-file tokens)
    """
    from chatctl.server.tokens import add_token

    if user is not None and admin:
        raise UsageError("--user and --admin cannot be used together")
    if user is None and not admin:
        raise UsageError(
            "say whom the token acts as: --user ID (only that user) or --admin (any user of"
            " the tenant)"
        )
    token, line = add_token(tokens_file, tenant, user=user, comment=comment or "")
    typer.echo(token)
    typer.echo(
        f"added token {line.digest[:12]} ({_who(line)}) as line {line.line} of {tokens_file};"
        " the token is shown only this once",
        err=True,
    )


@token_app.command("list")
def token_list(ctx: typer.Context, tokens_file: TokensFileOpt, output: OutputOpt = None) -> None:
    """List the tokens of a tokens file, without secrets: the id is the start of the SHA-256.

    Columns: id, line, tenant, user (or admin), stored (hash, or clear), comment.

    Example: chatctl serve token list -f /etc/chatctl/tokens
    """
    from chatctl.cli.context import invocation
    from chatctl.server.tokens import read_tokens

    inv = invocation(ctx)
    inv.options.merge(output=output)
    rows = [
        {
            "id": line.digest[:12],
            "line": line.line,
            "tenant": line.tenant,
            "user": line.user,
            "admin": line.admin,
            "stored": "clear" if line.clear else "hash",
            "comment": line.comment,
        }
        for line in read_tokens(tokens_file)
    ]
    renderer = inv.renderer(batch=False)
    renderer.stream("tokens", rows)
    renderer.close()


@token_app.command("revoke")
def token_revoke(
    token_id: Annotated[
        str,
        typer.Argument(
            help="The token's id (6 or more hex digits, as token list shows it), or - to "
            "read the token itself from stdin.",
            metavar="ID",
            show_default=False,
        ),
    ],
    tokens_file: TokensFileOpt,
) -> None:
    """Remove a token from the tokens file; every other line stays as it was.

    A server serving the file drops it within a second (or on SIGHUP): 401, streams close 4401.

    Example: chatctl serve token revoke 3f2a1b9c04de -f /etc/chatctl/tokens
    Example: printf %s "$TOKEN" | chatctl serve token revoke - -f /etc/chatctl/tokens
    """
    from chatctl.server.tokens import revoke_token, revoke_token_itself

    if token_id == "-":
        token = sys.stdin.readline().strip()
        if not token:
            raise UsageError("no token on stdin (revoke - reads the token itself from stdin)")
        line = revoke_token_itself(tokens_file, token)
    else:
        line = revoke_token(tokens_file, token_id)
    typer.echo(
        f"revoked token {line.digest[:12]} ({_who(line)}), line {line.line} of {tokens_file}",
        err=True,
    )


# -- chatctl serve backup / restore -------------------------------------------------------

SqliteDbOpt = Annotated[
    Path | None,
    typer.Option(
        "--db",
        help="The server's SQLite database, as given to chatctl serve --db. Default: the"
        " embedded local server's.",
        metavar="PATH",
        show_default=False,
    ),
]


def _sqlite_db(db: Path | None) -> Path:
    """--db as a SQLite path; a PostgreSQL URL is a usage error pointing at pg_dump."""
    from chatctl.local import default_db_path

    if db is not None and str(db).startswith(("postgresql:", "postgres:")):
        raise UsageError(
            "backup and restore are for SQLite; back up PostgreSQL with pg_dump -Fc and"
            " pg_restore (docs/deployment.md, Backups)"
        )
    return db if db is not None else default_db_path()


@app.command("backup")
def backup(
    file: Annotated[
        Path,
        typer.Argument(
            help="Where to write the copy (mode 0600; replaced whole).",
            metavar="FILE",
            show_default=False,
        ),
    ],
    db: SqliteDbOpt = None,
    timeout: Annotated[
        float,
        typer.Option(
            help="Seconds to wait for another process's lock.", min=0.1, metavar="SECONDS"
        ),
    ] = 5.0,
) -> None:
    """Copy a SQLite database while its server runs: one consistent snapshot, checked.

    The copy is what one commit left: every message acknowledged before the backup began.

    It is compacted, and passes PRAGMA integrity_check before it replaces FILE.

    For PostgreSQL use pg_dump -Fc and pg_restore (docs/deployment.md).

    Example: chatctl serve backup --db /var/lib/chatctl/chat.db /backup/chat-$(date +%F).db
    """
    from chatctl.server.backup import backup as take_backup

    size = take_backup(str(_sqlite_db(db)), file, timeout=timeout)
    typer.echo(f"backed up {_sqlite_db(db)} to {file} ({size} bytes)", err=True)


@app.command("restore")
def restore(
    file: Annotated[
        Path,
        typer.Argument(
            help="A backup chatctl serve backup wrote.", metavar="FILE", show_default=False
        ),
    ],
    db: SqliteDbOpt = None,
) -> None:
    """Put a backup in place as a server's SQLite database (the server must be stopped).

    Refused while a server has the database open. The backup is checked first.

    The database file is replaced whole (its old WAL removed): a crash leaves one or the other.

    Example: chatctl serve restore /backup/chat-2026-12-01.db --db /var/lib/chatctl/chat.db
    """
    from chatctl.server.backup import restore as put_back

    target = _sqlite_db(db)
    version = put_back(file, target)
    typer.echo(f"restored {file} as {target} (schema version {version})", err=True)
