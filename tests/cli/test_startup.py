"""Start-up stays cheap: --version and --help import nothing they do not need
(a subprocess, so the test sees a real cold start)."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import free_port, untraced_env

PROBE = """
import sys
from chatctl.cli.main import run_cli
code = run_cli({args!r})
watched = {{'httpx', 'websockets', 'rich', 'uvicorn', 'starlette', 'pydantic', 'httptools', 'jq'}}
heavy = sorted({{m.split('.')[0] for m in sys.modules}} & watched)
server = sorted(m for m in sys.modules if m.startswith('chatctl.server'))
sys.stdout.flush()
print('\\n' + __import__('json').dumps({{'code': code, 'heavy': heavy, 'server': server}}))
"""


def loaded(*args: str) -> dict[str, object]:
    out = subprocess.run(
        [sys.executable, "-c", PROBE.format(args=list(args))],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


def test_version_imports_nothing_heavy() -> None:
    result = loaded("--version")
    assert result == {"code": 0, "heavy": [], "server": []}


@pytest.mark.parametrize("args", [["--help"], ["send", "--help"]])
def test_help_imports_no_transport_and_no_server(args: list[str]) -> None:
    result = loaded(*args)
    assert result["code"] == 0
    assert result["server"] == []
    assert set(result["heavy"]) <= {"rich"}  # help is rendered with rich, nothing else


ENTRY_PROBE = """
import json, sys
sys.argv = ['chatctl', *{args!r}]
from chatctl.cli import main
try:
    main()
except SystemExit as exc:
    code = exc.code
print(json.dumps({{
    'code': code,
    'httpx': 'httpx' in sys.modules,
    'rich': sorted(m for m in sys.modules if m.split('.')[0] in ('rich', 'pygments')),
    'httpx_cli': sys.modules.get('httpx._main') is not None,
    'setproctitle': 'setproctitle' in sys.modules,
    'jq': 'jq' in sys.modules,
}}))
"""


def test_a_one_shot_call_in_a_pipe_skips_rich_and_httpx_own_cli() -> None:
    """httpx imports its command-line client (rich, pygments) when they are installed, as
    typer's dependencies are: the console script keeps it out."""
    out = subprocess.run(
        [sys.executable, "-c", ENTRY_PROBE.format(args=["list", "-o", "json"])],
        capture_output=True,
        text=True,
        env=untraced_env(CHATCTL_URL=f"http://127.0.0.1:{free_port()}"),
    ).stdout
    result = json.loads(out.strip().splitlines()[-1])
    assert result["code"] == 3  # nothing listens there: the call was really made
    assert result["httpx"] and not result["httpx_cli"]
    assert result["rich"] == []
    assert not result["setproctitle"]  # loaded only to hide a secret given as an argument
    assert not result["jq"]  # loaded only for --jq


def test_jq_is_loaded_only_when_the_flag_is_given() -> None:
    out = subprocess.run(
        [sys.executable, "-c", ENTRY_PROBE.format(args=["list", "--jq", ".rooms[].name"])],
        capture_output=True,
        text=True,
        env=untraced_env(CHATCTL_URL=f"http://127.0.0.1:{free_port()}"),
    ).stdout
    result = json.loads(out.strip().splitlines()[-1])
    assert result["code"] == 3  # the call was made, with the expression compiled
    assert result["jq"] and result["rich"] == []


def test_a_token_argument_loads_setproctitle_and_nothing_else_heavy() -> None:
    out = subprocess.run(
        [sys.executable, "-c", ENTRY_PROBE.format(args=["list", "--token", "T", "-o", "json"])],
        capture_output=True,
        text=True,
        env=untraced_env(CHATCTL_URL=f"http://127.0.0.1:{free_port()}"),
    ).stdout
    result = json.loads(out.strip().splitlines()[-1])
    assert result["code"] == 3
    assert result["setproctitle"] and result["rich"] == []


# -- one command's tree -------------------------------------------------------------------
# A command line naming a command gets a root app holding only that command (``app_for``):
# Typer makes every held command's click parameters before it parses, and the commands of
# other families need not be imported. These pin that the pruned tree parses as the whole.


def _click(app: object) -> Any:
    import typer.main

    return typer.main.get_command(app)  # type: ignore[arg-type]


def test_the_scan_knows_every_root_option_and_command(monkeypatch: pytest.MonkeyPatch) -> None:
    cli_main = importlib.import_module("chatctl.cli.main")  # the package's main() shadows it

    whole = _click(cli_main.full_app())
    valued = {
        opt
        for p in whole.params
        if not getattr(p, "is_flag", False) and getattr(p, "opts", None)
        for opt in [*p.opts, *p.secondary_opts]
    }
    assert valued == set(cli_main.ROOT_VALUE_OPTIONS)
    flags = {
        opt
        for p in whole.params
        if getattr(p, "is_flag", False)
        for opt in [*p.opts, *p.secondary_opts]
    }
    assert flags - {"--version", "-h", "--help"} == {"--verbose", "-v"}
    assert set(whole.commands) == {*cli_main._FAMILY_OF, *cli_main._OTHERS}, (
        "list each command under its family module in chatctl/cli/main.py's _FAMILIES"
    )
    from chatctl.cli.completion import COMPLETE_VAR  # the shell's requests get the whole tree

    assert cli_main.app_for(["send"]) is not cli_main.full_app()
    monkeypatch.setenv(COMPLETE_VAR, "complete_bash")
    assert cli_main.app_for(["send"]) is cli_main.full_app()


