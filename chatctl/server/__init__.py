"""chatctl's chat server: the m3o Chat API over HTTP and WebSocket.

Modules: ``app`` (the HTTP/WebSocket edge), ``rules`` (membership, privacy, idempotency;
no HTTP), ``store`` (SQLite), ``hub`` (live fan-out), ``serve`` (process, sockets, signals).
Nothing here is imported on the CLI's client path.
"""
