"""`chatctl join` as a user runs it: a subprocess, piped, against a real server that is
stopped and restarted under it. Every exit path has a test."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from tests import postgres
from tests.helpers import ServerProcess, chatctl, cli_env, fresh_home_env, wait_for


@pytest.fixture(params=postgres.BACKENDS)
def tcp_server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ServerProcess]:
    """A server on a TCP port, once on SQLite and once on PostgreSQL."""
    with (
        postgres.database_for(request.param, str(tmp_path / "chat.db")) as db,
        ServerProcess(tmp_path, tcp=True, db=db) as s,
    ):
        yield s


CHATCTL = (sys.executable, "-m", "chatctl")
#: chatctl on a machine whose clock runs an hour ahead of the server's.
CHATCTL_CLOCK_AHEAD = (
    sys.executable,
    "-c",
    "import datetime, sys\n"
    "import chatctl.cli.join as join\n"
    "class Ahead(datetime.datetime):\n"
    "    @classmethod\n"
    "    def now(cls, tz=None):\n"
    "        return datetime.datetime.now(tz) + datetime.timedelta(hours=1)\n"
    "join.datetime = Ahead\n"
    "from chatctl.cli import main\n"
    "main()\n",
)


def make_room(server: ServerProcess, *members: str) -> str:
    env = cli_env(server)
    args = ["create", "tail", "-o", "json"]
    for m in members:
        args += ["-u", m]
    r = chatctl(*args, env=env)
    assert r.returncode == 0, r.stderr
    return str(json.loads(r.stdout)["room"]["id"])


class Tail:
    """A running `chatctl join`; its stdout and stderr read line by line in threads, each
    stderr line stamped with the moment it arrived."""

    def __init__(
        self,
        server: ServerProcess,
        room: str,
        *args: str,
        user: str = "watcher",
        command: Sequence[str] = CHATCTL,
        url: str | None = None,
    ) -> None:
        """``url``: join through it (a proxy in front of ``server``) instead."""
        self.proc = subprocess.Popen(
            [*command, "join", room, "--user", user, *args],
            env=cli_env(server) if url is None else cli_env(server, CHATCTL_URL=url),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: list[str] = []
        self.errors: list[tuple[float, str]] = []
        self._readers = [
            threading.Thread(target=self._read, daemon=True),
            threading.Thread(target=self._read_errors, daemon=True),
        ]
        for reader in self._readers:
            reader.start()
        self.room = room
        self.server = server
        self.user = user

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)

    def _read_errors(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.errors.append((time.monotonic(), line))

    def wait_joined(self) -> None:
        """Wait until the tail's Join made its user a member. Only for a user who was not
        one already: for a member, wait on what the tail printed (``wait_printed``)."""
        env = cli_env(self.server)

        def joined() -> bool:
            out = chatctl("list", "--user", self.user, "-o", "id", env=env).stdout.split()
            return self.room in out

        wait_for(joined, 20, f"{self.user} to join")

    def wait_printed(self, count: int) -> None:
        """Wait until the tail printed ``count`` lines (a replay printed: it is live)."""
        wait_for(lambda: len(self.lines) >= count, 20, f"{count} lines from the tail")

    def finish(self, timeout: float = 30) -> tuple[int, str]:
        code = self.proc.wait(timeout)
        for reader in self._readers:
            reader.join(5)
        assert self.proc.stderr is not None and self.proc.stdout is not None
        self.proc.stderr.close()
        self.proc.stdout.close()
        return code, "".join(line for _, line in self.errors)

    def messages(self) -> list[dict[str, object]]:
        return [json.loads(line) for line in self.lines]


def send(server: ServerProcess, room: str, *texts: str, user: str = "sender") -> None:
    r = chatctl(
        "send", room, "--lines", "--user", user, env=cli_env(server), input="\n".join(texts) + "\n"
    )
    assert r.returncode == 0, r.stderr


@pytest.mark.one_backend
def test_count_exits_zero_after_n_messages(tcp_server: ServerProcess) -> None:
    room = make_room(tcp_server, "sender")
    tail = Tail(tcp_server, room, "--count", "2")
    tail.wait_joined()
    send(tcp_server, room, "one", "two", "three")
    code, err = tail.finish()
    assert code == 0, err
    assert [m["text"] for m in tail.messages()] == ["one", "two"]


@pytest.mark.one_backend
def test_timeout_exits_zero_after_silence(tcp_server: ServerProcess) -> None:
    room = make_room(tcp_server)
    started = time.monotonic()
    tail = Tail(tcp_server, room, "--timeout", "1")
    code, err = tail.finish()
    assert code == 0, err
    assert 1 <= time.monotonic() - started < 15
    assert tail.lines == []
    assert err == ""  # silence is not a dropped connection: no reconnect notice


def test_history_then_live_own_messages_hidden(tcp_server: ServerProcess) -> None:
    room = make_room(tcp_server, "sender", "watcher")
    send(tcp_server, room, "old-1", "old-2", "old-3")
    tail = Tail(tcp_server, room, "--history", "2", "--count", "3")
    tail.wait_printed(2)  # watcher is a member already: the replay shows the tail is live
    send(tcp_server, room, "mine", user="watcher")  # not echoed to its own stream
    send(tcp_server, room, "new")
    code, err = tail.finish()
    assert code == 0, err
    assert [m["text"] for m in tail.messages()] == ["old-2", "old-3", "new"]


def test_include_own_shows_the_joiners_messages(tcp_server: ServerProcess) -> None:
    room = make_room(tcp_server, "sender", "watcher")
    send(tcp_server, room, "mine-before", user="watcher")
    tail = Tail(tcp_server, room, "--history", "1", "--include-own", "--count", "3")
    tail.wait_printed(1)
    send(tcp_server, room, "mine-live", user="watcher")
    send(tcp_server, room, "theirs")
    code, err = tail.finish()
    assert code == 0, err
    assert [m["text"] for m in tail.messages()] == ["mine-before", "mine-live", "theirs"]


def test_since_replays_then_goes_live(tcp_server: ServerProcess) -> None:
    room = make_room(tcp_server, "sender")
    send(tcp_server, room, "a", "b", "c")
    history = json.loads(chatctl("history", room, "-o", "json", env=cli_env(tcp_server)).stdout)
    first = history["messages"][0]["id"]
    tail = Tail(tcp_server, room, "--since", first, "--count", "3")
    tail.wait_joined()
    send(tcp_server, room, "d")
    code, err = tail.finish()
    assert code == 0, err
    assert [m["text"] for m in tail.messages()] == ["b", "c", "d"]


def test_since_the_time_a_join_line_shows_resumes_right_after_it(
    tcp_server: ServerProcess,
) -> None:
    """What a person copies from a join line (local time, to the millisecond) is what
    --since takes: the message on that line is not printed again, the next one is."""
    room = make_room(tcp_server, "sender")
    send(tcp_server, room, "first")
    send(tcp_server, room, "second")  # another call: a later millisecond
    env = cli_env(tcp_server, TZ="EST5")  # times are local: not UTC
    seen = chatctl(
        "join", room, "-u", "watcher", "-o", "table", "--history", "2", "--count", "1", env=env
    )  # fmt: skip
    assert seen.returncode == 0, seen.stderr
    shown = re.fullmatch(
        r"((?:\d{4}-\d\d-\d\d )?\d\d:\d\d:\d\d\.\d{3}) sender: first", seen.stdout.strip()
    )
    assert shown is not None, seen.stdout
    resumed = chatctl(
        "join", room, "-u", "watcher", "--since", shown[1], "--count", "1", "-o", "jsonl", env=env
    )  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr
    assert [json.loads(line)["text"] for line in resumed.stdout.splitlines()] == ["second"]
    assert "joined" not in resumed.stderr  # stderr is no terminal: no "joined" line


@pytest.mark.parametrize(
    ("action", "status", "reason"), [("kick", 4, "kicked"), ("delete", 5, "deleted")]
)
def test_kick_and_delete_end_the_tail(
    tcp_server: ServerProcess, action: str, status: int, reason: str
) -> None:
    room = make_room(tcp_server)
    tail = Tail(tcp_server, room)
    tail.wait_joined()
    env = cli_env(tcp_server)
    args = ["kick", room, "watcher", "--yes"] if action == "kick" else ["delete", room, "--yes"]
    assert chatctl(*args, env=env).returncode == 0
    code, err = tail.finish(15)
    assert code == status, err
    assert err.startswith("error: ") and reason in err.lower()
    assert "Traceback" not in err


@pytest.mark.one_backend
def test_no_reconnect_exits_3_when_the_server_goes(tcp_server: ServerProcess) -> None:
    room = make_room(tcp_server)
    tail = Tail(tcp_server, room, "--no-reconnect")
    tail.wait_joined()
    tcp_server.stop()
    code, err = tail.finish(15)
    assert code == 3, err
    assert err.startswith("error: ") and "Traceback" not in err


@pytest.mark.one_backend
def test_ctrl_c_exits_130_without_traceback(tcp_server: ServerProcess) -> None:
    room = make_room(tcp_server)
    tail = Tail(tcp_server, room)
    tail.wait_joined()
    tail.proc.send_signal(signal.SIGINT)
    code, err = tail.finish(15)
    assert code == 130
    assert "Traceback" not in err


@pytest.mark.one_backend
def test_closed_pipe_exits_zero_quietly(tcp_server: ServerProcess) -> None:
    room = make_room(tcp_server, "sender")
    env = cli_env(tcp_server)
    pipeline = subprocess.Popen(
        [
            "bash",
            "-c",
            f"{sys.executable} -m chatctl join {room} --user watcher | head -n 3; "
            'echo "join=${PIPESTATUS[0]}" >&2',
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    Tail.wait_joined(type("T", (), {"server": tcp_server, "room": room, "user": "watcher"})())  # type: ignore[arg-type]
    # Keep sending until the pipeline ends: join notices the closed pipe on its next write.
    n = 0
    while pipeline.poll() is None and n < 200:
        send(tcp_server, room, f"m{n}")
        n += 1
    out, err = pipeline.communicate(timeout=30)
    assert out.splitlines()[:3] and len(out.splitlines()) == 3
    assert err.strip().splitlines()[-1] == "join=0"
    assert "Traceback" not in err and "Broken pipe" not in err


def test_restarts_lose_and_repeat_nothing(tcp_server: ServerProcess) -> None:
    """500 messages, the server stopped and restarted 3 times: each printed once, in order."""
    room = make_room(tcp_server, "sender")
    tail = Tail(tcp_server, room, "--count", "500")
    tail.wait_joined()
    texts = [f"msg-{i:03d}" for i in range(500)]
    for chunk in range(4):
        send(tcp_server, room, *texts[chunk * 125 : (chunk + 1) * 125])
        if chunk < 3:
            tcp_server.restart()
    code, err = tail.finish(90)
    assert code == 0, err
    assert [m["text"] for m in tail.messages()] == texts
    assert "reconnect" in err  # the user was told, on stderr


def test_a_resume_before_the_first_message_goes_by_the_servers_clock(
    tcp_server: ServerProcess,
) -> None:
    """The tail's clock is an hour ahead. Its stream drops before any message came, one is
    sent while it is away: resuming from "when I joined" by its own clock would skip it."""
    room = make_room(tcp_server, "sender")
    tail = Tail(tcp_server, room, "--count", "1", command=CHATCTL_CLOCK_AHEAD)
    tail.wait_joined()
    tail.proc.send_signal(signal.SIGSTOP)  # away: it can neither read nor reconnect
    try:
        tcp_server.restart()
        send(tcp_server, room, "while-away")
    finally:
        tail.proc.send_signal(signal.SIGCONT)
    code, err = tail.finish(30)
    assert code == 0, err
    assert [m["text"] for m in tail.messages()] == ["while-away"]
    assert "reconnect" in err


@pytest.mark.one_backend
def test_a_silent_dead_connection_is_noticed_by_pings(tcp_server: ServerProcess) -> None:
    """The server freezes (SIGSTOP): no close frame ever comes. Pings notice within three
    intervals, and once the server thaws the tail resumes with nothing lost. The interval
    is 0.5 s here (``CHATCTL_PING_INTERVAL``), not 8, so that this takes seconds: the
    default's 24 s is checked by ``test_the_default_pings_are_the_readmes``."""
    room = make_room(tcp_server, "sender")
    fast = ["env", "CHATCTL_PING_INTERVAL=0.5", *CHATCTL]
    tail = Tail(tcp_server, room, "--count", "2", command=fast)
    tail.wait_joined()
    send(tcp_server, room, "before")
    wait_for(lambda: tail.lines, 10, "the first message")
    assert tcp_server.proc is not None
    frozen = time.monotonic()
    tcp_server.proc.send_signal(signal.SIGSTOP)
    try:
        noticed = wait_for(
            lambda: [t for t, line in tail.errors if "reconnecting" in line], 40, "a notice"
        )[0]
    finally:
        tcp_server.proc.send_signal(signal.SIGCONT)
    assert noticed - frozen <= 10  # 1.5 s nominal; the default would take up to 24 s
    send(tcp_server, room, "after")
    code, err = tail.finish(60)
    assert code == 0, err
    assert [m["text"] for m in tail.messages()] == ["before", "after"]


