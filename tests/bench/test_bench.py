"""The benchmark suite under pytest: ``pytest -m bench tests/bench -s``.

``CHATCTL_BENCH=quick`` for the quick mode; ``CHATCTL_BENCH_ONLY=server,history`` for some
sections. The PostgreSQL sections (``postgres``, ``postgres-remote``, ``history-postgres``,
``bulk-postgres``, ``replica-cost``) run in their own test, skipped without
``CHATCTL_TEST_POSTGRES``. Prints the table; fails when a target is missed.
"""

from __future__ import annotations

import os

import pytest

from tests import postgres
from tests.bench.suite import OPT_IN, SECTIONS, run

pytestmark = pytest.mark.bench

# Read at import: the autouse fixture of tests/conftest.py clears every CHATCTL_* variable
# before a test runs.
ARGV = ["--quick"] if os.environ.get("CHATCTL_BENCH", "").lower() == "quick" else ["--full"]
ONLY = [s for s in os.environ.get("CHATCTL_BENCH_ONLY", "").split(",") if s]
assert not set(ONLY) - set(SECTIONS), f"unknown sections in CHATCTL_BENCH_ONLY: {ONLY}"


def check(sections: list[str]) -> None:
    if not sections:
        pytest.skip(f"none of CHATCTL_BENCH_ONLY={','.join(ONLY)} here")
    rows, text = run(ARGV, sections)
    print("\n" + text)
    missed = [r.figure for r in rows if r.passed is False]
    assert not missed, f"targets missed: {missed}"


def test_benchmarks() -> None:
    check([s for s in SECTIONS if s not in OPT_IN and (not ONLY or s in ONLY)])


def test_postgres_benchmarks() -> None:
    postgres.require()
    check([s for s in SECTIONS if s in OPT_IN and (not ONLY or s in ONLY)])
