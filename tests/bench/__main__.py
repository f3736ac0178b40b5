"""``python -m tests.bench [--quick|--full] [--only NAME,...]``: run the suite, print one table.

Sections: startup, batch, server, history, bulk, export, fanout, capacity, tail; and, only
when named with --only (they need CHATCTL_TEST_POSTGRES), postgres (PostgreSQL beside
SQLite, one and two replicas), postgres-remote, history-postgres, bulk-postgres and
replica-cost. The mode also comes from ``CHATCTL_BENCH=quick|full`` (default full).
"""

from __future__ import annotations

import sys

from tests.bench.suite import SECTIONS, run


def main(argv: list[str]) -> int:
    only = None
    if "--only" in argv:
        only = argv[argv.index("--only") + 1].split(",")
        unknown = set(only) - set(SECTIONS)
        if unknown:
            print(f"unknown sections: {', '.join(sorted(unknown))}; know {', '.join(SECTIONS)}")
            return 2
    rows, text = run(argv, only)
    print(text)
    return 0 if all(r.passed is not False for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
