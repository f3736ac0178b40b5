"""``chatctl join``: tail a room live, resuming after drops without loss or repeats; or
many rooms (``join ROOM...``, ``join --all``), each resumed on its own: on chatctl's server
one JoinRooms stream for all of them, elsewhere one Join a room, in threads."""

import copy
import math
import threading
import time
from collections import deque
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Protocol

import typer

from chatctl.cli import complete, plain, run
from chatctl.cli.context import Invocation, invocation
from chatctl.cli.options import user_option, with_common_options
from chatctl.errors import ChatctlError, ConnectError, StreamClosed, UsageError
from chatctl.ids import cursor_for_time, parse_cursor, time_ns
from chatctl.schema import ENDPOINTS, JOIN_ROOMS
from chatctl.wire import CLOSE_TOO_SLOW

if TYPE_CHECKING:
    from chatctl.cli.bots import Bot
    from chatctl.client import Client, JoinStream
    from chatctl.client.retry import Retry
    from chatctl.output import Renderer

app = typer.Typer()

#: The backoff between reconnects is capped here (seconds), with jitter.
MAX_BACKOFF = 5.0


@app.command()
@with_common_options(exclude=("timeout",))
def join(
    ctx: typer.Context,
    rooms: Annotated[
        list[str] | None,
        typer.Argument(
            help="The room, by id or name; or several, each line labelled with its room.",
            show_default=False,
            autocompletion=complete.rooms,
            metavar="[ROOM]...",
        ),
    ] = None,
    user: Annotated[
        str | None,
        user_option("Who joins (default: you)."),
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
            help="Print every message after this message id or time, then go live: a time "
            "as join shows it (09:41:07.250, the latest such) or RFC 3339, local unless it "
            "names a zone, leaves out that millisecond's messages; a date starts at its "
            "midnight.",
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
            "--no-reconnect",
            help="Exit 3 instead of resuming when the stream drops or the server restarts.",
        ),
    ] = False,
    include_own: Annotated[
        bool, typer.Option("--include-own", help="Also print the messages this user sends.")
    ] = False,
    events: Annotated[
        bool,
        typer.Option(
            "--events",
            help="Also print joins, leaves, kicks, invites, the room's deletion and "
            "deleted messages (delete-message).",
        ),
    ] = False,
    show_ids: Annotated[
        bool,
        typer.Option(
            "--show-ids",
            help="On a terminal, print each message's id after its time (for --since).",
        ),
    ] = False,
    every_room: Annotated[
        bool,
        typer.Option(
            "--all",
            help="Every room the user is in, and each room they are invited to or created "
            "in while it runs; a room they leave or are kicked from is dropped, with a line "
            "on stderr.",
        ),
    ] = False,
    exec_command: Annotated[
        str | None,
        typer.Option(
            "--exec",
            help="Run CMD (with sh -c) for each message instead of printing it, one at a "
            "time, in order: the message as JSON on stdin, its fields in CHATCTL_MESSAGE_ID, "
            "CHATCTL_ROOM_ID, CHATCTL_USER_ID, CHATCTL_TEXT, ...; CHATCTL_URL and "
            "CHATCTL_USER let a chatctl inside CMD reply. A failure is reported and the "
            "tail goes on.",
            show_default=False,
            metavar="CMD",
            rich_help_panel="Bots",
        ),
    ] = None,
    exec_stop_on_error: Annotated[
        bool,
        typer.Option(
            "--exec-stop-on-error",
            help="End the tail (exit 1) when CMD fails, without marking its message handled.",
            rich_help_panel="Bots",
        ),
    ] = False,
    exec_timeout: Annotated[
        float | None,
        typer.Option(
            "--exec-timeout",
            help="Stop CMD after SECONDS (default 60; 0: no limit); that is a failure.",
            min=0,
            show_default=False,
            metavar="SECONDS",
            rich_help_panel="Bots",
        ),
    ] = None,
    cursor_file: Annotated[
        Path | None,
        typer.Option(
            "--cursor",
            help="Save the last message handled in FILE (atomically, after CMD ended), and "
            "resume after it when FILE exists: a bot killed and restarted handles every "
            "message at least once, none skipped.",
            show_default=False,
            metavar="FILE",
            rich_help_panel="Bots",
        ),
    ] = None,
) -> None:
    """Join a room and print its messages as they arrive, until Ctrl-C.

    On a terminal each message is one line, with its local time to the millisecond
    (--since takes it back and leaves that message out); in a pipe, one JSON object per
    line. A dropped connection, a server restart (the embedded local server too), a
    proxy's 502 while the server is down, a server without its database (close 4503): each
    is waited out, with backoff, for as long as join runs, and the stream is resumed after
    the last printed message, so every message is printed exactly once, in order. Being
    kicked, the room deleted or the token refused ends it.

    Another m3o server cannot resume a stream: after a reconnect, what was sent meanwhile
    is printed from the room's History, and --history is read from it too; --since,
    --events and --include-own need chatctl's server (exit 2 elsewhere).

    Several rooms (join ROOM ROOM...) or every room of the user (--all) are followed at
    once, each line beginning with its room's name (in the room's colour); on chatctl's
    server on one connection, each room resumed after its own last message.

    A bot: --exec CMD runs CMD for each message; with --cursor FILE a restarted bot
    resumes after the last message it handled (at least once: the one in flight when it
    was killed may be handled twice).

    Example: chatctl join general --user carol --history 2 --count 2
    Example: chatctl join general --history 1 --count 1 -o tsv | cut -f7
    Example: chatctl join --all --user carol --timeout 1
    """
    inv = invocation(ctx)
    room = rooms[0] if rooms else None
    cursor: str | None = None
    if since is not None:
        cursor = parse_cursor(since)
        if cursor is None:
            raise UsageError(
                f"--since takes a message id, a time (09:41:07.250, as join prints it, or "
                f"2026-11-25T09:00:00Z) or a date, not {since!r}"
            )
    if every_room or (rooms is not None and len(rooms) > 1):
        if history is not None:
            raise UsageError("--history follows one room: give one ROOM, or leave it out")
        if exec_command or cursor_file or exec_stop_on_error or exec_timeout is not None:
            raise UsageError("--exec and --cursor follow one room: give one ROOM")
        many = _Many(
            inv,
            rooms or [],
            every_room=every_room,
            user=user,
            cursor=cursor,
            count=count,
            idle=idle,
            no_reconnect=no_reconnect,
            include_own=include_own,
            events=events,
            show_ids=show_ids,
        )
        many.run()
        return
    request: dict[str, Any] = {"user_id": user, "events": events or None}
    if include_own:
        request["include_own"] = True
    defaults = {"user_id": inv.acting_user(user)}
    body = run.build_requests(inv, "Join", request, defaults, room=room)[0].body
    bot = None
    if exec_command or cursor_file or exec_stop_on_error or exec_timeout is not None:
        from chatctl.cli import bots

        bot = bots.bot_for(
            inv, exec_command, cursor_file, stop_on_error=exec_stop_on_error, timeout=exec_timeout
        )
        cursor = bot.position(body["room_id"]) or cursor  # where the last run's bot got to
    client = inv.client
    # What only the server can do is checked before anything is sent (m3o's Join fails
    # the stream on a field it does not know); --history can be made up for.
    needed = [
        (flag, feature)
        for flag, feature, given in (
            ("--since", "resume", since is not None),
            ("--events", "events", events),
            ("--include-own", "include-own", include_own),
            ("--cursor", "resume", cursor_file is not None),
        )
        if given
    ]
    if needed:
        server = client.facts(body["user_id"])
        for flag, feature in needed:
            if not server.has(feature):
                raise plain.unsupported(inv, f"join {flag}", feature)
    replay = history if history and cursor is None else None
    printer = inv.renderer(batch=True, live=True, show_ids=show_ids)
    if bot is not None:
        printer = bot.attach(printer, body)  # each message to CMD, then the cursor saved
    label = room if room is not None else body["room_id"]
    _follow(inv, client, body, label, printer, cursor, replay, count, idle, no_reconnect, bot=bot)


