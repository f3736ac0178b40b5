"""Bulk Sends, chatctl's extension (contract part 3): many SendRequests in one request,
their answers line by line as they arrive (``BulkSends.send_bulk``). The batching, the
keys and the retries of the unanswered rest are the CLI's (``chatctl.cli.bulk``)."""

from __future__ import annotations

import time
from collections.abc import Generator, Sequence
from typing import Any

import httpx

from chatctl.client.transport import (
    CONNECT_TIMEOUT,
    MAX_ITEM,
    RETRY_STATUSES,
    _answer_of,
    _error_of,
)
from chatctl.client.unary import Calls
from chatctl.errors import APIError, BadAnswerError, ChatctlError, NoAnswerError, NotAnAPIError
from chatctl.schema import EXTENSIONS_HEADER
from chatctl.wire import TooDeep, decode

__all__ = ["NDJSON", "BulkCut", "BulkSends", "NoBulk"]

#: the media type of a bulk Send and of its answer.
NDJSON = "application/x-ndjson"


class BulkSends(Calls):
    """Bulk Sends."""

    def send_bulk(
        self, lines: Sequence[bytes], *, key: str, first: int, stop: bool, deadline: float
    ) -> Generator[dict[str, Any] | APIError, None, None]:
        """One bulk Send (contract part 3) of ``lines``, encoded SendRequests numbered from
        ``first`` under the batch ``key``: each line's answer in order, as it arrives, its
        SendResponse or the APIError of its refusal. It may end early: after the first
        refusal with ``stop``, or after an answer of 503 (the server stored nothing
        after it). Raises BulkCut when the rest may be answered by sending it again
        (connection lost, 429, 502-504), NoBulk when the server refused the request as a
        whole as one without bulk sends would (415, or its body as one bad JSON body),
        and the other transport errors as ``call`` does; ``deadline`` bounds the wait for
        each part of the answer."""
        path = "/v1/chat/Send"
        headers = {
            "Content-Type": NDJSON,
            "Idempotency-Key": key,
            "Chat-First-Line": str(first),
            "Chat-On-Error": "stop" if stop else "continue",
        }
        left = deadline - time.monotonic()
        if left <= 0:
            raise NoAnswerError(self.where, self.timeout, local=self.local)
        timeout = httpx.Timeout(left, connect=min(CONNECT_TIMEOUT, left))
        started = time.perf_counter()
        answered = 0
        status: int | str = "unreachable"
        self._deadline.at = deadline
        try:
            with self._client().stream(
                "POST", path, content=b"\n".join(lines) + b"\n", headers=headers, timeout=timeout
            ) as r:
                status = r.status_code
                if status != 200 or not r.headers.get("content-type", "").startswith(NDJSON):
                    self._refused_bulk(r)
                self._reached = True
                self.server.learn(r.headers.get(EXTENSIONS_HEADER))
                partial = b""
                for chunk in self._pieces(r):
                    *whole, partial = (partial + chunk).split(b"\n")
                    if len(partial) > MAX_ITEM:
                        raise BadAnswerError(
                            self.where, f"an answer line larger than {MAX_ITEM >> 20} MiB", status
                        )
                    for line in whole:
                        answered += 1
                        yield self._bulk_answer(line, status)
                        self._deadline.at = time.monotonic() + self.timeout
                if partial:
                    raise BulkCut(self.connect_error("the answer was cut short"))
        except (httpx.TransportError, OSError) as e:
            failure = self._failure(e)
            raise BulkCut(failure.error, sent=failure.delivered) from None
        finally:
            self.log("POST", path, status, started, f" ({answered} of {len(lines)} lines)")

    def _refused_bulk(self, r: httpx.Response) -> None:
        """A bulk Send answered as a whole (not line by line): raise what it means."""
        answer = _answer_of(r, self._read(r))
        status = r.status_code
        if status == 200:  # not an NDJSON answer: whatever answered knows no bulk Send
            raise NotAnAPIError(self.where, status, answer.content_type)
        error = self.api_error(status, answer)
        if answer.m3o_error():
            self.server.learn(answer.extensions)
        if isinstance(error, APIError):
            # A server without bulk sends: it takes no NDJSON, or reads the lines as one
            # JSON body (which is not JSON), refusing before anything is done.
            if status == 415 or (status == 400 and "not valid JSON" in error.detail):
                raise NoBulk(error)
            if status == 429 or status in RETRY_STATUSES:
                raise BulkCut(error, sent=False, wait=error.retry_after)
        raise error

    def _bulk_answer(self, line: bytes, status: int) -> dict[str, Any] | APIError:
        try:
            data = decode(line)
        except TooDeep as e:
            raise BadAnswerError(self.where, f"an answer line of {e}", status) from None
        except ValueError:
            data = None
        if isinstance(data, dict) and isinstance(data.get("message"), dict):
            return data
        if isinstance(data, dict) and "detail" in data:
            return _error_of(data, status)
        raise NotAnAPIError(self.where, status, NDJSON)


class BulkCut(Exception):
    """A bulk Send ended before every line was answered, in a way that sending the
    unanswered rest again (with the same key) may cure: ``error`` says what happened,
    ``sent`` is False when the request provably never reached the server, ``wait`` is
    the server's Retry-After."""

    def __init__(self, error: ChatctlError, *, sent: bool = True, wait: float | None = None):
        super().__init__(error.message)
        self.error = error
        self.sent = sent
        self.wait = wait


class NoBulk(Exception):
    """The server refused a bulk Send as a whole, as one without them does; nothing of it
    was done."""

    def __init__(self, error: APIError) -> None:
        super().__init__(error.message)
        self.error = error
