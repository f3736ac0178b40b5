"""Any declared endpoint, from its declaration alone: ``chatctl call ENDPOINT [JSON | -]``.

As ``gh api`` or ``kubectl get --raw``: the request object as given, through the one
client (its budget and retries, an Idempotency-Key for a change, the server's edition,
the acting user bound, and an extension endpoint never sent to a server without it), the
answer through the normal renderer. The endpoints it knows, and lists in its help and
its shell completion, are ``schema.ENDPOINTS`` when it runs: a newly declared endpoint
is reachable here before it has a command of its own.
"""

import json
from pathlib import Path
from typing import Annotated, Any

import typer
import typer.core

from chatctl.cli import run
from chatctl.cli.context import invocation
from chatctl.cli.options import user_option, with_common_options
from chatctl.errors import UsageError
from chatctl.schema import ENDPOINTS, Endpoint
from chatctl.wire import TooDeep, decode

app = typer.Typer()

#: endpoints that answer with a stream, and the command that reads it.
STREAMS = {"Join": "chatctl join ROOM", "JoinRooms": "chatctl join ROOM... or join --all"}


def endpoints(ctx: typer.Context, incomplete: str) -> list[tuple[str, str]]:
    """ENDPOINT's completion: every declared endpoint (and what it does), in the case
    the word was begun in (``w``: whoami)."""
    lower = incomplete[:1].islower()
    return [
        (name.lower() if lower else name, spec.summary)
        for name, spec in ENDPOINTS.items()
        if name.lower().startswith(incomplete.lower())
    ]


class _Listing(typer.core.TyperCommand):
    """The command, its help naming the endpoints declared when it is built (every run)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.help:
            self.help = self.help.replace("{endpoints}", ", ".join(ENDPOINTS))


@app.command(cls=_Listing)
@with_common_options
def call(
    ctx: typer.Context,
    endpoint: Annotated[
        str,
        typer.Argument(
            help="The endpoint, e.g. Send (any case).",
            show_default=False,
            autocompletion=endpoints,
        ),
    ],
    body: Annotated[
        str | None,
        typer.Argument(
            help="The request: a JSON object ({} when left out); - reads it from stdin "
            "(one object, or one per line).",
            show_default=False,
        ),
    ] = None,
    user: Annotated[
        str | None,
        user_option("Who acts, where the endpoint names the acting user (default: you)."),
    ] = None,
) -> None:
    """Call any endpoint with a JSON request, and print its answer.

    Endpoints: {endpoints}.

    BODY is the request as given (rooms by id, not by name), with the acting user filled
    in where the endpoint has one and BODY leaves it out, checked against the endpoint's
    declaration before anything is sent. An extension endpoint goes only to a server
    that has it (exit 2 otherwise).

    Example: chatctl call List '{"user_id": "alice"}'
    Example: echo '{"name": "raw", "user_ids": ["bob"]}' | chatctl call create -
    Example: chatctl call whoami -o json
    """
    inv = invocation(ctx)
    spec = _endpoint(endpoint)
    if body is not None and inv.options.input is not None:
        raise UsageError("give the request as JSON or with --input, not both")
    objects: list[tuple[str | None, dict[str, Any]]] | None = None
    if body == "-":
        objects = run.read_input(inv, Path(body))
    elif body is not None:
        objects = [(None, _object(body))]
    flags: dict[str, Any] = {"user_id": user} if spec.actor else {}
    defaults = {"user_id": inv.acting_user(user)} if spec.actor else None
    calls = run.build_requests(inv, spec.name, flags, defaults, objects=objects)
    run.call_all(inv, spec.name, calls, total=len(calls))


def _endpoint(name: str) -> Endpoint:
    spec = next((e for e in ENDPOINTS.values() if e.name.lower() == name.lower()), None)
    if spec is None:
        raise UsageError(f"no endpoint {name!r}", hint=f"call one of: {', '.join(ENDPOINTS)}")
    if spec.name in STREAMS:
        raise UsageError(
            f"{spec.name} is a stream, not a call: use {STREAMS[spec.name]}",
        )
    return spec


def _object(text: str) -> dict[str, Any]:
    """The JSON argument, which must be one object."""
    try:
        value = decode(text)
    except TooDeep as e:
        raise UsageError(f"the request holds {e}") from None
    except json.JSONDecodeError as e:
        raise UsageError(
            f"the request is not JSON (column {e.colno}: {e.msg})",
            hint='give one object, e.g. \'{"room_id": "…"}\'; - reads it from stdin',
        ) from None
    if not isinstance(value, dict):
        raise UsageError("the request is JSON but not an object", hint="give one, e.g. '{}'")
    return value