def _follow(
    inv: Invocation,
    client: "Client",
    body: dict[str, Any],
    label: str,
    printer: "_Printer",
    cursor: str | None,
    replay: int | None,
    count: int | None,
    idle: float | None,
    no_reconnect: bool,
    stop: threading.Event | None = None,
    bot: "Bot | None" = None,
) -> None:
    """Follow one room (its Join, resumed after each drop) until --count, --timeout, or an
    end that is not passing; or, in a tail of many rooms, until ``stop`` is set."""
    include_own = bool(body.get("include_own"))
    tail = _Tail(inv, printer, body, include_own, count)
    last_frame = time.monotonic()
    outage = _Outage(inv, client.retry(cap=MAX_BACKOFF))
    joined = False  # a stream was started before (so this is a resume)
    while True:
        stream: JoinStream | None = None
        try:
            stream = client.join()
            # The handshake said what the server has (chatctl's server: resume and
            # replay; a plain m3o server: neither).
            resumable = client.server.has("resume")
            if cursor is not None and resumable:
                # Resume after the last message received; before any was, from the
                # moment we first joined (never replaying --history twice).
                body.pop("history", None)
                body["since"] = cursor
            elif replay and not joined and client.server.has("replay"):
                body["history"] = replay
            stream.start(body)
            if resumable:
                outage.started("reconnected; resuming after the last message printed")
                if cursor is None:
                    # Nothing received yet: a resume must start from the moment we
                    # joined, by the server's clock (message ids are made by it), so a
                    # client clock that runs ahead cannot skip a message; the Date
                    # header's second rounds down.
                    cursor = cursor_for_time(stream.server_time or datetime.now(UTC))
                if bot is not None and not joined and "history" not in body:
                    bot.begin(body["room_id"], cursor)  # where a first run started, kept
            elif not joined:
                outage.started()
                tail.joined_at(stream.server_time)
                if replay:
                    tail.catch_up_later("replay", replay)
            else:
                outage.started(
                    "reconnected; this server cannot resume a stream: what was sent "
                    "meanwhile is read from its History"
                )
                tail.catch_up_later("gap")
            if not joined:
                inv.notice(f"joined {label}, waiting for messages", terminal_only=True)
                outage.joined()
            joined = True
            while True:
                left = None if idle is None else idle - (time.monotonic() - last_frame)
                if (left is not None and left <= 0) or (stop is not None and stop.is_set()):
                    return
                checks = None if stop is None else STOP_CHECK
                due = (left, tail.settle_left(), outage.trial_left(), checks)
                waits = [wait for wait in due if wait is not None]
                try:
                    frame = stream.next(timeout=min(waits, default=None))
                except TimeoutError:
                    outage.check()
                    if tail.settle_left() == 0:
                        outage.live()  # a plain server's stream has surely started by now
                        if tail.catch_up(None):
                            return
                    continue
                outage.live()
                last_frame = time.monotonic()
                message = frame.get("message")
                if not isinstance(message, dict):
                    many = label if stop is not None else None  # a room of a tail of many
                    if not _gap_told(inv, frame, many) or body.get("events"):
                        printer.response(frame)
                    continue
                # Frames come in the room's order: the last one received is where a
                # resume starts (replayed --history messages included).
                cursor = str(message.get("id", ""))
                if tail.catch_up(message) or tail.show(message):
                    return
        except ChatctlError as e:
            # What a restart, a proxy or a database blip does (a drop, a gateway's 502,
            # close 1001 or 4503) is waited out and resumed; the stream's own refusals
            # (kicked, room deleted, a refused token) end the tail with their exits.
            # A first failure is quick: a wrong --url must not hang, and the first
            # connection's tries share one --timeout, as a call's retries do.
            outage.stream_failed(e, client, first=not joined, no_reconnect=no_reconnect)
        finally:
            if stream is not None:
                stream.close()


