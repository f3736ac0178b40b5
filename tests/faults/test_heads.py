"""Request heads and the log under unauthenticated abuse, against a real ``chatctl serve``.

- A drill: 50 connections stream one endless header line each, as fast as the server
  takes it, for 10 s, while ``/health`` is probed 20 times a second on fresh
  connections: the server's memory stays flat, ``/health`` stays fast, every head is
  answered 431 (or closed), and a Send works afterwards.
- A request whose path holds an ESC and a newline leaves one log line, escaped.
- An invalid UTF-8 text frame closes its WebSocket with 1007 and logs one warning line.
- A fuzz of malformed HTTP and WebSocket input leaves no traceback in the log, and no
  500 for what the client did.
- A head over the limit is answered 431 in m3o's shape; ``--max-head-bytes`` sets it.
- Connections that pipeline thousands of requests and read nothing cost little memory.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from chatctl.cli import serve as serve_cli
from chatctl.server import config as server_config
from tests.faults.drill import report, rss_kib
from tests.faults.test_hostile import ws_handshake, ws_read_all
from tests.helpers import ServerProcess, untraced_env, wait_for

TOKEN = "heads-drill-token"
#: the drill's shape (the issue's): connections, seconds, probes per second.
FLOOD_CONNS, FLOOD_SECONDS, PROBES_PER_S = 50, 10.0, 20
#: what it must show: growth of the server's memory, and /health's 99th percentile.
MAX_GROWTH_MIB, MAX_P99_MS = 64, 50.0


def probe_health(port: int) -> float:
    """Milliseconds for one GET /health on a fresh connection, answered 200."""
    started = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        answer = b""
        while chunk := s.recv(4096):
            answer += chunk
    took = (time.perf_counter() - started) * 1000
    assert answer.startswith(b"HTTP/1.1 200 "), answer[:200]
    return took


def percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(pct / 100 * (len(ordered) - 1)))]


def test_a_flood_of_endless_heads_leaves_memory_flat_and_health_fast(tmp_path: Path) -> None:
    # Untraced: the drill measures the server's speed and memory as users run it.
    with ServerProcess(tmp_path, tcp=True, tokens=[TOKEN], env=untraced_env()) as server:
        assert server.proc is not None and server.port is not None
        pid, port = server.proc.pid, server.port
        for _ in range(20):  # warm: the first answers import and allocate what they need
            probe_health(port)
        baseline = peak = rss_kib(pid)
        flood = subprocess.Popen(
            [
                *(sys.executable, "-m", "tests.faults.head_flood", "--port", str(port)),
                *("--conns", str(FLOOD_CONNS), "--seconds", str(FLOOD_SECONDS)),
            ],
            stdout=subprocess.PIPE,
            text=True,
            env=untraced_env(),
        )
        probes: list[float] = []
        try:
            time.sleep(0.5)  # the flood under way before the first probe counts
            deadline = time.monotonic() + FLOOD_SECONDS - 1
            tick = time.monotonic()
            while time.monotonic() < deadline:
                probes.append(probe_health(port))
                peak = max(peak, rss_kib(pid))
                tick += 1 / PROBES_PER_S
                time.sleep(max(0.0, tick - time.monotonic()))
            out, _ = flood.communicate(timeout=FLOOD_SECONDS + 30)
        finally:
            if flood.poll() is None:
                flood.kill()
                flood.wait()
        after = rss_kib(pid)
        figures = json.loads(out)
        # Normal service afterwards: a Send with the token.
        with server.http(TOKEN) as c:
            room = c.post("/v1/chat/Create", json={"name": "after", "user_ids": ["u"]})
            assert room.status_code == 200, room.text
            sent = c.post(
                "/v1/chat/Send",
                json={"room_id": room.json()["room"]["id"], "user_id": "u", "text": "still here"},
            )
            assert sent.status_code == 200, sent.text
    p50, p99 = percentile(probes, 50), percentile(probes, 99)
    growth = (peak - baseline) / 1024
    report(
        "head-flood",
        conns=FLOOD_CONNS,
        seconds=FLOOD_SECONDS,
        heads_431=figures["answered_431"],
        heads_closed=figures["closed"],
        mib_sent=figures["mib_sent"],
        rss_before_mib=f"{baseline / 1024:.0f}",
        rss_peak_mib=f"{peak / 1024:.0f}",
        rss_after_mib=f"{after / 1024:.0f}",
        health_probes=len(probes),
        health_p50_ms=f"{p50:.1f}",
        health_p99_ms=f"{p99:.1f}",
        health_max_ms=f"{max(probes):.1f}",
    )
    assert figures["other"] == 0 and figures["unanswered"] == 0, figures
    assert figures["answered_431"] + figures["closed"] >= FLOOD_CONNS, figures
    assert growth < MAX_GROWTH_MIB, f"server RSS grew {growth:.0f} MiB under the flood"
    assert len(probes) >= PROBES_PER_S * (FLOOD_SECONDS - 1) * 0.8, len(probes)
    assert p99 < MAX_P99_MS, f"/health p99 {p99:.1f} ms under the flood (p50 {p50:.1f} ms)"


@pytest.fixture(scope="module")
def info_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """An open server logging at info (a line per request), shared by the log tests; each
    reads only the lines its own requests added."""
    workdir = tmp_path_factory.mktemp("heads-log")
    with ServerProcess(workdir, tcp=True, extra=["--log-level", "info"]) as server:
        yield server


def log_after(server: ServerProcess, offset: int, until: str) -> list[str]:
    """The log's lines past byte ``offset``, once one holds ``until``."""

    def lines() -> list[str] | None:
        text = server.log.read_bytes()[offset:].decode()
        return text.splitlines() if until in text else None

    found: list[str] = wait_for(lines, 10, f"{until!r} in the server's log")
    return found


