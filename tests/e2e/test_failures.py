"""Every failure is one line (plus a hint) on stderr, a documented exit status, never a
traceback: full disks, closed stdout, bad config values, servers that are not m3o chat
servers or do not answer, URLs chatctl cannot use. The CLI runs as a real process."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest

from tests.compat.m3o_standin import RunningStandIn
from tests.conftest import Run
from tests.e2e.proxy import serve
from tests.helpers import ServerProcess, chatctl, cli_env

CHATCTL = f"{sys.executable} -m chatctl"


def one_error(stderr: str) -> str:
    """The error line; at most a hint and a count follow it, and never a traceback."""
    lines = stderr.splitlines()
    assert "Traceback" not in stderr, stderr
    assert lines and lines[0].startswith("error: "), stderr
    assert all(line.startswith(("hint: ", "chatctl: ")) for line in lines[1:]), stderr
    return lines[0]


def shell(script: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", "-c", script], env=env, capture_output=True, text=True, timeout=60
    )


def test_a_full_disk(server: ServerProcess) -> None:
    env = cli_env(server, CHATCTL_USER="u")
    assert chatctl("create", "r", "-u", "u", env=env).returncode == 0
    r = shell(f"{CHATCTL} list -o jsonl > /dev/full", env)
    assert r.returncode == 1
    assert one_error(r.stderr) == "error: cannot write the output: No space left on device"
    r = shell(f"seq 3 | {CHATCTL} send r --lines -o id > /dev/full", env)
    assert r.returncode == 1
    assert one_error(r.stderr) == "error: cannot write the output: No space left on device"
    assert r.stderr.splitlines()[-1].startswith("chatctl: 1 message sent;")


@pytest.mark.one_backend
@pytest.mark.parametrize("args", ["list", "--version", "list -o json"])
def test_a_closed_stdout(server: ServerProcess, args: str) -> None:
    env = cli_env(server)
    r = shell(f"{CHATCTL} {args} >&-", env)
    assert r.returncode == 1
    assert one_error(r.stderr) == "error: cannot write the output: stdout is closed"


def test_a_config_value_of_the_wrong_type(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text("[profiles.default]\nurl = 5\n")
    r = chatctl("list", env=cli_env(CHATCTL_CONFIG=str(config)))
    assert r.returncode == 2
    assert one_error(r.stderr) == (
        f"error: config file {config}: url in profile 'default' must be a string, not int"
    )


def test_a_config_file_others_can_read_is_refused_when_it_holds_a_token(
    tmp_path: Path,
) -> None:
    config = tmp_path / "config.toml"
    config.write_text('[profiles.default]\ntoken = "s3cret"\n')
    config.chmod(0o644)
    r = chatctl("list", env=cli_env(CHATCTL_CONFIG=str(config)))
    assert r.returncode == 2
    assert "other users can read it (mode 0644)" in one_error(r.stderr)
    assert f"hint: make it private with: chmod 600 {config}" in r.stderr
    assert "s3cret" not in r.stderr


def test_an_http_500_that_is_not_an_m3o_error() -> None:
    def broken(request: BaseHTTPRequestHandler, body: bytes) -> tuple[int, dict[str, str], bytes]:
        page = b"<html><body><h1>Internal Server Error</h1><script>x</script></body></html>"
        return 500, {"Content-Type": "text/html"}, page

    with serve(broken) as url:
        r = chatctl("list", env=cli_env(CHATCTL_URL=url))
    assert r.returncode == 1
    assert one_error(r.stderr) == (
        "error: Internal Server Error (the answer is not an m3o error object: text/html) "
        "(HTTP 500)"
    )
    assert "<html" not in r.stderr


@pytest.mark.parametrize("status", [200, 404])
def test_a_plain_web_server_is_not_an_m3o_api(status: int) -> None:
    def website(request: BaseHTTPRequestHandler, body: bytes) -> tuple[int, dict[str, str], bytes]:
        return status, {"Content-Type": "text/html; charset=utf-8"}, b"<!doctype html><p>Hi"

    with serve(website) as url:
        r = chatctl("list", env=cli_env(CHATCTL_URL=url))
        join = chatctl("join", "0190f2b4-0000-7000-8000-000000000000", env=cli_env(CHATCTL_URL=url))
    assert r.returncode == 3
    assert one_error(r.stderr) == (
        f"error: {url} is not an m3o Chat API: it answered HTTP {status} with text/html"
    )
    assert "hint: check --url" in r.stderr and "<p>" not in r.stderr
    assert join.returncode == 3
    assert "is not an m3o Chat API" in one_error(join.stderr)


@pytest.mark.parametrize("url", ["ftp://chat.example.com", "ws://chat.example.com"])
def test_an_unsupported_url_scheme(url: str) -> None:
    r = chatctl("list", "--url", url, env=cli_env())
    assert r.returncode == 2
    assert one_error(r.stderr) == f"error: unsupported URL scheme {url.split(':')[0]!r}"


@pytest.mark.one_backend
def test_credentials_in_a_url_are_never_printed_nor_used(server: ServerProcess) -> None:
    url = "http://alice:hunter2@127.0.0.1:9"
    for args in (["list"], ["list", "-v"], ["send", "r", "hi", "-v"]):
        r = chatctl(*args, "--url", url, "--token", "tok", env=cli_env())
        assert r.returncode == 2
        assert "hunter2" not in r.stderr + r.stdout and "alice" not in r.stderr
        assert one_error(r.stderr) == (
            "error: the URL http://127.0.0.1:9 holds credentials (user:password@); "
            "chatctl does not send them"
        )


def test_a_server_that_accepts_and_never_answers_is_reported_within_the_default_timeout(
    cli: Run, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without --timeout a call gets the default budget (10 s, as README says): the same
    path run in-process with the default lowered to 1 s, so the test waits 1 s, not 10."""
    import chatctl.client as client

    assert client.DEFAULT_TIMEOUT == 10.0
    assert "(default 10)." in chatctl("list", "--help", env=cli_env(COLUMNS="200")).stdout
    monkeypatch.setattr(client, "DEFAULT_TIMEOUT", 1.0)
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        url = f"http://127.0.0.1:{listener.getsockname()[1]}"
        monkeypatch.setenv("CHATCTL_URL", url)
        started = time.monotonic()
        r = cli("list")
        took = time.monotonic() - started
        quick = chatctl("send", "r", "hi", "--timeout", "1", env=cli_env(CHATCTL_URL=url))
    assert r.code == 3
    assert took < 3, f"{took:.1f}s"
    assert one_error(r.stderr) == f"error: {url} did not answer within 1s"
    assert quick.returncode == 3
    assert one_error(quick.stderr) == f"error: {url} did not answer within 1s"


