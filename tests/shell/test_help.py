"""Help that teaches: every command's help carries a runnable example (as sqlite-utils'
tests/test_docs.py checks), walked from the command tree so a new command cannot skip it."""

from __future__ import annotations

import pytest
import typer.main

from chatctl.cli.main import app
from tests.conftest import Run


def command_paths() -> list[list[str]]:
    root = typer.main.get_command(app)
    ctx = root.make_context("chatctl", [], resilient_parsing=True)
    paths: list[list[str]] = [[]]

    def walk(command: object, path: list[str]) -> None:
        for name in getattr(command, "list_commands", lambda ctx: [])(ctx):
            child = command.get_command(ctx, name)  # type: ignore[attr-defined]
            if child is not None and not child.hidden:
                paths.append([*path, name])
                walk(child, [*path, name])

    walk(root, [])
    return paths


def test_the_walk_finds_every_command() -> None:
    names = {" ".join(p) for p in command_paths()}
    assert {"", "send", "join", "serve", "completion", "config", "config set"} <= names
    assert len(names) >= 19


@pytest.mark.parametrize("path", command_paths(), ids=lambda p: " ".join(p) or "chatctl")
def test_help_has_an_example(cli: Run, path: list[str]) -> None:
    result = cli(*path, "--help")
    assert result.code == 0, result.stderr
    assert "Example:" in result.stdout
    example = result.stdout.split("Example:", 1)[1].split("\n", 1)[0]
    assert "chatctl " in example  # a command line one can run (tests/shell/test_examples.py)
