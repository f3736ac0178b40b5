"""Browsers (``chatctl serve --cors-origin``; ``chatctl.server.cors``): the preflight, the
CORS headers on every answer and error for an allowed origin and none for another, the
Join WebSocket's Origin, and an open server that serves only the pages it allows. The
real browser is in tests/compat/test_browser.py.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from chatctl.schema import Limits
from chatctl.server.cors import Cors, Origins, parse_origin, same_origin
from tests.serve.conftest import chatctl
from tests.server.conftest import LiveServer
from tests.server.test_unary import assert_error

PAGE = "http://127.0.0.1:5173"
OTHER = "https://evil.example"
TOKEN = "tok"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def preflight(c: httpx.Client, path: str, origin: str, **extra: str) -> httpx.Response:
    headers = {
        "Origin": origin,
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization,content-type,idempotency-key",
    }
    return c.options(path, headers=headers | extra)


def cors_headers(r: httpx.Response) -> dict[str, str]:
    return {k: v for k, v in r.headers.items() if k.startswith("access-control-")}


@pytest.fixture
def cors_server(live_server: Callable[..., LiveServer]) -> LiveServer:
    return live_server(
        tokens=frozenset({TOKEN}), cors_origins=(PAGE,), limits=Limits(max_body_bytes=2000)
    )


def test_a_preflight_is_answered_before_the_token(cors_server: LiveServer) -> None:
    with httpx.Client(base_url=cors_server.url) as c:
        r = preflight(c, "/v1/chat/Send", PAGE)
        assert r.status_code == 204 and r.content == b""
        assert cors_headers(r) == {
            "access-control-allow-origin": PAGE,
            "access-control-expose-headers": "Retry-After, Chat-Extensions",
            "access-control-allow-methods": "POST",
            "access-control-allow-headers": "Authorization, Content-Type, Idempotency-Key",
            "access-control-max-age": "600",
        }
        assert r.headers["vary"] == "Origin"
        r = preflight(c, "/health", PAGE, **{"Access-Control-Request-Method": "GET"})
        assert r.headers["access-control-allow-methods"] == "GET, HEAD"
        # Chrome asks before a public page reaches a private address.
        private = {"Access-Control-Request-Private-Network": "true"}
        r = preflight(c, "/v1/chat/List", PAGE, **private)
        assert r.headers["access-control-allow-private-network"] == "true"
        # No credentials mode: the token is a header, never a cookie.
        assert "access-control-allow-credentials" not in r.headers


def test_every_answer_and_error_names_an_allowed_origin(cors_server: LiveServer) -> None:
    expected = {
        "access-control-allow-origin": PAGE,
        "access-control-expose-headers": "Retry-After, Chat-Extensions",
    }
    with httpx.Client(base_url=cors_server.url, headers={"Origin": PAGE}) as c:
        answers = {
            200: c.post("/v1/chat/Create", json={"name": "x"}, headers=AUTH),
            401: c.post("/v1/chat/List"),
            404: c.post("/v1/chat/History", json={"room_id": "nope"}, headers=AUTH),
            405: c.get("/v1/chat/Send"),
            413: c.post("/v1/chat/Create", content=b"x" * 3000, headers=AUTH),
            -1: c.get("/health"),
            -2: c.post("/v1/chat/Nope"),
        }
        for code, r in answers.items():
            assert code < 0 or r.status_code == code, r.text
            assert cors_headers(r) == expected, (code, r.headers)
            assert r.headers["vary"] == "Origin"


def test_nothing_for_an_origin_not_allowed(cors_server: LiveServer) -> None:
    with httpx.Client(base_url=cors_server.url) as c:
        r = preflight(c, "/v1/chat/Send", OTHER)
        assert r.status_code == 204 and cors_headers(r) == {}
        for origin in (OTHER, PAGE + "/", "http://127.0.0.1:5174", "HTTP://127.0.0.1:5173x"):
            r = c.post("/v1/chat/List", json={}, headers=AUTH | {"Origin": origin})
            assert r.status_code == 200 and cors_headers(r) == {}, origin
        # Without an Origin (curl, the CLI): as ever, but Vary says answers differ by it.
        r = c.post("/v1/chat/List", json={}, headers=AUTH)
        assert cors_headers(r) == {} and r.headers["vary"] == "Origin"


def test_a_star_is_any_origin_without_credentials(live_server: Callable[..., LiveServer]) -> None:
    srv = live_server(tokens=frozenset({TOKEN}), cors_origins=("*",))
    with httpx.Client(base_url=srv.url) as c:
        for origin in (OTHER, PAGE):
            r = c.post("/v1/chat/List", json={}, headers=AUTH | {"Origin": origin})
            assert r.headers["access-control-allow-origin"] == "*"
            assert "access-control-allow-credentials" not in r.headers
        assert preflight(c, "/v1/chat/Send", OTHER).headers["access-control-allow-origin"] == "*"


def ws_url(srv: LiveServer) -> str:
    return srv.ws_url + "/v1/chat/Join"


def test_a_join_websocket_from_another_origin_is_refused(cors_server: LiveServer) -> None:
    with (
        pytest.raises(InvalidStatus) as refused,
        connect(ws_url(cors_server), origin=OTHER, subprotocols=[TOKEN]),
    ):
        pass
    assert refused.value.response.status_code == 403
    # From the page's origin, with the token as the subprotocol (a browser's way), and
    # with no Origin at all (the CLI, Node, websocat), it streams.
    with httpx.Client(base_url=cors_server.url, headers=AUTH) as c:
        room = c.post("/v1/chat/Create", json={"user_ids": ["a"]}).json()["room"]["id"]
        c.post("/v1/chat/Send", json={"room_id": room, "user_id": "a", "text": "hi"})
    body = json.dumps({"room_id": room, "user_id": "b", "history": 1})
    for how in ({"origin": PAGE, "subprotocols": [TOKEN]}, {"additional_headers": AUTH}):
        with connect(ws_url(cors_server), **how) as ws:
            ws.send(body)
            assert json.loads(ws.recv(timeout=5))["message"]["text"] == "hi"
            if "subprotocols" in how:
                assert ws.subprotocol == TOKEN


def test_an_open_server_serves_only_the_pages_it_allows(
    live_server: Callable[..., LiveServer],
) -> None:
    """No token: any page its user opens could otherwise send to it (a form posting
    text/plain needs no preflight) or tail its rooms."""
    srv = live_server()
    with httpx.Client(base_url=srv.url) as c:
        r = c.post("/v1/chat/Create", content=b'{"name": "x"}', headers={"Origin": OTHER})
        detail = (
            f"origin {OTHER} is not allowed (a server without tokens serves only the web"
            f" pages it allows: chatctl serve --cors-origin {OTHER})"
        )
        assert_error(r, 403, "v1", detail)
        assert c.post("/v1/chat/List").status_code == 200  # no Origin: not a browser
        assert c.get("/health", headers={"Origin": OTHER}).status_code == 200
    with pytest.raises(InvalidStatus) as refused, connect(ws_url(srv), origin=OTHER):
        pass
    assert refused.value.response.status_code == 403
    assert json.loads(refused.value.response.body)["detail"] == detail

    allowing = live_server(cors_origins=(PAGE,))
    with httpx.Client(base_url=allowing.url, headers={"Origin": PAGE}) as c:
        r = c.post("/v1/chat/Create", json={"name": "x"})
        assert r.status_code == 200 and r.headers["access-control-allow-origin"] == PAGE
    with connect(ws_url(allowing), origin=PAGE) as ws:
        ws.send(json.dumps({"room_id": r.json()["room"]["id"], "user_id": "u", "history": 1}))
        with pytest.raises(TimeoutError):  # admitted: nothing to say, and no refusal
            ws.recv(timeout=0.3)


def test_a_refused_join_websocket_says_why_and_how_to_allow_it(
    cors_server: LiveServer,
) -> None:
    with pytest.raises(InvalidStatus) as refused, connect(ws_url(cors_server), origin=OTHER):
        pass
    response = refused.value.response
    assert response.status_code == 403
    assert response.headers["content-type"] == "application/json"
    assert json.loads(response.body) == {
        "id": "v1",
        "code": 403,
        "detail": f"origin {OTHER} is not allowed to open a Join WebSocket (this server"
        " allows only the web pages of its --cors-origin list; to allow this one:"
        f" chatctl serve --cors-origin {OTHER})",
        "status": "Forbidden",
    }


def own_origin(srv: LiveServer) -> str:
    return srv.url.replace("localhost", "127.0.0.1")


@pytest.mark.parametrize("open_server", [True, False])
def test_the_servers_own_origin_is_not_another_origin(
    live_server: Callable[..., LiveServer], open_server: bool
) -> None:
    """Origin: http://HOST:PORT of the very Host the request names (what websocket-client
    sends by default) is the same origin: served like a request without Origin, on an open
    server and with --cors-origin; a port or scheme apart is another origin."""
    tokens = frozenset() if open_server else frozenset({TOKEN})
    srv = live_server(tokens=tokens, cors_origins=() if open_server else (PAGE,))
    own = own_origin(srv)
    headers = {} if open_server else AUTH
    with httpx.Client(base_url=own, headers=headers) as c:
        room = c.post("/v1/chat/Create", json={"user_ids": ["a"]}, headers={"Origin": own})
        assert room.status_code == 200, room.text
        room_id = room.json()["room"]["id"]
        c.post("/v1/chat/Send", json={"room_id": room_id, "user_id": "a", "text": "hi"})
    request = json.dumps({"room_id": room_id, "user_id": "b", "history": 1})
    protocols = {} if open_server else {"subprotocols": [TOKEN]}
    with connect(ws_url(srv).replace("localhost", "127.0.0.1"), origin=own, **protocols) as ws:
        ws.send(request)
        assert json.loads(ws.recv(timeout=5))["message"]["text"] == "hi"
    port = int(own.rsplit(":", 1)[1])
    for other in (f"http://127.0.0.1:{port + 1}", f"https://127.0.0.1:{port}"):
        with pytest.raises(InvalidStatus) as refused, connect(ws_url(srv), origin=other):
            pass
        assert refused.value.response.status_code == 403, other


def test_an_open_server_takes_its_own_origin_only_by_a_loopback_name(
    live_server: Callable[..., LiveServer],
) -> None:
    """A page that rebinds its own name to 127.0.0.1 sends that name as Host and as its
    Origin: the same origin as the request, but not one the open server is known by."""
    srv = live_server()
    port = int(srv.url.rsplit(":", 1)[1])
    with httpx.Client(base_url=srv.url) as c:
        for host, accepted in (
            ("rebound.example", False),
            ("localhost", True),
            ("127.0.0.1", True),
        ):
            origin = f"http://{host}:{port}"
            r = c.post("/v1/chat/List", headers={"Host": f"{host}:{port}", "Origin": origin})
            assert r.status_code == (200 if accepted else 403), (host, r.text)


def test_a_crash_still_names_the_origin() -> None:
    """The access log's 500 (a bug of ours) comes from inside ``Cors``: a page can read it."""
    from chatctl.server.accesslog import AccessLog
    from chatctl.server.hub import Hub

    async def broken(scope: Any, receive: Any, send: Any) -> None:
        raise RuntimeError("a bug")

    app = Cors(AccessLog(broken, Hub(), crash=True), Origins([PAGE]))
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)

    async def call() -> httpx.Response:
        async with httpx.AsyncClient(transport=transport, base_url="http://x") as c:
            return await c.post("/v1/chat/List", headers={"Origin": PAGE})

    import asyncio

    r = asyncio.run(call())
    assert r.status_code == 500 and r.headers["access-control-allow-origin"] == PAGE


