"""Profiles and environment: where chatctl finds its server, token and user.

The config file is TOML, read with tomllib and written with tomli-w, at ``$CHATCTL_CONFIG``
or ``config.toml`` in the platform's user config dir, mode 0600::

    current = "work"
    [profiles.work]
    url = "https://chat.example.com"
    token = "..."
    user = "alice"
    ca_cert = "/etc/ssl/private-ca.pem"    # trust this CA (alone) for https://

Precedence, highest first: ``--url``/``--token``/``--user`` flags; ``CHATCTL_URL``,
``CHATCTL_TOKEN``, ``CHATCTL_USER``; the profile (``--profile``, ``CHATCTL_PROFILE``, the
file's ``current``, else ``default``); ``M3O_API_TOKEN`` for the token; the login name for
the user. No URL anywhere means the embedded local server.

Every value is checked when the file is read: a key of the wrong type (``url = 5``) is a
UsageError naming the key, the profile and the file. A file holding a token that other
users may read is refused, as ssh refuses such a key.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from chatctl.errors import UsageError

__all__ = ["KEYS", "Settings", "config_path", "header_token", "load", "resolve", "save"]

#: the keys a profile may hold (each a string).
KEYS: tuple[str, ...] = ("url", "token", "user", "ca_cert")
DEFAULT_PROFILE = "default"


def config_path() -> Path:
    """The one place that knows where the config file lives."""
    env = os.environ.get("CHATCTL_CONFIG")
    if env:
        return Path(env)
    import platformdirs  # only when no CHATCTL_CONFIG: keeps the common path cheap

    return Path(platformdirs.user_config_dir("chatctl", appauthor=False)) / "config.toml"


def load(path: Path | None = None) -> dict[str, Any]:
    path = path or config_path()
    try:
        with open(path, "rb") as file:
            _check_owner(path, os.fstat(file.fileno()))
            data = file.read()
    except FileNotFoundError:
        return {}
    except OSError as e:
        raise UsageError(f"cannot read config file {path}: {e.strerror}") from None
    import tomllib  # only when there is a file: most runs have none

    try:
        config = tomllib.loads(data.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise UsageError(
            f"config file {path} is not valid TOML: {e}",
            hint="fix it by hand, or remove it and run: chatctl config set url URL",
        ) from None
    _check(config, path)
    return config


def _check_owner(path: Path, st: os.stat_result) -> None:
    """Refuse a config file someone else could have written: it says where the token goes.
    Yours or root's, and writable by no one else (as ssh wants its config)."""
    if st.st_uid not in (os.geteuid(), 0):
        raise UsageError(
            f"config file {path} belongs to another user (uid {st.st_uid}), who could send "
            "your token and messages elsewhere",
            hint="use a config file of your own (CHATCTL_CONFIG), or remove that one",
        )
    if st.st_mode & 0o022:
        raise UsageError(
            f"config file {path} may be written by other users "
            f"(mode {st.st_mode & 0o777:04o}), who could send your token and messages elsewhere",
            hint=f"make it private with: chmod 600 {path}",
        )


def _check(config: dict[str, Any], path: Path) -> None:
    """Refuse values of the wrong type, and a token others can read."""
    fix = f"fix it in {path}, or set it again with: chatctl config set KEY VALUE"
    if not isinstance(config.get("current", ""), str):
        raise UsageError(f"config file {path}: current must be a string", hint=fix)
    profiles = config.get("profiles", {})
    if not isinstance(profiles, dict):
        raise UsageError(f"config file {path}: profiles must be a table", hint=fix)
    has_token = False
    for name, values in profiles.items():
        if not isinstance(values, dict):
            raise UsageError(f"config file {path}: profile {name!r} must be a table", hint=fix)
        for key in KEYS:
            value = values.get(key)
            if value is not None and not isinstance(value, str):
                kind = type(value).__name__
                raise UsageError(
                    f"config file {path}: {key} in profile {name!r} must be a string, "
                    f"not {kind}",
                    hint=fix,
                )
        has_token = has_token or bool(values.get("token"))
    if has_token:
        try:
            mode = path.stat().st_mode
        except OSError:
            return
        if mode & 0o077:
            raise UsageError(
                f"config file {path} holds a token and other users can read it "
                f"(mode {mode & 0o777:04o})",
                hint=f"make it private with: chmod 600 {path}",
            )


