"""Test-only fault injection for ``chatctl serve`` subprocesses of the fault drills.

On ``PYTHONPATH`` only when a drill puts it there, and inert unless ``CHATCTL_DRILL_FAULT``
names a control file. While that file exists and holds ``readonly``, every write the
server's SQLite connection makes fails as SQLite fails on a read-only database
(``sqlite3.OperationalError: attempt to write a readonly database``). Root can neither
remount a filesystem read-only under a process that has files open for writing nor be
refused by file modes, so the drill injects the error at the store boundary instead.
"""

from __future__ import annotations

import os

_control = os.environ.get("CHATCTL_DRILL_FAULT")

if _control:
    import functools
    import sqlite3

    _WRITES = ("INSERT", "UPDATE", "DELETE", "BEGIN IMMEDIATE", "COMMIT")

    def _fault() -> str:
        try:
            with open(_control) as control:
                return control.read().strip()
        except FileNotFoundError:
            return ""

    class _FaultyConnection(sqlite3.Connection):
        def execute(self, sql: str, *args: object) -> sqlite3.Cursor:  # type: ignore[override]
            if sql.lstrip().upper().startswith(_WRITES) and _fault() == "readonly":
                raise sqlite3.OperationalError("attempt to write a readonly database")
            return super().execute(sql, *args)  # type: ignore[arg-type]

    sqlite3.connect = functools.partial(sqlite3.connect, factory=_FaultyConnection)  # type: ignore[assignment]
