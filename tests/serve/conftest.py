"""Real ``chatctl serve`` processes for the serve tests: started, waited on, always reaped.

Every wait has a deadline; nothing sleeps a fixed time and hopes.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from chatctl.local import socket_answers

#: how long a server may take to start (imports, database) on a slow CI machine.
START_SECONDS = 15.0


@dataclass
class Served:
    """One running ``python -m chatctl serve`` and the file its stderr goes to."""

    proc: subprocess.Popen[bytes]
    log: Path
    uds: Path | None = None

    def stderr(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for_log(self, pattern: str, timeout: float = START_SECONDS) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while True:
            found = re.search(pattern, self.stderr())
            if found:
                return found
            if self.proc.poll() is not None:
                pytest.fail(f"server exited {self.proc.returncode}:\n{self.stderr()}")
            if time.monotonic() > deadline:
                pytest.fail(f"no {pattern!r} in the server's log:\n{self.stderr()}")
            time.sleep(0.02)

    def wait_until_answering(self, timeout: float = START_SECONDS) -> None:
        assert self.uds is not None
        deadline = time.monotonic() + timeout
        while not socket_answers(self.uds):
            if self.proc.poll() is not None:
                pytest.fail(f"server exited {self.proc.returncode}:\n{self.stderr()}")
            if time.monotonic() > deadline:
                pytest.fail(f"server did not answer on {self.uds}:\n{self.stderr()}")
            time.sleep(0.02)

    def http(self, token: str | None = None) -> httpx.Client:
        assert self.uds is not None
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(
            transport=httpx.HTTPTransport(uds=str(self.uds)),
            base_url="http://localhost",
            headers=headers,
            timeout=10,
        )

    def stop(self, signum: int = signal.SIGTERM, timeout: float = 10.0) -> int:
        self.proc.send_signal(signum)
        return self.proc.wait(timeout=timeout)


Serve = Callable[..., Served]


def chatctl(*args: str) -> list[str]:
    return [sys.executable, "-m", "chatctl", *args]


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Serve]:
    """Start ``chatctl serve ARGS`` (on a Unix socket unless told otherwise); reap it after."""
    started: list[Served] = []

    def start(*args: str, uds: bool = True, wait: bool = True) -> Served:
        n = len(started)
        log = tmp_path / f"serve{n}.log"
        argv = list(args)
        sock = None
        if uds:
            sock = tmp_path / f"run{n}" / "chat.sock"
            argv += ["--uds", str(sock)]
        if "--db" not in argv:
            argv += ["--db", str(tmp_path / f"chat{n}.db")]
        with log.open("wb") as stderr:
            proc = subprocess.Popen(
                chatctl("serve", *argv), stdin=subprocess.DEVNULL, stdout=stderr, stderr=stderr
            )
        served = Served(proc, log, sock)
        started.append(served)
        if wait and uds:
            served.wait_until_answering()
        return served

    yield start
    for served in started:
        if served.proc.poll() is None:
            served.proc.kill()
        served.proc.wait(timeout=10)
