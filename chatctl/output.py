"""Renderers: one per output format, the one place that escapes, and the only module that
imports rich.

Every command hands whole API responses (``{"room": …}``, ``{"messages": […]}``, a Join
frame) to a renderer and never prints by itself. Formats:

- ``table``: a rich table (the default on a terminal); for ``join``, one line per message;
- ``json``: each response object as the API returned it (the default in a pipe;
  several responses, as from NDJSON input or a Join stream, are one compact object a line);
- ``jsonl``: one resource (room, message or event) per line;
- ``tsv``: one resource per line, fields tab-separated, no header, no colour;
- ``id``: ids only, one per line, for xargs.

Everything in a response was written by someone else and is treated as data, never as
markup or terminal control:

- output for a person (tables, ``join`` lines) is built from rich ``Text`` objects, so
  ``[bold]`` or ``[/]`` stays literal text, and every control character (C0 but tab,
  DEL, C1), invisible character (Unicode's Cf and default-ignorables: zero-width spaces
  and joiners, bidi controls, directional marks, BOM, tags, variation selectors; but not
  a joiner or VS16 inside an emoji), line separator and lone surrogate is shown escaped, as
  ``\\x1b``, ``\\u202e`` or ``al\\u200dice`` (the way ``ls`` and ``git`` show odd file
  names); tabs are expanded to spaces. A message's further lines are indented under it,
  so they cannot pass for messages of their own; a user's colour is chatctl's choice,
  never the data's;
- ``tsv`` and ``id`` escape backslash, tab, newline and every control and invisible
  character, so one record stays one line;
- a list (a room's members) is its items joined with commas (", " in tables), each
  item's own commas and backslashes escaped (``\\,``, ``\\\\``): ``alice\\,bob,carol`` is
  two members;
- JSON escapes as JSON does, and also writes DEL, C1, invisible characters, line
  separators and lone surrogates as ``\\uXXXX`` (the same data, safe on a terminal and
  encodable as UTF-8).

Data goes to stdout, diagnostics to stderr. NO_COLOR is honoured (by rich). When the
reader of stdout goes away, a read command stops (BrokenPipeError reaches the CLI's edge,
which exits 0); a renderer made with ``report=True`` (the output reports work done, as a
write batch's) keeps quiet and lets the work go on. Any other write failure is an
OutputError.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import json
import os
import re
import sys
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TextIO

from chatctl.errors import OutputError
from chatctl.schema import MESSAGE_FIELDS, ROOM_FIELDS

if TYPE_CHECKING:
    from rich.console import Console, RenderableType
    from rich.text import Text

__all__ = [
    "FORMATS",
    "Renderer",
    "default_format",
    "isatty",
    "json_text",
    "make_renderer",
    "progress",
    "resources",
    "tsv_cell",
    "visible",
]

FORMATS: tuple[str, ...] = ("table", "json", "jsonl", "tsv", "id")
#: Response keys and the kind of resource under each: m3o's final edition says "group"
#: where the seed says "room" (chatctl's server may send both keys: the first wins).
_KEYS = {
    "room": "room",
    "rooms": "room",
    "group": "room",
    "groups": "room",
    "message": "message",
    "messages": "message",
    "event": "event",
    "identity": "identity",
}
#: The fields of a Whoami answer's identity, in their order (tsv's columns).
IDENTITY_FIELDS: tuple[str, ...] = ("tenant", "user_id", "admin", "open")

# -- untrusted text ------------------------------------------------------------------------

#: What draws nothing: Unicode's default-ignorable code points (format characters, Cf:
#: the soft hyphen, zero-width space, joiners and marks U+200B-200F, word joiner and
#: invisible operators, bidi controls, the byte-order mark, tags; the Hangul fillers;
#: variation selectors; the combining grapheme joiner) and the rest of Cf. Shown escaped,
#: so ``al\u200dice`` never passes for ``alice``. Those past U+FFFF are searched for apart,
#: only in text that has such characters: ranges past U+FFFF make a class several times
#: slower to search.
_INVISIBLE = (
    "\xad\u034f\u0600-\u0605\u061c\u06dd\u070f\u0890\u0891\u08e2\u115f\u1160\u17b4\u17b5"
    "\u180b-\u180f\u200b-\u200f\u202a-\u202e\u2060-\u206f\u3164\ufe00-\ufe0f\ufeff\uffa0"
    "\ufff0-\ufffb"
)
_ASTRAL_INVISIBLE = (
    "[\U000110bd\U000110cd\U00013430-\U0001343f\U0001bca0-\U0001bca3\U0001d173-\U0001d17a"
    "\U000e0000-\U000e0fff]"
)
#: C1 controls, DEL, line and paragraph separators and lone surrogates.
_CONTROL = "\x7f-\x9f\u2028\u2029\ud800-\udfff"
#: Pictographs, and what an emoji sequence holds between them.
_EMOJI = (
    "[\xa9\xae\u203c\u2049\u2122\u2139\u2190-\u21ff\u2300-\u23ff\u24c2\u25aa-\u27bf"
    "\u2934\u2935\u2b00-\u2bff\u3030\u303d\u3297\u3299\ufe0f\U0001f000-\U0001faff]"
)


@functools.cache
def _compiled(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern)


def _in_emoji(text: str, at: int) -> bool:
    """Whether the invisible character at ``at`` is part of an emoji, not a disguise: a
    zero-width joiner between two pictographs (a woman, U+200D, a laptop), or a text or
    emoji presentation selector (VS15, VS16) after one (a heart, U+FE0F) or in a keycap."""
    char = text[at]
    emoji = _compiled(_EMOJI)
    if char == "\u200d":
        return at > 0 and bool(emoji.match(text, at - 1)) and bool(emoji.match(text, at + 1))
    if char in "\ufe0e\ufe0f":
        return (at > 0 and bool(emoji.match(text, at - 1))) or text.startswith("\u20e3", at + 1)
    return False


class _Unsafe:
    """The characters one output escapes: ``ascii_chars`` (a regular expression's class
    of ASCII ones), DEL, and every control and invisible character beyond ASCII, each
    written by ``write``. Text that is all ASCII (``str.isascii`` tells at once) is
    searched for the ASCII ones only."""

    def __init__(self, ascii_chars: str, write: Callable[[int], str]) -> None:
        self._ascii_chars = ascii_chars
        self._write = write

    # Compiled when first used, not on import: a command uses one or two of the classes
    # (compiling them all is 3 ms of every command's start-up).
    @functools.cached_property
    def _ascii(self) -> re.Pattern[str]:
        return re.compile(f"[{self._ascii_chars}\x7f]")

    @functools.cached_property
    def _all(self) -> re.Pattern[str]:
        return re.compile(f"[{self._ascii_chars}{_CONTROL}{_INVISIBLE}]")

    def escape(self, text: str) -> str:
        if text.isascii():
            return self._ascii.sub(self._escape, text)
        text = self._all.sub(self._escape, text)
        # Past U+FFFF only if there is any such character (UTF-16 then takes 4 bytes).
        if len(text.encode("utf-16-le", "surrogatepass")) == 2 * len(text):
            return text
        return _compiled(_ASTRAL_INVISIBLE).sub(self._escape, text)

    def _escape(self, match: re.Match[str]) -> str:
        char = match.group()
        named = _NAMED.get(char)
        if named is not None:
            return named
        if _in_emoji(match.string, match.start()):
            return char
        return self._write(ord(char))


_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t", "\\": "\\\\", ",": "\\,"}


def _as_people_read(code: int) -> str:
    if code < 0x100:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def _as_json_writes(code: int) -> str:
    if code < 0x10000:
        return f"\\u{code:04x}"
    code -= 0x10000  # JSON writes the rest of Unicode as a UTF-16 surrogate pair
    return f"\\u{0xD800 + (code >> 10):04x}\\u{0xDC00 + (code & 0x3FF):04x}"


#: Shown escaped to a person: C0 but tab (and newline, handled by the caller) and all of
#: the above.
_FOR_PEOPLE = _Unsafe("\x00-\x08\x0a-\x1f", _as_people_read)
#: Escaped in tsv and id output: backslash, every C0 (tab and newline too), and all that
#: is escaped for people (tsv is read on terminals too).
_IN_TSV = _Unsafe("\\\\\x00-\x1f", _as_people_read)
#: An item of a list (a room's members), in a table or tsv: escaped as in tsv, and its
#: commas too, so that the commas between items are the only bare ones.
_IN_ITEM = _Unsafe(",\\\\\x00-\x1f", _as_people_read)
#: What json.dumps(ensure_ascii=False) leaves raw but we escape (\uXXXX, the same data).
_IN_JSON = _Unsafe("", _as_json_writes)


def visible(value: Any, *, multiline: bool = False, column: int = 0) -> str:
    """Untrusted text as a person should see it: every control and format character
    escaped, tabs expanded to spaces (stops every 8 columns, counted from ``column``,
    where the text starts on its first line, and from 0 on the others). A list (a room's
    members) is its items joined with ", ", each item's commas and backslashes escaped.

    With ``multiline`` a newline stays a newline (the caller indents what follows it);
    otherwise it is shown as ``\\n``, like the rest.
    """
    if isinstance(value, list):
        return ", ".join(_IN_ITEM.escape(_plain(v)) for v in value)
    text = _plain(value)
    if multiline:
        lines = text.split("\n")
        return "\n".join(
            _expand_tabs(_FOR_PEOPLE.escape(line), column if i == 0 else 0)
            for i, line in enumerate(lines)
        )
    return _expand_tabs(_FOR_PEOPLE.escape(text), column)


def _expand_tabs(text: str, column: int) -> str:
    """Tabs as the spaces to the next stop (every 8 cells, the text starting at
    ``column``), counted in terminal cells: a terminal's own tab stops are not the text
    column's, and rich would measure a tab as nothing."""
    if "\t" not in text:
        return text
    from rich.cells import cell_len

    at = column
    out: list[str] = []
    for i, part in enumerate(text.split("\t")):
        if i:
            pad = 8 - at % 8
            out.append(" " * pad)
            at += pad
        out.append(part)
        at += cell_len(part)
    return "".join(out)


