"""What the client's deadline backend relies on in httpx and httpcore, checked loudly.

The client (chatctl/client.py, becoming the chatctl/client/ package) gives httpx's
``HTTPTransport`` a network backend of its own, so that one deadline bounds every connect,
TLS handshake, read and write of a call: httpx takes no backend, so it is set on the
transport's connection pool (``transport._pool._network_backend``), both private. On
versions that move either, these fail with one line naming the supported range.
"""

from __future__ import annotations

import contextlib
import socket
import tempfile
from typing import Any

import httpcore
import httpx
import pytest

from tests.seams import check_pin, seam

MODULE = "the client's deadline backend (chatctl/client.py)"
#: the ranges the backend is written for; pyproject.toml pins the same.
HTTPX_SUPPORTED = ">=0.27,<1"
HTTPCORE_SUPPORTED = ">=1,<2"


def test_the_installed_httpx_and_httpcore_are_ones_the_seam_supports() -> None:
    check_pin(MODULE, "httpx", HTTPX_SUPPORTED)
    check_pin(MODULE, "httpcore", HTTPCORE_SUPPORTED)


class _Recording(httpcore.NetworkBackend):
    """httpcore's own backend, noting each connection it is asked for."""

    def __init__(self) -> None:
        self.inner = httpcore.SyncBackend()
        self.asked: list[str] = []

    def connect_tcp(self, host: str, port: int, *args: Any, **kwargs: Any) -> Any:
        self.asked.append(f"tcp {host}:{port}")
        return self.inner.connect_tcp(host, port, *args, **kwargs)

    def connect_unix_socket(self, path: str, *args: Any, **kwargs: Any) -> Any:
        self.asked.append(f"unix {path}")
        return self.inner.connect_unix_socket(path, *args, **kwargs)


@pytest.mark.parametrize("uds", [False, True])
def test_a_backend_set_on_the_transports_pool_opens_every_connection(uds: bool) -> None:
    backend = _Recording()
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        # A listener that never answers: the call connects, then times out reading.
        family = socket.AF_UNIX if uds else socket.AF_INET
        listener = stack.enter_context(socket.socket(family, socket.SOCK_STREAM))
        listener.bind(f"{tmp}/chat.sock" if uds else ("127.0.0.1", 0))
        listener.listen()
        address = listener.getsockname()
        expected = f"unix {address}" if uds else f"tcp 127.0.0.1:{address[1]}"
        url = "http://localhost/health" if uds else f"http://127.0.0.1:{address[1]}/health"
        with seam(MODULE, "httpx", HTTPX_SUPPORTED):
            transport = httpx.HTTPTransport(uds=address if uds else None)
            pool = transport._pool
            assert isinstance(pool, httpcore.ConnectionPool), "HTTPTransport has no _pool"
            assert isinstance(pool._network_backend, httpcore.NetworkBackend), (
                "httpcore's ConnectionPool has no _network_backend"
            )
            pool._network_backend = backend
            client = stack.enter_context(httpx.Client(transport=transport, timeout=0.2))
            with pytest.raises(httpx.ReadTimeout):
                client.get(url)
            assert backend.asked == [expected], f"the pool's backend was not used: {backend.asked}"
