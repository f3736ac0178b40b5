"""Small real HTTP servers that stand between the CLI and a real chat server, or stand in
for servers that are not chat servers at all: a proxy that holds a Send until the test
lets it through, a plain web server, and a server that answers 500 with a web page. Each
runs in a thread on a real loopback socket; the CLI under test is a real process.
A handler may also write its answer itself (``ANSWERED``), byte by byte if it likes, for
hostile servers (tests/faults/test_hostile_servers.py).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Final, Literal

import httpx

#: what a handler returns when it has written its answer to ``request.wfile`` itself.
ANSWERED: Final = "answered"
Handler = Callable[
    [BaseHTTPRequestHandler, bytes], tuple[int, dict[str, str], bytes] | Literal["answered"] | None
]


@contextmanager
def serve(handle: Handler, upstream: str | None = None) -> Iterator[str]:
    """Serve on 127.0.0.1; ``handle`` answers a request, or returns None to forward it to
    ``upstream``, or ANSWERED when it wrote the answer itself. Yields the server's URL."""
    http = httpx.Client(base_url=upstream, timeout=30) if upstream else None

    class _Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            answer = handle(self, body)
            if isinstance(answer, str):  # ANSWERED
                self.close_connection = True
                return
            if answer is None:
                assert http is not None
                forwarded = {
                    k: v
                    for k, v in self.headers.items()
                    if k.lower() in ("authorization", "content-type", "idempotency-key")
                }
                r = http.post(self.path, content=body, headers=forwarded)
                answer = (
                    r.status_code,
                    {"Content-Type": r.headers.get("content-type", "application/json")},
                    r.content,
                )
            status, headers, content = answer
            self.send_response(status)
            for key, value in headers.items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(content)))
            self.end_headers()
            self.wfile.write(content)

        do_GET = do_POST

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        if http is not None:
            http.close()