def tsv_cell(value: Any) -> str:
    """One field of a tsv record: backslash, tab, newline and controls escaped; a list's
    items joined with ",", each item's commas escaped too (``\\,``)."""
    if isinstance(value, list):
        return ",".join(_IN_ITEM.escape(_plain(v)) for v in value)
    return _IN_TSV.escape(_plain(value))


def json_text(value: Any, *, indent: int | None = None) -> str:
    """``value`` as JSON text that is valid UTF-8 and safe to show on a terminal."""
    if indent is None:
        text = _encode(value)
        # Most text is ASCII, where only DEL needs escaping: no search needed.
        if text.isascii() and "\x7f" not in text:
            return text
    else:
        text = json.dumps(value, ensure_ascii=False, indent=indent)
    return _IN_JSON.escape(text)


#: json.dumps(value, ensure_ascii=False) without making an encoder each time (an export
#: encodes a million messages).
_encode = json.JSONEncoder(ensure_ascii=False).encode


def _plain(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return ",".join(_plain(v) for v in value)
    return value if isinstance(value, str) else str(value)


def local_time(stamp: Any, fmt: str = "%Y-%m-%d %H:%M:%S %z") -> str:
    """An RFC 3339 time from the server in the local time zone (``TZ`` is honoured), in
    ``fmt``, where ``%f`` is the millisecond (cut, not rounded, so ``--since`` reads it
    back as the millisecond the server wrote); anything that is not such a time is shown
    as it came, escaped."""
    when = _local(stamp)
    return visible(stamp) if when is None else _strftime(when, fmt)


def _strftime(when: datetime, fmt: str) -> str:
    return when.strftime(fmt.replace("%f", f"{when.microsecond // 1000:03d}"))


def _local(stamp: Any) -> datetime | None:
    from chatctl.ids import time_ns

    ns = time_ns(stamp)
    try:
        if ns is not None:  # exact: fromisoformat would take at most 6 digits
            seconds, ms = divmod(ns // 1_000_000, 1000)
            when = datetime.fromtimestamp(seconds, UTC).astimezone()
            return when.replace(microsecond=ms * 1000)
        when = datetime.fromisoformat(_plain(stamp))
        return (when if when.tzinfo else when.replace(tzinfo=UTC)).astimezone()
    except (OverflowError, OSError, ValueError):
        return None


# -- formats -------------------------------------------------------------------------------


def default_format(stream: TextIO | None = None) -> str:
    stream = stream or sys.stdout
    return "table" if isatty(stream) else "json"


def isatty(stream: TextIO | None) -> bool:
    try:
        return stream is not None and stream.isatty()
    except (AttributeError, ValueError, OSError):
        return False


def resources(response: dict[str, Any]) -> tuple[str, list[dict[str, Any]]]:
    """The kind ("room" or "message" or "event") and the resources a response holds
    (a group of m3o's final edition is a room)."""
    for key, kind in _KEYS.items():
        if key in response:
            value = response[key]
            if isinstance(value, list):
                return kind, [v for v in value if isinstance(v, dict)]
            return kind, [value] if isinstance(value, dict) else []
    return "", []


#: A message of m3o's final edition: group_id where the seed has room_id (same column).
_GROUP_MESSAGE_FIELDS = tuple("group_id" if f == "room_id" else f for f in MESSAGE_FIELDS)


def _fields(kind: str, item: dict[str, Any]) -> tuple[str, ...]:
    if kind == "room":
        return ROOM_FIELDS
    if kind == "message":
        grouped = "group_id" in item and "room_id" not in item
        return _GROUP_MESSAGE_FIELDS if grouped else MESSAGE_FIELDS
    if kind == "identity":
        return IDENTITY_FIELDS
    return tuple(item)


class Renderer:
    """Writes responses in one format; ``close()`` writes whatever it was holding.

    ``report``: the output reports work that goes on regardless (a write batch): when its
    reader goes away, stop writing and let the work finish (``reader_gone`` says so).
    """

    def __init__(self, stream: TextIO, *, batch: bool = False, report: bool = False) -> None:
        self.out = stream
        self.batch = batch
        self.report = report
        self.reader_gone = False
        #: lines are not flushed one by one (inside ``stream``).
        self._hold = False

    def response(self, response: dict[str, Any]) -> None:
        kind, items = resources(response)
        for item in items:
            self.item(kind, item)

    def stream(self, key: str, items: Iterable[dict[str, Any]]) -> None:
        """One logical response whose list (under ``key``) arrives in pages: its lines
        are written as they come, flushed when the output's buffer fills and at the end
        (not once a line, which would be a write a message)."""
        kind = _KEYS.get(key, key.rstrip("s"))
        self._hold = True
        try:
            for item in items:
                self.item(kind, item)
        finally:
            self._hold = False
        if not self.reader_gone:
            with self.writing():
                self.out.flush()

    def item(self, kind: str, item: dict[str, Any]) -> None:
        raise NotImplementedError

    def close(self, *, failed: bool | None = None) -> None:
        """Write what is held. After a failure (``failed``; by default, when closed in a
        ``finally`` that an exception goes through), only a report of work done (a batch's
        stored messages), and never a placeholder for nothing."""
        with self.writing():
            self.out.flush()

    @staticmethod
    def _failed(failed: bool | None) -> bool:
        return sys.exc_info()[1] is not None if failed is None else failed

    def _line(self, text: str) -> None:
        if self.reader_gone:
            return
        with self.writing():
            self.out.write(text + "\n")
            if not self._hold:
                self.out.flush()

    @contextlib.contextmanager
    def writing(self) -> Iterator[None]:
        """Turn write failures into the CLI's outcomes (see the class docstring)."""
        try:
            yield
        except BrokenPipeError:
            self._reader_went_away()
            if not self.report:
                raise
        except OSError as e:
            raise OutputError(e.strerror or str(e)) from None

    def _reader_went_away(self) -> None:
        self.reader_gone = True
        # Python flushes stdout once more at exit: let that go to /dev/null, quietly.
        with contextlib.suppress(AttributeError, ValueError, OSError):
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, self.out.fileno())
            os.close(devnull)


class JSONRenderer(Renderer):
    def response(self, response: dict[str, Any]) -> None:
        self._line(json_text(response, indent=None if self.batch else 2))

    def stream(self, key: str, items: Iterable[dict[str, Any]]) -> None:
        # Written as it comes, so exporting a large room runs in constant memory; the
        # first page is fetched before anything is written, so an error leaves no stub.
        rest = iter(items)
        first = next(rest, None)
        pretty = not self.batch
        with self.writing():
            self.out.write(f'{{\n  "{key}": [' if pretty else f'{{"{key}": [')
            count = 0
            for item in itertools.chain([first] if first is not None else [], rest):
                text = json_text(item, indent=2 if pretty else None)
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
        self._line(json_text(item))

    def stream(self, key: str, items: Iterable[dict[str, Any]]) -> None:
        # An export's hot loop: lines joined into writes of ~64 KiB (one syscall each
        # however Python buffers stdout), the failure handling set up once.
        if self.report:
            super().stream(key, items)
            return
        with self.writing():
            lines: list[str] = []
            size = 0
            for item in items:
                text = json_text(item)
                lines.append(text)
                size += len(text)
                if size > 65536:
                    lines.append("")
                    self.out.write("\n".join(lines))
                    lines, size = [], 0
            if lines:
                lines.append("")
                self.out.write("\n".join(lines))
            self.out.flush()


class FilteredRenderer(Renderer):
    """``--jq``: each value ``fmt`` (json or jsonl) would print goes through ``keep`` (a
    filter, value in, values out; chatctl.cli.jq), and each value it makes is a line: a
    string as itself (on a terminal, with control and invisible characters escaped as
    for people; in a pipe, exactly), anything else as compact JSON. With json the value
    is the whole answer, so a streamed one (a History) is held whole first."""

    def __init__(
        self,
        stream: TextIO,
        fmt: str,
        keep: Callable[[Any], list[Any]],
        *,
        batch: bool = False,
        report: bool = False,
    ) -> None:
        super().__init__(stream, batch=batch, report=report)
        self.whole = fmt == "json"
        self.keep = keep
        self.terminal = isatty(stream)

    def response(self, response: dict[str, Any]) -> None:
        if self.whole:
            self.value(response)
        else:
            super().response(response)

    def stream(self, key: str, items: Iterable[dict[str, Any]]) -> None:
        if self.whole:
            self.value({key: list(items)})
        else:
            super().stream(key, items)

    def item(self, kind: str, item: dict[str, Any]) -> None:
        self.value(item)

    def value(self, value: Any) -> None:
        for result in self.keep(value):
            if not isinstance(result, str):
                self._line(json_text(result))
            elif self.terminal:
                self._line(visible(result, multiline=True))
            else:
                self._line(result)


class TSVRenderer(Renderer):
    def item(self, kind: str, item: dict[str, Any]) -> None:
        self._line("\t".join(tsv_cell(item.get(f)) for f in _fields(kind, item)))


class IDRenderer(Renderer):
    def item(self, kind: str, item: dict[str, Any]) -> None:
        if kind == "identity":
            # Its id is its user (none for an admin token, which acts as anyone).
            if item.get("user_id"):
                self._line(tsv_cell(item["user_id"]))
        elif "id" in item:
            self._line(tsv_cell(item["id"]))


class _RichRenderer(Renderer):
    """A renderer for people: rich ``Text`` only, never markup."""

    def __init__(
        self, stream: TextIO, *, batch: bool = False, report: bool = False, width: int | None
    ) -> None:
        super().__init__(stream, batch=batch, report=report)
        self._console: Console | None = None
        self._width = width

    def print(self, renderable: RenderableType) -> None:
        if self.reader_gone:
            return
        if self._console is None:
            self._console = _console(self.out, width=self._width)
        with self.writing():
            self._console.print(renderable)
            self.out.flush()


class TableRenderer(_RichRenderer):
    """Collects rows and prints one table per kind at close."""

    def __init__(self, stream: TextIO, *, batch: bool = False, report: bool = False) -> None:
        # Like kubectl: columns take their natural width and nothing is cut or folded
        # (ids are copied whole); a line longer than the terminal wraps as text does.
        super().__init__(stream, batch=batch, report=report, width=1_000_000)
        self.rows: dict[str, list[dict[str, Any]]] = {}

    def item(self, kind: str, item: dict[str, Any]) -> None:
        self.rows.setdefault(kind, []).append(item)

    def close(self, *, failed: bool | None = None) -> None:
        from rich.table import Table
        from rich.text import Text

        failed = self._failed(failed)
        if failed and not self.report:
            self.rows = {}
        for kind, rows in self.rows.items():
            table = Table(box=None, header_style="bold", pad_edge=False)
            columns: tuple[str, ...]
            if kind == "room":
                columns = ("ID", "NAME", "DESCRIPTION", "MEMBERS", "PRIVATE", "CREATED")
                cells: list[list[str]] = [
                    [
                        visible(r.get("id")),
                        visible(r.get("name")),
                        visible(r.get("description"), multiline=True),
                        visible(_strings(r.get("user_ids"))),
                        "yes" if r.get("private") is True else "no",
                        local_time(r.get("created_at")),
                    ]
                    for r in rows
                ]
            elif kind == "message":
                columns = ("TIME", "USER", "SUBJECT", "TEXT", "ID")
                cells = [
                    [
                        local_time(m.get("sent_at"), "%Y-%m-%d %H:%M:%S.%f %z"),
                        visible(m.get("user_id")),
                        visible(m.get("subject")),
                        visible(m.get("text"), multiline=True),
                        visible(m.get("id")),
                    ]
                    for m in rows
                ]
            elif kind == "identity":
                columns = ("TENANT", "USER", "ADMIN", "OPEN")
                cells = [
                    [
                        visible(r.get("tenant")) or "-",
                        visible(r.get("user_id")) or ("any" if r.get("admin") is True else "-"),
                        "yes" if r.get("admin") is True else "no",
                        "yes" if r.get("open") is True else "no",
                    ]
                    for r in rows
                ]
            else:
                keys = list(rows[0]) if rows else []
                columns = tuple(visible(k).upper() for k in keys)
                cells = [[visible(r.get(k)) for k in keys] for r in rows]
            for column in columns:
                table.add_column(Text(column))
            for row in cells:
                table.add_row(*(Text(cell) for cell in row))
            self.print(table)
        if not self.rows and not failed:
            self.print(Text("nothing to show", style="dim"))
        super().close(failed=failed)


def _strings(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


# -- live tail lines -----------------------------------------------------------------------

_USER_STYLES = ("cyan", "green", "magenta", "yellow", "blue", "bright_red", "bright_cyan")


def user_style(user_id: str) -> str:
    """A stable colour per user: the same user gets the same colour in every run."""
    import zlib

    return _USER_STYLES[zlib.crc32(user_id.encode("utf-8", "surrogatepass")) % len(_USER_STYLES)]


def room_style(room_id: str) -> str:
    """A stable colour per room (a tail of many rooms, as stern colours its pods)."""
    return user_style("room:" + room_id)


class LineRenderer(_RichRenderer):
    """A live Join stream on a terminal: one line per message or event, as they come;
    with ``show_ids``, each message's id after its time; with ``rooms`` (a tail of many
    rooms: room id → name), each line begins with its room's name in the room's colour."""

    #: room id → name, for a tail of many rooms; None for one room.
    rooms: dict[str, str] | None = None

    def __init__(
        self,
        stream: TextIO,
        *,
        batch: bool = False,
        report: bool = False,
        show_ids: bool = False,
    ) -> None:
        super().__init__(stream, batch=batch, report=report, width=None)
        self.show_ids = show_ids

    def item(self, kind: str, item: dict[str, Any]) -> None:
        if kind == "message":
            self.print(message_line(item, show_id=self.show_ids, room=self._room(item)))
        elif kind == "event":
            self.print(event_line(item, room=self._room(item)))

    def _room(self, item: dict[str, Any]) -> Text | None:
        if self.rooms is None:
            return None
        from rich.text import Text

        room_id = _plain(item.get("room_id", item.get("group_id")))
        name = self.rooms.get(room_id) or room_id
        return Text(visible(name), style=f"bold {room_style(room_id)}")


def line_time(stamp: Any) -> str:
    """A server's time on a ``join`` line: local time to the millisecond, the date first
    when it is not today: ``09:41:07.250`` or ``2026-12-06 23:59:59.999``."""
    when = _local(stamp)
    if when is None:
        return visible(stamp)
    today = when.date() == datetime.now().astimezone().date()
    return _strftime(when, "%H:%M:%S.%f" if today else "%Y-%m-%d %H:%M:%S.%f")


def message_line(
    m: dict[str, Any], *, show_id: bool = False, room: Text | None = None
) -> RenderableType:
    """Time, user (in a stable colour), subject if any, then the text in a column of its
    own: its further lines, and its wrapped ones on a narrow terminal, start under its
    first, never at column 0 where every message starts. ``room``: its room's label,
    first (a tail of many rooms)."""
    from rich.table import Table
    from rich.text import Text

    user = _plain(m.get("user_id"))
    head = Text(line_time(m.get("sent_at")) + " ", style="dim")
    if show_id:
        head.append(visible(m.get("id")) + " ", style="dim")
    head.append(visible(user), style=f"bold {user_style(user)}")
    head.append(":")
    if room is not None:
        head = Text.assemble(room, " ", head)
    body = Text()
    subject = visible(m.get("subject"))
    if subject:
        body.append(f"[{subject}] ", style="italic")
    # Tab stops count from the text column; the subject comes first on the first line.
    body.append(visible(m.get("text"), multiline=True, column=body.cell_len))
    grid = Table.grid(padding=(0, 1))
    grid.add_column(no_wrap=True)
    grid.add_column(overflow="fold")
    grid.add_row(head, body)
    return grid


def event_line(e: dict[str, Any], *, room: Text | None = None) -> Text:
    from rich.text import Text

    clock = line_time(e.get("at"))
    if e.get("type") == "message_deleted":
        # The message a line above may have shown: its id, and whose it was.
        said = f"message {visible(e.get('message_id'))} of {visible(e.get('user_id'))} deleted"
        line = Text(f"{clock} * {said}", style="dim")
    else:
        line = Text(f"{clock} * {visible(e.get('user_id'))} {visible(e.get('type'))}", style="dim")
    return line if room is None else Text.assemble(room, " ", line)


_RENDERERS: dict[str, type[Renderer]] = {
    "table": TableRenderer,
    "json": JSONRenderer,
    "jsonl": JSONLRenderer,
    "tsv": TSVRenderer,
    "id": IDRenderer,
}


def make_renderer(
    fmt: str,
    stream: TextIO | None = None,
    *,
    batch: bool = False,
    report: bool = False,
    live: bool = False,
    show_ids: bool = False,
    keep: Callable[[Any], list[Any]] | None = None,
) -> Renderer:
    """The renderer for ``fmt``; ``live`` (a Join stream) prints tables as lines, with
    each message's id after its time if ``show_ids``; ``keep`` (--jq, with json or
    jsonl) filters each value printed."""
    if keep is not None:
        return FilteredRenderer(stream or sys.stdout, fmt, keep, batch=batch or live, report=report)
    if live and fmt == "table":
        return LineRenderer(stream or sys.stdout, batch=True, report=report, show_ids=show_ids)
    return _RENDERERS[fmt](stream or sys.stdout, batch=batch or live, report=report)


def _console(stream: TextIO, width: int | None = None) -> Console:
    from rich.console import Console

    return Console(
        file=stream, highlight=False, markup=False, emoji=False, soft_wrap=False, width=width
    )


def stderr_console() -> Console:
    """The console for diagnostics and progress: stderr, never stdout."""
    return _console(sys.stderr)


@contextlib.contextmanager
def progress(total: int | None, what: str) -> Iterator[Callable[[], None]]:
    """Yield an ``advance()`` to call once per finished item of a batch.

    Shows a progress bar on stderr for batches (more than one item; ``None`` is a stream
    of unknown length) when stderr is a terminal; in a pipe or a log, nothing at all.
    """
    if (total is not None and total <= 1) or not isatty(sys.stderr):
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
