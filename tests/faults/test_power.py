"""Power-loss drill: the database directory on a disk that forgets what was not fsynced.

``kill -9`` of the server leaves the OS page cache intact, so the crash drills cannot see a
commit that was answered before it reached the disk. Here the server's ``--db`` lives on
``tests/faults/lazyfs.py``, a FUSE filesystem that keeps every write in its own memory
until the file is fsynced (LazyFS's model). The drill: make a room and checkpoint it
into the database file (a room made long ago, on the disk whatever ``--sync`` says), load
the server with keyed Sends from several writers, then cut the power at a random moment:
``kill -9`` the server and then the filesystem, whose unsynced writes die with it. Mount
the disk again, start the server:

- every acknowledged message is in History, with the text it was acknowledged with;
- no id and no text is stored twice;
- each Send that was in flight at the cut (no answer came), retried with its
  Idempotency-Key, is answered and then stored exactly once.

Run with ``--sync normal`` the same drill must find acknowledged messages missing: that
test proves the drill can fail, and shows what the opt-out risks.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.faults.drill import create_room, history, report
from tests.helpers import ServerProcess, wait_for

ROOT = Path(__file__).resolve().parents[2]


def _fuse_missing() -> str | None:
    if not os.path.exists("/dev/fuse"):
        return "no /dev/fuse on this machine"
    if shutil.which("fusermount3") is None:
        return "fusermount3 is missing (Debian: apt-get install fuse3)"
    try:
        import mfusepy  # noqa: F401
    except (ImportError, OSError) as exc:  # OSError: mfusepy found no libfuse
        return f"mfusepy cannot load libfuse: {exc} (pip install mfusepy; apt-get install fuse3)"
    return None


pytestmark = pytest.mark.skipif(_fuse_missing() is not None, reason=str(_fuse_missing()))


class LazyDisk:
    """``tests/faults/lazyfs.py`` mounted on ``mount`` over the directory ``disk``."""

    def __init__(self, disk: Path, mount: Path) -> None:
        self.disk, self.mount = disk, mount
        self.log = disk.parent / "lazyfs.log"
        self.proc: subprocess.Popen[bytes] | None = None
        disk.mkdir()
        mount.mkdir()

    def start(self) -> None:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "tests.faults.lazyfs", str(self.disk), str(self.mount)],
                cwd=ROOT,
                stdout=log,
                stderr=log,
                start_new_session=True,
            )
        wait_for(self._mounted, 10, "the FUSE disk to be mounted")

    def _mounted(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"lazyfs exited: {self.log.read_text()[-2000:]}")
        return os.path.ismount(self.mount)

    def cut(self) -> None:
        """The power goes: what the filesystem held in memory is gone."""
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(10)
        self.proc = None
        subprocess.run(["fusermount3", "-u", "-z", str(self.mount)], check=True)

    def close(self) -> None:
        if self.proc is not None:
            self.cut()
        elif os.path.ismount(self.mount):
            subprocess.run(["fusermount3", "-u", "-z", str(self.mount)], check=False)


@dataclass
class Load:
    """Writers sending unique texts with an Idempotency-Key each, until the server dies.

    ``acked``: id -> text of every answered Send; ``in_flight``: the Send each writer was
    waiting on when its connection died (key, body), never answered."""

    server: ServerProcess
    room_id: str
    writers: int
    #: in every text, so no two loads of one drill send the same text.
    tag: str
    acked: dict[str, str] = field(default_factory=dict)
    in_flight: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    errors: list[BaseException] = field(default_factory=list)
    changed: threading.Condition = field(default_factory=threading.Condition)
    threads: list[threading.Thread] = field(default_factory=list)

    def __enter__(self) -> Load:
        self.threads = [
            threading.Thread(target=self._run, args=(f"w{n}",), daemon=True)
            for n in range(self.writers)
        ]
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        for t in self.threads:
            t.join(30)
        assert not any(t.is_alive() for t in self.threads), "a writer did not stop"

    def _run(self, user: str) -> None:
        deadline = time.monotonic() + 60
        with self.server.http() as http:
            n = 0
            while time.monotonic() < deadline:
                key = uuid.uuid4().hex
                text = f"{user}-{self.tag}-{n}"
                body = {"room_id": self.room_id, "user_id": user, "text": text}
                try:
                    r = http.post("/v1/chat/Send", json=body, headers={"Idempotency-Key": key})
                except httpx.TransportError:  # the power went
                    with self.changed:
                        self.in_flight.append((key, body))
                    return
                try:
                    assert r.status_code == 200, r.text
                    message = r.json()["message"]
                    assert message["text"] == body["text"]
                except BaseException as exc:
                    self.errors.append(exc)
                    return
                with self.changed:
                    assert message["id"] not in self.acked
                    self.acked[message["id"]] = body["text"]
                    self.changed.notify_all()
                n += 1
            self.errors.append(AssertionError(f"{user} was still sending after 60 s"))

    def wait_for_acks(self, count: int) -> None:
        with self.changed:
            assert self.changed.wait_for(
                lambda: len(self.acked) >= count or bool(self.errors), 30
            ), f"{len(self.acked)} of {count} Sends acknowledged in 30 s"
        assert not self.errors, self.errors


@dataclass
class Outcome:
    acked: dict[str, str]
    stored: list[dict[str, Any]]
    in_flight: int
    retried: list[dict[str, Any]]
    #: in-flight Sends already stored before their retry (committed, answer never came).
    committed_unanswered: int = 0

    @property
    def lost(self) -> list[str]:
        kept = {m["id"]: m["text"] for m in self.stored}
        return [i for i, text in self.acked.items() if kept.get(i) != text]

    @property
    def twice(self) -> int:
        ids = Counter(m["id"] for m in self.stored)
        texts = Counter(m["text"] for m in self.stored)
        return sum(n - 1 for n in ids.values()) + sum(n - 1 for n in texts.values())

    def figures(self) -> dict[str, int]:
        """What a cut's report line says under either --sync."""
        return {
            "acked": len(self.acked),
            "stored": len(self.stored),
            "lost": len(self.lost),
            "twice": self.twice,
            "in_flight": self.in_flight,
        }


