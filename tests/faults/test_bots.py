"""A bot killed with ``kill -9`` and started again: ``chatctl join ROOM --exec ./bot
--cursor FILE`` over a stream of messages, the bot's ``chatctl`` killed at random moments
while CMD runs, then started again with the same command line. Every message is handled,
in order, none skipped; the one in flight at each kill at most twice (its CMD, left
running, finishes; the restarted tail runs it again: at least once).

The default run: 60 messages, 3 kills (a few seconds); the soak run (``pytest -m soak
tests/faults``): 500 messages, 3 kills. ``FAULT_DRILL_SEED`` replays the kill moments.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from tests.faults.drill import report
from tests.helpers import ServerProcess, chatctl, cli_env, wait_for

BIN = Path(sys.executable).parent
CHATCTL = (sys.executable, "-m", "chatctl")


def api(server: ServerProcess, endpoint: str, body: dict[str, Any]) -> Any:
    with server.http() as client:
        r = client.post(f"/v1/chat/{endpoint}", json=body)
    r.raise_for_status()
    return r.json()


def script(path: Path, text: str) -> str:
    path.write_text("#!/bin/sh\n" + text)
    path.chmod(0o755)
    return f"./{path.name}"


def drill(server: ServerProcess, tmp_path: Path, total: int, kills: int, seed: int) -> None:
    """``total`` messages sent while the bot runs, ``kills`` of them making CMD sleep (the
    first message, so one kill comes before any message was handled, and others chosen
    at random); the bot's chatctl is killed with SIGKILL while CMD runs for each, then
    started again with the same line, as a user would type it."""
    env = cli_env(server, PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}")
    room = api(server, "Create", {"name": "drill", "user_ids": ["sender", "bot"]})["room"]["id"]
    report("bots", messages=total, kills=kills, seed=seed)  # shown if it fails
    rng = random.Random(seed)
    slow = {1, *rng.sample(range(2, total + 1), kills - 1)}
    texts = [f"m{i}{' slow' if i in slow else ''}" for i in range(1, total + 1)]
    log = tmp_path / "log"
    bot = script(
        tmp_path / "bot",
        'echo "start $CHATCTL_TEXT" >> log\n'
        'case "$CHATCTL_TEXT" in *slow) sleep 0.2;; esac\n'
        'echo "done $CHATCTL_TEXT" >> log\n',
    )
    line = [*CHATCTL, "join", "drill", "--user", "bot", "--exec", bot, "--cursor", "bot.cursor"]

    def send(lines: list[str]) -> None:
        # One batch, in bulk requests: as fast as the server stores them.
        done = chatctl("send", room, "--lines", "--user", "sender", "-o", "id", env=env,
                       input="".join(t + "\n" for t in lines))  # fmt: skip
        assert done.returncode == 0, done.stderr

    def logged() -> list[str]:
        return log.read_text().splitlines() if log.exists() else []

    def run() -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            line, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )

    proc = run()
    # The stream is open once the start is kept in the cursor file: send from then on.
    wait_for(lambda: (tmp_path / "bot.cursor").exists() or proc.poll(), 20, "the bot's start")
    rest = threading.Thread(target=send, args=(texts,))
    rest.start()
    try:
        for text in sorted(slow, key=lambda i: i):
            slow_text = f"m{text} slow"
            wait_for(lambda t=slow_text: f"start {t}" in logged(), 60, f"CMD to start {slow_text}")
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
            proc = run()
        rest.join(60)
        wait_for(lambda: {t for t in texts} <= {x[5:] for x in logged() if x.startswith("done ")},
                 60, "every message to be handled")  # fmt: skip
    finally:
        proc.kill()
        proc.wait(10)
        rest.join(60)
    # Wait for the killed runs' CMDs (left running) to end too, then judge.
    wait_for(lambda: all(f"done m{i} slow" in logged() for i in slow), 10, "orphans")
    done = [x[5:] for x in logged() if x.startswith("done ")]
    counts = Counter(done)
    assert set(counts) == set(texts), "a message was skipped"
    twice = sorted(t for t, n in counts.items() if n > 1)
    assert all(counts[t] <= 2 for t in twice), counts.most_common(3)
    assert len(twice) <= kills and set(twice) <= {f"m{i} slow" for i in slow}, twice
    started = list(dict.fromkeys(x[6:] for x in logged() if x.startswith("start ")))
    assert started == texts, "a message was handled out of order"
    report("bots", handled=len(done), twice=len(twice))


def _seed() -> int:
    return int(os.environ.get("FAULT_DRILL_SEED") or random.SystemRandom().randrange(1 << 30))


def test_bot_drill_kill_9_while_cmd_runs(tmp_path: Path) -> None:
    with ServerProcess(tmp_path, extra=["--rate-limit", "off"]) as server:
        drill(server, tmp_path, total=60, kills=3, seed=_seed())


@pytest.mark.soak
def test_bot_drill_500_messages_3_kills(tmp_path: Path) -> None:
    with ServerProcess(tmp_path, extra=["--rate-limit", "off"]) as server:
        drill(server, tmp_path, total=500, kills=3, seed=_seed())
