"""Figures 1 and 2: the CLI's start-up and its batch sends, beside their floors.

Floors: ``python -c "import typer"`` for start-up; a minimal typer+httpx script POSTing the
same Send; a shell loop of curl (the m3o shell client's way) and a minimal httpx loop over
one kept-alive connection for batches.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import httpx

from chatctl.ids import START
from tests.bench.harness import (
    CHATCTL,
    PYTHON,
    Mode,
    Row,
    bench_env,
    chat_server,
    interleaved_medians,
    ratio_row,
    wall,
)

USER = "bench"

# As chatctl's console script does (chatctl/cli/__init__.py): httpx imports its own
# command-line client (rich, pygments) when click and rich are installed, which typer's
# dependencies make true; a floor that paid for it would flatter chatctl by ~50 ms.
MINIMAL_SEND = textwrap.dedent(
    """
    import json, sys
    sys.modules["httpx._main"] = None
    import httpx, typer
    url, room, text = sys.argv[1:4]
    r = httpx.post(url + "/v1/chat/Send",
                   json={"room_id": room, "user_id": "bench", "text": text})
    r.raise_for_status()
    print(json.dumps(r.json()))
    """
)

MINIMAL_LOOP = textwrap.dedent(
    """
    import json, sys, uuid
    import httpx
    url, keyed = sys.argv[1], sys.argv[2] == "keyed"
    with httpx.Client(base_url=url) as c:
        for line in sys.stdin:
            headers = {"Content-Type": "application/json"}
            if keyed:  # as chatctl does, for retry safety
                headers["Idempotency-Key"] = uuid.uuid4().hex
            r = c.post("/v1/chat/Send", content=line.encode(), headers=headers)
            r.raise_for_status()
            sys.stdout.write(r.text + "\\n")
    """
)

CURL_LOOP = textwrap.dedent(
    """
    url="$1"; body="$2"; n="$3"
    for i in $(seq "$n"); do
      curl -s -X POST "$url/v1/chat/Send" -H "Content-Type: application/json" \\
        -d "$body" > /dev/null || exit 1
    done
    """
)


def new_room(c: httpx.Client, name: str) -> str:
    r = c.post("/v1/chat/Create", json={"name": name, "description": "", "user_ids": [USER]})
    r.raise_for_status()
    return str(r.json()["room"]["id"])


def texts(c: httpx.Client, room: str) -> list[str]:
    """Every text of the room, oldest first, through History pages."""
    out: list[str] = []
    cursor = {"after": START}
    while True:
        r = c.post("/v1/chat/History", json={"room_id": room, "limit": 1000, **cursor})
        r.raise_for_status()
        page = r.json()["messages"]
        if not page:
            return out
        out += [m["text"] for m in page]
        cursor = {"after": page[-1]["id"]}


def bytecode_as_installed() -> None:
    """Write chatctl's bytecode, as pip does when it installs the wheel. The peer's typer
    and httpx come with theirs; a checkout run with PYTHONDONTWRITEBYTECODE set (as on
    the shared machine) or from a read-only tree would compile chatctl's modules from
    source in every process: 40 ms of a one-shot send that no installed chatctl pays."""
    import compileall

    import chatctl

    compileall.compile_dir(Path(chatctl.__file__).parent, quiet=1)


def startup(mode: Mode, workdir: Path) -> list[Row]:
    bytecode_as_installed()
    with chat_server(workdir / "startup") as server, server.http() as c:
        room = new_room(c, "startup")
        env = bench_env(server.url)
        send = [CHATCTL, "send", room, "hello", "--user", USER]
        minimal = [PYTHON, "-c", MINIMAL_SEND, server.url, room, "hello"]
        wall(send, env=env)  # warm: the server's first request, the OS's file cache
        m = interleaved_medians(
            {
                "typer": lambda: wall([PYTHON, "-c", "import typer"], env=env),
                "version": lambda: wall([CHATCTL, "--version"], env=env),
                "help": lambda: wall([CHATCTL, "--help"], env=env),
                "send": lambda: wall(send, env=env),
                "minimal": lambda: wall(minimal, env=env),
            },
            mode.repeats,
        )
    ms = {k: v * 1000 for k, v in m.items()}
    return [
        ratio_row(
            "start-up: chatctl --version",
            ms["version"],
            "ms",
            "python -c 'import typer'",
            ms["typer"],
            at_most=1.3,
        ),
        ratio_row(
            "start-up: chatctl --help",
            ms["help"],
            "ms",
            "python -c 'import typer'",
            ms["typer"],
            note="no target; help renders with rich, typer alone does not",
        ),
        ratio_row(
            "one-shot chatctl send (warm server)",
            ms["send"],
            "ms",
            "typer+httpx script, one POST",
            ms["minimal"],
            at_most=1.25,
            note="in a pipe (JSON out); chatctl's bytecode compiled first, as pip install "
            "does (the script's typer and httpx come compiled)",
        ),
    ]


def batch(mode: Mode, workdir: Path) -> list[Row]:
    n = mode.batch_lines
    rows: list[Row] = []
    size = "" if n == 10_000 else f"quick mode: {n:,} messages, not 10,000; "
    with chat_server(workdir / "batch") as server, server.http() as c:
        env = bench_env(server.url)
        body = json.dumps({"room_id": new_room(c, "curl"), "user_id": USER, "text": "curl"})
        curl_s = wall(["bash", "-c", CURL_LOOP, "curl-loop", server.url, body, str(mode.curl_loop)])
        curl_rate = mode.curl_loop / curl_s

        def run(kind: str) -> tuple[float, bool]:
            room = new_room(c, kind)
            want = [f"{kind} line {i:05d}" for i in range(n)]
            if kind == "lines":
                args = [CHATCTL, "send", room, "--lines", "--user", USER]
                data = "".join(t + "\n" for t in want)
            else:
                args = (
                    [CHATCTL, "send", "-i", "-"]
                    if kind == "ndjson"
                    else [PYTHON, "-c", MINIMAL_LOOP, server.url, kind]
                )
                data = "".join(
                    json.dumps({"room_id": room, "user_id": USER, "text": t}) + "\n" for t in want
                )
            seconds = wall(args, env=env, input=data.encode())
            return n / seconds, texts(c, room) == want

        results: dict[str, list[tuple[float, bool]]] = {
            "lines": [],
            "ndjson": [],
            "httpx": [],
            "keyed": [],
        }
        for _ in range(mode.batch_repeats):
            for kind, got in results.items():
                got.append(run(kind))
    rates = {k: sorted(r for r, _ in v)[len(v) // 2] for k, v in results.items()}
    ordered = {k: all(ok for _, ok in v) for k, v in results.items()}
    curl_note = (
        f"curl loop: {mode.curl_loop} requests, rate extrapolated to {n:,}"
        " (one curl process per message, as m3o's shell examples do)"
    )
    for kind, label in (("lines", "send --lines"), ("ndjson", "send -i - (NDJSON)")):
        order = "in input order (History)" if ordered[kind] else "ORDER/COUNT WRONG in History"
        rows.append(
            ratio_row(
                f"batch {label}, {n:,} msgs",
                rates[kind],
                "msg/s",
                "curl loop",
                curl_rate,
                at_least=10,
                note=curl_note,
            )
        )
        r = ratio_row(
            f"batch {label}, {n:,} msgs",
            rates[kind],
            "msg/s",
            "minimal httpx loop, 1 conn",
            rates["httpx"],
            at_least=0.8,
            note=f"{size}{order}; whole-process rates incl. start-up",
        )
        r.passed = bool(r.passed and ordered[kind])
        rows.append(r)
        rows.append(
            ratio_row(
                f"batch {label}, {n:,} msgs",
                rates[kind],
                "msg/s",
                "same loop + Idempotency-Key",
                rates["keyed"],
                note="no target: the floor with the per-call key chatctl sends for retry "
                "safety (the server stores it in the same transaction)",
            )
        )
    return rows
