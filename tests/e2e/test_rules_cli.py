"""The room rules as a CLI user meets them: exit statuses 4/5 with the server's detail."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections.abc import Callable

from tests.e2e.test_join import Tail, make_room
from tests.helpers import ServerProcess, chatctl, cli_env


def test_private_room_refuses_non_members(server: ServerProcess) -> None:
    env = cli_env(server)
    r = chatctl("create", "secret", "--private", "-u", "alice", "-o", "id", env=env)
    room = r.stdout.strip()
    denied = chatctl("send", room, "hi", "--user", "mallory", env=env)
    assert denied.returncode == 4
    assert "(chat.send, HTTP 403)" in denied.stderr.splitlines()[0]
    history = chatctl("history", room, "--user", "mallory", env=env)
    assert history.returncode == 4
    assert chatctl("send", room, "hi", "--user", "alice", env=env).returncode == 0
    join = chatctl("join", room, "--user", "mallory", "--no-reconnect", env=env)
    assert join.returncode == 4 and "403" in join.stderr


def test_kicked_tail_ends_at_once_and_cannot_rejoin(
    start_server: Callable[..., ServerProcess],
) -> None:
    server = start_server(tcp=True)
    env = cli_env(server)
    r = chatctl("create", "p", "--private", "-u", "watcher", "-u", "alice", "-o", "id", env=env)
    private = r.stdout.strip()
    assert chatctl("send", private, "before", "--user", "alice", env=env).returncode == 0
    # The creator is a member already: the replayed message shows the tail is live.
    tail = Tail(server, private, "--history", "1")
    tail.wait_printed(1)
    with server.http() as http:
        kicked = time.monotonic()
        http.post(
            "/v1/chat/Kick", json={"room_id": private, "user_id": "watcher"}
        ).raise_for_status()
    code, err = tail.finish(10)
    assert code == 4, err
    assert "kicked" in err.lower()
    # The reason is on the tail's stderr at once: with the kick, not at the tail's next
    # ping (8 s); the bound leaves room for four test workers on two cores.
    printed = tail.errors[0][0]
    assert printed - kicked < 1.0, f"{(printed - kicked) * 1000:.0f} ms"
    rejoin = chatctl("join", private, "--user", "watcher", "--no-reconnect", env=env)
    assert rejoin.returncode == 4
    assert "invite" in rejoin.stderr


def test_tenants_cannot_see_each_other(start_server: Callable[..., ServerProcess]) -> None:
    server = start_server(tcp=True, tokens=["tok-a", "tok-b"])
    a = cli_env(server, CHATCTL_TOKEN="tok-a")
    b = cli_env(server, CHATCTL_TOKEN="tok-b")
    room = json.loads(chatctl("create", "mine", "-u", "u", "-o", "json", env=a).stdout)["room"][
        "id"
    ]
    assert chatctl("list", "-o", "id", env=b).stdout == ""
    for args in (
        ["history", room, "--limit", "1"],
        ["send", room, "x", "--user", "u"],
        ["join", room, "--user", "u", "--no-reconnect"],
        ["invite", room, "v"],
        ["kick", room, "u", "--yes"],
        ["delete", room, "--yes"],
    ):
        r = chatctl(*args, env=b)
        assert r.returncode == 5, (args, r.stderr)
        assert "room not found" in r.stderr
    r = chatctl("list", env=cli_env(server))
    assert r.returncode == 4 and "HTTP 401" in r.stderr
    assert chatctl("history", room, env=a).returncode == 0


class LoseFirstResponse:
    """A loopback TCP proxy that forwards the first connection's request to the server,
    reads the server's answer, and drops the connection instead of passing it on: the
    message is stored, but the client never hears so. Later connections pass through."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream = ("127.0.0.1", upstream_port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.connections = 0
        self.lost: list[bytes] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(
                target=self._serve, args=(client, self.connections == 1), daemon=True
            ).start()

    def _serve(self, client: socket.socket, lose: bool) -> None:
        with client, socket.create_connection(self.upstream) as server:
            if lose:
                server.sendall(_read_request(client))
                self.lost.append(server.recv(65536))  # the answer: the message is stored
                return  # ... and the client's connection closes without it
            threading.Thread(target=_pump, args=(server, client), daemon=True).start()
            _pump(client, server)

    def close(self) -> None:
        self.listener.close()


