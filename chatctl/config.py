"""Profiles and environment: where chatctl finds its server, token and user.

The config file is TOML, read with tomllib and written with tomli-w, at ``$CHATCTL_CONFIG``
or ``config.toml`` in the platform's user config dir, mode 0600::

    current = "work"
    [profiles.work]
    url = "https://chat.example.com"
    token = "..."
    user = "alice"

Precedence, highest first: ``--url``/``--token``/``--user`` flags; ``CHATCTL_URL``,
``CHATCTL_TOKEN``, ``CHATCTL_USER``; the profile (``--profile``, ``CHATCTL_PROFILE``, the
file's ``current``, else ``default``); ``M3O_API_TOKEN`` for the token; the login name for
the user. No URL anywhere means the embedded local server.
"""

from __future__ import annotations

import getpass
import os
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from chatctl.errors import UsageError

__all__ = ["KEYS", "Settings", "config_path", "load", "resolve", "save"]

#: the keys a profile may hold.
KEYS: tuple[str, ...] = ("url", "token", "user")
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
        data = path.read_bytes()
    except FileNotFoundError:
        return {}
    except OSError as e:
        raise UsageError(f"cannot read config file {path}: {e.strerror}") from None
    try:
        return tomllib.loads(data.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise UsageError(
            f"config file {path} is not valid TOML: {e}",
            hint="fix it by hand, or remove it and run: chatctl config set url URL",
        ) from None


def save(config: dict[str, Any], path: Path | None = None) -> Path:
    """Write the config atomically, private to its owner (0600 file, 0700 directory)."""
    import tomli_w

    path = path or config_path()
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), 0o600)
            tomli_w.dump(config, f)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def profile_name(config: dict[str, Any], flag: str | None = None) -> str:
    name = flag or os.environ.get("CHATCTL_PROFILE") or config.get("current") or DEFAULT_PROFILE
    return str(name)


def profile(config: dict[str, Any], name: str) -> dict[str, Any]:
    profiles = config.get("profiles", {})
    value = profiles.get(name, {}) if isinstance(profiles, dict) else {}
    return value if isinstance(value, dict) else {}


@dataclass(frozen=True)
class Settings:
    """Where and as whom to talk, after every source has been weighed."""

    url: str | None
    token: str | None
    user: str
    profile: str
    #: True when the user was given explicitly (flag, environment or profile).
    user_explicit: bool


def resolve(
    url: str | None = None,
    token: str | None = None,
    user: str | None = None,
    profile_flag: str | None = None,
) -> Settings:
    config = load()
    name = profile_name(config, profile_flag)
    if profile_flag and profile_flag != DEFAULT_PROFILE and not profile(config, profile_flag):
        raise UsageError(
            f"no profile named {profile_flag!r}",
            hint="list them with: chatctl config list",
        )
    prof = profile(config, name)
    env = os.environ
    chosen_user = user or env.get("CHATCTL_USER") or prof.get("user")
    return Settings(
        url=url or env.get("CHATCTL_URL") or prof.get("url") or None,
        token=token
        or env.get("CHATCTL_TOKEN")
        or prof.get("token")
        or env.get("M3O_API_TOKEN")
        or None,
        user=str(chosen_user or _login_name()),
        profile=name,
        user_explicit=bool(chosen_user),
    )


def _login_name() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "user"
