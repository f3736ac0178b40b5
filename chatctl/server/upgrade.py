"""``chatctl serve migrate``: bring a database's schema up to this release's, online, or
(``--check``) say whether it is; the rule it follows is in ``migrations``."""

from __future__ import annotations

from chatctl import __version__
from chatctl.errors import ChatctlError
from chatctl.server.migrations import SchemaState, judge, too_old

__all__ = ["upgrade"]


def upgrade(
    db: str, *, check: bool = False, timeout: float = 5.0, notify: str | None = None
) -> str:
    """``chatctl serve migrate``: bring ``db`` (a SQLite path or a PostgreSQL URL) up to
    this release's schema, or with ``check`` only say whether it is (``SchemaTooOld``
    when not). Returns the line to show; ``SchemaTooNew`` when a newer, incompatible
    release migrated it. ``notify`` (PostgreSQL): the notification mode to record for
    ``--notify auto`` replicas (``store_pg.record_notify``)."""
    from chatctl.server.store import is_postgres_url

    if is_postgres_url(db):
        return _upgrade_pg(db, check, timeout, notify)
    if notify is not None:
        from chatctl.errors import UsageError

        raise UsageError(
            "--notify is for a PostgreSQL database, where replicas tell each other of changes"
        )
    return _upgrade_sqlite(db, check, timeout)


def _said(where: str, before: SchemaState, after: SchemaState, known: int) -> str:
    if after.applied > known:
        return (
            f"database {where}: schema {after.applied}, newer than this chatctl's {known}"
            " and compatible with it: nothing to do"
        )
    if before.applied == after.applied:
        return f"database {where}: schema {after.applied}, current: nothing to do"
    return f"database {where}: migrated schema {before.applied} to {after.applied}"


def _upgrade_sqlite(path: str, check: bool, timeout: float) -> str:
    import os
    import sqlite3

    from chatctl.server import store_sqlite

    known = len(store_sqlite.MIGRATIONS)
    if check and not os.path.exists(path):
        raise too_old(SchemaState(0, 0), known, path)
    try:
        store_sqlite._create_private_file(path)
        db = store_sqlite._connect(path, int(timeout * 1000))
    except (OSError, sqlite3.Error) as exc:
        raise ChatctlError(f"cannot open the database {path}: {exc}") from None
    try:
        db.execute("PRAGMA journal_mode=WAL")
        before = store_sqlite.schema_state(db)
        if judge(before, known, path) != "older":
            return _said(path, before, before, known)
        if check:
            raise too_old(before, known, path)
        after = store_sqlite.migrate(db, before)
    except sqlite3.Error as exc:
        raise ChatctlError(f"cannot migrate the database {path}: {exc}") from None
    finally:
        db.close()
    return _said(path, before, after, known)


def _upgrade_pg(url: str, check: bool, timeout: float, notify: str | None) -> str:
    try:
        import psycopg

        from chatctl.server import store_pg
    except ImportError as exc:
        raise ChatctlError(
            f"PostgreSQL needs psycopg ({exc}): pip install 'chatctl[postgres]'"
        ) from None
    where = store_pg.without_password(url)
    known = len(store_pg.MIGRATIONS)
    options = store_pg.connect_options(timeout, f"chatctl/{__version__}/migrate", statements=False)
    try:
        with psycopg.connect(url, **options) as conn:
            before = store_pg.schema_state(conn)
            if judge(before, known, where) != "older":
                said = _said(where, before, before, known)
            elif check:
                raise too_old(before, known, where)
            else:
                after = store_pg.migrate(conn)
                said = _said(where, before, after, known)
            if notify is not None and not check:
                store_pg.record_notify(conn, notify)
                said += f"; replicas started with --notify auto now use --notify {notify}"
            return said
    except psycopg.OperationalError as exc:
        raise ChatctlError(
            f"cannot migrate PostgreSQL at {where}: "
            + store_pg.failure(exc)
        ) from None
