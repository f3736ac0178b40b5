"""The chatctl command line: one module per family of commands, joined in ``main``.

``main()`` here is the console script: a bare ``chatctl --version`` answers before Typer
and the command modules are imported (half the start-up time), everything else runs
``chatctl.cli.main.main``, without httpx's own command-line client. First of all it hides
a secret given on the command line (``--token T``) from ``ps``, as MySQL's client hides
``-p``.
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


#: options whose whole value is a secret (the client's, and serve's repeatable --token).
_SECRET_OPTIONS = ("--token",)
#: options whose value is a URL that may carry a password (postgresql://user:pw@host).
_URL_OPTIONS = ("--db", "--url")
HIDDEN = "<hidden>"


def _without_secrets(args: list[str]) -> list[str]:
    """``args`` with every secret replaced by ``<hidden>``: the value of ``--token``
    (``--token T`` and ``--token=T``), a password in a ``--db``/``--url`` URL, the value
    of ``config set token VALUE`` and a password in ``config set url VALUE``. Nothing
    after ``--`` is an option."""
    out = list(args)
    positional: list[int] = []
    i = 0
    while i < len(out):
        arg = out[i]
        if arg == "--":
            break
        name, eq, value = arg.partition("=")
        if name in _SECRET_OPTIONS:
            if eq:
                out[i] = f"{name}={HIDDEN}"
            elif i + 1 < len(out):
                i += 1
                out[i] = HIDDEN
        elif name in _URL_OPTIONS:
            if eq:
                out[i] = f"{name}={_url_without_password(value)}"
            elif i + 1 < len(out):
                i += 1
                out[i] = _url_without_password(out[i])
        elif name in ("-p", "--profile") and not eq:
            i += 1  # config's profile option: its value is not the KEY of config set
        elif not arg.startswith("-"):
            positional.append(i)
        i += 1
    # chatctl [options] config set [-p NAME] token|url VALUE, among the positionals.
    words = [out[j] for j in positional]
    for k in range(len(words) - 1):
        if words[k : k + 2] == ["config", "set"]:
            after = words[k + 2 : k + 4]
            if len(after) == 2 and after[1] != "-":
                if after[0] == "token":
                    out[positional[k + 3]] = HIDDEN
                elif after[0] == "url":
                    out[positional[k + 3]] = _url_without_password(after[1])
            break
    return out


def _url_without_password(url: str) -> str:
    """``scheme://user:PASSWORD@host…`` with the password (and a ``password=`` query
    value) hidden; anything else as it is."""
    import re

    url = re.sub(r"^([A-Za-z][A-Za-z0-9+.-]*://[^/@?#:]*):[^/?#]*@", rf"\1:{HIDDEN}@", url)
    return re.sub(r"([?&]password=)[^&#]*", rf"\1{HIDDEN}", url)


def _hide_secrets_from_ps() -> None:
    """Rewrite what ``/proc/PID/cmdline`` (and so ``ps``) shows when the command line holds
    a secret, before anything else runs. Python keeps its own copy of the arguments, so
    parsing is unchanged; setproctitle (a C extension) is imported only then."""
    args = sys.argv[1:]
    hidden = _without_secrets(args)
    if hidden == args:
        return
    try:
        import setproctitle
    except ImportError:  # pragma: no cover - a runtime dependency; nothing else to do
        return
    # sys.orig_argv is the whole command (the interpreter and its options too) and ends
    # with the same arguments as sys.argv, unless a caller set sys.argv itself.
    orig = sys.orig_argv
    head = orig[: len(orig) - len(args)] if orig[len(orig) - len(args) :] == args else orig[:1]
    try:
        # Setting the title also renames the process (what pgrep and top show): keep its name.
        with open("/proc/self/comm") as f:
            name: str | None = f.read().rstrip("\n")
    except OSError:
        name = None
    setproctitle.setproctitle(" ".join([*head, *hidden]))
    if name is not None:
        setproctitle.setthreadtitle(name)


def main() -> None:
    """Run chatctl and exit with its status."""
    _hide_secrets_from_ps()
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
