"""What ``chatctl.server.protocol`` relies on in uvicorn's internals, checked loudly.

uvicorn is pinned in pyproject.toml to the versions this passed on (``protocol.SUPPORTED``).
When a new uvicorn moves what these tests touch, they fail here with one line naming what
moved and the supported range, rather than the server quietly losing its head deadline
or sending every answer in two writes.
"""

from __future__ import annotations

import inspect
import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from starlette.applications import Starlette
from websockets.sync.client import connect

from chatctl.server.config import ServerConfig
from chatctl.server.protocol import SUPPORTED, OneWrite, uvicorn_config
from tests.seams import check_pin, seam
from tests.server.conftest import start_server

pytest.importorskip("httptools")


MODULE = "chatctl/server/protocol.py"


def test_the_installed_uvicorn_is_one_the_pin_allows() -> None:
    check_pin(MODULE, "uvicorn", SUPPORTED)


def test_the_httptools_protocol_has_what_the_head_deadline_overrides() -> None:
    with seam(MODULE, "uvicorn", SUPPORTED):
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

        for name in (
            "connection_made",
            "data_received",
            "on_headers_complete",
            "on_body",
            "on_message_complete",
            "on_response_complete",
        ):
            assert callable(getattr(HttpToolsProtocol, name, None)), name
        assert list(inspect.signature(HttpToolsProtocol.connection_lost).parameters) == [
            "self",
            "exc",
        ]
        init = inspect.getsource(HttpToolsProtocol.__init__)
        for attribute in ("self.timeout_keep_alive", "self.pipeline", "self.cycle", "self.loop"):
            assert attribute in init, f"HttpToolsProtocol no longer sets {attribute}"
        # The response's head and body go out through the cycle's transport (OneWrite joins
        # them), and a new cycle is made in on_headers_complete (where OneWrite is put in).
        send = inspect.getsource(RequestResponseCycle.send)
        assert send.count("self.transport.write(") >= 2, "RequestResponseCycle writes elsewhere"
        assert "RequestResponseCycle(" in inspect.getsource(HttpToolsProtocol.on_headers_complete)
        # The body floor wakes the app's receive() through the cycle's event, and reads
        # whether the answer has begun.
        cycle = inspect.getsource(RequestResponseCycle.__init__)
        for attribute in ("self.scope", "self.message_event", "self.response_started"):
            assert attribute in cycle, f"RequestResponseCycle no longer sets {attribute}"
        # ... and whether uvicorn has stopped reading the body for an app that does not take it.
        made = inspect.getsource(HttpToolsProtocol.connection_made)
        assert "self.flow = FlowControl(" in made, "HttpToolsProtocol no longer has its flow"
        from uvicorn.protocols.http.flow_control import FlowControl

        assert "self.read_paused" in inspect.getsource(FlowControl.__init__)
        assert "pause_reading()" in inspect.getsource(HttpToolsProtocol.on_body)
        receive = inspect.getsource(RequestResponseCycle.receive)
        assert "await self.message_event.wait()" in receive and '"more_body"' in receive


def test_what_the_head_limit_and_the_websocket_protocol_rely_on() -> None:
    with seam(MODULE, "uvicorn", SUPPORTED):
        from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol
        from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

        # The head limit feeds the parser piecewise through data_received, which is where
        # uvicorn sends its 400 (replaced by m3o's shape) and hands an upgrade over.
        received = inspect.getsource(HttpToolsProtocol.data_received)
        assert "self.send_400_response(" in received and "handle_websocket_upgrade()" in received
        assert "self.transport.set_protocol(" in inspect.getsource(
            HttpToolsProtocol.handle_websocket_upgrade
        )
        assert STATUS_LINE[431].startswith(b"HTTP/1.1 431 ")
        # A request parsed behind an unanswered one is queued (and reading paused), and the
        # queue is taken from when an answer completes: what parsing one answer ahead reads.
        assert "self.pipeline.appendleft(" in inspect.getsource(
            HttpToolsProtocol.on_headers_complete
        )
        assert "self.pipeline.pop()" in inspect.getsource(HttpToolsProtocol.on_response_complete)
        assert "self.headers.append((name, value))" in inspect.getsource(
            HttpToolsProtocol.on_header
        )
        # The WebSocket protocol logs an invalid UTF-8 frame through self.logger.exception with
        # this message (turned into one warning line), and leaves a refused handshake's answer
        # in its connection, which ws_protocol sends.
        from chatctl.server.protocol import _INVALID_UTF8

        sent = inspect.getsource(WebSocketsSansIOProtocol.send_receive_event_to_app)
        assert f"self.logger.exception({_INVALID_UTF8!r})" in sent.replace('"', "'")
        assert "self.logger = " in inspect.getsource(WebSocketsSansIOProtocol.__init__)
        connect_source = inspect.getsource(WebSocketsSansIOProtocol.handle_connect)
        assert "self.handshake_initiated = True" in connect_source
        assert "self.response = self.conn.accept(event)" in connect_source
        from websockets.server import ServerProtocol

        assert "self.handshake_exc = exc" in inspect.getsource(ServerProtocol.parse)


