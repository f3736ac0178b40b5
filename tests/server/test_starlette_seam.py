"""What the server relies on in Starlette beyond its documented API, checked loudly: on a
Starlette that moved any of it, these fail with one line naming the supported range.

Two shortcuts, both for a Send's CPU, both in the one seam module chatctl/server/answers.py:
``answers.App`` sends HTTP requests past Starlette's middleware stack, and the answers
(``answers.Answer``: JSON, streamed History, and bulk.py's bulk Send) make their own
headers instead of running ``Response.__init__``, and send themselves (their own
``__call__``).
"""

from __future__ import annotations

import ast
import inspect
import textwrap
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.responses import Response, StreamingResponse

from chatctl.server.answers import STARLETTE_SUPPORTED, JSONAnswer, StreamedAnswer
from chatctl.server.bulk import BulkSend
from chatctl.server.config import ServerConfig
from tests.seams import check_pin, seam

MODULE = "chatctl/server/answers.py"


def _starlette_seam():  # type: ignore[no-untyped-def]
    return seam(MODULE, "starlette", STARLETTE_SUPPORTED)


def test_the_installed_starlette_is_one_the_seam_supports() -> None:
    check_pin(MODULE, "starlette", STARLETTE_SUPPORTED)


def test_starlette_does_no_more_for_http_than_what_the_app_skips() -> None:
    # App.__call__ sets scope["app"] and calls the edge; Starlette's would also build
    # and run its middleware stack, and nothing else.
    source = textwrap.dedent(inspect.getsource(Starlette.__call__))
    (function,) = ast.parse(source).body
    assert isinstance(function, ast.AsyncFunctionDef)
    body = [ast.unparse(statement) for statement in function.body]
    with _starlette_seam():
        assert body[0] == "scope['app'] = self", f"Starlette.__call__ begins {body[0]!r}"
        assert len(body) == 3, f"Starlette.__call__ does more: {body}"
        assert "self.middleware_stack = self.build_middleware_stack()" in body[1], body[1]
        assert body[2] == "await self.middleware_stack(scope, receive, send)", body[2]


async def _nothing() -> AsyncIterator[str]:
    return
    yield  # pragma: no cover


def test_the_answers_have_what_response_init_would_set_and_send_themselves() -> None:
    answers: list[Response] = [
        JSONAnswer(b"{}"),
        StreamedAnswer(_nothing(), "History"),
        BulkSend(None, ServerConfig(db=":memory:"), "", None, 1, False),  # type: ignore[arg-type]
    ]
    whole = set(vars(Response(b"{}", media_type="application/json")))
    streamed = set(vars(StreamingResponse(_nothing(), media_type="application/json")))
    with _starlette_seam():
        for answer, made in zip(answers, [whole, streamed, streamed], strict=True):
            kind = type(answer).__name__
            # What Starlette's own answers set in __init__ (the body iterator is the
            # streaming answer's own business: these send themselves).
            missing = {n for n in made - {"body_iterator"} if not hasattr(answer, n)}
            assert not missing, f"Response.__init__ now sets {sorted(missing)} ({kind} lacks)"
            assert type(answer).__call__ is not Response.__call__, f"{kind} sends itself"
            assert answer.headers["content-type"].startswith("application/"), kind
        assert JSONAnswer(b"{}").headers["content-length"] == "2"