def test_a_path_with_an_escape_and_a_newline_is_one_escaped_log_line(
    info_server: ServerProcess,
) -> None:
    offset = info_server.log.stat().st_size
    with info_server.http() as c:
        r = c.post("/v1/chat/%1b%5b31mRED%0aFAKE%20LOG%20LINE")
        assert r.status_code == 404
        # A WebSocket too: its handshake is no line of its own, its path as escaped.
        with pytest.raises(InvalidStatus) as refused:
            connect(f"{info_server.url.replace('http', 'ws')}/v1/chat/%1b%0aJoin")
        assert refused.value.response.status_code == 403
        # The next request's line marks the end (a probe of /health is logged at debug).
        assert c.get("/openapi.json").status_code == 200
    lines = log_after(info_server, offset, "GET /openapi.json 200")
    # One line for each request, escaped; every line a record (it starts with its time).
    forged = [line for line in lines if "RED" in line]
    assert len(forged) == 1, lines
    line, _, fields = forged[0].partition(" 404 ")
    assert line.endswith(" INFO chatctl.server: POST /v1/chat/\\x1b[31mRED\\nFAKE LOG LINE")
    assert re.match(r"[\d.]+ms client=127\.0\.0\.1 request_id=[0-9a-f]{32} ", fields), lines
    joins = [line for line in lines if "Join" in line]
    assert len(joins) == 1 and " INFO chatctl.server: WS /v1/chat/\\x1b\\nJoin 403 " in joins[0]
    assert all(line[:4].isdigit() for line in lines), lines
    assert "\x1b" not in "".join(lines)


def ws_frame(opcode: int, payload: bytes, *, fin: bool = True, mask: bool = True) -> bytes:
    """One WebSocket frame as a client sends it (masked), whatever its payload."""
    first = (0x80 if fin else 0) | opcode
    n = len(payload)
    masked_bit = 0x80 if mask else 0
    if n < 126:
        header = struct.pack("!BB", first, masked_bit | n)
    elif n < 65536:
        header = struct.pack("!BBH", first, masked_bit | 126, n)
    else:
        header = struct.pack("!BBQ", first, masked_bit | 127, n)
    if not mask:
        return header + payload
    key = os.urandom(4)
    return header + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


