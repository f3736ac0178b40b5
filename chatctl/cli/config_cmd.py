"""``chatctl config``: profiles in the config file (url, token, user)."""

from typing import Annotated

import typer

from chatctl import config
from chatctl.cli.context import invocation
from chatctl.errors import UsageError

app = typer.Typer(
    help="Manage profiles: where chatctl connects, with which token, as which user.\n\n"
    "Example: chatctl config set url https://chat.example.com --profile work",
    no_args_is_help=True,
)

ProfileOpt = Annotated[
    str | None,
    typer.Option(
        "--profile", "-p", help="The profile (default: the current one).", show_default=False
    ),
]


def _key(key: str) -> str:
    if key not in config.KEYS:
        raise UsageError(f"unknown key {key!r}; keys are: {', '.join(config.KEYS)}")
    return key


def _redact(key: str, value: object) -> str:
    return "********" if key == "token" and value else str(value)


@app.command("set")
def set_(
    ctx: typer.Context,
    key: Annotated[str, typer.Argument(help="url, token, user or ca_cert.")],
    value: Annotated[
        str,
        typer.Argument(
            help="The value; - reads it from stdin (keeps a token out of shell history)."
        ),
    ],
    profile: ProfileOpt = None,
) -> None:
    """Set a key of a profile.

    Example: printf %s "$TOKEN" | chatctl config set token - --profile work
    """
    _key(key)
    source = "the command line"
    if value == "-":
        value = invocation(ctx).stdin.readline().rstrip("\r\n")
        source = "stdin"
        if not value.strip():
            raise UsageError(
                f"no {key} on stdin", hint=f"e.g. printf %s VALUE | chatctl config set {key} -"
            )
    if key == "token":
        value = config.header_token(value, source)
    data = config.load()
    name = config.profile_name(data, profile)
    data.setdefault("profiles", {}).setdefault(name, {})[key] = value
    path = config.save(data)
    typer.echo(f"set {key} of profile {name} in {path}", err=True)


@app.command()
def get(
    key: Annotated[str, typer.Argument(help="url, token, user or ca_cert.")],
    profile: ProfileOpt = None,
    show_token: Annotated[
        bool, typer.Option("--show-token", help="Print the token itself.")
    ] = False,
) -> None:
    """Print a key of a profile (the token only with --show-token).

    Example: chatctl config get url --profile work
    """
    data = config.load()
    name = config.profile_name(data, profile)
    value = config.profile(data, name).get(_key(key))
    if value is None:
        raise UsageError(f"{key} is not set in profile {name}")
    typer.echo(value if show_token else _redact(key, value))


@app.command()
def unset(
    key: Annotated[str, typer.Argument(help="url, token, user or ca_cert.")],
    profile: ProfileOpt = None,
) -> None:
    """Remove a key from a profile.

    Example: chatctl config unset token --profile work
    """
    data = config.load()
    name = config.profile_name(data, profile)
    config.profile(data, name).pop(_key(key), None)
    config.save(data)


@app.command("list")
def list_() -> None:
    """List the profiles and their keys (tokens redacted); * marks the current one.

    Example: chatctl config list
    """
    data = config.load()
    current = config.profile_name(data)
    profiles = data.get("profiles", {})
    if not profiles:
        typer.echo(f"no profiles yet in {config.config_path()}", err=True)
    for name in sorted(profiles):
        mark = "*" if name == current else " "
        keys = " ".join(
            f"{k}={_redact(k, v)}" for k, v in sorted(config.profile(data, name).items())
        )
        typer.echo(f"{mark} {name}\t{keys}")


@app.command()
def use(name: Annotated[str, typer.Argument(help="The profile to make current.")]) -> None:
    """Make a profile the current one.

    Example: chatctl config use work
    """
    data = config.load()
    if name != config.DEFAULT_PROFILE and not config.profile(data, name):
        raise UsageError(
            f"no profile named {name!r}",
            hint="create it with: chatctl config set url URL --profile NAME",
        )
    data["current"] = name
    config.save(data)


@app.command()
def path() -> None:
    """Print the config file's path.

    Example: chatctl config path
    """
    typer.echo(str(config.config_path()))
