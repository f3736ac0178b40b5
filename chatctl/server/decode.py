"""The way in, shared by unary calls (``edge``), Join (``streams``) and bulk Sends
(``bulk``): a request body parsed as JSON (``parse_json``), bound to a user token's user
(``bind_actor``), validated (``validate``); and ``Refusal``, the m3o error object any of
them answers with, made from the rules' refusals by ``Refusal.of`` (their statuses in
``STATUS``). It knows the wire and the schema, not the routes: those are ``edge``'s and
``streams``', which import this module, never the other way round.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from chatctl.schema import Endpoint, ValidationError, validate_request
from chatctl.server import access
from chatctl.server.config import ServerConfig
from chatctl.server.domain import Conflict, Forbidden, Invalid, NotFound, Refused, Unavailable
from chatctl.server.tokens import Principal
from chatctl.wire import error_object

__all__ = [
    "NDJSON_TYPES",
    "STATUS",
    "Refusal",
    "bind_actor",
    "is_ndjson",
    "no_such_api",
    "one_line",
    "parse_json",
    "validate",
]

log = logging.getLogger("chatctl.server")

#: the HTTP status of each kind of refusal the rules raise.
STATUS: dict[type[Refused], int] = {Invalid: 400, Forbidden: 403, NotFound: 404, Conflict: 409}
#: what a client reads when the storage fails; the cause is logged, not sent.
UNAVAILABLE_DETAIL = "storage unavailable: try again (with the same Idempotency-Key, if any)"
#: request media types of a bulk Send (the first is the one answered with).
NDJSON_TYPES = ("application/x-ndjson", "application/ndjson", "application/jsonl")


class Refusal(Exception):
    """An m3o error to answer with, raised anywhere on the edge."""

    def __init__(
        self, id: str, code: int, detail: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(detail)
        self.id = id
        self.code = code
        self.detail = detail
        #: extra headers of the answer (429's Retry-After).
        self.headers = headers

    def body(self) -> dict[str, Any]:
        return error_object(self.id, self.code, self.detail)

    @classmethod
    def of(cls, endpoint_id: str, exc: Refused | Unavailable) -> Refusal:
        """The answer to a refusal of the rules, or to the storage failing."""
        if isinstance(exc, Unavailable):
            log.warning("%s: storage unavailable: %s", endpoint_id, one_line(exc))
            return cls(endpoint_id, 503, UNAVAILABLE_DETAIL)
        return cls(endpoint_id, STATUS[type(exc)], exc.detail)


def one_line(exc: BaseException) -> str:
    """A storage failure's cause for the log, on one line (PostgreSQL's add a CONTEXT line)."""
    return " ".join(str(exc).split())


def no_such_api() -> Refusal:
    return Refusal("v1", 404, "No such API")


def parse_json(raw: bytes | str, limit: int) -> Any:
    """A request body as JSON; empty means {} (m3o)."""
    if len(raw) > limit:
        raise Refusal("v1", 413, f"request body is larger than {limit} bytes (max_body_bytes)")
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
        raise Refusal(endpoint.id, exc.code, exc.detail) from None
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
