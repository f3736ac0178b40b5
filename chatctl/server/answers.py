"""Where the server leans on Starlette beyond its documented API: the one seam.

Two shortcuts, both for a Send's CPU, and the Starlette versions they are written for
(``STARLETTE_SUPPORTED``: pyproject.toml pins the same range, and
tests/server/test_starlette_seam.py fails with one line naming it on any other):

- ``App`` sends HTTP requests straight to the edge, past Starlette's middleware stack
  (Starlette's own ``__call__`` does no more for HTTP than set ``scope["app"]`` and run
  that stack: the seam test checks it).
- The answers (``Answer``: ``JSONAnswer``, ``StreamedAnswer``, and ``bulk.BulkSend``) make
  their own headers instead of running ``Response.__init__`` (its generic header building
  is a measurable part of a Send), and send themselves (their own ``__call__``). The seam
  test checks they have what ``Response.__init__`` would set.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from chatctl.server.decode import Refusal, one_line
from chatctl.server.domain import Unavailable
from chatctl.wire import encode

__all__ = ["STARLETTE_SUPPORTED", "Answer", "App", "JSONAnswer", "StreamedAnswer"]

log = logging.getLogger("chatctl.server")

#: the Starlette versions this module is written for.
STARLETTE_SUPPORTED = ">=0.40,<2"


class App(Starlette):
    """Starlette for WebSockets and the lifespan; HTTP requests go straight to ``http``
    (the edge under the access log, which also turns a bug into the 500). Starlette's
    middleware stack, router and exception wrappers were a sixth of a Send's CPU, for one
    route that takes every path and an edge that answers every error itself."""

    http: ASGIApp

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            scope["app"] = self
            await self.http(scope, receive, send)
        else:
            await super().__call__(scope, receive, send)


class Answer(Response):
    """A ``Response`` that sets what ``Response.__init__`` would, directly (its status, no
    background task, its headers), and sends itself: subclasses define ``__call__``."""

    def __init__(self, content_type: bytes, status_code: int = 200) -> None:
        self.status_code = status_code
        self.background = None
        self.raw_headers = [(b"content-type", content_type)]


class JSONAnswer(Answer):
    """A JSON answer, one body with its length."""

    def __init__(self, body: bytes, status_code: int = 200) -> None:
        super().__init__(b"application/json", status_code)
        self.body = body
        self.raw_headers.append((b"content-length", str(len(body)).encode()))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send(
            {"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers}
        )
        await send({"type": "http.response.body", "body": self.body})

    @classmethod
    def error(cls, refusal: Refusal) -> JSONAnswer:
        answer = cls(encode(refusal.body()).encode(), refusal.code)
        if refusal.headers:
            answer.raw_headers += [
                (name.lower().encode("latin-1"), value.encode("latin-1"))
                for name, value in refusal.headers.items()
            ]
        return answer


class StreamedAnswer(Answer):
    """A JSON answer sent in parts as they are read (a long History): no Content-Length,
    and the next part is read only once the last one is on its way (uvicorn's ``send``
    waits while the socket's buffer is full), so memory stays that of one part. Between
    parts the event loop serves everyone else, however fast the reader is."""

    def __init__(self, parts: AsyncIterator[str], endpoint_id: str) -> None:
        super().__init__(b"application/json")
        self.parts = parts
        self.endpoint_id = endpoint_id

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
        try:
            async for part in self.parts:
                await send({"type": "http.response.body", "body": part.encode(), "more_body": True})
                await asyncio.sleep(0)
        except Unavailable as exc:
            # Too late for an error object: the answer is cut short, which every JSON
            # reader notices, and uvicorn closes the connection.
            cause = one_line(exc)
            log.warning("%s: storage unavailable mid-answer: %s", self.endpoint_id, cause)
            return
        except OSError:
            return  # the client went away
        await send({"type": "http.response.body", "body": b""})
