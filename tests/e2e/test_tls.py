"""The client over TLS, against the real thing: ``chatctl create``, ``send`` and ``join``
(https:// and wss://) with ``--ca-cert`` against ``chatctl serve --tls-cert --tls-key``
holding a certificate from a private CA made in the test (trustme), with user tokens. A
profile's ca_cert and SSL_CERT_FILE trust it too; without them the certificate is
refused in one line naming it, exit 3, with the hint to use --ca-cert."""

from __future__ import annotations

import hashlib
import json
import ssl
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import trustme

from tests.helpers import chatctl, cli_env, free_port, fresh_home_env, wait_for

ALICE = "tok-tls-alice-41c7"
BOB = "tok-tls-bob-9e02"


class TLSServer:
    def __init__(self, url: str, ca: Path, other_ca: Path) -> None:
        self.url = url
        self.ca = ca
        self.other_ca = other_ca


def _answers(url: str, ca: Path, proc: subprocess.Popen[bytes], log: Path) -> bool:
    if proc.poll() is not None:
        raise AssertionError(f"chatctl serve exited {proc.returncode}: {log.read_text()}")
    try:
        return httpx.get(f"{url}/health", verify=ssl.create_default_context(cafile=ca)).is_success
    except httpx.TransportError:
        return False


@pytest.fixture
def tls_server(tmp_path: Path) -> Iterator[TLSServer]:
    ca = trustme.CA()
    cert = ca.issue_cert("localhost", "127.0.0.1")
    cert_file, key_file, ca_file = tmp_path / "cert.pem", tmp_path / "key.pem", tmp_path / "ca.pem"
    cert.private_key_and_cert_chain_pem.write_to_path(str(cert_file))
    key_file.touch(mode=0o600)  # serve refuses a key others may read
    cert.private_key_pem.write_to_path(str(key_file))
    ca.cert_pem.write_to_path(str(ca_file))
    other = tmp_path / "other-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(other))
    tokens = tmp_path / "tokens"
    tokens.write_text(
        "".join(
            f"sha256:{hashlib.sha256(token.encode()).hexdigest()} tenant=team user={user}\n"
            for token, user in ((ALICE, "alice"), (BOB, "bob"))
        )
    )
    tokens.chmod(0o600)
    port = free_port()
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "chatctl", "serve", "--port", str(port),
             "--tls-cert", str(cert_file), "--tls-key", str(key_file),
             "--tokens-file", str(tokens), "--db", str(tmp_path / "chat.db")],
            stdout=out, stderr=out, env=cli_env(),
        )  # fmt: skip
    url = f"https://localhost:{port}"
    try:
        wait_for(lambda: _answers(url, ca_file, proc, log), 15, "chatctl serve over TLS")
        yield TLSServer(url, ca_file, other)
    finally:
        proc.kill()
        proc.wait(timeout=10)


