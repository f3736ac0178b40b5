"""``GET /metrics`` (``serve --metrics``, issue 26): off by default; when on, what the
figures say after known traffic. A real Prometheus scraping it: tests/serve/test_prometheus.py."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from websockets.sync.client import connect

from chatctl.schema import Limits
from chatctl.server.domain import REFUSALS
from tests import postgres
from tests.helpers import wait_for
from tests.server.conftest import LiveServer

#: the edge's and the hub's figures, whatever the store: one backend (tests/postgres.py).
pytestmark = pytest.mark.one_backend


def samples(c: httpx.Client) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a scrape, by name and labels."""
    r = c.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain"), r.text
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(r.text)
        for s in family.samples
    }


@contextlib.contextmanager
def delivered(
    srv: LiveServer, c: httpx.Client, n: int, headers: dict[str, str] | None = None
) -> Iterator[str]:
    """A room of a and b, b's Join open on it and ``n`` of a's messages sent and received
    there: the room's id. The stream ends with the block."""
    created = c.post("/v1/chat/Create", json={"name": "m", "user_ids": ["a", "b"]})
    room_id: str = created.json()["room"]["id"]
    with connect(srv.ws_url + "/v1/chat/Join", additional_headers=headers) as ws:
        ws.send(json.dumps({"room_id": room_id, "user_id": "b"}))
        wait_for(lambda: srv.app.state.hub.streams == 1, 5, "the stream to open")
        for i in range(n):
            body = {"room_id": room_id, "user_id": "a", "text": f"m{i}"}
            assert c.post("/v1/chat/Send", json=body).status_code == 200
        for i in range(n):
            assert json.loads(ws.recv(timeout=5))["message"]["text"] == f"m{i}"
        yield room_id


def test_metrics_are_off_by_default(client: httpx.Client) -> None:
    r = client.get("/metrics")
    assert r.status_code == 404 and r.json()["detail"] == "No such API"


def test_metrics_count_what_the_server_did(live_server: Callable[..., LiveServer]) -> None:
    srv = live_server(
        tokens=frozenset({"tok"}),
        metrics=True,
        rate_limit=0.01,
        rate_burst=11,
        limits=Limits(max_bytes_per_tenant_day=100),
    )
    auth = {"Authorization": "Bearer tok"}
    with httpx.Client(base_url=srv.url, headers=auth, timeout=10) as c:
        with delivered(srv, c, 5, auth) as room_id:
            assert c.post("/v1/chat/Send", content=b"{").status_code == 400
            quota_before = REFUSALS["quota"]
            over = {"room_id": room_id, "user_id": "a", "text": "x" * 200}
            r = c.post("/v1/chat/Send", json=over)
            assert r.status_code == 403 and r.json()["detail"].startswith("quota:"), r.text
            refused_before = REFUSALS["rate_limit"]
            statuses = [c.post("/v1/chat/List", json={}).status_code for _ in range(12)]
            assert 429 in statuses
            open_now = samples(c)
        after = samples(c)

    def value(name: str, **labels: str) -> float:
        return open_now[(name, tuple(sorted(labels.items())))]

    assert value("chatctl_requests_total", endpoint="Send", status="200") == 5
    assert value("chatctl_requests_total", endpoint="Send", status="400") == 1
    assert value("chatctl_requests_total", endpoint="Create", status="200") == 1
    assert value("chatctl_requests_total", endpoint="Send", status="403") == 1
    assert value("chatctl_refusals_total", limit="quota") == quota_before + 1
    assert value("chatctl_request_duration_seconds_count", endpoint="Send") == 7
    assert value("chatctl_streams_open") == 1
    assert value("chatctl_messages_sent_total") == 5
    assert value("chatctl_messages_delivered_total") == 5
    assert value("chatctl_fanout_queued_frames") == 0
    refused = statuses.count(429)
    assert value("chatctl_refusals_total", limit="rate_limit") == refused_before + refused
    assert value("chatctl_requests_total", endpoint="List", status="429") == refused
    assert value("chatctl_db_call_duration_seconds_count", call="send") == 5
    assert value("chatctl_db_errors_total", call="send") == 0
    # The stream, once ended, is counted with its close code, and not timed.
    assert after[("chatctl_streams_open", ())] == 0
    ended = [k for k in after if k[0] == "chatctl_requests_total" and ("endpoint", "Join") in k[1]]
    assert (
        ended and ("chatctl_request_duration_seconds_count", (("endpoint", "Join"),)) not in after
    )
    # No room, user, tenant or token is named anywhere: the labels are bounded.
    text = "\n".join(f"{name}{labels}" for name, labels in after)
    for secret in (room_id, "tok", '"a"', "tenant"):
        assert secret not in text


def test_an_unknown_path_is_one_label(live_server: Callable[..., LiveServer]) -> None:
    srv = live_server(metrics=True)
    with httpx.Client(base_url=srv.url, timeout=10) as c:
        for n in range(20):
            c.get(f"/no/such/{n}")
            c.post(f"/v1/chat/Nope{n}")
        found = samples(c)
    assert found[("chatctl_requests_total", (("endpoint", "other"), ("status", "404")))] == 20
    assert found[("chatctl_requests_total", (("endpoint", "unknown"), ("status", "404")))] == 20


@pytest.mark.postgres
def test_a_postgres_replica_tells_its_listener_and_notification_lag(
    live_server: Callable[..., LiveServer],
) -> None:
    with postgres.fresh_database() as url:
        srv = live_server(db=url, metrics=True)
        with httpx.Client(base_url=srv.url, timeout=10) as c:
            with delivered(srv, c, 3):
                pass  # the scrape below comes once the stream has ended
            found = samples(c)
            srv.stop()
    assert found[("chatctl_pg_listening", ())] == 1
    lag_count = found[("chatctl_pg_notification_lag_seconds_count", ())]
    assert lag_count == 3
    # Heard on the same machine within a second, each.
    assert found[("chatctl_pg_notification_lag_seconds_bucket", (("le", "1.0"),))] == 3
