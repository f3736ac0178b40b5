"""A tail through nginx outlives deploys (issue 22): `chatctl join` behind the docs' own
nginx block (docs/deployment.md), with nginx's defaults (max_fails=1 fail_timeout=10s),
while a writer sends through the same proxy and the replicas behind it are restarted or
lose their database.

What the proxy adds to a restart: a Join handshake answered by nginx's HTML 502 while a
replica is down (and, with two replicas, for as long as nginx counts both down), and a
replica without its database closes a new stream with 4503. Each test checks what a user
of `chatctl join ROOM | while read ...` needs: every message printed once, in the room's
order, and the tail still running afterwards, having said so in a few stderr lines.

The two-replica and database tests need CHATCTL_TEST_POSTGRES; about 30 s in all.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests import postgres
from tests.bench.delay_proxy import DelayProxy
from tests.e2e.test_join import Tail
from tests.faults.drill import Tally, Writers, create_room, history
from tests.helpers import ServerProcess, wait_for
from tests.nginx import Nginx

#: how long the database stops answering in the database drill.
OUTAGE = 10.0


def drill(nginx: Nginx, replica: ServerProcess, *faults: Callable[[], None]) -> str:
    """A tail of a new room through the proxy, a writer sending through it, and each of
    ``faults`` in turn, with messages acknowledged before, between and after them; then
    ``check``. Returns what the tail said on stderr."""
    room = create_room(replica, "deploys", ["sender"])
    tail = Tail(replica, room, url=nginx.url)
    tail.wait_joined()
    tally = Tally()

    def sent_meanwhile(more: int) -> None:
        tally.wait_for_count(len(tally) + more, 60, f"{more} more messages acknowledged")

    with Writers(nginx, room, ["sender"], tally, timeout=90):
        sent_meanwhile(5)
        for fault in faults:
            fault()
            sent_meanwhile(5)
    return check(tail, replica, room)


def check(tail: Tail, replica: ServerProcess, room: str) -> str:
    """Every stored message printed once, in order, by a tail that is still running;
    then it is stopped (Ctrl-C). Returns what it said on stderr."""
    stored = [(m["id"], m["text"]) for m in history(replica, room)]
    wait_for(
        lambda: len(tail.lines) >= len(stored) or tail.proc.poll() is not None,
        40,
        f"the tail to print {len(stored)} messages",
    )
    if tail.proc.poll() is not None:
        code, err = tail.finish()
        raise AssertionError(f"the tail exited {code}: {err}")
    tail.proc.send_signal(signal.SIGINT)
    code, err = tail.finish(15)
    assert code == 130, err
    printed = [(m["id"], m["text"]) for m in tail.messages()]
    assert printed == stored, err
    assert "Traceback" not in err and "error:" not in err, err
    # Told, not flooded: a line for each new reason and one when it is back.
    assert "reconnected" in err, err
    assert len(err.splitlines()) <= 12, err
    return err


def test_a_tail_through_nginx_outlives_a_restart_of_its_one_replica(tmp_path: Path) -> None:
    (tmp_path / "nginx").mkdir()
    with (
        ServerProcess(tmp_path, tcp=True) as replica,
        Nginx(tmp_path / "nginx", [replica.port]) as nginx,
    ):
        err = drill(nginx, replica, replica.restart)  # SIGTERM, then started again
    assert "Bad Gateway" in err  # nginx answered for the replica while it was down


@pytest.fixture
def two_replicas(tmp_path: Path) -> Iterator[tuple[ServerProcess, ServerProcess, Nginx]]:
    with postgres.fresh_database() as url:
        for name in ("a", "b", "nginx"):
            (tmp_path / name).mkdir()
        with (
            ServerProcess(tmp_path / "a", tcp=True, db=url) as a,
            ServerProcess(tmp_path / "b", tcp=True, db=url) as b,
        ):
            assert a.port is not None and b.port is not None
            with Nginx(tmp_path / "nginx", [a.port, b.port]) as nginx:
                yield a, b, nginx


@pytest.mark.postgres
def test_a_tail_through_nginx_outlives_a_rolling_restart_of_two_replicas(
    two_replicas: tuple[ServerProcess, ServerProcess, Nginx],
) -> None:
    """Each replica is back before the next goes; nginx still counts the first one down
    (fail_timeout=10s) when the second goes, so for a while it has none to offer."""
    a, b, nginx = two_replicas
    drill(nginx, a, a.restart, b.restart)


@pytest.fixture
def replica_with_pausable_database(
    tmp_path: Path,
) -> Iterator[tuple[ServerProcess, DelayProxy, Nginx]]:
    postgres.require()
    (tmp_path / "nginx").mkdir()
    with postgres.fresh_database() as url, DelayProxy.to(url) as proxy:
        database = proxy.url_for(url)
        replica = ServerProcess(tmp_path, tcp=True, db=database, extra=["--db-timeout", "1"])
        with replica:
            assert replica.port is not None
            with Nginx(tmp_path / "nginx", [replica.port]) as nginx:
                yield replica, proxy, nginx


@pytest.mark.postgres
def test_a_tail_through_nginx_outlives_a_database_outage(
    replica_with_pausable_database: tuple[ServerProcess, DelayProxy, Nginx],
) -> None:
    """The database drops the replica's connections and stops answering for 10 s (a
    failover): the stream ends (1001: its fan-out is gone), and every new one is closed
    with 4503 until the database is back; the writer's Sends get 503 meanwhile."""
    replica, proxy, nginx = replica_with_pausable_database

    def outage() -> None:
        proxy.pause()
        proxy.drop()
        # The fault lasts OUTAGE seconds: this sleep is its duration, not a wait on a race.
        time.sleep(OUTAGE)
        proxy.resume()

    err = drill(nginx, replica, outage)
    assert "(close 4503)" in err  # the tail did meet the replica without its database
    # One line for it, not one for each of the attempts a 10 s outage takes.
    assert sum("4503" in line for line in err.splitlines()) == 1, err
