"""Every ``Example:`` in the help runs as written, in the order the help lists commands,
against a fresh embedded local server: a new user's first session, copied from --help.

The one exception is ``chatctl serve``'s, which starts a server in the foreground (and
binds 0.0.0.0): it is a command to keep running, not a call against the local server.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import typer.main

from chatctl.cli.main import app
from tests.helpers import fresh_home_env
from tests.shell.conftest import shell_env

#: commands whose examples are not one-shot calls against the local server.
NOT_RUN = {"serve"}


def examples() -> Iterator[tuple[str, str]]:
    """(command path, example) for every example, in help order."""
    root = typer.main.get_command(app)
    ctx = root.make_context("chatctl", [], resilient_parsing=True)

    def walk(command: object, path: list[str]) -> Iterator[tuple[str, str]]:
        for line in (getattr(command, "help", None) or "").splitlines():
            if line.strip().startswith("Example:"):
                yield " ".join(path) or "chatctl", line.split("Example:", 1)[1].strip()
        for name in getattr(command, "list_commands", lambda ctx: [])(ctx):
            child = command.get_command(ctx, name)  # type: ignore[attr-defined]
            if child is not None and not child.hidden:
                yield from walk(child, [*path, name])

    yield from walk(root, [])


def test_every_command_has_examples_found() -> None:
    found = {path for path, _ in examples()}
    assert {"chatctl", "create", "send", "history", "join", "delete", "config set"} <= found


@pytest.fixture
def fresh_home(tmp_path: Path) -> Iterator[dict[str, str]]:
    # TOKEN: what the `config set token -` example pipes in.
    env = fresh_home_env(tmp_path / "home", TOKEN="an-example-token")
    env["PATH"] = shell_env()["PATH"]  # `chatctl` by name, as the examples say
    env.pop("NO_COLOR", None)
    try:
        yield env
    finally:
        subprocess.run(["chatctl", "serve", "--stop"], env=env, capture_output=True, timeout=30)


def test_every_help_example_runs_in_order_against_a_fresh_local_server(
    fresh_home: dict[str, str], tmp_path: Path
) -> None:
    ran = []
    for path, example in examples():
        if path.split()[0] in NOT_RUN:
            continue
        result = subprocess.run(
            ["bash", "-o", "pipefail", "-c", example],
            env=fresh_home,
            cwd=tmp_path,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0, f"{path}: {example}\n{result.stderr}"
        assert "Traceback" not in result.stderr
        ran.append(example)
    assert len(ran) >= 20
