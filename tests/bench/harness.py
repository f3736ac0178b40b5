"""What every benchmark shares: the mode, result rows and the table, servers, timing.

A figure is never judged alone: each row holds the figure, the floor or peer measured in
the same run, their ratio and the target, because on a noisy shared machine only ratios
measured side by side mean anything.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.helpers import ServerProcess, free_port, wait_for

PYTHON = sys.executable
#: the installed console script, as a user runs it.
CHATCTL = str(Path(sys.executable).with_name("chatctl"))


@dataclass(frozen=True)
class Mode:
    name: str
    repeats: int  # runs per start-up figure
    batch_lines: int
    batch_repeats: int
    curl_loop: int  # requests in the curl loop (the rate is extrapolated)
    load_seconds: float
    big_room: int
    history_requests: int
    fanout_seconds: float
    ramp: tuple[int, ...]
    ramp_seconds: float
    idle_streams: int

    @property
    def quick(self) -> bool:
        return self.name == "quick"


QUICK = Mode(
    name="quick",
    repeats=9,
    batch_lines=5_000,
    batch_repeats=1,
    curl_loop=100,
    load_seconds=3,
    big_room=100_000,
    history_requests=300,
    fanout_seconds=3,
    ramp=(100, 200, 400),
    ramp_seconds=2,
    idle_streams=1_000,
)
FULL = Mode(
    name="full",
    repeats=21,
    batch_lines=10_000,
    batch_repeats=3,
    curl_loop=500,
    load_seconds=8,
    big_room=1_000_000,
    history_requests=1000,
    fanout_seconds=10,
    ramp=(100, 200, 300, 400, 600, 800),
    ramp_seconds=4,
    idle_streams=5_000,
)


def mode_from(argv: Sequence[str] = ()) -> Mode:
    if "--quick" in argv:
        return QUICK
    if "--full" in argv:
        return FULL
    return QUICK if os.environ.get("CHATCTL_BENCH", "").lower() == "quick" else FULL


# -- rows and the table ------------------------------------------------------------------


@dataclass
class Row:
    """One figure beside its peer. ``higher`` says which way is better for the ratio."""

    figure: str
    value: float
    unit: str
    peer: str = ""
    peer_value: float | None = None
    target: str = ""
    passed: bool | None = None
    note: str = ""
    #: set by ``ratio_row``; a row that is judged by its value alone shows none.
    ratio: float | None = None


def ratio_row(
    figure: str,
    value: float,
    unit: str,
    peer: str,
    peer_value: float,
    *,
    at_most: float | None = None,
    at_least: float | None = None,
    note: str = "",
) -> Row:
    """A row judged by its ratio to the peer: ≤ at_mostx or ≥ at_leastx."""
    ratio = value / peer_value if peer_value else float("inf")
    if at_most is not None:
        return Row(
            figure, value, unit, peer, peer_value, f"≤ {at_most:g}x", ratio <= at_most, note, ratio
        )
    if at_least is not None:
        return Row(
            figure,
            value,
            unit,
            peer,
            peer_value,
            f"≥ {at_least:g}x",
            ratio >= at_least,
            note,
            ratio,
        )
    return Row(figure, value, unit, peer, peer_value, "", None, note, ratio)


def _fmt(value: float | None, unit: str = "") -> str:
    if value is None:
        return ""
    if math.isnan(value):
        return "not measured"
    if unit == "ms" or abs(value) < 100:
        text = f"{value:.3g}" if abs(value) < 10 else f"{value:.1f}"
    else:
        text = f"{value:,.0f}"
    return f"{text} {unit}".strip()


def table(rows: Sequence[Row], mode: Mode) -> str:
    header = (
        f"chatctl benchmarks — {mode.name} mode, {time.strftime('%Y-%m-%d %H:%M')}, "
        f"{os.cpu_count()} cores, Python {sys.version.split()[0]}"
    )
    cells = [("figure", "value", "beside (same run)", "peer", "ratio", "target", "result")]
    for r in rows:
        result = "" if r.passed is None else ("pass" if r.passed else "FAIL")
        cells.append(
            (
                r.figure,
                _fmt(r.value, r.unit),
                r.peer,
                _fmt(r.peer_value, r.unit) if r.peer_value is not None else "",
                f"{r.ratio:.2f}x" if r.ratio is not None else "",
                r.target,
                result,
            )
        )
    widths = [max(len(c[i]) for c in cells) for i in range(len(cells[0]))]
    lines = [header, ""]
    for n, c in enumerate(cells):
        lines.append(" | ".join(x.ljust(w) for x, w in zip(c, widths, strict=True)).rstrip())
        if n == 0:
            lines.append("-+-".join("-" * w for w in widths))
    notes = [f"  [{n}] {r.figure}: {r.note}" for n, r in enumerate(rows, 1) if r.note]
    if notes:
        lines += ["", "notes:", *notes]
    return "\n".join(lines)


# -- processes --------------------------------------------------------------------------


def run_fast(main: Any) -> Any:
    """Run a coroutine on uvloop where installed (as the servers run), else asyncio's loop:
    the harness's processes should take as little CPU from the servers as they can."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    return uvloop.run(main)


