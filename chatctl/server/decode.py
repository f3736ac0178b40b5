"""The way in and the way a "no" goes out, shared by unary calls (``edge``), Join
(``streams``) and bulk Sends (``bulk``).

- In: ``decode`` is the one pipeline every request body takes: parsed as JSON
  (``parse_json``), its edition read (``editions.request_edition``), bound to a user
  token's user (``bind_actor``), validated (``validate``).
- Out: every refusal is a ``domain.Refused`` (``Invalid``, ``Forbidden``, ``NotFound``,
  ``Conflict`` from the rules and ``access``; ``Refusal`` for the edge's own: the token,
  the path, the body, the rate). This module is the one place one becomes an HTTP status
  (``STATUS``), m3o's error object (``Refusal.body``, worded in the request's edition), a
  WebSocket close code (``Refusal.close_code``), or the final frame that ends streams
  (``streams_ended``, which the rules publish for Kick, Leave and Delete).

It knows the wire and the schema, not the routes: those are ``edge``'s and ``streams``',
which import this module, never the other way round.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from chatctl.schema import ENDPOINTS, Endpoint, ValidationError, validate_request
from chatctl.server import access
from chatctl.server.config import ServerConfig
from chatctl.server.domain import (
    Conflict,
    Forbidden,
    Invalid,
    NotFound,
    Refused,
    StreamsEnded,
    Unavailable,
)
from chatctl.server.editions import GROUP, ROOM, Edition, request_edition, worded_in
from chatctl.server.tokens import Principal
from chatctl.wire import close_code_for, error_frame, error_object

__all__ = [
    "NDJSON_TYPES",
    "STATUS",
    "Refusal",
    "bind_actor",
    "decode",
    "is_ndjson",
    "no_such_api",
    "one_line",
    "parse_json",
    "streams_ended",
    "too_large",
    "validate",
]

log = logging.getLogger("chatctl.server")

#: the HTTP status of each kind of refusal the rules raise.
STATUS: dict[type[Refused], int] = {Invalid: 400, Forbidden: 403, NotFound: 404, Conflict: 409}
#: what a client reads when the storage fails; the cause is logged, not sent.
UNAVAILABLE_DETAIL = "storage unavailable: try again (with the same Idempotency-Key, if any)"
#: the same for a Join stream (its error frame and close 4503's reason): a stream has no
#: Idempotency-Key; it is resumed, after the last message it delivered.
STREAM_UNAVAILABLE_DETAIL = "storage unavailable: join again, resuming with since"
#: request media types of a bulk Send (the first is the one answered with).
NDJSON_TYPES = ("application/x-ndjson", "application/ndjson", "application/jsonl")


class Refusal(Refused):
    """A refusal as answered: m3o's error ``id`` (``v1`` for the gateway's own, else the
    endpoint's), its status ``code``, and the edition it is worded in. The edge's own
    refusals are made as one; the rules' become one by ``Refusal.of``."""

    def __init__(
        self,
        id: str,
        code: int,
        detail: str,
        headers: dict[str, str] | None = None,
        edition: Edition = ROOM,
    ) -> None:
        super().__init__(detail)
        self.id = id
        self.code = code
        #: extra headers of the answer (429's Retry-After).
        self.headers = headers
        self.edition: Edition = ROOM
        self.in_edition(edition)

    def in_edition(self, edition: Edition) -> Refusal:
        """The refusal in the words of ``edition`` (``missing group id``, ``group not
        found``: ``editions.worded_in``), once."""
        if self.edition != GROUP:
            self.detail = worded_in(edition, self.detail)
        self.edition = edition
        return self

    def body(self) -> dict[str, Any]:
        return error_object(self.id, self.code, self.detail)

    @property
    def close_code(self) -> int:
        """The close code a Join WebSocket refused with it ends with: 4000 + status."""
        return close_code_for(self.code)

    @classmethod
    def of(
        cls,
        endpoint_id: str,
        exc: Refused | Unavailable,
        edition: Edition = ROOM,
        *,
        stream: bool = False,
    ) -> Refusal:
        """The answer to a refusal of the rules, or to the storage failing (worded for a
        ``stream``'s end, which is resumed, or for a call, which is retried)."""
        if isinstance(exc, Refusal):
            return exc.in_edition(edition)
        if isinstance(exc, Unavailable):
            log.warning("%s: storage unavailable: %s", endpoint_id, one_line(exc))
            detail = STREAM_UNAVAILABLE_DETAIL if stream else UNAVAILABLE_DETAIL
            return cls(endpoint_id, 503, detail, edition=edition)
        code = exc.code if isinstance(exc, ValidationError) else STATUS[type(exc)]
        return cls(endpoint_id, code, exc.detail, edition=edition)


