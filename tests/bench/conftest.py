"""Keep the benchmarks out of the default test run: collected only under ``-m bench``."""

from __future__ import annotations

from pathlib import Path

import pytest


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    if "bench" in (config.getoption("markexpr") or ""):
        return None
    return collection_path.name.startswith("test_")