def _gap_told(inv: Invocation, frame: dict[str, Any], room: str | None = None) -> bool:
    """Say on stderr what a ``gap`` event means (``--since`` older than what the room
    keeps), after ``room``'s name in a tail of many; True when ``frame`` was one."""
    event = frame.get("event")
    if not isinstance(event, dict) or event.get("type") != "gap":
        return False
    inv.notice(gap_words(event) if room is None else f"{room}: {gap_words(event)}")
    return True


def gap_words(gap: dict[str, Any]) -> str:
    """One line for a gap (``join --since``, ``history --after/--before``)."""
    at, through = gap.get("at"), gap.get("through")
    return (
        f"messages up to {at} (id {through}) were removed by the room's retention:"
        " what follows starts at the oldest message kept"
    )


#: On a server that cannot resume, a gap is filled from History with the messages sent
#: since this long before the latest one printed (ids already printed are skipped).
GAP_SLACK_NS = 5_000_000_000
#: ids remembered to skip messages printed before (more than a gap's slack needs).
REMEMBERED = 10_000
#: seconds after a plain server's stream opened when History is read for what the stream
#: cannot replay, unless its first message comes sooner: m3o subscribes the stream some
#: time after it gets the JoinRequest and says nothing when it has, and a message sent
#: before then comes neither live nor in a History read before it.
SETTLE = 1.0


