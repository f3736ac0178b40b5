"""Run the chat server as a process: sockets, logging, signals and idle exit around uvicorn.

``chatctl serve`` builds a :class:`~chatctl.server.config.ServerConfig` from its flags and
calls :func:`run_server`. What this module adds to uvicorn, and why:

- It refuses to listen beyond loopback without a token: an open server on a network
  address would let anyone read and write every room.
- A Unix socket is bound here, not by uvicorn, so it is born mode 0600 (uvicorn would
  chmod it to 0666); the whole process runs under umask 077, so the database and its
  journal files are private too.
- uvicorn itself runs with this server's protocol changes (``protocol``: a deadline for
  each request head, head and body in one write).
- On SIGTERM/SIGINT the app's ``ChatServer`` ends live streams with 1001 (going away), so
  clients resume, before uvicorn stops accepting and finishes in-flight requests; the
  process then exits 0 (uvicorn re-raises the signal afterwards, which would otherwise
  kill the process with it).
- Tokens never reach the log: uvicorn's access log is off, its per-WebSocket line (which
  carries the query string) is dropped, and every line is scrubbed of the configured
  tokens and of anything after ``Bearer``.
- With ``ServerConfig.idle_exit`` set (the embedded local server), the process exits by
  itself after that long with no open request or stream.
- TLS (``--tls-cert``/``--tls-key``) goes through uvicorn's SSL settings, checked here
  first so a bad key is one line, not a traceback (``tls_options``); a network address
  without TLS gets a warning that tokens travel in clear text (``cleartext_warning``).
- SIGHUP reloads the TLS certificate and the tokens file (``on_hangup``), which is also
  watched (``tokens.watch_tokens``); the app's ``tokens_reloaded`` ends the streams of
  the tokens a reload revoked.
- A good service citizen: the port (or Unix socket) is bound before the database is
  touched; under systemd (``Type=notify``) it says ``READY=1`` once it listens and
  ``STOPPING=1`` on SIGTERM (``sd_notify``, by hand: no dependency); a PostgreSQL
  replica's connections carry ``application_name`` ``chatctl/VERSION/HOST:PORT``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import ipaddress
import json
import logging
import os
import re
import signal
import socket
import ssl
import stat
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import uvicorn

from chatctl.errors import ChatctlError, UsageError
from chatctl.local import socket_answers
from chatctl.output import visible
from chatctl.server.app import create_app
from chatctl.server.config import ServerConfig
from chatctl.server.hub import Hub
from chatctl.server.logline import (
    ACCESS_FIELDS,
    ACCESS_LINE,
    CLIENT_ARGS,
    STREAM_FIELDS,
    STREAM_LINE,
    STREAM_OPEN_LINE,
)
from chatctl.server.protocol import ChatServer, has_module, http_protocol, uvicorn_config
from chatctl.server.tokens import Reload, watch_tokens

__all__ = [
    "TLS_CIPHERS",
    "check_exposure",
    "check_tls_key",
    "cleartext_warning",
    "is_loopback",
    "on_hangup",
    "run_server",
    "sd_notify",
    "tls_options",
]

#: how long in-flight requests get to finish at shutdown; then their tasks are cancelled.
GRACEFUL_SHUTDOWN_SECONDS = 5
#: a warning repeated from the same place is shown once per this many seconds.
REPEAT_WINDOW = 30.0

log = logging.getLogger("chatctl.server")


def is_loopback(host: str) -> bool:
    """True for ``localhost``, 127.0.0.0/8 and ::1: addresses only this machine reaches."""
    if host.lower().rstrip(".") == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_exposure(config: ServerConfig, host: str, uds: str | None) -> None:
    """Refuse an open (tokenless) server on an address other machines can reach."""
    if uds is None and config.open and not is_loopback(host):
        raise UsageError(
            f"refusing to serve {host} without a token (anyone who can reach it could read "
            "every room): pass --token TOKEN or --tokens-file FILE, or listen on 127.0.0.1"
        )


#: TLS 1.2 suites with forward secrecy and AEAD only (TLS 1.3's are always on): Mozilla's
#: "intermediate" choice without the old DHE suites. Python's context already refuses
#: anything before TLS 1.2.
TLS_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20"


def cleartext_warning(config: ServerConfig, host: str, uds: str | None) -> str | None:
    """What to say when tokens and messages would cross a network unencrypted. Still
    allowed: a TLS-terminating proxy in front is a normal setup."""
    if uds is None and config.tls_cert is None and not is_loopback(host):
        return (
            f"serving plain http on {host}: tokens and messages travel in clear text; give"
            " --tls-cert and --tls-key, or put a TLS-terminating proxy in front"
        )
    return None


def tls_options(config: ServerConfig, uds: str | None = None) -> dict[str, Any]:
    """uvicorn's SSL settings for ``config.tls_cert``/``tls_key`` ({} without TLS), checked
    first: the key's permissions (``check_tls_key``), and that the pair loads."""
    cert, key = config.tls_cert, config.tls_key
    if cert is None and key is None:
        return {}
    if cert is None or key is None:
        raise UsageError("--tls-cert and --tls-key go together: give both, or neither")
    if uds is not None:
        raise UsageError("--tls-cert is for TCP: a Unix socket stays on this machine")
    _load_tls(cert, key)
    return {
        "ssl_certfile": cert,
        "ssl_keyfile": key,
        "ssl_ciphers": TLS_CIPHERS,
        "ssl_context_factory": LiveTLS(),
    }