def _read_request(sock: socket.socket) -> bytes:
    """One whole HTTP request, however many pieces it arrives in."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.lower().split(b"\r\n")
        if line.startswith(b"content-length:")
    )
    while len(body) < length:
        body += sock.recv(65536)
    return head + b"\r\n\r\n" + body


def _pump(src: socket.socket, dst: socket.socket) -> None:
    try:
        while data := src.recv(65536):
            dst.sendall(data)
    except OSError:
        pass
    finally:
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)


def test_a_send_whose_answer_is_lost_is_retried_and_stored_once(
    start_server: Callable[..., ServerProcess],
) -> None:
    server = start_server(tcp=True)
    env = cli_env(server)
    room = chatctl("create", "r", "-u", "u", "-o", "id", env=env).stdout.strip()
    proxy = LoseFirstResponse(server.port or 0)
    try:
        r = chatctl(
            "send",
            room,
            "exactly once",
            "--user",
            "u",
            "-v",
            "-o",
            "id",
            env=cli_env(CHATCTL_URL=f"http://127.0.0.1:{proxy.port}"),
        )
    finally:
        proxy.close()
    assert r.returncode == 0, r.stderr
    assert proxy.lost and proxy.lost[0].startswith(b"HTTP/1.1 200")  # stored, answer lost
    assert "unreachable" in r.stderr and " 200 " in r.stderr  # failed, then retried
    history = json.loads(chatctl("history", room, "-o", "json", env=env).stdout)["messages"]
    assert [m["text"] for m in history] == ["exactly once"]
    assert [m["id"] for m in history] == r.stdout.split()


def test_limits_and_server_clock_through_the_cli(
    start_server: Callable[..., ServerProcess],
) -> None:
    server = start_server(extra=["--max-text-chars", "10"])
    env = cli_env(server, CHATCTL_USER="u")
    room = chatctl("create", "r", "-u", "u", "-o", "id", env=env).stdout.strip()
    r = chatctl("send", room, "x" * 11, env=env)
    assert r.returncode == 1
    assert "max_text_chars" in r.stderr.splitlines()[0]
    assert "(chat.send, HTTP 400)" in r.stderr.splitlines()[0]
    # A client cannot date its own message: sent_at in the request is ignored.
    forged = json.dumps({"room_id": room, "text": "hi", "sent_at": "2000-01-01T00:00:00Z"})
    sent = json.loads(chatctl("send", "-i", "-", "-o", "json", env=env, input=forged).stdout)
    a_minute_ago = time.strftime("%Y-%m-%dT%H:%M", time.gmtime(time.time() - 60))
    assert sent["message"]["sent_at"] > a_minute_ago


def test_membership_events_in_a_pipe(start_server: Callable[..., ServerProcess]) -> None:
    server = start_server(tcp=True)
    env = cli_env(server)
    room = make_room(server)
    tail = Tail(server, room, "--events", "--count", "1")
    tail.wait_joined()
    assert chatctl("invite", room, "bob", env=env).returncode == 0
    assert chatctl("kick", room, "bob", "--yes", env=env).returncode == 0
    assert chatctl("invite", room, "carol", env=env).returncode == 0
    assert chatctl("send", room, "hello", "--user", "carol", env=env).returncode == 0
    code, err = tail.finish()
    assert code == 0, err
    lines = tail.messages()
    assert [(e.get("type"), e.get("user_id")) for e in lines[:-1]] == [
        ("invited", "bob"),
        ("kicked", "bob"),
        ("invited", "carol"),
    ]
    assert lines[-1]["text"] == "hello"
