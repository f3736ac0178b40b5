"""Message commands: send, history, import, delete-message."""

from collections.abc import Callable, Iterable, Iterator
from typing import Annotated, Any

import typer

from chatctl.cli import run
from chatctl.cli.context import Invocation, invocation
from chatctl.cli.options import RoomArg, user_option, with_common_options
from chatctl.errors import UsageError
from chatctl.ids import START

app = typer.Typer()

#: History page size: the server's default maximum page.
PAGE = 1000


@app.command()
@with_common_options
def send(
    ctx: typer.Context,
    room: RoomArg = None,
    text: Annotated[
        str | None, typer.Argument(help="The message; - reads it from stdin.", show_default=False)
    ] = None,
    user: Annotated[
        str | None,
        user_option("Who sends (default: you)."),
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
    keep_going: Annotated[
        bool,
        typer.Option(
            "--keep-going",
            help="In a batch, report a line the server refuses and send the rest (exit 1 "
            "at the end if any failed).",
        ),
    ] = False,
    batch_key: Annotated[
        str | None,
        typer.Option(
            "--batch-key",
            help="Name the batch, so that running it again with the same key and input "
            "(within 24 h) sends only what the first run did not store.",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Send a message to a room.

    A batch (--lines, or one JSON object per line with -i) goes in bulk requests to a
    chatctl server (one request per message to any other m3o server), printing each id
    as it is stored. It stops at the first line the server refuses, naming it, unless
    --keep-going. It sends every line even when the reader of its output goes away, and
    exits 0 only if every line was sent. On Ctrl-C it stops reading, finishes the request
    in flight, prints every id sent, and exits 130. Its nth message is sent with the
    key KEY/n (KEY from --batch-key, else random), so a retry never doubles a message.

    Example: chatctl send general "Hey whats up?" --subject Random --user alice
    Example: seq 3 | chatctl send general --lines --user bob
    Example: seq 1000 | chatctl send general --lines --user bob --batch-key numbers-1 -o id
    """
    from chatctl.cli import bulk

    inv = invocation(ctx)
    bulk.check_batch_key(batch_key)
    flags: dict[str, Any] = {"user_id": user, "subject": subject, "client": client_label}
    defaults = {"user_id": inv.acting_user(user)}
    if lines:
        if text is not None:
            raise UsageError("give either TEXT or --lines, not both")
        if inv.options.input is not None:
            raise UsageError("--lines reads stdin; it cannot be combined with --input")
        template = run.build_requests(inv, "Send", {**flags, "text": "-"}, defaults, room=room)
        # Streamed, not slurped: `tail -f log | chatctl send ROOM --lines` sends as lines come.
        calls: Iterable[run.Call] = _line_calls(inv, template[0].body)
        total = None
    else:
        if text == "-":
            text = run.stdin_text(inv).rstrip("\n")
        calls = run.build_requests(inv, "Send", {**flags, "text": text}, defaults, room=room)
        total = len(calls)
    sender = bulk.BulkSender(inv, keep_going=keep_going, batch_key=batch_key, streamed=lines)
    try:
        run.call_all(inv, "Send", calls, total=total, keep_going=keep_going, sender=sender)
    finally:
        sender.close()


def _line_calls(inv: Invocation, template: dict[str, Any]) -> Iterator[run.Call]:
    for n, text in run.input_lines(inv):
        if text is None:
            yield run.Call({}, f"line {n}", UsageError("not UTF-8 text"))
        elif text.strip():
            yield run.Call({**template, "text": text}, f"line {n}")


@app.command()
@with_common_options
def history(
    ctx: typer.Context,
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
        user_option("Who reads (default: you, as for send; a private room needs a member)."),
    ] = None,
) -> None:
    """Print a room's messages, oldest first, paging through large rooms by itself.

    A server without chatctl's paging (any other m3o server) answers the whole room at
    once: it is read once, put in time order, and --limit, --before and --after are
    applied here.

    Example: chatctl history general --limit 20
    Example: chatctl history general -o jsonl > general.jsonl
    """
    inv = invocation(ctx)
    calls = run.build_requests(
        inv,
        "History",
        {"before": before, "after": after, "limit": None, "user_id": user},
        {"user_id": inv.acting_user(user)},
        room=room,
    )
    out = inv.renderer(batch=len(calls) > 1)
    finished = False
    try:
        for call in calls:
            out.stream("messages", _read(inv, call.body, limit))
        finished = True
    finally:
        out.close(failed=not finished)


def _read(
    inv: Invocation, request: dict[str, Any], limit: int | None
) -> Iterator[dict[str, Any]]:
    """The messages a History request selects: paged by the server where it can, else
    read once and selected here. Only the extensions the server has are sent."""
    user = request.get("user_id")
    server = inv.client.facts(user if isinstance(user, str) else None)
    if not server.has("history-user"):
        request.pop("user_id", None)  # m3o's History takes no reader (and checks none)
    if server.has("paging"):
        return _messages(inv, request, limit)
    from chatctl.cli import plain

    limit = limit or request.pop("limit", None)
    before = request.pop("before", None) or None
    after = request.pop("after", None) or None
    messages = plain.read_history(inv, request["room_id"])
    return iter(plain.select(messages, limit=limit, before=before, after=after))


def _page(inv: Invocation, request: dict[str, Any], **cursor: Any) -> list[dict[str, Any]]:
    response = inv.client.call("History", {**request, **cursor})
    gap = response.get("gap")
    if isinstance(gap, dict):
        _tell_gap(inv)(gap)
    messages = response.get("messages", [])
    return [m for m in messages if isinstance(m, dict)] if isinstance(messages, list) else []


def _messages(
    inv: Invocation, request: dict[str, Any], limit: int | None
) -> Iterator[dict[str, Any]]:
    """Every message the request selects, oldest first.

    All of them (no --limit) is one streamed History call; the first N after a cursor
    pages forward; both run in constant memory. The latest N (with or without --before)
    pages backwards and holds at most N messages.
    """
    limit = limit or request.pop("limit", None)
    before = request.pop("before", None) or None
    after = request.pop("after", None) or None
    if limit is not None and after is None:
        pages: list[list[dict[str, Any]]] = []
        left, cursor = limit, before
        while left > 0:
            size = min(left, PAGE)
            page = _page(inv, request, limit=size, **({"before": cursor} if cursor else {}))
            page = page[-size:]  # a server that says it pages but answered more: the latest
            first = page[0].get("id") if page else None
            if not page or (pages and first == pages[-1][0].get("id")):
                break  # the end, or a server that does not page: nothing new
            pages.append(page)
            left -= len(page)
            if not isinstance(first, str):
                break
            cursor = first
        for page in reversed(pages):
            yield from page
        return
    if limit is None:
        # All of it: one History without a limit, read as it arrives (chatctl's server
        # sends it in parts), rather than a call per page of 1,000: ~2x the rate.
        bounds = {"after": after, "before": before}
        asked = {**request, **{k: v for k, v in bounds.items() if v}}
        yield from inv.client.history(asked, on_gap=_tell_gap(inv))
        return
    cursor, left = after or START, limit
    while left is None or left > 0:
        size = PAGE if left is None else min(left, PAGE)
        page = _page(
            inv, request, limit=size, after=cursor, **({"before": before} if before else {})
        )[:size]  # a server that says it pages but answered more: the first asked for
        last = page[-1].get("id") if page else None
        if not page or last == cursor:
            return  # the end, or a server that does not page (m3o answers all at once)
        yield from page
        if not isinstance(last, str):
            return
        cursor = last
        if left is not None:
            left -= len(page)


def _tell_gap(inv: Invocation) -> Callable[[dict[str, Any]], None]:
    """What a History answer's gap (a cursor older than what the room keeps) prints: one
    line on stderr, so that what goes to stdout stays the messages alone."""
    from chatctl.cli.join import gap_words

    return lambda gap: inv.notice(gap_words(gap))


#: messages, and their encoded bytes, one Import call carries at most (the server's body
#: limit is 1 MiB by default, its cap 1,000 messages).
IMPORT_BATCH = 500
IMPORT_BYTES = 512 * 1024


@app.command("import")
@with_common_options
def import_messages(ctx: typer.Context, room: RoomArg = None) -> None:
    """Store messages with their own ids, times and senders: move a room between servers.

    Reads messages as history -o jsonl writes them (one JSON object a line; stdin, or
    --input FILE), oldest first, from chatctl's server or any m3o server. Needs an admin
    token on a chatctl server as the target (another m3o server cannot: exit 2).

    A message already in the room, the same, is skipped and counted, so an import run
    again stores nothing twice; an id the room has with other content stops it (exit 1).
    Messages must come no earlier than the room's last one: import into a new room.

    Example: chatctl history archive -o jsonl | chatctl import archive
    """
    import json
    import sys

    from chatctl.cli import plain
    from chatctl.schema import IMPORT
    from chatctl.wire import decode

    inv = invocation(ctx)
    body = run.build_requests(inv, "Import", {}, room=room)[0].body
    client = inv.client
    if not client.facts(None).has(IMPORT):
        raise plain.unsupported(inv, "import", IMPORT)
    path = inv.options.input
    name = "stdin" if path is None or str(path) == "-" else str(path)
    source = inv.stdin if path is None or str(path) == "-" else open(path, encoding="utf-8")  # noqa: SIM115
    totals = {"room_id": body["room_id"], "stored": 0, "skipped": 0}
    batch: list[dict[str, Any]] = []
    size = 0

    def flush() -> None:
        nonlocal size
        if batch:
            answer = client.call("Import", {**body, "messages": batch})
            done = answer.get("imported", {})
            for count in ("stored", "skipped"):
                value = done.get(count) if isinstance(done, dict) else None
                totals[count] += value if isinstance(value, int) else 0
            batch.clear()
            size = 0

    out = inv.renderer(batch=False)
    try:
        for lineno, line in enumerate(source, 1):
            if not line.strip():
                continue
            try:
                message = decode(line)
            except (json.JSONDecodeError, ValueError):
                raise UsageError(
                    f"line {lineno} of {name} is not JSON; expected a message a line, as"
                    " history -o jsonl writes them",
                    hint=f"{totals['stored']} stored, {totals['skipped']} skipped before it",
                ) from None
            if not isinstance(message, dict):
                raise UsageError(f"line {lineno} of {name} is not a JSON object")
            encoded = len(line.encode("utf-8", "surrogatepass"))
            if batch and (len(batch) >= IMPORT_BATCH or size + encoded > IMPORT_BYTES):
                flush()
            batch.append(
                {
                    k: message.get(k)
                    for k in ("id", "user_id", "sent_at", "text", "subject", "client")
                }
            )
            size += encoded
        flush()
        out.response({"imported": totals})
    finally:
        out.close()
        if source is not inv.stdin and source is not sys.stdin:
            source.close()
    inv.notice(
        f"imported {totals['stored']} messages into {room or body['room_id']}"
        f" ({totals['skipped']} already there, skipped)"
    )


@app.command()
@with_common_options
def delete_message(
    ctx: typer.Context,
    room: RoomArg = None,
    message_ids: Annotated[
        list[str] | None,
        typer.Argument(
            help="Messages to delete, by id (join --show-ids and history -o tsv show them).",
            show_default=False,
        ),
    ] = None,
    user: Annotated[
        str | None,
        user_option("Who deletes (default: you): the message's author or the room's creator."),
    ] = None,
) -> None:
    """Delete messages: their text is erased, and history and join leave them out.

    A message's author, the room's creator, or an admin token (any user) may delete it;
    join --events prints the deletion (a message it printed before included). Deleting
    a deleted message changes nothing, so a run may be repeated. Needs chatctl's
    server: another m3o server has no such call (exit 2, nothing sent).

    Example: chatctl send general "wrong paste" -o id | xargs chatctl delete-message general
    """
    from chatctl.cli import plain
    from chatctl.schema import DELETE_MESSAGE

    inv = invocation(ctx)
    acting = inv.acting_user(user)
    if not inv.client.facts(acting).has(DELETE_MESSAGE):
        raise plain.unsupported(inv, "delete-message", DELETE_MESSAGE)
    calls = run.build_requests(
        inv,
        "DeleteMessage",
        {"user_id": user},
        {"user_id": acting},
        room=room,
        each=("message_id", message_ids or []),
    )
    run.call_all(inv, "DeleteMessage", calls, total=len(calls))
