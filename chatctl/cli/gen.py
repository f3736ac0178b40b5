"""Generate the committed shell completions and man pages from the Typer app.

    python -m chatctl.cli.gen           rewrite completions/ and man/ in the repository
    python -m chatctl.cli.gen --check   exit 1 naming every stale file, change nothing

Everything comes from the click command tree Typer builds (``typer.main.get_command``):
names, usage, arguments, options and their help, and the docstrings' ``Example:`` lines,
so a new option or command reaches the man pages by regenerating them. The tests run the
check, and fail on any byte of difference.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from chatctl import __version__
from chatctl.cli.completion import REGENERATE, Shell, script
from chatctl.errors import ExitStatus

if TYPE_CHECKING:
    from chatctl.cli.typer_seam import Command, Context, Parameter

__all__ = ["completions", "generate", "main", "man_pages", "stale"]

#: The man pages' date: bump it with the version (a build date would make them differ
#: on every run, and the freshness test would always fail).
MAN_DATE = "2026-11-25"

COMPLETION_FILES = {
    Shell.bash: "completions/chatctl.bash",
    Shell.zsh: "completions/_chatctl",
    Shell.fish: "completions/chatctl.fish",
}

EXIT_STATUSES = {
    ExitStatus.OK: "Success (a write batch: every line was stored, even if the reader of "
    "its output went away).",
    ExitStatus.API_ERROR: "The server answered with an error; a batch had refused lines; "
    "the output could not be written (or --jq failed on it); join --exec-stop-on-error "
    "after CMD failed.",
    ExitStatus.USAGE: "Usage error or bad input (flags, JSON, URL, config): nothing was sent.",
    ExitStatus.UNREACHABLE: "The server could not be reached (refused, DNS, no answer within "
    "--timeout, untrusted certificate, not an m3o Chat API).",
    ExitStatus.FORBIDDEN: "Unauthorized or forbidden (HTTP 401 or 403).",
    ExitStatus.NOT_FOUND: "Not found (HTTP 404), e.g. no such room.",
    ExitStatus.SCHEMA_TOO_NEW: "serve, serve migrate: a newer release migrated the database "
    "past what this one can use (systemd: RestartPreventExitStatus=6).",
    ExitStatus.INTERRUPTED: "Interrupted (Ctrl-C); a write batch first finishes its call in "
    "flight and prints its id.",
}

ENVIRONMENT = {
    "CHATCTL_URL": "Server URL, as --url (which beats it); beats the profile's url.",
    "CHATCTL_TOKEN": "API token, as --token (which beats it); beats the profile's token.",
    "CHATCTL_USER": "The acting user, as --user (which beats it); beats the profile's user.",
    "CHATCTL_PROFILE": "The profile to use, as --profile (which beats it).",
    "CHATCTL_CONFIG": "The config file's path, instead of the default below.",
    "M3O_API_TOKEN": "API token used when no flag, CHATCTL_TOKEN or profile gives one.",
    "NO_COLOR": "When set, no colour in tables and live output.",
    "SSL_CERT_FILE": "CA certificates to trust for https:// instead of the system's "
    "(as SSL_CERT_DIR); --ca-cert or a profile's ca_cert beat both.",
    "TZ": "The time zone of tables, join lines and --since times without a zone.",
}

FILES = {
    "~/.config/chatctl/config.toml": "The profiles (url, token, user, ca_cert), mode 0600; "
    "CHATCTL_CONFIG names another file. Elsewhere than Linux, the platform's user "
    "config directory.",
    "$XDG_RUNTIME_DIR/chatctl/server.sock": "The embedded local server's socket, used "
    "when no URL is configured.",
    "~/.local/share/chatctl/chat.db": "The embedded local server's rooms and messages.",
    "~/.local/state/chatctl/server.log": "The embedded local server's log.",
}


def generate(cli: Command | None = None) -> dict[str, str]:
    """Every generated file: its path in the repository and its exact content."""
    if cli is None:
        import typer.main

        from chatctl.cli.main import app

        cli = typer.main.get_command(app)
    return {**completions(cli), **man_pages(cli)}


def completions(cli: Command) -> dict[str, str]:
    return {path: script(cli, shell) for shell, path in COMPLETION_FILES.items()}


def man_pages(cli: Command) -> dict[str, str]:
    root = cli.make_context("chatctl", [], resilient_parsing=True)
    pages = {"man/chatctl.1": _root_page(cli, root)}
    for name, command in _subcommands(cli, root):
        ctx = command.make_context(name, [], parent=root, resilient_parsing=True)
        pages[f"man/chatctl-{name}.1"] = _command_page(command, ctx)
    return pages


# -- pages ---------------------------------------------------------------------------------


def _root_page(cli: Command, ctx: Context) -> str:
    page = _Page("chatctl", _summary(cli))
    page.synopsis("chatctl", ["[OPTIONS]", "COMMAND", "[ARGS]..."])
    page.description(cli)
    page.section("COMMANDS")
    for name, command in _subcommands(cli, ctx):
        page.item(_bold(f"chatctl {name}"), f"{_summary(command)} See chatctl\\-{name}(1).")
    page.options(cli, ctx)
    page.examples(cli)
    page.common_sections()
    page.see_also([f"chatctl-{name}" for name, _ in _subcommands(cli, ctx)])
    return page.text()


def _command_page(command: Command, ctx: Context) -> str:
    name = ctx.info_name or ""
    page = _Page(f"chatctl-{name}", _summary(command))
    sub = _tree(command, ctx, f"chatctl {name}")
    # A group that also runs by itself (`chatctl serve [OPTIONS]` beside `chatctl serve
    # token ...`) has a synopsis and options of its own.
    runs = not sub or bool(getattr(command, "invoke_without_command", False))
    if runs:
        own = [p for p in command.collect_usage_pieces(ctx) if p != _COMMAND_PIECE]
        page.synopsis(f"chatctl {name}", own)
    for child, cmd, child_ctx in sub:
        if not _subcommands(cmd, child_ctx):
            page.synopsis(child, cmd.collect_usage_pieces(child_ctx))
    page.description(command)
    if not sub:
        page.arguments(command, ctx)
    if runs:
        page.options(command, ctx)
    if sub:
        page.section("COMMANDS")
        for child, cmd, child_ctx in sub:
            page.subsection(child)
            page.paragraphs(_prose(cmd))
            page.parameters(cmd, child_ctx)
    page.examples(command, *(cmd for _, cmd, _ in sub))
    page.common_sections()
    page.see_also(["chatctl"])
    return page.text()


#: how click writes a group's subcommand in its usage.
_COMMAND_PIECE = "COMMAND [ARGS]..."


def _tree(command: Command, ctx: Context, prefix: str) -> list[tuple[str, Command, Context]]:
    """A group's subcommands, depth first: nested groups, then their own subcommands."""
    found = []
    for child, cmd in _subcommands(command, ctx):
        child_ctx = cmd.make_context(child, [], parent=ctx, resilient_parsing=True)
        found.append((f"{prefix} {child}", cmd, child_ctx))
        found += _tree(cmd, child_ctx, f"{prefix} {child}")
    return found