@pytest.mark.one_backend
def test_the_default_pings_are_the_readmes(tcp_server: ServerProcess) -> None:
    """Without ``CHATCTL_PING_INTERVAL`` a Join pings every 8 s and gives up on a ping after
    16 more, so a silent connection is noticed within 24 s: what the README promises."""
    from chatctl.client import Client

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    row = readme.split("| `CHATCTL_PING_INTERVAL` |", 1)[1].split("\n", 1)[0]
    assert "pings (default 8," in row and "(24 s by default)" in row
    with Client(tcp_server.url) as client:
        stream = client.join()
        try:
            assert (stream.ws.ping_interval, stream.ws.ping_timeout) == (8.0, 16.0)
        finally:
            stream.close()


@pytest.mark.one_backend
def test_a_ping_interval_out_of_range_is_refused(tcp_server: ServerProcess) -> None:
    room = make_room(tcp_server, "sender")
    for value in ("fast", "0.1"):
        env = cli_env(tcp_server, CHATCTL_PING_INTERVAL=value)
        r = chatctl("join", room, "--user", "w", env=env)
        assert r.returncode == 2, r.stderr
        assert r.stdout == ""
        assert r.stderr.splitlines() == [
            f"error: CHATCTL_PING_INTERVAL must be seconds from 0.5 to 300, not {value!r}:"
            " fix or unset it"
        ]


