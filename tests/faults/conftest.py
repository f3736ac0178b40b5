"""Fault drills: real server processes killed, restarted, starved of disk and abused.

The long variants carry the ``soak`` marker and are deselected unless the run selects
them by marker expression: ``pytest -m soak tests/faults``. A default ``pytest`` runs the
short drills only.
"""

from __future__ import annotations

import pytest


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if "soak" in (config.getoption("markexpr") or ""):
        return
    soak = [item for item in items if item.get_closest_marker("soak") is not None]
    if soak:
        config.hook.pytest_deselected(items=soak)
        items[:] = [item for item in items if item.get_closest_marker("soak") is None]
