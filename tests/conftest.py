"""Fixtures for every test: chatctl's config and state point at a temporary directory,
no CHATCTL_* or M3O_* variable of the developer's leaks in, and ``cli`` runs the real CLI
in-process (arguments in, exit status and both streams out)."""

from __future__ import annotations

import io
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from chatctl.cli.main import run_cli
from tests import postgres

# m3o_group_server, m3o_room_server, m3o_server: stand-ins for m3o's own servers.
pytest_plugins = ["tests.compat.fixtures"]


def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    """``-n auto``: two workers a core. Most of a test's time is spent waiting on servers,
    subprocesses and sockets, not computing: on 2 cores, 4 workers ran the suite in about
    two thirds of the time 2 took. ``CHATCTL_TEST_WORKERS`` overrides it."""
    wanted = os.environ.get("CHATCTL_TEST_WORKERS")
    return int(wanted) if wanted else 2 * (os.cpu_count() or 1)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    postgres.one_backend_only(config, items)


@dataclass
class Result:
    code: int
    stdout: str
    stderr: str


Run = Callable[..., Result]


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> Run:
    def run(*args: str, input: str = "") -> Result:
        monkeypatch.setattr(sys, "stdin", io.StringIO(input))
        capsys.readouterr()
        code = run_cli(list(args))
        out, err = capsys.readouterr()
        return Result(code, out, err)

    return run


@pytest.fixture(autouse=True)
def isolated_env(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path_factory.mktemp("home")
    for name in list(os.environ):
        if name.startswith(("CHATCTL_", "M3O_")):
            monkeypatch.delenv(name)
    # A terminal's size comes from the terminal a test gives the CLI (a pty), not from the
    # runner's environment: pytest-xdist's workers export COLUMNS=80 and LINES=24, which
    # rich would prefer over the pty's own size.
    monkeypatch.delenv("COLUMNS", raising=False)
    monkeypatch.delenv("LINES", raising=False)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home / ".config"))
    monkeypatch.setenv("XDG_DATA_HOME", str(home / ".local/share"))
    monkeypatch.setenv("XDG_STATE_HOME", str(home / ".local/state"))
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(home / "run"))
    monkeypatch.setenv("CHATCTL_CONFIG", str(home / "chatctl.toml"))
    monkeypatch.setenv("NO_COLOR", "1")
    return home