@pytest.mark.parametrize(
    ("args", "word"),
    [
        (["send", "R", "hi"], "send"),
        (["--url", "http://x", "-o", "json", "send", "R"], "send"),
        (["--url=http://x", "-v", "--timeout", "3", "list"], "list"),
        (["--jq", ".message.id", "send", "R", "hi"], "send"),
        (["-o", "send", "history", "R"], "history"),  # an option's value is not the command
        (["--", "send"], "send"),
        (["-ojson", "send"], None),  # a form the scan does not read: the whole tree
        (["--help"], None),
        ([], None),
    ],
)
def test_the_command_word_of_a_command_line(args: list[str], word: str | None) -> None:
    from chatctl.cli.main import _command_word

    assert _command_word(args) == word


def _shape(command: Any) -> Any:
    """What a click command parses and says: its parameters (names, kinds, defaults,
    help), its help texts, and its subcommands', recursively."""
    params = [
        {k: _plain(getattr(p, k, None)) for k in _PARAM_KEYS} | {"class": type(p).__name__}
        for p in command.params
    ]
    subs = getattr(command, "commands", {})
    return (
        type(command).__name__,
        command.name,
        command.help,
        command.short_help,
        command.epilog,
        command.hidden,
        params,
        {n: _shape(c) for n, c in subs.items()},
    )


def _plain(value: Any) -> Any:
    """``value`` comparable across two builds: a function by its name, an object whose
    repr is its address by its class and attributes."""
    if callable(value) and hasattr(value, "__qualname__"):
        return value.__qualname__
    text = repr(value)
    if " at 0x" in text and hasattr(value, "__dict__"):
        return (type(value).__name__, {k: _plain(v) for k, v in vars(value).items()})
    return text


_PARAM_KEYS = (
    "name", "opts", "secondary_opts", "required", "default", "help", "type", "nargs",
    "multiple", "is_flag", "count", "hidden", "envvar", "metavar", "is_eager",
    "expose_value", "rich_help_panel", "callback",
)  # fmt: skip


def test_a_pruned_tree_parses_each_command_as_the_whole_tree() -> None:
    """Each command's click parameters (names, types, defaults, help) and the root's are
    the same in the one-command app as in the whole tree."""
    cli_main = importlib.import_module("chatctl.cli.main")  # the package's main() shadows it

    whole = _click(cli_main.full_app())
    for name in [*cli_main._FAMILY_OF, *cli_main._OTHERS]:
        pruned = _click(cli_main.app_for([name]))
        assert list(pruned.commands) == [name]
        assert _shape(pruned.commands[name]) == _shape(whole.commands[name])
        assert _shape(pruned)[:7] == _shape(whole)[:7]  # the root, but for its commands
    assert cli_main.app_for(["sned"]) is cli_main.full_app()  # a typo: "Did you mean"


def test_a_commands_help_and_errors_read_as_before(
    cli: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    cli_main = importlib.import_module("chatctl.cli.main")
    cases = (["send", "--help"], ["send", "--bogus"], ["--url", "unix:/x", "serve", "-h"])
    pruned = [cli(*args) for args in cases]
    monkeypatch.setattr(cli_main, "app_for", lambda args: cli_main.full_app())
    whole = [cli(*args) for args in cases]
    assert pruned == whole
    assert "Usage: chatctl send [OPTIONS]" in pruned[0].stdout
    assert pruned[1].code == 2 and "--bogus" in pruned[1].stderr


def test_a_one_shot_send_imports_no_other_family_and_no_server(tmp_path: Path) -> None:
    probe = ENTRY_PROBE.replace(
        "'code': code,",
        "'code': code, 'chatctl': sorted(m for m in sys.modules if m.startswith('chatctl')),"
        " 'lazy': sorted(m for m in ('tomllib', 'queue', 'platformdirs') if m in sys.modules),",
    )
    out = subprocess.run(
        [sys.executable, "-c", probe.format(args=["send", "R", "hi", "-u", "u", "-o", "id"])],
        capture_output=True,
        text=True,
        env=untraced_env(
            CHATCTL_URL=f"http://127.0.0.1:{free_port()}",
            CHATCTL_CONFIG=str(tmp_path / "none.toml"),
        ),
    ).stdout
    result = json.loads(out.strip().splitlines()[-1])
    assert result["code"] == 3  # nothing listens there: the call was really made
    loaded = set(result["chatctl"])
    others = ("serve", "completion", "config_cmd", "rooms", "members", "join", "identity", "call")
    unneeded = {f"chatctl.cli.{m}" for m in others}
    assert not loaded & unneeded
    assert not {m for m in loaded if m.startswith(("chatctl.server", "chatctl.local"))}
    assert result["rich"] == [] and not result["httpx_cli"]
    # No config file to parse, no streamed input to read ahead, a config file named.
    assert result["lazy"] == []