class _Tail:
    """The messages printed so far: --count, the joiner's own hidden unless asked for,
    and, for a server that cannot resume (a plain m3o server), what reads History in its
    stead: --history's last N, and after a reconnect the messages sent while the stream
    was down, never printing one twice."""

    def __init__(
        self,
        inv: Invocation,
        printer: "_Printer",
        request: dict[str, Any],
        include_own: bool,
        count: int | None,
    ) -> None:
        self.inv = inv
        self.printer = printer
        self.room_id: str = request.get("room_id", "")
        #: the JoinRequest, whose user the stream binds to the token's own (in place)
        self.request = request
        self.include_own = include_own
        self.count = count
        self.printed = 0
        self.seen: deque[str] = deque(maxlen=REMEMBERED)
        self.seen_set: set[str] = set()
        self.latest_ns: int | None = None
        self.since_ns = 0
        #: what History must give once the stream is surely live: ("replay", N) or
        #: ("gap", 0), due at ``due`` (monotonic) at the latest.
        self.pending: tuple[str, int] | None = None
        self.due = 0.0

    def show(self, message: dict[str, Any]) -> bool:
        """Print one message unless it was printed before or is the joiner's own (live
        frames skip those, replays carry them: hidden everywhere, so a resumed tail
        prints what an unbroken one would). True when --count is reached."""
        message_id = str(message.get("id", ""))
        if message_id in self.seen_set:
            return False
        if len(self.seen) == self.seen.maxlen:
            self.seen_set.discard(self.seen[0])
        self.seen.append(message_id)
        self.seen_set.add(message_id)
        sent = time_ns(message.get("sent_at"))
        if sent is not None and (self.latest_ns is None or sent > self.latest_ns):
            self.latest_ns = sent
        if not self.include_own and message.get("user_id") == self.request["user_id"]:
            return False
        self.printer.response({"message": message})
        self.printed += 1
        return self.count is not None and self.printed >= self.count

    def joined_at(self, when: datetime | None) -> None:
        """The moment the first stream started, by the server's clock (to the second,
        rounded down): a gap is never filled with messages from before it."""
        when = when or datetime.now(UTC)
        self.since_ns = int(when.timestamp()) * 1_000_000_000

    def catch_up_later(self, kind: str, n: int = 0) -> None:
        """Read History for ``kind`` when the new stream's first message comes, or after
        SETTLE seconds, whichever is first."""
        self.pending = (kind, n)
        self.due = time.monotonic() + SETTLE

    def settle_left(self) -> float | None:
        """Seconds until the pending History read is due (0: now); None if none is."""
        return None if self.pending is None else max(0.0, self.due - time.monotonic())

    def catch_up(self, upto: dict[str, Any] | None) -> bool:
        """Do the pending History read, before ``upto`` (the stream's first message) is
        printed: --history's last N messages before it, or those of the gap. True when
        --count is reached."""
        if self.pending is None:
            return False
        kind, n = self.pending
        self.pending = None
        history = plain.read_history(self.inv, self.room_id)
        if upto is not None:
            upto_id = upto.get("id")
            history = next(
                (history[:i] for i, m in enumerate(history) if m.get("id") == upto_id), history
            )
        if kind == "replay":
            chosen = plain.select(history, limit=n)
        else:
            since = self.since_ns
            if self.latest_ns is not None:
                since = max(since, self.latest_ns - GAP_SLACK_NS)
            chosen = [m for m in history if (time_ns(m.get("sent_at")) or -1) >= since]
        return any(self.show(m) for m in chosen)


