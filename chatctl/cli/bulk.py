"""Write batches of Sends in bulk, where the server has bulk sends (``bulk-send``).

``send --lines`` and ``send -i FILE`` hand their calls to ``call_all`` (``run``) with a
``BulkSender``: what the input has ready (up to ``BULK_LINES`` lines and ``BULK_BYTES``
bytes) goes in one bulk Send (contract part 3), and each answer is printed as it
arrives. A lone line (input that comes slowly, ``tail -f``) is one plain Send, as is
everything on a server that does not name ``bulk-send`` in its ``Chat-Extensions``
header (any other m3o server gets exactly the requests m3o's clients send). Before the
server has answered anything, the first line goes alone, and its answer says which.

Keys: the batch has one key K (``--batch-key``, else a random one), and its nth message
(counting the messages sent, in input order) is sent with the Idempotency-Key ``K/n``,
in a bulk Send or alone alike. So a bulk Send cut short (the connection lost, the
server restarted, a 503) is sent again from its first unanswered line with the same
keys, within the call's budget of time (which restarts with every answer), and a rerun of
the same input with the same ``--batch-key`` stores only what the first run did not.

Requests stay small (``BULK_BYTES``) because the transport writes a request whole before
it reads the answer, while the server answers as it reads: a small request always fits
in the sockets' buffers, so neither side waits for the other.
"""

from __future__ import annotations

import contextlib
import json
import threading
import uuid
from collections.abc import Generator, Iterator
from typing import TYPE_CHECKING

from chatctl.cli.run import Call, OneByOne, Outcome
from chatctl.client import BulkCut, NoBulk
from chatctl.errors import APIError, ChatctlError, NoAnswerError, UsageError, unsettled
from chatctl.schema import BULK_SEND, ENDPOINTS, in_edition

if TYPE_CHECKING:
    from chatctl.cli.context import Invocation

__all__ = ["BULK_BYTES", "BULK_LINES", "MAX_BATCH_KEY", "BulkSender", "check_batch_key"]

#: messages in one bulk Send at most, and the bytes of its body (at least one message).
BULK_LINES = 1000
BULK_BYTES = 128 * 1024
#: the longest batch key the server takes (its ``bulk.MAX_BATCH_KEY``).
MAX_BATCH_KEY = 200
#: lines read ahead of the sending from streamed input.
_READ_AHEAD = 2 * BULK_LINES
_END = object()


def check_batch_key(key: str | None) -> None:
    if key is not None and not (0 < len(key) <= MAX_BATCH_KEY and key.isprintable()):
        raise UsageError(
            f"--batch-key must be 1 to {MAX_BATCH_KEY} printable characters",
            hint="e.g. the input's name and date: --batch-key import-2026-11-30",
        )


