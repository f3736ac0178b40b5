"""Run the chat server in a process of its own, for tests that kill it.

    python tests/server/run_server.py DB PORT [TOKEN...]

Prints "ready" on stdout once it accepts connections. (``chatctl serve`` is the real
command; this is the smallest launcher of ``create_app`` so the tests do not depend on it.)
"""

from __future__ import annotations

import sys

from chatctl.server.app import create_app
from chatctl.server.config import ServerConfig
from chatctl.server.protocol import ChatServer, uvicorn_config
from chatctl.server.tokens import TokenRegistry


def main() -> None:
    db, port, *tokens = sys.argv[1:]
    config = ServerConfig(db=db, registry=TokenRegistry(tokens=tokens) if tokens else None)
    app = create_app(config)
    server = ChatServer(
        uvicorn_config(app, config, host="127.0.0.1", port=int(port), log_level="warning")
    )
    # uvicorn's startup hook prints nothing we can rely on; announce readiness ourselves.
    original = server.startup

    async def startup(sockets: object = None) -> None:
        await original(sockets)  # type: ignore[arg-type]
        print("ready", flush=True)

    server.startup = startup  # type: ignore[method-assign]
    server.run()


if __name__ == "__main__":
    main()
