"""The benchmark suite under pytest: ``pytest -m bench tests/bench -s``.

``CHATCTL_BENCH=quick`` for the quick mode. Prints the table; fails when a target is missed.
"""

from __future__ import annotations

import pytest

from tests.bench.suite import run

pytestmark = pytest.mark.bench


def test_benchmarks() -> None:
    rows, text = run()
    print("\n" + text)
    missed = [r.figure for r in rows if r.passed is False]
    assert not missed, f"targets missed: {missed}"
