"""Serve the real chat app over TLS with uvicorn's own SSL settings, for the client's TLS
tests (``chatctl serve --tls-cert`` is the product's way; this launcher keeps the client
tests independent of it).

    python tests/e2e/tls_server.py DB PORT CERT KEY

Prints "ready" on stdout once it accepts connections.
"""

from __future__ import annotations

import sys

from chatctl.server.app import create_app
from chatctl.server.config import ServerConfig
from chatctl.server.protocol import ChatServer, uvicorn_config


def main() -> None:
    db, port, cert, key = sys.argv[1:]
    config = ServerConfig(db=db)
    settings = uvicorn_config(
        create_app(config), config, host="127.0.0.1", port=int(port), log_level="warning"
    )
    settings.ssl_certfile = cert
    settings.ssl_keyfile = key
    server = ChatServer(settings)
    original = server.startup

    async def startup(sockets: object = None) -> None:
        await original(sockets)  # type: ignore[arg-type]
        print("ready", flush=True)

    server.startup = startup  # type: ignore[method-assign]
    server.run()


if __name__ == "__main__":
    main()
