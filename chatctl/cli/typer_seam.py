"""What the CLI takes from Typer beyond its documented API, in one place.

Since 0.26 Typer vendors click as ``typer._click`` (click is no longer a dependency), so
the click command tree's types, its shell-completion classes and ``ClickException`` are
private to Typer; so is ``completion_init``, which registers Typer's completion classes
(Typer calls it itself only with ``add_completion=True``). Every other module of chatctl
uses Typer's documented API (``typer.*``, ``typer.main.get_command``) and takes these from
here. ``tests/cli/test_typer_seam.py`` fails with one message naming ``SUPPORTED`` when an
installed Typer moves any of them.

Supported: Typer >=0.26 (the first that vendors click) and <0.29 (0.29 imports pydantic on
every command: start-up time), as pyproject.toml pins. Cheap to import: Typer has loaded
these modules already when ``import typer`` returns, except the shell completion classes,
loaded when a completion script is made.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from typer._click.exceptions import ClickException
from typer._completion_classes import completion_init

if TYPE_CHECKING:
    from typer._click import Command, Context, Parameter
    from typer._click.shell_completion import ShellComplete

__all__ = [
    "SUPPORTED",
    "ClickException",
    "Command",
    "Context",
    "Parameter",
    "completion_class",
    "register_completion",
]

#: the Typer versions this module is written for (pyproject.toml pins the same range).
SUPPORTED = ">=0.26,<0.29"


def register_completion() -> None:
    """Register Typer's completion classes (bash, zsh, fish, PowerShell), which answer the
    shell's ``_CHATCTL_COMPLETE`` requests, as Typer does itself with ``add_completion``."""
    completion_init()


def completion_class(shell: str) -> type[ShellComplete] | None:
    """The registered completion class for ``shell`` (None: no such shell)."""
    from typer._click.shell_completion import get_completion_class

    return get_completion_class(shell)
