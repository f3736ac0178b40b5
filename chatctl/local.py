"""The local default: a private chat server the CLI starts on demand, when no URL is set.

With no URL configured anywhere, the CLI talks to a server of its own on a Unix socket in
the user's runtime directory (``$XDG_RUNTIME_DIR/chatctl/server.sock``; the state
directory where there is none), storing rooms in the user's data directory
(``~/.local/share/chatctl/chat.db``). :func:`ensure_local_server` starts it when it is not
running: detached, in a session of its own, its output in ``server.log`` in the state
directory. It exits by itself after ten idle minutes, so nothing lingers.

Starting is serialised by an ``flock`` on ``server.lock`` beside the socket, so CLIs that
start at the same moment make one server; the server writes ``server.pid`` there itself,
for ``chatctl serve --status`` and ``--stop``.

Those directories are trusted only when they are private, as tmux and ssh-agent trust
theirs: each is looked at with ``lstat`` (a symlink is not followed) and must be a
directory of this user's that no one else may write to, or nothing is read, written or
connected to through it (exit 2, naming the directory and the fix). Another local user
who made ``/tmp/chatctl`` first (``XDG_RUNTIME_DIR=/tmp``) gets nothing. Files in them
are opened with ``O_NOFOLLOW``.

Stdlib only at import (platformdirs is imported when a path is first needed): the CLI
imports this module on its start-up path.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from chatctl.errors import ChatctlError, ConnectError, UsageError

__all__ = [
    "IDLE_EXIT_SECONDS",
    "LocalServerStatus",
    "default_db_path",
    "ensure_local_server",
    "local_server_status",
    "socket_answers",
    "socket_path",
    "stop_local_server",
]

APP_NAME = "chatctl"
#: the embedded server exits after this many seconds with no open request or stream.
IDLE_EXIT_SECONDS = 600.0
#: how often to look again while waiting for a server to start or stop.
_POLL_SECONDS = 0.02


@dataclass(frozen=True)
class LocalServerStatus:
    """What ``chatctl serve --status`` reports."""

    running: bool
    pid: int | None
    socket: str
    db: str
    log: str


def runtime_dir() -> Path:
    """Where the socket, pid file and lock live: private to the user, cleared at logout.

    ``$XDG_RUNTIME_DIR/chatctl`` on Linux, the platform's equivalent elsewhere; without a
    usable ``XDG_RUNTIME_DIR`` the state directory (platformdirs would fall back to a
    shared temporary directory, and warn).
    """
    import platformdirs

    if sys.platform.startswith(("darwin", "win")):
        return Path(platformdirs.user_runtime_dir(APP_NAME))
    xdg = os.environ.get("XDG_RUNTIME_DIR", "")
    if os.path.isabs(xdg) and os.path.isdir(xdg) and os.access(xdg, os.W_OK | os.X_OK):
        return Path(xdg, APP_NAME)
    return state_dir()


def state_dir() -> Path:
    """Where the local server's log goes (``~/.local/state/chatctl``)."""
    import platformdirs

    return Path(platformdirs.user_state_dir(APP_NAME))


def default_db_path() -> Path:
    """The database ``chatctl serve`` uses by default (``~/.local/share/chatctl/chat.db``)."""
    import platformdirs

    return Path(platformdirs.user_data_dir(APP_NAME), "chat.db")


def socket_path() -> Path:
    """The local server's Unix socket."""
    return runtime_dir() / "server.sock"


def _pid_path() -> Path:
    return runtime_dir() / "server.pid"


def _lock_path() -> Path:
    return runtime_dir() / "server.lock"


def _log_path() -> Path:
    return state_dir() / "server.log"