def test_the_server_hooks_and_settings_exist() -> None:
    with seam(MODULE, "uvicorn", SUPPORTED):
        # The public settings protocol.py and serve.py use instead of internals.
        settings = set(inspect.signature(uvicorn.Config).parameters)
        for name in (
            "h11_max_incomplete_event_size",
            "ws_max_size",
            "ws_per_message_deflate",
            "timeout_keep_alive",
            "timeout_graceful_shutdown",
            "ssl_context_factory",
            "server_header",
        ):
            assert name in settings, f"uvicorn.Config takes no {name}"
        for hook in (uvicorn.Server.shutdown, uvicorn.Server.startup):
            params = inspect.signature(hook).parameters
            assert list(params) == ["self", "sockets"], f"uvicorn.Server.{hook.__name__}"
        config = uvicorn_config(Starlette(), ServerConfig(db=":memory:"))
        from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

        assert isinstance(config.ws, type) and issubclass(config.ws, WebSocketsSansIOProtocol)
        assert config.ws_per_message_deflate is False
        assert config.ws_max_size == ServerConfig(db=":memory:").limits.max_body_bytes
        assert config.ws_ping_interval == 15.0 and config.ws_ping_timeout == 45.0


@pytest.fixture
def protocol_server(tmp_path: Path) -> Iterator[tuple[int, list[int]]]:
    """The app under uvicorn with this server's protocol (as ``chatctl serve`` runs it),
    a 0.3 s head deadline, a body floor of 0.5 s plus 1 s per 100 bytes, and a count of
    transport writes per answer."""
    live = start_server(
        str(tmp_path / "chat.db"),
        uvicorn={"timeout_keep_alive": 0.3},
        body_timeout=0.5,
        body_min_rate=100,
    )
    writes: list[int] = []
    original = OneWrite.__init__

    def counting_init(self: OneWrite, transport: Any, loop: Any) -> None:
        writes.append(0)
        index = len(writes) - 1

        class Counted:
            def write(self, data: bytes) -> None:
                writes[index] += 1
                transport.write(data)

            def __getattr__(self, name: str) -> Any:
                return getattr(transport, name)

        original(self, Counted(), loop)  # type: ignore[arg-type]

    OneWrite.__init__ = counting_init  # type: ignore[method-assign]  # before any connection
    try:
        yield int(live.url.rsplit(":", 1)[1]), writes
    finally:
        OneWrite.__init__ = original  # type: ignore[method-assign]
        live.stop()


def test_an_answer_goes_out_in_one_write_and_a_silent_connection_is_closed(
    protocol_server: tuple[int, list[int]],
) -> None:
    port, writes = protocol_server
    with httpx.Client(base_url=f"http://127.0.0.1:{port}") as client:
        assert client.get("/health").json() == {"status": "ok"}
        assert client.post("/v1/chat/List", json={}).status_code == 200
    assert writes[-2:] == [1, 1], writes  # head and body joined, for each answer
    with socket.create_connection(("127.0.0.1", port)) as silent:
        started = time.monotonic()
        silent.settimeout(5)
        assert silent.recv(1) == b""  # closed by the server: no request head came
        assert 0.2 < time.monotonic() - started < 3


def _head(length: int, path: str = "/v1/chat/List") -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
        f"Content-Length: {length}\r\n\r\n"
    ).encode()


