"""``chatctl serve --tls-cert --tls-key``: https and wss with a private CA made here
(trustme), a client without the CA refused, unusable keys refused before anything is
bound, the clear-text warning, and a certificate renewed by SIGHUP."""

from __future__ import annotations

import json
import signal
import ssl
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import trustme
from websockets.sync.client import connect

from tests.serve.conftest import Serve, Served, chatctl

TOKEN = "tok-tls-7d1f"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@dataclass
class Pki:
    ca: trustme.CA
    cert: Path
    key: Path

    def client_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context()
        self.ca.configure_trust(ctx)
        return ctx


def issue(tmp_path: Path, name: str = "server") -> Pki:
    ca = trustme.CA()
    issued = ca.issue_cert("127.0.0.1", "localhost")
    cert, key = tmp_path / f"{name}.pem", tmp_path / f"{name}.key"
    issued.cert_chain_pems[0].write_to_path(cert)
    for pem in issued.cert_chain_pems[1:]:
        pem.write_to_path(cert, append=True)
    key.touch(mode=0o600)
    issued.private_key_pem.write_to_path(key)
    return Pki(ca, cert, key)


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return issue(tmp_path)


def https_port(served: Served) -> int:
    return int(served.wait_for_log(r"running on https://127\.0\.0\.1:(\d+)").group(1))


@pytest.fixture
def tls_server(serve: Serve, pki: Pki) -> Iterator[tuple[Served, int]]:
    served = serve(
        "--port", "0", "--token", TOKEN, "--tls-cert", str(pki.cert), "--tls-key", str(pki.key),
        uds=False,
    )  # fmt: skip
    yield served, https_port(served)


def test_https_and_wss_with_the_ca(tls_server: tuple[Served, int], pki: Pki) -> None:
    served, port = tls_server
    base = f"https://127.0.0.1:{port}"
    with httpx.Client(base_url=base, headers=AUTH, verify=pki.client_context()) as http:
        room = http.post("/v1/chat/Create", json={"name": "tls", "user_ids": ["alice"]})
        assert room.status_code == 200, room.text
        room_id = room.json()["room"]["id"]
        with connect(
            f"wss://127.0.0.1:{port}/v1/chat/Join",
            ssl=pki.client_context(),
            additional_headers=AUTH,
            open_timeout=10,
        ) as ws:
            ws.send(json.dumps({"room_id": room_id, "user_id": "bob"}))
            # Send until the stream delivers: it is subscribed once a message arrives.
            deadline = time.monotonic() + 10
            while True:
                sent = http.post(
                    "/v1/chat/Send",
                    json={"room_id": room_id, "user_id": "alice", "text": "over tls"},
                )
                assert sent.status_code == 200, sent.text
                try:
                    frame = json.loads(ws.recv(timeout=0.2))
                    break
                except TimeoutError:
                    assert time.monotonic() < deadline, "the wss stream never delivered"
            assert frame["message"]["text"] == "over tls"
    assert served.stop() == 0
    assert TOKEN not in served.stderr()
    assert "warning" not in served.stderr()


def test_websocket_client_joins_over_wss_with_its_default_origin(
    serve: Serve, pki: Pki, tmp_path: Path
) -> None:
    """Behind TLS the server's own origin is https://HOST:PORT, which websocket-client
    sends by default for a wss:// URL: with --cors-origin listing another page it joins
    (the same origin by http:// would be another one: tests/server/test_cors.py)."""
    import websocket

    served = serve(
        "--port", "0", "--token", TOKEN, "--tls-cert", str(pki.cert), "--tls-key", str(pki.key),
        "--cors-origin", "https://app.example.com", uds=False,
    )  # fmt: skip
    port = https_port(served)
    ca = tmp_path / "ca.pem"
    pki.ca.cert_pem.write_to_path(ca)
    with httpx.Client(
        base_url=f"https://127.0.0.1:{port}", headers=AUTH, verify=pki.client_context()
    ) as http:
        room_id = http.post("/v1/chat/Create", json={"user_ids": ["alice"]}).json()["room"]["id"]
        ws = websocket.create_connection(
            f"wss://127.0.0.1:{port}/v1/chat/Join",
            header=[f"Authorization: Bearer {TOKEN}"],
            sslopt={"ca_certs": str(ca)},
            timeout=10,
        )
        try:
            ws.send(json.dumps({"room_id": room_id, "user_id": "bob"}))
            deadline = time.monotonic() + 10
            while True:  # bob is a member once the Join was admitted
                listed = http.post("/v1/chat/List", json={"user_id": "bob"}).json()["rooms"]
                if listed:
                    break
                assert time.monotonic() < deadline, "the Join was never admitted"
                time.sleep(0.05)
            http.post("/v1/chat/Send", json={"room_id": room_id, "user_id": "alice", "text": "t"})
            assert json.loads(ws.recv())["message"]["text"] == "t"
        finally:
            ws.close()


