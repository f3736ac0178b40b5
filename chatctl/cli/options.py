"""Options every command shares, defined once, accepted before or after the subcommand.

``chatctl --url U list`` and ``chatctl list --url U`` mean the same, as gh and kubectl
users expect: the root callback records the options given before the subcommand in the
invocation's ``Options`` (``ctx.obj.options``, see ``chatctl.cli.context``), and
``@with_common_options`` adds the same options to each subcommand's signature and merges
what was given there (the later one wins).
"""

import functools
import inspect
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Annotated, Any, TypeVar, overload

import typer

from chatctl.cli import complete
from chatctl.output import FORMATS

_CONN = "Connection and output"


def user_option(help: str, **extra: Any) -> Any:
    """The acting user's ``--user/-u`` option, one for every command; ``help`` says who."""
    return typer.Option("--user", "-u", help=help, show_default=False, **extra)


def _check_format(value: str | None) -> str | None:
    if value is not None and value not in FORMATS:
        raise typer.BadParameter(f"must be one of: {', '.join(FORMATS)}")
    return value


RoomArg = Annotated[
    str | None,
    typer.Argument(
        help="The room, by id or name.", show_default=False, autocompletion=complete.rooms
    ),
]
UrlOpt = Annotated[
    str | None,
    typer.Option(
        "--url",
        help="Server URL (or unix:/path/to/socket). Default: the profile's, else a local "
        "server started on demand.",
        rich_help_panel=_CONN,
        show_default=False,
    ),
]
TokenOpt = Annotated[
    str | None,
    typer.Option(
        "--token",
        help="API token (beats CHATCTL_TOKEN, the profile and M3O_API_TOKEN). Never printed, "
        "and hidden from ps once chatctl starts; CHATCTL_TOKEN or the profile (chatctl config "
        "set token -) is safer: a command line stays in shell history.",
        rich_help_panel=_CONN,
        show_default=False,
    ),
]
ProfileOpt = Annotated[
    str | None,
    typer.Option(
        "--profile",
        help="Config profile to use (or CHATCTL_PROFILE).",
        rich_help_panel=_CONN,
        show_default=False,
    ),
]
OutputOpt = Annotated[
    str | None,
    typer.Option(
        "--output",
        "-o",
        help="table, json, jsonl, tsv or id. Default: table on a terminal, json in a pipe.",
        rich_help_panel=_CONN,
        callback=_check_format,
        show_default=False,
        metavar="FORMAT",
    ),
]


def _check_jq(ctx: typer.Context, value: str | None) -> str | None:
    """A bad --jq expression is exit 2 as the command line is read, before anything is
    sent (chatctl.cli.jq; libjq is imported only when the flag is given)."""
    if value is not None and not ctx.resilient_parsing:
        from chatctl.cli.jq import compile_filter

        compile_filter(value)
    return value


JqOpt = Annotated[
    str | None,
    typer.Option(
        "--jq",
        help="Filter the JSON printed through a jq expression, as gh's --jq: applied to the "
        "whole answer with -o json, to each line with -o jsonl and in join; strings print "
        "raw, other values as compact JSON. Implies -o json (jsonl for join).",
        rich_help_panel=_CONN,
        callback=_check_jq,
        show_default=False,
        metavar="EXPR",
    ),
]
InputOpt = Annotated[
    Path | None,
    typer.Option(
        "--input",
        "-i",
        help="Read the request as JSON from FILE (- for stdin); one object per line makes "
        "one call per line. Flags override its fields.",
        rich_help_panel=_CONN,
        show_default=False,
        metavar="FILE",
        allow_dash=True,
    ),
]
VerboseOpt = Annotated[
    bool | None,
    typer.Option(
        "--verbose",
        "-v",
        help="Log each request (method, URL, status, time) to stderr; tokens redacted.",
        rich_help_panel=_CONN,
        show_default=False,
    ),
]
TimeoutOpt = Annotated[
    float | None,
    typer.Option(
        "--timeout",
        help="Seconds one call may take in all, retries included (default 10).",
        rich_help_panel=_CONN,
        show_default=False,
        min=0.001,
    ),
]
CaCertOpt = Annotated[
    str | None,
    typer.Option(
        "--ca-cert",
        help="Trust only this CA (a PEM file) for https:// and wss:// (or the profile's "
        "ca_cert). Default: the system's trust store, or SSL_CERT_FILE.",
        rich_help_panel=_CONN,
        show_default=False,
        metavar="FILE",
    ),
]


@dataclass
class Options:
    """The shared options as finally given (None: not given)."""

    url: str | None = None
    token: str | None = None
    profile: str | None = None
    output: str | None = None
    jq: str | None = None
    input: Path | None = None
    verbose: bool | None = None
    timeout: float | None = None
    ca_cert: str | None = None

    def merge(self, **given: Any) -> None:
        for key, value in given.items():
            if value is not None:
                setattr(self, key, value)


_ANNOTATIONS: dict[str, Any] = {
    "url": UrlOpt,
    "token": TokenOpt,
    "profile": ProfileOpt,
    "output": OutputOpt,
    "jq": JqOpt,
    "input": InputOpt,
    "verbose": VerboseOpt,
    "timeout": TimeoutOpt,
    "ca_cert": CaCertOpt,
}
_NAMES = tuple(f.name for f in fields(Options))

F = TypeVar("F", bound=Callable[..., Any])


@overload
def with_common_options(fn: F) -> F: ...
@overload
def with_common_options(*, exclude: tuple[str, ...]) -> Callable[[F], F]: ...
def with_common_options(fn: F | None = None, *, exclude: tuple[str, ...] = ()) -> Any:
    """Add the shared options to a command's signature; record them in the invocation's
    options. The command takes ``ctx: typer.Context`` as its first parameter.

    Use as ``@with_common_options``, or ``@with_common_options(exclude=("timeout",))``
    for a command that gives one of the names its own meaning.
    """
    if fn is None:
        return functools.partial(_add_common_options, exclude=exclude)
    return _add_common_options(fn, exclude)


def _add_common_options(fn: F, exclude: tuple[str, ...] = ()) -> F:
    names = [n for n in _NAMES if n not in exclude]
    sig = inspect.signature(fn)
    if "ctx" not in sig.parameters:
        raise TypeError(f"{fn.__name__} must take ctx: typer.Context")

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        options = kwargs["ctx"].obj.options
        options.merge(**{name: kwargs.pop(name, None) for name in names})
        if options.jq is not None:
            from chatctl.cli.jq import require_json

            require_json(options.output)
        return fn(*args, **kwargs)

    extra = [
        inspect.Parameter(
            name, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=_ANNOTATIONS[name]
        )
        for name in names
    ]
    wrapper.__signature__ = sig.replace(parameters=[*sig.parameters.values(), *extra])  # type: ignore[attr-defined]
    wrapper.__annotations__ = {**fn.__annotations__, **{n: _ANNOTATIONS[n] for n in names}}
    return wrapper  # type: ignore[return-value]