def test_an_invalid_utf8_text_frame_closes_1007_and_logs_one_warning_line(
    info_server: ServerProcess,
) -> None:
    assert info_server.port is not None
    offset = info_server.log.stat().st_size
    ws = ws_handshake(info_server.port)
    try:
        ws.sendall(ws_frame(0x1, b'{"room_id": "\xff\xfe"}'))
        _, code = ws_read_all(ws, 10)
    finally:
        ws.close()
    assert code == 1007
    lines = log_after(info_server, offset, "WS /v1/chat/Join")
    told = [line for line in lines if "UTF-8" in line]
    assert len(told) == 1, lines
    assert " WARNING " in told[0] and "1007" in told[0], told
    assert not [line for line in lines if " ERROR " in line or "Traceback" in line], lines


def ws_head(*extra: str, path: str = "/v1/chat/Join", key: bool = True) -> bytes:
    lines = [f"GET {path} HTTP/1.1", "Host: 127.0.0.1", "Upgrade: websocket"]
    lines += ["Connection: Upgrade", "Sec-WebSocket-Version: 13"]
    if key:
        lines.append(f"Sec-WebSocket-Key: {base64.b64encode(os.urandom(16)).decode()}")
    return ("\r\n".join([*lines, *extra]) + "\r\n\r\n").encode()


#: malformed HTTP and refused WebSocket handshakes, each on its own connection.
BAD_HEADS = [
    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03 TLS to a plain port\r\n\r\n",
    b"FOO / HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET / HTTP/9.9\r\nHost: x\r\n\r\n",
    b"GET /a\x00b HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\nX: a\x01\x1bb\r\n\r\n",
    b"POST /v1/chat/List HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n",
    b"POST /v1/chat/List HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    b"POST /v1/chat/List HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    b"GET /%zz%ff%00 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: h2c\r\nConnection: Upgrade, close\r\n\r\n",
    ws_head(key=False),
    ws_head("Sec-WebSocket-Key: short"),
    ws_head("Sec-WebSocket-Version: 8"),
    ws_head("X-Long: " + "a" * 9000),
    ws_head(*(f"X-{i}: a" for i in range(200))),
    ws_head("Sec-WebSocket-Extensions: permessage-deflate; x=;;"),
    ws_head().replace(b"GET", b"POST", 1),
    ws_head(path="/v1/chat/Join?%ff%00=\x7f"),
    ws_head(path="/v1/chat/%1b%0a"),
]

#: frames after a good handshake, before or instead of a JoinRequest.
BAD_FRAMES = [
    [ws_frame(0x1, b"\xff\xfe")],
    [ws_frame(0x1, b"\xe2\x82", fin=False), ws_frame(0x0, b"\xff")],
    [ws_frame(0x1, b"{not json")],
    [ws_frame(0x1, b'{"room_id": "r", "user_id": "u"}'), ws_frame(0x1, b"\xff")],
    [ws_frame(0x1, b"[" * 100_000)],
    [ws_frame(0x2, b"\x00\x01")],
    [ws_frame(0x1, b"unmasked", mask=False)],
    [bytes([0xC1]) + ws_frame(0x1, b"rsv")[1:]],
    [ws_frame(0x3, b"opcode")],
    [ws_frame(0x1, b"a" * (2 << 20))],
    [ws_frame(0x8, struct.pack("!H", 999))],
    [ws_frame(0x8, struct.pack("!H", 1000) + b"\xff")],
    [ws_frame(0x8, b"\x03")],
    [ws_frame(0x9, b"p" * 200)],
    [ws_frame(0x0, b"continuation first")],
    [ws_frame(0x1, b"ab", fin=False), ws_frame(0x1, b"cd")],
]


def read_head(s: socket.socket) -> bytes:
    """What the server sends until its answer's head is complete or it closes."""
    s.settimeout(10)
    received = b""
    while b"\r\n\r\n" not in received:
        try:
            chunk = s.recv(65536)
        except ConnectionResetError:
            break
        if not chunk:
            break
        received += chunk
    return received


