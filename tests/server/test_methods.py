"""HTTP methods (contract part 3): an endpoint takes POST, /health, /ready and /openapi.json GET
and HEAD; any other method is 405 with ``Allow`` (before any token is asked for), except
OPTIONS, which is answered 204 with ``Allow`` (a browser's preflight, with CORS headers
only for an origin ``--cors-origin`` allows: tests/server/test_cors.py). Unknown paths
stay 404 ``No such API``.
"""

from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest

from chatctl.schema import ENDPOINTS
from tests.server.conftest import LiveServer
from tests.server.test_unary import assert_error

#: methods and paths are the edge's alone: one backend is enough (tests/postgres.py).
pytestmark = pytest.mark.one_backend

OTHER_METHODS = ("GET", "HEAD", "PUT", "DELETE", "PATCH", "TRACE")


@pytest.mark.parametrize("endpoint", sorted(ENDPOINTS))
def test_other_methods_on_an_endpoint_are_405_with_allow_post(
    client: httpx.Client, endpoint: str
) -> None:
    for method in OTHER_METHODS:
        r = client.request(method, f"/v1/chat/{endpoint.lower()}")
        assert r.status_code == 405, (method, r.text)
        assert r.headers["allow"] == "POST"
        if method != "HEAD":  # a HEAD answer has no body
            assert_error(r, 405, "v1", f"method {method} not allowed here: use POST")


@pytest.mark.parametrize("path", ["/health", "/ready", "/openapi.json", "/HEALTH"])
def test_health_and_the_document_take_get_and_head(client: httpx.Client, path: str) -> None:
    for method in ("GET", "HEAD"):
        r = client.request(method, path)
        assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    for method in ("POST", "PUT", "DELETE", "PATCH", "TRACE"):
        r = client.request(method, path)
        assert r.headers["allow"] == "GET, HEAD"
        assert_error(r, 405, "v1", f"method {method} not allowed here: use GET, HEAD")


def test_options_is_answered_without_a_token(live_server: Callable[..., LiveServer]) -> None:
    """OPTIONS (no CORS configured): 204, the methods in Allow, nothing else; before the
    token, like 405, so neither tells anything about tokens."""
    srv = live_server(tokens=frozenset({"t"}))
    with httpx.Client(base_url=srv.url) as c:
        for path, allow in (("/v1/chat/Send", "POST"), ("/health", "GET, HEAD")):
            r = c.options(path)
            assert (r.status_code, r.headers["allow"], r.content) == (204, allow, b"")
            assert not [h for h in r.headers if h.startswith("access-control-")]
        assert c.get("/v1/chat/Send").status_code == 405
        assert_error(c.post("/v1/chat/Send"), 401, "v1", "Unauthorized")
        assert_error(c.options("/v1/chat/Nope"), 404, "v1", "No such API")


def test_a_websocket_on_another_path_is_still_no_such_api(client: httpx.Client) -> None:
    from websockets.sync.client import connect

    url = str(client.base_url).replace("http", "ws", 1)
    with connect(url + "/v1/chat/Send") as ws:
        assert '"No such API"' in str(ws.recv(timeout=5))
