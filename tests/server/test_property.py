"""Whatever a client sends, the server answers without a 5xx, and every error is m3o's shape."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chatctl.schema import ENDPOINTS
from tests.server.conftest import LiveServer

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False)
    | st.text(max_size=30),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)

field_names = sorted({f.name for e in ENDPOINTS.values() for f in e.request})
bodies = st.dictionaries(
    st.sampled_from(field_names) | st.text(max_size=8), json_values, max_size=6
)
endpoint_names = st.sampled_from(sorted(ENDPOINTS)).flatmap(
    lambda name: st.sampled_from([name, name.lower(), name.upper()])
)


_clients: dict[str, httpx.Client] = {}


def client_for(srv: LiveServer) -> httpx.Client:
    # One client for every example: making one costs more than the call it makes.
    if srv.url not in _clients:
        _clients[srv.url] = httpx.Client(base_url=srv.url, timeout=10)
    return _clients[srv.url]


@pytest.fixture(scope="module", autouse=True)
def _close_clients() -> Iterator[None]:
    yield
    for c in _clients.values():
        c.close()
    _clients.clear()


def check(r: httpx.Response) -> None:
    assert r.status_code < 500, r.text
    if r.status_code != 200:
        body = r.json()
        assert list(body) == ["id", "code", "detail", "status"], body
        assert body["code"] == r.status_code
        assert isinstance(body["detail"], str) and body["detail"]
        assert body["status"] == httpx.codes.get_reason_phrase(r.status_code)


def post(client: httpx.Client, endpoint: str, content: bytes) -> None:
    # stream: a Join that is admitted would never end; its status is all we need.
    with client.stream("POST", f"/v1/chat/{endpoint}", content=content) as r:
        if r.status_code == 200 and endpoint.lower() == "join":
            return
        r.read()
        check(r)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(endpoint=endpoint_names, body=bodies | json_values)
def test_random_json_bodies(shared_server: LiveServer, endpoint: str, body: Any) -> None:
    post(client_for(shared_server), endpoint, json.dumps(body).encode())


@settings(max_examples=100, deadline=None)
@given(endpoint=endpoint_names, content=st.binary(max_size=64))
def test_random_bytes(shared_server: LiveServer, endpoint: str, content: bytes) -> None:
    post(client_for(shared_server), endpoint, content)


@settings(max_examples=100, deadline=None)
@given(
    room=st.sampled_from(["real", "other"]),
    endpoint=st.sampled_from(["Send", "Invite", "Kick", "Leave", "History", "Delete"]),
    body=bodies,
)
def test_random_bodies_on_a_real_room(
    shared_server: LiveServer, room: str, endpoint: str, body: dict[str, Any]
) -> None:
    client = client_for(shared_server)
    created = client.post("/v1/chat/Create", json={"user_ids": ["u"]}).json()["room"]
    if room == "real":
        body = {**body, "room_id": created["id"]}
    post(client, endpoint, json.dumps(body).encode())
