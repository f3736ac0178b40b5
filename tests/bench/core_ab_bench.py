"""Section ``server-before``: the server core of issue 15 beside the server it replaced,
in the same run.

The ``server`` section judges chatctl's Send by its ratio to a raw ASGI app against the
ratios measured before the core change (``BEFORE_CORE``): medians of a distribution that
spanned 0.4-0.8x on this shared machine, so one run of it says little. Here the server as
it was before the change (commit ``BEFORE``, taken out of this checkout's git history with
``git archive``) is loaded beside today's and the raw app, in rounds whose order rotates so
that drift on the machine hits all three alike, without and with an Idempotency-Key: the
median over rounds of today's rate over the old server's.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import tarfile
from io import BytesIO
from pathlib import Path

import httpx

from tests.bench.harness import PYTHON, Mode, Row, chat_server, free_port, peer_server, process
from tests.bench.server_bench import USER, create_room, load

#: main before the server core change (docs/benchmarks.md, "Before the server core change").
BEFORE = "ea93925"
#: today's rate over the old server's, per round: "SQLite stays in-process and as fast as
#: today or faster" (issue 15), to within what a median of rounds here can tell apart.
AT_LEAST = 0.95
REPO = Path(__file__).resolve().parents[2]
TEXT = "load test message"


def old_package(into: Path) -> Path:
    """The ``chatctl`` package at ``BEFORE``, unpacked in ``into``."""
    tar = subprocess.run(
        ["git", "-C", str(REPO), "archive", "--format=tar", BEFORE, "chatctl"],
        capture_output=True,
        check=True,
    ).stdout
    with tarfile.open(fileobj=BytesIO(tar)) as archive:
        archive.extractall(into, filter="data")
    return into


def server_before(mode: Mode, workdir: Path) -> list[Row]:
    old = old_package(workdir / "before")
    # Run from the old tree, which is first on sys.path: `-m chatctl` is the old package.
    env = {**os.environ, "PYTHONPATH": str(old)}
    found = subprocess.run(
        [PYTHON, "-c", "import chatctl; print(chatctl.__file__)"],
        cwd=old,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert Path(found).is_relative_to(old), f"the old server would run {found}"
    old_port = free_port()
    old_args = [PYTHON, "-m", "chatctl", "serve", "--port", str(old_port)]
    old_args += ["--db", str(workdir / "before.db"), "--log-level", "warning"]
    raw_args, raw_port, raw_log = peer_server(
        "minimal_app", workdir, "--db", str(workdir / "raw.db")
    )
    rounds = 3 if mode.quick else 5
    rates: dict[tuple[str, bool], list[float]] = {}
    with (
        chat_server(workdir / "server-now") as server,
        process(old_args, old_port, workdir / "before.log", cwd=old, env=env),
        process(raw_args, raw_port, raw_log),
    ):
        assert server.port is not None
        ports = {"now": server.port, "before": old_port, "raw": raw_port}
        bodies = {"raw": {"room_id": "load", "user_id": USER, "text": TEXT}}
        for name in ("now", "before"):
            with httpx.Client(base_url=f"http://127.0.0.1:{ports[name]}", timeout=30) as c:
                bodies[name] = {
                    "room_id": create_room(c, "load", [USER]),
                    "user_id": USER,
                    "text": TEXT,
                }
        names = list(ports)
        for i in range(rounds):
            for keyed in (False, True):
                for name in names[i % 3 :] + names[: i % 3]:
                    r = load(ports[name], bodies[name], mode, keyed=keyed)
                    rates.setdefault((name, keyed), []).append(r["rps"])

    def ratios(a: str, b: str, keyed: bool) -> list[float]:
        return [x / y for x, y in zip(rates[a, keyed], rates[b, keyed], strict=True)]

    rows = []
    for keyed, label in ((False, "no key"), (True, "Idempotency-Key")):
        ratio = statistics.median(ratios("now", "before", keyed))
        rounds_text = ", ".join(f"{r:.2f}" for r in ratios("now", "before", keyed))
        rows.append(
            Row(
                f"server Send ({label}), 32 conns: core now",
                statistics.median(rates["now", keyed]),
                "req/s",
                f"server at {BEFORE}, before the core",
                statistics.median(rates["before", keyed]),
                f"≥ {AT_LEAST:g}x",
                ratio >= AT_LEAST,
                note=(
                    f"ratio: median over {rounds} rounds (order rotating) of now/before per "
                    f"round: {rounds_text}; beside the raw app, same rounds: now "
                    f"{statistics.median(ratios('now', 'raw', keyed)):.2f}x, before "
                    f"{statistics.median(ratios('before', 'raw', keyed)):.2f}x"
                ),
                ratio=ratio,
            )
        )
    return rows