def save(config: dict[str, Any], path: Path | None = None) -> Path:
    """Write the config atomically, private to its owner (0600 file, 0700 directory)."""
    import tomli_w

    path = path or config_path()
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)  # left by a chatctl of the same pid that died mid-write
    # Made here and now (O_EXCL), never through a symlink someone placed.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), 0o600)
            tomli_w.dump(config, f)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def header_token(value: str, source: str) -> str:
    """``value`` as a token that can travel in an HTTP header, from ``source`` (named in
    the error, as ``--token`` or ``CHATCTL_TOKEN``): surrounding whitespace, such as the
    ``\\r\\n`` of a file saved on Windows, is dropped; what is left must be printable ASCII
    without spaces (RFC 6750's token, loosely). Anything else is a UsageError naming the
    problem and where it is, never the token itself.
    """
    token = value.strip()
    if not token:
        raise UsageError(f"the token from {source} is blank", hint=_token_fix(source))
    for position, char in enumerate(token, 1):
        if not "\x21" <= char <= "\x7e":
            raise UsageError(
                f"the token from {source} cannot be sent: it holds {_kind_of(char)} at "
                f"position {position}; a token is printable ASCII without spaces (it "
                "travels in an HTTP header)",
                hint=_token_fix(source),
            )
    return token


def _kind_of(char: str) -> str:
    """What a character that may not be in a token is, without showing it."""
    names = {"\r": "a carriage return (CR)", "\n": "a line feed (LF)", "\t": "a tab"}
    if char in names:
        return names[char]
    if char == " " or char.isspace():
        return "a space"
    if char < " " or char == "\x7f":
        return f"a control character (U+{ord(char):04X})"
    return "a non-ASCII character"


def _token_fix(source: str) -> str:
    if source.startswith("profile"):
        return "set it again with: printf %s TOKEN | chatctl config set token -"
    if source.isupper():  # an environment variable
        return f"set {source} to the token alone: no quotes, spaces or line breaks"
    return "give the token alone: no quotes, spaces or line breaks"


def profile_name(config: dict[str, Any], flag: str | None = None) -> str:
    name = flag or os.environ.get("CHATCTL_PROFILE") or config.get("current") or DEFAULT_PROFILE
    return str(name)


def profile(config: dict[str, Any], name: str) -> dict[str, Any]:
    profiles = config.get("profiles", {})
    value = profiles.get(name, {}) if isinstance(profiles, dict) else {}
    return value if isinstance(value, dict) else {}


class LoginName(str):
    """The user chatctl acts as when none was given (no --user, CHATCTL_USER or profile
    user): the login name, marked as such, so that the transport may put the token's own
    user in its place where the server says who the token acts as (``Client.bound``)."""

    __slots__ = ()


@dataclass(frozen=True)
class Settings:
    """Where and as whom to talk, after every source has been weighed."""

    url: str | None
    token: str | None
    user: str
    profile: str
    #: True when the user was given explicitly (flag, environment or profile).
    user_explicit: bool
    #: a PEM file of the CA to trust (alone) for https:// (flag, else the profile).
    ca_cert: str | None = None
    #: where the user came from: "--user", "CHATCTL_USER", "profile", or "" (nowhere:
    #: the login name).
    user_from: str = ""


def resolve(
    url: str | None = None,
    token: str | None = None,
    user: str | None = None,
    profile_flag: str | None = None,
    ca_cert: str | None = None,
) -> Settings:
    config = load()
    name = profile_name(config, profile_flag)
    # A profile asked for by name, on the command line or in the environment, must exist:
    # a typo must not silently fall back to another server.
    asked = profile_flag or os.environ.get("CHATCTL_PROFILE")
    if asked and asked != DEFAULT_PROFILE and not profile(config, asked):
        source = "--profile" if profile_flag else "CHATCTL_PROFILE"
        raise UsageError(
            f"no profile named {asked!r} ({source})",
            hint="list them with: chatctl config list",
        )
    prof = profile(config, name)
    env = os.environ
    chosen_user = user or env.get("CHATCTL_USER") or prof.get("user")
    given = (
        (token, "--token"),
        (env.get("CHATCTL_TOKEN"), "CHATCTL_TOKEN"),
        (prof.get("token"), f"profile {name} in {config_path()}"),
        (env.get("M3O_API_TOKEN"), "M3O_API_TOKEN"),
    )
    chosen_token = next(((t, source) for t, source in given if t), None)
    return Settings(
        url=url or env.get("CHATCTL_URL") or prof.get("url") or None,
        token=header_token(*chosen_token) if chosen_token else None,
        user=str(chosen_user or _login_name()),
        profile=name,
        user_explicit=bool(chosen_user),
        ca_cert=_path(ca_cert or prof.get("ca_cert")),
        user_from=_user_from(user, prof),
    )


def _user_from(flag: str | None, prof: dict[str, Any]) -> str:
    """Which source gave the user, in the order of precedence; "" for none."""
    given = ((flag, "--user"), (os.environ.get("CHATCTL_USER"), "CHATCTL_USER"))
    return next((source for value, source in given if value), "profile" if prof.get("user") else "")


def _path(value: str | None) -> str | None:
    return os.path.expanduser(value) if value else None


def _login_name() -> str:
    import getpass  # only when no user is given

    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "user"
