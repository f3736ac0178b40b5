"""Fixtures for tests anywhere in the suite (registered by ``tests/conftest.py``):
stand-ins for m3o's own servers, on real sockets, fresh for each test.

    def test_x(m3o_group_server):
        m3o_group_server.url, m3o_group_server.token, m3o_group_server.requests

``m3o_group_server`` is m3o's final edition ("group" names), ``m3o_room_server`` a plain
m3o server of the seed's room edition; see ``tests/compat/m3o_standin.py`` for what they
copy from m3o and ``.requests`` for the exact bodies a client sent. Each test gets a token
of its own (a tenant) on one server per edition for the session, so it sees only its own
rooms, streams and requests.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from tests.compat.m3o_standin import RunningStandIn, StandInServer


@pytest.fixture(scope="session")
def m3o_standin_servers() -> Iterator[dict[str, StandInServer]]:
    """One stand-in per edition for the whole session, started when first needed."""
    from tests.compat.m3o_standin import start_standin

    class Lazy(dict[str, "StandInServer"]):
        def __missing__(self, edition: str) -> StandInServer:
            self[edition] = start_standin(edition)  # type: ignore[arg-type]
            return self[edition]

    servers = Lazy()
    yield servers
    for srv in servers.values():
        srv.stop()


@pytest.fixture
def m3o_group_server(m3o_standin_servers: dict[str, StandInServer]) -> RunningStandIn:
    """m3o's final edition: a tenant of its own on the session's group stand-in."""
    return m3o_standin_servers["group"].tenant()


@pytest.fixture
def m3o_room_server(m3o_standin_servers: dict[str, StandInServer]) -> RunningStandIn:
    """A plain room-edition m3o server: a tenant of its own on the session's stand-in."""
    return m3o_standin_servers["room"].tenant()


@pytest.fixture(params=["group", "room"])
def m3o_server(
    request: pytest.FixtureRequest, m3o_standin_servers: dict[str, StandInServer]
) -> RunningStandIn:
    """Each stand-in in turn (``.edition`` says which)."""
    return m3o_standin_servers[request.param].tenant()
