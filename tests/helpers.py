"""A real `chatctl serve` process for end-to-end tests, and a way to run the real CLI.

Everything here is real: a subprocess server on a Unix socket (or a TCP port), a SQLite
file in a temporary directory, the CLI as a subprocess. Waits are on conditions with a
deadline, never blind sleeps.
"""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import httpx

#: What chatctl's server says on every answer (contract part 3), for pytest-httpx mocks of
#: it; a mock without it stands for a plain m3o server. Written out, as a client reads it;
#: tests/server/test_extensions_header.py checks it against a real server's answer.
CHATCTL_HEADERS = {
    "Chat-Extensions": "paging, history-user, resume, replay, events, include-own, "
    "idempotency-key, bulk-send, whoami, delete-message, join-rooms, retention, import"
}

def wait_for(
    condition: Callable[[], Any],
    timeout: float = 10.0,
    what: str = "condition",
    interval: float = 0.005,
) -> Any:
    """Poll ``condition`` until it is truthy and return it; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def untraced_env(**extra: str) -> dict[str, str]:
    """This process's environment without coverage.py's subprocess measurement (CI runs
    pytest --cov): for a process whose speed, memory or imports a test measures, which
    line tracing would change."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("COVERAGE_PROCESS_")}
    return {**env, **extra}


#: Ports free_port hands out: below the kernel's ephemeral range (32768-60999 on Linux),
#: where bind(0) and outgoing connections take theirs, split between the xdist workers.
_PORTS = range(10000, 32000)
_next_port: list[int] = []


def free_port() -> int:
    """A TCP port on 127.0.0.1 nothing listens on, for a server a test starts. Each xdist
    worker takes ports from its own slice, in turn: with bind(0) two workers could be given
    the same port between its check here and the server's bind (and the test then talk to
    the other worker's server)."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1") or 1)
    index = int(worker[2:]) if worker[2:].isdigit() else 0
    size = len(_PORTS) // max(count, 1)
    first = _PORTS.start + (index % max(count, 1)) * size
    if not _next_port:
        _next_port.append(random.randrange(size))
    for _ in range(size):
        port = first + _next_port[0] % size
        _next_port[0] += 1
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port in {first}-{first + size - 1}")


class ServerProcess:
    """``python -m chatctl serve`` on a socket in ``workdir``, restartable on the same db."""

    def __init__(
        self,
        workdir: Path,
        *,
        tcp: bool = False,
        tokens: Sequence[str] = (),
        extra: Sequence[str] = (),
        db: str | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.workdir = workdir
        #: the server's environment (None: this process's); run in ``workdir`` with it, so
        #: a PYTHONPATH there decides which chatctl serves (an older release's).
        self.env = env
        #: the SQLite file in ``workdir``, unless ``db`` names another (or a postgresql:// URL).
        self.db: Path | str = workdir / "chat.db" if db is None else db
        self.sock = workdir / "chat.sock"
        self.port = free_port() if tcp else None
        self.tokens = list(tokens)
        self.extra = list(extra)
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = workdir / "server.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}" if self.port else f"unix:{self.sock}"

    def http(self, token: str | None = None) -> httpx.Client:
        """An httpx client for raw API calls (tests that bypass the CLI)."""
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        if self.port:
            return httpx.Client(base_url=self.url, headers=headers, timeout=10)
        transport = httpx.HTTPTransport(uds=str(self.sock))
        return httpx.Client(
            base_url="http://localhost", transport=transport, headers=headers, timeout=10
        )

    def history(self, room: str) -> list[dict[str, Any]]:
        """The messages ``room`` has stored (a raw History, as the server answers it)."""
        with self.http() as http:
            messages: list[dict[str, Any]] = http.post(
                "/v1/chat/History", json={"room_id": room}
            ).json()["messages"]
        return messages

    def start(self) -> ServerProcess:
        args = [
            sys.executable,
            "-m",
            "chatctl",
            "serve",
            "--db",
            str(self.db),
            "--log-level",
            "warning",
        ]
        args += ["--port", str(self.port)] if self.port else ["--uds", str(self.sock)]
        for t in self.tokens:
            args += ["--token", t]
        args += self.extra
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                args,
                stdout=log,
                stderr=log,
                start_new_session=True,
                env=self.env,
                cwd=None if self.env is None else self.workdir,
            )
        wait_for(self._healthy, 15, "the server to answer /health")
        return self

    def _healthy(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(
                f"server exited {self.proc.returncode}: {self.log.read_text()[-2000:]}"
            )
        # Probe the listener with a plain socket first: httpx leaks the socket of a
        # refused Unix-socket connect, which the warnings-as-errors run would report.
        family = socket.AF_INET if self.port else socket.AF_UNIX
        address: Any = ("127.0.0.1", self.port) if self.port else str(self.sock)
        with socket.socket(family) as probe:
            try:
                probe.connect(address)
            except OSError:
                return False
        with self.http() as c:
            return c.get("/health").status_code == 200

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        code = self.proc.wait(timeout)
        self.proc = None
        return code

    def kill9(self) -> None:
        self.stop(signal.SIGKILL)

    def restart(self) -> None:
        self.stop()
        self.start()

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None:
            self.stop(signal.SIGKILL)


def cli_env(server: ServerProcess | None = None, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CHATCTL_", "M3O_"))}
    if server is not None:
        env["CHATCTL_URL"] = server.url
    env.update(extra)
    return env


def fresh_home_env(home: Path, **extra: str) -> dict[str, str]:
    """cli_env() for a user whose home is ``home`` (made, with a private runtime dir):
    no config, no local server yet. The embedded local server it starts lives in there."""
    (home / "run").mkdir(parents=True, mode=0o700, exist_ok=True)
    return cli_env(
        HOME=str(home),
        XDG_RUNTIME_DIR=str(home / "run"),
        XDG_CONFIG_HOME=str(home / ".config"),
        XDG_DATA_HOME=str(home / ".local/share"),
        XDG_STATE_HOME=str(home / ".local/state"),
        **extra,
    )


def chatctl(
    *args: str,
    env: dict[str, str],
    input: str | None = None,
    timeout: float = 60,
) -> subprocess.CompletedProcess[str]:
    """Run the real CLI as a subprocess."""
    return subprocess.run(
        [sys.executable, "-m", "chatctl", *args],
        env=env,
        input=input,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
