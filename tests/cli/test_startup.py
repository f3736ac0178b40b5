"""Start-up stays cheap: --version and --help import nothing they do not need
(a subprocess, so the test sees a real cold start)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.helpers import free_port

PROBE = """
import sys
from chatctl.cli.main import run_cli
code = run_cli({args!r})
watched = {{'httpx', 'websockets', 'rich', 'uvicorn', 'starlette', 'pydantic', 'httptools', 'jq'}}
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


ENTRY_PROBE = """
import json, sys
sys.argv = ['chatctl', *{args!r}]
from chatctl.cli import main
try:
    main()
except SystemExit as exc:
    code = exc.code
print(json.dumps({{
    'code': code,
    'httpx': 'httpx' in sys.modules,
    'rich': sorted(m for m in sys.modules if m.split('.')[0] in ('rich', 'pygments')),
    'httpx_cli': sys.modules.get('httpx._main') is not None,
    'setproctitle': 'setproctitle' in sys.modules,
    'jq': 'jq' in sys.modules,
}}))
"""


def test_a_one_shot_call_in_a_pipe_skips_rich_and_httpx_own_cli() -> None:
    """httpx imports its command-line client (rich, pygments) when they are installed, as
    typer's dependencies are: the console script keeps it out."""
    out = subprocess.run(
        [sys.executable, "-c", ENTRY_PROBE.format(args=["list", "-o", "json"])],
        capture_output=True,
        text=True,
        env={**os.environ, "CHATCTL_URL": f"http://127.0.0.1:{free_port()}"},
    ).stdout
    result = json.loads(out.strip().splitlines()[-1])
    assert result["code"] == 3  # nothing listens there: the call was really made
    assert result["httpx"] and not result["httpx_cli"]
    assert result["rich"] == []
    assert not result["setproctitle"]  # loaded only to hide a secret given as an argument
    assert not result["jq"]  # loaded only for --jq


def test_jq_is_loaded_only_when_the_flag_is_given() -> None:
    out = subprocess.run(
        [sys.executable, "-c", ENTRY_PROBE.format(args=["list", "--jq", ".rooms[].name"])],
        capture_output=True,
        text=True,
        env={**os.environ, "CHATCTL_URL": f"http://127.0.0.1:{free_port()}"},
    ).stdout
    result = json.loads(out.strip().splitlines()[-1])
    assert result["code"] == 3  # the call was made, with the expression compiled
    assert result["jq"] and result["rich"] == []


def test_a_token_argument_loads_setproctitle_and_nothing_else_heavy() -> None:
    out = subprocess.run(
        [sys.executable, "-c", ENTRY_PROBE.format(args=["list", "--token", "T", "-o", "json"])],
        capture_output=True,
        text=True,
        env={**os.environ, "CHATCTL_URL": f"http://127.0.0.1:{free_port()}"},
    ).stdout
    result = json.loads(out.strip().splitlines()[-1])
    assert result["code"] == 3
    assert result["setproctitle"] and result["rich"] == []
