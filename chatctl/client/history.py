"""A long History, streamed: each message decoded as it arrives (``HistoryReads``).

chatctl's server sends a History without ``limit`` in parts; the client reads it in
constant memory (``_streamed_items``), and a connection lost part-way is picked up after
the last message read (``after``: the paging extension), with the retries of a call
(``retry.Retry``).
"""

from __future__ import annotations

import codecs
import json
import re
import time
from collections.abc import Callable, Generator, Iterable
from typing import Any

import httpx

from chatctl.client.transport import (
    CONNECT_TIMEOUT,
    MAX_ITEM,
    RETRY_STATUSES,
    _answer_of,
    _Retryable,
)
from chatctl.client.unary import Calls
from chatctl.errors import APIError, BadAnswerError, ConnectError, NoAnswerError, NotAnAPIError
from chatctl.schema import ENDPOINTS, EXTENSIONS_HEADER, in_edition
from chatctl.wire import TooDeep, decode_at

__all__ = ["HistoryReads"]


class HistoryReads(Calls):
    """History, read as a stream."""

    def history(
        self, body: dict[str, Any], on_gap: Callable[[dict[str, Any]], None] | None = None
    ) -> Generator[dict[str, Any], None, None]:
        """Every message one History call without ``limit`` answers, each decoded as it
        arrives (chatctl's server sends a long one in parts), in constant memory. The
        budget bounds the wait for each message (from the request, then from when the
        caller asks for the next one), not the whole of it; a connection lost part-way
        is picked up after the last message read (``after``: the paging extension, which
        the caller made sure the server has). ``on_gap`` hears of a cursor older than what
        the room keeps (the answer's ``gap``: contract part 3, "Retention")."""
        path = "/v1/chat/History"
        request = in_edition(self.bound(ENDPOINTS["History"], body), self.server.edition)
        last: str | None = None
        retry = self.retry()
        while True:
            ask = request if last is None else {**request, "after": last}
            started = time.perf_counter()
            status: int | str = "unreachable"
            read = 0
            asked: float | None = None  # the server's Retry-After
            try:
                timeout = httpx.Timeout(self.timeout, connect=min(CONNECT_TIMEOUT, self.timeout))
                self._deadline.at = time.monotonic() + self.timeout
                with self._client().stream(
                    "POST", path, content=json.dumps(ask).encode(), timeout=timeout
                ) as r:
                    status = r.status_code
                    if status != 200:
                        self._refused_read(r)
                    else:
                        self._reached = True
                        self.server.learn(r.headers.get(EXTENSIONS_HEADER))
                        rest: dict[str, Any] = {}
                        pieces = self._pieces(r)
                        for item in _streamed_items(pieces, "messages", self.where, rest):
                            message_id = item.get("id")
                            last = message_id if isinstance(message_id, str) else None
                            read += 1
                            yield item
                            # The wait for the next one starts now, not while the caller
                            # wrote this one out (to a pipe that may be slow).
                            retry.progress()
                            self._deadline.at = retry.deadline
                        gap = rest.get("gap")
                        if on_gap is not None and isinstance(gap, dict):
                            on_gap(gap)
                        return
            except _Retryable as e:
                error = e.error
                asked = e.asked
                if isinstance(error, APIError):
                    retry.heard(error)
            except (httpx.TransportError, OSError) as e:
                try:
                    error = self._failure(e).error
                except NoAnswerError as silence:
                    raise retry.last(silence) from None  # an answer says more than silence
            finally:
                self.log("POST", path, status, started, f" ({read} messages)")
            if read and last is None:
                raise error  # cut short after a message without an id: no place to resume
            retry.pause(error, asked=asked, quick=not self._reached)

    def _refused_read(self, r: httpx.Response) -> None:
        """A read answered with an error: raise it, or _Retryable for 429 and 502-504
        (with the Retry-After the server named, if it did)."""
        answer = _answer_of(r, self._read(r))
        error = self.api_error(r.status_code, answer)
        if r.status_code != 429 and r.status_code not in RETRY_STATUSES:
            raise error
        asked = error.retry_after if isinstance(error, APIError) else None
        raise _Retryable("retry", error, asked=asked)


_SPACE = re.compile(r"[ \t\r\n]+")

#: The start of a History answer, up to its first message: ``{"messages": [``.
_ITEMS_HEAD = re.compile(r'\s*\{\s*"messages"\s*:\s*\[')


def _streamed_items(
    chunks: Iterable[bytes], key: str, where: str, rest: dict[str, Any] | None = None
) -> Generator[dict[str, Any], None, None]:
    """The objects of the list under ``key`` in a JSON answer ``{"key": [...]}`` that
    arrives in ``chunks``, each as soon as it is whole (json's own decoder finds its
    end). Items that are not objects are skipped, as ``call``'s callers skip them; an
    answer that is not such an object is NotAnAPIError, one cut short a _Retryable.
    Keys after the list (chatctl's ``gap``: contract part 3, "Retention") go into
    ``rest``."""
    assert key == "messages"
    text = codecs.getincrementaldecoder("utf-8")().decode
    buf, pos = "", 0
    state = "head"  # head, item (or ]), next (, or ]), end (}), done
    since = 0  # characters read since the last item (or the start)
    for chunk in chunks:
        try:
            more = text(chunk)
        except UnicodeDecodeError:
            raise NotAnAPIError(where, 200, "text that is not UTF-8") from None
        since += len(more)
        if since > MAX_ITEM:
            raise BadAnswerError(
                where, f"more than {MAX_ITEM >> 20} MiB of a History without a message", 200
            )
        buf = buf[pos:] + more
        pos = 0
        size = len(buf)
        while pos < size:
            char = buf[pos]
            if state == "tail":
                break  # the keys after the list: read whole at the end
            if char in " \t\r\n":
                pos = _SPACE.match(buf, pos).end()  # type: ignore[union-attr]
            elif state == "head":
                match = _ITEMS_HEAD.match(buf, pos)
                if match is None:
                    if size - pos < 64:
                        break  # the rest of the head may come in the next chunk
                    raise NotAnAPIError(where, 200, "an answer that is not a History")
                pos, state = match.end(), "item"
            elif char == "]" and state in ("item", "next"):
                pos, state = pos + 1, "end"
            elif state == "next":
                if char != ",":
                    raise NotAnAPIError(where, 200, "a History that is not a JSON list")
                pos, state = pos + 1, "comma"
            elif state in ("item", "comma"):
                try:
                    item, pos = decode_at(buf, pos)
                except TooDeep as e:
                    raise BadAnswerError(where, f"a History item of {e}", 200) from None
                except json.JSONDecodeError:
                    break  # not all of it is here yet (``since`` bounds how much)
                state = "next"
                since = size - pos
                if isinstance(item, dict):
                    yield item
            elif state == "end" and char == "}":
                pos, state = pos + 1, "done"
            elif state == "end" and char == ",":
                state = "tail"
            else:
                if state == "done":
                    pos = size
                    break
                raise NotAnAPIError(where, 200, "a History that is not a JSON object")
    if state == "tail":
        try:
            tail = json.loads("{" + buf[pos + 1 :])
        except (json.JSONDecodeError, RecursionError):
            tail = None
        if isinstance(tail, dict):
            state = "done"
            if rest is not None:
                rest.update(tail)
    if state == "head":
        raise NotAnAPIError(where, 200, "an answer that is not a History")
    if state != "done":
        raise _Retryable("cut", ConnectError(f"the answer from {where} was cut short", where=where))
