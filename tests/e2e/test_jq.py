"""``--jq`` as a user types it in a shell, against a real ``chatctl serve``: the whole
answer with ``-o json``, each line with ``-o jsonl`` and in ``join``, strings raw."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import ServerProcess, chatctl, cli_env

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
    env = cli_env(server, PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}", CHATCTL_USER="alice")
    for args in (
        ["create", "general", "-u", "alice", "-u", "bob"],
        ["create", "ops", "-u", "alice"],
        ["send", "general", "hello"],
        ["send", "general", "hi alice", "--user", "bob"],
        ["send", "general", "lunch?\nat noon"],
    ):
        assert chatctl(*args, env=env).returncode == 0

    names = shell("chatctl list -o json --jq '.rooms[].name'", env)
    assert names.returncode == 0, names.stderr
    assert names.stdout.splitlines() == ["general", "ops"]

    alices = shell(
        """chatctl history general -o jsonl --jq 'select(.user_id=="alice") | .text'""", env
    )
    assert alices.returncode == 0, alices.stderr
    # Strings are printed raw: the second message's two lines are two lines.
    assert alices.stdout == "hello\nlunch?\nat noon\n"

    # join: each message through it as it comes (here the last two, replayed).
    tail = shell("chatctl join general --user carol -n 2 -c 2 --jq '[.user_id, .text]'", env)
    assert tail.returncode == 0, tail.stderr
    assert tail.stdout.splitlines() == ['["bob", "hi alice"]', '["alice", "lunch?\\nat noon"]']

    bad = shell("chatctl send general 'never sent' --jq '.id |'", env)
    assert bad.returncode == 2 and "is not a jq expression" in bad.stderr
    texts = shell("chatctl history general --jq '[.messages[].text] | length'", env)
    assert texts.stdout == "3\n"


@pytest.mark.one_backend
def test_the_docs_examples_do_what_they_say(server: ServerProcess) -> None:
    env = cli_env(server, PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}", CHATCTL_USER="alice")
    assert chatctl("create", "general", env=env).returncode == 0
    assert chatctl("create", "ops", "-u", "alice", "-u", "bob", env=env).returncode == 0
    for user, text in (("bob", "deploy at 5"), ("alice", "ok"), ("bob", "done")):
        assert chatctl("send", "ops", text, "--user", user, env=env).returncode == 0
    names, texts, tail = doc_lines()
    expected = {
        names: "general\nops\n",
        texts: "ok\n",
        # join is a live tail: the test takes the last two messages and stops.
        tail + " --user carol -n 2 -c 2": "alice: ok\nbob: done\n",
    }
    for line, out in expected.items():
        done = shell(line, env)
        assert (done.returncode, done.stdout) == (0, out), (line, done.stderr)