class _Page:
    """One man(7) page, built section by section."""

    def __init__(self, name: str, summary: str) -> None:
        self.name = name
        self.lines = [
            f'.\\" Generated by {REGENERATE} from the chatctl command tree; do not edit.',
            f'.TH {name.upper()} 1 {MAN_DATE} {_quote("chatctl " + __version__)} "User Commands"',
            ".SH NAME",
            _fill(f"{_escape(name)} \\- {_escape(summary.rstrip('.'))}"),
        ]

    def text(self) -> str:
        return "\n".join(self.lines) + "\n"

    def section(self, title: str) -> None:
        self.lines.append(f".SH {title}")

    def subsection(self, title: str) -> None:
        self.lines.append(f".SS {_quote(title)}")

    def item(self, tag: str, body: str) -> None:
        self.lines += [".TP", tag, _fill(_escape_body(body))]

    def paragraphs(self, paragraphs: list[str]) -> None:
        for n, paragraph in enumerate(paragraphs):
            if n:
                self.lines.append(".PP")
            self.lines.append(_fill(_escape(paragraph)))

    def synopsis(self, command: str, pieces: list[str]) -> None:
        if not any(line == ".SH SYNOPSIS" for line in self.lines):
            self.section("SYNOPSIS")
        else:
            self.lines.append(".br")
        words = " ".join(_italic(_operand(p)) for p in pieces)
        self.lines.append(f"{_bold(command)} {words}")

    def description(self, command: Command) -> None:
        self.section("DESCRIPTION")
        self.paragraphs(_prose(command))

    def arguments(self, command: Command, ctx: Context) -> None:
        arguments = [p for p in command.params if p.param_type_name == "argument"]
        if arguments:
            self.section("ARGUMENTS")
            for p in arguments:
                self.item(_italic(_operand(p.make_metavar(ctx))), getattr(p, "help", "") or "")

    def options(self, command: Command, ctx: Context) -> None:
        self.section("OPTIONS")
        panels: dict[str | None, list[Parameter]] = {}
        for p in _options(command):
            panels.setdefault(getattr(p, "rich_help_panel", None), []).append(p)
        for panel, params in panels.items():
            if panel is not None:
                self.subsection(panel)
            for p in params:
                self._option(p, ctx)
            if panel is None:
                self.item(f"{_bold('-h')}, {_bold('--help')}", "Show the help and exit.")

    def parameters(self, command: Command, ctx: Context) -> None:
        """Arguments and options of a subcommand of a group, under its subsection."""
        for p in command.params:
            if p.param_type_name == "argument":
                self.item(_italic(_operand(p.make_metavar(ctx))), getattr(p, "help", "") or "")
        for p in _options(command):
            self._option(p, ctx)

    def _option(self, p: Parameter, ctx: Context) -> None:
        names = ", ".join(_bold(o) for o in sorted(p.opts, key=len))
        record = p.get_help_record(ctx)
        tag = names if getattr(p, "is_flag", False) else f"{names} {_italic(_metavar(p))}"
        self.item(tag, record[1] if record else "")

    def examples(self, *commands: Command) -> None:
        found = [e for c in commands for e in _examples(c)]
        if found:
            self.section("EXAMPLES")
            for n, example in enumerate(found):
                self.lines += [".PP"] if n else []
                self.lines += [".EX", _escape(example), ".EE"]

    def common_sections(self) -> None:
        self.section("EXIT STATUS")
        for status in ExitStatus:
            self.item(_bold(str(int(status))), EXIT_STATUSES[status])
        self.section("ENVIRONMENT")
        for name, about in ENVIRONMENT.items():
            self.item(_bold(name), about)
        self.section("FILES")
        for path, about in FILES.items():
            self.item(_italic(path), about)

    def see_also(self, pages: list[str]) -> None:
        self.section("SEE ALSO")
        refs = [f"{_bold(page)}(1)" for page in pages if page != self.name]
        self.lines.append(",\n".join(refs))


