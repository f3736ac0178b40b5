"""``chatctl serve`` as a service (issue 26 item 9; docs/deployment.md, "Under systemd"): its
port bound before the database is touched, systemd told when it is ready (Type=notify)
and when it stops, a pid file, a PostgreSQL replica named in ``pg_stat_activity`` and its
database found through libpq's own files, a refused database answered 503 at once, and
the docs' unit passing ``systemd-analyze verify``."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from chatctl import __version__
from tests import postgres
from tests.bench.delay_proxy import DelayProxy
from tests.helpers import ServerProcess, free_port

ROOT = Path(__file__).resolve().parents[2]
DEPLOYMENT = ROOT / "docs" / "deployment.md"


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CHATCTL_", "NOTIFY_"))}
    return {**env, **extra}


def test_a_busy_port_fails_before_the_database_is_touched(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        db = tmp_path / "data" / "chat.db"
        result = subprocess.run(
            [sys.executable, "-m", "chatctl", "serve", "--port", str(port), "--db", str(db)],
            capture_output=True,
            text=True,
            timeout=60,
            env=_env(),
        )
    assert result.returncode == 1, result.stderr
    assert f"error: cannot listen on 127.0.0.1:{port}: Address already in use" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "data").exists()  # neither the file nor its directory made


def test_systemd_hears_ready_once_the_port_listens_and_stopping_on_sigterm(
    tmp_path: Path,
) -> None:
    notify = tmp_path / "notify"
    pid_file = tmp_path / "chatctl.pid"
    port = free_port()
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as systemd:
        systemd.bind(str(notify))
        systemd.settimeout(30)
        args = ["serve", "--port", str(port), "--db", str(tmp_path / "chat.db")]
        args += ["--pid-file", str(pid_file)]
        with (tmp_path / "server.log").open("wb") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "chatctl", *args],
                stdout=log,
                stderr=log,
                env=_env(NOTIFY_SOCKET=str(notify)),
            )
        try:
            ready = systemd.recv(4096).decode()
            # At READY=1 the port already answers, and the pid file names the server.
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=5) as http:
                assert http.get("/health").status_code == 200
            assert ready.splitlines()[0] == "READY=1", ready
            assert f"STATUS=serving on 127.0.0.1:{port}" in ready.splitlines()
            assert pid_file.read_text() == f"{proc.pid}\n"
            assert pid_file.stat().st_mode & 0o077 == 0
            proc.send_signal(signal.SIGTERM)
            assert systemd.recv(4096) == b"STOPPING=1"
            assert proc.wait(30) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert not pid_file.exists()


def _activity(url: str) -> list[str]:
    import psycopg

    name = urlsplit(url).path.lstrip("/")
    with psycopg.connect(postgres.require(), autocommit=True) as conn:
        rows = conn.execute(
            "SELECT application_name FROM pg_stat_activity WHERE datname = %s", (name,)
        ).fetchall()
    return [str(row[0]) for row in rows]


@pytest.mark.postgres
def test_a_replica_finds_its_database_through_a_service_file_and_names_itself(
    tmp_path: Path,
) -> None:
    """No password, host or database on the command line: libpq's service file (as it
    would PGPASSWORD or ~/.pgpass) has them; the replica's connections carry its name."""
    with postgres.fresh_database() as url:
        parts = urlsplit(url)
        services = tmp_path / "pg_service.conf"
        services.write_text(
            "[chat]\n"
            f"host={parts.hostname}\nport={parts.port or 5432}\n"
            f"user={parts.username}\ndbname={parts.path.lstrip('/')}\n"
        )
        env = _env(PGSERVICEFILE=str(services))
        with ServerProcess(tmp_path, tcp=True, db="postgresql:///?service=chat", env=env) as s:
            with s.http() as http:
                made = http.post("/v1/chat/Create", json={"name": "r", "user_ids": ["a"]})
            assert made.status_code == 200, made.text
            names = _activity(url)
            assert f"chatctl/{__version__}/127.0.0.1:{s.port}" in names, names


@pytest.mark.postgres
def test_a_refused_database_connection_is_answered_503_at_once(tmp_path: Path) -> None:
    """The database stops taking connections (its address refuses them): every call is
    answered 503 well within --db-timeout, not after it; once it is back, 200 again."""
    timeout = 6.0
    with postgres.fresh_database() as url, DelayProxy.to(url) as proxy:
        server = ServerProcess(
            tmp_path, tcp=True, db=proxy.url_for(url), extra=["--db-timeout", str(timeout)]
        )
        with server, server.http() as http:
            made = http.post("/v1/chat/Create", json={"name": "r", "user_ids": ["a"]})
            assert made.status_code == 200, made.text
            room = made.json()["room"]["id"]
            proxy.__exit__()  # nothing listens on its port now: connections are refused
            took = []
            for _ in range(6):
                started = time.monotonic()
                r = http.post("/v1/chat/History", json={"room_id": room})
                took.append(time.monotonic() - started)
                assert r.status_code == 503, r.text
            assert max(took) < timeout / 3, took


def _unit() -> str:
    text = DEPLOYMENT.read_text()
    start = text.index("```ini\n[Unit]\n") + len("```ini\n")
    return text[start : text.index("```", start)]


