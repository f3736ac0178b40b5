"""The Typer root app, and the one edge where errors become messages and exit statuses.

``run_cli()`` is the whole program: make the run's ``Invocation``, run the app with it,
and turn every chatctl error, Ctrl-C and closed pipe into one line on stderr (plus a
``hint:`` line saying what to do next, worded here and nowhere else) and a documented
exit status (see ``chatctl.errors.ExitStatus``) — never a traceback. Commands only parse,
call the client and hand responses to a renderer.
"""

import contextlib
import functools
import importlib
import os
import re
import sys
from typing import TYPE_CHECKING, Annotated, Any

import typer

from chatctl import __version__
from chatctl.cli.context import Invocation, invocation
from chatctl.cli.options import (
    CaCertOpt,
    InputOpt,
    JqOpt,
    OutputOpt,
    ProfileOpt,
    TimeoutOpt,
    TokenOpt,
    UrlOpt,
    VerboseOpt,
)
from chatctl.cli.typer_seam import ClickException
from chatctl.errors import (
    APIError,
    BadAnswerError,
    CertificateError,
    ChatctlError,
    ConnectError,
    ExitStatus,
    Interrupted,
    NoAnswerError,
    NotAnAPIError,
    RedirectError,
    SettingError,
    StreamClosed,
    UnsupportedError,
)
from chatctl.schema import DELETE_MESSAGE, WHOAMI
from chatctl.wire import CLOSE_FORBIDDEN, CLOSE_TOO_SLOW, close_code_for

if TYPE_CHECKING:
    from typer.models import CommandInfo

#: The endpoint families' modules, and the commands each holds by the name the command
#: line gives them: a command line naming one imports that family alone (the whole tree
#: imports them all; test_startup checks this against it, and a command missing here is
#: still run, from the whole tree).
_FAMILIES = {
    "rooms": ("create", "delete", "list"),
    "members": ("invite", "kick", "leave"),
    "messages": ("send", "history", "delete-message"),
    "join": ("join",),
    "identity": ("whoami",),
    "call": ("call",),
}
_FAMILY_OF = {command: family for family, names in _FAMILIES.items() for command in names}
# Every command of the endpoint families, in the order of a room's life, so the help's
# examples run top to bottom; any other (a new endpoint's) after them, in family order.
_LIFE = (
    "create",
    "invite",
    "send",
    "history",
    "list_rooms",
    "join",
    "kick",
    "leave",
    "delete_message",
    "delete",
)
#: the commands that are not an endpoint's, by the name the command line gives them:
#: their modules are imported only when one of them runs (or the whole tree is built).
_OTHERS = ("serve", "completion", "config")


def _family(name: str) -> list["CommandInfo"]:
    module = importlib.import_module(f"chatctl.cli.{name}")
    commands: list[CommandInfo] = module.app.registered_commands
    return [c for c in commands if c.callback is not None]


def _in_life(info: "CommandInfo") -> int:
    name = info.callback.__name__ if info.callback is not None else ""
    return _LIFE.index(name) if name in _LIFE else len(_LIFE)


def _command_name(info: "CommandInfo") -> str:
    """The name a command is run by, as Typer derives it (pinned by test_startup)."""
    assert info.callback is not None
    return info.name or info.callback.__name__.lower().replace("_", "-")


#: the root's options that take a value (the others are flags); pinned by test_startup.
ROOT_VALUE_OPTIONS = frozenset(
    {
        "--url",
        "--token",
        "--profile",
        "--output",
        "-o",
        "--jq",
        "--input",
        "-i",
        "--timeout",
        "--ca-cert",
    }
)


def _new_app() -> typer.Typer:
    new = typer.Typer(
        name="chatctl",
        no_args_is_help=True,
        pretty_exceptions_enable=False,
        add_completion=False,
        context_settings={"help_option_names": ["-h", "--help"]},
    )
    new.callback()(root)
    return new


def _add_other(to: typer.Typer, name: str) -> None:
    if name == "serve":
        from chatctl.cli.serve import app as serve_app

        to.add_typer(serve_app, name="serve")
    elif name == "completion":
        from chatctl.cli import completion

        to.command("completion")(completion.completion)
    else:
        from chatctl.cli import config_cmd

        to.add_typer(config_cmd.app, name="config")