# -- reading the command tree --------------------------------------------------------------


def _subcommands(command: Command, ctx: Context) -> list[tuple[str, Command]]:
    names: list[str] = getattr(command, "list_commands", lambda ctx: [])(ctx)
    found = [(n, command.get_command(ctx, n)) for n in names]  # type: ignore[attr-defined]
    return [(n, c) for n, c in found if c is not None and not c.hidden]


def _options(command: Command) -> Iterator[Parameter]:
    for p in command.params:
        if p.param_type_name == "option" and not getattr(p, "hidden", False):
            yield p


def _help(command: Command) -> str:
    return command.help or ""


def _summary(command: Command) -> str:
    return _prose(command)[0] if _prose(command) else ""


def _prose(command: Command) -> list[str]:
    """The help's paragraphs, each on one line, without the examples."""
    paragraphs = []
    for block in _help(command).split("\n\n"):
        lines = [ln.strip() for ln in block.splitlines() if not _is_example(ln)]
        if any(lines):
            paragraphs.append(" ".join(ln for ln in lines if ln))
    return paragraphs


def _examples(command: Command) -> list[str]:
    return [
        ln.strip().removeprefix("Example:").strip()
        for ln in _help(command).splitlines()
        if _is_example(ln)
    ]


def _is_example(line: str) -> bool:
    return line.strip().startswith("Example:")


