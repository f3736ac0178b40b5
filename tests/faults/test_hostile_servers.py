"""The CLI against hostile servers: small servers on loopback that answer a byte at a
time, with a gzip bomb, with JSON nested 100,000 deep, with redirects and with endless
error details. Whatever they do, the CLI (a real process) ends within ``--timeout``, in
bounded memory, with one line on stderr and a documented exit status.

(tests/faults/test_hostile.py is the other way round: hostile clients of the server.)
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import struct
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler

import pytest

from chatctl.schema import EXTENSIONS_HEADER, SERVER_EXTENSIONS
from tests.e2e.proxy import ANSWERED, Handler, serve
from tests.e2e.test_failures import one_error
from tests.faults.drill import report
from tests.helpers import cli_env

ROOM = "0190a0b0-0000-7000-8000-000000000000"
#: --timeout of the runs here; a run may take this and its start-up (under 2 s, even loaded),
#: where a trickle (a byte every PACE seconds) would keep today's httpx reading for minutes.
TIMEOUT = 2
WITHIN = TIMEOUT + 2.0  # the figure: exit 3 within 4 s of starting the CLI
PACE = 0.25
#: the bytes a trickled head pads itself with: a minute of trickling.
PAD = int(60 / PACE)
#: a gzip bomb's size once inflated.
BOMB_BYTES = 2 << 30


@dataclass
class Run:
    code: int
    stdout: str
    stderr: str
    seconds: float
    #: the peak resident memory of the CLI process.
    rss_mib: float


def run(args: list[str], url: str, *, timeout: float = 60, input: bytes = b"") -> Run:
    """The real CLI against ``url`` with ``--timeout TIMEOUT``: its exit, output, time and
    peak memory (its own rusage, from wait4)."""
    env = cli_env(CHATCTL_URL=url, CHATCTL_USER="u")
    with contextlib.ExitStack() as stack:
        stdin = stack.enter_context(tempfile.TemporaryFile())
        stdin.write(input)
        stdin.seek(0)
        out = stack.enter_context(tempfile.TemporaryFile())
        err = stack.enter_context(tempfile.TemporaryFile())
        started = time.monotonic()
        proc = subprocess.Popen(
            [sys.executable, "-m", "chatctl", "--timeout", str(TIMEOUT), *args],
            env=env,
            stdin=stdin,
            stdout=out,
            stderr=err,
        )
        killer = threading.Timer(timeout, proc.kill)
        killer.start()
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        finally:
            killer.cancel()
        proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here, not by Popen
        seconds = time.monotonic() - started
        out.seek(0)
        err.seek(0)
        return Run(
            proc.returncode,
            out.read().decode(errors="replace"),
            err.read().decode(errors="replace"),
            seconds,
            usage.ru_maxrss / 1024,
        )


def trickle(request: BaseHTTPRequestHandler, data: bytes) -> str:
    """Write ``data`` a byte every PACE seconds, until the client goes away."""
    with contextlib.suppress(OSError):
        for i in range(len(data)):
            request.wfile.write(data[i : i + 1])
            time.sleep(PACE)
    return ANSWERED


def head(status: str, headers: dict[str, str], *, pad: bool = False) -> bytes:
    lines = [f"HTTP/1.1 {status}", *(f"{k}: {v}" for k, v in headers.items())]
    if pad:
        lines.append("X-Pad: " + "a" * PAD)
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def answer(request: BaseHTTPRequestHandler, data: bytes, **headers: str) -> str:
    """A 200 JSON answer with ``headers``, whole, with chatctl's extensions announced."""
    base = {"Content-Type": "application/json", "Content-Length": str(len(data))}
    with contextlib.suppress(OSError):
        request.wfile.write(head("200 OK", {**base, **chatctl_server(), **headers}) + data)
    return ANSWERED


def chatctl_server() -> dict[str, str]:
    return {EXTENSIONS_HEADER: ", ".join(sorted(SERVER_EXTENSIONS))}


def endpoint(request: BaseHTTPRequestHandler) -> str:
    return request.path.rsplit("/", 1)[-1]


# -- one deadline per call -----------------------------------------------------------------


