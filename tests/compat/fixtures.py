"""Fixtures for tests anywhere in the suite (registered by ``tests/conftest.py``):
stand-ins for m3o's own servers, on real sockets, fresh for each test.

    def test_x(m3o_group_server):
        m3o_group_server.url, m3o_group_server.token, m3o_group_server.requests

``m3o_group_server`` is m3o's final edition ("group" names), ``m3o_room_server`` a plain
m3o server of the seed's room edition; see ``tests/compat/m3o_standin.py`` for what they
copy from m3o and ``.requests`` for the exact bodies a client sent.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from tests.compat.m3o_standin import RunningStandIn


@pytest.fixture
def m3o_group_server() -> Iterator[RunningStandIn]:
    from tests.compat.m3o_standin import running_standin

    with running_standin("group") as srv:
        yield srv


@pytest.fixture
def m3o_room_server() -> Iterator[RunningStandIn]:
    from tests.compat.m3o_standin import running_standin

    with running_standin("room") as srv:
        yield srv


@pytest.fixture(params=["group", "room"])
def m3o_server(request: pytest.FixtureRequest) -> Iterator[RunningStandIn]:
    """Each stand-in in turn (``request.param`` is its edition)."""
    from tests.compat.m3o_standin import running_standin

    with running_standin(request.param) as srv:
        yield srv
