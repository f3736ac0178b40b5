"""Crash drill: kill -9 the server at random moments under a steady send load.

Load: one ``chatctl send ROOM --lines`` batch (a subprocess, its lines fed from a file
through a pipe, at most WINDOW lines ahead of its acknowledgements) and raw HTTP writer
threads that retry with the same Idempotency-Key. A kill comes after a random number of
acknowledgements since the last restart; the server restarts on the same database.

Afterwards: every acknowledged message is in History, no id and no text twice; the CLI
batch rode through every restart and sent each line exactly once, in order, exit 0.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO

import pytest

from tests.faults.drill import Tally, Writers, create_room, history, report
from tests.helpers import ServerProcess, cli_env

CHATCTL = (sys.executable, "-m", "chatctl")
#: lines the feeder may write ahead of the CLI's acknowledgements.
WINDOW = 16


class CliBatch:
    """``chatctl send ROOM --lines`` with stdin fed from ``lines_file`` and stdout read."""

    def __init__(self, server: ServerProcess, room_id: str, lines_file: Path, tally: Tally):
        self.tally = tally
        self.lines_file = lines_file
        self.proc = subprocess.Popen(
            [*CHATCTL, "send", room_id, "--lines", "-u", "cli", "-o", "jsonl", "--verbose"],
            env=cli_env(server),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.acked: list[dict[str, object]] = []
        self.fed = 0
        self.stop_feeding = threading.Event()
        self.changed = threading.Condition()
        self.errors: list[BaseException] = []
        self.stderr = ""
        self.threads = [
            threading.Thread(target=self._feed, daemon=True),
            threading.Thread(target=self._read, daemon=True),
            threading.Thread(target=self._read_stderr, daemon=True),
        ]
        for t in self.threads:
            t.start()

    def _feed(self) -> None:
        assert self.proc.stdin is not None
        try:
            with open(self.lines_file) as lines:
                for line in lines:
                    with self.changed:
                        # Flow control, not a sleep: wait for the CLI to catch up.
                        self.changed.wait_for(
                            lambda: (
                                self.stop_feeding.is_set() or self.fed - len(self.acked) < WINDOW
                            ),
                            timeout=60,
                        )
                        if self.stop_feeding.is_set():
                            break
                    self.proc.stdin.write(line)
                    self.proc.stdin.flush()
                    self.fed += 1
        except BaseException as exc:
            self.errors.append(exc)
        finally:
            # The CLI may have exited (the drill failed): its stdin is then a broken pipe.
            with contextlib.suppress(BrokenPipeError):
                self.proc.stdin.close()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            obj = json.loads(line)
            message = obj.get("message", obj)
            with self.changed:
                self.acked.append(message)
                self.changed.notify_all()
            self.tally.add(str(message["id"]), str(message["text"]))

    def _read_stderr(self) -> None:
        stream: IO[str] | None = self.proc.stderr
        assert stream is not None
        self.stderr = stream.read()

    def wait_acked(self, count: int, timeout: float, what: str) -> None:
        with self.changed:
            assert self.changed.wait_for(lambda: len(self.acked) >= count, timeout), (
                f"{what}: {self.stderr or 'no stderr yet'}"
            )

    def finish(self, timeout: float) -> int:
        code = self._end(timeout)
        assert not self.errors, self.errors
        return code

    def kill(self) -> None:
        """On a failed drill: end the CLI and close its pipes, asserting nothing."""
        self._end(10, kill=True)

    def _end(self, timeout: float, *, kill: bool = False) -> int:
        with self.changed:
            self.stop_feeding.set()
            self.changed.notify_all()
        if kill and self.proc.poll() is None:
            self.proc.kill()
        code = self.proc.wait(timeout)
        for t in self.threads:
            t.join(10)
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()
        return code


def crash_drill(tmp_path: Path, *, kills: int, writers: int, seed: int) -> None:
    rng = random.Random(seed)
    lines_file = tmp_path / "lines.txt"
    # Far more lines than any run sends: the feeder stops once the kills are done.
    lines_file.write_text("".join(f"cli-line-{n:06d}\n" for n in range(200_000)))
    users = ["cli"] + [f"http-{w}" for w in range(writers)]
    tally = Tally()
    downtimes: list[float] = []
    started = time.monotonic()
    # TCP: httpx leaks the socket of a refused Unix-socket connect (see tests.helpers).
    with ServerProcess(tmp_path, tcp=True) as server:
        room_id = create_room(server, "crash-drill", users)
        batch = CliBatch(server, room_id, lines_file, tally)
        code: int | None = None
        try:
            # The drill is about riding through restarts: a CLI that has never reached its
            # server gives up fast by design (a typo'd --url must not hang), so the first
            # kill waits until the batch has been acknowledged once.
            batch.wait_acked(1, 60, "the CLI batch never reached the server")
            with Writers(server, room_id, users[1:], tally, timeout=240) as load:
                for kill in range(kills):
                    # A random moment: after 20..200 more acknowledgements.
                    target = len(tally) + rng.randint(20, 200)
                    tally.wait_for_count(target, 60, f"load before kill {kill + 1}")
                    assert server.proc is not None
                    t0 = time.monotonic()
                    server.kill9()
                    server.start()
                    downtimes.append(time.monotonic() - t0)
                # The CLI itself must be acknowledged again after the last restart.
                batch.wait_acked(len(batch.acked) + 50, 60, "the CLI batch did not resume")
            assert not load.errors, load.errors
            code = batch.finish(timeout=60)
        finally:
            if code is None:
                batch.kill()
        assert code == 0, f"chatctl send --lines exited {code}: {batch.stderr}"

        stored = history(server, room_id)

    ids = [m["id"] for m in stored]
    texts = [m["text"] for m in stored]
    assert len(set(ids)) == len(ids), "a message id is stored twice"
    assert len(set(texts)) == len(texts), "a text is stored twice (a send was doubled)"
    by_id = {m["id"]: m["text"] for m in stored}
    lost = {i: t for i, t in tally.acked.items() if by_id.get(i) != t}
    assert not lost, f"{len(lost)} acknowledged messages missing from History: {lost}"

    cli_sent = lines_file.read_text().splitlines()[: batch.fed]
    cli_acked = [str(m["text"]) for m in batch.acked]
    assert cli_acked == cli_sent, "the CLI did not send every line exactly once, in order"
    assert [t for t in texts if t.startswith("cli-")] == cli_sent

    # --verbose logs one line per attempt: "POST <url>/v1/chat/Send <status> <ms>".
    attempts = [line for line in batch.stderr.splitlines() if line.startswith("POST ")]
    cli_retries = sum(1 for line in attempts if line.split()[2] != "200")
    assert cli_retries, "the CLI batch never met a restart: the drill tested nothing"
    report(
        "crash",
        seed=seed,
        kills=kills,
        acknowledged=len(tally.acked),
        stored=len(stored),
        unacknowledged_stored=len(stored) - len(tally.acked),
        lost=0,
        doubled=0,
        cli_lines=len(cli_sent),
        cli_exit=code,
        cli_failed_attempts=cli_retries,
        max_restart_s=f"{max(downtimes):.2f}",
        total_s=f"{time.monotonic() - started:.1f}",
    )


def _seed() -> int:
    # Not CHATCTL_*: the autouse fixture clears those before each test.
    return int(os.environ.get("FAULT_DRILL_SEED") or random.SystemRandom().randrange(1 << 30))


def test_kill9_under_load_loses_and_doubles_nothing(tmp_path: Path) -> None:
    crash_drill(tmp_path, kills=3, writers=2, seed=_seed())


@pytest.mark.soak
def test_kill9_under_load_soak(tmp_path: Path) -> None:
    crash_drill(tmp_path, kills=10, writers=4, seed=_seed())
