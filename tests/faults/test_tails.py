"""Restarts during tails: many ``chatctl join`` processes ride through server restarts.

Each tail starts ``--since`` a seed message, so however late it connects it owes exactly
the messages sent after the seed; ``--count`` makes it exit 0 once it has printed them.
A writer sends while the server restarts (graceful SIGTERM and kill -9, alternately).
Each tail's output (JSONL through a pipe) must be every message, in order, once.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.faults.drill import create_room, history, report, send_until_acked
from tests.helpers import ServerProcess, cli_env, wait_for

CHATCTL = (sys.executable, "-m", "chatctl")


class Tail:
    def __init__(self, server: ServerProcess, room_id: str, user: str, since: str, count: int):
        self.proc = subprocess.Popen(
            [*CHATCTL, "join", room_id, "-u", user, "--since", since, "--count", str(count), "-v"],
            env=cli_env(server),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: list[str] = []
        self.stderr = ""
        #: set once the stream is open (--verbose logs "JOIN <url> 101 <ms>").
        self.connected = threading.Event()
        self.readers = [
            threading.Thread(target=self._read, daemon=True),
            threading.Thread(target=self._read_stderr, daemon=True),
        ]
        for t in self.readers:
            t.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)

    def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.stderr += line
            if line.startswith("JOIN ") and line.split()[2] == "101":
                self.connected.set()

    def finish(self, timeout: float) -> int:
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait(10)
        for t in self.readers:
            t.join(10)
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()
        return code


def tails_drill(tmp_path: Path, *, tails: int, restarts: int, messages: int) -> None:
    started = time.monotonic()
    with ServerProcess(tmp_path, tcp=True) as server:
        room_id = create_room(server, "tails-drill", ["writer"])
        http = [server.http()]
        try:
            deadline = time.monotonic() + 180

            def send(text: str) -> dict[str, object]:
                body = {"room_id": room_id, "user_id": "writer", "text": text}
                message = send_until_acked(server, http, body, deadline=deadline)
                assert message is not None
                return message

            seed = send("seed")
            procs = [
                Tail(server, room_id, f"tail-{n}", str(seed["id"]), messages) for n in range(tails)
            ]
            try:
                # A join started while the server is down exits 3 at once (by design: a
                # wrong --url must not hang), so restarts begin once every tail is in.
                for n, tail in enumerate(procs):
                    if not tail.connected.wait(60):
                        raise AssertionError(f"tail-{n} did not connect: {tail.stderr}")
                texts = [f"tail-drill-{n:05d}" for n in range(messages)]
                # Restart after every `step` messages; the last messages follow the last
                # restart, so each tail must have resumed to see them.
                step = messages // (restarts + 1)
                restart_times: list[float] = []
                for n, text in enumerate(texts):
                    if n and n % step == 0 and len(restart_times) < restarts:
                        # Restart only once every tail is live and caught up: a tail
                        # still reconnecting from the last restart would miss this one.
                        wait_for(
                            lambda n=n: all(len(t.lines) >= n for t in procs),
                            60,
                            f"every tail to print {n} messages",
                        )
                        t0 = time.monotonic()
                        if len(restart_times) % 2:
                            server.kill9()
                            server.start()
                        else:
                            server.restart()
                        restart_times.append(time.monotonic() - t0)
                    send(text)
                codes = [tail.finish(timeout=120) for tail in procs]
            finally:
                for tail in procs:
                    if tail.proc.poll() is None:
                        tail.finish(timeout=0.1)
            stored = history(server, room_id)
        finally:
            http[0].close()

    assert [m["text"] for m in stored] == ["seed", *texts]
    expected = [(m["id"], m["text"]) for m in stored[1:]]
    for n, (tail, code) in enumerate(zip(procs, codes, strict=True)):
        assert code == 0, f"tail-{n} exited {code}: {tail.stderr}"
        got = [json.loads(line) for line in tail.lines]
        assert [(m["id"], m["text"]) for m in got] == expected, (
            f"tail-{n} printed {len(got)} messages, not the {len(expected)} sent, "
            f"in order, once: {tail.stderr}"
        )
    # Every tail was live at every restart, so each resumed once per restart.
    resumed = [tail.stderr.count("chatctl: reconnected") for tail in procs]
    assert resumed == [restarts] * tails, resumed
    report(
        "tails",
        tails=tails,
        restarts=restarts,
        messages=messages,
        complete_outputs=f"{tails}/{tails}",
        reconnects=sum(resumed),
        max_restart_s=f"{max(restart_times):.2f}",
        total_s=f"{time.monotonic() - started:.1f}",
    )


def test_tails_ride_through_restarts(tmp_path: Path) -> None:
    tails_drill(tmp_path, tails=5, restarts=2, messages=120)


@pytest.mark.soak
def test_tails_ride_through_restarts_soak(tmp_path: Path) -> None:
    tails_drill(tmp_path, tails=20, restarts=5, messages=600)