class LiveTLS:
    """uvicorn's ``ssl_context_factory``: the context uvicorn makes from the settings,
    kept, so that SIGHUP loads a renewed certificate into the one the server uses."""

    def __init__(self) -> None:
        self.context: ssl.SSLContext | None = None

    def __call__(
        self, config: uvicorn.Config, default: Callable[[], ssl.SSLContext]
    ) -> ssl.SSLContext:
        self.context = default()
        return self.context


def check_tls_key(key: str) -> None:
    """Refuse a private key others may read, as PostgreSQL does: owned by this user and
    mode 0600 or less, or owned by root and 0640 or less (a group such as Debian's
    ssl-cert may read it)."""
    try:
        st = os.stat(key)
    except OSError as exc:
        raise UsageError(f"cannot read TLS key {key}: {exc.strerror}") from None
    mode = stat.S_IMODE(st.st_mode)
    if st.st_uid == 0:
        allowed, owner = 0o640, "root"
    elif st.st_uid == os.geteuid():
        allowed, owner = 0o600, "you"
    else:
        raise UsageError(
            f"TLS key {key} belongs to another user (uid {st.st_uid}); it must be this"
            " user's or root's"
        )
    if mode & ~allowed:
        raise UsageError(
            f"TLS key {key} is readable by others (mode {mode:04o}, owned by {owner});"
            f" make it private: chmod {allowed:o} {key}"
        )


class _EncryptedKey(Exception):
    pass


def _no_password() -> str:
    # Without a callback OpenSSL would prompt on the terminal for a passphrase.
    raise _EncryptedKey


def _load_tls(cert: str, key: str, into: ssl.SSLContext | None = None) -> None:
    """Load the pair into a scratch context (so an unusable pair is one clear error and
    a live context is never left half-loaded), then into ``into`` if given."""
    check_tls_key(key)
    for context in (ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER), into):
        if context is None:
            continue
        try:
            context.load_cert_chain(cert, key, _no_password)
        except _EncryptedKey:
            raise UsageError(
                f"TLS key {key} is encrypted; give it unencrypted (and readable by this user"
                " only): openssl pkey -in ENCRYPTED -out KEY"
            ) from None
        except ssl.SSLError as exc:
            raise UsageError(
                f"cannot use TLS certificate {cert} with key {key}: {exc.reason or exc}"
            ) from None
        except OSError as exc:
            raise UsageError(
                f"cannot read TLS certificate {cert} or key {key}: {exc.strerror or exc}"
            ) from None


