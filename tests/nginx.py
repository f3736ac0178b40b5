"""Debian's nginx in front of chatctl replicas, configured as the docs tell users to:
its own proxy block, read from docs/deployment.md (so the docs and the test cannot drift apart),
and nginx's defaults for all it does not say (an upstream's ``max_fails=1
fail_timeout=10s``).

Started as a plain process with everything of its own under the test's directory: a
``-p`` prefix, the config, pid file, error and access logs and temp paths there, listening
on a loopback port; nothing of the system's (``/etc/nginx``, ``/var/lib/nginx``,
``/run/nginx.pid``) is read or written. A missing nginx skips the test, saying why, and
fails it under CI (``.ci/run`` installs it).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
from pathlib import Path

import httpx
import pytest

from tests.helpers import free_port, wait_for

DEPLOYMENT = Path(__file__).resolve().parent.parent / "docs" / "deployment.md"


def binary() -> str:
    """The nginx executable (Debian puts it in /usr/sbin, not on every PATH)."""
    found = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/usr/local/sbin")
    if found is None:
        reason = "nginx is not installed (Debian package nginx or nginx-light)"
        if os.environ.get("CI"):
            pytest.fail(f"{reason}, and CI must run the proxy tests")
        pytest.skip(reason)
    return found


def readme_proxy_block() -> tuple[str, str]:
    """The docs' nginx block for a team server (docs/deployment.md, "Behind a proxy"): its
    ``map`` line and its ``location`` block, as written there."""
    text = DEPLOYMENT.read_text()
    start = text.index("nginx:\n\n```\n") + len("nginx:\n\n```\n")
    block = text[start : text.index("```", start)]
    mapping = next(line for line in block.splitlines() if line.startswith("map "))
    location = block[block.index("    location / {") :]
    location = location[: location.index("\n    }\n") + len("\n    }\n")]
    assert "proxy_pass http://127.0.0.1:8080;" in location, location
    return mapping, location


class Nginx:
    """nginx proxying to replicas on ``ports``: one replica as the docs' block has it
    (``proxy_pass`` to its address), several through an ``upstream`` with nginx's
    defaults. ``url`` is where clients go."""

    def __init__(self, workdir: Path, ports: list[int]) -> None:
        self.dir = workdir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.ports = ports
        self.proc: subprocess.Popen[bytes] | None = None

    def config(self) -> str:
        mapping, location = readme_proxy_block()
        if len(self.ports) == 1:
            target, upstream = f"http://127.0.0.1:{self.ports[0]}", ""
        else:
            servers = "".join(f"        server 127.0.0.1:{port};\n" for port in self.ports)
            target, upstream = "http://chat", f"    upstream chat {{\n{servers}    }}\n"
        location = location.replace("http://127.0.0.1:8080", target)
        temp = "".join(
            f"    {kind}_temp_path {self.dir}/temp/{kind};\n"
            for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
        )
        return (
            f"worker_processes 1;\n"
            f"pid {self.dir}/nginx.pid;\n"
            f"error_log {self.dir}/error.log notice;\n"
            f"events {{ worker_connections 1024; }}\n"
            f"http {{\n"
            # nginx's own line per request, with the id it sent the replica (X-Request-ID).
            f"    log_format chat '$remote_addr $request_id \"$request\" $status';\n"
            f"    access_log {self.dir}/access.log chat;\n"
            f"{temp}"
            f"    {mapping}\n"
            f"{upstream}"
            f"    server {{\n"
            f"        listen 127.0.0.1:{self.port};\n"
            f"    {location.replace(chr(10), chr(10) + '    ').rstrip()}\n"
            f"    }}\n"
            f"}}\n"
        )

    def http(self) -> httpx.Client:
        """An httpx client for raw API calls through the proxy."""
        return httpx.Client(base_url=self.url, timeout=10)

    def start(self) -> Nginx:
        (self.dir / "temp").mkdir(parents=True, exist_ok=True)
        conf = self.dir / "nginx.conf"
        conf.write_text(self.config())
        log = self.dir / "error.log"
        args = [binary(), "-p", f"{self.dir}/", "-c", str(conf), "-e", str(log)]
        args += ["-g", "daemon off;"]
        with open(self.dir / "nginx.out", "ab") as out:
            self.proc = subprocess.Popen(args, stdout=out, stderr=out, start_new_session=True)
        wait_for(self._listening, 10, "nginx to listen")
        return self

    def _listening(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            logs = (self.dir / "nginx.out").read_text() + (self.dir / "error.log").read_text()
            raise AssertionError(f"nginx exited {self.proc.returncode}: {logs[-2000:]}")
        with socket.socket() as probe:
            return probe.connect_ex(("127.0.0.1", self.port)) == 0

    def __enter__(self) -> Nginx:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)  # nginx's fast shutdown
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
