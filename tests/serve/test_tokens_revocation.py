"""The race a reload can lose: a token revoked while one of its Joins is being admitted
(after it authenticated, before its stream was among those the reload ended). The Join
is refused with 401 before it replays anything, rather than streaming to a token that
no longer exists. (The reload itself, end to end: tests/e2e/test_team_server_reload.py.)"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from tests.server.conftest import alice_revocable


def test_a_token_revoked_while_its_join_is_admitted_gets_nothing(tmp_path: Path) -> None:
    with alice_revocable(tmp_path) as (srv, revoke):
        admin = {"Authorization": "Bearer tok-admin-91"}
        with httpx.Client(base_url=srv.url, headers=admin) as http:
            room = http.post("/v1/chat/Create", json={"name": "r", "user_ids": ["alice"]})
            room_id = room.json()["room"]["id"]
            body = {"room_id": room_id, "user_id": "alice", "text": "x"}
            assert http.post("/v1/chat/Send", json=body).status_code == 200
        service = srv.app.state.service
        admit = service.join

        async def admit_then_revoke(tenant: str, request: dict[str, Any]) -> Any:
            admission = await admit(tenant, request)
            # The operator's reload lands here, between admission and subscription's end.
            revoke()
            return admission

        service.join = admit_then_revoke
        frames = []
        with connect(
            f"{srv.ws_url}/v1/chat/Join",
            additional_headers={"Authorization": "Bearer tok-alice-3c"},
        ) as ws:
            ws.send(json.dumps({"room_id": room_id, "history": 1}))
            try:
                while True:
                    frames.append(json.loads(ws.recv(timeout=10)))
            except ConnectionClosed as closed:
                assert closed.rcvd is not None and closed.rcvd.code == 4401
        assert frames == [
            {"id": "v1", "code": 401, "detail": "Unauthorized", "status": "Unauthorized"}
        ]  # the replayed message never went out
        assert srv.app.state.hub.streams == 0