#: seconds a stream opened after a failure must stay up to end the outage (its backoff
#: and what was said of it); it is announced sooner if a frame comes. A replica without
#: its database closes a stream with 4503 only once its database timeout (5 s by default,
#: and a second) is spent: one more failed attempt, backed off from, not a reconnect.
TRIAL = 10.0
#: seconds between reminders that the same failure goes on (a long outage).
REMIND = 30.0
#: different reasons told in one outage at most; past them, only the reminders.
MAX_TOLD = 5


class _Outage:
    """The failed attempts since a stream last stayed up TRIAL seconds, and what stderr
    was told of them: one line when a failure is news (the first, or a different reason),
    a reminder every REMIND seconds while the same one goes on, and one when a stream is
    live again. A tail through a long outage, or against a server that closes every
    stream at once, says a few lines and backs off, not a line and a retry an attempt.

    The waits are the client's one retry helper's (``retry``): until the first stream
    started, the quick retries and the one --timeout they share, as a call's (the
    client's, ``client.retry``); after, for as long as join runs, backing off up to
    MAX_BACKOFF."""

    def __init__(self, inv: Invocation, retry: "Retry | None" = None) -> None:
        from chatctl.client.retry import Retry  # the client's (not at start-up)

        self.inv = inv
        #: None: no budget, an outage is waited out for as long as join runs.
        self.retry = retry or Retry(math.inf, retries=0, cap=MAX_BACKOFF, sleep=time.sleep)
        self.began = 0.0
        self.told: set[str] = set()
        self.told_at = 0.0
        #: when the current stream opened (monotonic), and the line that announces it.
        self.opened = 0.0
        self.note: str | None = None

    @property
    def failures(self) -> int:
        """Failed attempts in a row (0: none since a stream stayed up, or never failed)."""
        return self.retry.failures

    def joined(self) -> None:
        """The first stream started: from now on an outage is waited out for as long as
        join runs."""
        self.retry.deadline = math.inf

    def failed(self, why: str, *, first: bool = False) -> bool:
        """An attempt failed, or a stream ended for a passing reason: wait, then True
        (retry); False, at once, when there is to be no retry (``first``: before any
        stream started, the quick retries or the --timeout are spent). The first
        connection's retries are silent, as a call's are."""
        now = time.monotonic()
        delay = self.retry.delay(quick=first)
        if delay is None:
            return False
        if not self.told:
            self.began = now
        self.note = None
        if not first:
            self._tell(why, delay, now)
        self.retry.sleep(delay)
        return True

    def stream_failed(
        self, e: ChatctlError, client: "Client", *, first: bool, no_reconnect: bool
    ) -> None:
        """A stream failed (``first``: before any started): raise what ends the tail (an
        end that is not passing; with --no-reconnect, exit 3; the retries spent), else
        wait and return, for the caller to resume."""
        if not e.passing or (first and no_reconnect):
            raise e
        if no_reconnect:
            raise _not_resumed(e, client.where) from None
        # The embedded local server may have been stopped: the next attempt starts it.
        client.forget_connection()
        slow = isinstance(e, StreamClosed) and e.close_code == CLOSE_TOO_SLOW
        why = "this reader fell behind and was cut off" if slow else e.message
        if not self.failed(why, first=first):
            raise e

    def _tell(self, why: str, delay: float, now: float) -> None:
        # A server may word each failure anew: news is bounded too.
        if why not in self.told and len(self.told) < MAX_TOLD:
            self.told.add(why)
            self.told_at = now
            self.inv.notice(f"{why}; reconnecting in {delay:.1f}s")
        elif now - self.told_at >= REMIND:
            self.told_at = now
            self.inv.notice(
                f"still reconnecting after {now - self.began:.0f}s "
                f"({self.failures} attempts): {why}"
            )

    def started(self, note: str | None = None) -> None:
        """A stream started; after failures, ``note`` announces it once it is live."""
        self.opened = time.monotonic()
        self.note = note if self.failures else None

    def trial_left(self) -> float | None:
        """Seconds until the stream has stayed up long enough to end the outage."""
        if not self.failures:
            return None
        return max(0.0, self.opened + TRIAL - time.monotonic())

    def live(self) -> None:
        """A frame came: the stream is live. Said once; the next failure is news again,
        but the backoff goes on growing until the stream has stayed up TRIAL seconds."""
        if self.note is not None:
            self.inv.notice(self.note)
            self.note = None
            self.told = set()
        self.check()

    def check(self) -> None:
        """The outage is over once the stream has stayed up TRIAL seconds."""
        if self.failures and time.monotonic() - self.opened >= TRIAL:
            self.retry.failures = 0
            self.live()


