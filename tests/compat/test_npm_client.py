"""m3o's official JavaScript client (npm ``m3o`` 1.0.1783, ``m3o/chat``) against
``chatctl serve``, used both ways: with the group names its types declare and with the
seed's room names. The same driver is first run against the m3o stand-ins, which proves the
harness: it passes where m3o's own server would, and reports the failures a mismatched
edition gives.

The driver (``tests/compat/npm/drive_m3o_chat.js``) calls all nine endpoints and reads the
Join stream, and prints what happened; the judging is here.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.compat.conftest import NpmClient, ServeFactory
from tests.compat.m3o_standin import RunningStandIn

FIELDS = {"id", "name", "description", "created_at", "user_ids", "private"}
MESSAGE_FIELDS = {"id", "client", "user_id", "sent_at", "subject", "text"}


def steps(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {s["step"]: s for s in report["steps"]}


def api_error(step: dict[str, Any]) -> tuple[int, str]:
    assert not step["ok"], f"{step['step']} should have failed: {step}"
    assert step["error"]["kind"] == "api", step
    body = step["error"]["body"]
    return body["code"], body["detail"]


def assert_works_end_to_end(report: dict[str, Any], *, not_found: int) -> None:
    """What an app written to the names it used sees when the server speaks them."""
    noun = report["names"]
    nid = f"{noun}_id"
    s = steps(report)
    assert report["uncaught"] == []
    assert report["answered_as"] == noun, f"Create answered {report['answered_as']!r}, not {noun!r}"
    gid = report["id"]
    for name in ("create", "invite", "kick", "leave", "delete"):
        assert s[name]["ok"], s[name]
        group = s[name]["response"][noun]
        assert set(group) == FIELDS and group["id"] == gid, (name, group)
    assert s["invite"]["response"][noun]["user_ids"] == ["alice"]
    for name in ("send_own", "send", "send_second"):
        message = s[name]["response"]["message"]
        assert set(message) == MESSAGE_FIELDS | {nid} and message[nid] == gid, (name, message)
    assert s["send"]["response"]["message"]["client"] == "node"
    # The stream: live, the other user's messages only, in order, in this edition's names.
    stream = report["stream"]
    assert stream["opened"] and stream["joined_visible"], stream
    messages = [f["message"] for f in stream["frames"] if isinstance(f, dict) and "message" in f]
    assert [m["text"] for m in messages] == ["hello from npm", "second"], stream
    assert all(set(m) == MESSAGE_FIELDS | {nid} and m[nid] == gid for m in messages)
    history = s["history"]["response"]["messages"]
    assert sorted(m["text"] for m in history) == ["hello from npm", "own message", "second"]
    assert all(m[nid] == gid for m in history)
    for name in ("list", "list_user"):
        assert gid in [g["id"] for g in s[name]["response"][f"{noun}s"]], s[name]
    assert "alice" not in s["kick"]["response"][noun]["user_ids"]
    assert "bob" not in s["leave"]["response"][noun]["user_ids"]
    assert api_error(s["send_kicked"]) == (400, f"user is not in the {noun}")
    assert api_error(s["invite_missing_user"]) == (400, "missing user id")
    assert api_error(s["history_unknown"]) == (not_found, f"{noun} not found")
    assert api_error(s["history_deleted"]) == (not_found, f"{noun} not found")


def assert_refused_as_other_edition(report: dict[str, Any], server_noun: str) -> None:
    """An app of one edition against a server of the other: Create answers in the server's
    names (so ``rsp.group`` or ``rsp.room`` is undefined), and every call naming the
    room/group is refused as missing its id (Join: as an unknown field)."""
    s = steps(report)
    assert s["create"]["ok"] and report["answered_as"] == server_noun
    assert api_error(s["invite"]) == (400, f"missing {server_noun} id")
    assert api_error(s["history"]) == (400, f"missing {server_noun} id")
    stream = report["stream"]
    assert not stream["joined_visible"]
    # Join's request is decoded strictly, so the other edition's id is an unknown field;
    # the error arrives as a frame, which the client hands to onMessage as if a message.
    (frame,) = stream["frames"]
    assert frame["code"] == 500 and f'unknown field "{report["names"]}_id"' in frame["detail"]


@pytest.mark.parametrize("names", ["group", "room"])
def test_npm_client_against_m3o_standins(
    m3o_npm: NpmClient, m3o_server: RunningStandIn, names: str
) -> None:
    report = m3o_npm.drive(m3o_server.url, m3o_server.token, names)
    assert report["packages"]["m3o"] == "1.0.1783"
    if names == m3o_server.edition:
        assert_works_end_to_end(report, not_found=400)
        # What went over the wire is the package's own doing: the token as a bearer
        # header on every call and on the upgrade, the request as the first frame.
        assert all(
            r.headers.get("authorization") == f"Bearer {m3o_server.token}"
            for r in m3o_server.requests
        )
        (join,) = m3o_server.sent("Join")
        assert join == {f"{names}_id": report["id"], "user_id": "bob"}
    else:
        assert_refused_as_other_edition(report, m3o_server.edition)


def test_npm_client_room_names_against_chatctl_serve(
    m3o_npm: NpmClient, chatctl_serve: ServeFactory
) -> None:
    srv = chatctl_serve()
    report = m3o_npm.drive(srv.url, srv.tokens[0], "room")
    assert_works_end_to_end(report, not_found=404)


def test_npm_client_group_names_against_chatctl_serve(
    m3o_npm: NpmClient, chatctl_serve: ServeFactory
) -> None:
    srv = chatctl_serve()
    report = m3o_npm.drive(srv.url, srv.tokens[0], "group")
    assert_works_end_to_end(report, not_found=404)