@functools.cache
def full_app() -> typer.Typer:
    """The whole command tree: for help, completion, the man pages, a mistyped command."""
    whole = _new_app()
    commands = [c for family in _FAMILIES for c in _family(family)]
    whole.registered_commands.extend(sorted(commands, key=_in_life))
    for name in _OTHERS:
        _add_other(whole, name)
    return whole


def app_for(args: list[str]) -> typer.Typer:
    """The app with only the command ``args`` run, when they name one: Typer makes
    the click parameters of every command it holds before it parses anything (half of
    a one-shot command's own start-up), and the commands' modules need not be imported.
    The root's options and the command's own parse, run and fail as in the whole tree;
    anything else (no command, a mistyped one, shell completion) gets the whole tree."""
    if os.environ.get("_CHATCTL_COMPLETE"):  # completion.COMPLETE_VAR: the shell asks
        return full_app()
    name = _command_word(args)
    if name in _OTHERS:
        pruned = _new_app()
        _add_other(pruned, name)
        return pruned
    family = _FAMILY_OF.get(name) if name is not None else None
    one = [c for c in _family(family) if _command_name(c) == name] if family else []
    if not one:
        return full_app()
    pruned = _new_app()
    pruned.registered_commands.extend(one)
    return pruned


def _command_word(args: list[str]) -> str | None:
    """The first word of ``args`` that is not a root option or its value (None: none,
    or an option this does not know, which the whole tree then parses)."""
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "--":
            return args[i + 1] if i + 1 < len(args) else None
        if not arg.startswith("-") or arg == "-":
            return arg
        name = arg.partition("=")[0]
        if name in ROOT_VALUE_OPTIONS and "=" not in arg:
            i += 2
            continue
        if name in ROOT_VALUE_OPTIONS or name in ("--verbose", "-v", "--no-verbose"):
            i += 1
            continue
        return None  # -ojson, -vo json, --help, --version, a mistake: the whole tree
    return None


def __getattr__(name: str) -> Any:
    if name == "app":  # the whole tree, built when asked for (chatctl.cli.gen, tests)
        return full_app()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _version(value: bool) -> None:
    if value:
        typer.echo(f"chatctl {__version__}")
        raise typer.Exit()


def root(
    ctx: typer.Context,
    url: UrlOpt = None,
    token: TokenOpt = None,
    profile: ProfileOpt = None,
    output: OutputOpt = None,
    jq: JqOpt = None,
    input: InputOpt = None,
    verbose: VerboseOpt = None,
    timeout: TimeoutOpt = None,
    ca_cert: CaCertOpt = None,
    version: Annotated[
        bool | None,
        typer.Option(
            "--version", help="Print the version and exit.", callback=_version, is_eager=True
        ),
    ] = None,
) -> None:
    """Administer m3o-compatible chat rooms from the shell, and serve them.

    With no server configured, chatctl starts a private local one on first use.

    Example: chatctl create general -u alice && chatctl send general "hello" --user alice && chatctl history general
    """  # noqa: E501
    invocation(ctx).options.merge(
        url=url,
        token=token,
        profile=profile,
        output=output,
        jq=jq,
        input=input,
        verbose=verbose,
        timeout=timeout,
        ca_cert=ca_cert,
    )


def main(argv: list[str] | None = None) -> None:
    """Run chatctl and exit with its status."""
    sys.exit(run_cli(argv))


def run_cli(argv: list[str] | None = None) -> int:
    inv = Invocation()
    try:
        try:
            # argv stays None for click when it was (on Windows click then expands globs).
            one = app_for(sys.argv[1:] if argv is None else argv)
            result = one(args=argv, prog_name="chatctl", standalone_mode=False, obj=inv)
        finally:
            inv.close()
    except Interrupted as e:
        _interrupted(inv, e.message)
        return int(e.exit_status)
    except ChatctlError as e:
        _error(inv, e)
        return int(e.exit_status)
    except typer.Abort as e:
        if isinstance(e.__context__, KeyboardInterrupt):
            return _interrupted(inv)
        return int(ExitStatus.API_ERROR)
    except KeyboardInterrupt:
        return _interrupted(inv)
    except ClickException as e:
        e.show()
        return int(e.exit_code)
    except typer.Exit as e:
        return e.exit_code
    except BrokenPipeError:
        return _closed_pipe(inv)
    except SystemExit as e:
        # click turns a write to a closed pipe into exit 1; for a CLI in a pipeline that
        # is the reader being done (`| head`), which is success.
        if isinstance(e.__context__, BrokenPipeError):
            return _closed_pipe(inv)
        raise
    return result if isinstance(result, int) else 0


