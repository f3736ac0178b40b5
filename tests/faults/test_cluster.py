"""Three replicas on one PostgreSQL under faults, every operation recorded and the whole
history checked (issue 27; the machinery is tests/faults/cluster.py, the checker
tests/faults/checker.py, its own tests tests/faults/test_checker.py).

Writers send keyed Sends and bulk Sends to any replica, retrying on the next; tails Join
each room on each replica and resume with ``since``; a reader reads the whole History from
one replica after another; meanwhile a nemesis injects, in turn: PostgreSQL restarted
(every backend of the drill's database terminated), PostgreSQL paused longer than the
replicas' database timeout, one replica's database connections cut (its LISTEN too), a
replica kill -9ed and restarted, a replica SIGSTOPped; and clients abandon calls
mid-way. Then ``checker.check`` says, invariant by invariant, how many cases it checked
and whether any broke: no acknowledged message lost, none stored twice, one order per
room in History on every replica and in every stream, no stream skipping or repeating
across its resumes, and every acknowledged message seen by every stream of its room
within ``BOUND`` seconds of the faults' heal.

The default run is one turn of the faults (about 20 s); ``pytest -m soak`` runs turns for
``SOAK_SECONDS``. Both print the operations, the faults and the invariants (``-s``).
Needs CHATCTL_TEST_POSTGRES.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from tests.faults import cluster
from tests.faults.checker import check
from tests.faults.drill import report

pytestmark = pytest.mark.postgres

#: a message acknowledged reaches every stream of its room within this many seconds of
#: its acknowledgement, or of the heal of the faults under way then (a shared 2-core
#: machine: the streams of a killed replica rejoin another, which replays).
BOUND = 10.0
#: load before the first fault and between faults.
GAP = 1.5
#: how long the soak drill injects faults.
SOAK_SECONDS = 180


def drill(tmp_path: Path, seconds: float) -> None:
    with cluster.cluster(tmp_path) as c:
        rooms = cluster.create_rooms(c, 2)
        rec = cluster.Recorder()
        nemesis = cluster.Nemesis(c, rec)

        def faults() -> None:
            time.sleep(GAP)  # load before the first fault
            ends = time.monotonic() + seconds
            turn = 0
            while turn == 0 or time.monotonic() < ends:
                for fault in nemesis.cycle(turn):
                    fault()
                    time.sleep(GAP)  # load between faults
                turn += 1

        notes = cluster.run_load(c, rec, rooms, faults, BOUND)
        ops = rec.snapshot()
        # The whole history, one op a line, to look at or check again after a failure.
        kept = tmp_path / "history.jsonl"
        kept.write_text("".join(json.dumps(op) + "\n" for op in cluster.as_dicts(ops)))
        result = check(ops, bound=BOUND)
        summary = rec.summary()
        print(f"\n[drill cluster] {summary} in {rec.now():.1f} s")
        print("faults injected:\n" + cluster.describe_faults(ops))
        print("invariants:\n" + result.report())
        assert not rec.errors, rec.errors
        assert not notes, notes
        assert result.valid, f"{result.report()}\n(the whole history: {kept})"
        acked = result.checked["acknowledged is stored"]
        report("cluster", seconds=f"{rec.now():.0f}", acknowledged=acked, bound_s=BOUND)
        assert acked > 100, summary  # the faults did not stop the load


def test_three_replicas_under_faults_keep_every_acknowledged_message_once_in_one_order(
    tmp_path: Path,
) -> None:
    drill(tmp_path, seconds=0)


@pytest.mark.soak
def test_three_replicas_under_faults_for_minutes(tmp_path: Path) -> None:
    drill(tmp_path, seconds=SOAK_SECONDS)
