"""The step of a rolling upgrade between ``--notify both`` and ``--notify rooms`` (issue 27,
docs/deployment.md): a replica in each mode on one PostgreSQL database, each stream on
either hearing every message and event of the other's once, in order, and an ``all``
stream following a room created through the other. (A replica of the release before
per-room channels beside a ``both`` one: tests/faults/test_upgrade.py.) Needs
CHATCTL_TEST_POSTGRES."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.sync.client import ClientConnection, connect

from chatctl.ids import START
from tests import postgres
from tests.helpers import ServerProcess, wait_for

pytestmark = pytest.mark.postgres


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[tuple[ServerProcess, ServerProcess]]:
    with postgres.fresh_database() as url:
        for name in ("both", "rooms"):
            (tmp_path / name).mkdir()
        with (
            ServerProcess(tmp_path / "both", tcp=True, db=url, extra=["--notify", "both"]) as a,
            ServerProcess(tmp_path / "rooms", tcp=True, db=url, extra=["--notify", "rooms"]) as b,
        ):
            yield a, b


def call(server: ServerProcess, endpoint: str, body: dict[str, Any]) -> Any:
    r = httpx.post(f"{server.url}/v1/chat/{endpoint}", json=body, timeout=10)
    assert r.status_code == 200, r.text
    return r.json()


def frames(ws: ClientConnection, count: int) -> list[str]:
    """The next ``count`` frames, each a message's text or an event's type and user; then
    nothing more for a moment (nothing twice)."""
    got = []
    for _ in range(count):
        frame = json.loads(ws.recv(timeout=10))
        if "message" in frame:
            got.append(frame["message"]["text"])
        else:
            got.append(f"{frame['event']['type']} {frame['event']['user_id']}")
    with pytest.raises(TimeoutError):
        ws.recv(timeout=0.5)
    return got


def test_a_both_replica_and_a_rooms_replica_hear_each_other_once(
    pair: tuple[ServerProcess, ServerProcess],
) -> None:
    both, rooms = pair
    room = call(both, "Create", {"name": "r", "description": "", "user_ids": ["s"]})["room"]["id"]
    join = {"room_id": room, "user_id": "w", "since": START, "events": True}
    with (
        connect(f"ws://127.0.0.1:{both.port}/v1/chat/Join") as on_both,
        connect(f"ws://127.0.0.1:{rooms.port}/v1/chat/Join") as on_rooms,
        connect(f"ws://127.0.0.1:{both.port}/v1/chat/JoinRooms") as every_room,
    ):
        for ws in (on_both, on_rooms):
            ws.send(json.dumps(join))
        every_room.send(json.dumps({"user_id": "carol", "all": True}))
        wait_for(lambda: "w" in call(both, "List", {"user_id": "w"}).get("rooms", [{}])[0].get(
            "user_ids", []), 20, "the joins")  # fmt: skip
        expected = []
        for n, server in enumerate((both, rooms, both, rooms)):
            call(server, "Send", {"room_id": room, "user_id": "s", "text": f"m{n}"})
            expected.append(f"m{n}")
        call(both, "Invite", {"room_id": room, "user_id": "g1"})
        call(rooms, "Invite", {"room_id": room, "user_id": "g2"})
        expected += ["invited g1", "invited g2"]
        assert frames(on_both, 4 + 2) == expected
        assert frames(on_rooms, 4 + 2) == expected
        # carol's all stream (on the both replica) follows a room created with her in it
        # on the rooms replica, and hears its message once.
        made = call(
            rooms, "Create", {"name": "c", "description": "", "user_ids": ["carol", "dave"]}
        )
        new = made["room"]["id"]
        added = json.loads(every_room.recv(timeout=10))
        assert added["room_added"]["room_id"] == new
        call(rooms, "Send", {"room_id": new, "user_id": "dave", "text": "hi carol"})
        assert frames(every_room, 1) == ["hi carol"]
