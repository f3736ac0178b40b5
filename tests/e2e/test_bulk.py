"""Ctrl-C during a bulk Send, against the real server through a proxy that can hold a
request: the first finishes the request in flight (every id of it printed: exactly the
messages stored) and reads nothing more; a second abandons it, saying which lines may or
may not have been stored."""

from __future__ import annotations

import signal
import subprocess
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from tests.e2e.test_batches import make_room, sigint_pending, start_batch
from tests.helpers import ServerProcess, cli_env, wait_for

#: hop-by-hop headers a proxy does not pass on.
_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "host"}


@contextmanager
def holding_proxy(upstream: str, hold: threading.Event) -> Iterator[tuple[str, list[bytes]]]:
    """A proxy passing every header both ways; a bulk Send (NDJSON) waits for ``hold``
    to be set before it goes on. Yields its URL and the bulk bodies it saw."""
    http = httpx.Client(base_url=upstream, timeout=60)
    bulks: list[bytes] = []

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            if self.headers.get("Content-Type") == "application/x-ndjson":
                bulks.append(body)
                hold.wait(30)
            headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP}
            r = http.post(self.path, content=body, headers=headers)
            self.send_response(r.status_code)
            for k, v in r.headers.items():
                if k.lower() not in _HOP:
                    self.send_header(k, v)
            self.send_header("Content-Length", str(len(r.content)))
            self.end_headers()
            self.wfile.write(r.content)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", bulks
    finally:
        hold.set()
        server.shutdown()
        server.server_close()
        http.close()


def into_bulk(proc: subprocess.Popen[str], bulks: list[bytes]) -> None:
    """The first line alone (the server's answer names bulk-send), then nine at once:
    a bulk Send of them reaches the proxy and is held there."""
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write("m0\n")
    proc.stdin.flush()
    assert proc.stdout.readline().strip()  # its id
    proc.stdin.write("".join(f"m{n}\n" for n in range(1, 10)))
    proc.stdin.flush()
    wait_for(lambda: bulks, 30, "a bulk Send to reach the proxy")


@dataclass
class Held:
    """A batch whose bulk Send the proxy holds: the CLI process, the server and room, the
    bulk bodies the proxy saw, and the event that lets the held request go on."""

    server: ServerProcess
    room: str
    proc: subprocess.Popen[str]
    bulks: list[bytes]
    hold: threading.Event


@pytest.fixture
def held(start_server: Callable[..., ServerProcess]) -> Iterator[Held]:
    server = start_server(tcp=True)
    env = cli_env(server, CHATCTL_USER="u")
    room = make_room(server, env)
    hold = threading.Event()
    with holding_proxy(server.url, hold) as (url, bulks):
        proc = start_batch(env, url, room)
        try:
            into_bulk(proc, bulks)
            yield Held(server, room, proc, bulks, hold)
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.communicate(timeout=30)


def test_ctrl_c_during_a_bulk_send_finishes_it_and_prints_every_id_of_it(held: Held) -> None:
    proc = held.proc
    proc.send_signal(signal.SIGINT)
    wait_for(lambda: not sigint_pending(proc.pid), 10, "the CLI to take the SIGINT")
    assert proc.poll() is None  # still waiting for the held request's answers
    held.hold.set()
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    messages = held.server.history(held.room)
    lines = held.bulks[0].decode().splitlines()
    assert len(lines) >= 2 and len(held.bulks) == 1  # one bulk Send, finished; no other
    assert [m["text"] for m in messages] == [f"m{n}" for n in range(len(messages))]
    assert len(messages) == 1 + len(lines)
    assert out.split() == [m["id"] for m in messages[1:]]  # m0's id was read before
    assert f"interrupted: {len(messages)} messages sent" in err


def test_a_second_ctrl_c_abandons_the_bulk_send_and_names_its_lines(held: Held) -> None:
    proc = held.proc
    assert proc.stderr is not None
    proc.send_signal(signal.SIGINT)
    assert proc.stderr.readline().startswith("chatctl: finishing the call in flight")
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    lines = len(held.bulks[0].decode().splitlines())
    assert out.split() == []
    assert (
        f"interrupted during the call for line 2 to line {lines + 1} ({lines} in one request): "
        "they may or may not have been stored; 1 message sent before them"
    ) in err