@contextlib.contextmanager
def lazy_disk(tmp_path: Path) -> Iterator[LazyDisk]:
    disk = LazyDisk(tmp_path / "disk", tmp_path / "mnt")
    try:
        disk.start()
        yield disk
    finally:
        disk.close()


def power_cut_drill(
    tmp_path: Path, *, sync: str, cuts: int, writers: int, acks: tuple[int, int], seed: int
) -> list[Outcome]:
    """``cuts`` power cuts, each after a random number (in ``acks``) of acknowledged
    Sends since the last start; the outcome of each, read after the restart."""
    rng = random.Random(seed)
    outcomes: list[Outcome] = []
    with lazy_disk(tmp_path) as disk:
        # TCP: httpx leaks the socket of a refused Unix-socket connect (tests/helpers.py).
        server = ServerProcess(
            tmp_path, tcp=True, db=str(disk.mount / "chat.db"), extra=["--sync", sync]
        )
        try:
            server.start()
            room_id = create_room(server, "power", [f"w{n}" for n in range(writers)])
            # A room made long ago: checkpointed into the database file (fsynced), as a
            # backup tool would, so that in every mode only the load is at stake.
            with contextlib.closing(sqlite3.connect(disk.mount / "chat.db")) as db:
                assert db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0] == 0
            already: list[dict[str, Any]] = []
            for cut in range(cuts):
                if server.proc is None:
                    server.start()
                with Load(server, room_id, writers, f"c{cut}") as load:
                    load.wait_for_acks(rng.randint(*acks))
                    server.kill9()
                    disk.cut()
                disk.start()
                server.start()
                stored = history(server, room_id)
                outcome = Outcome(dict(load.acked), stored, len(load.in_flight), [])
                texts = {m["text"] for m in stored}
                outcome.committed_unanswered = sum(b["text"] in texts for _, b in load.in_flight)
                if sync == "full":  # with --sync normal the keys may be lost too
                    with server.http() as http:
                        for key, body in load.in_flight:
                            r = http.post(
                                "/v1/chat/Send", json=body, headers={"Idempotency-Key": key}
                            )
                            assert r.status_code == 200, r.text
                            outcome.retried.append(r.json()["message"])
                    outcome.stored = history(server, room_id)
                outcome.acked = {m["id"]: m["text"] for m in already} | outcome.acked
                already = outcome.stored
                outcomes.append(outcome)
                server.stop()
        finally:
            if server.proc is not None:
                server.kill9()
    return outcomes


def check_full(outcomes: list[Outcome], name: str) -> None:
    for cut, outcome in enumerate(outcomes, 1):
        in_flight_texts = {m["text"] for m in outcome.retried}
        stored_texts = Counter(m["text"] for m in outcome.stored)
        report(
            name,
            cut=cut,
            sync="full",
            **outcome.figures(),
            of_which_committed=outcome.committed_unanswered,
            in_flight_stored_once=sum(stored_texts[t] == 1 for t in in_flight_texts),
        )
        assert not outcome.lost, f"cut {cut}: acknowledged but lost: {outcome.lost[:10]}"
        assert outcome.twice == 0, f"cut {cut}: stored twice"
        assert all(stored_texts[t] == 1 for t in in_flight_texts), f"cut {cut}: retry"
        assert len(outcome.retried) == outcome.in_flight


def drill_seed() -> int:
    """``FAULT_DRILL_SEED`` replays a drill's cut moments (as in test_crash.py)."""
    seed = int(os.environ.get("FAULT_DRILL_SEED") or random.randrange(1 << 30))
    print(f"\nFAULT_DRILL_SEED={seed}", flush=True)
    return seed


def test_power_cut_loses_no_acknowledged_send(tmp_path: Path) -> None:
    outcomes = power_cut_drill(
        tmp_path, sync="full", cuts=1, writers=4, acks=(40, 120), seed=drill_seed()
    )
    check_full(outcomes, "power-cut")


def test_power_cut_with_sync_normal_loses_acknowledged_sends(tmp_path: Path) -> None:
    # The opt-out, and the proof that the drill can fail: the answered Sends were in the
    # WAL in the page cache, never fsynced, and the cut takes them.
    (outcome,) = power_cut_drill(
        tmp_path, sync="normal", cuts=1, writers=4, acks=(40, 120), seed=drill_seed()
    )
    report("power-cut", sync="normal", **outcome.figures())
    assert outcome.lost, "--sync normal lost nothing: the drill did not cut the power"


@pytest.mark.soak
def test_power_cuts_soak(tmp_path: Path) -> None:
    outcomes = power_cut_drill(
        tmp_path, sync="full", cuts=10, writers=8, acks=(100, 1500), seed=drill_seed()
    )
    check_full(outcomes, "power-cuts-soak")