def on_hangup(
    server: uvicorn.Server,
    config: ServerConfig,
    tokens_reloaded: Callable[[Reload], None] | None,
) -> Callable[[], None]:
    """What SIGHUP does: load the TLS certificate and key again (new connections get
    them; a renewal needs no restart), and re-read the tokens file when the app can act
    on it (``tokens_reloaded`` closes the streams of revoked tokens). A file that cannot
    be used is logged and the old one kept."""

    def hangup() -> None:
        done = []
        factory = getattr(server.config, "ssl_context_factory", None)
        live = factory.context if isinstance(factory, LiveTLS) else None
        if config.tls_cert and config.tls_key and isinstance(live, ssl.SSLContext):
            try:
                _load_tls(config.tls_cert, config.tls_key, into=live)
                done.append(f"TLS certificate {config.tls_cert}")
            except UsageError as exc:
                log.error("SIGHUP: %s; keeping the certificate loaded before", exc)
        registry = config.registry
        if registry is not None and registry.path is not None and tokens_reloaded is not None:
            try:
                reloaded = registry.reload()
            except UsageError as exc:
                log.error("SIGHUP: %s; keeping the %d tokens loaded before", exc, len(registry))
            else:
                done.append(f"tokens file {registry.path}: {reloaded}")
                tokens_reloaded(reloaded)
        log.info("SIGHUP: reloaded %s", "; ".join(done) if done else "nothing")

    return hangup


def run_server(
    config: ServerConfig,
    *,
    host: str,
    port: int,
    uds: str | None = None,
    log_level: str = "info",
    pid_file: str | None = None,
    log_format: str = "text",
    proxy_headers: bool = False,
    forwarded_allow_ips: str | None = None,
) -> None:
    """Serve the Chat API until SIGTERM/SIGINT (or idle exit); return normally after.

    ``log_format`` is ``text`` or ``json`` (one object a line); with ``proxy_headers``
    the client's address (logged) is the one a proxy at ``forwarded_allow_ips`` (uvicorn's
    setting: addresses, networks or ``*``; 127.0.0.1 by default) names in X-Forwarded-For.

    Raises UsageError before anything is bound when the options are unsafe or unusable.
    """
    check_exposure(config, host, uds)
    tls = tls_options(config, uds)
    warning = cleartext_warning(config, host, uds)
    if warning is not None:
        print(f"warning: {warning}", file=sys.stderr, flush=True)
    os.umask(0o077)
    _configure_logging(
        log_level,
        () if config.registry is None else config.registry.clear_tokens(),
        log_format,
    )

    # Bound before the app opens the database: a second server on the same socket or port
    # fails here, having touched nothing.
    bound: os.stat_result | None = None
    if uds is not None:
        sockets = [_bind_unix(uds)]
        bound = os.stat(uds)
    else:
        sockets = _bind_tcp(host, port)
        port = sockets[0].getsockname()[1]
    try:
        listening = uds if uds is not None else f"{host}:{port}"
        _prepare_db(config.db)
        if config.application_name is None:
            config = dataclasses.replace(
                config, application_name=_application_name(host, port, uds)
            )
        app = create_app(config)
        server = ChatServer(
            uvicorn_config(
                app,
                config,
                host=host,
                port=port,
                loop="uvloop" if has_module("uvloop") else "asyncio",
                http=http_protocol(config),
                # Logging is configured above; the app logs one line per request itself,
                # and uvicorn's access line would carry query strings.
                log_config=None,
                access_log=False,
                # Only a proxy the operator names may say who the client is: else a client
                # could claim another address.
                proxy_headers=proxy_headers,
                forwarded_allow_ips=forwarded_allow_ips,
                server_header=False,
                timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_SECONDS,
                **tls,
            )
        )
        # systemd (Type=notify) hears READY=1 once the socket listens and the app started.
        server.on_started = lambda: sd_notify(f"READY=1\nSTATUS=serving on {listening}")
        if pid_file is not None:
            _write_pid_file(pid_file)
        # The app's hook for a changed tokens file: it closes revoked tokens' streams
        # (4401); their next calls are refused by the reloaded registry.
        tokens_reloaded = getattr(app.state, "tokens_reloaded", None)
        _run(server, app.state.hub, sockets, config, tokens_reloaded)
    finally:
        for sock in sockets:
            sock.close()
        if uds is not None and bound is not None:
            _unlink_if_same(uds, bound)
        if pid_file is not None:
            _remove_pid_file(pid_file)


