"""Every failure is one line (plus a hint) on stderr, a documented exit status, never a
traceback: full disks, closed stdout, bad config values, servers that are not m3o chat
servers or do not answer, URLs chatctl cannot use. The CLI runs as a real process."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest

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


def test_a_server_that_accepts_and_never_answers_is_reported_within_15s() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        url = f"http://127.0.0.1:{listener.getsockname()[1]}"
        started = time.monotonic()
        r = chatctl("list", env=cli_env(CHATCTL_URL=url), timeout=60)
        took = time.monotonic() - started
        quick = chatctl("send", "r", "hi", "--timeout", "1", env=cli_env(CHATCTL_URL=url))
    assert r.returncode == 3
    assert took < 15, f"{took:.1f}s"
    assert one_error(r.stderr) == f"error: {url} did not answer within 10s"
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
