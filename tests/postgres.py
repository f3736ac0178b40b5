"""The PostgreSQL the tests run against: ``CHATCTL_TEST_POSTGRES``, a URL of a server where
each test creates (and afterwards drops) its own database.

Read at import, before the autouse fixture clears every ``CHATCTL_*`` variable. Unset, the
PostgreSQL tests skip, saying why; unset under CI (``CI`` set), they fail: CI must run them.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from urllib.parse import urlsplit, urlunsplit

import pytest

#: e.g. postgresql://postgres@127.0.0.1:5432/postgres
URL = os.environ.get("CHATCTL_TEST_POSTGRES", "")
#: parametrise a backend fixture with these.
BACKENDS = ["sqlite", "postgres"]


def require() -> str:
    """The server URL; skips the test when none is configured (fails it under CI)."""
    if not URL:
        reason = "CHATCTL_TEST_POSTGRES is not set (e.g. postgresql://postgres@127.0.0.1/postgres)"
        if os.environ.get("CI"):
            pytest.fail(f"{reason}, and CI must run the PostgreSQL tests")
        pytest.skip(reason)
    return URL


def _with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/" + name))


@contextlib.contextmanager
def fresh_database() -> Iterator[str]:
    """A new, empty database for one test; its URL. Dropped afterwards, connections and all."""
    import psycopg

    admin = require()
    name = f"chatctl_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield _with_database(admin, name)
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextlib.contextmanager
def database_for(backend: str, sqlite_path: str) -> Iterator[str]:
    """What ``--db`` gets for a backend: the SQLite path, or a fresh PostgreSQL database."""
    if backend == "postgres":
        with fresh_database() as url:
            yield url
    else:
        yield sqlite_path