def test_join_on_the_local_server_starts_it_again_after_serve_stop(tmp_path: Path) -> None:
    """No URL: the embedded local server. `chatctl serve --stop` under a tail: the tail
    starts it again (as one-shot commands do) and misses nothing sent meanwhile."""
    env = fresh_home_env(tmp_path / "home")
    try:
        assert chatctl("create", "general", "-u", "alice", env=env).returncode == 0
        tail = subprocess.Popen(
            [*CHATCTL, "join", "general", "--user", "watcher", "--count", "1"],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        try:
            def joined() -> bool:
                listed = chatctl("list", "--user", "watcher", "-o", "tsv", env=env)
                return "general" in listed.stdout

            wait_for(joined, 20, "the watcher to join")
            stopped = chatctl("serve", "--stop", env=env)
            assert "stopped the local server" in stopped.stderr
            # Only the tail can start it again: nothing else runs meanwhile.
            wait_for(
                lambda: chatctl("serve", "--status", env=env).returncode == 0,
                30,
                "the tail to start the local server again",
            )
            r = chatctl("send", "general", "after the restart", "--user", "alice", env=env)
            assert r.returncode == 0, r.stderr
            out, err = tail.communicate(timeout=60)
        finally:
            tail.kill()
        assert tail.returncode == 0, err
        assert json.loads(out)["text"] == "after the restart"
        assert "reconnect" in err
    finally:
        chatctl("serve", "--stop", env=env)
