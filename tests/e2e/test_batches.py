"""A write batch finishes or says it did not: pipes, signals and bad lines, against the
real server, with the CLI as a real process in a real shell pipeline."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest

from tests.e2e.proxy import serve
from tests.helpers import ServerProcess, chatctl, cli_env, wait_for

CHATCTL = f"{sys.executable} -m chatctl"


def make_room(server: ServerProcess, env: dict[str, str]) -> str:
    r = chatctl("create", "batch", "-u", "u", "-o", "id", env=env)
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


def texts_in(server: ServerProcess, room: str) -> list[str]:
    with server.http() as http:
        messages, after = [], "00000000-0000-0000-0000-000000000000"
        while True:
            page = http.post(
                "/v1/chat/History", json={"room_id": room, "after": after, "limit": 1000}
            ).json()["messages"]
            if not page:
                return messages
            messages += [m["text"] for m in page]
            after = page[-1]["id"]


def sigint_pending(pid: int) -> bool:
    """True while a SIGINT sent to ``pid`` has not been delivered to it yet."""
    status = Path(f"/proc/{pid}/status").read_text()
    masks = [int(line.split()[1], 16) for line in status.splitlines() if "Pnd:" in line]
    return any(mask & (1 << (signal.SIGINT - 1)) for mask in masks)


def start_batch(env: dict[str, str], url: str, room: str) -> subprocess.Popen[str]:
    """``chatctl send ROOM --lines -o id`` against ``url``, its three streams piped."""
    return subprocess.Popen(
        [sys.executable, "-m", "chatctl", "send", room, "--lines", "-o", "id"],
        env={**env, "CHATCTL_URL": url},
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def pipeline(script: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", "-o", "pipefail", "-c", script],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize("mode", ["lines", "ndjson"])
def test_head_1_of_a_500_line_batch_stores_all_500(server: ServerProcess, mode: str) -> None:
    env = cli_env(server, CHATCTL_USER="u")
    room = make_room(server, env)
    if mode == "lines":
        feed, send = "seq 1 500", f"{CHATCTL} send {room} --lines -o id"
    else:
        feed = f"""seq 1 500 | sed 's/.*/{{"room_id": "{room}", "text": "&"}}/'"""
        send = f"{CHATCTL} send -i - -o id"
    shell = pipeline(f"{feed} | {send} | head -1", env)
    # pipefail: the batch's own status. It stored every line, so it succeeded.
    assert shell.returncode == 0, shell.stderr
    assert len(shell.stdout.splitlines()) == 1
    assert shell.stderr == ""
    assert texts_in(server, room) == [str(n) for n in range(1, 501)]


def test_a_batch_whose_reader_left_and_a_line_failed_says_so(server: ServerProcess) -> None:
    env = cli_env(server, CHATCTL_USER="u")
    room = make_room(server, env)
    too_long = "x" * (64 * 1024 + 1)
    lines = [*map(str, range(1, 201)), too_long, *map(str, range(202, 401))]
    Path(server.workdir / "in.txt").write_text("\n".join(lines) + "\n")
    shell = pipeline(
        f"{CHATCTL} send {room} --lines -o id --keep-going < {server.workdir}/in.txt | head -1",
        env,
    )
    assert shell.returncode == 1
    assert texts_in(server, room) == [x for x in lines if x != too_long]
    assert shell.stderr.splitlines() == [
        "error: line 201: text is longer than the limit of 65536 characters (max_text_chars) "
        "(chat.send, HTTP 400)",
        "error: 1 failed; 399 messages sent",
    ]


def test_keep_going_reports_two_bad_lines_in_the_middle(server: ServerProcess) -> None:
    env = cli_env(server, CHATCTL_USER="u")
    room = make_room(server, env)
    bad = "y" * (64 * 1024 + 1)
    lines = ["one", "two", bad, "four", bad, "six"]
    r = chatctl(
        "send", room, "--lines", "-o", "id", "--keep-going", env=env, input="\n".join(lines)
    )
    assert r.returncode == 1
    assert len(r.stdout.split()) == 4
    assert texts_in(server, room) == ["one", "two", "four", "six"]
    errors = r.stderr.splitlines()
    assert [e.split(":")[1].strip() for e in errors[:2]] == ["line 3", "line 5"]
    assert errors[2] == "error: 2 failed; 4 messages sent"


def test_without_keep_going_a_batch_stops_at_the_bad_line_and_counts(
    server: ServerProcess,
) -> None:
    env = cli_env(server, CHATCTL_USER="u")
    room = make_room(server, env)
    objects = [{"room_id": room, "text": t} for t in ("a", "b", "z" * (64 * 1024 + 1), "d")]
    r = chatctl("send", "-i", "-", "-o", "id", env=env, input="\n".join(map(json.dumps, objects)))
    assert r.returncode == 1
    assert texts_in(server, room) == ["a", "b"]
    assert len(r.stdout.split()) == 2
    assert r.stderr.splitlines()[0].startswith("error: line 3: text is longer than")
    assert r.stderr.splitlines()[-1] == (
        "chatctl: 2 messages sent before it; the rest was not sent"
    )


def test_ctrl_c_stores_n_and_prints_n_ids(server: ServerProcess) -> None:
    """Ctrl-C while the batch waits for more input: it stops reading and exits 130, and
    the ids it printed are exactly the messages stored."""
    env = cli_env(server, CHATCTL_USER="u")
    room = make_room(server, env)
    proc = subprocess.Popen(
        [sys.executable, "-m", "chatctl", "send", room, "--lines", "-o", "id"],
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdin is not None and proc.stdout is not None
    printed: list[str] = []
    for n in range(7):
        proc.stdin.write(f"m{n}\n")
        proc.stdin.flush()
        printed.append(proc.stdout.readline().strip())  # its id: it was stored
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    printed += out.split()
    assert len(printed) == 7
    with server.http() as http:
        stored = http.post("/v1/chat/History", json={"room_id": room}).json()["messages"]
    assert [m["id"] for m in stored] == printed
    assert "interrupted: 7 messages sent" in err
    assert "Traceback" not in err


def test_ctrl_c_during_a_call_finishes_it_and_prints_its_id(
    start_server: Callable[..., ServerProcess],
) -> None:
    """The Send of line 3 is in flight (a proxy holds it) when Ctrl-C comes: the call is
    finished, its id printed, nothing more is read or sent, exit 130."""
    server = start_server(tcp=True)
    env = cli_env(server, CHATCTL_USER="u")
    room = make_room(server, env)
    arrived, release = threading.Event(), threading.Event()
    seen: list[str] = []

    def hold_the_third(request: BaseHTTPRequestHandler, body: bytes) -> None:
        if request.path.endswith("/Send"):
            seen.append(json.loads(body)["text"])
            if len(seen) == 3:
                arrived.set()
                release.wait(30)

    with serve(hold_the_third, upstream=server.url) as url:
        proc = start_batch(env, url, room)
        assert proc.stdin is not None
        proc.stdin.write("".join(f"m{n}\n" for n in range(6)))
        proc.stdin.flush()
        assert arrived.wait(30), "the third Send never reached the proxy"
        proc.send_signal(signal.SIGINT)
        # Let the held call through only once the signal has reached the CLI.
        wait_for(lambda: not sigint_pending(proc.pid), 10, "the CLI to take the SIGINT")
        assert proc.poll() is None  # still waiting for the held call's answer
        release.set()
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    with server.http() as http:
        stored = http.post("/v1/chat/History", json={"room_id": room}).json()["messages"]
    assert [m["text"] for m in stored] == ["m0", "m1", "m2"]
    assert out.split() == [m["id"] for m in stored]
    assert seen == ["m0", "m1", "m2"]
    assert "interrupted: 3 messages sent" in err


def test_a_second_ctrl_c_abandons_the_call_and_says_its_outcome_is_unknown(
    start_server: Callable[..., ServerProcess],
) -> None:
    server = start_server(tcp=True)
    env = cli_env(server, CHATCTL_USER="u")
    room = make_room(server, env)
    arrived, release = threading.Event(), threading.Event()

    def hold_the_second(request: BaseHTTPRequestHandler, body: bytes) -> None:
        if request.path.endswith("/Send") and json.loads(body)["text"] == "m1":
            arrived.set()
            release.wait(30)

    with serve(hold_the_second, upstream=server.url) as url:
        proc = start_batch(env, url, room)
        assert proc.stdin is not None
        proc.stdin.write("m0\nm1\nm2\n")
        proc.stdin.flush()
        assert arrived.wait(30), "the second Send never reached the proxy"
        assert proc.stderr is not None
        proc.send_signal(signal.SIGINT)
        notice = proc.stderr.readline()  # the first Ctrl-C was taken: it says what it does
        assert notice.startswith("chatctl: finishing the call in flight, then stopping")
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
        release.set()
    assert proc.returncode == 130, err
    assert len(out.split()) == 1  # m0's id; m1's outcome is unknown
    assert "interrupted during the call for line 2: it may or may not have been stored" in err
    assert "1 message sent before it" in err


@pytest.mark.one_backend
def test_read_commands_exit_0_quietly_on_a_closed_pipe(server: ServerProcess) -> None:
    env = cli_env(server, CHATCTL_USER="u")
    room = make_room(server, env)
    chatctl("send", room, "--lines", env=env, input="".join(f"{n}\n" for n in range(3000)))
    for args in (f"history {room} -o jsonl", f"history {room} -o table", "list -o tsv"):
        shell = pipeline(f"{CHATCTL} {args} | head -1", env)
        assert shell.returncode == 0, (args, shell.stderr)
        assert shell.stderr == ""
