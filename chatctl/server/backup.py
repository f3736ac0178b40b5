"""Backing up a live SQLite server, and putting a backup in place (``chatctl serve backup``
and ``chatctl serve restore``).

- **Backup** is ``VACUUM INTO`` on a connection of its own: one read transaction, so the
  copy is the database as one commit left it (WAL readers never block the server's writer,
  nor it them), compacted, written to a new file beside the destination (made 0600 before
  SQLite writes a byte), checked with ``PRAGMA integrity_check``, synced, then renamed
  over the destination: a reader of ``FILE`` sees no copy or a whole one. A reader waits
  for another process's lock (a WAL being recovered, say) up to ``timeout``.
- **Restore** refuses while any server has the database open: every ``SQLiteStore``
  holds a shared ``flock`` on the file for its life (``store_sqlite.hold_open``), and
  restore takes it exclusively, without waiting. Under that lock it checks the backup
  (integrity, a schema this chatctl knows), copies it beside the database (0600),
  removes the old file's WAL and shared memory (they belong to the old file: replayed
  onto the new one they would corrupt it) and renames the copy into place. A server
  starting meanwhile finds the lock taken and says so.

PostgreSQL is backed up with its own tools (``pg_dump -Fc``, ``pg_restore``): see
docs/deployment.md.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path

from chatctl.errors import ChatctlError
from chatctl.server.store_sqlite import MIGRATIONS, BusyDatabase

__all__ = ["backup", "check_backup", "restore"]


def _private_new(path: Path) -> None:
    """An empty file at ``path``, mode 0600 (replacing a leftover of an earlier try); a
    ChatctlError naming the directory when it cannot be written."""
    try:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except OSError as exc:
        raise ChatctlError(
            f"cannot write in {path.parent}: {exc.strerror}",
            hint="choose a directory that exists and that you may write in",
        ) from None


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def check_backup(path: Path) -> int:
    """The schema version of the SQLite file at ``path`` once it passes
    ``PRAGMA integrity_check``; a ChatctlError naming what is wrong otherwise."""
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            (verdict,) = db.execute("PRAGMA integrity_check").fetchone()
            (version,) = db.execute("PRAGMA user_version").fetchone()
        finally:
            db.close()
    except sqlite3.Error as exc:
        raise ChatctlError(
            f"{path} is not a chatctl SQLite database: {exc}",
            hint="give a file chatctl serve backup wrote",
        ) from None
    if verdict != "ok":
        raise ChatctlError(
            f"{path} fails PRAGMA integrity_check: {str(verdict)[:200]}",
            hint="restore another backup",
        )
    if int(version) > len(MIGRATIONS):
        raise ChatctlError(
            f"{path} has schema version {version}, newer than this chatctl knows"
            f" ({len(MIGRATIONS)})",
            hint="restore it with the chatctl that made it, or upgrade chatctl",
        )
    return int(version)


def backup(db: str, dest: Path, *, timeout: float = 5.0) -> int:
    """Copy the live database ``db`` to ``dest`` (mode 0600), consistently; its size."""
    if not os.path.exists(db):
        raise ChatctlError(f"no database at {db}", hint="give the server's --db PATH")
    dest = dest.absolute()
    partial = dest.with_name(f".{dest.name}.partial")
    _private_new(partial)
    try:
        src = sqlite3.connect(f"file:{db}?mode=ro", uri=True, isolation_level=None)
        try:
            src.execute(f"PRAGMA busy_timeout={int(timeout * 1000)}")
            src.execute("VACUUM INTO ?", (str(partial),))
        finally:
            src.close()
        check_backup(partial)
        _fsync(partial)
        os.replace(partial, dest)
    except sqlite3.Error as exc:
        raise ChatctlError(
            f"cannot back up {db}: {exc}",
            hint="the database must be a chatctl SQLite file; a busy one: try again or"
            " raise --timeout",
        ) from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            partial.unlink()
    return dest.stat().st_size


@contextlib.contextmanager
def _exclusive(db: Path) -> Iterator[None]:
    """No server has ``db`` open, and none may open it until the block ends."""
    try:
        fd = os.open(db, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        yield
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise BusyDatabase(
                f"a server is running on {db}",
                hint="stop it first (restore replaces the file under it), then restore again",
            ) from None
        yield
    finally:
        os.close(fd)


def restore(backup_file: Path, db: Path) -> int:
    """Put ``backup_file`` in place as the database ``db``; its schema version."""
    if not backup_file.is_file():
        raise ChatctlError(f"no backup at {backup_file}", hint="give a file serve backup wrote")
    version = check_backup(backup_file)
    db = db.absolute()
    partial = db.with_name(f".{db.name}.restoring")
    with _exclusive(db):
        _private_new(partial)
        try:
            with open(backup_file, "rb") as source, open(partial, "wb") as copy:
                while chunk := source.read(1 << 20):
                    copy.write(chunk)
                copy.flush()
                os.fsync(copy.fileno())
            # The old file's WAL would be replayed onto the new one: it goes first.
            for suffix in ("-wal", "-shm", "-journal"):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(f"{db}{suffix}")
            os.replace(partial, db)
        finally:
            with contextlib.suppress(FileNotFoundError):
                partial.unlink()
        dir_fd = os.open(db.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    return version