def _run(
    server: uvicorn.Server,
    hub: Hub,
    sockets: list[socket.socket] | None,
    config: ServerConfig,
    tokens_reloaded: Callable[[Reload], None] | None = None,
) -> None:
    idle = config.idle_exit

    async def main() -> None:
        tasks = []
        if idle is not None:
            tasks.append(asyncio.create_task(_exit_when_idle(server, hub, idle)))
        registry = config.registry
        if registry is not None and registry.path is not None and tokens_reloaded is not None:
            tasks.append(asyncio.create_task(watch_tokens(registry, tokens_reloaded)))
        asyncio.get_running_loop().add_signal_handler(
            signal.SIGHUP, on_hangup(server, config, tokens_reloaded)
        )
        try:
            await server.serve(sockets=sockets)
        finally:
            for task in tasks:
                task.cancel()

    # uvicorn restores the handlers it found and re-raises the signal once it has shut down
    # gracefully; with Python's defaults that would kill the process by SIGTERM or raise
    # KeyboardInterrupt, yet a stop we asked for is a clean exit. So the handlers it finds
    # are its own: the re-raise is a no-op, and a signal before it starts still stops it.
    def stop(signum: int, frame: Any) -> None:
        sd_notify("STOPPING=1")
        server.handle_exit(signum, frame)

    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, stop)
    with asyncio.Runner(loop_factory=server.config.get_loop_factory()) as runner:
        runner.run(main())


async def _exit_when_idle(server: uvicorn.Server, hub: Hub, idle: float) -> None:
    # Look a few times per idle period: exiting up to a quarter late is fine, and an idle
    # server then wakes rarely.
    tick = min(1.0, idle / 4)
    while not server.should_exit:
        await asyncio.sleep(tick)
        if hub.idle_for() >= idle:
            log.info("nothing open for %g s; exiting", idle)
            server.should_exit = True


def _bind_unix(path: str) -> socket.socket:
    """A Unix socket bound at ``path``, mode 0600, in a directory created 0700 if missing.

    Not listening yet: uvicorn listens once the app has started, so a client that connects
    is served rather than queued behind a start-up that may fail.
    """
    target = Path(path)
    target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        if not stat.S_ISSOCK(target.lstat().st_mode):
            raise UsageError(f"{path} exists and is not a socket; not replacing it")
        if socket_answers(path):
            raise ChatctlError(f"another server is already listening on {path}")
        # A socket file nobody answers on is left over from a server that died.
        target.unlink()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)
    try:
        sock.bind(path)
    except OSError as exc:
        sock.close()
        raise ChatctlError(f"cannot listen on {path}: {exc.strerror}") from exc
    finally:
        os.umask(old)
    os.chmod(path, 0o600)
    return sock


