"""Tokens stay secret (issue 22, item 4): a token on the command line is gone from what
``ps`` shows (``/proc/PID/cmdline``) from the start, for a tail and for the server itself;
a token from a Windows file still works. Real processes against a real team server on a
TCP port. (Tokens that cannot be a header: tests/cli/test_secrets.py.)"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.test_join import CHATCTL, Tail
from tests.helpers import ServerProcess, chatctl, cli_env, wait_for

TOKEN = "tok-Secret-4f1c9a"

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="reads /proc/PID/cmdline"
)


def shown_by_ps(pid: int) -> str:
    """What another user sees of process ``pid``: the raw cmdline, and ps's args column
    (ps reads the same file; procps is on every machine of ours, but is no dependency)."""
    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    if shutil.which("ps") is None:
        return cmdline
    args = subprocess.run(
        ["ps", "-o", "args=", "-p", str(pid)], capture_output=True, text=True, check=True
    ).stdout
    return args + "\n" + cmdline


@pytest.fixture
def team(tmp_path: Path) -> Iterator[ServerProcess]:
    with ServerProcess(tmp_path, tcp=True, tokens=[TOKEN]) as server:
        yield server


def test_a_tails_token_is_gone_from_ps_and_so_is_the_servers(team: ServerProcess) -> None:
    env = cli_env(team, CHATCTL_TOKEN=TOKEN)
    made = chatctl("create", "ops", "-u", "watcher", "-u", "sender", "-o", "json", env=env)
    assert made.returncode == 0, made.stderr
    room = json.loads(made.stdout)["room"]["id"]

    tail = Tail(team, room, "-o", "jsonl", command=(*CHATCTL, "--token", TOKEN))
    try:
        # Live and authenticated: it prints what is sent after it joined.
        def printed() -> bool:
            sent = chatctl("send", room, "ping", "-u", "sender", env=env)
            assert sent.returncode == 0, sent.stderr
            return bool(tail.lines)

        wait_for(printed, 20, "the tail to print a message")
        seen = shown_by_ps(tail.proc.pid)
        assert TOKEN not in seen
        assert "--token <hidden> join" in seen
        assert tail.proc.poll() is None
    finally:
        tail.proc.terminate()
        tail.finish()
    assert team.proc is not None
    server_seen = shown_by_ps(team.proc.pid)
    assert TOKEN not in server_seen and "--token <hidden>" in server_seen


def test_the_token_is_hidden_before_the_first_request(tmp_path: Path) -> None:
    """A listener that never answers: by the time the CLI connects, ps shows no token (in
    either spelling), and the process keeps its name for pgrep."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        url = f"http://127.0.0.1:{listener.getsockname()[1]}"
        proc = subprocess.Popen(
            [*CHATCTL, "--url", url, "list", f"--token={TOKEN}", "--timeout", "30"],
            env=cli_env(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            listener.settimeout(20)
            conn, _ = listener.accept()
            with conn:
                seen = shown_by_ps(proc.pid)
                assert TOKEN not in seen
                assert "list --token=<hidden> --timeout 30" in seen
                name = Path(f"/proc/{proc.pid}/comm").read_text()
                assert name.startswith("python"), name
        finally:
            proc.kill()
            proc.wait()


def test_a_token_ending_in_a_windows_line_end_works(team: ServerProcess) -> None:
    """Surrounding whitespace (a file saved on Windows) is dropped: the server accepts it."""
    listed = chatctl("list", env=cli_env(team, CHATCTL_TOKEN=f"{TOKEN}\r\n"))
    assert listed.returncode == 0, listed.stderr
