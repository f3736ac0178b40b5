"""The local default: CLIs that start at once make one server; --status sees it; --stop ends it."""

from __future__ import annotations

import os
import signal
import socket
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from chatctl import local
from tests.serve.conftest import chatctl

# Imports first, then waits for the go file, so both processes reach the start together.
ENSURE = """\
import os, sys, time
from chatctl.local import ensure_local_server
deadline = time.monotonic() + 20
while not os.path.exists(sys.argv[1]) and time.monotonic() < deadline:
    time.sleep(0.001)
print(ensure_local_server())
"""


@pytest.fixture
def fresh_user(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str]]:
    """A user with nothing yet: empty home and XDG directories; the server stopped after."""
    home = tmp_path / "home"
    runtime = tmp_path / "run"
    runtime.mkdir(mode=0o700)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))
    monkeypatch.setenv("XDG_DATA_HOME", str(home / "data"))
    monkeypatch.setenv("XDG_STATE_HOME", str(home / "state"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home / "config"))
    yield dict(os.environ)
    local.stop_local_server()
    # Whatever a failed test left behind, even a second server the lock should have stopped.
    for pid in servers_on(str(local.socket_path())):
        os.kill(pid, signal.SIGKILL)


def servers_on(sock: str) -> list[int]:
    """Pids of every process serving ``sock``."""
    found = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"serve" in argv and os.fsencode(sock) in argv and local._alive(int(proc.name)):
            found.append(int(proc.name))
    return found


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="counts processes in /proc")
def test_two_clis_start_one_server_that_status_sees_and_stop_ends(
    fresh_user: dict[str, str], tmp_path: Path
) -> None:
    sock = tmp_path / "run" / "chatctl" / "server.sock"
    # A socket left by a server that died: nobody answers on it. Its directory others may
    # read (a mkdir under umask 022) is made private; others may not write to it.
    sock.parent.mkdir(mode=0o755)
    with socket.socket(socket.AF_UNIX) as stale:
        stale.bind(str(sock))

    go = tmp_path / "go"
    starters = [
        subprocess.Popen(
            [sys.executable, "-c", ENSURE, str(go)],
            env=fresh_user,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    try:
        go.touch()
        outs = [starter.communicate(timeout=30) for starter in starters]
    finally:
        for starter in starters:
            starter.kill()
            starter.communicate()
    assert [starter.returncode for starter in starters] == [0, 0], outs
    assert [out.strip() for out, _ in outs] == [str(sock)] * 2

    (pid,) = servers_on(str(sock))
    assert int((sock.parent / "server.pid").read_text()) == pid
    for private in (
        sock,
        tmp_path / "home" / "data" / "chatctl" / "chat.db",
        tmp_path / "home" / "state" / "chatctl" / "server.log",
    ):
        assert stat.S_IMODE(private.stat().st_mode) == 0o600, private
    for directory in (sock.parent, tmp_path / "home" / "state" / "chatctl"):
        assert stat.S_IMODE(directory.stat().st_mode) == 0o700, directory

    status = subprocess.run(
        chatctl("serve", "--status"), env=fresh_user, capture_output=True, text=True, timeout=30
    )
    assert status.returncode == 0, status.stderr
    assert f"running (pid {pid})" in status.stdout
    assert str(sock) in status.stdout
    assert str(tmp_path / "home" / "data" / "chatctl" / "chat.db") in status.stdout

    # The CLI with no URL configured talks to it.
    listed = subprocess.run(
        chatctl("list", "-o", "json"), env=fresh_user, capture_output=True, text=True, timeout=30
    )
    assert listed.returncode == 0, listed.stderr
    assert servers_on(str(sock)) == [pid]

    stop = subprocess.run(
        chatctl("serve", "--stop"), env=fresh_user, capture_output=True, text=True, timeout=30
    )
    assert stop.returncode == 0, stop.stderr
    assert f"pid {pid}" in stop.stderr
    assert not local._alive(pid)
    assert servers_on(str(sock)) == []
    assert not sock.exists()

    status = subprocess.run(
        chatctl("serve", "--status"), env=fresh_user, capture_output=True, text=True, timeout=30
    )
    assert status.returncode == 3
    assert "not running" in status.stdout


def test_stop_without_a_server_says_so(fresh_user: dict[str, str]) -> None:
    stop = subprocess.run(
        chatctl("serve", "--stop"), env=fresh_user, capture_output=True, text=True, timeout=30
    )
    assert stop.returncode == 0
    assert "not running" in stop.stderr


# -- a runtime directory that is not private (issue 22, item 5) ---------------------------

SECRET = "the password is hunter2"


@pytest.mark.parametrize("kind", ["open to all", "another user's", "symlinked lock"])
def test_a_runtime_dir_that_is_not_private_is_refused_and_nothing_goes_through_it(
    fresh_user: dict[str, str], tmp_path: Path, kind: str
) -> None:
    """XDG_RUNTIME_DIR=/tmp, where another user made chatctl/ first: a listening socket
    and a lock that is a symlink to where they choose. Nothing reaches the socket, nothing
    is made through the link; every command says which directory and what to do."""
    if kind == "another user's" and os.geteuid() != 0:
        pytest.skip("making a directory another user's needs root (CI runs as root)")
    shared = tmp_path / "shared"  # as /tmp: everyone's, sticky
    shared.mkdir()
    shared.chmod(0o1777)
    rogue = shared / "chatctl"
    rogue.mkdir(mode=0o700)
    planted = tmp_path / "planted"
    (rogue / "server.lock").symlink_to(planted)
    (rogue / "server.pid").symlink_to(planted)
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(rogue / "server.sock"))
    listener.listen()
    listener.setblocking(False)
    os.chmod(rogue / "server.sock", 0o777)
    if kind == "open to all":
        rogue.chmod(0o777)
        fix = f"hint: make it private: chmod 700 {rogue}"
    elif kind == "another user's":
        rogue.chmod(0o755)
        for path in (rogue, rogue / "server.sock"):
            os.chown(path, 65534, 65534)
        fix = f"hint: remove it (as its owner or root: rm -r {rogue})"
    else:
        # A private directory of the user's, but the lock is a symlink (and nobody answers
        # on the socket, so the CLI goes for the lock to start a server).
        listener.close()
        fix = f"hint: remove it: rm {rogue / 'server.lock'}"
    env = {**fresh_user, "XDG_RUNTIME_DIR": str(shared)}
    try:
        for args in (
            ("send", "general", SECRET, "-u", "alice"),
            ("serve", "--stop"),
            ("serve", "--status"),
        ):
            r = subprocess.run(chatctl(*args), env=env, capture_output=True, text=True, timeout=30)
            assert (r.returncode, r.stdout) == (2, ""), (args, r.stderr)
            if kind == "symlinked lock" and args == ("serve", "--status"):
                error, hint = r.stderr.splitlines()  # the pid file is the link it meets
                assert hint == f"hint: remove it: rm {rogue / 'server.pid'}"
            else:
                error, hint = r.stderr.splitlines()
                assert hint.startswith(fix), (args, r.stderr)
            assert error.startswith(f"error: {rogue}"), (args, r.stderr)
        if kind != "symlinked lock":
            with pytest.raises(BlockingIOError):
                listener.accept()  # no CLI ever connected
        assert not planted.exists() and not planted.is_symlink()
        assert sorted(p.name for p in rogue.iterdir()) == [
            "server.lock",
            "server.pid",
            "server.sock",
        ]
    finally:
        listener.close()
        for pid in servers_on(str(rogue / "server.sock")):  # started through it: a failure
            os.kill(pid, signal.SIGKILL)
