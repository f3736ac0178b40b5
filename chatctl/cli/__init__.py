"""The chatctl command line: one module per family of commands, joined in ``main``.

``main()`` here is the console script: a bare ``chatctl --version`` answers before Typer
and the command modules are imported (half the start-up time), everything else runs
``chatctl.cli.main.main``, without httpx's own command-line client.
"""

import errno
import io
import os
import sys


class _ClosedStream(io.TextIOBase):
    """Stands for stdout or stderr when the shell closed it (``>&-``): writing fails as
    the closed descriptor would, with EBADF, so the renderers report one line."""

    def writable(self) -> bool:
        return True

    def write(self, s: str) -> int:
        raise OSError(errno.EBADF, "stdout is closed")

    def isatty(self) -> bool:
        return False


def _hold_closed_streams() -> None:
    """Keep /dev/null on a closed fd 0, 1 or 2, so no socket or file opened later lands on
    it (and is read or written as a standard stream). A closed stdin reads as empty;
    writes to a closed stdout fail, and are reported; a closed stderr is silent."""
    for fd, name in ((0, "stdin"), (1, "stdout"), (2, "stderr")):
        if getattr(sys, name) is not None:
            continue
        held = os.open(os.devnull, os.O_RDWR)
        if held != fd:
            os.dup2(held, fd)
            os.close(held)
        if name == "stdin":
            sys.stdin = open(os.devnull)  # noqa: SIM115  # for the life of the process
        elif name == "stdout":
            sys.stdout = _ClosedStream()
        else:
            sys.stderr = open(os.devnull, "w")  # noqa: SIM115  # nowhere to report to


def main() -> None:
    """Run chatctl and exit with its status."""
    _hold_closed_streams()
    if sys.argv[1:] == ["--version"]:
        from chatctl import __version__

        try:
            print(f"chatctl {__version__}", flush=True)
        except BrokenPipeError:
            sys.exit(0)
        except OSError as e:
            print(f"error: cannot write the output: {e.strerror}", file=sys.stderr)
            sys.exit(1)
        sys.exit(0)
    # httpx imports its own command-line client (click, rich, pygments) whenever those are
    # installed, as typer's dependencies are; chatctl never runs it, and it is a quarter of
    # a one-shot command's start-up. None in sys.modules makes that import fail, and httpx
    # then defines a stub in its place (its fallback when its 'cli' extra is missing).
    sys.modules.setdefault("httpx._main", None)  # type: ignore[arg-type]
    from chatctl.cli.main import main as run

    run()
