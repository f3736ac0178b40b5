"""A fixed CPU slice for a process, as a container's CPU limit gives it (a Linux cgroup).

``postgres-remote`` uses it to give every replica the same slice of a core, so that one
replica's rate is bounded by its own CPU, as it is in a deployment where each replica has
its own host or CPU limit, and not by the cores its load generators, proxies and
PostgreSQL share with it on this machine. What two replicas then add over one is what
scaling out adds, unless something they share (the database, its locks, each other's
notifications) holds them back: that is what the comparison is for.

Needs a writable cgroup ``cpu`` controller: cgroup v1's ``/sys/fs/cgroup/cpu`` or v2's
root with ``cpu`` enabled (as root, or a delegated subtree). ``unavailable()`` says why not.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

#: cgroup v1's cpu hierarchy, and cgroup v2's root.
_V1 = Path("/sys/fs/cgroup/cpu")
_V2 = Path("/sys/fs/cgroup")
#: the scheduler's accounting period: short, so a throttled replica waits at most a few
#: milliseconds for its next slice (a container's default, 100 ms, makes that 60 ms).
PERIOD_US = 10_000


def _root() -> tuple[Path, int] | None:
    if (_V2 / "cgroup.controllers").exists():
        controllers = (_V2 / "cgroup.controllers").read_text().split()
        return (_V2, 2) if "cpu" in controllers else None
    return (_V1, 1) if (_V1 / "cpu.cfs_quota_us").exists() else None


def unavailable() -> str | None:
    """Why budgets cannot be set here, or None when they can."""
    found = _root()
    if found is None:
        return "no cgroup cpu controller on this machine"
    root, _ = found
    if not os.access(root, os.W_OK):
        return f"{root} is not writable (run as root, or in a delegated cgroup)"
    return None


class CpuBudget:
    """A cgroup holding at most ``cores`` of CPU time (e.g. 0.3: 3 ms of every 10 ms)."""

    def __init__(self, name: str, cores: float) -> None:
        found = _root()
        if found is None:
            raise RuntimeError("no cgroup cpu controller on this machine")
        root, self.version = found
        self.path = root / f"chatctl-bench-{name}-{os.getpid()}"
        self.cores = cores

    def __enter__(self) -> CpuBudget:
        quota = max(1000, round(self.cores * PERIOD_US))
        if self.version == 2:
            with contextlib.suppress(OSError):  # already enabled
                (self.path.parent / "cgroup.subtree_control").write_text("+cpu")
        self.path.mkdir()
        if self.version == 2:
            (self.path / "cpu.max").write_text(f"{quota} {PERIOD_US}")
        else:
            (self.path / "cpu.cfs_period_us").write_text(str(PERIOD_US))
            (self.path / "cpu.cfs_quota_us").write_text(str(quota))
        return self

    def add(self, pid: int) -> None:
        """Move a process (and the threads it has) into the budget."""
        (self.path / "cgroup.procs").write_text(str(pid))

    def periods(self) -> tuple[int, int]:
        """Scheduler periods so far, and those in which the budget ran out."""
        stat = dict(line.split()[:2] for line in (self.path / "cpu.stat").read_text().splitlines())
        return int(stat.get("nr_periods", 0)), int(stat.get("nr_throttled", 0))

    def __exit__(self, *exc: object) -> None:
        # Whatever still runs in it goes back to the root; then the group can go.
        procs = self.path / "cgroup.procs"
        with contextlib.suppress(OSError):
            for pid in procs.read_text().split():
                with contextlib.suppress(OSError):
                    (self.path.parent / "cgroup.procs").write_text(pid)
        with contextlib.suppress(OSError):
            self.path.rmdir()
