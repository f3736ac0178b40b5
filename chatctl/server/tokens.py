"""Who a bearer token is: the tokens file, its reloads, and authentication.

The tokens file (``chatctl serve --tokens-file F``) holds one token a line::

    # blank lines and comments are skipped; a comment may also end a line
    tok-3e0c9a                          an admin token, its own tenant (the old format)
    tok-77aa1f tenant=acme admin        an admin token of tenant acme: acts as any user
    tok-5f1e0b tenant=acme user=alice   a user token: acts only as alice, in acme
    sha256:9f86d0…  tenant=acme user=bob   the same, with the token's SHA-256 instead

A line may give the token's SHA-256 (64 hex digits after ``sha256:``) instead of the
token, so the file need hold no secret; ``chatctl serve token add`` writes only such lines.
A malformed line is a ``TokensFileError`` naming the file and the line (``serve`` stops
with it, exit 2); a file that turns malformed while serving is not applied (the tokens
loaded before stay), and the error is logged.

Tenant keys (what the store scopes rooms by, never a secret):

- a line without ``tenant=``: the token's SHA-256 in hex, which is what the server has
  always used, so an existing database keeps its rooms;
- ``tenant=NAME``: ``tenant:NAME``. Every token of NAME shares it, and it can never equal
  a key of the first kind (64 hex digits, no colon) or the open server's ``""``;
- ``tenant=sha256:HEX``: the first kind's key of the token whose SHA-256 is HEX, so user
  tokens can be given to the rooms an old shared token made.

Authentication hashes the offered token and looks the digest up: the time it takes
depends on the digest of what was offered, never on how much of a secret it matched.
A ``Principal`` carries the token's digest as its ``token_id`` (for per-token limits,
stream caps and revocation), never the token.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import logging
import os
import re
import stat
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from chatctl.errors import NotFoundError, UsageError
from chatctl.schema import unseen_character

__all__ = [
    "OPEN",
    "Principal",
    "Reload",
    "TokenLine",
    "TokenRegistry",
    "TokensFileError",
    "add_token",
    "check_file_mode",
    "parse_tokens",
    "read_tokens",
    "revoke_token",
    "revoke_token_itself",
    "tenant_key",
    "token_digest",
    "watch_tokens",
]

log = logging.getLogger("chatctl.server")

#: what a ``tenant=`` name may be: a label a person types, kept free of the characters
#: the file format and logs give a meaning to.
TENANT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}")
_HEX64 = re.compile(r"[0-9a-fA-F]{64}")
_HASHED = "sha256:"
_COMMENT = re.compile(r"(?:^|\s)#")
#: the prefix of a ``tenant=NAME`` tenant key (a legacy key is 64 hex digits: no colon).
NAMED_TENANT = "tenant:"


class TokensFileError(UsageError):
    """A tokens file that cannot be used: ``FILE:LINE: what is wrong`` (exit 2)."""


@dataclass(frozen=True, slots=True)
class Principal:
    """Who a request acts as, once its token is known.

    ``admin`` tokens act as any user of their tenant, as every m3o token did; a user
    token (``user`` set) acts only as that user. ``token_id`` is the token's SHA-256 in
    hex: the key for rate limits, stream caps and revocation, safe to log.
    """

    tenant: str
    user: str | None
    admin: bool
    token_id: str


#: the principal of every request to an open server (no tokens: loopback, single tenant).
OPEN = Principal(tenant="", user=None, admin=True, token_id="")


@dataclass(frozen=True, slots=True)
class TokenLine:
    """One token line of a tokens file, as parsed."""

    #: 1-based line number in the file (0 for a ``--token`` flag).
    line: int
    #: the token's SHA-256, lowercase hex.
    digest: str
    #: ``tenant=`` as written (``None``: the token's own tenant).
    tenant: str | None
    user: str | None
    #: the token was written in clear (not as ``sha256:HEX``).
    clear: bool
    comment: str
    #: the token itself when written in clear (the old format), else None.
    secret: str | None = None

    @property
    def admin(self) -> bool:
        return self.user is None

    def principal(self) -> Principal:
        return Principal(tenant_key(self.tenant, self.digest), self.user, self.admin, self.digest)


@dataclass(frozen=True, slots=True)
class Reload:
    """What a reload changed, by token id (digest)."""

    added: frozenset[str]
    #: tokens no longer in the file.
    removed: frozenset[str]
    #: tokens still there with another meaning (tenant, user or admin changed).
    changed: frozenset[str]
    #: how many tokens are accepted now.
    total: int

    @property
    def revoked(self) -> frozenset[str]:
        """Tokens whose old grant ended: their streams (admitted under it) must close."""
        return self.removed | self.changed

    def __str__(self) -> str:
        return (
            f"{self.total} tokens ({len(self.added)} added, {len(self.removed)} removed,"
            f" {len(self.changed)} changed)"
        )


def token_digest(token: str) -> str:
    """A token's SHA-256, lowercase hex: its id, and how the file may hold it."""
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).hexdigest()