def test_create_send_join_over_https_and_wss_with_ca_cert(tls_server: TLSServer) -> None:
    alice = cli_env(CHATCTL_URL=tls_server.url, CHATCTL_USER="alice", CHATCTL_TOKEN=ALICE)
    bob = cli_env(CHATCTL_URL=tls_server.url, CHATCTL_USER="bob", CHATCTL_TOKEN=BOB)
    ca = ["--ca-cert", str(tls_server.ca)]
    r = chatctl("create", "secure", "-u", "bob", "--private", "-o", "id", *ca, env=alice)
    assert r.returncode == 0, r.stderr
    room = r.stdout.strip()
    r = chatctl("send", room, "over tls", "-o", "id", *ca, env=alice)
    assert r.returncode == 0, r.stderr
    r = chatctl(
        "join", room, "--history", "1", "--count", "1", "-o", "jsonl", *ca,
        env=bob, timeout=30,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    message = json.loads(r.stdout)
    assert (message["text"], message["user_id"]) == ("over tls", "alice")


def test_a_profiles_ca_cert_and_ssl_cert_file_trust_the_ca(
    tls_server: TLSServer, tmp_path: Path
) -> None:
    config = tmp_path / "config.toml"
    config.write_text(
        f'[profiles.default]\nurl = "{tls_server.url}"\nca_cert = "{tls_server.ca}"\n'
    )
    config.chmod(0o600)
    r = chatctl("list", env=cli_env(CHATCTL_CONFIG=str(config), CHATCTL_TOKEN=ALICE))
    assert r.returncode == 0, r.stderr
    env = cli_env(CHATCTL_URL=tls_server.url, SSL_CERT_FILE=str(tls_server.ca), CHATCTL_TOKEN=ALICE)
    r = chatctl("list", env=env)
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize("trusting", ["system store", "another CA"])
def test_an_untrusted_certificate_is_one_line_naming_it(
    tls_server: TLSServer, trusting: str
) -> None:
    extra = [] if trusting == "system store" else ["--ca-cert", str(tls_server.other_ca)]
    env = cli_env(CHATCTL_URL=tls_server.url, CHATCTL_TOKEN=ALICE)
    for args in (["list"], ["join", "0190f2b4-0000-7000-8000-000000000000", "--user", "u"]):
        r = chatctl(*args, *extra, env=env)
        assert r.returncode == 3, r.stderr
        lines = r.stderr.splitlines()
        assert lines[0].startswith(f"error: the certificate of {tls_server.url} is not trusted")
        assert "certificate verify failed" in lines[0] or "unable to get" in lines[0]
        assert lines[1].startswith("hint: if a private CA signed it, trust that CA with --ca-cert")
        assert len(lines) == 2


def test_a_ca_cert_that_cannot_be_read_is_a_usage_error(tls_server: TLSServer) -> None:
    r = chatctl("list", "--ca-cert", "/nonexistent/ca.pem", env=cli_env(CHATCTL_URL=tls_server.url))
    assert r.returncode == 2
    assert r.stderr.startswith("error: cannot use the CA certificate /nonexistent/ca.pem")


def test_a_members_first_commands_act_as_the_tokens_user(
    tls_server: TLSServer, tmp_path: Path
) -> None:
    """Issue 22: a user token and no user anywhere (a fresh HOME: no profile, no
    CHATCTL_USER), given by CHATCTL_TOKEN (alice) and by --token (bob): every command acts
    as the token's user; naming another user is still refused, with a hint that fits."""
    home = fresh_home_env(tmp_path / "home", CHATCTL_URL=tls_server.url)
    ca = ["--ca-cert", str(tls_server.ca)]
    alice = {**home, "CHATCTL_TOKEN": ALICE}
    bob = ["--token", BOB, *ca]

    r = chatctl("whoami", "-o", "json", *ca, env=alice)
    assert r.returncode == 0, r.stderr
    identity = {"tenant": "team", "user_id": "alice", "admin": False, "open": False}
    assert json.loads(r.stdout) == {"identity": identity}
    r = chatctl("whoami", "-o", "id", *bob, env=home)
    assert (r.returncode, r.stdout) == (0, "bob\n"), r.stderr

    r = chatctl("create", "lobby", "-o", "id", *bob, env=home)
    assert r.returncode == 0, r.stderr
    room = r.stdout.strip()
    r = chatctl("send", room, "hello from bob", "-o", "jsonl", *bob, env=home)
    assert r.returncode == 0, r.stderr
    # A public room: alice's join makes her a member, as alice.
    r = chatctl(
        "join", "lobby", "--history", "1", "--count", "1", "-o", "jsonl", *ca,
        env=alice, timeout=30,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["user_id"] == "bob"
    r = chatctl("send", "lobby", "hi", "-o", "jsonl", *ca, env=alice)
    assert r.returncode == 0, r.stderr
    r = chatctl("send", "lobby", "--lines", "-o", "jsonl", *ca, env=alice, input="one\ntwo\n")
    assert r.returncode == 0, r.stderr
    r = chatctl("history", "lobby", "-o", "jsonl", *ca, env=alice)
    assert r.returncode == 0, r.stderr
    said = [(m["user_id"], m["text"]) for m in map(json.loads, r.stdout.splitlines())]
    assert said == [("bob", "hello from bob"), ("alice", "hi"), ("alice", "one"), ("alice", "two")]

    for args in (["send", "lobby", "as bob"], ["join", room, "--count", "1"]):
        r = chatctl(*args, "--user", "bob", *ca, env=alice, timeout=30)
        assert r.returncode == 4, r.stderr
        error, *hint = r.stderr.splitlines()
        assert "this token acts only as user alice, not bob" in error
        assert hint == ["hint: leave out --user: this token acts only as alice"]

    r = chatctl("leave", "lobby", "-o", "json", *ca, env=alice)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["room"]["user_ids"] == ["bob"]