def trickling(where: str, only: str | None = None) -> Handler:
    """A server that trickles its answers (to ``only`` that endpoint; the rest answered at
    once): the head itself (``head``, a byte at a time from the status line on), or the
    body after a whole head (``body``)."""

    def handle(request: BaseHTTPRequestHandler, body: bytes) -> str:
        name = endpoint(request)
        if only is not None and name != only:
            return answer(request, b'{"rooms": []}')
        if name == "Join":
            upgrade = {"Upgrade": "websocket", "Connection": "Upgrade"}
            return trickle(request, head("101 Switching Protocols", upgrade, pad=True))
        content = b'{"messages": [' + b" " * PAD
        headers = {"Content-Type": "application/json", "Content-Length": str(len(content))}
        if where == "head":
            return trickle(request, head("200 OK", headers, pad=True) + content)
        with contextlib.suppress(OSError):
            request.wfile.write(head("200 OK", {**headers, **chatctl_server()}))
        return trickle(request, content)

    return handle


@pytest.mark.parametrize(
    "args, only, where",
    [
        (["list"], None, "head"),
        # chatctl's streamed History, after a List that says the server has it
        (["history", ROOM], "History", "head"),
        (["history", ROOM], "History", "body"),
        (["join", ROOM], None, "head"),  # the handshake
        (["join", "general"], None, "head"),  # the List that finds the room by its name
    ],
    ids=lambda v: "-".join(v) if isinstance(v, list) else str(v),
)
def test_a_trickled_answer_ends_at_the_timeout(
    args: list[str], only: str | None, where: str
) -> None:
    with serve(trickling(where, only)) as url:
        r = run(args, url)
    assert r.code == 3, r
    assert one_error(r.stderr) == f"error: {url} did not answer within {TIMEOUT}s"
    assert r.seconds < WITHIN, f"{r.seconds:.1f}s"
    assert r.stdout == ""
    report(f"trickled-{where}-{args[0]}", seconds=f"{r.seconds:.1f}")


# -- bounded answers -----------------------------------------------------------------------


@pytest.fixture(scope="session")
def gzip_bomb() -> Callable[[bytes, int], bytes]:
    """A valid gzip of ``prefix`` and BOMB_BYTES of ``fill`` (~2 MB), made in under a second
    each: after a full flush, deflate starts afresh, so each MiB of ``fill`` compresses to
    the same block."""
    made: dict[tuple[bytes, int], bytes] = {}

    def bomb(prefix: bytes, fill: int) -> bytes:
        if (prefix, fill) in made:
            return made[prefix, fill]
        mib = bytes([fill]) * (1 << 20)
        deflate = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
        start = deflate.compress(prefix) + deflate.flush(zlib.Z_FULL_FLUSH)
        block = deflate.compress(mib) + deflate.flush(zlib.Z_FULL_FLUSH)
        last = deflate.compress(mib) + deflate.flush(zlib.Z_FINISH)
        crc = zlib.crc32(prefix)
        for _ in range(BOMB_BYTES >> 20):
            crc = zlib.crc32(mib, crc)
        header = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\x03"
        trailer = struct.pack("<II", crc, (len(prefix) + BOMB_BYTES) & 0xFFFFFFFF)
        made[prefix, fill] = header + start + block * ((BOMB_BYTES >> 20) - 1) + last + trailer
        return made[prefix, fill]

    return bomb


def bombing(
    only: str, content: Callable[[], Iterator[bytes]], *, ours: bool = False, **headers: str
) -> Handler:
    """A server that answers ``only`` with ``content``, the rest at once; ``ours``: a
    chatctl server (it names its extensions), else a plain m3o one."""

    def handle(request: BaseHTTPRequestHandler, body: bytes) -> str:
        extensions = chatctl_server() if ours else {}
        if endpoint(request) != only:
            empty = b'{"rooms": []}'
            with contextlib.suppress(OSError):
                request.wfile.write(
                    head("200 OK", {"Content-Length": str(len(empty)), **extensions}) + empty
                )
            return ANSWERED
        with contextlib.suppress(OSError):
            request.wfile.write(
                head("200 OK", {"Content-Type": "application/json", **extensions, **headers})
            )
            for part in content():
                request.wfile.write(part)
        return ANSWERED

    return handle


