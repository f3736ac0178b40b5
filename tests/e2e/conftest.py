"""The end-to-end ``server``: a real ``chatctl serve`` process, once on SQLite and once on
PostgreSQL (``CHATCTL_TEST_POSTGRES``; see ``tests/postgres.py``)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

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
