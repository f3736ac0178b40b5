"""Logs an operator can use (issue 26): each request's line says who and what, behind a
real nginx too; ``--log-format json`` gives the same fields, one object a line; hostile
input leaves no raw control character and no token in any line; repeated warnings are
held back.

Behind nginx the client connects from 127.0.0.2 (any 127/8 address is this machine), so
the address the server logs can only be the client's, passed on by nginx's
``X-Forwarded-For``; nginx logs its ``$request_id`` (tests/nginx.py) and the server's line
must carry the same.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from websockets.sync.client import connect

from chatctl.server.serve import _JSONFormatter, _Repeats
from tests.helpers import ServerProcess, wait_for
from tests.nginx import Nginx

CHATCTL = (sys.executable, "-m", "chatctl")
ALICE = "tok-alice-0123456789abcdef"
ADMIN = "tok-admin-0123456789abcdef"
ALICE_ID = hashlib.sha256(ALICE.encode()).hexdigest()[:12]
#: a raw control character: C0 but the newline ending each line, DEL, C1.
RAW_CONTROL = re.compile(r"[\x00-\x09\x0b-\x1f\x7f-\x9f]")


def tokens_file(workdir: Path) -> Path:
    path = workdir / "tokens"
    path.write_text(f"{ALICE} tenant=acme user=alice\n{ADMIN} tenant=acme admin\n")
    path.chmod(0o600)
    return path


def started(workdir: Path, *flags: str) -> ServerProcess:
    extra = ["--tokens-file", str(tokens_file(workdir)), "--log-level", "info", *flags]
    return ServerProcess(workdir, tcp=True, extra=extra)


def log_lines(server: ServerProcess, until: Callable[[list[str]], bool]) -> list[str]:
    """The server's log lines, once ``until`` holds for them."""

    def lines() -> list[str] | None:
        found = server.log.read_text(errors="replace").splitlines()
        return found if until(found) else None

    result: list[str] = wait_for(lines, 10, "the server's log lines")
    return result


def test_behind_nginx_a_line_names_the_client_and_nginx_request_id(tmp_path: Path) -> None:
    with started(tmp_path, "--proxy-headers") as server, Nginx(tmp_path, [server.port or 0]) as nx:
        via = httpx.HTTPTransport(local_address="127.0.0.2")
        headers = {"Authorization": f"Bearer {ALICE}"}
        with httpx.Client(base_url=nx.url, transport=via, headers=headers, timeout=10) as c:
            r = c.post("/v1/chat/Create", json={"name": "via nginx", "user_ids": ["alice"]})
            assert r.status_code == 200, r.text
            rid = r.headers["x-request-id"]
        # nginx made the id ($request_id) and sent it on; the answer brought it back.
        access = wait_for(
            lambda: (nx.dir / "access.log").read_text() or None, 10, "nginx's access line"
        )
        assert f'127.0.0.2 {rid} "POST /v1/chat/Create HTTP/1.1" 200' in access, access
        lines = log_lines(server, lambda found: any(rid in line for line in found))
    [line] = [line for line in lines if rid in line]
    assert re.search(
        r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z INFO chatctl\.server: POST /v1/chat/Create 200"
        rf" [\d.]+ms client=127\.0\.0\.2 request_id={rid} tenant=acme user=alice"
        rf" token={ALICE_ID}$",
        line,
    ), line
    assert ALICE not in server.log.read_text()


def hostile_requests(server: ServerProcess) -> list[str]:
    """Requests a client chose the bytes of, on a raw socket: control characters in the
    path, the request id and the forwarded address; tokens in the request id, the path,
    the query string and the forwarded address. Returns the request ids it expects in the
    log (kept ones)."""
    assert server.port is not None
    heads = [
        # A token as the request id, and in the path and query string.
        f"GET /v1/chat/{ALICE}?token={ALICE} HTTP/1.1\r\nX-Request-ID: {ALICE}\r\n",
        # The request's own bearer token inside the request id.
        f"POST /v1/chat/List HTTP/1.1\r\nAuthorization: Bearer {ALICE}\r\n"
        f"X-Request-ID: id-{ALICE}\r\nContent-Length: 2\r\n",
        # Escapes in the path (percent-encoded: the raw bytes are refused before the app),
        # a C1 byte in the request id (DEL is refused before the app), a token and junk
        # as the forwarded address.
        "POST /v1/chat/%1b%5b2J%0aFAKE%c2%9b HTTP/1.1\r\nX-Request-ID: a\x9bc\r\n"
        f"X-Forwarded-For: {ADMIN}\r\nContent-Length: 2\r\n",
        "GET /v1/chat/Send HTTP/1.1\r\nX-Forwarded-For: 10.0.0.1\x9b2J\r\n"
        "X-Request-ID: kept-id-1\r\n",
        # "Bearer" and a quote in the path: scrubbed to the next space, yet still JSON.
        f"GET /v1/chat/x%20Bearer%20{ADMIN}%22,%22level%22 HTTP/1.1\r\n",
    ]
    for head in heads:
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
            body = "{}" if "Content-Length" in head else ""
            s.sendall((head + "Host: x\r\nConnection: close\r\n\r\n" + body).encode("latin-1"))
            while s.recv(65536):
                pass
    return ["kept-id-1"]


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_hostile_input_leaves_no_control_character_nor_token_in_the_log(
    tmp_path: Path, log_format: str
) -> None:
    flags = ["--log-format", log_format, "--proxy-headers"]
    with started(tmp_path, *flags) as server:
        kept = hostile_requests(server)
        with server.http() as c:
            assert c.get("/openapi.json").status_code == 200  # the last line
        lines = log_lines(server, lambda found: any("/openapi.json" in x for x in found))
    text = server.log.read_text(errors="strict")
    assert not RAW_CONTROL.search(text), [x for x in lines if RAW_CONTROL.search(x)]
    for token in (ALICE, ADMIN):
        assert token not in text
    requests = [x for x in lines if "/v1/chat/" in x]
    assert len(requests) == 5, lines  # one line each, none split
    for kept_id in kept:
        assert sum(kept_id in x for x in requests) == 1
    if log_format == "json":
        entries = [json.loads(x) for x in lines]  # every line one JSON object
        access = [e for e in entries if "/v1/chat/" in e.get("path", "")]
        assert {e["client"] for e in access} >= {"invalid", "127.0.0.1"}, access
        # Not kept: a control character, the request's own token (a new id each); a
        # token the server knows, kept but scrubbed like any token in a line.
        made = [e["request_id"] for e in access if e["request_id"] != "kept-id-1"]
        assert made.count("[redacted]") == 1, made
        new = [rid for rid in made if rid != "[redacted]"]
        assert len(new) == 3 and all(re.fullmatch("[0-9a-f]{32}", rid) for rid in new), made


