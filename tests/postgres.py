"""The PostgreSQL the tests run against: ``CHATCTL_TEST_POSTGRES``, a URL of a server where
each test creates (and afterwards drops) its own database.

Read at import, before the autouse fixture clears every ``CHATCTL_*`` variable. Unset, the
PostgreSQL tests skip, saying why; unset under CI (``CI`` set), they fail: CI must run them.

The backend matrix: a server fixture with ``params=BACKENDS`` runs each test using it on
SQLite and on PostgreSQL. That is for what storage does (rules, Sends, fan-out across
replicas, persistence, failures). A test storage cannot change (HTTP methods and paths,
validation, the openapi document, the CLI's exits on a closed pipe or Ctrl-C, pings, rate
limits, Whoami) is marked ``@pytest.mark.one_backend`` and runs on SQLite only:
``one_backend_only``, called from tests/conftest.py, deselects its other runs.
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
#: parametrise a backend fixture with these. A test marked ``one_backend`` (it never
#: touches storage, or touches it in no way the backends differ: methods, paths,
#: validation, the CLI's own behaviour) runs on the first only (``one_backend_only``).
BACKENDS = ["sqlite", "postgres"]


def one_backend_only(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Deselect the ``one_backend`` tests' runs on any backend but ``BACKENDS[0]``: the
    matrix is for what storage does, and a 405 is the same on both."""
    dropped = [
        item
        for item in items
        if item.get_closest_marker("one_backend") is not None
        and any(value in BACKENDS[1:] for value in _params(item).values())
    ]
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        kept = set(map(id, dropped))
        items[:] = [item for item in items if id(item) not in kept]


def _params(item: pytest.Item) -> dict[str, object]:
    callspec = getattr(item, "callspec", None)
    return dict(callspec.params) if callspec is not None else {}


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
