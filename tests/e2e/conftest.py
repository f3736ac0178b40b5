"""The end-to-end ``server``: a real ``chatctl serve`` process, once on SQLite and once on
PostgreSQL (``CHATCTL_TEST_POSTGRES``; see ``tests/postgres.py``), or on SQLite only for a
test marked ``one_backend`` (the backend matrix, explained there)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests import postgres
from tests.helpers import ServerProcess


@pytest.fixture(params=postgres.BACKENDS)
def server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ServerProcess]:
    with (
        postgres.database_for(request.param, str(tmp_path / "chat.db")) as db,
        ServerProcess(tmp_path, db=db) as s,
    ):
        yield s


@pytest.fixture(params=postgres.BACKENDS)
def start_server(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[Callable[..., ServerProcess]]:
    """Start a server with options of the test's own (tokens, TCP, flags), once per backend."""
    with contextlib.ExitStack() as stack:

        def start(**options: Any) -> ServerProcess:
            db = stack.enter_context(
                postgres.database_for(request.param, str(tmp_path / "chat.db"))
            )
            return stack.enter_context(ServerProcess(tmp_path, db=db, **options))

        yield start
