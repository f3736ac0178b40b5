"""Message commands: send, history."""

import sys
from collections.abc import Iterator
from typing import Annotated, Any

import typer

from chatctl.cli import run
from chatctl.cli.options import RoomArg, common, with_common_options
from chatctl.errors import UsageError
from chatctl.ids import START

app = typer.Typer()

#: History page size: the server's default maximum page.
PAGE = 1000


@app.command()
@with_common_options
def send(
    room: RoomArg = None,
    text: Annotated[
        str | None, typer.Argument(help="The message; - reads it from stdin.", show_default=False)
    ] = None,
    user: Annotated[
        str | None,
        typer.Option("--user", "-u", help="Who sends (default: you).", show_default=False),
    ] = None,
    subject: Annotated[
        str | None, typer.Option("--subject", "-s", help="Subject line.", show_default=False)
    ] = None,
    client_label: Annotated[
        str | None,
        typer.Option(
            "--client", help='A free label of the sender, e.g. "web".', show_default=False
        ),
    ] = None,
    lines: Annotated[
        bool, typer.Option("--lines", help="Send each line of stdin as its own message, in order.")
    ] = False,
) -> None:
    """Send a message to a room.

    Example: chatctl send general "Hey whats up?" --subject Random
    Example: tail -f build.log | chatctl send builds --lines
    """
    flags: dict[str, Any] = {"user_id": user, "subject": subject, "client": client_label}
    defaults = {"user_id": run.acting_user(None)}
    if lines:
        if text is not None:
            raise UsageError("give either TEXT or --lines, not both")
        if common.input is not None:
            raise UsageError("--lines reads stdin; it cannot be combined with --input")
        template = run.build_requests("Send", {**flags, "text": "-"}, defaults, room=room)[0]
        # Streamed, not slurped: `tail -f log | chatctl send ROOM --lines` sends as lines come.
        run.call_all("Send", _line_requests(template), total=None)
        return
    else:
        if text == "-":
            text = sys.stdin.read().rstrip("\n")
        requests = run.build_requests("Send", {**flags, "text": text}, defaults, room=room)
    run.call_all("Send", requests, total=len(requests))


def _line_requests(template: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for n, line in enumerate(sys.stdin, 1):
        text = line.rstrip("\r\n")
        if text.strip():
            request = {**template, "text": text}
            run.check_request("Send", request, n)
            yield request


@app.command()
@with_common_options
def history(
    room: RoomArg = None,
    limit: Annotated[
        int | None,
        typer.Option(
            "--limit",
            "-n",
            help="At most N messages: the latest N, or the first N after --after.",
            min=1,
            show_default=False,
        ),
    ] = None,
    before: Annotated[
        str | None,
        typer.Option("--before", help="Only messages before this message id.", show_default=False),
    ] = None,
    after: Annotated[
        str | None,
        typer.Option("--after", help="Only messages after this message id.", show_default=False),
    ] = None,
    user: Annotated[
        str | None,
        typer.Option(
            "--user", "-u", help="The reading user (needed for a private room).", show_default=False
        ),
    ] = None,
) -> None:
    """Print a room's messages, oldest first, paging through large rooms by itself.

    Example: chatctl history general --limit 20
    Example: chatctl history general -o jsonl > general.jsonl
    """
    s = run.settings(user)
    requests = run.build_requests(
        "History",
        {"before": before, "after": after, "limit": None},
        {"user_id": s.user if s.user_explicit else None},
        room=room,
    )
    out = run.renderer(batch=len(requests) > 1)
    try:
        for request in requests:
            out.stream("messages", _messages(request, limit))
    finally:
        out.close()


def _page(request: dict[str, Any], **cursor: Any) -> list[dict[str, Any]]:
    response = run.client().call("History", {**request, **cursor})
    messages = response.get("messages", [])
    return messages if isinstance(messages, list) else []


def _messages(request: dict[str, Any], limit: int | None) -> Iterator[dict[str, Any]]:
    """Every message the request selects, oldest first, a page at a time.

    Forward from a cursor streams in constant memory; the latest N (with or without
    --before) pages backwards and holds at most N messages.
    """
    limit = limit or request.pop("limit", None)
    before = request.pop("before", None) or None
    after = request.pop("after", None) or None
    if limit is not None and after is None:
        pages: list[list[dict[str, Any]]] = []
        left, cursor = limit, before
        while left > 0:
            page = _page(request, limit=min(left, PAGE), **({"before": cursor} if cursor else {}))
            if not page:
                break
            pages.append(page)
            left -= len(page)
            cursor = page[0]["id"]
        for page in reversed(pages):
            yield from page
        return
    cursor, left = after or START, limit
    while left is None or left > 0:
        size = PAGE if left is None else min(left, PAGE)
        page = _page(request, limit=size, after=cursor, **({"before": before} if before else {}))
        if not page:
            return
        yield from page
        cursor = page[-1]["id"]
        if left is not None:
            left -= len(page)