def _operand(piece: str) -> str:
    """``[room]`` -> ``[ROOM]``; ``{SHELL}`` -> ``SHELL``; OPTIONS and COMMAND unchanged."""
    return piece.replace("{", "").replace("}", "").upper()


def _metavar(p: Parameter) -> str:
    explicit = getattr(p, "metavar", None)
    if explicit:
        return str(explicit)
    choices = getattr(p.type, "choices", None)
    if choices:
        return "{" + "|".join(str(c) for c in choices) + "}"
    return (p.name or "value").upper().replace("_", "-")


# -- roff ----------------------------------------------------------------------------------


def _escape(text: str) -> str:
    """Text safe in roff: backslashes and hyphens (a real minus, for copy and paste)
    escaped, and no line that begins like a request."""
    text = text.replace("\\", "\\e").replace("-", "\\-")
    return "\n".join("\\&" + ln if ln.startswith((".", "'")) else ln for ln in text.split("\n"))


def _fill(text: str) -> str:
    """Break roff text into lines of at most 80 bytes (roff fills them again)."""
    import textwrap

    lines = textwrap.wrap(text, 76, break_long_words=False, break_on_hyphens=False)
    return "\n".join("\\&" + ln if ln.startswith((".", "'")) else ln for ln in lines)


def _escape_body(text: str) -> str:
    # Bodies of items built here may already hold escapes (a man page reference).
    return text if "\\-" in text else _escape(text)


def _bold(text: str) -> str:
    return f"\\fB{_escape(text)}\\fR"


def _italic(text: str) -> str:
    return f"\\fI{_escape(text)}\\fR"


def _quote(text: str) -> str:
    return '"' + _escape(text).replace('"', "\\(dq") + '"'


# -- writing -------------------------------------------------------------------------------


def _repository() -> Path:
    root = Path(__file__).resolve().parents[2]
    if not (root / "pyproject.toml").is_file():
        raise SystemExit(f"not a chatctl checkout: {root} (run from an editable install)")
    return root


def stale(root: Path, files: dict[str, str]) -> list[str]:
    """Generated files that differ from what is on disk, and leftovers nobody generates."""
    differ = [
        path
        for path, content in files.items()
        if not (root / path).is_file() or (root / path).read_bytes() != content.encode()
    ]
    leftovers = [
        str(p.relative_to(root))
        for p in sorted((root / "man").glob("chatctl*.1"))
        if str(p.relative_to(root)) not in files
    ]
    return differ + leftovers


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m chatctl.cli.gen", description=__doc__)
    parser.add_argument("--check", action="store_true", help="report stale files; write none")
    parser.add_argument("--root", type=Path, help="the repository (default: this checkout)")
    args = parser.parse_args(argv)
    root = args.root or _repository()
    files = generate()
    out_of_date = stale(root, files)
    if args.check:
        for path in out_of_date:
            print(f"stale: {path} (regenerate with: {REGENERATE})", file=sys.stderr)
        return 1 if out_of_date else 0
    for path in out_of_date:
        target = root / path
        if path in files:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(files[path].encode())
            print(f"wrote {path}", file=sys.stderr)
        else:
            target.unlink()
            print(f"removed {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