_TOKEN_HINT = "set a token with --token, CHATCTL_TOKEN or: chatctl config set token -"


def hint_for(e: ChatctlError, inv: Invocation | None = None) -> str | None:
    """The next step for the user after an error: the one place hints are worded. The
    run's ``inv`` says what happened (was --user given? whom does the token act as?)."""
    if e.hint:
        return e.hint
    if e.outcome_unknown:
        return (
            "it may or may not have been done: the server does not take an Idempotency-Key, "
            "so chatctl did not retry (that could do it twice); check (chatctl history / "
            "list) before trying again"
        )
    if e.maybe_stored:
        return _maybe_stored_hint(e)
    if isinstance(e, UnsupportedError):
        if e.feature == WHOAMI:
            return (
                "an m3o token acts as any user: name yours with --user, CHATCTL_USER or: "
                "chatctl config set user ID"
            )
        if e.feature == DELETE_MESSAGE:
            return (
                "m3o's API cannot delete a message (only the whole room, with chatctl "
                "delete); chatctl's own server can (chatctl serve)"
            )
        return (
            "that needs chatctl's own server (chatctl serve); against other m3o servers, "
            "run without that option"
        )
    if isinstance(e, SettingError):
        return {
            "scheme": "use http://HOST, https://HOST or unix:/path/to/socket",
            "host": "e.g. https://chat.example.com or unix:/run/chat.sock",
            "credentials": "remove them from the URL; give the token with --token, "
            "CHATCTL_TOKEN or: chatctl config set token -",
            "ca_cert": "give a PEM file of the CA that signed the server's certificate",
        }.get(e.setting)
    if isinstance(e, CertificateError):
        if e.verify:
            return (
                "if a private CA signed it, trust that CA with --ca-cert FILE "
                "(or ca_cert in the profile, or SSL_CERT_FILE)"
            )
        return "is the server serving https on that port? check --url"
    if isinstance(e, NotAnAPIError):
        return (
            "check --url / CHATCTL_URL: give the API's base address "
            "(chatctl adds /v1/chat/ENDPOINT)"
        )
    if isinstance(e, RedirectError):
        return (
            "chatctl follows no redirects (the token would go along); if the API has "
            "moved, give its new address with --url / CHATCTL_URL"
        )
    if isinstance(e, BadAnswerError):
        return (
            "no m3o Chat API answers so: check --url / CHATCTL_URL and any proxy in front "
            "of the server"
        )
    if isinstance(e, NoAnswerError):
        if e.local:
            return "stop it with: chatctl serve --stop (the next command starts a fresh one)"
        return "the server may be overloaded or stuck; retry, or allow longer with --timeout"
    if isinstance(e, ConnectError):
        if e.local:
            return "see its log and state with: chatctl serve --status"
        return "is the server running? check --url / CHATCTL_URL, or start one with: chatctl serve"
    if isinstance(e, StreamClosed):
        if e.close_code == CLOSE_TOO_SLOW:
            return "this reader fell behind; resume with --since the last message id"
        if e.close_code == CLOSE_FORBIDDEN:
            return _forbidden_hint(inv, e.reason)
        if e.close_code == close_code_for(401):  # refused or revoked token
            return _TOKEN_HINT
        return None
    if isinstance(e, APIError):
        detail = e.detail.lower()
        if e.code == 403 and detail.startswith("quota:"):  # a user token's share (issue 23)
            return _quota_hint(detail)
        if "not in the room" in detail or "not in the group" in detail:
            return "invite the user first (chatctl invite ROOM USER) or join it (chatctl join ROOM)"
        if e.code == 401:
            return _TOKEN_HINT
        if e.code == 403:
            return _forbidden_hint(inv, e.detail)
        if e.code == 429:
            wait = f" (retry after {e.retry_after:g}s)" if e.retry_after is not None else ""
            return f"the server limits this token's calls{wait}; retry later, or raise --timeout"
        if "room not found" in detail or "group not found" in detail:
            return "list the rooms you can see with: chatctl list"
        if e.code == 409:
            return "an Idempotency-Key was reused with a different request"
        if e.code == 503 and "storage unavailable" in detail:
            return "the server's storage is not answering; retry later"
    return None


