"""One run of chatctl: its options, streams, settings, client and room-name cache.

The entry point (``chatctl.cli.main.run_cli``) makes one ``Invocation`` and hands it to
Typer as the click context's ``obj``; every command finds it as ``ctx.obj`` and passes it
down, as HTTPie passes its ``Environment``. Nothing per-run lives in a module global, so
runs in one process (the tests) cannot see each other's state.

Cheap to import: the client (httpx) and the renderers (rich) are imported when first used.
"""

from __future__ import annotations

import contextlib
import sys
from typing import TYPE_CHECKING, Any, TextIO

from chatctl import config
from chatctl.cli.options import Options

if TYPE_CHECKING:
    import typer

    from chatctl.client import Client
    from chatctl.output import Renderer

__all__ = ["Invocation", "invocation"]


class Invocation:
    """The state of one command line, from parsing to exit."""

    def __init__(
        self,
        stdin: TextIO | None = None,
        stdout: TextIO | None = None,
        stderr: TextIO | None = None,
    ) -> None:
        self.options = Options()
        self.stdin: TextIO = stdin or sys.stdin
        self.stdout: TextIO = stdout or sys.stdout
        self.stderr: TextIO = stderr or sys.stderr
        self._client: Client | None = None
        self._settings: dict[str | None, config.Settings] = {}
        self._rooms: list[dict[str, Any]] | None = None
        #: the command's --user, when given (hints say what to leave out).
        self.user_flag: str | None = None
        self._token_user: str | None = None

    def settings(self, user: str | None = None) -> config.Settings:
        """Where and as whom to talk: the options over the environment and the profile."""
        if user not in self._settings:
            o = self.options
            self._settings[user] = config.resolve(o.url, o.token, user, o.profile, o.ca_cert)
        return self._settings[user]

    def acting_user(self, flag: str | None = None) -> str:
        """The user every command acts or reads as: --user, else the settings' user (a
        ``config.LoginName`` when none was given, which the client binds to the token's
        own user where the server says who that is)."""
        if flag:
            self.user_flag = flag
        settings = self.settings(flag)
        return settings.user if settings.user_explicit else config.LoginName(settings.user)

    def user_from(self) -> str:
        """Where the acting user came from: "--user", "CHATCTL_USER", "profile", or ""
        (nowhere: the login name, or the token's own user)."""
        return "--user" if self.user_flag else self.settings().user_from

    @property
    def client(self) -> Client:
        """This run's one client (one kept-alive connection)."""
        if self._client is None:
            from chatctl.client import DEFAULT_TIMEOUT, Client

            s = self.settings()
            self._client = Client(
                s.url,
                s.token,
                timeout=self.options.timeout or DEFAULT_TIMEOUT,
                ca_cert=s.ca_cert,
                verbose=self.stderr if self.options.verbose else None,
            )
        return self._client

    def listed_rooms(self) -> list[dict[str, Any]]:
        """The rooms List answers, asked once per run however many names need it."""
        if self._rooms is None:
            from chatctl.schema import rooms_in

            self._rooms = rooms_in(self.client.call("List", {}))
        return self._rooms

    def output_format(self, *, live: bool = False) -> str:
        """-o, else table on a terminal and json (jsonl for a live stream) in a pipe;
        with --jq, json (jsonl for a live stream) anywhere."""
        if self.options.output:
            return self.options.output
        if self.options.jq is not None:
            return "jsonl" if live else "json"
        from chatctl.output import default_format

        fmt = default_format(self.stdout)
        return "jsonl" if live and fmt == "json" else fmt

    def renderer(
        self, *, batch: bool, report: bool = False, live: bool = False, show_ids: bool = False
    ) -> Renderer:
        from chatctl.output import make_renderer

        fmt = self.output_format(live=live)
        keep = None
        if self.options.jq is not None:
            from chatctl.cli.jq import compile_filter

            keep = compile_filter(self.options.jq)
        return make_renderer(
            fmt, self.stdout, batch=batch, report=report, live=live, show_ids=show_ids, keep=keep
        )

    def notice(self, text: str, *, terminal_only: bool = False) -> None:
        """One line of news for the person at the terminal (stderr), never data;
        ``terminal_only``: news that is noise in a log (only when stderr is a terminal)."""
        from chatctl.output import isatty, visible

        if terminal_only and not isatty(self.stderr):
            return
        with contextlib.suppress(OSError, ValueError):
            print(f"chatctl: {visible(text)}", file=self.stderr, flush=True)

    def token_user(self) -> str | None:
        """The user the token acts as, if the server said so during this run (never
        asked here: an error's hint reads it after the client is closed)."""
        if self._client is not None:
            self._token_user = self._client.token_user()
        return self._token_user

    def close(self) -> None:
        if self._client is not None:
            self.token_user()
            self._client.close()
            self._client = None


def invocation(ctx: typer.Context) -> Invocation:
    """The run's Invocation, from the click context of any command."""
    obj = ctx.find_root().obj
    assert isinstance(obj, Invocation), "run chatctl through chatctl.cli.main.run_cli"
    return obj
