"""Slow and hostile clients: a reader that never reads, connections that never speak,
requests dribbled a byte at a time, oversized frames and malformed bodies.

The server must shed each of them (close, time out, refuse with the m3o error shape)
without crashing, without unbounded memory, and while still serving everyone else.
"""

from __future__ import annotations

import base64
import json
import os
import select
import socket
import struct
import time
from pathlib import Path
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from chatctl.schema import Limits
from chatctl.wire import NIL_UUID
from tests.faults.drill import create_room, report, rss_kib
from tests.helpers import ServerProcess

#: uvicorn's timeout_keep_alive, which serve.py also gives a request head to arrive in.
HEAD_TIMEOUT = 5.0


def ws_handshake(port: int, rcvbuf: int | None = None) -> socket.socket:
    """A raw WebSocket to /v1/chat/Join, upgraded, with nothing read past the 101."""
    s = socket.socket()
    if rcvbuf is not None:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    s.connect(("127.0.0.1", port))
    key = base64.b64encode(os.urandom(16)).decode()
    s.sendall(
        (
            "GET /v1/chat/Join HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = s.recv(1)
        assert chunk, "closed during the handshake"
        head += chunk
    assert head.startswith(b"HTTP/1.1 101"), head
    return s


def ws_send_text(s: socket.socket, text: str) -> None:
    payload = text.encode()
    mask = os.urandom(4)
    n = len(payload)
    if n < 126:
        header = struct.pack("!BB", 0x81, 0x80 | n)
    elif n < 65536:
        header = struct.pack("!BBH", 0x81, 0x80 | 126, n)
    else:
        header = struct.pack("!BBQ", 0x81, 0x80 | 127, n)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    s.sendall(header + mask + masked)


def ws_read_all(s: socket.socket, timeout: float) -> tuple[list[str], int | None]:
    """Every text frame until the close frame (its code) or EOF, within ``timeout``."""
    s.settimeout(timeout)
    buf = b""
    frames: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        while len(buf) >= 2:
            opcode, n = buf[0] & 0x0F, buf[1] & 0x7F
            at = 2
            if n == 126:
                if len(buf) < 4:
                    break
                (n,) = struct.unpack("!H", buf[2:4])
                at = 4
            elif n == 127:
                if len(buf) < 10:
                    break
                (n,) = struct.unpack("!Q", buf[2:10])
                at = 10
            if len(buf) < at + n:
                break
            payload, buf = buf[at : at + n], buf[at + n :]
            if opcode == 0x8:
                return frames, struct.unpack("!H", payload[:2])[0] if n >= 2 else None
            if opcode == 0x1:
                frames.append(payload.decode())
        try:
            chunk = s.recv(1 << 20)
        except (ConnectionResetError, TimeoutError):
            return frames, None
        if not chunk:
            return frames, None
        buf += chunk
    raise AssertionError(f"no close within {timeout}s after {len(frames)} frames")


def test_reader_that_never_reads_is_cut_off_with_4008(tmp_path: Path) -> None:
    with ServerProcess(tmp_path, tcp=True) as server, server.http() as c:
        assert server.proc is not None and server.port is not None
        room_id = create_room(server, "slow", ["writer"])
        slow = ws_handshake(server.port, rcvbuf=4096)
        try:
            ws_send_text(slow, json.dumps({"room_id": room_id, "user_id": "slow"}))
            baseline = rss_kib(server.proc.pid)
            peak = baseline
            text = "y" * 4000
            sent = 0
            # Past the stream queue (1000 frames), the frame in hand and the socket buffers.
            for n in range(2500):
                r = c.post(
                    "/v1/chat/Send", json={"room_id": room_id, "user_id": "writer", "text": text}
                )
                assert r.status_code == 200, r.text
                sent += 1
                if n % 200 == 0:
                    peak = max(peak, rss_kib(server.proc.pid))
            peak = max(peak, rss_kib(server.proc.pid))
            frames, code = ws_read_all(slow, 30)
        finally:
            slow.close()
        assert code == 4008, f"closed with {code} after {len(frames)} of {sent} frames"
        assert len(frames) < sent
        assert c.get("/health").status_code == 200
    growth_mib = (peak - baseline) / 1024
    assert growth_mib < 64, f"server RSS grew {growth_mib:.0f} MiB for one slow reader"
    report(
        "slow-reader",
        sent=sent,
        delivered_before_4008=len(frames),
        rss_baseline_mib=f"{baseline / 1024:.0f}",
        rss_peak_mib=f"{peak / 1024:.0f}",
    )


def idle_and_slowloris(tmp_path: Path, idle: int) -> None:
    with ServerProcess(tmp_path, tcp=True) as server:
        assert server.proc is not None and server.port is not None
        address = ("127.0.0.1", server.port)
        silent = [socket.create_connection(address) for _ in range(idle)]
        dribblers = [socket.create_connection(address) for _ in range(5)]
        head = b"POST /v1/chat/List HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 10_000
        try:
            started = time.monotonic()
            # Still serving everyone else meanwhile.
            with server.http() as c:
                assert c.get("/health").status_code == 200
            open_socks = {s.fileno(): s for s in silent + dribblers}
            dribble = {s.fileno(): 0 for s in dribblers}
            closed_at: list[float] = []
            deadline = started + HEAD_TIMEOUT * 3
            while open_socks and time.monotonic() < deadline:
                for fd, at in list(dribble.items()):
                    if fd in open_socks and at < len(head):
                        try:
                            open_socks[fd].send(head[at : at + 1])
                            dribble[fd] = at + 1
                        except OSError:
                            dribble.pop(fd)
                # Waiting for EOFs; the 0.2 s tick paces the dribble (a byte per tick).
                readable, _, _ = select.select(list(open_socks.values()), [], [], 0.2)
                for s in readable:
                    try:
                        data = s.recv(4096)
                    except ConnectionResetError:
                        data = b""
                    if not data:
                        open_socks.pop(s.fileno())
                        closed_at.append(time.monotonic() - started)
            assert not open_socks, (
                f"{len(open_socks)} of {idle + 5} silent or dribbling connections still open "
                f"after {HEAD_TIMEOUT * 3:g}s"
            )
            rss = rss_kib(server.proc.pid)
            with server.http() as c:
                assert c.get("/health").status_code == 200
        finally:
            for s in silent + dribblers:
                s.close()
    report(
        "idle-connections",
        idle=idle,
        slowloris=5,
        all_closed_by_s=f"{max(closed_at):.1f}",
        first_closed_s=f"{min(closed_at):.1f}",
        rss_mib=f"{rss / 1024:.0f}",
    )


def test_silent_and_slowloris_connections_time_out(tmp_path: Path) -> None:
    idle_and_slowloris(tmp_path, idle=200)


@pytest.mark.soak
def test_silent_and_slowloris_connections_time_out_soak(tmp_path: Path) -> None:
    idle_and_slowloris(tmp_path, idle=1000)


def test_oversized_frame_after_the_first_closes_that_stream_only(tmp_path: Path) -> None:
    with ServerProcess(tmp_path, tcp=True) as server, server.http() as c:
        room_id = create_room(server, "big", ["writer"])
        url = f"ws://127.0.0.1:{server.port}/v1/chat/Join"
        with connect(url, max_size=None) as bystander, connect(url, max_size=None) as hostile:
            # since the nil id: the message below reaches it whether its stream was live
            # before the Send or only after (the server replays, then goes live).
            bystander.send(
                json.dumps({"room_id": room_id, "user_id": "bystander", "since": NIL_UUID})
            )
            hostile.send(json.dumps({"room_id": room_id, "user_id": "hostile"}))
            # ws_max_size is the body limit (1 MiB): it bounds every frame after the first.
            with pytest.raises(ConnectionClosed) as closed:
                hostile.send("z" * (Limits().max_body_bytes + 1))
                hostile.recv(timeout=30)
            # 1009 (message too big), or dropped while the client was still sending it.
            assert closed.value.rcvd is None or closed.value.rcvd.code == 1009
            r = c.post(
                "/v1/chat/Send", json={"room_id": room_id, "user_id": "writer", "text": "hi"}
            )
            assert r.status_code == 200
            frame: dict[str, Any] = json.loads(bystander.recv(timeout=10))
            assert frame["message"]["text"] == "hi"
        assert c.get("/health").status_code == 200


@pytest.mark.parametrize(
    "body, detail",
    [
        (b'{"room_id": "\xff\xfe", "user_id": "u", "text": "t"}', "not valid UTF-8"),
        (b"[" * 200_000 + b"]" * 200_000, "nested too deeply"),
        (b'{"room_id": ' + b'{"a": ' * 100_000 + b"1" + b"}" * 100_001, "nested too deeply"),
        (b'{"room_id": "r", "text": ', "not valid JSON"),
    ],
    ids=["invalid-utf8", "nested-array", "nested-object", "truncated"],
)
def test_malformed_bodies_answer_400_in_the_m3o_shape(
    server_tcp: ServerProcess, body: bytes, detail: str
) -> None:
    with server_tcp.http() as c:
        r = c.post("/v1/chat/Send", content=body, headers={"Content-Type": "application/json"})
        assert r.status_code == 400, r.text
        data = r.json()
        assert set(data) == {"id", "code", "detail", "status"}
        assert data["code"] == 400 and data["status"] == "Bad Request", data
        assert detail in data["detail"], data
        assert c.get("/health").status_code == 200


def test_invalid_utf8_first_frame_closes_the_join_with_4400(server_tcp: ServerProcess) -> None:
    url = f"ws://127.0.0.1:{server_tcp.port}/v1/chat/Join"
    with connect(url) as ws:
        ws.send(b'{"room_id": "\xff"}')
        error = json.loads(ws.recv(timeout=10))
        assert error["code"] == 400 and "UTF-8" in error["detail"], error
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=10)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 4400


@pytest.fixture(scope="module")
def server_tcp(tmp_path_factory: pytest.TempPathFactory) -> Any:
    with ServerProcess(tmp_path_factory.mktemp("hostile"), tcp=True) as server:
        yield server
