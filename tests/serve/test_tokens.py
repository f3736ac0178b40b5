"""The tokens file and the registry: who a token is, what a reload changes, and which
files are refused (with the file and line named)."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
from pathlib import Path

import pytest

from chatctl.server.edge import bearer
from chatctl.server.tokens import (
    OPEN,
    Principal,
    Reload,
    TokenRegistry,
    TokensFileError,
    check_file_mode,
    parse_tokens,
    watch_tokens,
)


def sha(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(0o600)
    return path


TEAM = f"""\
# the team's tokens
tok-legacy-3e0c                       # an old admin token: its own tenant
tok-acme-admin tenant=acme admin      # acme's admin
tok-acme-alice   tenant=acme user=alice
sha256:{sha("tok-acme-bob").upper()} tenant=acme user=bob   # bob's, hashed
sha256:{sha("tok-globex-carol")} tenant=globex user=carol

tok-acme-ops tenant=acme              # admin is the default without user=
"""


def test_an_old_tokens_file_means_what_it_meant() -> None:
    # The format before user tokens: one token a line, its own tenant, keyed by its
    # SHA-256 exactly as the server always keyed it, so old databases keep their rooms.
    old_file = "# team tokens\n\ntok-alice   # alice's laptop\n  tok-bob\n#tok-old\n"
    lines = parse_tokens(old_file, "f")
    assert [(line.line, line.comment) for line in lines] == [(3, "alice's laptop"), (4, "")]
    for line, token in zip(lines, ["tok-alice", "tok-bob"], strict=True):
        assert line.principal() == Principal(sha(token), None, True, sha(token))
        assert line.clear and line.secret == token


def test_every_form_of_line(tmp_path: Path) -> None:
    registry = TokenRegistry(write(tmp_path / "tokens", TEAM))
    who = {token: registry.authenticate(token) for token in (
        "tok-legacy-3e0c", "tok-acme-admin", "tok-acme-alice", "tok-acme-bob",
        "tok-globex-carol", "tok-acme-ops",
    )}  # fmt: skip
    assert who == {
        "tok-legacy-3e0c": Principal(sha("tok-legacy-3e0c"), None, True, sha("tok-legacy-3e0c")),
        "tok-acme-admin": Principal("tenant:acme", None, True, sha("tok-acme-admin")),
        "tok-acme-alice": Principal("tenant:acme", "alice", False, sha("tok-acme-alice")),
        "tok-acme-bob": Principal("tenant:acme", "bob", False, sha("tok-acme-bob")),
        "tok-globex-carol": Principal("tenant:globex", "carol", False, sha("tok-globex-carol")),
        "tok-acme-ops": Principal("tenant:acme", None, True, sha("tok-acme-ops")),
    }
    assert registry.authenticate("tok-unknown") is None
    assert registry.authenticate(sha("tok-acme-bob")) is None  # the hash is not the token
    assert registry.authenticate("sha256:" + sha("tok-acme-bob")) is None
    assert registry.clear_tokens() == {
        "tok-legacy-3e0c", "tok-acme-admin", "tok-acme-alice", "tok-acme-ops",
    }  # fmt: skip
    bob = next(line for line in registry.lines if line.user == "bob")
    assert (bob.line, bob.clear, bob.secret, bob.comment) == (5, False, None, "bob's, hashed")


def test_a_principal_never_holds_the_token(tmp_path: Path) -> None:
    registry = TokenRegistry(write(tmp_path / "tokens", TEAM))
    for token in ("tok-acme-alice", "tok-legacy-3e0c"):
        principal = registry.authenticate(token)
        assert principal is not None and token not in repr(principal)


def test_named_tenants_never_meet_an_old_tokens_tenant() -> None:
    # Even a legacy token spelled like a named tenant's key gets its own (hex) tenant.
    lines = parse_tokens("tenant:acme\nx tenant=acme\ny tenant=acme user=u\n", "f")
    keys = [line.principal().tenant for line in lines]
    assert keys == [sha("tenant:acme"), "tenant:acme", "tenant:acme"]


def test_an_old_tokens_tenant_can_be_given_user_tokens() -> None:
    # tenant=sha256:HEX names the rooms an old shared token made, so a team can move to
    # user tokens without losing them.
    old = sha("tok-shared")
    lines = parse_tokens(f"tok-shared\nsha256:{sha('a')} tenant=sha256:{old.upper()} user=a\n", "f")
    assert {line.principal().tenant for line in lines} == {old}
    assert lines[1].principal() == Principal(old, "a", False, sha("a"))


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ("sha256:abc tenant=acme", "64 hex digits"),
        ("sha256:" + "g" * 64, "64 hex digits"),
        ("tok tenant=", "tenant name"),
        ("tok tenant=acme/ops", "tenant name"),
        ("tok tenant=-acme", "tenant name"),
        ("tok tenant=sha256:1234", "64 hex digits"),
        ("tok tenant=acme user=", "user= needs a user id"),
        ("tok tenant=acme user=alice admin", "either admin or user=ID"),
        ("tok user=alice", "user= needs tenant=NAME"),
        ("tok tenant=acme tenant=globex", "tenant= is given twice"),
        ("tok tenant=acme user=a user=b", "user= is given twice"),
        ("tok tenant=acme admin admin", "admin is given twice"),
        ("tok tenant=acme alice", "unknown word 'alice'"),
        ("tok role=admin", "unknown word 'role=admin'"),
        ("tenant=acme user=alice", "must start with the token"),
        ("admin", "must start with the token"),
        ("tök tenant=acme", "printable ASCII"),
    ],
)
def test_a_malformed_line_is_named_with_its_file_and_number(line: str, problem: str) -> None:
    with pytest.raises(TokensFileError) as refused:
        parse_tokens(f"# tokens\ntok-ok\n{line}  # note\n", "/etc/chatctl/tokens")
    message = refused.value.message
    assert message.startswith("/etc/chatctl/tokens:3: "), message
    assert problem in message
    assert "\n" not in message


def test_the_same_token_twice() -> None:
    # An old file may repeat a token (it meant nothing); two meanings for one token do not go.
    assert len(parse_tokens("tok-a\ntok-a  # again\n", "f")) == 1
    assert len(parse_tokens(f"tok-a tenant=t\nsha256:{sha('tok-a')} tenant=t admin\n", "f")) == 1
    with pytest.raises(TokensFileError, match=r"^f:2: the same token as line 1"):
        parse_tokens(f"tok-a tenant=t user=u\nsha256:{sha('tok-a')} tenant=t user=v\n", "f")


def test_comments_and_hashes_inside_words() -> None:
    lines = parse_tokens("tok#1 tenant=acme user=a#b #and a comment # with hashes\n#\n   #x\n", "f")
    assert len(lines) == 1
    line = lines[0]
    assert (line.secret, line.user, line.comment) == ("tok#1", "a#b", "and a comment # with hashes")


def test_authorization_header() -> None:
    registry = TokenRegistry(tokens=["tok-a"])
    alice = registry.authenticate("tok-a")
    assert alice is not None
    # as the edge reads it: the header's token (``edge.bearer``), then who it is
    assert registry.authenticate(bearer("Bearer tok-a") or "") == alice
    assert registry.authenticate(bearer("bearer  tok-a ") or "") == alice
    for header in (None, "", "Bearer", "Bearer ", "Basic tok-a", "tok-a", "Bearer tok-b"):
        token = bearer(header)
        assert not token or registry.authenticate(token) is None, header


def test_no_tokens_is_open_and_an_empty_file_is_closed(tmp_path: Path) -> None:
    assert TokenRegistry().open
    assert TokenRegistry().authenticate("") is OPEN
    assert OPEN.admin and OPEN.tenant == ""
    empty = TokenRegistry(write(tmp_path / "tokens", "# nobody yet\n"))
    assert not empty.open and len(empty) == 0
    assert empty.authenticate("") is None
    assert empty.authenticate("anything") is None


def test_flags_and_file_together(tmp_path: Path) -> None:
    registry = TokenRegistry(write(tmp_path / "tokens", "tok-f tenant=t user=u\n"), ["tok-flag"])
    flag = sha("tok-flag")
    assert registry.authenticate("tok-flag") == Principal(flag, None, True, flag)
    assert registry.authenticate("tok-f") is not None
    for bad in ("", "has space", "tök"):
        with pytest.raises(TokensFileError, match="--token"):
            TokenRegistry(tokens=[bad])


def test_an_unreadable_file_is_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(TokensFileError, match=r"cannot read tokens file .*missing: No such file"):
        TokenRegistry(tmp_path / "missing")
    (tmp_path / "latin1").write_bytes(b"tok\xe9\n")
    with pytest.raises(TokensFileError, match="not UTF-8"):
        TokenRegistry(tmp_path / "latin1")


def test_reload_says_what_changed(tmp_path: Path) -> None:
    path = write(tmp_path / "tokens", "tok-a tenant=t user=a\ntok-b tenant=t user=b\ntok-c\n")
    registry = TokenRegistry(path)
    write(path, "tok-a tenant=t user=a\ntok-b tenant=t admin\ntok-d tenant=t user=d\n")
    reloaded = registry.reload()
    assert reloaded == Reload(
        added=frozenset({sha("tok-d")}),
        removed=frozenset({sha("tok-c")}),
        changed=frozenset({sha("tok-b")}),
        total=3,
    )
    # b's old grant (a user token) ended too: its streams were admitted under it.
    assert reloaded.revoked == {sha("tok-c"), sha("tok-b")}
    assert str(reloaded) == "3 tokens (1 added, 1 removed, 1 changed)"
    assert registry.authenticate("tok-c") is None
    assert registry.authenticate("tok-d") is not None
    assert registry.authenticate("tok-b") == Principal("tenant:t", None, True, sha("tok-b"))


def test_a_bad_reload_keeps_what_was_loaded(tmp_path: Path) -> None:
    path = write(tmp_path / "tokens", "tok-a\n")
    registry = TokenRegistry(path)
    write(path, "tok-a\ntok-b tenant=\n")
    with pytest.raises(TokensFileError, match=r":2: "):
        registry.reload()
    assert registry.authenticate("tok-a") is not None
    assert registry.authenticate("tok-b") is None


def settle(registry: TokenRegistry) -> Reload | None:
    """Poll as the watcher does until the change has settled (two equal looks)."""
    first = registry.poll()
    return first if first is not None else registry.poll()


def test_poll_applies_a_change_once_it_settles(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = write(tmp_path / "tokens", "tok-a\n")
    registry = TokenRegistry(path)
    assert registry.poll() is None  # nothing changed

    # An editor that empties the file, then writes it: the empty file is seen once and
    # never applied, since the next look sees the file changed again.
    path.write_text("")
    assert registry.poll() is None
    path.write_text("tok-a\ntok-b\n")
    assert registry.poll() is None  # changed again: wait for it to settle
    reloaded = registry.poll()
    assert reloaded is not None and reloaded.added == {sha("tok-b")} and not reloaded.revoked
    assert registry.poll() is None and registry.poll() is None

    # Replaced by a rename (what `chatctl serve token` and most editors do).
    new = write(tmp_path / "tokens.new", "tok-b\n")
    os.replace(new, path)
    reloaded = settle(registry)
    assert reloaded is not None and reloaded.removed == {sha("tok-a")}

    # A malformed file is logged once and not applied; fixing it applies the fix.
    caplog.set_level(logging.ERROR, "chatctl.server")
    path.write_text("tok-b\ntok-c tenant=\n")
    assert settle(registry) is None
    assert registry.poll() is None and registry.poll() is None
    assert len(caplog.records) == 1
    assert f"{path}:2: " in caplog.records[0].getMessage()
    assert "keeping the 1 tokens loaded before" in caplog.records[0].getMessage()
    assert registry.authenticate("tok-b") is not None
    path.write_text("tok-c\n")
    reloaded = settle(registry)
    assert reloaded is not None and reloaded.added == {sha("tok-c")}

    # A file that disappears keeps the tokens loaded (logged once), and comes back.
    path.unlink()
    assert settle(registry) is None and registry.poll() is None
    assert "cannot read tokens file" in caplog.records[-1].getMessage()
    assert registry.authenticate("tok-c") is not None
    write(path, "tok-d\n")
    reloaded = settle(registry)
    assert reloaded is not None and reloaded.removed == {sha("tok-c")}


def test_the_watcher_reloads_a_changed_file(tmp_path: Path) -> None:
    path = write(tmp_path / "tokens", "tok-a\n")
    registry = TokenRegistry(path)

    async def main() -> list[Reload]:
        seen: list[Reload] = []
        changed = asyncio.Event()

        def on_reload(reloaded: Reload) -> None:
            seen.append(reloaded)
            changed.set()

        watcher = asyncio.create_task(watch_tokens(registry, on_reload, interval=0.01))
        try:
            write(path, "tok-b\n")
            await asyncio.wait_for(changed.wait(), 10)
        finally:
            watcher.cancel()
        return seen

    seen = asyncio.run(main())
    assert [(r.added, r.removed) for r in seen] == [({sha("tok-b")}, {sha("tok-a")})]
    assert registry.authenticate("tok-a") is None


@pytest.mark.parametrize(
    ("mode", "serving", "writing"),
    [
        (0o600, "ok", "ok"),
        (0o400, "ok", "ok"),
        (0o640, "ok", "ok"),  # root-owned, read by the service's group
        (0o644, "ok", "refused"),
        (0o660, "refused", "refused"),
        (0o602, "refused", "refused"),
    ],
)
def test_who_may_touch_a_tokens_file(tmp_path: Path, mode: int, serving: str, writing: str) -> None:
    path = write(tmp_path / "tokens", "tok\n")
    path.chmod(mode)
    for check, expected in ((False, serving), (True, writing)):
        if expected == "ok":
            assert check_file_mode(path, writing=check) == mode
        else:
            with pytest.raises(TokensFileError, match=rf"mode {mode:04o}.*chmod 600 {path}$"):
                check_file_mode(path, writing=check)
    assert check_file_mode(tmp_path / "absent") is None


class _FakeServer:
    """What on_hangup reads of a uvicorn server: its config's live SSL context."""

    class config:
        ssl = None