def test_the_docs_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        reason = "systemd-analyze is not installed (Debian package systemd)"
        if os.environ.get("CI"):
            pytest.fail(f"{reason}, and CI must check the unit")
        pytest.skip(reason)
    unit = _unit()
    assert re.search(r"^Type=notify$", unit, re.MULTILINE)
    assert re.search(r"^RestartPreventExitStatus=6$", unit, re.MULTILINE)
    assert re.search(r"postgresql://[^@\s]*:[^@\s]*@", unit) is None  # no password in it
    # The unit names where chatctl is installed; verify checks that it is executable.
    exec_start = re.search(r"^ExecStart=(\S+)", unit, re.MULTILINE)
    assert exec_start is not None
    chatctl = shutil.which("chatctl", path=os.path.dirname(sys.executable))
    assert chatctl is not None
    (tmp_path / "chatctl.service").write_text(unit.replace(exec_start.group(1), chatctl))
    result = subprocess.run(
        [analyze, "verify", str(tmp_path / "chatctl.service")],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "SYSTEMD_LOG_LEVEL": "notice"},
    )
    said = [line for line in (result.stdout + result.stderr).splitlines() if "chatctl" in line]
    assert result.returncode == 0 and not said, result.stdout + result.stderr


class PasswordTaker:
    """A stand-in PostgreSQL server that asks every client for a cleartext password,
    keeps what it is given, and refuses the login: what libpq sent, from where chatctl let
    it look (on 127.0.0.1, a port of its own, in a thread)."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.passwords: list[str] = []
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            with conn:
                conn.settimeout(5)
                with contextlib.suppress(OSError, struct.error):
                    self._one(conn)

    def _one(self, conn: socket.socket) -> None:
        while True:  # SSLRequest / GSSENCRequest: "no", then the StartupMessage
            (length,) = struct.unpack("!I", _exactly(conn, 4))
            body = _exactly(conn, length - 4)
            if struct.unpack("!I", body[:4])[0] not in (80877103, 80877104):
                break
            conn.sendall(b"N")
        conn.sendall(b"R" + struct.pack("!II", 8, 3))  # AuthenticationCleartextPassword
        kind = _exactly(conn, 1)
        (length,) = struct.unpack("!I", _exactly(conn, 4))
        body = _exactly(conn, length - 4)
        if kind == b"p":
            self.passwords.append(body.rstrip(b"\0").decode())
        fields = b"SFATAL\0C28P01\0Mpassword authentication failed\0\0"
        conn.sendall(b"E" + struct.pack("!I", 4 + len(fields)) + fields)

    def close(self) -> None:
        self.listener.close()


def _exactly(conn: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = conn.recv(n - len(data))
        if not chunk:
            raise OSError("closed")
        data += chunk
    return data


@pytest.mark.parametrize("where", ["PGPASSFILE", "PGPASSWORD"])
def test_the_database_password_comes_from_libpqs_own_places(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    """No password in --db: the server's store and ``serve migrate`` let libpq find it in
    the password file or PGPASSWORD, and send it when the database asks."""
    pytest.importorskip("psycopg")
    from chatctl.cli.main import run_cli
    from chatctl.errors import ChatctlError
    from chatctl.server.store_pg import PostgresStore

    taker = PasswordTaker()
    try:
        if where == "PGPASSFILE":
            passfile = tmp_path / "pgpass"
            passfile.write_text(f"127.0.0.1:{taker.port}:chat:chat:from-the-passfile\n")
            passfile.chmod(0o600)
            monkeypatch.setenv("PGPASSFILE", str(passfile))
            secret = "from-the-passfile"
        else:
            monkeypatch.setenv("PGPASSWORD", "from-the-environment")
            secret = "from-the-environment"
        url = f"postgresql://chat@127.0.0.1:{taker.port}/chat?sslmode=disable"
        with pytest.raises(ChatctlError, match="password authentication failed"):
            PostgresStore.open(url, fanout=None, timeout=2, migrate="new")  # type: ignore[arg-type]
        assert run_cli(["serve", "migrate", "--check", "--db", url]) == 1
        assert taker.passwords == [secret, secret]
    finally:
        taker.close()


def test_localhost_is_bound_on_every_loopback_address_a_client_may_try() -> None:
    """``--host localhost`` listens where ``localhost`` resolves (127.0.0.1 and, with IPv6,
    ::1), on one port: a client that tries ::1 first must reach this server, not find the
    port refused or, worse, another program listening on ::1 alone."""
    from chatctl.server.serve import _bind_tcp

    wanted = {info[4][0] for info in socket.getaddrinfo("localhost", 0, type=socket.SOCK_STREAM)}
    sockets = _bind_tcp("localhost", 0)
    try:
        bound = {s.getsockname()[0] for s in sockets}
        assert "127.0.0.1" in bound
        assert bound <= wanted and (bound == wanted or "::1" not in bound), (bound, wanted)
        assert len({s.getsockname()[1] for s in sockets}) == 1  # one port for them all
        if "::1" in bound:
            v6 = next(s for s in sockets if s.family == socket.AF_INET6)
            assert v6.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY) == 1
    finally:
        for s in sockets:
            s.close()
