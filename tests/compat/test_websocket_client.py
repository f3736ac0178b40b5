"""Python's ``websocket-client`` (the most used sync WebSocket library), with its default
options, against a real ``chatctl serve``. It sends ``Origin: http://HOST:PORT`` of the
very server it connects to, which is that server's own origin, not a web page's: it
joins the open server and a server with ``--cors-origin`` and receives the room's
messages. A foreign ``Origin`` is still refused, with a body that says how to allow it.
"""

from __future__ import annotations

import json
import logging

import pytest
import websocket

from tests.compat.conftest import ServeFactory
from tests.helpers import ServerProcess, wait_for

PAGE = "https://app.example.com"


def ws_url(srv: ServerProcess) -> str:
    return srv.url.replace("http", "ws", 1) + "/v1/chat/Join"


def join_and_receive(
    srv: ServerProcess, header: list[str], caplog: pytest.LogCaptureFixture
) -> str:
    """Create a room, join it with websocket-client (default options), send a message:
    the first frame received. Also checks the handshake carried the server's own origin."""
    token = srv.tokens[0] if srv.tokens else None
    with srv.http(token) as http:
        room = http.post("/v1/chat/Create", json={"user_ids": ["alice"]}).json()["room"]["id"]
        websocket.enableTrace(True, handler=logging.NullHandler())
        try:
            with caplog.at_level(logging.DEBUG, logger="websocket"):
                ws = websocket.create_connection(ws_url(srv), header=header, timeout=10)
        finally:
            websocket.enableTrace(False)
        try:
            ws.send(json.dumps({"room_id": room, "user_id": "bob"}))
            # The stream is live once bob is a member (Join made him one).
            wait_for(
                lambda: any(
                    r["id"] == room
                    for r in http.post("/v1/chat/List", json={"user_id": "bob"}).json()["rooms"]
                ),
                10,
                "the Join to be admitted",
            )
            sent = http.post(
                "/v1/chat/Send", json={"room_id": room, "user_id": "alice", "text": "hi"}
            )
            assert sent.status_code == 200, sent.text
            frame: str = ws.recv()
        finally:
            ws.close()
    # What made it fail before: its default Origin, the server's own.
    assert f"Origin: {srv.url}" in caplog.text
    return frame


def test_joins_the_open_server_with_default_options(
    chatctl_serve: ServeFactory, caplog: pytest.LogCaptureFixture
) -> None:
    srv = chatctl_serve(tokens=[])
    frame = join_and_receive(srv, [], caplog)
    assert json.loads(frame)["message"]["text"] == "hi"


def test_joins_a_server_with_cors_origins(
    chatctl_serve: ServeFactory, caplog: pytest.LogCaptureFixture
) -> None:
    srv = chatctl_serve("--cors-origin", PAGE)
    frame = join_and_receive(srv, [f"Authorization: Bearer {srv.tokens[0]}"], caplog)
    assert json.loads(frame)["message"]["text"] == "hi"


def test_a_foreign_origin_is_refused_with_the_way_to_allow_it(
    chatctl_serve: ServeFactory,
) -> None:
    srv = chatctl_serve("--cors-origin", PAGE)
    other = "https://other.example"
    with pytest.raises(websocket.WebSocketBadStatusException) as refused:
        websocket.create_connection(
            ws_url(srv),
            origin=other,
            header=[f"Authorization: Bearer {srv.tokens[0]}"],
            timeout=10,
        )
    assert refused.value.status_code == 403
    error = json.loads(refused.value.resp_body or b"")
    assert error["code"] == 403 and error["id"] == "v1"
    assert f"chatctl serve --cors-origin {other}" in error["detail"]
