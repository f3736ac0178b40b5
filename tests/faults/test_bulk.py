"""Bulk drills: a long ``chatctl send --lines`` in bulk Sends, with kill -9 of the server at
random points (the CLI's own retries resend the unanswered rest with the same keys), and
with the CLI itself killed and run again on the same input with the same --batch-key.

Afterwards, every time: History holds every line exactly once, in input order, and the
ids the CLI printed (the last run's, for a rerun) are exactly the stored messages'.

The default run sends 20,000 lines through 2 server kills and one client kill; the soak
variants (``pytest -m soak tests/faults``) 100,000 lines through 6 kills.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO

import pytest

from tests.faults.drill import create_room, report
from tests.helpers import ServerProcess, cli_env

CHATCTL = (sys.executable, "-m", "chatctl")


class Batch:
    """``chatctl send ROOM --lines`` reading ``lines_file``, its printed ids collected as
    they come."""

    def __init__(self, server: ServerProcess, room: str, lines_file: Path, *args: str) -> None:
        with open(lines_file) as stdin:
            self.proc = subprocess.Popen(
                [*CHATCTL, "send", room, "--lines", "-u", "cli", "-o", "id", "--verbose", *args],
                env=cli_env(server),
                stdin=stdin,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        self.ids: list[str] = []
        self.stderr = ""
        self.changed = threading.Condition()
        self.threads = [
            threading.Thread(target=self._read, daemon=True),
            threading.Thread(target=self._read_stderr, daemon=True),
        ]
        for t in self.threads:
            t.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self.changed:
                self.ids.append(line.strip())
                self.changed.notify_all()
        with self.changed:
            self.changed.notify_all()

    def _read_stderr(self) -> None:
        stream: IO[str] | None = self.proc.stderr
        assert stream is not None
        self.stderr = stream.read()

    def wait_for(self, count: int, timeout: float, what: str) -> None:
        with self.changed:
            ok = self.changed.wait_for(
                lambda: len(self.ids) >= count or self.proc.poll() is not None, timeout
            )
        assert ok and len(self.ids) >= count, f"{what}: {len(self.ids)} ids; {self.stderr[-2000:]}"

    def finish(self, timeout: float) -> int:
        try:
            code = self.proc.wait(timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            for t in self.threads:
                t.join(10)
            for stream in (self.proc.stdout, self.proc.stderr):
                if stream is not None:
                    stream.close()
        return code

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.finish(30)


def stored(server: ServerProcess, room: str) -> list[tuple[str, str]]:
    """(id, text) of every message of the room, oldest first, a page at a time."""
    out: list[tuple[str, str]] = []
    after = "00000000-0000-0000-0000-000000000000"
    with server.http() as c:
        while True:
            r = c.post("/v1/chat/History", json={"room_id": room, "after": after, "limit": 1000})
            assert r.status_code == 200, r.text
            page = r.json()["messages"]
            if not page:
                return out
            out += [(m["id"], m["text"]) for m in page]
            after = page[-1]["id"]


def lines_file(tmp_path: Path, count: int) -> tuple[Path, list[str]]:
    texts = [f"bulk-line-{n:06d}" for n in range(1, count + 1)]
    path = tmp_path / "lines.txt"
    path.write_text("".join(t + "\n" for t in texts))
    return path, texts


def server_kill_drill(tmp_path: Path, *, count: int, kills: int, seed: int) -> None:
    rng = random.Random(seed)
    path, texts = lines_file(tmp_path, count)
    started = time.monotonic()
    downtimes = []
    with ServerProcess(tmp_path, tcp=True) as server:
        room = create_room(server, "bulk-drill", ["cli"])
        batch = Batch(server, room, path)
        try:
            # Random points, spread over the batch (a CLI that never reached its server
            # gives up fast by design, so the first comes after an answer).
            points = sorted(rng.sample(range(1, count * 3 // 4), kills))
            for point in points:
                batch.wait_for(point, 120, f"the batch before a kill at line {point}")
                t0 = time.monotonic()
                server.kill9()
                server.start()
                downtimes.append(time.monotonic() - t0)
            code = batch.finish(timeout=300)
        finally:
            if batch.proc.poll() is None:
                batch.kill()
        assert code == 0, f"chatctl send --lines exited {code}: {batch.stderr[-3000:]}"
        messages = stored(server, room)
    assert [t for _, t in messages] == texts, "not every line once, in order"
    assert [i for i, _ in messages] == batch.ids, "the ids printed are not the ids stored"
    posts = [line for line in batch.stderr.splitlines() if line.startswith("POST ")]
    bulk = [line for line in posts if line.endswith(" lines)")]
    cut = [line for line in bulk if line.split()[2] != "200" or _cut(line)]
    assert cut, "no bulk Send was ever cut short by a kill: the drill tested nothing"
    report(
        "bulk-server-kill",
        seed=seed,
        lines=count,
        kills=kills,
        requests=len(posts),
        bulk_requests=len(bulk),
        cut_or_failed=len(cut),
        max_restart_s=f"{max(downtimes):.2f}",
        total_s=f"{time.monotonic() - started:.1f}",
    )


def _cut(line: str) -> bool:
    """A --verbose line of a bulk Send answered for fewer lines than it carried."""
    answered, _, rest = line.rpartition("(")[2].partition(" of ")
    return answered != rest.split()[0]


def client_kill_drill(tmp_path: Path, *, count: int, kills: int, seed: int) -> None:
    rng = random.Random(seed)
    path, texts = lines_file(tmp_path, count)
    key = f"drill-{seed}"
    with ServerProcess(tmp_path, tcp=True) as server:
        room = create_room(server, "bulk-client-drill", ["cli"])
        for point in sorted(rng.sample(range(1, count * 3 // 4), kills)):
            batch = Batch(server, room, path, "--batch-key", key)
            batch.wait_for(point, 120, f"the batch before the client's kill at {point}")
            batch.kill()
            partial = stored(server, room)
            # What the killed runs stored is a prefix of the input, each line once.
            assert [t for _, t in partial] == texts[: len(partial)]
        batch = Batch(server, room, path, "--batch-key", key)
        code = batch.finish(timeout=300)
        assert code == 0, batch.stderr[-3000:]
        messages = stored(server, room)
    assert [t for _, t in messages] == texts, "not every line once, in order"
    assert batch.ids == [i for i, _ in messages], "the rerun did not print every id stored"
    report("bulk-client-kill", seed=seed, lines=count, kills=kills)


def _seed() -> int:
    return int(os.environ.get("FAULT_DRILL_SEED") or random.SystemRandom().randrange(1 << 30))


def test_kill9_of_the_server_during_a_bulk_batch(tmp_path: Path) -> None:
    server_kill_drill(tmp_path, count=20_000, kills=2, seed=_seed())


def test_a_killed_batch_run_again_with_its_key_stores_each_line_once(tmp_path: Path) -> None:
    client_kill_drill(tmp_path, count=20_000, kills=1, seed=_seed())


@pytest.mark.soak
def test_kill9_of_the_server_during_a_bulk_batch_soak(tmp_path: Path) -> None:
    server_kill_drill(tmp_path, count=100_000, kills=6, seed=_seed())


@pytest.mark.soak
def test_a_killed_batch_run_again_with_its_key_soak(tmp_path: Path) -> None:
    client_kill_drill(tmp_path, count=100_000, kills=3, seed=_seed())
