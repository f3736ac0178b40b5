"""What ``chatctl.cli.typer_seam`` relies on in Typer's private modules, checked loudly:
on a Typer that moved any of it, these fail with one line naming the supported range."""

from __future__ import annotations

import inspect

import typer
import typer.main

from chatctl.cli import typer_seam
from chatctl.cli.typer_seam import SUPPORTED
from tests.seams import check_pin, seam

MODULE = "chatctl/cli/typer_seam.py"


def test_the_installed_typer_is_one_the_seam_supports() -> None:
    check_pin(MODULE, "typer", SUPPORTED)


def test_the_click_tree_typer_builds_has_what_the_cli_uses() -> None:
    from chatctl.cli.main import app

    with seam(MODULE, "typer", SUPPORTED):
        from typer._click import Command, Context, Parameter

        cli = typer.main.get_command(app)
        assert isinstance(cli, Command), "get_command no longer builds a typer._click Command"
        ctx = cli.make_context("chatctl", [], resilient_parsing=True)
        assert isinstance(ctx, Context), "a command's context is not a typer._click Context"
        assert all(isinstance(p, Parameter) for p in cli.params), "params: not Parameters"
        # main.run_cli shows a usage error and exits with its code.
        assert issubclass(typer.BadParameter, typer_seam.ClickException), (
            "typer.BadParameter is no longer a typer._click.exceptions.ClickException"
        )
        for name in ("show", "exit_code"):
            assert hasattr(typer_seam.ClickException("x"), name), f"ClickException.{name}"


def test_the_completion_classes_are_registered_and_make_scripts() -> None:
    import chatctl.cli.completion  # noqa: F401  # registers the classes at import
    from chatctl.cli.main import app

    with seam(MODULE, "typer", SUPPORTED):
        assert not inspect.signature(typer_seam.completion_init).parameters
        for shell in ("bash", "zsh", "fish"):
            cls = typer_seam.completion_class(shell)
            assert cls is not None, f"no completion class registered for {shell}"
            comp = cls(typer.main.get_command(app), {}, "prog", "_PROG_COMPLETE")
            # completion.script formats the template itself (no probe of the shell).
            assert "_PROG_COMPLETE" in comp.source_template % comp.source_vars(), shell
        assert typer_seam.completion_class("no-such-shell") is None
