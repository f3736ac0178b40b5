"""The chatctl command line: one module per family of commands, joined in ``main``.

``main()`` here is the console script: a bare ``chatctl --version`` answers before Typer
and the command modules are imported (half the start-up time), everything else runs
``chatctl.cli.main.main``.
"""

import sys


def main() -> None:
    """Run chatctl and exit with its status."""
    if sys.argv[1:] == ["--version"]:
        from chatctl import __version__

        print(f"chatctl {__version__}")
        sys.exit(0)
    from chatctl.cli.main import main as run

    run()
