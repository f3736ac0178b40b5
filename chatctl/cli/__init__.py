"""The chatctl command line: one module per family of commands, joined in ``main``.

``main()`` here is the console script: a bare ``chatctl --version`` answers before Typer
and the command modules are imported (half the start-up time), everything else runs
``chatctl.cli.main.main``, without httpx's own command-line client.
"""

import sys


def main() -> None:
    """Run chatctl and exit with its status."""
    if sys.argv[1:] == ["--version"]:
        from chatctl import __version__

        print(f"chatctl {__version__}")
        sys.exit(0)
    # httpx imports its own command-line client (click, rich, pygments) whenever those are
    # installed, as typer's dependencies are; chatctl never runs it, and it is a quarter of
    # a one-shot command's start-up. None in sys.modules makes that import fail, and httpx
    # then defines a stub in its place (its fallback when its 'cli' extra is missing).
    sys.modules.setdefault("httpx._main", None)  # type: ignore[arg-type]
    from chatctl.cli.main import main as run

    run()
