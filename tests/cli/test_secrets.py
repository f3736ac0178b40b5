"""Tokens stay secret (issue 22, item 4), in-process: what is hidden from ``ps``, and a
token that cannot travel in an HTTP header refused from every source with a line that
names the problem and never the token. (The real processes: tests/e2e/test_secrets.py.)"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import httpx
import pytest
from pytest_httpx import HTTPXMock

from chatctl.cli import _without_secrets
from chatctl.client.transport import _reason
from tests.conftest import Run
from tests.helpers import CHATCTL_HEADERS, free_port


@pytest.mark.parametrize(
    ("given", "shown"),
    [
        (["--token", "T", "join", "r"], ["--token", "<hidden>", "join", "r"]),
        (["join", "r", "--token=T"], ["join", "r", "--token=<hidden>"]),
        (
            ["serve", "--token", "a", "--token", "b", "--port", "0"],
            ["serve", "--token", "<hidden>", "--token", "<hidden>", "--port", "0"],
        ),
        (
            ["serve", "--db=postgresql://chat:pw@db/chat?password=pw&sslmode=require"],
            ["serve", "--db=postgresql://chat:<hidden>@db/chat?password=<hidden>&sslmode=require"],
        ),
        (
            ["--profile", "w", "config", "set", "token", "T"],
            ["--profile", "w", "config", "set", "token", "<hidden>"],
        ),
        (
            ["config", "set", "-p", "w", "token", "T"],
            ["config", "set", "-p", "w", "token", "<hidden>"],
        ),
        (
            ["config", "set", "url", "https://bob:pw@chat.test", "--profile", "w"],
            ["config", "set", "url", "https://bob:<hidden>@chat.test", "--profile", "w"],
        ),
        # Nothing to hide: the arguments stay as they are (and setproctitle is not loaded).
        (["config", "set", "token", "-"], ["config", "set", "token", "-"]),
        (["config", "set", "user", "T"], ["config", "set", "user", "T"]),
        (["send", "r", "--", "--token", "T"], ["send", "r", "--", "--token", "T"]),
        (["serve", "--db", "/var/lib/chat.db"], ["serve", "--db", "/var/lib/chat.db"]),
    ],
)
def test_what_ps_is_shown(given: list[str], shown: list[str]) -> None:
    assert _without_secrets(given) == shown


BAD = [
    ("SECRET\u00e9", "a non-ASCII character at position 7"),
    ("SEC\rRET", "a carriage return (CR) at position 4"),
    ("SEC\nRET\n", "a line feed (LF) at position 4"),
    ("SEC\x1bRET", "a control character (U+001B) at position 4"),
    ("SEC RET", "a space at position 4"),
]


@pytest.mark.parametrize(("bad", "problem"), BAD)
@pytest.mark.parametrize("source", ["--token", "CHATCTL_TOKEN", "profile", "M3O_API_TOKEN"])
def test_a_token_that_cannot_be_a_header_is_refused_unseen(
    cli: Run,
    monkeypatch: pytest.MonkeyPatch,
    isolated_env: Path,
    bad: str,
    problem: str,
    source: str,
) -> None:
    args = ["list", "--url", f"http://127.0.0.1:{free_port()}"]  # nothing is sent there
    config = isolated_env / "chatctl.toml"
    if source == "--token":
        args += ["--token", bad]
    elif source == "profile":
        config.write_text(f"[profiles.default]\ntoken = {json.dumps(bad)}\n")
        config.chmod(0o600)
    else:
        monkeypatch.setenv(source, bad)
    r = cli(*args)
    assert (r.code, r.stdout) == (2, "")
    error, hint = r.stderr.splitlines()
    where = f"profile default in {config}" if source == "profile" else source
    assert error == (
        f"error: the token from {where} cannot be sent: it holds {problem}; a token is "
        "printable ASCII without spaces (it travels in an HTTP header)"
    )
    assert hint.startswith("hint: ")
    assert "SEC" not in r.stderr


def test_surrounding_whitespace_is_dropped_before_sending(
    cli: Run, monkeypatch: pytest.MonkeyPatch, httpx_mock: HTTPXMock
) -> None:
    httpx_mock.add_response(json={"rooms": []}, headers=CHATCTL_HEADERS)
    monkeypatch.setenv("CHATCTL_TOKEN", " tok-1\r\n")
    assert cli("list", "--url", "http://chat.test", "-o", "json").code == 0
    request = httpx_mock.get_request()
    assert request is not None and request.headers["Authorization"] == "Bearer tok-1"


def test_config_set_stores_a_token_clean_and_refuses_one_it_could_not_send(
    cli: Run, isolated_env: Path
) -> None:
    config = isolated_env / "chatctl.toml"
    for args, stdin in ((["SEC\rRET"], ""), (["-"], "SEC RET\n")):
        r = cli("config", "set", "token", *args, input=stdin)
        assert (r.code, r.stdout) == (2, "")
        assert "SEC" not in r.stderr and "cannot be sent" in r.stderr
        assert not config.exists()
    assert cli("config", "set", "token", "-", input=" tok-1\r\n").code == 0
    assert cli("config", "get", "token", "--show-token").stdout == "tok-1\n"


def test_a_transport_error_never_quotes_a_header() -> None:
    """h11 names a header value it refuses in full; the message the user sees does not."""
    with (
        socket.create_server(("127.0.0.1", 0)) as listener,
        httpx.Client(headers={"Authorization": "Bearer SEC\rRET"}) as client,
        pytest.raises(httpx.LocalProtocolError) as raised,
    ):
        client.get(f"http://127.0.0.1:{listener.getsockname()[1]}/")
    assert "SEC" in str(raised.value)  # what would have been printed
    assert "SEC" not in _reason(raised.value)
    assert "<redacted>" in _reason(raised.value)


# -- the config file says where the token goes: nobody else may write it ------------------


@pytest.mark.parametrize("kind", ["writable by others", "another user's"])
def test_a_config_file_someone_else_could_write_is_refused(
    cli: Run, isolated_env: Path, kind: str
) -> None:
    config = isolated_env / "chatctl.toml"
    config.write_text('[profiles.default]\nurl = "http://elsewhere.test"\n')
    if kind == "writable by others":
        config.chmod(0o666)
        fix = f"hint: make it private with: chmod 600 {config}"
    else:
        if os.geteuid() != 0:
            pytest.skip("making a file another user's needs root (CI runs as root)")
        config.chmod(0o644)
        os.chown(config, 65534, 65534)
        fix = "hint: use a config file of your own (CHATCTL_CONFIG), or remove that one"
    r = cli("list")
    assert (r.code, r.stdout) == (2, "")
    error, hint = r.stderr.splitlines()
    assert error.startswith(f"error: config file {config} ")
    assert hint == fix


def test_saving_the_config_never_writes_through_a_planted_link(
    cli: Run, isolated_env: Path
) -> None:
    target = isolated_env / "planted"
    (isolated_env / f".chatctl.toml.{os.getpid()}.tmp").symlink_to(target)
    assert cli("config", "set", "token", "tok-1").code == 0
    assert not target.exists()
    config = isolated_env / "chatctl.toml"
    assert "tok-1" in config.read_text()
    assert config.stat().st_mode & 0o777 == 0o600


@pytest.mark.parametrize(
    ("url", "error"),
    [
        ("http://bob:SECRET@[::1", "error: malformed URL: Invalid IPv6 URL"),
        ("http://bob:SECRET@chat.test:99999", "error: malformed URL: Port out of range 0-65535"),
        ("http://bob:SECRET@chat.test", "error: the URL http://chat.test holds credentials"),
    ],
)
def test_a_url_with_a_password_is_refused_without_showing_it(
    cli: Run, httpx_mock: HTTPXMock, url: str, error: str
) -> None:
    r = cli("list", "--url", url)
    assert (r.code, r.stdout) == (2, "")
    assert r.stderr.startswith(error)
    assert "SECRET" not in r.stderr and "Traceback" not in r.stderr
    assert httpx_mock.get_requests() == []