@pytest.mark.parametrize(
    "args, only, ours",
    [
        (["list"], "List", False),
        (["send", ROOM, "hi"], "Send", False),
        (["create", "general"], "Create", False),
        (["history", ROOM], "History", False),  # m3o's: one answer, the whole room
        (["history", ROOM], "History", True),  # chatctl's: streamed, bounded per message
    ],
    ids=["list", "send", "create", "history", "history-stream"],
)
def test_a_gzip_bomb_is_refused_in_bounded_memory(
    gzip_bomb: Callable[[bytes, int], bytes], args: list[str], only: str, ours: bool
) -> None:
    bomb = gzip_bomb(b'{"messages": [', ord(" ")) if ours else gzip_bomb(b"", 0)
    handler = bombing(
        only, lambda: iter([bomb]), ours=ours, **{"Content-Encoding": "gzip", "Connection": "close"}
    )
    with serve(handler) as url:
        r = run(args, url)
    assert r.code == 3, r
    if ours:
        problem = "more than 16 MiB of a History without a message"
    else:
        problem = "an answer larger than 128 MiB"
    assert one_error(r.stderr) == f"error: {url} sent {problem} (HTTP 200)"
    assert r.stdout == ""
    assert r.rss_mib < 600, f"peak RSS {r.rss_mib:.0f} MiB"
    report(f"gzip-bomb-{args[0]}{'-stream' if ours else ''}", peak_rss_mib=f"{r.rss_mib:.0f}")


def test_a_plain_answer_past_the_limit_is_refused_in_bounded_memory() -> None:
    def plain() -> Iterator[bytes]:
        spaces = b" " * (1 << 20)
        for _ in range(200):
            yield spaces

    handler = bombing("List", plain, **{"Content-Length": str(200 << 20)})
    with serve(handler) as url:
        r = run(["list"], url)
    assert r.code == 3, r
    assert one_error(r.stderr) == f"error: {url} sent an answer larger than 128 MiB (HTTP 200)"
    assert r.rss_mib < 2 * 128 + 100, f"peak RSS {r.rss_mib:.0f} MiB"
    report("plain-200MB-answer", peak_rss_mib=f"{r.rss_mib:.0f}")


@pytest.mark.parametrize("encoding", ["br", "gzip"])
def test_an_answer_that_cannot_be_decoded_is_one_line(encoding: str) -> None:
    def garbage() -> Iterator[bytes]:
        yield b"not compressed at all"

    handler = bombing("List", garbage, **{"Content-Encoding": encoding, "Connection": "close"})
    with serve(handler) as url:
        r = run(["list"], url)
    assert r.code == 3, r
    line = one_error(r.stderr)
    assert line.startswith(f"error: {url} sent an answer ") and line.endswith("(HTTP 200)")
    assert encoding in line


DEEP = b"[" * 100_000 + b"]" * 100_000


@pytest.mark.parametrize(
    "args, only, content",
    [
        (["list"], "List", b'{"rooms": ' + DEEP + b"}"),
        (["history", ROOM], "History", b'{"messages": [{"id": ' + DEEP + b"}]}"),
        (["send", ROOM, "hi"], "Send", b'{"message": {"id": "x", "text": ' + DEEP + b"}}"),
    ],
    ids=["list", "history-stream", "send"],
)
def test_json_nested_100000_deep_is_one_line(args: list[str], only: str, content: bytes) -> None:
    handler = bombing(only, lambda: iter([content]), ours=True, Connection="close")
    with serve(handler) as url:
        r = run(args, url)
    assert r.code == 3, r
    line = one_error(r.stderr)
    assert line.startswith(f"error: {url} sent ") and "JSON nested more than 32 deep" in line
    assert r.stdout == ""