def _not_resumed(e: ChatctlError, where: str) -> ConnectError:
    """With --no-reconnect, what would have been resumed ends the tail: exit 3, the cause
    in the message."""
    error = e if isinstance(e, ConnectError) else ConnectError(e.message, where=where)
    error.hint = "join again with --since the last message's id to resume from it"
    return error


# -- many rooms ----------------------------------------------------------------------------

_JOIN = ENDPOINTS["Join"]
#: seconds between the listings of a user's rooms by ``join --all`` on a server without
#: JoinRooms (which cannot tell a stream of a new room, or of one the user left).
RELIST = 3.0
#: seconds between the checks of a room's thread that it is still wanted.
STOP_CHECK = 0.25


class _Printer(Protocol):
    def response(self, response: dict[str, Any]) -> None: ...


class _Shared:
    """The one output of a tail of many rooms, written by one thread a room on a server
    without JoinRooms: one line at a time, --count over all rooms, and the first failure
    to write (a closed pipe) or to follow (every room ended) handed to the main thread."""

    def __init__(self, printer: "Renderer", count: int | None) -> None:
        self.printer = printer
        self.count = count
        self.printed = 0
        self.lock = threading.Lock()
        self.done = threading.Event()
        self.failure: BaseException | None = None
        #: why the last room to end stopped being followed (kicked, deleted, ...).
        self.last_error: ChatctlError | None = None
        self.last_frame = time.monotonic()

    def response(self, response: dict[str, Any]) -> None:
        with self.lock:
            if self.done.is_set():
                return
            self.last_frame = time.monotonic()
            try:
                self.printer.response(response)
            except BaseException as e:  # a closed pipe: the main thread ends the tail
                self.fail(e)
                return
            if "message" in response:
                self.printed += 1
                if self.count is not None and self.printed >= self.count:
                    self.done.set()

    def fail(self, e: BaseException) -> None:
        if self.failure is None:
            self.failure = e
        self.done.set()