def streams_ended(
    tenant: str, room_id: str, user_id: str | None, endpoint: str, why: Refused
) -> StreamsEnded:
    """What ends a room's streams (``user_id``'s, or every one): the refusal a Join would
    now get, as its final error frame (``endpoint``'s id) and close code (4000 + status)."""
    refusal = Refusal.of(ENDPOINTS[endpoint].id, why)
    frame = error_frame(refusal.id, refusal.code, refusal.detail)
    return StreamsEnded(tenant, room_id, user_id, refusal.close_code, frame, refusal.detail)


def one_line(exc: BaseException) -> str:
    """A storage failure's cause for the log, on one line (PostgreSQL's add a CONTEXT line)."""
    return " ".join(str(exc).split())


def no_such_api() -> Refusal:
    return Refusal("v1", 404, "No such API")


def too_large(limit: int, what: str = "request body") -> Refusal:
    """413 for a body (or a bulk Send's line) over ``max_body_bytes``."""
    return Refusal("v1", 413, f"{what} is larger than {limit} bytes (max_body_bytes)")


def parse_json(raw: bytes | str, limit: int) -> Any:
    """A request body as JSON; empty means {} (m3o)."""
    if len(raw) > limit:
        raise too_large(limit)
    if isinstance(raw, bytes):
        try:
            raw = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise Refusal("v1", 400, "request body is not valid UTF-8") from None
    if not raw.strip():
        return {}
    try:
        return json.loads(raw)
    except RecursionError:
        raise Refusal("v1", 400, "request body is nested too deeply") from None
    except ValueError as exc:
        raise Refusal("v1", 400, f"request body is not valid JSON: {exc}") from None


def validate(
    endpoint: Endpoint, body: Any, config: ServerConfig, raw: bytes | str
) -> dict[str, Any]:
    try:
        request = validate_request(endpoint, body, config.limits)
    except ValidationError as exc:
        raise Refusal.of(endpoint.id, exc) from None
    # JSON may carry lone surrogates ("\ud800"), which no UTF-8 store or client can take.
    # Only a \u escape can make one (UTF-8 bytes cannot), so most bodies skip the check.
    escaped = b"\\u" in raw if isinstance(raw, bytes) else "\\u" in raw
    if not escaped:
        return request
    for name, value in request.items():
        items = value if isinstance(value, list) else [value]
        for item in items:
            if isinstance(item, str):
                try:
                    item.encode("utf-8")
                except UnicodeEncodeError:
                    raise Refusal(endpoint.id, 400, f"{name} is not valid Unicode") from None
    return request


def decode(
    endpoint: Endpoint,
    raw: bytes | str,
    principal: Principal,
    config: ServerConfig,
    default: Edition,
) -> tuple[dict[str, Any], Edition]:
    """A request body as the rules take it, and the edition it is answered in (``default``
    when it names neither room nor group): parse, edition, bind, validate. The one way in
    for unary calls, Join (HTTP and WebSocket) and each line of a bulk Send; a refusal
    after the edition is known is worded in it."""
    body = parse_json(raw, config.limits.max_body_bytes)
    edition = request_edition(endpoint, body, default)
    try:
        body = bind_actor(principal, endpoint, body)
        return validate(endpoint, body, config, raw), edition
    except Refusal as refusal:
        raise refusal.in_edition(edition) from None


def bind_actor(principal: Principal, endpoint: Endpoint, body: Any) -> Any:
    """The parsed body with a user token's user filled in as the actor (``access.bind``);
    403 with the endpoint's id when it names another user. Before validation, so an absent
    ``user_id`` is the token's user rather than m3o's ``missing user id``; a body that is
    not an object is left for validation to refuse."""
    if principal.user is None or not isinstance(body, dict):
        return body
    try:
        return access.bind(principal, endpoint.name, body)
    except Refused as refused:
        raise Refusal.of(endpoint.id, refused) from None


def is_ndjson(content_type: str | None) -> bool:
    """True when a request's Content-Type is NDJSON, a bulk Send (``bulk``)."""
    if not content_type:
        return False
    return content_type.split(";", 1)[0].strip().lower() in NDJSON_TYPES