def websocket(request: BaseHTTPRequestHandler, frames: list[bytes]) -> str:
    """Accept a WebSocket upgrade, send ``frames`` as text frames, then wait for the
    client to go."""
    key = request.headers["Sec-WebSocket-Key"]
    accept = base64.b64encode(
        hashlib.sha1((key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").encode()).digest()
    ).decode()
    upgrade = {"Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Accept": accept}
    with contextlib.suppress(OSError):
        request.wfile.write(head("101 Switching Protocols", upgrade))
        for payload in frames:
            request.wfile.write(struct.pack("!BBQ", 0x81, 127, len(payload)) + payload)
        request.connection.settimeout(10)
        while request.rfile.read(1):
            pass
    return ANSWERED


def test_a_join_frame_nested_100000_deep_is_one_line() -> None:
    def handle(request: BaseHTTPRequestHandler, body: bytes) -> str:
        if endpoint(request) == "Join":
            return websocket(request, [b'{"message": ' + DEEP + b"}"])
        return answer(request, b'{"rooms": []}')

    with serve(handle) as url:
        r = run(["join", ROOM], url)
    assert r.code == 3, r
    assert one_error(r.stderr) == f"error: {url} sent a Join frame of JSON nested more than 32 deep"
    assert r.stdout == ""


# -- errors as they are --------------------------------------------------------------------


def test_a_redirect_on_join_is_named_as_one() -> None:
    def handle(request: BaseHTTPRequestHandler, body: bytes) -> tuple[int, dict[str, str], bytes]:
        # Same origin: websockets would follow it, with the token, ten times over.
        return 307, {"Location": "/v2/chat/Join", "Content-Type": "text/html"}, b"moved"

    with serve(handle) as url:
        r = run(["join", ROOM], url)
    assert r.code == 3, r
    assert one_error(r.stderr) == f"error: {url} redirects to /v2/chat/Join (HTTP 307)"
    assert "follows no redirects" in r.stderr


def test_a_redirect_on_a_call_is_named_with_its_location_shortened() -> None:
    location = "https://elsewhere.example/" + "x" * 1000

    def handle(request: BaseHTTPRequestHandler, body: bytes) -> tuple[int, dict[str, str], bytes]:
        return 308, {"Location": location}, b""

    with serve(handle) as url:
        r = run(["list"], url)
    assert r.code == 3, r
    line = one_error(r.stderr)
    assert line == f"error: {url} redirects to {location[:200]}… (1026 bytes) (HTTP 308)"


def test_a_long_error_detail_is_shortened_with_its_length() -> None:
    detail = "y" * 102_400

    def handle(request: BaseHTTPRequestHandler, body: bytes) -> tuple[int, dict[str, str], bytes]:
        error = {"id": "chat.list", "code": 400, "detail": detail, "status": "Bad Request"}
        return 400, {"Content-Type": "application/json"}, json.dumps(error).encode()

    with serve(handle) as url:
        r = run(["list"], url)
    assert r.code == 1, r
    assert one_error(r.stderr) == f"error: {'y' * 300}… (102400 bytes) (chat.list, HTTP 400)"


def test_a_trickled_bulk_answer_ends_at_the_timeout() -> None:
    sent = {"id": "0190a0b0-0000-7000-8000-000000000001", "text": "1"}

    def handle(request: BaseHTTPRequestHandler, body: bytes) -> str:
        if request.headers.get("Content-Type", "").startswith("application/x-ndjson"):
            headers = {"Content-Type": "application/x-ndjson", **chatctl_server()}
            with contextlib.suppress(OSError):
                request.wfile.write(head("200 OK", headers))
            return trickle(request, b'{"message": {"id": "' + b"7" * PAD)
        return answer(request, json.dumps({"message": sent}).encode())  # the first line

    with serve(handle) as url:
        r = run(["send", ROOM, "--lines", "-o", "id"], url, input=b"1\n2\n3\n")
    assert r.code == 3, r
    assert one_error(r.stderr) == f"error: {url} did not answer within {TIMEOUT}s"
    assert r.seconds < WITHIN, f"{r.seconds:.1f}s"
    assert r.stdout.split() == [sent["id"]]  # what was stored


def test_completion_offers_nothing_quickly_from_a_trickling_server() -> None:
    # Completion's budget (0.3 s) is the client's deadline, as for any call.
    with serve(trickling("head")) as url:
        env = cli_env(CHATCTL_URL=url) | {
            "_CHATCTL_COMPLETE": "complete_bash",
            "COMP_WORDS": "chatctl send ",
            "COMP_CWORD": "2",
        }
        started = time.monotonic()
        r = subprocess.run(
            [sys.executable, "-m", "chatctl"], env=env, capture_output=True, text=True, timeout=60
        )
        took = time.monotonic() - started
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == ""
    assert took < WITHIN - TIMEOUT, f"{took:.1f}s"
