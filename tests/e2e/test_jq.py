"""``--jq`` as a user types it in a shell, against a real ``chatctl serve``: the whole
answer with ``-o json``, each line with ``-o jsonl`` and in ``join``, strings raw. The
command lines are docs/cli.md's examples, as written."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import ServerProcess, cli_env

BIN = Path(sys.executable).parent
CLI_DOC = Path(__file__).resolve().parents[2] / "docs" / "cli.md"


def doc_lines() -> list[str]:
    """The command lines of the ```sh block in docs/cli.md's "Filtering JSON: --jq"."""
    section = CLI_DOC.read_text().split("\n## Filtering JSON: --jq\n", 1)[1].split("\n## ")[0]
    found = re.search(r"```sh\n(.*?)```", section, re.S)
    assert found, "docs/cli.md's --jq section has no ```sh block"
    return [line for line in found.group(1).splitlines() if line.strip()]


def shell(line: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", "-o", "pipefail", "-c", line], env=env, capture_output=True, text=True, timeout=60
    )


@pytest.mark.one_backend
def test_jq_as_users_type_it(server: ServerProcess) -> None:
    def api(endpoint: str, body: dict[str, Any]) -> Any:
        with server.http() as client:
            return client.post(f"/v1/chat/{endpoint}", json=body).raise_for_status().json()

    api("Create", {"name": "general"})
    ops = api("Create", {"name": "ops", "user_ids": ["alice", "bob"]})["room"]["id"]
    for user, text in (("bob", "deploy at 5"), ("alice", "ok\nat 5"), ("bob", "done")):
        api("Send", {"room_id": ops, "user_id": user, "text": text})
    env = cli_env(server, PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}", CHATCTL_USER="alice")

    names, texts, tail = doc_lines()
    assert names == "chatctl list -o json --jq '.rooms[].name'"
    assert texts == """chatctl history ops -o jsonl --jq 'select(.user_id=="alice") | .text'"""
    expected = {
        names: "general\nops\n",
        # Strings are printed raw: the message's two lines are two lines.
        texts: "ok\nat 5\n",
        # join is a live tail: the test takes the last two messages and stops.
        tail + " --user carol -n 2 -c 2": "alice: ok\nat 5\nbob: done\n",
    }
    for line, out in expected.items():
        done = shell(line, env)
        assert (done.returncode, done.stdout) == (0, out), (line, done.stderr)

    bad = shell("chatctl send ops 'never sent' --jq '.id |'", env)
    assert bad.returncode == 2 and "is not a jq expression" in bad.stderr
    assert len(api("History", {"room_id": ops})["messages"]) == 3