class _Many:
    """``join ROOM ROOM...`` and ``join --all``: every room printed as it comes, each line
    with its room's name on a terminal (room_id in JSON lines, as always)."""

    def __init__(
        self,
        inv: Invocation,
        rooms: list[str],
        *,
        every_room: bool,
        user: str | None,
        cursor: str | None,
        count: int | None,
        idle: float | None,
        no_reconnect: bool,
        include_own: bool,
        events: bool,
        show_ids: bool,
    ) -> None:
        self.inv = inv
        self.every_room = every_room
        self.cursor = cursor
        self.count = count
        self.idle = idle
        self.no_reconnect = no_reconnect
        self.include_own = include_own
        self.events = events
        self.client = inv.client
        self.request: dict[str, Any] = {"user_id": user, "events": events or None}
        if include_own:
            self.request["include_own"] = True
        self.defaults = {"user_id": inv.acting_user(user)}
        #: the rooms named, as ids (names resolved with one List, before anything else).
        self.named: list[str] = []
        if rooms:
            calls = run.build_requests(
                inv, "Join", self.request, self.defaults, each=("room_id", rooms)
            )
            self.named = list(dict.fromkeys(call.body["room_id"] for call in calls))
        #: room id → name, for the lines' labels (filled as rooms are announced).
        self.names: dict[str, str] = {}
        #: the rooms that ended for the user (kicked, left, deleted, refused).
        self.ended: set[str] = set()
        self.printer = inv.renderer(batch=True, live=True, show_ids=show_ids)
        from chatctl.output import LineRenderer

        if isinstance(self.printer, LineRenderer):
            self.printer.rooms = self.names

    def run(self) -> None:
        user_id = self.defaults["user_id"]
        server = self.client.facts(user_id)
        if server.has(JOIN_ROOMS):
            self._one_stream()
            return
        for flag, feature, given in (
            ("--since", "resume", self.cursor is not None),
            ("--events", "events", self.events),
            ("--include-own", "include-own", self.include_own),
        ):
            if given and not server.has(feature):
                raise plain.unsupported(self.inv, f"join {flag}", feature)
        self._each_room()

    # -- chatctl's server: one JoinRooms stream ------------------------------------------

    def _one_stream(self) -> None:
        inv, client = self.inv, self.client
        #: each room's cursor: its last message printed, else where the server said a
        #: resume of it starts (``room_added``'s since).
        cursors: dict[str, str] = {}
        #: where a room not known yet (let in while the stream was down) resumes from.
        all_since = self.cursor
        base: dict[str, Any] = {
            "user_id": self.defaults["user_id"],
            "events": self.events or None,
            "include_own": self.include_own or None,
            "all": self.every_room or None,
        }
        if self.request.get("user_id"):
            base["user_id"] = self.request["user_id"]
        tail = _Tail(inv, self.printer, base, self.include_own, self.count)
        outage = _Outage(inv, client.retry(cap=MAX_BACKOFF))
        joined = False
        last_frame = time.monotonic()
        while True:
            stream: JoinStream | None = None
            try:
                stream = client.join(endpoint="JoinRooms")
                body = {k: v for k, v in base.items() if v is not None}
                # Every room followed, with its cursor; and a room named but not announced
                # yet (a drop before its room_added) from where the tail started.
                rooms = [
                    *cursors,
                    *(r for r in self.named if r not in cursors and r not in self.ended),
                ]
                if rooms:
                    body["room_ids"] = rooms
                    since = all_since if joined else self.cursor
                    if joined or since is not None:
                        body["since_ids"] = [cursors.get(r) or since for r in rooms]
                if self.every_room and all_since is not None:
                    body["all_since"] = all_since
                stream.start(body)
                tail.request["user_id"] = body["user_id"]  # as bound to the token's user
                outage.started("reconnected; resuming every room after its last message")
                if not joined:
                    if all_since is None:
                        all_since = cursor_for_time(stream.server_time or datetime.now(UTC))
                    what = "every room of the user" if self.every_room else "the rooms"
                    inv.notice(f"following {what}, waiting for messages", terminal_only=True)
                    outage.joined()
                joined = True
                while True:
                    left = (
                        None if self.idle is None else self.idle - (time.monotonic() - last_frame)
                    )
                    if left is not None and left <= 0:
                        return
                    waits = [w for w in (left, outage.trial_left()) if w is not None]
                    try:
                        frame = stream.next(timeout=min(waits, default=None))
                    except TimeoutError:
                        outage.check()
                        continue
                    outage.live()
                    if self._news(frame, cursors):
                        continue
                    last_frame = time.monotonic()
                    message = frame.get("message")
                    if not isinstance(message, dict):
                        # A room's gap (--since older than what it keeps): on stderr, as
                        # a tail of one room says it; stdout has it with --events only.
                        event = frame.get("event")
                        room = _room_of(event) if isinstance(event, dict) else ""
                        name = self.names.get(room, room)
                        if not _gap_told(inv, frame, name) or self.events:
                            self.printer.response(frame)
                        continue
                    room_id = _room_of(message)
                    if room_id in cursors:
                        cursors[room_id] = str(message.get("id", ""))
                    if tail.show(message):
                        return
            except ChatctlError as e:
                outage.stream_failed(e, client, first=not joined, no_reconnect=self.no_reconnect)
            finally:
                if stream is not None:
                    stream.close()

    def _news(self, frame: dict[str, Any], cursors: dict[str, str]) -> bool:
        """A room added or ended (True), or a frame to print (False). A room ended is
        dropped with a line on stderr; when the last of the rooms named ends (no --all),
        the tail ends as a Join of it would."""
        added = frame.get("room_added")
        if isinstance(added, dict):
            room_id = _room_of(added)
            name = str(added.get("name") or room_id)
            self.names[room_id] = name
            self.ended.discard(room_id)  # let in again
            if room_id not in cursors:
                cursors[room_id] = str(added.get("since", ""))
                if added.get("new"):
                    self.inv.notice(f"now following {name}: the user was let into it")
            return True
        ended = frame.get("room_ended")
        if isinstance(ended, dict):
            room_id = _room_of(ended)
            detail = str(ended.get("detail", ""))
            code = ended.get("code")
            name = self.names.get(room_id, room_id)
            cursors.pop(room_id, None)
            self.ended.add(room_id)
            self.inv.notice(f"{name}: {detail}; no longer following it")
            if not self.every_room and not cursors and self.ended.issuperset(self.named):
                raise StreamClosed(code if isinstance(code, int) else 1000, detail)
            return True
        return False

    # -- any other server: one Join a room -----------------------------------------------

    def _each_room(self) -> None:
        """One Join a room, each in a thread of its own with its own connection, resumed
        (or its gap read from History) on its own; one output, written a line at a time.
        With --all, the user's rooms are listed again every RELIST seconds: a new one is
        followed from then on, one no longer listed (left, kicked, deleted) dropped."""
        inv = self.inv
        user_id = self.client.bound(_JOIN, {"user_id": self.defaults["user_id"]})["user_id"]
        shared = _Shared(self.printer, self.count)
        following: dict[str, tuple[threading.Thread, threading.Event]] = {}

        def follow(room_id: str) -> None:
            stop = threading.Event()
            thread = threading.Thread(
                target=self._follow_in_thread, args=(room_id, shared, stop), daemon=True
            )
            following[room_id] = (thread, stop)
            thread.start()

        listed = self._list(user_id) if self.every_room else self._named(inv.listed_rooms())
        room_ids = list(self.named)
        if self.every_room:
            room_ids += [r for r in listed if r not in room_ids]
        inv.notice(f"following {len(room_ids)} rooms, waiting for messages", terminal_only=True)
        for room_id in room_ids:
            follow(room_id)
        relist = time.monotonic() + RELIST
        while not shared.done.wait(0.05):
            now = time.monotonic()
            if self.idle is not None and now - shared.last_frame >= self.idle:
                return
            if self.every_room and now >= relist:
                relist = now + RELIST
                try:
                    listed = self._list(user_id)
                except ChatctlError:
                    continue  # a blip: the next listing tells
                for room_id in listed:
                    if room_id not in following:
                        inv.notice(f"now following {self.names[room_id]}: the user is in it")
                        follow(room_id)
                for room_id in [r for r in following if r not in listed]:
                    _thread, stop = following.pop(room_id)
                    name = self.names.get(room_id, room_id)
                    inv.notice(f"{name}: the user is no longer in it; no longer following it")
                    stop.set()
            elif not self.every_room and not any(t.is_alive() for t, _ in following.values()):
                break
        if shared.failure is not None:
            raise shared.failure
        if not shared.done.is_set() and shared.last_error is not None:
            raise shared.last_error  # every room ended: as a Join of the last one would

    def _list(self, user_id: str) -> list[str]:
        """The rooms the user is in (one List, filtered by them), their names noted."""
        from chatctl.schema import rooms_in

        return self._named(rooms_in(self.client.call("List", {"user_id": user_id})))

    def _named(self, rooms: list[dict[str, Any]]) -> list[str]:
        """The ids of a List's rooms, their names noted for the lines' labels."""
        for item in rooms:
            self.names[str(item.get("id", ""))] = str(item.get("name") or item.get("id", ""))
        return [str(item.get("id", "")) for item in rooms]

    def _follow_in_thread(self, room_id: str, shared: _Shared, stop: threading.Event) -> None:
        from chatctl.client import DEFAULT_TIMEOUT, Client

        settings = self.inv.settings()
        client = Client(  # its own connection: the threads share no client
            settings.url,
            settings.token,
            timeout=self.inv.options.timeout or DEFAULT_TIMEOUT,
            ca_cert=settings.ca_cert,
        )
        inv = copy.copy(self.inv)
        inv._client = client  # History reads (a gap filled) go through it too
        body = {"room_id": room_id, **{k: v for k, v in self.request.items() if v}}
        body["user_id"] = self.defaults["user_id"]
        name = self.names.get(room_id, room_id)
        try:
            _follow(
                inv,
                client,
                body,
                name,
                shared,
                self.cursor,
                None,
                None,
                None,
                self.no_reconnect,
                stop,
            )
        except ChatctlError as e:
            inv.notice(f"{name}: {e.message}; no longer following it")
            shared.last_error = e
        except BaseException as e:
            shared.fail(e)
        finally:
            client.close()


def _room_of(item: dict[str, Any]) -> str:
    """The room a frame's object is of, in either edition (``group_id`` in m3o's final)."""
    return str(item.get("room_id", item.get("group_id", "")))