def socket_answers(path: str | os.PathLike[str], timeout: float = 1.0) -> bool:
    """True when a server accepts connections on the Unix socket at ``path``."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.connect(os.fspath(path))
        except (FileNotFoundError, ConnectionRefusedError, TimeoutError):
            return False
        except OSError as exc:
            # Not a socket, or one we may not use: nobody we could talk to is there.
            if exc.errno in (errno.ENOTSOCK, errno.EACCES, errno.EPERM, errno.ECONNREFUSED):
                return False
            raise
        return True


def ensure_local_server(timeout: float = 10.0) -> str:
    """The path of the local server's Unix socket, starting the server if it is not running.

    Raises ConnectError when the server does not answer within ``timeout`` seconds.
    """
    sock = socket_path()
    _private_dir(sock.parent)
    if socket_answers(sock):
        return str(sock)
    deadline = time.monotonic() + timeout
    with _start_lock(deadline):
        # Another CLI may have started it while this one waited for the lock.
        if socket_answers(sock):
            return str(sock)
        # A socket file nobody answers on is left over from a server that died.
        with contextlib.suppress(FileNotFoundError):
            sock.unlink()
        pid = _start_detached(sock)
        _wait_until_answering(sock, pid, deadline)
    return str(sock)


def local_server_status() -> LocalServerStatus:
    """Whether the local server runs, and where its socket, database and log are."""
    sock = socket_path()
    # Nothing runs where there is no directory yet; one that is not private is refused.
    there = _private_dir(sock.parent, create=False)
    pid = _read_pid() if there else None
    running = pid is not None and _alive(pid) and socket_answers(sock)
    return LocalServerStatus(
        running=running,
        pid=pid if running else None,
        socket=str(sock),
        db=str(default_db_path()),
        log=str(_log_path()),
    )


def stop_local_server(timeout: float = 10.0) -> int | None:
    """Stop the local server (SIGTERM, then wait for it to exit); its pid, or None if none ran.

    Its live streams are closed with 1001 (going away), so their clients can resume. A
    server that has not exited after ``timeout`` seconds is killed.
    """
    deadline = time.monotonic() + timeout
    with _start_lock(deadline):
        pid = _read_pid()
        if pid is None or not _alive(pid) or not _is_local_server(pid):
            # Nothing of ours runs: leave no stale pid file to mislead the next look.
            with contextlib.suppress(FileNotFoundError):
                _pid_path().unlink()
            return None
        os.kill(pid, signal.SIGTERM)
        if not _wait_for_exit(pid, deadline):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            if not _wait_for_exit(pid, time.monotonic() + 2.0):
                raise ChatctlError(f"the local server (pid {pid}) did not exit")
        return pid


def _server_command(sock: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "chatctl",
        "serve",
        "--uds",
        str(sock),
        "--db",
        str(default_db_path()),
        "--pid-file",
        str(_pid_path()),
        "--idle-exit",
        str(IDLE_EXIT_SECONDS),
        # Nobody reads a background server's log line by line: keep only what went wrong.
        "--log-level",
        "warning",
    ]


# Started through a short-lived middle process, so the server is nobody's child: no zombie
# to reap and no "still running" warning in this process, and it outlives the CLI.
_DETACH = """\
import os, subprocess, sys
os.umask(0o077)
flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW
with open(os.open(sys.argv[1], flags, 0o600), "ab") as log:
    server = subprocess.Popen(
        sys.argv[2:], stdin=subprocess.DEVNULL, stdout=log, stderr=log,
        start_new_session=True, cwd="/",
    )