@pytest.mark.parametrize(
    ("given", "origin"),
    [
        ("https://App.Example.com", "https://app.example.com"),
        ("https://app.example.com:443/", "https://app.example.com"),
        ("http://localhost:3000", "http://localhost:3000"),
        ("http://[::1]:8000", "http://[::1]:8000"),
        ("*", "*"),
    ],
)
def test_an_origin_is_written_as_browsers_send_it(given: str, origin: str) -> None:
    assert parse_origin(given) == origin


@pytest.mark.parametrize(
    ("given", "why"),
    [
        ("app.example.com", "give scheme://host[:port]"),
        ("ftp://app.example.com", "give scheme://host[:port]"),
        ("https://app.example.com/path", "no path, query or fragment"),
        ("https://user@app.example.com", "user name"),
        ("https://app.example.com:99999", "not an origin"),
        ("null", "null origin"),
    ],
)
def test_a_bad_origin_says_why(given: str, why: str) -> None:
    with pytest.raises(ValueError, match=why.replace("[", r"\[").replace("]", r"\]")):
        parse_origin(given)


def test_a_bad_origin_is_a_usage_error() -> None:
    result = subprocess.run(
        chatctl("serve", "--port", "0", "--cors-origin", "https://app.example.com/x"),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2, result.stderr
    (line,) = result.stderr.strip().splitlines()[:1]
    assert line.startswith("error: --cors-origin:") and "no path" in line, result.stderr


@pytest.mark.parametrize(
    ("origin", "scheme", "host", "same"),
    [
        ("https://chat.example:8443", "wss", "chat.example:8443", True),  # behind TLS
        ("https://chat.example", "wss", "chat.example:443", True),  # a default port
        ("http://chat.example", "ws", "Chat.Example:80", True),
        ("http://chat.example:8443", "wss", "chat.example:8443", False),  # not the scheme
        ("https://chat.example:8443", "https", "chat.example:8444", False),
        ("http://[::1]:8080", "http", "[::1]:8080", True),
        ("null", "http", "null", False),
    ],
)
def test_the_own_origin_is_the_scheme_and_host_of_the_request(
    origin: str, scheme: str, host: str, same: bool
) -> None:
    scope = {"type": "websocket", "scheme": scheme, "headers": [(b"host", host.encode())]}
    assert same_origin(origin, scope, loopback_only=False) is same
