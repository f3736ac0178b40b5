"""Fixtures of the compatibility tests: m3o's official npm client installed once per
session, a real ``chatctl serve`` on TCP, and the rule for tools a test cannot do without
(skip with the reason on a developer's machine, fail under CI, whose .ci/run installs them).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from tests.helpers import ServerProcess

if TYPE_CHECKING:
    from tests.compat.browser import Chromium

#: The environment as the test run started, before ``isolated_env`` points HOME at a
#: temporary directory: npm keeps its download cache under the real HOME.
START_ENV = dict(os.environ)

#: The official JavaScript client, the last version published (it declares the group edition).
M3O_NPM = "m3o@1.0.1783"
DRIVER = Path(__file__).parent / "npm" / "drive_m3o_chat.js"


def need_tool(available: bool, reason: str) -> None:
    """Skip when a tool is missing, except under CI (CI set, as tests/postgres.py reads
    it), where .ci/run installs it and checks that it did."""
    if available:
        return
    if os.environ.get("CI"):
        pytest.fail(f"{reason}; under CI, .ci/run should have installed it")
    pytest.skip(reason)


def loopback_env(**extra: str) -> dict[str, str]:
    """An environment for a helper process that talks to 127.0.0.1 only: no proxy (axios
    honours http_proxy), nothing of chatctl's or m3o's configuration."""
    env = {
        k: v
        for k, v in START_ENV.items()
        if not k.lower().endswith("_proxy") and not k.startswith(("CHATCTL_", "M3O_"))
    }
    env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"
    env.update(extra)
    return env


@dataclass
class NpmClient:
    """m3o's npm package installed in ``root``; ``drive()`` runs the driver script."""

    root: Path

    def drive(self, base_url: str, token: str, names: str) -> dict[str, Any]:
        env = loopback_env(NODE_PATH=str(self.root / "node_modules"))
        proc = subprocess.run(
            ["node", str(DRIVER), base_url, token, names],
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
            cwd=self.root,
        )
        assert proc.returncode == 0, f"the driver failed ({proc.returncode}): {proc.stderr[-2000:]}"
        report: dict[str, Any] = json.loads(proc.stdout)
        return report


@pytest.fixture(scope="session")
def m3o_npm(tmp_path_factory: pytest.TempPathFactory) -> NpmClient:
    """``npm install m3o@1.0.1783`` into a temporary directory, once per test session."""
    need_tool(
        bool(shutil.which("node") and shutil.which("npm")),
        "node and npm are needed to run m3o's official JavaScript client",
    )
    root = tmp_path_factory.mktemp("m3o-npm")
    (root / "package.json").write_text('{"private": true}\n')
    proc = subprocess.run(
        [
            "npm",
            "install",
            "--no-audit",
            "--no-fund",
            "--no-package-lock",
            "--loglevel=error",
            M3O_NPM,
        ],
        cwd=root,
        capture_output=True,
        text=True,
        env=loopback_env(),
        timeout=300,
    )
    if proc.returncode != 0:
        pytest.fail(f"npm install {M3O_NPM} failed: {proc.stderr[-2000:]}")
    return NpmClient(root)


ServeFactory = Callable[..., ServerProcess]


@pytest.fixture
def chatctl_serve(tmp_path: Path) -> Iterator[ServeFactory]:
    """``chatctl_serve(*flags)``: a real ``chatctl serve`` process on a TCP port of
    127.0.0.1 with a token of its own (``.tokens[0]``), reaped after the test. Called in the
    test body, so a flag the server does not have yet fails the test, not its set-up."""
    started: list[ServerProcess] = []

    def start(*flags: str, tokens: Sequence[str] | None = None) -> ServerProcess:
        workdir = tmp_path / f"serve{len(started)}"
        workdir.mkdir()
        tokens = [f"tok-{uuid.uuid4().hex}"] if tokens is None else list(tokens)
        srv = ServerProcess(workdir, tcp=True, tokens=tokens, extra=flags)
        started.append(srv)
        return srv.start()

    yield start
    for srv in started:
        if srv.proc is not None:
            srv.stop()


@pytest.fixture(scope="session")
def chromium(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Chromium]:
    """Debian's headless Chromium, started once per session (a fresh profile)."""
    executable = shutil.which("chromium") or shutil.which("chromium-browser")
    need_tool(
        executable is not None, "Chromium is needed for the browser tests (apt install chromium)"
    )
    assert executable is not None
    from tests.compat.browser import launch_chromium

    with launch_chromium(executable, tmp_path_factory.mktemp("chromium") / "profile") as browser:
        yield browser


@pytest.fixture(scope="session")
def page_origins() -> Iterator[tuple[str, str]]:
    """The test page served from two origins of its own (two ports of 127.0.0.1): the
    first is the one a test allows, the second one it does not."""
    from tests.compat.browser import page_server

    with page_server() as allowed, page_server() as other:
        yield allowed, other