def run_client(main: Any) -> None:
    """Run a load client's ``main()`` coroutine; print its JSON."""
    raise_fd_limit()
    print(json.dumps(run_fast(main)), flush=True)


def raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else 1 << 20
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


def bench_env(url: str | None = None) -> dict[str, str]:
    """A clean environment: no developer config, state in a scratch home."""
    home = Path(tempfile.mkdtemp(prefix="chatctl-bench-home-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CHATCTL_", "M3O_"))}
    env.update(
        HOME=str(home),
        XDG_CONFIG_HOME=str(home / ".config"),
        XDG_DATA_HOME=str(home / ".local/share"),
        XDG_STATE_HOME=str(home / ".local/state"),
        XDG_RUNTIME_DIR=str(home / "run"),
        CHATCTL_CONFIG=str(home / "chatctl.toml"),
        NO_COLOR="1",
    )
    if url:
        env["CHATCTL_URL"] = url
    return env


@contextlib.contextmanager
def chat_server(
    workdir: Path, db: Path | None = None, extra: Sequence[str] = ()
) -> Iterator[ServerProcess]:
    """``chatctl serve`` on a loopback TCP port, as in the e2e tests; ``extra``: more of
    its options."""
    workdir.mkdir(parents=True, exist_ok=True)
    server = ServerProcess(workdir, tcp=True, extra=extra)
    if db is not None:
        server.db = db
    with server:
        yield server


@contextlib.contextmanager
def process(
    args: Sequence[str], port: int, log: Path, **popen: Any
) -> Iterator[subprocess.Popen[bytes]]:
    """Any server process (a peer) listening on ``port``; killed at the end. ``popen``:
    more of ``subprocess.Popen``'s keywords (``cwd``, ``env``)."""
    with open(log, "ab") as out:
        proc = subprocess.Popen(list(args), stdout=out, stderr=out, start_new_session=True, **popen)

    def listening() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"{args} exited {proc.returncode}: {log.read_text()[-2000:]}")
        with socket.socket() as probe:
            return probe.connect_ex(("127.0.0.1", port)) == 0

    try:
        wait_for(listening, 15, f"{args[0]} to listen")
        yield proc
    finally:
        proc.kill()
        proc.wait()


def peer_server(module: str, workdir: Path, *extra: str) -> tuple[list[str], int, Path]:
    port = free_port()
    args = [PYTHON, "-m", f"tests.bench.{module}", "--port", str(port), *extra]
    return args, port, workdir / f"{module}.log"


def run_json(args: Sequence[str], timeout: float = 600, **kw: Any) -> Any:
    """Run a harness process that prints one JSON object as its last line."""
    out = subprocess.run(list(args), capture_output=True, text=True, timeout=timeout, **kw)
    if out.returncode != 0:
        raise AssertionError(f"{args} exited {out.returncode}: {out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


# -- timing -----------------------------------------------------------------------------


def wall(
    args: Sequence[str], *, env: dict[str, str] | None = None, input: bytes | None = None
) -> float:
    """Seconds one process takes, start to exit; it must succeed."""
    started = time.perf_counter()
    out = subprocess.run(
        list(args), env=env, input=input, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    elapsed = time.perf_counter() - started
    if out.returncode != 0:
        raise AssertionError(f"{args} exited {out.returncode}: {out.stderr.decode()[-2000:]}")
    return elapsed


def interleaved_medians(runs: dict[str, Callable[[], float]], repeats: int) -> dict[str, float]:
    """Each measurement ``repeats`` times, taking turns, so drift hits all alike."""
    samples: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            samples[name].append(run())
    return {name: statistics.median(values) for name, values in samples.items()}


def percentile(values: Sequence[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(p / 100 * (len(ordered) - 1))))
    return ordered[index]
