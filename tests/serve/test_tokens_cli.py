"""``chatctl serve token add|list|revoke`` as a user runs them, and ``chatctl serve``
reading what they write: the token printed once and never stored, the file private and
rewritten whole, every other line kept, bad files refused with their line named."""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import signal
import stat
import subprocess
import time
from pathlib import Path

import pytest

from chatctl.server.tokens import Principal, TokenRegistry
from tests.conftest import Run
from tests.serve.conftest import Serve, chatctl


def sha(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def add(cli: Run, path: Path, *args: str) -> str:
    result = cli("serve", "token", "add", "--tokens-file", str(path), *args)
    assert result.code == 0, result.stderr
    return result.stdout


def test_add_prints_the_token_once_and_stores_only_its_hash(cli: Run, tmp_path: Path) -> None:
    path = tmp_path / "etc" / "tokens"
    out = add(cli, path, "--tenant", "acme", "--user", "alice", "--comment", "alice's laptop")
    # stdout is the token and nothing else, for TOKEN=$(...)
    assert re.fullmatch(r"chatctl_[A-Za-z0-9_-]{43}\n", out), out
    token = out.strip()
    text = path.read_text()
    assert token not in text
    assert text == f"sha256:{sha(token)} tenant=acme user=alice  # alice's laptop\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert TokenRegistry(path).authenticate(token) == Principal(
        "tenant:acme", "alice", False, sha(token)
    )
    admin = add(cli, path, "--tenant", "acme", "--admin").strip()
    assert admin != token
    assert path.read_text().splitlines()[1] == f"sha256:{sha(admin)} tenant=acme admin"
    assert TokenRegistry(path).authenticate(admin) == Principal(
        "tenant:acme", None, True, sha(admin)
    )


