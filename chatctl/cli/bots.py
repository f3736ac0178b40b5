"""Bots: ``join --exec CMD`` runs a command for each message, ``join --cursor FILE`` keeps
the position of a tail across restarts.

``--exec CMD``: each message the tail would print runs ``sh -c CMD`` once, in order, one
at a time (the next message waits for CMD to end), as websocat's ``exec:`` and git's
aliases run theirs. CMD gets:

- the message on stdin, as the JSON line ``-o jsonl`` prints for it;
- its fields in the environment: ``CHATCTL_MESSAGE_ID``, ``CHATCTL_ROOM_ID``,
  ``CHATCTL_USER_ID`` (who sent it), ``CHATCTL_TEXT``, ``CHATCTL_SUBJECT``,
  ``CHATCTL_CLIENT``, ``CHATCTL_SENT_AT`` (each cut at 64 KiB of UTF-8, a NUL written
  as U+FFFD: the whole message is on stdin);
- what a ``chatctl`` inside CMD needs to reach the same server as the same user:
  ``CHATCTL_URL`` (when one was given, by flag, environment or profile; none means the
  same embedded local server), ``CHATCTL_PROFILE`` (when ``--profile`` was given) and
  ``CHATCTL_USER`` (the user who joined), so ``chatctl send "$CHATCTL_ROOM_ID" pong``
  replies as the bot. The token is never put in a variable: CMD inherits chatctl's own
  environment (``CHATCTL_TOKEN``) and profile, and a token given by ``--token`` is not
  passed on.

CMD's stdout and stderr are chatctl's (its output is the tail's output; messages are not
printed). It runs in a process group of its own, for at most ``--exec-timeout`` seconds
(60 by default, 0 for no limit): then its group gets SIGTERM, and what is left of it
SIGKILL once CMD ended or 5 s later. Ctrl-C is passed to it as SIGINT, the same way, and
chatctl exits 130. A CMD that exits
non-zero, is killed or times out is reported on stderr with its status and the message's
id, and the tail goes on; with ``--exec-stop-on-error`` the tail ends there, exit 1.

``--cursor FILE``: where the tail starts is saved in FILE as soon as the stream is open
(unless FILE has a position already, or ``--history`` replays messages first), and after
each message is handled (CMD ended, or, without ``--exec``, the message was printed), its
id is saved in FILE — written to a new file, fsynced and
renamed over FILE (mode 0600) — and a tail started with FILE present
resumes right after it (``--since`` and ``--history`` then only say where a first run
starts). One tail a file: a second one is exit 2 while the first runs (a lock on
``.FILE.lock``). A message whose CMD failed counts as handled, unless ``--exec-stop-on-error``
stopped the tail on it: then the next run starts with it. So a bot killed at any moment
(``kill -9``) and started again handles every message, in order, none skipped: at least
once, the one in flight when it was killed at most twice. It needs chatctl's server (its
resume extension). FILE holds ``{"rooms": {ROOM_ID: MESSAGE_ID}}``: one position per room.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import weakref
from pathlib import Path
from typing import TYPE_CHECKING, Any

from chatctl.errors import ChatctlError, UsageError
from chatctl.output import Renderer, json_text
from chatctl.wire import is_uuid

if TYPE_CHECKING:
    import subprocess

    from chatctl.cli.context import Invocation

__all__ = ["EXEC_TIMEOUT", "Bot", "CursorFile", "ExecFailed", "bot_for"]

#: seconds CMD may run by default (``--exec-timeout``).
EXEC_TIMEOUT = 60.0
#: seconds between the SIGTERM (or SIGINT) that stops CMD and the SIGKILL.
GRACE = 5.0
#: bytes of one message field in CMD's environment (Linux takes 128 KiB a variable).
ENV_VALUE_BYTES = 64 * 1024
#: bytes of a cursor file chatctl reads (its own hold a few rooms' ids).
CURSOR_BYTES = 1024 * 1024
#: a message's fields, and the variable each is given to CMD in.
MESSAGE_ENV = (
    ("id", "CHATCTL_MESSAGE_ID"),
    ("room_id", "CHATCTL_ROOM_ID"),
    ("user_id", "CHATCTL_USER_ID"),
    ("text", "CHATCTL_TEXT"),
    ("subject", "CHATCTL_SUBJECT"),
    ("client", "CHATCTL_CLIENT"),
    ("sent_at", "CHATCTL_SENT_AT"),
)


class ExecFailed(ChatctlError):
    """CMD failed and ``--exec-stop-on-error`` ends the tail (exit 1)."""


def bot_for(
    inv: Invocation,
    command: str | None,
    cursor: Path | None,
    *,
    stop_on_error: bool,
    timeout: float | None,
) -> Bot:
    """The bot the flags ask for; flags that need ``--exec`` without it, and a cursor
    file chatctl cannot use, are exit 2 (nothing sent yet)."""
    if command is None:
        if stop_on_error or timeout is not None:
            flag = "--exec-stop-on-error" if stop_on_error else "--exec-timeout"
            raise UsageError(f"{flag} needs --exec CMD")
    elif not command.strip():
        raise UsageError("--exec needs a command, e.g. --exec ./bot")
    return Bot(
        inv,
        command,
        CursorFile(cursor) if cursor is not None else None,
        stop_on_error=stop_on_error,
        timeout=EXEC_TIMEOUT if timeout is None else timeout,
    )


class CursorFile:
    """The last message handled in each room, kept in a file that a crash cannot leave
    half-written."""

    def __init__(self, path: Path) -> None:
        self.path = path
        parent = path.parent
        if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
            raise UsageError(
                f"cannot write the cursor file {path}: {parent} is not a directory chatctl "
                "may write in"
            )
        lock = self._take_lock()
        #: the lock goes with this object (or the process), whichever ends first.
        self.close = weakref.finalize(self, os.close, lock)
        self.rooms = self._read()

    def _take_lock(self) -> int:
        """One tail a cursor file: a lock (flock) on ``.FILE.lock`` beside it, held for
        the life of the process (let go by the kernel however it ends, kill -9 too)."""
        import fcntl

        lock = self.path.with_name(f".{self.path.name}.lock")
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        except OSError as e:
            raise UsageError(f"cannot lock the cursor file {self.path}: {e.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise UsageError(
                f"another chatctl join is using the cursor file {self.path}",
                hint="one tail a cursor file: stop the other one, or name another file",
            ) from None
        return fd

    def position(self, room_id: str) -> str | None:
        """The id of the last message handled in ``room_id``, if any."""
        return self.rooms.get(room_id)

    def _read(self) -> dict[str, str]:
        hint = f"remove {self.path} to start from now (or from --since), or name another file"
        try:
            with open(self.path, "rb") as f:
                data = f.read(CURSOR_BYTES + 1)
        except FileNotFoundError:
            return {}
        except OSError as e:
            raise UsageError(f"cannot read the cursor file {self.path}: {e.strerror}") from None
        try:
            if len(data) > CURSOR_BYTES:
                raise ValueError("too large")
            rooms = json.loads(data.decode("utf-8"))["rooms"]
            if not isinstance(rooms, dict) or not all(
                isinstance(r, str) and isinstance(m, str) and is_uuid(m) for r, m in rooms.items()
            ):
                raise ValueError("not a map of rooms to message ids")
        except (ValueError, KeyError, TypeError):
            raise UsageError(f"{self.path} is not a chatctl cursor file", hint=hint) from None
        return dict(rooms)

    def save(self, room_id: str, message_id: str) -> None:
        """Make ``message_id`` the position in ``room_id``: a new file, fsynced, renamed
        over the old one. A crash leaves the old file or the new one, whole; the directory
        is not fsynced (a cost a message): a power cut may lose the rename, and so go back
        to an earlier position, which repeats messages and never skips one."""
        self.rooms[room_id] = message_id
        data = (json.dumps({"rooms": self.rooms}) + "\n").encode()
        path = self.path
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            tmp.unlink(missing_ok=True)  # left by a chatctl of the same pid killed mid-write
            # Made here and now (O_EXCL), never through a symlink someone placed.
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            try:
                os.fchmod(fd, 0o600)
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, path)
        except OSError as e:
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)
            raise ChatctlError(
                f"cannot save the position in the cursor file {path}: {e.strerror}",
                hint="the last message was handled but not recorded: a restart handles it again",
            ) from None


class Bot(Renderer):
    """Stands where ``join``'s renderer stands: each message runs CMD (or, without one, is
    printed) and then its id is saved in the cursor file; events go to ``printer``."""

    def __init__(
        self,
        inv: Invocation,
        command: str | None,
        cursor: CursorFile | None,
        *,
        stop_on_error: bool = False,
        timeout: float = EXEC_TIMEOUT,
    ) -> None:
        super().__init__(inv.stdout, batch=True)
        self.inv = inv
        self.command = command
        self.cursor = cursor
        self.stop_on_error = stop_on_error
        self.timeout = timeout or None
        self.printer: Renderer | None = None
        #: the JoinRequest (its room, and its user once the stream bound it).
        self.request: dict[str, Any] = {}

    def attach(self, printer: Renderer, request: dict[str, Any]) -> Bot:
        """Take ``printer``'s place for the tail of ``request``."""
        self.printer = printer
        self.request = request
        return self

    def position(self, room_id: str) -> str | None:
        return None if self.cursor is None else self.cursor.position(room_id)

    def begin(self, room_id: str, start: str) -> None:
        """The tail of ``room_id`` started at ``start`` (after that id): kept as its
        position if the file has none, so a bot killed before it handled its first
        message starts there again, not at the moment of its restart (which would skip
        what came between)."""
        if self.cursor is not None and self.cursor.position(room_id) is None:
            self.cursor.save(room_id, start)

    # -- the renderer's side -----------------------------------------------------------

    def response(self, response: dict[str, Any]) -> None:
        message = response.get("message")
        if not isinstance(message, dict):
            if self.printer is not None:
                self.printer.response(response)
            return
        if self.command is not None:
            self.run(message)
        elif self.printer is not None:
            self.printer.response(response)
        message_id = message.get("id")
        if self.cursor is not None and isinstance(message_id, str) and is_uuid(message_id):
            room = message.get("room_id") or message.get("group_id") or self.request["room_id"]
            self.cursor.save(str(room), message_id)

    def close(self, *, failed: bool | None = None) -> None:
        if self.printer is not None:
            self.printer.close(failed=failed)

    # -- CMD ---------------------------------------------------------------------------

    def run(self, message: dict[str, Any]) -> None:
        """Run CMD for ``message`` and wait for it; report (or, with stop_on_error, raise)
        its failure."""
        import subprocess

        assert self.command is not None
        with contextlib.suppress(OSError, ValueError):
            self.inv.stdout.flush()  # what was printed before comes before CMD's output
        try:
            proc = subprocess.Popen(
                ["/bin/sh", "-c", self.command],
                stdin=subprocess.PIPE,
                env=self.environment(message),
                process_group=0,
            )
        except OSError as e:
            raise ExecFailed(f"--exec cannot run /bin/sh: {e.strerror}") from None
        failure: str | None = None
        try:
            proc.communicate((json_text(message) + "\n").encode(), timeout=self.timeout)
        except subprocess.TimeoutExpired:
            _stop(proc, signal.SIGTERM)
            failure = f"did not end within {self.timeout:g}s and was stopped"
        except BaseException:  # Ctrl-C: CMD gets it too, and chatctl waits for its end
            _stop(proc, signal.SIGINT)
            raise
        if failure is None and proc.returncode != 0:
            failure = _status(proc.returncode)
        if failure is None:
            return
        what = f"--exec {self.command!r} {failure} on message {message.get('id', '')}"
        if self.stop_on_error:
            hint = (
                f"it stays the next message in {self.cursor.path}: the next run starts with it"
                if self.cursor is not None
                else None
            )
            raise ExecFailed(f"{what}; stopped (--exec-stop-on-error)", hint=hint)
        self.inv.notice(what)

    def environment(self, message: dict[str, Any]) -> dict[str, str]:
        """chatctl's environment, the message's fields and where ``chatctl`` reaches the
        same server as the same user (never the token: see the module's docstring)."""
        env = {k: v for k, v in os.environ.items() if k not in _MESSAGE_NAMES}
        url = self.inv.settings().url
        if url:
            env["CHATCTL_URL"] = url
        if self.inv.options.profile:
            env["CHATCTL_PROFILE"] = self.inv.options.profile
        user = self.request.get("user_id")
        if isinstance(user, str) and user:
            env["CHATCTL_USER"] = user
        fields = dict(message)
        if "room_id" not in fields and "group_id" in fields:  # m3o's final edition
            fields["room_id"] = fields["group_id"]
        for field, name in MESSAGE_ENV:
            env[name] = _env_value(fields.get(field))
        return env


_MESSAGE_NAMES = frozenset(name for _, name in MESSAGE_ENV)


def _env_value(value: Any) -> str:
    """A field as an environment variable can hold it: a string (JSON for anything else),
    NUL as U+FFFD, lone surrogates as U+FFFD, at most ENV_VALUE_BYTES of UTF-8."""
    if value is None:
        return ""
    text = value if isinstance(value, str) else json.dumps(value)
    # Valid UTF-8 first (a lone surrogate becomes U+FFFD), then cut on a character.
    valid = text.replace("\0", "\ufffd").encode("utf-8", "surrogatepass").decode("utf-8", "replace")
    return valid.encode("utf-8")[:ENV_VALUE_BYTES].decode("utf-8", "ignore")


def _status(code: int) -> str:
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = "a signal"
        return f"was killed by signal {-code} ({name})"
    return f"exited {code}"


def _stop(proc: subprocess.Popen[bytes], sig: int) -> None:
    """End CMD: ``sig`` to its process group, up to GRACE seconds for it to end, then
    SIGKILL to whatever is left of the group (what CMD started in the background too)."""
    import subprocess

    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(GRACE)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
