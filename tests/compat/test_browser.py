"""A real browser against the API: headless Chromium opens a page served from another
origin, which calls Create, Send and History with ``fetch`` and tails the room over a Join
WebSocket (the token as its subprotocol). Against the m3o stand-in (CORS as micro's
gateway did it) this proves the harness; against ``chatctl serve --cors-origin`` the page
works from the origin allowed (in either edition's names, or from any origin with ``*``)
and fails from any other, its Join WebSocket included.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.compat.browser import Chromium
from tests.compat.conftest import ServeFactory
from tests.compat.m3o_standin import RunningStandIn


def run_page(
    chromium: Chromium, origin: str, api: str, token: str, names: str = "room"
) -> tuple[dict[str, Any], list[str]]:
    config = {"api": api, "token": token, "names": names, "wait_ms": 5000}
    with chromium.page(f"{origin}/page.html") as page:
        result = page.evaluate(f"chatTest({json.dumps(config)})")
        return result, page.log


def assert_page_works(result: dict[str, Any], origin: str, token: str, names: str) -> None:
    calls = result["calls"]
    assert result["origin"] == origin
    assert calls["create"]["ok"], calls["create"]
    assert calls["send"]["ok"], calls["send"]
    stream = result["stream"]
    assert stream["joined"], stream
    # The server chose the offered subprotocol (the token), or the browser fails the socket.
    assert stream["protocol"] == token
    texts = [f["message"]["text"] for f in stream["frames"] if "message" in f]
    assert texts == ["hello from the browser"], stream
    assert stream["frames"][0]["message"][f"{names}_id"] == result["id"]
    history = calls["history"]["body"]["messages"]
    assert [m["text"] for m in history] == ["hello from the browser"]


def assert_refused_by_the_browser(result: dict[str, Any], log: list[str]) -> None:
    """The page cannot use the API: fetch fails before any answer reaches it (CORS)."""
    create = result["calls"]["create"]
    assert create["ok"] is False and create["status"] == 0, create
    assert create["error"].startswith("TypeError"), create
    assert any("CORS policy" in line for line in log), log


def test_page_on_another_origin_against_the_m3o_standin(
    chromium: Chromium, page_origins: tuple[str, str], m3o_group_server: RunningStandIn
) -> None:
    origin = page_origins[0]
    srv = m3o_group_server
    result, _ = run_page(chromium, origin, srv.url, srv.token, names="group")
    assert_page_works(result, origin, srv.token, "group")
    # The browser really sent the page's origin, and the token only as the subprotocol.
    (join,) = [r for r in srv.requests if r.transport == "ws"]
    assert join.headers["origin"] == origin
    assert join.headers["sec-websocket-protocol"] == srv.token
    assert "authorization" not in join.headers


def test_page_is_refused_by_default(
    chromium: Chromium, page_origins: tuple[str, str], chatctl_serve: ServeFactory
) -> None:
    """With no --cors-origin, a page on another origin gets no CORS answer at all."""
    srv = chatctl_serve()
    result, log = run_page(chromium, page_origins[0], srv.url, srv.tokens[0])
    assert_refused_by_the_browser(result, log)


@pytest.mark.parametrize("names", ["room", "group"])
def test_page_from_an_allowed_origin_against_chatctl_serve(
    chromium: Chromium, page_origins: tuple[str, str], chatctl_serve: ServeFactory, names: str
) -> None:
    origin = page_origins[0]
    srv = chatctl_serve("--cors-origin", origin)
    result, _ = run_page(chromium, origin, srv.url, srv.tokens[0], names=names)
    assert_page_works(result, origin, srv.tokens[0], names)


def test_any_origin_with_a_star(
    chromium: Chromium, page_origins: tuple[str, str], chatctl_serve: ServeFactory
) -> None:
    origin = page_origins[1]
    srv = chatctl_serve("--cors-origin", "*")
    result, _ = run_page(chromium, origin, srv.url, srv.tokens[0])
    assert_page_works(result, origin, srv.tokens[0], "room")


def test_page_from_an_origin_not_allowed_fails(
    chromium: Chromium, page_origins: tuple[str, str], chatctl_serve: ServeFactory
) -> None:
    allowed, other = page_origins
    srv = chatctl_serve("--cors-origin", allowed)
    result, log = run_page(chromium, other, srv.url, srv.tokens[0])
    assert_refused_by_the_browser(result, log)
    # Nor may that page tail a room: its Join WebSocket is refused by Origin (the same
    # socket, token and server open from the allowed origin's page).
    join_url = srv.url.replace("http", "ws", 1) + "/v1/chat/Join"
    opened = {}
    for origin in (other, allowed):
        with chromium.page(f"{origin}/page.html") as page:
            opened[origin] = page.evaluate(
                f"openJoin({json.dumps(join_url)}, {json.dumps(srv.tokens[0])})"
            )
    assert opened[allowed] == "open", opened
    assert opened[other].startswith("closed"), opened


def test_a_page_tells_a_wrong_token_from_a_server_down(
    chromium: Chromium, page_origins: tuple[str, str], chatctl_serve: ServeFactory
) -> None:
    """A Join offering a wrong token as its subprotocol still completes the handshake (the
    server echoes the protocol), so the page reads the 401 error frame and close 4401;
    a server that is not there is 1006, which the page shows otherwise."""
    origin = page_origins[0]
    srv = chatctl_serve("--cors-origin", origin)
    join_url = srv.url.replace("http", "ws", 1) + "/v1/chat/Join"
    request = {"room_id": "00000000-0000-0000-0000-000000000000", "user_id": "bob"}
    with chromium.page(f"{origin}/page.html") as page:
        wrong = page.evaluate(
            f"joinOutcome({json.dumps(join_url)}, 'not-the-token', {json.dumps(request)})"
        )
        srv.stop()
        down = page.evaluate(
            f"joinOutcome({json.dumps(join_url)}, {json.dumps(srv.tokens[0])}, {{}})"
        )
    assert wrong["protocol"] == "not-the-token", wrong
    assert wrong["frames"] == [
        {"id": "v1", "code": 401, "detail": "Unauthorized", "status": "Unauthorized"}
    ], wrong
    assert wrong["close"]["code"] == 4401, wrong
    assert wrong["shown"] == "401 Unauthorized"
    assert down["close"]["code"] == 1006 and down["shown"] == "server unreachable", down