print(server.pid)
"""


def _start_detached(sock: Path) -> int:
    """Start the server in a session of its own; return its pid."""
    log = _log_path()
    _private_dir(log.parent)
    env = dict(os.environ)
    # A command run by a systemd service must not have its private server speak for it.
    env.pop("NOTIFY_SOCKET", None)
    # The server must run this same chatctl, even when it is not installed (a checkout).
    package_root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, env.get("PYTHONPATH")]))
    started = subprocess.run(
        [sys.executable, "-c", _DETACH, str(log), *_server_command(sock)],
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        check=False,
    )
    if started.returncode != 0:
        raise ConnectError(
            "could not start the local chat server", hint=started.stderr.strip() or None
        )
    return int(started.stdout.strip())


def _wait_until_answering(sock: Path, pid: int, deadline: float) -> None:
    while not socket_answers(sock):
        if not _alive(pid):
            raise ConnectError(
                "the local chat server exited as it started", hint=f"see its log: {_log_path()}"
            )
        if time.monotonic() > deadline:
            raise ConnectError(
                "the local chat server did not start in time", hint=f"see its log: {_log_path()}"
            )
        time.sleep(_POLL_SECONDS)


def _wait_for_exit(pid: int, deadline: float) -> bool:
    while _alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(_POLL_SECONDS)
    return True


@contextlib.contextmanager
def _start_lock(deadline: float) -> Iterator[None]:
    """Hold the lock that makes starting and stopping the local server one at a time."""
    import fcntl

    path = _lock_path()
    _private_dir(path.parent)
    fd = _open_private(path, os.O_RDWR | os.O_CREAT)
    try:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise ConnectError(
                        "another chatctl is still starting the local server",
                        hint=f"if none is, remove {path}",
                    ) from None
                time.sleep(_POLL_SECONDS)
        yield
    finally:
        # Closing the file releases the lock.
        os.close(fd)


def _private_dir(path: Path, *, create: bool = True) -> bool:
    """Make sure ``path`` is a directory of this user's that no one else may write to:
    created mode 0700 (with missing parents) when ``create``, else looked at with
    ``lstat``. False when it is missing (and not created); a UsageError naming the
    directory and the fix when it is not private. One only others may read is made 0700.
    """
    try:
        if create:
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            with contextlib.suppress(FileExistsError):
                path.mkdir(mode=0o700)
        st = path.lstat()
    except OSError as e:
        if isinstance(e, FileNotFoundError) and not create:
            return False
        raise UsageError(f"cannot use {path}: {e.strerror}", hint=_ELSEWHERE) from None
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
        what = "a symbolic link" if stat.S_ISLNK(st.st_mode) else "not a directory"
        raise UsageError(
            f"{path} is {what}; chatctl keeps its socket, lock and log only in a private "
            "directory of yours",
            hint=f"remove it (rm {path}), or {_ELSEWHERE}",
        )
    if st.st_uid != os.geteuid():
        raise UsageError(
            f"{path} belongs to another user (uid {st.st_uid}); chatctl keeps its socket, "
            "lock and log only in a private directory of yours",
            hint=f"remove it (as its owner or root: rm -r {path}), or {_ELSEWHERE}",
        )
    if st.st_mode & 0o022:
        raise UsageError(
            f"{path} may be written by other users (mode {stat.S_IMODE(st.st_mode):04o}), "
            "so what is in it cannot be trusted",
            hint=f"make it private: chmod 700 {path} (and remove what you did not put there)",
        )
    parent = path.parent.stat()
    if parent.st_mode & stat.S_IWOTH and not parent.st_mode & stat.S_ISVTX:
        raise UsageError(
            f"{path.parent} may be written by every user and has no sticky bit, so "
            f"{path.name} in it could be replaced",
            hint=f"chmod +t {path.parent}, or {_ELSEWHERE}",
        )
    if st.st_mode & 0o077:
        # Others may only look: make it private, through a descriptor that is that directory.
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        try:
            os.fchmod(fd, 0o700)
        finally:
            os.close(fd)
    return True


_ELSEWHERE = "point XDG_RUNTIME_DIR (or XDG_STATE_HOME) at a directory of your own"


def _open_private(path: Path, flags: int) -> int:
    """Open a file in a private directory without following a symlink; it must be a
    regular file of this user's (a FIFO would block, another user's file is not ours)."""
    try:
        fd = os.open(path, flags | os.O_NOFOLLOW | os.O_NONBLOCK, 0o600)
    except OSError as e:
        if e.errno != errno.ELOOP:
            raise
        raise UsageError(
            f"{path} is a symbolic link; chatctl does not follow links there",
            hint=f"remove it: rm {path}",
        ) from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid():
        os.close(fd)
        raise UsageError(
            f"{path} is not a file of yours; chatctl uses only its own files there",
            hint=f"remove it: rm {path}",
        )
    return fd


def _read_pid() -> int | None:
    try:
        fd = _open_private(_pid_path(), os.O_RDONLY)
    except OSError:
        return None
    try:
        with os.fdopen(fd, "rb") as file:
            return int(file.read(32).strip())
    except (OSError, ValueError):
        return None


def _alive(pid: int) -> bool:
    """True while process ``pid`` runs (a zombie, dead but not yet reaped, does not count)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True  # no /proc (macOS): the signal's answer stands
    # The state letter follows the command name, which is in parentheses and may hold any.
    return stat.rpartition(")")[2].split()[0] not in ("Z", "X")


def _is_local_server(pid: int) -> bool:
    """True when ``pid`` is the server on our socket, not a process that reused its pid."""
    if not os.path.isdir("/proc/self"):
        return True  # no /proc (macOS): trust the pid file the server wrote
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return b"serve" in argv and os.fsencode(socket_path()) in argv