class BulkSender:
    """``run.Sender`` of Sends: bulk Sends where the server has them, else one by one;
    the nth message keyed ``K/n`` either way."""

    def __init__(
        self, inv: Invocation, *, keep_going: bool, batch_key: str | None, streamed: bool
    ) -> None:
        self.inv = inv
        self.stop = not keep_going
        self.key = batch_key or uuid.uuid4().hex
        self.outstanding: list[Call] = []
        self._sent = 0  # messages numbered so far
        self._one = OneByOne(inv, "Send")
        self._no_bulk = False
        self._ahead: _ReadAhead | None = None
        self._streamed = streamed
        self._held: Call | None = None

    # -- taking input -------------------------------------------------------------------

    def take(self, pending: Iterator[Call]) -> list[Call]:
        """The calls to send next: what the input has ready, at least one (waiting for it),
        up to the bulk limits; an input error alone (it is reported in its turn)."""
        if self._streamed and self._ahead is None:
            self._ahead = _ReadAhead(pending)
        first = self._next(pending, wait=True)
        if first is None or first.error is not None:
            return [] if first is None else [first]
        calls = [first]
        size = _size(first)
        while len(calls) < BULK_LINES:
            call = self._next(pending, wait=False)
            if call is None:
                break
            size += _size(call)
            if call.error is not None or size > BULK_BYTES:
                self._held = call
                break
            calls.append(call)
        return calls

    def _next(self, pending: Iterator[Call], *, wait: bool) -> Call | None:
        if self._held is not None:
            call, self._held = self._held, None
            return call
        if self._ahead is not None:
            return self._ahead.next(wait=wait)
        return next(pending, None)

    def close(self) -> None:
        if self._ahead is not None:
            self._ahead.close()

    # -- sending ------------------------------------------------------------------------

    def send(self, calls: list[Call]) -> Generator[tuple[Call, Outcome], None, None]:
        i = 0
        while i < len(calls):
            if len(calls) - i > 1 and self._bulk_here():
                yield from self._bulk(calls[i:])
                break
            call = calls[i]
            self.outstanding = [call]
            n = None if call.error is not None else self._number(1)
            outcome = self._one.one(call, None if n is None else f"{self.key}/{n}")
            self.outstanding = []
            yield call, self._rerun(outcome)
            i += 1
        self.outstanding = []

    def _bulk_here(self) -> bool:
        return not self._no_bulk and self.inv.client.server.has(BULK_SEND)

    def _number(self, count: int) -> int:
        """Number the next ``count`` messages; the first one's number."""
        first = self._sent + 1
        self._sent += count
        return first

    def _bulk(self, calls: list[Call]) -> Generator[tuple[Call, Outcome], None, None]:
        """``calls`` in bulk Sends, the unanswered rest sent again until each is answered
        or the budget (restarted by every answer) is spent."""
        client = self.inv.client
        first = self._number(len(calls))
        edition = client.server.edition
        send = ENDPOINTS["Send"]
        lines = [
            json.dumps(in_edition(client.bound(send, call.body), edition)).encode()
            for call in calls
        ]
        done = 0  # calls answered
        retry = client.retry()
        while done < len(calls):
            self.outstanding = calls[done:]
            error: ChatctlError | None = None
            wait: float | None = None
            spent = False  # the budget ended waiting for an answer
            try:
                with contextlib.closing(
                    client.send_bulk(
                        lines[done:], key=self.key, first=first + done, stop=self.stop,
                        deadline=retry.deadline,
                    )
                ) as answers:  # fmt: skip
                    for answer in answers:
                        if isinstance(answer, APIError) and answer.code == 503:
                            # Nothing stored from here: this line goes again.
                            error, wait = retry.heard(answer), answer.retry_after
                            break
                        call = calls[done]
                        done += 1
                        retry.progress()
                        self.outstanding = calls[done:]
                        yield call, answer
                        if isinstance(answer, APIError) and self.stop:
                            return  # the server stopped there too: nothing after it was sent
            except BulkCut as cut:
                error, wait = cut.error, cut.wait
                if isinstance(error, APIError):
                    retry.heard(error)
            except NoAnswerError as silence:
                # The budget ended waiting: the last answer to this line (a 503), if one
                # came, is its outcome, as a call's is; silence ends the batch.
                error = retry.last(silence)
                if error is silence:
                    silence.maybe_stored = silence.asked
                    self._rerun(silence)
                    raise
                spent = True
            except NoBulk:
                # A server (or a replica of it) without bulk sends after all: nothing of
                # this request was done; the rest goes one by one, with the same keys.
                self._no_bulk = True
                for n, call in enumerate(calls[done:], first + done):
                    self.outstanding = [call]
                    outcome = self._one.one(call, f"{self.key}/{n}")
                    self.outstanding = []
                    yield call, self._rerun(outcome)
                return
            if done == len(calls):
                return
            if error is None:  # the answer ended early for no reason it gave
                error = client.connect_error("the answer ended before every line was answered")
            pause = None if spent else retry.delay(asked=wait)
            if pause is None:
                # The budget is spent: this line's outcome is unknown (or the last answer
                # says what it was). With --keep-going (and an answer from the server)
                # the batch goes on from the next line.
                call = calls[done]
                done += 1
                retry.progress()
                error.maybe_stored = unsettled(error)  # it was sent, and not answered
                yield call, self._rerun(error)
                continue
            retry.sleep(pause)


    def _rerun(self, outcome: Outcome) -> Outcome:
        """An error that may have stored its message names the rerun that stores it at most
        once: this batch's key (a rerun of the same input keys its lines alike)."""
        if isinstance(outcome, ChatctlError) and outcome.maybe_stored:
            outcome.rerun = f"--batch-key {self.key}"
        return outcome


def _size(call: Call) -> int:
    """About what a call adds to a bulk body (its text and a message's other fields)."""
    text = call.body.get("text")
    return 160 + (len(text.encode("utf-8", "surrogatepass")) if isinstance(text, str) else 0)


class _ReadAhead:
    """Streamed input read by a thread of its own, a bounded way ahead, so that a bulk
    Send can take what is ready without waiting for what is not."""

    def __init__(self, pending: Iterator[Call]) -> None:
        import queue  # here and below: only streamed input (send --lines) needs it

        self._queue: queue.Queue[object] = queue.Queue(maxsize=_READ_AHEAD)
        self._closed = threading.Event()
        self._thread = threading.Thread(
            target=self._read, args=(pending,), name="chatctl-input", daemon=True
        )
        self._thread.start()

    def _read(self, pending: Iterator[Call]) -> None:
        try:
            for call in pending:
                if not self._put(call):
                    return
        except BaseException as e:  # handed to the main thread, raised there
            self._put(e)
            return
        self._put(_END)

    def _put(self, item: object) -> bool:
        import queue

        while not self._closed.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def next(self, *, wait: bool) -> Call | None:
        import queue

        try:
            item = self._queue.get(block=wait)
        except queue.Empty:
            return None
        if item is _END:
            self._queue.put(_END)  # the end stays the end
            return None
        if isinstance(item, BaseException):
            raise item
        assert isinstance(item, Call)
        return item

    def close(self) -> None:
        self._closed.set()
