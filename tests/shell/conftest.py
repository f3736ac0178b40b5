"""A real chat server for the shell tests, and ways to run the real CLI on a terminal.

The server is one ``chatctl serve`` process on a TCP port for the whole package (each test
makes its own rooms). ``on_pty`` runs the CLI with a pseudo-terminal as stdin and stderr,
as an interactive shell would, without forking the (possibly threaded) test process.
"""

from __future__ import annotations

import fcntl
import os
import select
import struct
import subprocess
import sys
import termios
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.helpers import ServerProcess, cli_env

#: the repository: the committed completions/ and man/ live here.
ROOT = Path(__file__).resolve().parents[2]
#: where the `chatctl` entry point is installed (the shells run it by name).
BIN = Path(sys.executable).parent


@pytest.fixture(scope="session")
def chat_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with ServerProcess(tmp_path_factory.mktemp("shell-server"), tcp=True) as server:
        yield server


@dataclass
class Room:
    id: str
    name: str


def make_room(server: ServerProcess, *members: str, description: str = "") -> Room:
    name = f"room-{uuid.uuid4().hex[:8]}"
    body = {"name": name, "description": description, "user_ids": list(members)}
    with server.http() as http:
        response = http.post("/v1/chat/Create", json=body)
    response.raise_for_status()
    return Room(response.json()["room"]["id"], name)


def room_ids(server: ServerProcess) -> set[str]:
    with server.http() as http:
        response = http.post("/v1/chat/List", json={})
    return {r["id"] for r in response.json().get("rooms", [])}


def members_of(server: ServerProcess, room: Room) -> list[str]:
    with server.http() as http:
        rooms = http.post("/v1/chat/List", json={}).json().get("rooms", [])
    return next(r.get("user_ids", []) for r in rooms if r["id"] == room.id)


def shell_env(server: ServerProcess | None = None, **extra: str) -> dict[str, str]:
    """The test's (isolated) environment, the server's URL, and `chatctl` on PATH."""
    env = cli_env(server, **extra)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env.setdefault("TERM", "xterm")
    return env


@dataclass
class PtyResult:
    code: int
    terminal: str  # what the pseudo-terminal showed (stdin echo, stderr, and stdout if there)
    stdout: str | None  # stdout when it was a pipe


def on_pty(
    *args: str,
    env: dict[str, str],
    answer: str | None = None,
    stdout_on_pty: bool = True,
    stdin_data: str | None = None,
    timeout: float = 15,
) -> PtyResult:
    """Run ``chatctl ARGS`` with a pseudo-terminal as stdin and stderr.

    With ``answer``, wait for a ``[y/N]`` prompt and type it. With ``stdin_data``, stdin
    is a pipe holding it instead (stderr stays the terminal).
    """
    primary, secondary = os.openpty()
    fcntl.ioctl(secondary, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    proc = subprocess.Popen(
        [sys.executable, "-m", "chatctl", *args],
        stdin=subprocess.PIPE if stdin_data is not None else secondary,
        stdout=secondary if stdout_on_pty else subprocess.PIPE,
        stderr=secondary,
        env=env,
        start_new_session=True,
    )
    os.close(secondary)
    if stdin_data is not None:
        assert proc.stdin is not None
        proc.stdin.write(stdin_data.encode())
        proc.stdin.close()
    seen = b""
    answered = answer is None
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([primary], [], [], 0.05)
            if ready:
                try:
                    chunk = os.read(primary, 4096)
                except OSError:  # EIO: every process holding the terminal has closed it
                    break
                if not chunk:
                    break
                seen += chunk
            if not answered and b"[y/N]" in seen:
                os.write(primary, answer.encode() + b"\n")  # type: ignore[union-attr]
                answered = True
            if not ready and proc.poll() is not None:
                break
        code = proc.wait(max(0.1, deadline - time.monotonic()))
        stdout = None if stdout_on_pty or proc.stdout is None else proc.stdout.read().decode()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
        os.close(primary)
    return PtyResult(code, seen.decode(errors="replace"), stdout)
