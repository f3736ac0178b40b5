"""Start-up stays cheap: --version and --help import nothing they do not need
(a subprocess, so the test sees a real cold start)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

PROBE = """
import sys
from chatctl.cli.main import run_cli
code = run_cli({args!r})
watched = {{'httpx', 'websockets', 'rich', 'uvicorn', 'starlette', 'pydantic', 'httptools'}}
heavy = sorted({{m.split('.')[0] for m in sys.modules}} & watched)
server = sorted(m for m in sys.modules if m.startswith('chatctl.server'))
sys.stdout.flush()
print('\\n' + __import__('json').dumps({{'code': code, 'heavy': heavy, 'server': server}}))
"""


def loaded(*args: str) -> dict[str, object]:
    out = subprocess.run(
        [sys.executable, "-c", PROBE.format(args=list(args))],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


def test_version_imports_nothing_heavy() -> None:
    result = loaded("--version")
    assert result == {"code": 0, "heavy": [], "server": []}


@pytest.mark.parametrize("args", [["--help"], ["send", "--help"]])
def test_help_imports_no_transport_and_no_server(args: list[str]) -> None:
    result = loaded(*args)
    assert result["code"] == 0
    assert result["server"] == []
    assert set(result["heavy"]) <= {"rich"}  # help is rendered with rich, nothing else