def _answer_then_close(conn: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection."""
    conn.settimeout(10)
    received = b""
    while chunk := conn.recv(65536):
        received += chunk
    return received


def test_a_body_that_stops_coming_is_cut_with_408(
    protocol_server: tuple[int, list[int]],
) -> None:
    port, _ = protocol_server
    with socket.create_connection(("127.0.0.1", port)) as conn:
        started = time.monotonic()
        conn.sendall(_head(100) + b'{"user_id": ')
        received = _answer_then_close(conn)
        took = time.monotonic() - started
    head, _, body = received.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408 "), received
    assert b"connection: close" in head.lower()
    assert json.loads(body) == {
        "id": "v1",
        "code": 408,
        "detail": "request body too slow: it must arrive within 0.5 s, plus 1 s per 100 bytes",
        "status": "Request Timeout",
    }
    assert 0.4 < took < 5, took  # the floor, not the 5 s keep-alive nor never


def test_a_body_dribbled_below_the_floor_is_cut_however_steady(
    protocol_server: tuple[int, list[int]],
) -> None:
    # 20 bytes/s against a floor of 100: each byte moves the deadline by 10 ms, each
    # 50 ms passes, so the deadline is passed after about 0.6 s, bytes still coming.
    port, _ = protocol_server
    body = json.dumps({"user_id": "x" * 200}).encode()
    with socket.create_connection(("127.0.0.1", port)) as conn:
        conn.sendall(_head(len(body)))
        cut = False
        for byte in body:
            try:
                conn.sendall(bytes([byte]))
            except OSError:
                cut = True
                break
            time.sleep(0.05)
            conn.setblocking(False)
            try:
                cut = conn.recv(1, socket.MSG_PEEK) != b"" or cut
            except BlockingIOError:
                pass
            finally:
                conn.setblocking(True)
            if cut:
                break
        assert cut, "the whole body went through at 20 bytes/s"
        assert _answer_then_close(conn).startswith(b"HTTP/1.1 408 ")


def test_a_slow_body_above_the_floor_is_served(
    protocol_server: tuple[int, list[int]],
) -> None:
    # 200 bytes/s: it takes 1.5 s, three times the 0.5 s, but keeps above the floor.
    port, _ = protocol_server
    body = json.dumps({"user_id": "u"}).encode().ljust(300)  # JSON may end in spaces
    with socket.create_connection(("127.0.0.1", port)) as conn:
        conn.sendall(_head(len(body)))
        for at in range(0, len(body), 10):
            conn.sendall(body[at : at + 10])
            time.sleep(0.05)
        conn.settimeout(10)
        answer = conn.recv(65536)
    assert answer.startswith(b"HTTP/1.1 200 "), answer
    assert b'"rooms":[]' in answer.partition(b"\r\n\r\n")[2], answer


def test_a_body_nobody_reads_is_not_waited_for(
    protocol_server: tuple[int, list[int]],
) -> None:
    # Answered before its body was read (no such API), the rest of the body is not wanted:
    # a connection still dribbling it is closed at the floor, not kept for ever.
    port, _ = protocol_server
    with socket.create_connection(("127.0.0.1", port)) as conn:
        conn.sendall(_head(100, "/v1/chat/Nothing") + b"{")
        received = _answer_then_close(conn)
    assert received.startswith(b"HTTP/1.1 404 "), received
    assert received.count(b"HTTP/1.1") == 1


def test_connections_waiting_for_a_head_are_bounded_the_longest_waiting_closed(
    tmp_path: Path,
) -> None:
    live = start_server(str(tmp_path / "chat.db"), max_pending_heads=3)
    port = int(live.url.rsplit(":", 1)[1])
    try:
        waiting = [socket.create_connection(("127.0.0.1", port)) for _ in range(3)]
        waiting[1].sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")  # part of a head
        time.sleep(0.2)  # the three are waiting, oldest first
        started = time.monotonic()
        with httpx.Client(base_url=live.url) as client:  # a fourth: served
            assert client.get("/health").status_code == 200
        waiting[0].settimeout(5)
        assert waiting[0].recv(1) == b""  # the one waiting longest, closed for it
        assert time.monotonic() - started < 2  # not at the 5 s head deadline
        # The others are still there: the one with part of a head finishes it.
        waiting[1].sendall(b"Connection: close\r\n\r\n")
        assert _answer_then_close(waiting[1]).startswith(b"HTTP/1.1 200 ")
        for conn in waiting:
            conn.close()
    finally:
        live.stop()


def test_a_head_is_counted_in_bytes_however_it_is_cut_and_pipelining_still_works(
    tmp_path: Path,
) -> None:
    live = start_server(str(tmp_path / "chat.db"), max_head_bytes=2048)
    port = int(live.url.rsplit(":", 1)[1])
    request = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"
    try:
        # Three requests in one packet, each head well under the limit, together over it.
        padded = request[:-2] + b"X-Pad: " + b"p" * 800 + b"\r\n\r\n"
        last = padded[:-2] + b"Connection: close\r\n\r\n"
        with socket.create_connection(("127.0.0.1", port)) as conn:
            conn.sendall(padded * 2 + last)
            assert _answer_then_close(conn).count(b"HTTP/1.1 200 ") == 3
        # A head of exactly the limit, a byte at a time at first, then the rest: served.
        head = b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\nX-Pad: "
        head += b"p" * (2048 - len(head) - 4) + b"\r\n\r\n"
        assert len(head) == 2048
        with socket.create_connection(("127.0.0.1", port)) as conn:
            for at in range(100):
                conn.sendall(head[at : at + 1])
            conn.sendall(head[100:])
            assert _answer_then_close(conn).startswith(b"HTTP/1.1 200 ")
        # One byte more, dribbled: 431, and a second later the connection is closed.
        with socket.create_connection(("127.0.0.1", port)) as conn:
            conn.sendall(head[:-4])
            conn.sendall(b"p\r\n\r\n")
            answer = _answer_then_close(conn)
        assert answer.startswith(b"HTTP/1.1 431 "), answer
        # A WebSocket upgrade still works under the limit.
        with connect(live.ws_url + "/v1/chat/Join") as ws:
            ws.send(json.dumps({"room_id": "nope", "user_id": "u"}))
            assert json.loads(ws.recv(timeout=10))["code"] == 404
    finally:
        live.stop()
