"""The Typer root app, and the one edge where errors become messages and exit statuses.

``main()`` is the whole program: build the app, run it, and turn every chatctl error,
Ctrl-C and closed pipe into one line on stderr and a documented exit status (see
``chatctl.errors.ExitStatus``) — never a traceback. Commands only parse, call the client
and hand responses to a renderer.
"""

import contextlib
import os
import sys
from typing import Annotated

import typer

from chatctl import __version__
from chatctl.cli import completion, config_cmd, join, members, messages, rooms
from chatctl.cli.options import (
    InputOpt,
    OutputOpt,
    ProfileOpt,
    TimeoutOpt,
    TokenOpt,
    UrlOpt,
    VerboseOpt,
    common,
)
from chatctl.cli.serve import app as serve_app
from chatctl.errors import ChatctlError, ExitStatus

app = typer.Typer(
    name="chatctl",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
for family in (rooms, members, messages, join):
    app.registered_commands += family.app.registered_commands
app.add_typer(serve_app, name="serve")
app.command("completion")(completion.completion)
app.add_typer(config_cmd.app, name="config")


def _version(value: bool) -> None:
    if value:
        typer.echo(f"chatctl {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    url: UrlOpt = None,
    token: TokenOpt = None,
    profile: ProfileOpt = None,
    output: OutputOpt = None,
    input: InputOpt = None,
    verbose: VerboseOpt = None,
    timeout: TimeoutOpt = None,
    version: Annotated[
        bool | None,
        typer.Option(
            "--version", help="Print the version and exit.", callback=_version, is_eager=True
        ),
    ] = None,
) -> None:
    """Administer m3o-compatible chat rooms from the shell, and serve them.

    With no server configured, chatctl starts a private local one on first use.

    Example: chatctl create general && chatctl send general "hello" && chatctl history general
    """
    common.merge(
        url=url,
        token=token,
        profile=profile,
        output=output,
        input=input,
        verbose=verbose,
        timeout=timeout,
    )


def main(argv: list[str] | None = None) -> None:
    """Run chatctl and exit with its status."""
    sys.exit(run_cli(argv))


def run_cli(argv: list[str] | None = None) -> int:
    common.__init__()  # type: ignore[misc]  # a fresh start for each in-process run
    try:
        try:
            result = app(args=argv, prog_name="chatctl", standalone_mode=False)
        finally:
            from chatctl.cli.run import close_client

            close_client()
    except ChatctlError as e:
        _error(e.message, e.hint)
        return int(e.exit_status)
    except typer.Abort as e:
        if isinstance(e.__context__, KeyboardInterrupt):
            return _interrupted()
        return int(ExitStatus.API_ERROR)
    except KeyboardInterrupt:
        return _interrupted()
    except _ClickException as e:
        e.show()  # type: ignore[attr-defined]
        return int(e.exit_code)  # type: ignore[attr-defined]
    except typer.Exit as e:
        return e.exit_code
    except BrokenPipeError:
        return _closed_pipe()
    except SystemExit as e:
        # click turns a write to a closed pipe into exit 1; for a CLI in a pipeline that
        # is the reader being done (`| head`), which is success.
        if isinstance(e.__context__, BrokenPipeError):
            return _closed_pipe()
        raise
    return result if isinstance(result, int) else 0


# Typer 0.28 vendors click; find its ClickException without naming a private module.
_ClickException: type[Exception] = next(
    c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException"
)


def _error(message: str, hint: str | None) -> None:
    try:
        print(f"error: {message}", file=sys.stderr)
        if hint:
            print(f"hint: {hint}", file=sys.stderr)
        sys.stderr.flush()
    except BrokenPipeError:
        pass


def _interrupted() -> int:
    with contextlib.suppress(OSError):
        sys.stderr.write("\n")
    return int(ExitStatus.INTERRUPTED)


def _closed_pipe() -> int:
    # The reader went away (`| head`): that is success, and Python must not complain
    # about flushing stdout at exit, so point it at /dev/null.
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    return int(ExitStatus.OK)