def test_a_wrong_url_still_fails_fast() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))  # bound, not listening: connection refused
        url = f"http://127.0.0.1:{s.getsockname()[1]}"
        started = time.monotonic()
        r = chatctl("list", env=cli_env(CHATCTL_URL=url))
    assert r.returncode == 3
    assert time.monotonic() - started < 5
    assert one_error(r.stderr) == f"error: cannot reach {url}: connection refused"


# -- exits that mean what the README says (issue 22) ---------------------------------------


def test_a_batch_stopped_by_bad_input_after_sending_some_exits_1(server: ServerProcess) -> None:
    env = cli_env(server, CHATCTL_USER="u")
    assert chatctl("create", "r", "-u", "u", env=env).returncode == 0
    r = shell(f"printf 'ok\\n\\xff\\nnever\\n' | {CHATCTL} send r --lines -o id", env)
    assert r.returncode == 1, r.stderr  # exit 2 would say nothing was sent
    assert one_error(r.stderr) == "error: line 2: not UTF-8 text"
    assert r.stderr.splitlines()[-1] == "chatctl: 1 message sent before it; the rest was not sent"
    stored = chatctl("history", "r", "-o", "jsonl", env=env).stdout.splitlines()
    assert [json.loads(m)["text"] for m in stored] == ["ok"]
    assert r.stdout.split() == [json.loads(stored[0])["id"]]  # what was stored, and no more
    first = shell(f"printf '\\xff\\nok\\n' | {CHATCTL} send r --lines -o id", env)
    assert first.returncode == 2  # nothing was sent
    assert first.stderr.splitlines()[-1] == (
        "chatctl: 0 messages sent before it; the rest was not sent"
    )
    assert first.stdout == ""


def test_a_batch_sent_a_line_at_a_time_stopped_by_bad_input_exits_1(
    m3o_room_server: RunningStandIn,
) -> None:
    # A plain m3o server has no bulk sends: the batch is one Send a line.
    srv = m3o_room_server
    env = cli_env(CHATCTL_URL=srv.url, CHATCTL_TOKEN=srv.token, CHATCTL_USER="u")
    assert chatctl("create", "r", "-u", "u", env=env).returncode == 0
    r = shell(f"printf 'ok\\n\\xff\\nnever\\n' | {CHATCTL} send r --lines", env)
    assert r.returncode == 1, r.stderr
    assert one_error(r.stderr) == "error: line 2: not UTF-8 text"
    assert r.stderr.splitlines()[-1] == "chatctl: 1 message sent before it; the rest was not sent"
    sends = [q for q in srv.requests if q.endpoint == "Send"]
    assert [q.body["text"] for q in sends] == ["ok"]


def test_a_failed_send_writes_nothing_on_stdout(server: ServerProcess) -> None:
    env = cli_env(server, CHATCTL_USER="u")
    for output in ("table", "json", "id"):
        r = chatctl("send", "0190f2b4-0000-7000-8000-000000000000", "hi", "-o", output, env=env)
        assert r.returncode == 5, r.stderr
        assert r.stdout == "", output


@pytest.mark.parametrize("args", [["send", "{room}", "hi"], ["history", "{room}"]])
def test_an_unknown_room_on_a_plain_m3o_server_exits_5(
    m3o_server: RunningStandIn, args: list[str]
) -> None:
    # m3o answers it 400 "room not found" (the group edition: "group not found").
    env = cli_env(CHATCTL_URL=m3o_server.url, CHATCTL_TOKEN=m3o_server.token, CHATCTL_USER="u")
    room = "0190f2b4-0000-7000-8000-000000000000"
    r = chatctl(*(a.format(room=room) for a in args), env=env)
    assert r.returncode == 5, r.stderr
    assert f"{m3o_server.edition} not found" in one_error(r.stderr)
    assert "HTTP 400" in r.stderr
    assert r.stdout == ""
