"""User ids that are what they look like (issue 23): a new user id or room name holding a
control, format or bidi character (or, for ids, the ',' members are listed with) is
refused with 400 naming the rule, on both stores; ids already in a room keep working."""

from __future__ import annotations

import asyncio
import sys
import unicodedata
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import pytest

from chatctl.schema import (
    ENDPOINTS,
    INVISIBLE,
    Limits,
    ValidationError,
    unseen_character,
    validate_request,
)
from chatctl.server.openapi import openapi_document
from chatctl.server.sql import Session
from chatctl.server.store import is_postgres_url
from tests.server.conftest import LiveServer
from tests.server.test_unary import assert_error, call, ok

#: (user id, what the refusal names)
LYING_IDS = [
    ("al\u200dice", "U+200D"),  # a zero-width joiner: shows as "alice"
    ("bob\u202e", "U+202E"),  # right-to-left override: what follows shows reversed
    ("a,b", "','"),  # two members, as a member list shows them
    ("eve\n", "U+000A"),
    ("\u2066mallory", "U+2066"),
    ("soft\xadhyphen", "U+00AD"),
    ("tag\U000e0041", "U+E0041"),
]


def test_the_class_is_every_control_format_and_separator_character() -> None:
    import re

    refused = re.compile(f"[{INVISIBLE}]")
    for code in range(sys.maxunicode + 1):
        char = chr(code)
        category = unicodedata.category(char)
        if category in ("Cc", "Cf", "Zl", "Zp"):
            assert refused.match(char), f"U+{code:04X} ({category}) is not refused"
        elif refused.match(char):
            # Newer Unicode may name a character this Python does not know yet (Cn).
            assert category == "Cn", f"U+{code:04X} ({category}) is refused"


def test_the_openapi_document_says_the_same() -> None:
    import re

    schemas = openapi_document()["components"]["schemas"]
    id_pattern = schemas["InviteRequest"]["properties"]["user_id"]["pattern"]
    name_pattern = schemas["CreateRequest"]["properties"]["name"]["pattern"]
    assert schemas["CreateRequest"]["properties"]["user_ids"]["items"]["pattern"] == id_pattern
    # JSON Schema's (ECMA 262's) $ is the end of the string; Python's also matches before
    # a final newline, so it is spelled \Z here, as schemathesis does.
    id_pattern, name_pattern = (p.removesuffix("$") + r"\Z" for p in (id_pattern, name_pattern))
    for value in ("alice", "Zoë", "日本語", "a b", "🙂"):
        assert re.search(id_pattern, value) and re.search(name_pattern, value)
    for value, _ in LYING_IDS:
        assert not re.search(id_pattern, value)
        assert (unseen_character(value, "name", "name") is None) == bool(
            re.search(name_pattern, value)
        )
    # Fields that only name a member already in the room take any id (see below).
    assert "pattern" not in schemas["SendRequest"]["properties"]["user_id"]


def test_the_cli_sends_what_it_is_given() -> None:
    """Another server may take what chatctl's refuses: only a server checks (limits)."""
    create = ENDPOINTS["Create"]
    assert validate_request(create, {"user_ids": ["a,b"]}, fill_defaults=False)
    with pytest.raises(ValidationError, match="listed joined with it"):
        validate_request(create, {"user_ids": ["a,b"]}, Limits())


@pytest.mark.parametrize(("user_id", "named"), LYING_IDS, ids=[n for _, n in LYING_IDS])
def test_a_new_user_id_must_be_visible_text(client: httpx.Client, user_id: str, named: str) -> None:
    before = ok(client, "List", {})["rooms"]
    for body in ({"name": "r", "user_ids": [user_id]}, {"name": "r", "user_ids": ["ok", user_id]}):
        r = call(client, "Create", body)
        assert_error(r, 400, "chat.create")
        assert named in r.json()["detail"] and "user_ids" in r.json()["detail"]
    room_id = ok(client, "Create", {"name": "r", "user_ids": ["ok"]})["room"]["id"]
    r = call(client, "Invite", {"room_id": room_id, "user_id": user_id})
    assert_error(r, 400, "chat.invite")
    assert named in r.json()["detail"]
    # Joining a public room would make the user a member: refused alike.
    r = call(client, "Join", {"room_id": room_id, "user_id": user_id})
    assert_error(r, 400, "chat.join")
    assert named in r.json()["detail"]
    rooms = ok(client, "List", {})["rooms"]
    assert len(rooms) == len(before) + 1 and rooms[-1]["user_ids"] == ["ok"]


@pytest.mark.parametrize("name", ["ro\u200bom", "ro\u202eom", "two\nlines", "\ufeffbom"])
def test_a_room_name_must_be_visible_text(client: httpx.Client, name: str) -> None:
    r = call(client, "Create", {"name": name})
    assert_error(r, 400, "chat.create")
    assert "a room name must be visible characters only" in r.json()["detail"]
    # A comma is fine in a room name: names are not listed joined.
    ok(client, "Create", {"name": "one, two"})


async def _started(db: str) -> Any:
    """A store of its own on ``db`` (another process's, a replica's, or one from a release
    before these rules), started."""
    if is_postgres_url(db):
        from chatctl.server.store_pg import PostgresStore

        store: Any = PostgresStore(db)
    else:
        from chatctl.server.store_sqlite import SQLiteStore

        store = SQLiteStore(db)
    await store.start()
    return store


def _on_store(db: str, work: Callable[[Session], Awaitable[Any]]) -> Any:
    """``work`` done in a write transaction of a store of its own on ``db``."""

    async def run() -> Any:
        store = await _started(db)
        try:
            return await store.write(work)
        finally:
            await store.close()

    return asyncio.run(run())


def test_ids_already_in_a_room_keep_working(server: LiveServer, client: httpx.Client) -> None:
    """No migration rewrote them (that would change who they are, in tokens files and in
    every message): an id a room took before the rule can still send, read, join, leave
    and be kicked; only bringing it into another room is refused."""
    room_id = ok(client, "Create", {"name": "old", "user_ids": ["carol"]})["room"]["id"]
    old = ["al\u200dice", "a,b"]

    async def add_old_members(db: Session) -> None:
        room = await db.get_room("", room_id)
        assert room is not None
        for user_id in old:
            await db.add_member(room, user_id)

    _on_store(server.config.db, add_old_members)
    for user_id in old:
        sent = ok(client, "Send", {"room_id": room_id, "user_id": user_id, "text": "still here"})
        assert sent["message"]["user_id"] == user_id
        ok(client, "History", {"room_id": room_id, "user_id": user_id})
        with client.stream(
            "POST", "/v1/chat/Join", json={"room_id": room_id, "user_id": user_id}
        ) as r:
            assert r.status_code == 200
    ok(client, "Leave", {"room_id": room_id, "user_id": old[0]})
    ok(client, "Kick", {"room_id": room_id, "user_id": old[1]})
    assert ok(client, "List", {"user_id": "carol"})["rooms"][-1]["user_ids"] == ["carol"]
    r = call(client, "Invite", {"room_id": room_id, "user_id": old[0]})
    assert_error(r, 400, "chat.invite")