def test_sighup_reloads_the_tokens_file_when_the_app_can_act_on_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from chatctl.server.config import ServerConfig
    from chatctl.server.serve import on_hangup

    caplog.set_level(logging.INFO, "chatctl.server")
    path = write(tmp_path / "tokens", "tok-a\ntok-b\n")
    registry = TokenRegistry(path)
    config = ServerConfig(db=str(tmp_path / "chat.db"), registry=registry)
    seen: list[Reload] = []
    hangup = on_hangup(_FakeServer(), config, seen.append)  # type: ignore[arg-type]

    write(path, "tok-b\ntok-c\n")
    hangup()  # at once: no settling, the operator asked
    assert [(r.added, r.removed) for r in seen] == [({sha("tok-c")}, {sha("tok-a")})]
    assert f"SIGHUP: reloaded tokens file {path}: 2 tokens (1 added, 1 removed" in caplog.text

    write(path, "tok-b\ntok-d tenant=\n")
    hangup()
    assert len(seen) == 1  # nothing applied, nothing revoked
    assert f"SIGHUP: {path}:2: " in caplog.text and "keeping the 2 tokens" in caplog.text
    assert registry.authenticate("tok-c") is not None

    # Without the app's hook (a server core that cannot close revoked streams) the file
    # is not re-read: accepting new tokens while old ones keep streaming would be half
    # a revocation.
    write(path, "tok-e\n")
    on_hangup(_FakeServer(), config, None)()  # type: ignore[arg-type]
    assert registry.authenticate("tok-e") is None
    assert "SIGHUP: reloaded nothing" in caplog.text
