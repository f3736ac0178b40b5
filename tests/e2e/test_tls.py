"""The client over TLS: https:// and wss:// to the real app served by uvicorn with a
certificate from a private CA made in the test (trustme). --ca-cert, a profile's ca_cert
and SSL_CERT_FILE trust it; without them the certificate is refused in one line, exit 3,
with the hint to use --ca-cert."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme

from tests.helpers import chatctl, cli_env, free_port

LAUNCHER = Path(__file__).with_name("tls_server.py")


class TLSServer:
    def __init__(self, url: str, ca: Path, other_ca: Path) -> None:
        self.url = url
        self.ca = ca
        self.other_ca = other_ca


@pytest.fixture
def tls_server(tmp_path: Path) -> Iterator[TLSServer]:
    ca = trustme.CA()
    cert = ca.issue_cert("localhost", "127.0.0.1")
    cert_file, key_file, ca_file = tmp_path / "cert.pem", tmp_path / "key.pem", tmp_path / "ca.pem"
    cert.private_key_and_cert_chain_pem.write_to_path(str(cert_file))
    cert.private_key_pem.write_to_path(str(key_file))
    ca.cert_pem.write_to_path(str(ca_file))
    other = tmp_path / "other-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(other))
    port = free_port()
    root = str(Path(__file__).resolve().parents[2])
    proc = subprocess.Popen(
        [sys.executable, str(LAUNCHER), str(tmp_path / "chat.db"), str(port), str(cert_file),
         str(key_file)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**cli_env(), "PYTHONPATH": root},
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()  # blocks until the server says it listens, or dies
        assert line.strip() == "ready", proc.stderr.read() if proc.stderr else ""
        yield TLSServer(f"https://localhost:{port}", ca_file, other)
    finally:
        proc.kill()
        proc.communicate(timeout=10)


def test_create_send_join_over_https_and_wss_with_ca_cert(tls_server: TLSServer) -> None:
    env = cli_env(CHATCTL_URL=tls_server.url, CHATCTL_USER="alice")
    ca = ["--ca-cert", str(tls_server.ca)]
    r = chatctl("create", "secure", "-u", "alice", "-o", "id", *ca, env=env)
    assert r.returncode == 0, r.stderr
    room = r.stdout.strip()
    r = chatctl("send", room, "over tls", "-o", "id", *ca, env=env)
    assert r.returncode == 0, r.stderr
    r = chatctl(
        "join", room, "--user", "bob", "--history", "1", "--count", "1", "-o", "jsonl", *ca,
        env=env, timeout=30,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["text"] == "over tls"


def test_a_profiles_ca_cert_and_ssl_cert_file_trust_the_ca(
    tls_server: TLSServer, tmp_path: Path
) -> None:
    config = tmp_path / "config.toml"
    config.write_text(
        f'[profiles.default]\nurl = "{tls_server.url}"\nca_cert = "{tls_server.ca}"\n'
    )
    config.chmod(0o600)
    assert chatctl("list", env=cli_env(CHATCTL_CONFIG=str(config))).returncode == 0
    env = cli_env(CHATCTL_URL=tls_server.url, SSL_CERT_FILE=str(tls_server.ca))
    r = chatctl("list", env=env)
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize("trusting", ["system store", "another CA"])
def test_an_untrusted_certificate_is_one_line_naming_it(
    tls_server: TLSServer, trusting: str
) -> None:
    extra = [] if trusting == "system store" else ["--ca-cert", str(tls_server.other_ca)]
    env = cli_env(CHATCTL_URL=tls_server.url)
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
