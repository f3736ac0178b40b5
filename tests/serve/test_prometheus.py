"""A real Prometheus (Debian's ``prometheus``) scraping ``chatctl serve --metrics`` under a
short load (issue 26): PromQL over its HTTP API gives back the request rate and the open
streams the load made.

Prometheus runs as a plain process of the test: a free loopback port, a config and a
storage directory of its own under the test's directory, scraping every 0.5 s. A missing
prometheus skips the test, saying why, and fails it under CI (``.ci/run`` installs it).
About 11 s (Prometheus scrapes first some 5 s after it starts).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from websockets.sync.client import connect

from tests.helpers import ServerProcess, free_port, wait_for

SCRAPE = 0.5
#: Sends per second the load makes, for how long, and how many streams it holds open.
RATE = 40
LOAD_SECONDS = 3.0
STREAMS = 3


def binary() -> str:
    found = shutil.which("prometheus")
    if found is None:
        reason = "prometheus is not installed (Debian package prometheus)"
        if os.environ.get("CI"):
            pytest.fail(f"{reason}, and CI must run the metrics test")
        pytest.skip(reason)
    return found


class Prometheus:
    """Prometheus scraping one target every ``SCRAPE`` seconds; ``query`` is PromQL."""

    def __init__(self, workdir: Path, target: str) -> None:
        self.dir = workdir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.target = target
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Prometheus:
        config = self.dir / "prometheus.yml"
        config.write_text(
            "global:\n"
            f"  scrape_interval: {int(SCRAPE * 1000)}ms\n"
            f"  scrape_timeout: {int(SCRAPE * 1000)}ms\n"
            "scrape_configs:\n"
            "  - job_name: chatctl\n"
            "    static_configs:\n"
            f"      - targets: ['{self.target}']\n"
        )
        args = [
            binary(),
            f"--config.file={config}",
            f"--storage.tsdb.path={self.dir / 'data'}",
            f"--web.listen-address=127.0.0.1:{self.port}",
            "--log.level=warn",
        ]
        with open(self.dir / "prometheus.log", "ab") as out:
            self.proc = subprocess.Popen(args, stdout=out, stderr=out, start_new_session=True)
        wait_for(self._ready, 30, "Prometheus to be ready")
        return self

    def _ready(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            log = (self.dir / "prometheus.log").read_text()[-2000:]
            raise AssertionError(f"prometheus exited {self.proc.returncode}: {log}")
        try:
            return httpx.get(f"{self.url}/-/ready", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    def query(self, promql: str, at: float | None = None) -> float | None:
        """The one value of an instant query (at ``at``, epoch seconds), or None."""
        params = {"query": promql}
        if at is not None:
            params["time"] = f"{at:.3f}"
        r = httpx.get(f"{self.url}/api/v1/query", params=params, timeout=10)
        assert r.status_code == 200, r.text
        result = r.json()["data"]["result"]
        assert len(result) <= 1, result
        return float(result[0]["value"][1]) if result else None


@pytest.fixture
def served(tmp_path: Path) -> Iterator[ServerProcess]:
    with ServerProcess(tmp_path, tcp=True, extra=["--metrics"]) as server:
        yield server


def test_prometheus_scrapes_the_request_rate_and_open_streams(
    served: ServerProcess, tmp_path: Path
) -> None:
    binary()
    with Prometheus(tmp_path, f"127.0.0.1:{served.port}") as prom, served.http() as c:
        wait_for(lambda: prom.query('up{job="chatctl"}') == 1, 15, "the first scrape")
        room = c.post("/v1/chat/Create", json={"name": "p", "user_ids": ["a", "b"]})
        room_id = room.json()["room"]["id"]
        join = f"ws://127.0.0.1:{served.port}/v1/chat/Join"
        with contextlib.ExitStack() as opened:
            streams = [opened.enter_context(connect(join)) for _ in range(STREAMS)]
            for ws in streams:
                ws.send(json.dumps({"room_id": room_id, "user_id": "b"}))
            open_streams = f"chatctl_streams_open {STREAMS}.0"
            wait_for(lambda: open_streams in c.get("/metrics").text, 10, "the streams to open")
            acked: list[float] = []
            started = time.time()
            for n in range(int(RATE * LOAD_SECONDS)):
                # Paced: each Send at its slot (the rate is what the load is).
                time.sleep(max(0.0, started + n / RATE - time.time()))
                body = {"room_id": room_id, "user_id": "a", "text": f"m{n}"}
                assert c.post("/v1/chat/Send", json=body).status_code == 200
                acked.append(time.time())
            ended = time.time()
            total = len(acked)
            # Every Send scraped: the counter the load made, as Prometheus stored it.
            sends = 'chatctl_requests_total{endpoint="Send",status="200"}'
            wait_for(lambda: prom.query(sends) == total, 10, f"{total} Sends in Prometheus")
            for ws in streams:  # each stream got every message
                texts = [json.loads(ws.recv(timeout=10))["message"]["text"] for _ in acked]
                assert texts == [f"m{n}" for n in range(total)]
        # The rate over the load's last 2 s, as Prometheus computes it, against the
        # rate the client saw in the same window.
        at, window = ended - 0.5, 2.0
        made = sum(1 for t in acked if at - window < t <= at) / window
        rate = prom.query(f"rate({sends}[{window:g}s])", at=at)
        assert rate is not None and 0.6 * made <= rate <= 1.6 * made, (rate, made)
        # The streams the load held open, then none once they closed.
        assert prom.query("chatctl_streams_open", at=at) == STREAMS
        wait_for(lambda: prom.query("chatctl_streams_open") == 0, 10, "no stream open")
        assert prom.query("chatctl_messages_sent_total") == total
        delivered = prom.query("chatctl_messages_delivered_total")
        assert delivered == total * STREAMS
