"""What ``chatctl.server.protocol`` relies on in uvicorn's internals, checked loudly.

uvicorn is pinned in pyproject.toml to the versions this passed on. When a new uvicorn
moves what these tests touch, they fail here, naming it, rather than the server quietly
losing its head deadline or sending every answer in two writes.
"""

from __future__ import annotations

import inspect
import json
import socket
import time
from collections.abc import Iterator
from importlib.metadata import requires, version
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from packaging.requirements import Requirement
from starlette.applications import Starlette

from chatctl.server.config import ServerConfig
from chatctl.server.protocol import OneWrite, uvicorn_config
from tests.server.conftest import start_server

pytest.importorskip("httptools")


def test_the_installed_uvicorn_is_one_the_pin_allows() -> None:
    (pin,) = [Requirement(r) for r in requires("chatctl") or [] if Requirement(r).name == "uvicorn"]
    assert pin.specifier.contains(version("uvicorn")), (version("uvicorn"), str(pin))


def test_the_httptools_protocol_has_what_the_head_deadline_overrides() -> None:
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


def test_the_server_hooks_and_settings_exist() -> None:
    params = inspect.signature(uvicorn.Server.shutdown).parameters
    assert list(params) == ["self", "sockets"]
    config = uvicorn_config(Starlette(), ServerConfig(db=":memory:"))
    assert config.ws == "websockets-sansio" and config.ws_per_message_deflate is False
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