def _maybe_stored_hint(e: ChatctlError) -> str:
    """A change sent and not answered for sure (``maybe_stored``): a rerun could do it
    twice, unless it goes with the same key (``rerun``: send's --batch-key)."""
    if isinstance(e, APIError) and "storage unavailable" in e.detail.lower():
        # The server gave up on its database; the write it gave up on may still land.
        why = "the server's storage is not answering, and a write it gave up on may still land"
    elif isinstance(e, NoAnswerError):
        why = "no answer came once it was sent, so it may have been done"
    elif isinstance(e, APIError):
        why = "the server (or a proxy) gave up on it once it was sent, so it may have been done"
    else:
        why = "the connection was lost once it was sent, so it may have been done"
    if e.rerun:
        return f"{why}: rerun with {e.rerun} (stored at most once), or check chatctl history first"
    return f"{why}: check (chatctl history / list) before trying again"


#: a user token's refusal to act as another user (issue 13): "…acts only as user U, not V".
_BOUND_TO = re.compile(r"acts only as user (\S+), not (\S+)")


def _bound_hint(inv: Invocation | None, token_user: str, named: str) -> str:
    """What to do when a user token was asked to act as another user: it depends on
    where that other user came from (``Invocation.user_from``)."""
    source = inv.user_from() if inv is not None else ""
    given = inv.settings(inv.user_flag).user if inv is not None else named
    if named != given:
        return f"the input names user {named}: leave user_id out, or make it {token_user}"
    if source == "--user":
        return f"leave out --user: this token acts only as {token_user}"
    if source == "CHATCTL_USER":
        return (
            f"this token acts only as {token_user}: unset CHATCTL_USER (or set it to {token_user})"
        )
    if source == "profile":
        return (
            f"this token acts only as {token_user}, and the profile's user is {named}: "
            f"chatctl config set user {token_user}"
        )
    # No user given, and a server that cannot say who the token is (no whoami).
    return (
        f"this server does not say whom a token acts as: give it, with --user {token_user}, "
        f"CHATCTL_USER or: chatctl config set user {token_user}"
    )


def _forbidden_hint(inv: Invocation | None, detail: str) -> str:
    """A 403 (a call's, or a stream's close 4403): membership, privacy, or the token."""
    bound = _BOUND_TO.search(detail)
    if bound:
        return _bound_hint(inv, bound.group(1), bound.group(2))
    if "creator" in detail:
        return "ask the room's creator, or someone with an admin token"
    if "kicked" in detail:
        return "only the room's creator (or an admin token) can invite a kicked user back"
    if "left the room" in detail:
        return "join it again with: chatctl join ROOM (a private room needs an invitation)"
    if "only a member" in detail:
        return "ask a member of the room to invite them"
    me = inv.token_user() if inv is not None else None
    if me is not None:  # a user token, acting as its own user
        return f"the room is private: ask a member to invite {me}: chatctl invite ROOM {me}"
    return (
        "the room is private or the user was removed: ask a member to invite this "
        "user, or act as a member with --user or CHATCTL_USER (with an admin token: "
        "a user token acts only as its own user)"
    )


def _error(inv: Invocation, e: ChatctlError) -> None:
    from chatctl.output import visible  # a detail may be the server's text: escape it

    lines = [f"error: {e.message}"]
    hint = hint_for(e, inv)
    if hint:
        lines.append(f"hint: {hint}")
    if e.summary:
        lines.append(f"chatctl: {e.summary}")
    with contextlib.suppress(OSError, ValueError):
        inv.stderr.write("".join(visible(line) + "\n" for line in lines))
        inv.stderr.flush()


def _interrupted(inv: Invocation, summary: str | None = None) -> int:
    with contextlib.suppress(OSError, ValueError):
        inv.stderr.write("\n")  # after the ^C the terminal echoed
        if summary:
            inv.stderr.write(f"chatctl: {summary}\n")
        inv.stderr.flush()
    return int(ExitStatus.INTERRUPTED)


def _closed_pipe(inv: Invocation) -> int:
    # The reader went away (`| head`): that is success, and Python must not complain
    # about flushing stdout at exit, so point it at /dev/null.
    with contextlib.suppress(OSError, ValueError, AttributeError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, inv.stdout.fileno())
    return int(ExitStatus.OK)


def _quota_hint(detail: str) -> str:
    """What to do about a quota of chatctl's server (its detail names it and its flag)."""
    if "max_invites_per_user" in detail:
        return "ask the room's creator to invite them, or someone with an admin token"
    if "a day" in detail:
        return "it renews at 00:00 UTC; or ask the server's operator to raise it"
    return "delete a room you made (chatctl delete ROOM), or ask the server's operator"
