"""``chatctl join``: tail a room live, resuming after drops without loss or repeats."""

import random
import time
from datetime import UTC, datetime
from typing import Annotated, Any

import typer

from chatctl.cli import run
from chatctl.cli.context import Invocation, invocation
from chatctl.cli.options import RoomArg, with_common_options
from chatctl.errors import ConnectError, StreamClosed, UsageError
from chatctl.ids import cursor_for_time, parse_cursor

app = typer.Typer()

#: The backoff between reconnects is capped here (seconds), with jitter.
MAX_BACKOFF = 5.0


@app.command()
@with_common_options(exclude=("timeout",))
def join(
    ctx: typer.Context,
    room: RoomArg = None,
    user: Annotated[
        str | None,
        typer.Option("--user", "-u", help="Who joins (default: you).", show_default=False),
    ] = None,
    history: Annotated[
        int | None,
        typer.Option(
            "--history", "-n", help="Print the last N messages first.", min=0, show_default=False
        ),
    ] = None,
    since: Annotated[
        str | None,
        typer.Option(
            "--since",
            help="Print every message after this message id or time (2026-11-25T09:00:00Z; "
            "a time without a zone is local), then go live.",
            show_default=False,
        ),
    ] = None,
    count: Annotated[
        int | None,
        typer.Option("--count", "-c", help="Exit 0 after N messages.", min=1, show_default=False),
    ] = None,
    idle: Annotated[
        float | None,
        typer.Option(
            "--timeout",
            help="Exit 0 after SECONDS without a message.",
            min=0.001,
            show_default=False,
            metavar="SECONDS",
        ),
    ] = None,
    no_reconnect: Annotated[
        bool,
        typer.Option(
            "--no-reconnect", help="Exit 3 when the connection drops instead of resuming."
        ),
    ] = False,
    include_own: Annotated[
        bool, typer.Option("--include-own", help="Also print the messages this user sends.")
    ] = False,
    events: Annotated[
        bool,
        typer.Option("--events", help="Also print joins, leaves, kicks, invites and deletion."),
    ] = False,
) -> None:
    """Join a room and print its messages as they arrive, until Ctrl-C.

    On a terminal each message is one line (local time); in a pipe, one JSON object per
    line. A dropped connection or a server restart (the embedded local server too) is
    resumed after the last printed message, so every message is printed exactly once, in
    order.

    Example: chatctl join general --user carol --history 2 --count 2
    Example: chatctl join general --history 1 --count 1 -o tsv | cut -f7
    """
    inv = invocation(ctx)
    cursor: str | None = None
    if since is not None:
        cursor = parse_cursor(since)
        if cursor is None:
            raise UsageError(f"--since takes a message id or a time, not {since!r}")
    request: dict[str, Any] = {"user_id": user, "events": events or None}
    if include_own:
        request["include_own"] = True
    defaults = {"user_id": inv.acting_user()}
    body = run.build_requests(inv, "Join", request, defaults, room=room)[0].body
    if history and cursor is None:
        body["history"] = history

    printer = inv.renderer(batch=True, live=True)
    client = inv.client
    printed = 0
    last_frame = time.monotonic()
    attempt = 0
    while True:
        # After the first connection, resume from the last printed message; before any
        # was printed, from the moment we first joined (never replaying --history twice).
        if cursor is not None:
            body.pop("history", None)
            body["since"] = cursor
        try:
            stream = client.join(body)
        except ConnectError:
            if attempt == 0 or no_reconnect:
                raise
            _pause(inv, attempt, "reconnect failed")
            attempt += 1
            continue
        if attempt:
            inv.notice("reconnected; resuming after the last message printed")
        if cursor is None:
            # Nothing received yet: a resume must start from the moment we joined, by the
            # server's clock (message ids are made by it), so a client clock that runs
            # ahead cannot skip a message; the Date header's second rounds down.
            cursor = cursor_for_time(stream.server_time or datetime.now(UTC))
        attempt = 0
        try:
            while True:
                left = None if idle is None else idle - (time.monotonic() - last_frame)
                if left is not None and left <= 0:
                    return
                try:
                    frame = stream.next(timeout=left)
                except TimeoutError:
                    return
                last_frame = time.monotonic()
                message = frame.get("message")
                if not isinstance(message, dict):
                    printer.response(frame)
                    continue
                # Frames come in the room's order: the last one received is where a
                # resume starts (replayed --history messages included).
                cursor = str(message.get("id", ""))
                # Replays carry the joiner's own messages while live frames do not: hide
                # them everywhere, so a resumed tail prints what an unbroken one would.
                if not include_own and message.get("user_id") == body["user_id"]:
                    continue
                printer.response(frame)
                printed += 1
                if count is not None and printed >= count:
                    return
        except StreamClosed as e:
            if e.close_code != 4008 or no_reconnect:
                raise
            inv.notice("this reader fell behind and was cut off; resuming")
        except ConnectError as e:
            if no_reconnect:
                raise
            # The embedded local server may have been stopped: the next attempt starts it.
            client.forget_connection()
            _pause(inv, attempt, e.message)
        finally:
            stream.close()
        attempt += 1


def _backoff(attempt: int) -> float:
    return float(min(MAX_BACKOFF, 0.1 * 2**attempt) * (0.5 + random.random() / 2))


def _pause(inv: Invocation, attempt: int, why: str) -> None:
    delay = _backoff(attempt)
    inv.notice(f"{why}; reconnecting in {delay:.1f}s")
    time.sleep(delay)
