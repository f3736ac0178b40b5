"""Profiles: chatctl config, file privacy, and the order in which sources win."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from pytest_httpx import HTTPXMock

from tests.conftest import Run


def test_set_get_list_use_path(cli: Run, isolated_env: Path) -> None:
    assert cli("config", "set", "url", "http://work.test", "--profile", "work").code == 0
    assert cli("config", "set", "token", "s3cret", "--profile", "work").code == 0
    path = Path(cli("config", "path").stdout.strip())
    assert path == isolated_env / "chatctl.toml"
    assert os.stat(path).st_mode & 0o777 == 0o600
    assert cli("config", "get", "token", "--profile", "work").stdout.strip() == "********"
    assert (
        cli("config", "get", "token", "--profile", "work", "--show-token").stdout.strip()
        == "s3cret"
    )
    listing = cli("config", "list").stdout
    assert "work" in listing and "s3cret" not in listing
    assert cli("config", "use", "work").code == 0
    assert cli("config", "get", "url").stdout.strip() == "http://work.test"
    assert cli("config", "unset", "token").code == 0
    assert cli("config", "get", "token").code == 2
    assert cli("config", "use", "nope").code == 2
    assert cli("config", "set", "colour", "red").code == 2


def test_precedence(cli: Run, httpx_mock: HTTPXMock, monkeypatch: pytest.MonkeyPatch) -> None:
    cli("config", "set", "url", "http://profile.test")
    cli("config", "set", "token", "profile-token")
    httpx_mock.add_response(url="http://profile.test/v1/chat/List", json={"rooms": []})
    assert cli("list").code == 0
    assert httpx_mock.get_requests()[-1].headers["Authorization"] == "Bearer profile-token"

    monkeypatch.setenv("CHATCTL_URL", "http://env.test")
    monkeypatch.setenv("CHATCTL_TOKEN", "env-token")
    httpx_mock.add_response(url="http://env.test/v1/chat/List", json={"rooms": []})
    assert cli("list").code == 0
    assert httpx_mock.get_requests()[-1].headers["Authorization"] == "Bearer env-token"

    httpx_mock.add_response(url="http://flag.test/v1/chat/List", json={"rooms": []})
    assert cli("list", "--url", "http://flag.test", "--token", "flag-token").code == 0
    assert httpx_mock.get_requests()[-1].headers["Authorization"] == "Bearer flag-token"


def test_broken_config_is_a_clear_error(cli: Run, isolated_env: Path) -> None:
    (isolated_env / "chatctl.toml").write_text("current = [unclosed\n")
    r = cli("list")
    assert r.code == 2
    assert r.stderr.startswith("error: config file") and "not valid TOML" in r.stderr


def test_set_token_from_stdin_keeps_it_out_of_the_command_line(
    cli: Run, isolated_env: Path
) -> None:
    r = cli("config", "set", "token", "-", "--profile", "work", input="s3cret-from-stdin\n")
    assert r.code == 0, r.stderr
    shown = cli("config", "get", "token", "--profile", "work", "--show-token")
    assert shown.stdout.strip() == "s3cret-from-stdin"
    assert cli("config", "set", "token", "-", input="").code == 2


def test_a_mistyped_chatctl_profile_is_the_same_error_as_a_mistyped_flag(
    cli: Run, monkeypatch: pytest.MonkeyPatch
) -> None:
    cli("config", "set", "url", "http://work.test", "--profile", "work")
    flag = cli("--profile", "wrok", "list")
    monkeypatch.setenv("CHATCTL_PROFILE", "wrok")
    env = cli("list")
    assert flag.code == env.code == 2
    assert flag.stderr.startswith("error: no profile named 'wrok'")
    assert env.stderr.startswith("error: no profile named 'wrok'")
    assert "hint: list them with: chatctl config list" in env.stderr


@pytest.mark.parametrize(
    ("toml", "error"),
    [
        ("[profiles.default]\nurl = 5\n", "url in profile 'default' must be a string, not int"),
        ('[profiles.w]\nuser = ["a"]\n', "user in profile 'w' must be a string, not list"),
        ("current = 1\n", "current must be a string"),
        ('profiles = "x"\n', "profiles must be a table"),
    ],
)
def test_wrongly_typed_values_name_the_key_and_the_file(
    cli: Run, isolated_env: Path, toml: str, error: str
) -> None:
    path = isolated_env / "chatctl.toml"
    path.write_text(toml)
    r = cli("list")
    assert r.code == 2
    assert r.stderr.splitlines()[0] == f"error: config file {path}: {error}"
    assert "Traceback" not in r.stderr


def test_a_token_others_can_read_is_refused_and_a_file_without_one_is_not(
    cli: Run, isolated_env: Path, httpx_mock: HTTPXMock
) -> None:
    path = isolated_env / "chatctl.toml"
    path.write_text('[profiles.default]\nurl = "http://chat.test"\n')
    path.chmod(0o644)
    httpx_mock.add_response(json={"rooms": []})
    assert cli("list").code == 0
    path.write_text('[profiles.default]\nurl = "http://chat.test"\ntoken = "t"\n')
    r = cli("list")
    assert r.code == 2
    assert "holds a token and other users can read it" in r.stderr


def test_url_credentials_never_override_the_token(
    cli: Run, httpx_mock: HTTPXMock
) -> None:
    r = cli("list", "--url", "https://bob:pw@chat.test", "--token", "mine", "-v")
    assert r.code == 2
    assert "pw" not in r.stderr and "bob" not in r.stderr
    assert httpx_mock.get_requests() == []
