"""docs/architecture.md's "How it is built" lists every module of the server, one row each,
and no module that is gone: a newcomer follows a request through it, so it must not fall
behind."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_module_map_has_one_row_per_server_module() -> None:
    doc = (ROOT / "docs/architecture.md").read_text()
    section = doc.split("\n## How it is built\n", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| `([\w/]+\.py)` \|", section, re.MULTILINE)
    modules = sorted(p.name for p in (ROOT / "chatctl/server").glob("*.py"))
    assert sorted(r for r in rows if "/" not in r) == modules
    assert len(rows) == len(set(rows)), rows
    for shared in (r for r in rows if "/" in r):
        assert (ROOT / shared).is_file(), shared