def test_json_logs_one_object_per_request_and_a_stream_when_it_opens(tmp_path: Path) -> None:
    with started(tmp_path, "--log-format", "json") as server:
        headers = {"Authorization": f"Bearer {ALICE}", "X-Request-ID": "req-42"}
        with server.http() as c:
            r = c.post(
                "/v1/chat/Create", json={"name": "j", "user_ids": ["alice"]}, headers=headers
            )
            assert r.headers["x-request-id"] == "req-42"
            room = r.json()["room"]["id"]
            for probe in ("/health", "/ready"):
                assert c.get(probe).status_code == 200
            join = f"ws://127.0.0.1:{server.port}/v1/chat/Join"
            with connect(join, additional_headers={"Authorization": f"Bearer {ALICE}"}) as ws:
                ws.send(json.dumps({"room_id": room}))
                log_lines(server, lambda found: any("stream open" in x for x in found))
            assert c.get("/openapi.json").status_code == 200
        lines = log_lines(server, lambda found: any("/openapi.json" in x for x in found))
    entries = [json.loads(line) for line in lines]
    access = [e for e in entries if "path" in e]
    create = [e for e in access if e["path"] == "/v1/chat/Create"]
    assert len(create) == 1
    assert create[0] | {"ms": 0, "time": ""} == {
        "time": "",
        "level": "INFO",
        "logger": "chatctl.server",
        "message": create[0]["message"],
        "method": "POST",
        "path": "/v1/chat/Create",
        "status": 200,
        "ms": 0,
        "client": "127.0.0.1",
        "request_id": "req-42",
        "tenant": "acme",
        "user": "alice",
        "token": ALICE_ID,
    }
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", create[0]["time"])
    # Probes are at debug: not in an info log.
    assert not [e for e in access if e["path"] in ("/health", "/ready")]
    # The stream: a line when it opens, with its room, and one when it ends.
    opened = [e for e in access if e.get("event") == "stream open"]
    ended = [e for e in access if e["path"] == "/v1/chat/Join" and "event" not in e]
    assert len(opened) == 1 and opened[0]["room"] == room and opened[0]["status"] == 101
    assert opened[0]["user"] == "alice" and opened[0]["token"] == ALICE_ID
    assert len(ended) == 1 and ended[0]["room"] == room
    assert entries.index(opened[0]) < entries.index(ended[0])


def test_a_repeated_warning_is_shown_once_a_window_with_how_many_were_held() -> None:
    repeats = _Repeats(window=30)
    formatter = _JSONFormatter("%(message)s", [])

    def warn(text: str, exc: Exception) -> logging.LogRecord:
        args = (exc,)
        return logging.LogRecord("chatctl.server", logging.WARNING, __file__, 1, text, args, None)

    cannot = "cannot listen on PostgreSQL (%s); retrying"
    refused = OSError("connection failed: refused\n\tIs the server running on that host?")
    shown = [r for r in (warn(cannot, refused) for _ in range(120)) if repeats.filter(r)]
    assert len(shown) == 1
    # A driver's two-line error told on one line.
    message = json.loads(formatter.format(shown[0]))["message"]
    assert message == (
        "cannot listen on PostgreSQL (connection failed: refused; Is the server running on"
        " that host?); retrying"
    )
    assert repeats.filter(warn("lost the PostgreSQL LISTEN connection (%s)", refused))
    # Once the window has passed, the next is shown, saying how many were held back.
    key = ("chatctl.server", cannot)
    when, held = repeats._seen[key]
    repeats._seen[key] = (when - 31, held)
    record = warn(cannot, refused)
    assert repeats.filter(record)
    assert record.getMessage().endswith("(119 more like this in the last 30 s not shown)")


def test_forwarded_allow_ips_without_proxy_headers_is_a_usage_error(tmp_path: Path) -> None:
    done = subprocess.run(
        [*CHATCTL, "serve", "--db", str(tmp_path / "c.db"), "--forwarded-allow-ips", "10.0.0.5"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith("error: --forwarded-allow-ips goes with --proxy-headers")
    assert not (tmp_path / "c.db").exists()  # refused before anything was touched