def _bind_tcp(host: str, port: int) -> list[socket.socket]:
    """TCP sockets bound to every address ``host`` names, on ``port`` (not listening yet:
    uvicorn listens once the app has started), as asyncio's ``create_server`` binds them:
    ``localhost`` is 127.0.0.1 and ::1, since a client may try either first. An address
    this machine does not have (::1 without IPv6) is skipped while another one binds; any
    other failure is a ChatctlError saying why."""
    try:
        infos = socket.getaddrinfo(
            host.strip("[]") or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except socket.gaierror as exc:
        raise ChatctlError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    sockets: list[socket.socket] = []
    unavailable: OSError | None = None
    for family, kind, proto, _, address in dict.fromkeys(infos):
        sock = socket.socket(family, kind, proto)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:  # its own address only, as asyncio does
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            # A port the first socket was given (--port 0) is the port of them all.
            sock.bind((address[0], sockets[0].getsockname()[1] if sockets else port, *address[2:]))
        except OSError as exc:
            sock.close()
            if exc.errno == errno.EADDRNOTAVAIL:
                unavailable = exc
                continue
            for bound in sockets:
                bound.close()
            raise ChatctlError(
                f"cannot listen on {host}:{port}: {exc.strerror or exc}",
                hint="is another server on that port? choose another with --port",
            ) from None
        sockets.append(sock)
    if not sockets:
        why = unavailable.strerror if unavailable is not None else "no address"
        raise ChatctlError(f"cannot listen on {host}:{port}: {why}")
    return sockets


def _application_name(host: str, port: int, uds: str | None) -> str:
    """This replica's name in PostgreSQL's ``pg_stat_activity``: ``chatctl/VERSION/`` and
    where it listens (this machine's name for a wildcard address or a Unix socket)."""
    from chatctl import __version__

    if uds is not None:
        where = f"{socket.gethostname()}:{uds}"
    elif host.strip("[]") in ("", "0.0.0.0", "::"):
        where = f"{socket.gethostname()}:{port}"
    else:
        where = f"{host}:{port}"
    return f"chatctl/{__version__}/{where}"[:63]


def sd_notify(state: str) -> bool:
    """Tell systemd ``state`` (``READY=1``, ``STOPPING=1``) over ``$NOTIFY_SOCKET``, as
    ``sd_notify(3)`` does: one datagram to a Unix socket (``@``: the abstract namespace).
    False when there is no such socket (not run by systemd with Type=notify)."""
    address = os.environ.get("NOTIFY_SOCKET", "")
    if address.startswith("@"):
        address = "\0" + address[1:]
    elif not address.startswith("/"):
        return False
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
        try:
            sock.connect(address)
            sock.sendall(state.encode())
        except OSError as exc:
            log.warning("cannot notify systemd at %s: %s", address, exc.strerror or exc)
            return False
    return True


def _unlink_if_same(path: str, bound: os.stat_result) -> None:
    # Only our own socket: a new server may already have replaced it at this path.
    with contextlib.suppress(OSError):
        now = os.stat(path)
        if (now.st_dev, now.st_ino) == (bound.st_dev, bound.st_ino):
            os.unlink(path)


def _write_pid_file(path: str) -> None:
    # Written whole, then renamed, so a reader never sees half a number.
    tmp = f"{path}.{os.getpid()}.tmp"
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)  # left by a server of the same pid that died mid-write
    # Made here and now (O_EXCL), never through a symlink someone placed.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as file:
        file.write(f"{os.getpid()}\n")
    os.replace(tmp, path)


def _remove_pid_file(path: str) -> None:
    with contextlib.suppress(OSError, ValueError):
        if int(Path(path).read_text().strip()) == os.getpid():
            os.unlink(path)