def test_add_says_what_it_did_on_stderr(cli: Run, tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    result = cli("serve", "token", "add", "-t", "acme", "-u", "bob", "-f", str(path))
    token = result.stdout.strip()
    assert result.stderr == (
        f"added token {sha(token)[:12]} (user bob of tenant acme) as line 1 of {path};"
        " the token is shown only this once\n"
    )


def test_add_keeps_what_the_file_had(cli: Run, tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    before = "# the team\ntok-legacy   # an old one\n\nsha256:" + "a" * 64 + " tenant=x user=y"
    path.write_text(before)  # no newline at the end
    path.chmod(0o640)  # read by the service's group: kept as it is
    token = add(cli, path, "-t", "acme", "-u", "carol").strip()
    assert path.read_text() == before + f"\nsha256:{sha(token)} tenant=acme user=carol\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o640


@pytest.mark.parametrize(
    ("args", "problem"),
    [
        ((), "--user ID"),
        (("-u", "alice", "--admin"), "cannot be used together"),
        (("--admin", "-t", "ac me"), "tenant name"),
        (("--admin", "-t", "tenant:acme"), "tenant name"),
        (("-u", "alice smith"), "cannot be written in a tokens file"),
        (("-u", "alice\tsmith"), "cannot be written in a tokens file"),
        (("-u", "alice,bob"), "must not contain ','"),
        (("--admin", "-c", "two\nlines"), "one line of printable text"),
    ],
)
def test_add_refuses_what_cannot_be_written(
    cli: Run, tmp_path: Path, args: tuple[str, ...], problem: str
) -> None:
    path = tmp_path / "tokens"
    if "-t" not in args:
        args = ("-t", "acme", *args)
    result = cli("serve", "token", "add", "-f", str(path), *args)
    assert result.code == 2
    assert result.stdout == ""
    assert problem in result.stderr and len(result.stderr.splitlines()) == 1, result.stderr
    assert not path.exists()


@pytest.mark.parametrize("mode", [0o644, 0o620, 0o606])
def test_add_refuses_a_file_others_can_read_or_write(cli: Run, tmp_path: Path, mode: int) -> None:
    path = tmp_path / "tokens"
    path.write_text("tok-a\n")
    path.chmod(mode)
    result = cli("serve", "token", "add", "-t", "acme", "--admin", "-f", str(path))
    assert result.code == 2 and result.stdout == ""
    assert f"(mode {mode:04o}); make it private: chmod 600 {path}" in result.stderr
    assert path.read_text() == "tok-a\n"


def test_add_refuses_a_malformed_file(cli: Run, tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    path.write_text("tok-a\ntok-b tenant=acme bogus\n")
    path.chmod(0o600)
    result = cli("serve", "token", "add", "-t", "acme", "--admin", "-f", str(path))
    assert result.code == 2 and result.stdout == ""
    assert result.stderr.startswith(f"error: {path}:2: unknown word 'bogus'")
    assert path.read_text() == "tok-a\ntok-b tenant=acme bogus\n"


def test_add_follows_a_symlink(cli: Run, tmp_path: Path) -> None:
    real = tmp_path / "secrets" / "tokens"
    real.parent.mkdir()
    real.write_text("")
    real.chmod(0o600)
    link = tmp_path / "tokens"
    link.symlink_to(real)
    token = add(cli, link, "-t", "acme", "--admin").strip()
    assert link.is_symlink()
    assert sha(token) in real.read_text()


def test_concurrent_adds_all_land(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    procs = [
        subprocess.Popen(
            chatctl("serve", "token", "add", "-t", "acme", "-u", f"user{n}", "-f", str(path)),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for n in range(4)
    ]
    tokens = []
    for proc in procs:
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        tokens.append(out.strip())
    registry = TokenRegistry(path)
    assert len(registry) == 4
    assert {p.user for p in map(registry.authenticate, tokens) if p} == {
        f"user{n}" for n in range(4)
    }


LISTED = f"""\
# team tokens
tok-legacy-secret          # the old shared one
tok-ops tenant=acme admin
sha256:{sha("tok-alice")} tenant=acme user=alice  # alice's laptop
"""


def test_list_shows_no_secret(cli: Run, tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    path.write_text(LISTED)
    result = cli("serve", "token", "list", "-f", str(path), "-o", "json")
    assert result.code == 0, result.stderr
    assert json.loads(result.stdout) == {
        "tokens": [
            {"id": sha("tok-legacy-secret")[:12], "line": 2, "tenant": None, "user": None,
             "admin": True, "stored": "clear", "comment": "the old shared one"},
            {"id": sha("tok-ops")[:12], "line": 3, "tenant": "acme", "user": None,
             "admin": True, "stored": "clear", "comment": ""},
            {"id": sha("tok-alice")[:12], "line": 4, "tenant": "acme", "user": "alice",
             "admin": False, "stored": "hash", "comment": "alice's laptop"},
        ]
    }  # fmt: skip
    table = cli("serve", "token", "list", "-f", str(path), "-o", "table")
    assert table.code == 0
    header, *rows = table.stdout.splitlines()
    assert header.split() == ["ID", "LINE", "TENANT", "USER", "ADMIN", "STORED", "COMMENT"]
    assert rows[2].split()[:5] == [sha("tok-alice")[:12], "4", "acme", "alice", "false"]
    for output in (result.stdout, table.stdout):
        for secret in ("tok-legacy-secret", "tok-ops", sha("tok-alice")):
            assert secret not in output


def test_revoke_by_id_keeps_every_other_line(cli: Run, tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    path.write_text(LISTED)
    path.chmod(0o600)
    result = cli("serve", "token", "revoke", sha("tok-ops")[:8], "-f", str(path))
    assert result.code == 0, result.stderr
    assert result.stderr == (
        f"revoked token {sha('tok-ops')[:12]} (admin of tenant acme), line 3 of {path}\n"
    )
    assert result.stdout == ""
    assert path.read_text() == LISTED.replace("tok-ops tenant=acme admin\n", "")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    # sha256: before the id is fine too.
    result = cli("serve", "token", "revoke", "sha256:" + sha("tok-alice")[:12], "-f", str(path))
    assert result.code == 0, result.stderr
    assert path.read_text() == "# team tokens\ntok-legacy-secret          # the old shared one\n"


def test_revoke_the_token_itself_from_stdin(cli: Run, tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    path.write_text(LISTED)
    path.chmod(0o600)
    result = cli("serve", "token", "revoke", "-", "-f", str(path), input="tok-alice\n")
    assert result.code == 0, result.stderr
    assert "user alice of tenant acme" in result.stderr
    assert "tok-alice" not in result.stderr
    assert sha("tok-alice") not in path.read_text()
    assert len(TokenRegistry(path)) == 2


def test_revoke_refusals(cli: Run, tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    # Two tokens whose ids start alike.
    path.write_text(f"sha256:abcdef{'1' * 58}\nsha256:abcdef{'2' * 58}\n")
    path.chmod(0o600)
    before = path.read_text()

    def revoke(*args: str, input: str = "") -> tuple[int, str]:
        result = cli("serve", "token", "revoke", *args, "-f", str(path), input=input)
        return result.code, result.stderr

    code, err = revoke("abcdef")
    assert code == 2 and "matches the tokens of lines 1, 2: give more of the id" in err
    code, err = revoke("abc")
    assert code == 2 and "at least 6 hex digits" in err
    code, err = revoke("not-hex")
    assert code == 2 and "at least 6 hex digits" in err
    code, err = revoke("0123456789")
    assert code == 5 and "no token in" in err and "token list" in err
    code, err = revoke("-", input="tok-unknown\n")
    assert code == 5 and "tok-unknown" not in err
    code, err = revoke("-", input="\n")
    assert code == 2 and "no token on stdin" in err
    assert path.read_text() == before
    missing = cli("serve", "token", "revoke", "abcdef", "-f", str(tmp_path / "none"))
    assert missing.code == 2 and "No such file" in missing.stderr


def test_serving_options_do_not_go_with_token(cli: Run, tmp_path: Path) -> None:
    result = cli("serve", "--port", "1", "token", "list", "-f", str(tmp_path / "t"))
    assert result.code == 2
    assert "--port is an option of chatctl serve itself" in result.stderr


def run_serve(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        chatctl("serve", "--port", "0", *args), capture_output=True, text=True, timeout=30
    )


def test_serve_stops_at_a_malformed_line_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    path.write_text("# tokens\ntok-a\ntok-b tenant=acme user=bob admin\n")
    result = run_serve("--tokens-file", str(path), "--db", str(tmp_path / "chat.db"))
    assert result.returncode == 2
    assert result.stderr == (f"error: {path}:3: a token is either admin or user=ID, not both\n"), (
        result.stderr
    )
    assert not (tmp_path / "chat.db").exists()


def test_serve_refuses_a_tokens_file_others_can_write(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    path.write_text("tok-a\n")
    path.chmod(0o664)
    result = run_serve("--tokens-file", str(path), "--db", str(tmp_path / "chat.db"))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"error: tokens file {path} is writable by others (mode 0664); make it private:"
        f" chmod 600 {path}"
    ]


def test_serve_warns_of_a_readable_file_of_clear_tokens(serve: Serve, tmp_path: Path) -> None:
    # Still served (an old file keeps working), with a warning saying how to fix it.
    path = tmp_path / "tokens"
    path.write_text("tok-a\n")
    path.chmod(0o644)
    served = serve("--tokens-file", str(path))
    with served.http("tok-a") as http:
        assert http.post("/v1/chat/List", json={}).status_code == 200
    assert served.stderr().splitlines()[0] == (
        f"warning: tokens file {path} holds tokens in clear and others can read it"
        f" (mode 0644): chmod 600 {path}, or keep only sha256: lines (chatctl serve"
        " token add writes them)"
    )
    assert served.stop() == 0
    assert "tok-a" not in served.stderr()


def test_serve_takes_every_kind_of_line_and_an_empty_file_refuses_everyone(
    serve: Serve, tmp_path: Path
) -> None:
    # An empty file is a server nobody may use yet (not an open one): it serves, says so,
    # and lets in the first token added while it runs.
    path = tmp_path / "tokens"
    path.write_text("# nobody yet\n")
    path.chmod(0o600)
    served = serve("--tokens-file", str(path))
    assert served.stderr().splitlines()[0] == (
        f"warning: tokens file {path} holds no token yet: every call is refused (401) until"
        f" one is added: chatctl serve token add --tokens-file {path}"
    )
    with served.http() as http:
        assert http.post("/v1/chat/List", json={}).status_code == 401
    path.write_text(f"tok-a\nsha256:{sha('tok-b')} tenant=acme user=bob\n")
    with served.http("tok-b") as http:
        deadline = time.monotonic() + 10
        while (listed := http.post("/v1/chat/List", json={})).status_code == 401:
            assert time.monotonic() < deadline, "the new token was never accepted"
            time.sleep(0.05)
        assert listed.json()["rooms"] == []
        created = http.post("/v1/chat/Create", json={"name": "bob's"}).json()["room"]
        assert created["user_ids"] == ["bob"]
    with served.http("tok-a") as http:  # the old format: its own tenant, not acme's
        assert http.post("/v1/chat/List", json={}).json()["rooms"] == []
    assert served.stop() == 0


def test_sighup_reloads_rather_than_ends_the_server(serve: Serve, tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    path.write_text("tok-a\n")
    path.chmod(0o600)
    served = serve("--tokens-file", str(path))
    served.proc.send_signal(signal.SIGHUP)
    served.wait_for_log(r"SIGHUP: reloaded")
    with served.http("tok-a") as http:
        assert http.post("/v1/chat/List", json={}).status_code == 200
    assert served.stop() == 0


def test_a_token_offered_as_a_subprotocol_is_never_logged(serve: Serve, tmp_path: Path) -> None:
    from websockets.exceptions import ConnectionClosed
    from websockets.sync.client import unix_connect

    path = tmp_path / "tokens"
    path.write_text(f"tok-known-5e1d\nsha256:{sha('tok-hashed-bob-77c2')} tenant=acme user=bob\n")
    path.chmod(0o600)
    served = serve("--tokens-file", str(path), "--log-level", "debug")
    assert served.uds is not None
    room = '{"room_id": "00000000-0000-0000-0000-000000000000"}'
    # (offered, path, first frame, the code of the error frame): known, unknown, known
    # only by its hash; on the Join path, on a path that is none, with a frame that is
    # not JSON; offered beside another protocol.
    attempts = [
        (["tok-unknown-1c9a"], "/v1/chat/Join", room, 401),
        (["tok-known-5e1d"], "/v1/chat/Join", room, 400),  # an admin names its user
        (["tok-hashed-bob-77c2", "chat"], "/v1/chat/Join", room, 404),
        (["tok-hashed-bob-77c2"], "/v1/chat/Join", "{not json", 400),
        (["tok-unknown-2d8b", "chat"], "/v1/chat/Nothing", room, 404),
    ]
    for offered, where, first, code in attempts:
        with unix_connect(str(served.uds), f"ws://localhost{where}", subprotocols=offered) as ws:
            with contextlib.suppress(ConnectionClosed):
                ws.send(first)
            error = json.loads(ws.recv(timeout=10))
            assert error["code"] == code, (offered, where, error)
    # ... nor as a bearer token, on a WebSocket or an HTTP call: unknown, known only by
    # its hash and spaced out (which the server accepts), or with no scheme at all.
    for authorization, code in (
        ("Bearer tok-unknown-3e7f", 401),
        ("Bearer  tok-hashed-bob-77c2", 404),
        ("tok-unknown-5b2e", 401),
    ):
        with unix_connect(
            str(served.uds),
            "ws://localhost/v1/chat/Join",
            additional_headers={"Authorization": authorization},
        ) as ws:
            with contextlib.suppress(ConnectionClosed):
                ws.send(room)
            assert json.loads(ws.recv(timeout=10))["code"] == code, authorization
    with served.http("tok-unknown-4a0c") as http:
        assert http.post("/v1/chat/List", json={}).status_code == 401
    assert served.stop() == 0
    log = served.stderr()
    assert "sec-websocket-protocol: [redacted]" in log.lower()  # the handshake was logged...
    secrets = ("tok-unknown-1c9a", "tok-known-5e1d", "tok-hashed-bob-77c2", "tok-unknown-2d8b")
    for secret in (*secrets, "tok-unknown-3e7f", "tok-unknown-4a0c", "tok-unknown-5b2e"):
        assert secret not in log  # ...never a token in it
    assert "authorization: [redacted]" in log.lower()


def test_limits_are_on_by_default_with_tokens_and_off_without(serve: Serve, tmp_path: Path) -> None:
    # With a tokens file and no --rate-limit: 50/s in bursts of 100. Calls one after
    # another (far faster than 50 a second) get the burst, then 429 naming the rate.
    path = tmp_path / "tokens"
    path.write_text("tok-a\n")
    path.chmod(0o600)
    team = serve("--tokens-file", str(path))
    answered = 0
    with team.http("tok-a") as http:
        while (r := http.post("/v1/chat/List", json={})).status_code == 200:
            answered += 1
            assert answered < 2000, "never rate limited"
    assert r.status_code == 429 and answered >= 100, (r.status_code, answered)
    assert r.json()["detail"] == "rate limit of 50 requests/s per token exceeded; retry after 1 s"
    # An open server (as the embedded local one is): the same calls, none refused.
    local = serve()
    with local.http() as http:
        statuses = {http.post("/v1/chat/List", json={}).status_code for _ in range(500)}
    assert statuses == {200}
    assert team.stop() == 0 and local.stop() == 0