def test_a_client_without_the_ca_is_refused(tls_server: tuple[Served, int]) -> None:
    _, port = tls_server
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        httpx.post(f"https://127.0.0.1:{port}/v1/chat/List", json={}, headers=AUTH)
    with pytest.raises(ssl.SSLCertVerificationError):
        connect(f"wss://127.0.0.1:{port}/v1/chat/Join", additional_headers=AUTH)
    # Nor does plain http reach the API on the TLS port.
    with pytest.raises(httpx.HTTPError):
        httpx.post(f"http://127.0.0.1:{port}/v1/chat/List", json={}, headers=AUTH, timeout=5)


def serve_exit(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        chatctl("serve", "--port", "0", "--token", TOKEN, *args),
        capture_output=True,
        text=True,
        timeout=30,
    )


@pytest.mark.parametrize("mode", [0o644, 0o660, 0o604])
def test_a_key_others_can_read_is_refused(pki: Pki, tmp_path: Path, mode: int) -> None:
    pki.key.chmod(mode)
    db = tmp_path / "chat.db"
    result = serve_exit("--tls-cert", str(pki.cert), "--tls-key", str(pki.key), "--db", str(db))
    assert result.returncode == 2
    [line] = result.stderr.splitlines()
    assert line.startswith(f"error: TLS key {pki.key} is readable by others (mode {mode:04o}")
    assert "chmod 6" in line
    assert not db.exists()  # refused before anything was opened or bound


def test_unusable_tls_files_are_one_line_each(pki: Pki, tmp_path: Path) -> None:
    other = issue(tmp_path, "other")
    encrypted = tmp_path / "encrypted.key"
    encrypted.touch(mode=0o600)
    encrypted.write_bytes(_encrypt(pki.key.read_bytes()))
    cases = [
        (("--tls-cert", str(pki.cert)), "--tls-cert and --tls-key go together"),
        (("--tls-key", str(pki.key)), "--tls-cert and --tls-key go together"),
        (("--tls-cert", str(pki.cert), "--tls-key", str(other.key)), "KEY_VALUES_MISMATCH"),
        (("--tls-cert", str(pki.cert), "--tls-key", str(encrypted)), "is encrypted"),
        (("--tls-cert", str(pki.cert), "--tls-key", str(tmp_path / "no.key")), "No such file"),
        (("--tls-cert", str(tmp_path / "no.pem"), "--tls-key", str(pki.key)), "No such file"),
        (("--tls-cert", str(pki.key), "--tls-key", str(pki.key)), "cannot use TLS certificate"),
        (
            ("--tls-cert", str(pki.cert), "--tls-key", str(pki.key), "--uds", str(tmp_path / "s")),
            "a Unix socket stays on this machine",
        ),
    ]
    for args, problem in cases:
        result = serve_exit(*args)
        assert result.returncode == 2, (args, result.stderr)
        assert len(result.stderr.splitlines()) == 1 and problem in result.stderr, (
            args,
            result.stderr,
        )


def _encrypt(pem: bytes) -> bytes:
    from cryptography.hazmat.primitives import serialization

    key = serialization.load_pem_private_key(pem, None)
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret"),
    )


def test_plain_http_on_a_network_address_warns(serve: Serve, pki: Pki) -> None:
    served = serve("--host", "0.0.0.0", "--port", "0", "--token", TOKEN, uds=False)
    served.wait_for_log(r"running on http://0\.0\.0\.0:\d+")
    assert served.stderr().splitlines()[0] == (
        "warning: serving plain http on 0.0.0.0: tokens and messages travel in clear text;"
        " give --tls-cert and --tls-key, or put a TLS-terminating proxy in front"
    )
    with_tls = serve(
        "--host", "0.0.0.0", "--port", "0", "--token", TOKEN,
        "--tls-cert", str(pki.cert), "--tls-key", str(pki.key), uds=False,
    )  # fmt: skip
    with_tls.wait_for_log(r"running on https://0\.0\.0\.0:\d+")
    loopback = serve("--port", "0", "--token", TOKEN, uds=False)
    loopback.wait_for_log(r"running on http://127\.0\.0\.1:\d+")
    for quiet in (with_tls, loopback):
        assert "warning" not in quiet.stderr()


def test_sighup_loads_a_renewed_certificate(
    tls_server: tuple[Served, int], pki: Pki, tmp_path: Path
) -> None:
    served, port = tls_server
    url = f"https://127.0.0.1:{port}/health"
    assert httpx.get(url, verify=pki.client_context()).status_code == 200
    renewed = issue(tmp_path, "renewed")  # from another CA, so the two are told apart
    pki.cert.write_bytes(renewed.cert.read_bytes())
    pki.key.write_bytes(renewed.key.read_bytes())
    served.proc.send_signal(signal.SIGHUP)
    served.wait_for_log(rf"SIGHUP: reloaded TLS certificate {pki.cert}")
    assert httpx.get(url, verify=renewed.client_context()).status_code == 200
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        httpx.get(url, verify=pki.client_context())
    # A bad renewal is logged and the certificate in use stays.
    pki.key.write_text("not a key\n")
    served.proc.send_signal(signal.SIGHUP)
    served.wait_for_log(r"SIGHUP: cannot use TLS certificate .*keeping the certificate loaded")
    assert httpx.get(url, verify=renewed.client_context()).status_code == 200
    assert served.stop() == 0
