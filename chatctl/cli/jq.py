"""``--jq EXPR``: shape the JSON chatctl prints with a jq expression, as gh's ``--jq``.

The expression is applied to each JSON value chatctl would print — the whole answer with
``-o json``, each line with ``-o jsonl`` and in ``join`` — and each value it makes is one
line: a string as itself (in a pipe exactly, on a terminal with its control characters
escaped, as ``ls`` shows file names), anything else as compact JSON. Without ``-o`` it
means JSON (``-o json``; ``jsonl`` for ``join``); with ``table``, ``tsv`` or ``id`` it is a
usage error.

The ``jq`` binding (libjq itself, not a re-implementation) is imported only when the flag
is given, so start-up stays where it was. A bad expression is found while the command
line is parsed: exit 2 before anything is sent. An expression that fails on the data
(``.foo`` on an array) stops the output: exit 1, as an output that could not be written.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from chatctl.errors import OutputError, UsageError

__all__ = ["JSON_FORMATS", "Filter", "compile_filter", "require_json"]

#: A compiled expression: a value in, the values it makes out.
Filter = Callable[[Any], list[Any]]
#: the output formats --jq works on (what it filters is JSON).
JSON_FORMATS = ("json", "jsonl")

_HINT = "quote it for the shell, e.g. --jq '.rooms[].name'; see jq's manual for the language"


@functools.lru_cache(maxsize=8)
def compile_filter(expr: str) -> Filter:
    """``expr`` compiled, or a UsageError (exit 2) naming what is wrong with it."""
    import jq  # type: ignore[import-not-found]  # only with --jq (start-up time)

    try:
        program = jq.compile(expr)
    except ValueError as e:
        detail = _detail(e)
        raise UsageError(f"--jq {expr!r} is not a jq expression: {detail}", hint=_HINT) from None

    def run(value: Any) -> list[Any]:
        try:
            results: list[Any] = program.input_value(value).all()
        except ValueError as e:
            raise OutputError(f"--jq {expr!r} failed: {_detail(e)}") from None
        return results

    return run


def require_json(fmt: str | None) -> None:
    """--jq with an output format that is not JSON is a usage error."""
    if fmt is not None and fmt not in JSON_FORMATS:
        raise UsageError(
            f"--jq filters JSON, and -o {fmt} is not JSON",
            hint="use -o json (the whole answer) or -o jsonl (one value a line), or leave -o out",
        )


def _detail(e: ValueError) -> str:
    """jq's message on one line: ``jq: error: syntax error, … column 2:`` and the
    expression pointed at below it, as ``syntax error, … column 2``."""
    first = str(e).strip().splitlines()[0] if str(e).strip() else "error"
    for prefix in ("jq: error: ", "jq: error (at <unknown>): ", "jq: "):
        if first.startswith(prefix):
            first = first[len(prefix) :]
            break
    return first.rstrip(":").strip()