def tenant_key(tenant: str | None, digest: str) -> str:
    """The store's tenant key for a line's ``tenant=`` (None: the token's own tenant)."""
    if tenant is None:
        return digest
    if tenant.startswith(_HASHED):
        return tenant[len(_HASHED) :].lower()
    return NAMED_TENANT + tenant


def parse_tokens(text: str, source: str) -> list[TokenLine]:
    """Every token line of a tokens file's text; ``source`` names it in errors.

    The same token on two lines is refused unless both say the same (an old file may
    repeat a token, which meant nothing).
    """
    found: list[TokenLine] = []
    seen: dict[str, TokenLine] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        try:
            entry = _parse_line(raw, number)
        except ValueError as exc:
            raise TokensFileError(f"{source}:{number}: {exc}") from None
        if entry is None:
            continue
        earlier = seen.get(entry.digest)
        if earlier is not None:
            if earlier.principal() != entry.principal():
                raise TokensFileError(
                    f"{source}:{number}: the same token as line {earlier.line},"
                    " with another meaning"
                )
            continue
        seen[entry.digest] = entry
        found.append(entry)
    return found


def _parse_line(raw: str, number: int) -> TokenLine | None:
    # A comment starts at a '#' that begins a word: a token may hold '#' elsewhere.
    hash_mark = _COMMENT.search(raw)
    comment = ""
    if hash_mark is not None:
        raw, comment = raw[: hash_mark.start()], raw[hash_mark.end() :].strip()
    words = raw.split()
    if not words:
        return None
    first, rest = words[0], words[1:]
    if first == "admin" or first.startswith(("tenant=", "user=")):
        raise ValueError(f"the line must start with the token or sha256:HEX, not {first!r}")
    if first.startswith(_HASHED):
        digest = first[len(_HASHED) :]
        if not _HEX64.fullmatch(digest):
            raise ValueError("sha256: must be followed by 64 hex digits")
        digest, clear, secret = digest.lower(), False, None
    else:
        if not all("\x21" <= c <= "\x7e" for c in first):
            raise ValueError("a token is printable ASCII (it travels in an HTTP header)")
        digest, clear, secret = token_digest(first), True, first
    tenant: str | None = None
    user: str | None = None
    admin = False
    for word in rest:
        key, eq, value = word.partition("=")
        if word == "admin":
            if admin:
                raise ValueError("admin is given twice")
            admin = True
        elif eq and key == "tenant":
            if tenant is not None:
                raise ValueError("tenant= is given twice")
            tenant = _tenant(value)
        elif eq and key == "user":
            if user is not None:
                raise ValueError("user= is given twice")
            if not value or not value.isprintable():
                raise ValueError("user= needs a user id (printable, no spaces)")
            user = value
        else:
            raise ValueError(
                f"unknown word {word!r} (after the token: tenant=NAME, then user=ID or admin;"
                " # starts a comment)"
            )
    if user is not None and admin:
        raise ValueError("a token is either admin or user=ID, not both")
    if user is not None and tenant is None:
        raise ValueError("user= needs tenant=NAME (the tenant whose rooms the user is in)")
    return TokenLine(number, digest, tenant, user, clear, comment, secret)


