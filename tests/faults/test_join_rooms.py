"""The long variant of ``join --all``'s drill (tests/e2e/test_join_rooms.py, 100 rooms):
1,000 rooms on one connection, on SQLite and PostgreSQL (3 to 8 s each)."""

from __future__ import annotations

import pytest

from tests.e2e.test_join_rooms import all_rooms_drill, logged_server
from tests.helpers import ServerProcess

__all__ = ["logged_server"]


@pytest.mark.soak
def test_join_all_follows_a_thousand_rooms_on_one_connection(
    logged_server: ServerProcess,
) -> None:
    all_rooms_drill(logged_server, 1000)
