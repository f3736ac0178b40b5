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
