"""Renderers: one per output format, and the only module that imports rich.

Every command hands whole API responses (``{"room": …}``, ``{"messages": […]}``) to a
renderer and never prints by itself. Formats:

- ``table``: a rich table (the default on a terminal);
- ``json``: each response object exactly as the API returned it (the default in a pipe;
  several responses, as from NDJSON input, are one compact object per line);
- ``jsonl``: one resource (room, message or event) per line;
- ``tsv``: one resource per line, fields tab-separated, no header, no colour;
- ``id``: ids only, one per line, for xargs.

Data goes to stdout, diagnostics to stderr. NO_COLOR is honoured (by rich).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import sys
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any, TextIO

from chatctl.schema import MESSAGE_FIELDS, ROOM_FIELDS

if TYPE_CHECKING:
    from rich.console import Console

__all__ = [
    "FORMATS",
    "Renderer",
    "default_format",
    "make_renderer",
    "message_line",
    "progress",
    "resources",
]

FORMATS: tuple[str, ...] = ("table", "json", "jsonl", "tsv", "id")
_KEYS = ("room", "rooms", "message", "messages", "event")


def default_format(stream: TextIO | None = None) -> str:
    stream = stream or sys.stdout
    return "table" if _isatty(stream) else "json"


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def resources(response: dict[str, Any]) -> tuple[str, list[dict[str, Any]]]:
    """The kind ("room" or "message" or "event") and the resources a response holds."""
    for key in _KEYS:
        if key in response:
            value = response[key]
            kind = key.rstrip("s")
            if isinstance(value, list):
                return kind, [v for v in value if isinstance(v, dict)]
            return kind, [value] if isinstance(value, dict) else []
    return "", []


def _fields(kind: str, item: dict[str, Any]) -> tuple[str, ...]:
    if kind == "room":
        return ROOM_FIELDS
    if kind == "message":
        return MESSAGE_FIELDS
    return tuple(item)


def _cell(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return ",".join(str(v) for v in value)
    text = "" if value is None else str(value)
    return text.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")


class Renderer:
    """Writes responses in one format; ``close()`` flushes whatever it was holding."""

    def __init__(self, stream: TextIO, *, batch: bool = False) -> None:
        self.out = stream
        self.batch = batch

    def response(self, response: dict[str, Any]) -> None:
        kind, items = resources(response)
        for item in items:
            self.item(kind, item)

    def stream(self, key: str, items: Iterable[dict[str, Any]]) -> None:
        """One logical response whose list (under ``key``) arrives in pages."""
        kind = key.rstrip("s")
        for item in items:
            self.item(kind, item)

    def item(self, kind: str, item: dict[str, Any]) -> None:
        raise NotImplementedError

    def close(self) -> None:
        self.out.flush()

    def _line(self, text: str) -> None:
        self.out.write(text + "\n")
        self.out.flush()


class JSONRenderer(Renderer):
    def response(self, response: dict[str, Any]) -> None:
        if self.batch:
            self._line(json.dumps(response, ensure_ascii=False))
        else:
            self._line(json.dumps(response, indent=2, ensure_ascii=False))

    def stream(self, key: str, items: Iterable[dict[str, Any]]) -> None:
        # Written as it comes, so exporting a large room runs in constant memory; the
        # first page is fetched before anything is written, so an error leaves no stub.
        rest = iter(items)
        first = next(rest, None)
        pretty = not self.batch
        self.out.write(f'{{\n  "{key}": [' if pretty else f'{{"{key}": [')
        count = 0
        for item in itertools.chain([first] if first is not None else [], rest):
            text = json.dumps(item, ensure_ascii=False, indent=2 if pretty else None)
            if pretty:
                text = "\n    " + text.replace("\n", "\n    ")
            self.out.write(("," if count else "") + text)
            count += 1
        if pretty:
            self.out.write("\n  ]\n}\n" if count else "]\n}\n")
        else:
            self.out.write("]}\n")
        self.out.flush()


class JSONLRenderer(Renderer):
    def item(self, kind: str, item: dict[str, Any]) -> None:
        self._line(json.dumps(item, ensure_ascii=False))


class TSVRenderer(Renderer):
    def item(self, kind: str, item: dict[str, Any]) -> None:
        self._line("\t".join(_cell(item.get(f)) for f in _fields(kind, item)))


class IDRenderer(Renderer):
    def item(self, kind: str, item: dict[str, Any]) -> None:
        if "id" in item:
            self._line(str(item["id"]))


class TableRenderer(Renderer):
    """Collects rows and prints one table per kind at close."""

    def __init__(self, stream: TextIO, *, batch: bool = False) -> None:
        super().__init__(stream, batch=batch)
        self.rows: dict[str, list[dict[str, Any]]] = {}

    def item(self, kind: str, item: dict[str, Any]) -> None:
        self.rows.setdefault(kind, []).append(item)

    def close(self) -> None:
        from rich.table import Table

        # Like kubectl: columns take their natural width and nothing is cut or folded
        # (ids are copied whole); a line longer than the terminal wraps as text does.
        console = _console(self.out, width=1_000_000)
        for kind, rows in self.rows.items():
            table = Table(box=None, header_style="bold", pad_edge=False)
            if kind == "room":
                for col in ("ID", "NAME", "DESCRIPTION", "MEMBERS", "PRIVATE", "CREATED"):
                    table.add_column(col)
                for r in rows:
                    table.add_row(
                        str(r.get("id", "")),
                        str(r.get("name", "")),
                        str(r.get("description", "")),
                        ", ".join(r.get("user_ids") or []),
                        "yes" if r.get("private") else "no",
                        _short_time(str(r.get("created_at", ""))),
                    )
            elif kind == "message":
                for col in ("TIME", "USER", "SUBJECT", "TEXT", "ID"):
                    table.add_column(col)
                for m in rows:
                    table.add_row(
                        _short_time(str(m.get("sent_at", ""))),
                        str(m.get("user_id", "")),
                        str(m.get("subject", "")),
                        str(m.get("text", "")),
                        str(m.get("id", "")),
                    )
            else:
                columns = list(rows[0]) if rows else []
                for col in columns:
                    table.add_column(col.upper())
                for r in rows:
                    table.add_row(*(_cell(r.get(c)) for c in columns))
            console.print(table)
        if not self.rows:
            console.print("[dim]nothing to show[/dim]")
        self.out.flush()


_RENDERERS: dict[str, type[Renderer]] = {
    "table": TableRenderer,
    "json": JSONRenderer,
    "jsonl": JSONLRenderer,
    "tsv": TSVRenderer,
    "id": IDRenderer,
}


def make_renderer(fmt: str, stream: TextIO | None = None, *, batch: bool = False) -> Renderer:
    return _RENDERERS[fmt](stream or sys.stdout, batch=batch)


def _console(stream: TextIO, width: int | None = None) -> Console:
    from rich.console import Console

    return Console(file=stream, highlight=False, soft_wrap=False, width=width)


def _short_time(stamp: str) -> str:
    """``2022-02-17T16:18:35.683008885Z`` -> ``2022-02-17 16:18:35``."""
    return stamp[:19].replace("T", " ") if len(stamp) >= 19 else stamp


# -- live tail lines -----------------------------------------------------------------------

_USER_STYLES = ("cyan", "green", "magenta", "yellow", "blue", "bright_red", "bright_cyan")


def user_style(user_id: str) -> str:
    """A stable colour per user: the same user gets the same colour in every run."""
    import zlib

    return _USER_STYLES[zlib.crc32(user_id.encode()) % len(_USER_STYLES)]


class TailPrinter:
    """Prints a live Join stream: readable lines on a terminal, JSONL in a pipe."""

    def __init__(self, stream: TextIO | None = None, fmt: str | None = None) -> None:
        self.out = stream or sys.stdout
        self.fmt = fmt or ("line" if _isatty(self.out) else "jsonl")
        self._console: Console | None = _console(self.out) if self.fmt == "line" else None

    def frame(self, frame: dict[str, Any]) -> None:
        if "message" in frame:
            self.message(frame["message"])
        elif "event" in frame:
            self.event(frame["event"])

    def message(self, m: dict[str, Any]) -> None:
        if self._console is not None:
            self._console.print(message_line(m), highlight=False)
        elif self.fmt == "json":
            self._write(json.dumps({"message": m}, ensure_ascii=False))
        elif self.fmt == "tsv":
            self._write("\t".join(_cell(m.get(f)) for f in MESSAGE_FIELDS))
        elif self.fmt == "id":
            self._write(str(m.get("id", "")))
        else:
            self._write(json.dumps(m, ensure_ascii=False))

    def event(self, e: dict[str, Any]) -> None:
        if self._console is not None:
            from rich.text import Text

            who = e.get("user_id", "")
            line = Text(f"{_clock(str(e.get('at', '')))} * {who} {e.get('type', '')}", style="dim")
            self._console.print(line)
        elif self.fmt in ("jsonl", "json"):
            self._write(json.dumps({"event": e} if self.fmt == "json" else e, ensure_ascii=False))

    def _write(self, text: str) -> None:
        self.out.write(text + "\n")
        self.out.flush()


def _clock(stamp: str) -> str:
    return stamp[11:19] if len(stamp) >= 19 else stamp


def message_line(m: dict[str, Any]) -> Any:
    """One readable line: time, user (in a stable colour), subject if any, text."""
    from rich.text import Text

    user = str(m.get("user_id", ""))
    line = Text()
    line.append(_clock(str(m.get("sent_at", ""))) + " ", style="dim")
    line.append(user, style=f"bold {user_style(user)}")
    line.append(": ")
    subject = str(m.get("subject", ""))
    if subject:
        line.append(f"[{subject}] ", style="italic")
    line.append(str(m.get("text", "")))
    return line


def stderr_console() -> Console:
    """The console for diagnostics and progress: stderr, never stdout."""
    return _console(sys.stderr)


@contextlib.contextmanager
def progress(total: int | None, what: str) -> Iterator[Callable[[], None]]:
    """Yield an ``advance()`` to call once per finished item of a batch.

    Shows a progress bar on stderr for batches (more than one item; ``None`` is a stream
    of unknown length) when stderr is a terminal; in a pipe or a log, nothing at all.
    """
    if (total is not None and total <= 1) or not _isatty(sys.stderr):
        yield lambda: None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    with Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=stderr_console(),
        transient=True,
    ) as bar:
        task = bar.add_task(what, total=total)
        yield lambda: bar.advance(task)