def _prepare_db(path: str) -> None:
    """Create the database file 0600 (and missing directories 0700) before SQLite does."""
    if path.startswith(("postgresql://", "postgres://")):
        return  # a PostgreSQL database: nothing on this machine to prepare
    db = Path(path)
    try:
        db.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        with contextlib.suppress(FileExistsError):
            os.close(os.open(db, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except OSError as exc:
        raise ChatctlError(
            f"cannot create the database {path}: {exc.strerror or exc}",
            hint="choose a writable place with --db PATH",
        ) from None


class _RedactingFormatter(logging.Formatter):
    """Scrubs tokens from every formatted line, tracebacks included, and keeps every
    record on its own line, as plain text.

    A record's message is escaped as the CLI escapes text for a terminal
    (``output.visible``: ``\\x1b``, ``\\n``), so a path, header or close reason a client
    chose can neither start a line of its own nor drive the terminal of whoever reads
    the log. A traceback (at ERROR and above only: a bug of the server) keeps its lines,
    escaped, each indented so that none passes for a record; below ERROR an exception is
    told on the record's own line (``websockets`` logs a refused handshake's at debug).
    """

    def __init__(self, fmt: str, tokens: Iterable[str]) -> None:
        super().__init__(fmt)
        secrets = sorted((re.escape(t) for t in tokens if t), key=len, reverse=True)
        patterns = [
            # At debug level the handshake's headers are logged: an Authorization value
            # goes whole (the server takes "Bearer  TOKEN", with any spacing, and a client
            # may send a token with no scheme at all), and a Bearer elsewhere to its word.
            r"(?i:(?<=authorization: )[^\r\n]+)",
            r"(?i:(?<=bearer\s)\s*\S+)",
            # Browsers offer their token as the WebSocket subprotocol; at debug level the
            # handshake's headers are logged, and a token the server does not know (or
            # knows only by its hash) cannot be scrubbed by name: drop the whole value.
            r"(?i:(?<=sec-websocket-protocol: )[^\r\n]+)",
            r"(?i:(?<=[?&]token=)[^&\s\"']+)",
            r"(?i:(?<=[?&]access_token=)[^&\s\"']+)",
            *secrets,
        ]
        self._secrets = re.compile("|".join(patterns))

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        """UTC, to the millisecond, with its zone: ``2026-12-07T10:04:05.123Z``."""
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        return f"{stamp}.{int(record.msecs):03d}Z"

    def formatMessage(self, record: logging.LogRecord) -> str:
        message = record.message
        if not message.isprintable():  # most lines: nothing to escape, no search
            if isinstance(record.msg, str) and record.msg.endswith("\n"):
                message = message[:-1]  # uvicorn's "Exception in ASGI application\n"
            record.message = visible(message)
        return super().formatMessage(record)

    def formatException(self, ei: Any) -> str:
        return _indented(super().formatException(ei))

    def formatStack(self, stack_info: str) -> str:
        return _indented(super().formatStack(stack_info))

    def format(self, record: logging.LogRecord) -> str:
        _fold_errors(record)
        line = super().format(record)
        if self.clean_access_line(record):
            return line
        return self._secrets.sub("[redacted]", line)

    def clean_access_line(self, record: logging.LogRecord) -> bool:
        """True for an access line none of whose client-chosen fields holds a token.

        Of an access line (one per request: ``logline``) only the path, the client's
        address and the request id come from the client (the query string, where tokens
        travel, is never in it): only they are searched, instead of the whole line."""
        args = record.args
        return (
            record.msg in _ACCESS_LINES
            and isinstance(args, tuple)
            and not record.exc_info
            and not any(self._secrets.search(str(args[i])) for i in CLIENT_ARGS)
        )


def _fold_errors(record: logging.LogRecord) -> None:
    """An exception in a record's args (a driver's error: psycopg's span lines, ``\\n\\tIs
    the server running…``) told on one line, its lines joined with ``; ``; below ERROR an
    exception is told on the record's own line, the same way (a traceback stays)."""
    if record.exc_info and record.levelno < logging.ERROR:
        exc = record.exc_info[1]
        record.exc_info = record.exc_text = None
        if exc is not None:
            told = (record.getMessage(), type(exc).__name__, exc)
            record.msg, record.args = "%s (%s: %s)", told
    args = record.args
    if isinstance(args, tuple) and any(isinstance(arg, BaseException) for arg in args):
        record.args = tuple(
            _folded(str(arg)) if isinstance(arg, BaseException) else arg for arg in args
        )


def _folded(text: str) -> str:
    return "; ".join(part for line in text.splitlines() if (part := line.strip()))


class _JSONFormatter(_RedactingFormatter):
    """``--log-format json``: each record one JSON object on one line (control characters
    escaped by JSON itself, tokens scrubbed as in text): ``time`` (UTC, with its zone),
    ``level``, ``logger``, ``message``, and an access line's fields by name
    (``logline.ACCESS_FIELDS``, a stream's ``room``, a stream opening ``"event":
    "stream open"``); a traceback is one string in ``exception``."""

    def format(self, record: logging.LogRecord) -> str:
        _fold_errors(record)
        record.message = record.getMessage()
        entry: dict[str, Any] = {
            "time": self.formatTime(record),
            "level": record.levelname,
            "logger": record.name,
            "message": record.message,
        }
        fields = _ACCESS_LINES.get(record.msg) if isinstance(record.msg, str) else None
        if fields is not None and isinstance(record.args, tuple):
            if record.msg is STREAM_OPEN_LINE:
                entry["event"] = "stream open"
            entry.update(zip(fields, record.args, strict=False))
            entry["ms"] = round(entry["ms"], 1)
        if record.exc_info:
            entry["exception"] = logging.Formatter.formatException(self, record.exc_info)
        if not self.clean_access_line(record):
            # Each value scrubbed before it is encoded: a token's pattern runs to the next
            # space, which in the encoded line could swallow a quote.
            scrub = self._secrets.sub
            entry = {
                key: scrub("[redacted]", value) if isinstance(value, str) else value
                for key, value in entry.items()
            }
        return json.dumps(entry, ensure_ascii=True, default=str)


#: the access lines (known by identity) and the names of their args.
_ACCESS_LINES = {
    ACCESS_LINE: ACCESS_FIELDS,
    STREAM_LINE: STREAM_FIELDS,
    STREAM_OPEN_LINE: STREAM_FIELDS,
}


class _Repeats(logging.Filter):
    """Repeated warnings, rate-limited: a warning (or error) logged from the same place
    with the same words is shown at most once per ``window`` seconds; the next one shown
    says how many were held back (``cannot listen on PostgreSQL … retrying`` comes every
    half second while a replica has no database: two lines a minute instead of 120)."""

    def __init__(self, window: float = REPEAT_WINDOW) -> None:
        super().__init__()
        self.window = window
        #: (logger, template) -> (when last shown, how many held back since)
        self._seen: dict[tuple[str, str], tuple[float, int]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING or record.exc_info:
            return True
        key = (record.name, str(record.msg))
        now = time.monotonic()
        shown, held = self._seen.get(key, (-self.window, 0))
        if now - shown < self.window:
            self._seen[key] = (shown, held + 1)
            return False
        if len(self._seen) > 1000:  # bounded, whatever the templates
            self._seen.clear()
        self._seen[key] = (now, 0)
        if held and isinstance(record.args, tuple):
            record.msg = f"{record.msg} (%d more like this in the last %g s not shown)"
            record.args = (*record.args, held, self.window)
        return True


def _indented(text: str) -> str:
    """A traceback's lines, escaped and indented: none can pass for a log record."""
    return "\n".join("    " + visible(line) for line in text.split("\n"))


#: what websockets logs (on uvicorn's logger) for every handshake's outcome: the app logs
#: the request's own line (``WS PATH 101``), and ``protocol.ws_protocol`` one for a
#: handshake refused before the app saw it.
_HANDSHAKE_LINES = frozenset(
    {"connection open", "connection rejected (%d %s)", "HTTP response sent (%d %s)"}
)


def _drop_websocket_lines(record: logging.LogRecord) -> bool:
    # uvicorn logs '<client> - "WebSocket <path?query>" [accepted]' on its error logger;
    # the app logs its own line without the query string.
    msg = str(record.msg)
    return not msg.startswith('%s - "WebSocket') and msg not in _HANDSHAKE_LINES


def _configure_logging(level: str, tokens: Iterable[str], log_format: str = "text") -> None:
    handler = logging.StreamHandler(sys.stderr)
    kind = _JSONFormatter if log_format == "json" else _RedactingFormatter
    handler.setFormatter(kind("%(asctime)s %(levelname)s %(name)s: %(message)s", tokens))
    handler.addFilter(_drop_websocket_lines)
    handler.addFilter(_Repeats())
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.asgi"):
        logging.getLogger(name).setLevel(level.upper())
    # websockets' debug log spells out every header and frame; it is not ours to show.
    logging.getLogger("websockets").setLevel(max(logging.INFO, root.level))
    logging.getLogger("uvicorn.access").disabled = True