def test_no_client_input_puts_a_traceback_in_the_log(info_server: ServerProcess) -> None:
    assert info_server.port is not None
    address = ("127.0.0.1", info_server.port)
    offset = info_server.log.stat().st_size
    for head in BAD_HEADS:
        with socket.create_connection(address) as s:
            s.sendall(head)
            answer = read_head(s)
        assert answer[:9] != b"HTTP/1.1 5", (head[:80], answer)
    for frames in BAD_FRAMES:
        ws = ws_handshake(info_server.port)
        try:
            for frame in frames:
                ws.sendall(frame)
            _, code = ws_read_all(ws, 10)
        except OSError:
            code = None  # cut while still sending (an oversized frame)
        finally:
            ws.close()
        assert code != 1011, frames[0][:20]  # 1011: the server failed
    # Gone without a word: mid-head, mid-body, mid-handshake, and after the 101.
    linger_rst = struct.pack("ii", 1, 0)
    for partial in (b"POST /v1/chat/Send HTTP/1.1\r\nHo", _body_cut_short(), ws_head()[:40]):
        with socket.create_connection(address) as s:
            s.sendall(partial)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger_rst)
    half_open = ws_handshake(info_server.port)
    half_open.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger_rst)
    half_open.close()
    with info_server.http() as c:
        assert c.get("/openapi.json?fuzz-done").status_code == 200
    lines = log_after(info_server, offset, "GET /openapi.json 200")
    text = "\n".join(lines)
    assert "Traceback" not in text and " ERROR " not in text, text
    # Nothing the client did is logged as the server's failure: a request it cut short
    # is a 499 (nginx's "client closed request"), not a 500.
    assert not [line for line in lines if re.search(r" 5\d\d [\d.]+ms ", line)], text
    assert re.search(r"POST /v1/chat/Send 499 [\d.]+ms", text), text
    assert all(line[:4].isdigit() for line in lines), text  # every line a record of its own


def _body_cut_short() -> bytes:
    return b"POST /v1/chat/Send HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{"