def _tenant(value: str) -> str:
    if value.startswith(_HASHED):
        if not _HEX64.fullmatch(value[len(_HASHED) :]):
            raise ValueError("tenant=sha256: must be followed by 64 hex digits")
        return _HASHED + value[len(_HASHED) :].lower()
    if not TENANT_NAME.fullmatch(value):
        raise ValueError(
            f"tenant={value!r}: a tenant name is 1-64 letters, digits, '.', '_', '@' or '-'"
            " (starting with a letter or digit), or sha256:HEX for an old token's tenant"
        )
    return value


def read_tokens(path: str | os.PathLike[str]) -> list[TokenLine]:
    """The token lines of a tokens file; TokensFileError when it is unreadable or malformed."""
    name = os.fspath(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise TokensFileError(f"cannot read tokens file {name}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise TokensFileError(f"{name}: not UTF-8 text ({exc.reason})") from None
    return parse_tokens(text, name)


class TokenRegistry:
    """The tokens a server accepts, from ``--token`` flags and a tokens file.

    A registry with neither is *open* (every request is ``OPEN``); one with a file that
    holds no token refuses everyone, and stays closed across reloads.
    """

    def __init__(self, path: str | os.PathLike[str] | None = None, tokens: Iterable[str] = ()):
        self.path = None if path is None else Path(path)
        self._flags = [_flag_line(token) for token in tokens]
        self._lines: list[TokenLine] = []
        self._principals: dict[str, Principal] = {}
        self._state: tuple[int, ...] | None = None
        #: the file state a failed reload was about, so a bad file is reported once.
        self._failed: tuple[int, ...] | None = None
        #: a new file state seen once, applied when the next look sees it again.
        self._pending: tuple[int, ...] | None = None
        self.reload()

    @property
    def open(self) -> bool:
        """True when no token is required (no flags, no file)."""
        return self.path is None and not self._flags

    @property
    def lines(self) -> list[TokenLine]:
        """The accepted tokens: the flags' (line 0), then the file's, in file order."""
        return list(self._lines)

    def __len__(self) -> int:
        return len(self._principals)

    def authenticate(self, token: str) -> Principal | None:
        """The principal of a bearer token, or None when it is not accepted."""
        if self.open:
            return OPEN
        return self._principals.get(token_digest(token))

    def accepts(self, principal: Principal) -> bool:
        """Whether ``principal``'s token still means it: False once the token was revoked
        or its line changed (a stream admitted just before a reload checks this)."""
        return self.open or self._principals.get(principal.token_id) == principal

    def clear_tokens(self) -> frozenset[str]:
        """The tokens written in clear (flags and old-format lines): for scrubbing logs."""
        return frozenset(line.secret for line in self._lines if line.secret is not None)

    def reload(self) -> Reload:
        """Read the file again and swap the accepted tokens at once.

        Raises TokensFileError (and changes nothing) when the file cannot be read or has a
        malformed line.
        """
        before = after = None
        lines = list(self._flags)
        if self.path is not None:
            before = _state_of(self.path)
            lines += read_tokens(self.path)
            after = _state_of(self.path)
        principals: dict[str, Principal] = {}
        for line in lines:
            # A flag and a file line for the same token: the file's line says what it is.
            principals[line.digest] = line.principal()
        old = self._principals
        self._lines, self._principals, self._failed = lines, principals, None
        # Written to while we read it: what we read may be half of it (an editor that
        # rewrites in place), so the next poll reads it again.
        self._state = before if before == after else None
        return Reload(
            added=frozenset(principals.keys() - old.keys()),
            removed=frozenset(old.keys() - principals.keys()),
            changed=frozenset(d for d in principals.keys() & old.keys() if principals[d] != old[d]),
            total=len(principals),
        )

    def poll(self) -> Reload | None:
        """Reload when the file changed and then stayed the same for one more look;
        None otherwise, or when the new content cannot be used (logged once; the tokens
        loaded stay).

        Waiting for one quiet look means an editor that empties the file and then writes
        it (in place) is never caught between the two, which would revoke every token
        for a moment. ``chatctl serve token`` replaces the file in one rename.
        """
        if self.path is None:
            return None
        state = _state_of(self.path)
        if state == self._state or state == self._failed:
            self._pending = None
            return None
        if state != self._pending:
            self._pending = state
            return None
        self._pending = None
        try:
            return self.reload()
        except TokensFileError as exc:
            self._failed = state
            log.error("%s; keeping the %d tokens loaded before", exc, len(self))
            return None


def _state_of(path: Path) -> tuple[int, ...]:
    """What tells a changed file apart: inode and device (a rename over it), size, times;
    ``()`` when it cannot be read."""
    try:
        st = os.stat(path)
    except OSError:
        return ()
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def _flag_line(token: str) -> TokenLine:
    if not token:
        raise TokensFileError("--token cannot be empty")
    if not all("\x21" <= c <= "\x7e" for c in token):
        raise TokensFileError("--token must be printable ASCII without spaces")
    return TokenLine(0, token_digest(token), None, None, True, "", token)


async def watch_tokens(
    registry: TokenRegistry,
    on_reload: Callable[[Reload], None],
    interval: float = 0.5,
) -> None:
    """Look at the tokens file every ``interval`` seconds; once a change has settled (see
    ``TokenRegistry.poll``), reload it and call ``on_reload`` (the server closes the
    revoked tokens' streams). Runs until cancelled.

    Polling the file's inode, size and times is portable (no inotify), catches an editor's
    rename-over and a Kubernetes secret's symlink swap alike, and costs two stats a second.
    """
    while True:
        await asyncio.sleep(interval)
        reloaded = registry.poll()
        if reloaded is not None:
            log.info("tokens file %s reloaded: %s", registry.path, reloaded)
            on_reload(reloaded)


def check_file_mode(path: str | os.PathLike[str], *, writing: bool = False) -> int | None:
    """Refuse a tokens file others may write: whoever can add a line has an admin token.
    With ``writing`` (``chatctl serve token``), also one that others may read. Group
    *read* is fine: a file owned by root and read by the service's group is the usual
    deployment. Returns the file's mode, or None when it does not exist."""
    try:
        mode = stat.S_IMODE(os.stat(path).st_mode)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise TokensFileError(f"cannot read tokens file {path}: {exc.strerror}") from None
    bad = stat.S_IWGRP | stat.S_IWOTH | (stat.S_IROTH if writing else 0)
    if mode & bad:
        raise TokensFileError(
            f"tokens file {path} is {'readable or ' if writing else ''}writable by others"
            f" (mode {mode:04o}); make it private: chmod 600 {path}"
        )
    return mode


# -- changing the file (``chatctl serve token add/revoke``) ---------------------------------

#: what ``token add`` makes: a prefix secret scanners and people can recognise, then 256
#: random bits.
TOKEN_PREFIX = "chatctl_"


def new_token() -> str:
    import secrets

    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def add_token(
    path: str | os.PathLike[str],
    tenant: str,
    *,
    user: str | None = None,
    comment: str = "",
) -> tuple[str, TokenLine]:
    """Make a new token, append its line (its SHA-256, never the token) to the tokens file
    and return the token with its line. An admin token when ``user`` is None.

    The file is created mode 0600 if missing; one that others may read or write, or that
    has a malformed line, is refused (TokensFileError) and left as it was.
    """
    comment = comment.strip()
    if comment and not comment.isprintable():
        raise TokensFileError("a comment is one line of printable text")
    try:
        _tenant(tenant)
    except ValueError as exc:
        raise TokensFileError(str(exc)) from None
    if user is not None and (not user or not user.isprintable() or " " in user):
        raise TokensFileError(
            f"user id {user!r} cannot be written in a tokens file (printable, no spaces)"
        )
    unseen = None if user is None else unseen_character(user, "id", "user")
    if unseen is not None:  # the server would refuse the user's every Create
        raise TokensFileError(unseen)
    token = new_token()
    line = f"sha256:{token_digest(token)} tenant={tenant} " + (
        "admin" if user is None else f"user={user}"
    )
    if comment:
        line += f"  # {comment}"
    parsed = parse_tokens(line, "the new line")
    assert parsed[0].principal().user == user and parsed[0].comment == comment
    added: list[TokenLine] = []

    def append(text: str) -> str:
        parse_tokens(text, os.fspath(path))  # nothing is added to a malformed file
        if text and not text.endswith("\n"):
            text += "\n"
        added.append(dataclasses.replace(parsed[0], line=text.count("\n") + 1))
        return text + line + "\n"

    _rewrite(Path(path), append)
    return token, added[0]


def revoke_token(path: str | os.PathLike[str], which: str) -> TokenLine:
    """Remove one token's line from the tokens file and return it; every other line,
    comments included, stays as it was.

    ``which`` is the start of the token's id (its SHA-256 in hex, at least 6 digits, as
    ``token list`` shows it; ``sha256:`` before it is fine). NotFoundError when no line
    matches; TokensFileError when several do.
    """
    prefix = which.lower().removeprefix(_HASHED)
    if len(prefix) < 6 or not re.fullmatch(r"[0-9a-f]+", prefix):
        raise TokensFileError(
            f"{which!r} is not a token id: give at least 6 hex digits of the id that"
            " `chatctl serve token list` shows (or - to read the token itself from stdin)"
        )
    return _remove(Path(path), lambda line: line.digest.startswith(prefix), which)


def revoke_token_itself(path: str | os.PathLike[str], token: str) -> TokenLine:
    """``revoke_token`` for the token itself (read from stdin, never from argv)."""
    digest = token_digest(token)
    return _remove(Path(path), lambda line: line.digest == digest, "the token given")


def _remove(path: Path, matches: Callable[[TokenLine], bool], what: str) -> TokenLine:
    removed: list[TokenLine] = []

    def drop(text: str) -> str:
        found = [line for line in parse_tokens(text, os.fspath(path)) if matches(line)]
        if not found:
            raise NotFoundError(
                f"no token in {path} matches {what}",
                hint=f"see them with: chatctl serve token list --tokens-file {path}",
            )
        if len(found) > 1:
            numbers = ", ".join(str(line.line) for line in found)
            raise TokensFileError(
                f"{what} matches the tokens of lines {numbers}: give more of the id"
            )
        removed.append(found[0])
        kept = text.splitlines(keepends=True)
        del kept[found[0].line - 1]
        return "".join(kept)

    if not path.exists():
        raise TokensFileError(f"cannot read tokens file {path}: No such file or directory")
    _rewrite(path, drop)
    return removed[0]


def _rewrite(path: Path, change: Callable[[str], str]) -> None:
    """Replace the file with ``change(its text)`` in one rename, so a server reading it
    sees the old file or the new one, never half of one; concurrent rewrites take turns
    (a lock on the directory). The file keeps its mode, owner and group; a new one is
    mode 0600. A symlink (a mounted secret) is followed: its target is replaced."""
    import fcntl
    import tempfile

    target = Path(os.path.realpath(path))
    target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    directory = os.open(target.parent, os.O_RDONLY)
    try:
        fcntl.flock(directory, fcntl.LOCK_EX)
        check_file_mode(target, writing=True)
        try:
            text = target.read_text(encoding="utf-8")
            st: os.stat_result | None = os.stat(target)
        except FileNotFoundError:
            text, st = "", None
        except (OSError, UnicodeDecodeError) as exc:
            raise TokensFileError(f"cannot read tokens file {path}: {exc}") from None
        new = change(text)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as file:
                if st is not None:
                    os.fchmod(file.fileno(), stat.S_IMODE(st.st_mode))
                    with contextlib.suppress(PermissionError):  # not root: keep ours
                        os.fchown(file.fileno(), st.st_uid, st.st_gid)
                file.write(new)
                file.flush()
                os.fsync(file.fileno())
            os.replace(tmp, target)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        os.fsync(directory)
    except OSError as exc:
        raise TokensFileError(f"cannot write tokens file {path}: {exc.strerror or exc}") from None
    finally:
        os.close(directory)