def test_a_head_over_the_limit_is_answered_431_in_the_m3o_shape(
    info_server: ServerProcess,
) -> None:
    assert info_server.port is not None
    address = ("127.0.0.1", info_server.port)
    limit = server_config.DEFAULT_MAX_HEAD_BYTES
    head = b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\nX-Big: "
    with socket.create_connection(address) as s:  # just under: served
        s.sendall(head + b"a" * (limit - len(head) - 100) + b"\r\n\r\n")
        assert read_head(s).startswith(b"HTTP/1.1 200 ")
    with socket.create_connection(address) as s:  # over, in packets of 1 KiB
        s.sendall(head)
        for _ in range(limit // 1024 + 8):
            try:
                s.sendall(b"a" * 1024)
            except OSError:
                break
        s.settimeout(10)
        answer = b""
        while chunk := s.recv(65536):
            answer += chunk
    head_of_answer, _, body = answer.partition(b"\r\n\r\n")
    assert head_of_answer.startswith(b"HTTP/1.1 431 "), answer[:200]
    assert b"connection: close" in head_of_answer.lower()
    assert json.loads(body) == {
        "id": "v1",
        "code": 431,
        "detail": f"request head over {limit} bytes (max_head_bytes): send fewer or shorter"
        " headers",
        "status": "Request Header Fields Too Large",
    }


def test_max_head_bytes_is_a_serve_option_and_a_unix_socket_server_has_it(
    tmp_path: Path,
) -> None:
    # The CLI repeats the server's defaults for its help (it does not import the server).
    assert serve_cli.DEFAULT_MAX_HEAD_BYTES == server_config.DEFAULT_MAX_HEAD_BYTES
    assert serve_cli.DEFAULT_MAX_PENDING_HEADS == server_config.DEFAULT_MAX_PENDING_HEADS
    with ServerProcess(tmp_path, extra=["--max-head-bytes", "2048"]) as server:
        with server.http() as c:
            assert c.get("/health", headers={"X-Fits": "a" * 1500}).status_code == 200
            refused = c.get("/health", headers={"X-Too-Big": "a" * 3000})
        assert refused.status_code == 431, refused.text
        assert "over 2048 bytes" in refused.json()["detail"]


def test_the_log_format_keeps_every_record_on_its_own_line() -> None:
    import logging

    from chatctl.server.serve import _RedactingFormatter

    formatter = _RedactingFormatter("%(levelname)s %(message)s", ["tok-secret"])

    def record(level: int, msg: str, *args: object, exc: BaseException | None = None) -> str:
        info = (type(exc), exc, exc.__traceback__) if exc is not None else None
        made = logging.LogRecord("t", level, __file__, 1, msg, args, info)
        return formatter.format(made)

    try:
        raise ValueError("bad \x1b[2J value\nFAKE 2026 INFO forged tok-secret")
    except ValueError as caught:
        exc = caught
    # A bug's traceback (ERROR) keeps its lines, escaped and indented under the record.
    lines = record(logging.ERROR, "internal error on %s", "/v1/\x1b\n", exc=exc).split("\n")
    assert lines[0] == "ERROR internal error on /v1/\\x1b\\n", lines
    assert len(lines) > 2 and all(line.startswith("    ") for line in lines[1:]), lines
    assert "\x1b" not in "".join(lines) and "tok-secret" not in "".join(lines)
    # Below ERROR an exception is told on the record's own line.
    told = record(logging.DEBUG, "! invalid handshake", exc=exc)
    assert "\n" not in told and "Traceback" not in told, told
    # (its lines joined with "; ", as a driver's multi-line error is)
    assert told.startswith("DEBUG ! invalid handshake (ValueError: bad \\x1b[2J value; FAKE")


def test_the_server_does_not_import_rich() -> None:
    # It escapes log lines with the CLI's own function, from a module that imports rich
    # only where it renders.
    code = "import sys, chatctl.server.serve; assert 'rich' not in sys.modules, 'rich'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_pipelined_requests_are_parsed_one_answer_ahead(tmp_path: Path) -> None:
    # 20 connections each send 256 KiB of tiny pipelined requests (7,000 each) and read
    # nothing: parsed all at once they would cost ~1 KiB of memory each (190 MB here).
    request = b"GET /v1/chat/List HTTP/1.1\r\nHost: x\r\n\r\n"
    # Untraced: the drill measures the server's speed and memory as users run it.
    with ServerProcess(tmp_path, tcp=True, tokens=[TOKEN], env=untraced_env()) as server:
        assert server.proc is not None and server.port is not None
        address = ("127.0.0.1", server.port)
        probe_health(server.port)
        baseline = peak = rss_kib(server.proc.pid)
        hoarders = []
        try:
            for _ in range(20):
                conn = socket.create_connection(address)
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
                conn.setblocking(False)
                with contextlib.suppress(BlockingIOError):  # what fits in the buffers
                    conn.send(request * (256 * 1024 // len(request)))
                hoarders.append(conn)
            until = time.monotonic() + 0.8
            while time.monotonic() < until:
                peak = max(peak, rss_kib(server.proc.pid))
                time.sleep(0.05)
            probe_health(server.port)
        finally:
            for conn in hoarders:
                conn.close()
        # A client that reads gets every answer, in order.
        with socket.create_connection(address) as conn:
            last = request.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n")
            conn.sendall(request * 1999 + last)
            conn.settimeout(30)
            answers = b""
            while chunk := conn.recv(1 << 20):
                answers += chunk
        assert answers.count(b"HTTP/1.1 405 ") == 2000  # GET on an API path
    growth = (peak - baseline) / 1024
    report("pipelined-hoard", conns=20, rss_growth_mib=f"{growth:.1f}")
    assert growth < 32, f"server RSS grew {growth:.0f} MiB for 20 hoarding connections"
