"""The OpenAPI 3.1 document of the Chat API, generated from ``schema.ENDPOINTS``.

Served at ``GET /openapi.json``. Made from the same declarations the server validates
with, so the document cannot drift from what the server accepts; chatctl's extensions are
marked with ``x-chatctl-extension: true``. It says what the server does, exactly enough
for a fuzzer (tests/compat/test_openapi_fuzz.py) to find no request the two disagree on:

- a required string has ``minLength: 1`` (the server takes ``""`` as missing), a bounded
  one ``maxLength`` (its limit is in UTF-8 bytes, which the description says: a string
  of that many characters that are not ASCII can still be too long);
- ``room_id`` or ``group_id`` (m3o's final edition), exactly one of them (``oneOf``);
  answers carry ``room``/``rooms``/``room_id`` or ``group``/``groups``/``group_id``;
- an optional field may be ``null`` (m3o's proto-JSON reads it as the default, and so
  does this server), a required one may not; an integer may come as a string of digits
  (proto-JSON's int64); a cursor is a UUID or empty;
- a new user id or room name (Create, Invite) has a ``pattern`` that excludes the
  characters the server refuses in them (``schema.INVISIBLE``; ',' in a user id);
- a body with a required field is a required body; the Idempotency-Key is 1 to 255
  characters.
"""

from __future__ import annotations

from typing import Any

from chatctl import __version__
from chatctl.schema import (
    ENDPOINTS,
    EVENT_TYPES,
    ID_SEPARATORS,
    INVISIBLE,
    NEW_NAMES,
    Endpoint,
    Field,
    Limits,
)
from chatctl.wire import UUID_PATTERN

__all__ = ["openapi_document"]

_KIND_SCHEMAS: dict[str, dict[str, Any]] = {
    "string": {"type": "string"},
    "boolean": {"type": "boolean"},
    # proto-JSON's int64 may be written as a string of digits; none of ours is negative.
    "integer": {
        "anyOf": [
            {"type": "integer", "minimum": 0},
            {"type": "string", "pattern": "^[0-9]+$"},
        ]
    },
    "string_list": {"type": "array", "items": {"type": "string"}},
}
#: the fields that are message ids, or any UUID as a position (contract part 3); "" is none.
_CURSORS = frozenset({"before", "after", "since"})
_CURSOR_PATTERN = f"^({UUID_PATTERN})?$"
#: ``Field.chars``: no control, format or line-separator character; no ',' in a user id.
_VISIBLE = {"id": f"^[^{INVISIBLE}{ID_SEPARATORS}]*$", "name": f"^[^{INVISIBLE}]*$"}

_ROOM = {"$ref": "#/components/schemas/Room"}
_ROOMS = {"type": "array", "items": {"$ref": "#/components/schemas/Room"}}
_MESSAGE = {"$ref": "#/components/schemas/Message"}
#: each answer's key(s): both editions' for a room (chatctl serve --m3o-edition says
#: which Create and List carry; a call naming room_id or group_id gets its own).
_RESPONSES: dict[str, dict[str, Any]] = {
    "room": {"room": _ROOM, "group": _ROOM},
    "rooms": {"rooms": _ROOMS, "groups": _ROOMS},
    "message": {"message": _MESSAGE},
    "messages": {"messages": {"type": "array", "items": _MESSAGE}},
}

_TIME = {"type": "string", "format": "date-time", "description": "RFC 3339, UTC, nanoseconds."}
_GROUP_ID = {"type": "string", "description": "room_id, in m3o's final (group) edition."}
#: a message or event names its room in the edition of the request it answers.
_ROOM_OR_GROUP = [{"required": ["room_id"]}, {"required": ["group_id"]}]


def _field_schema(f: Field, limits: Limits, name: str | None = None) -> dict[str, Any]:
    schema = dict(_KIND_SCHEMAS[f.kind])
    schema["description"] = f.description
    if f.kind == "string" and f.required:
        schema["minLength"] = 1  # "" is missing: m3o's "missing room id"
    if f.name in _CURSORS:
        schema["pattern"] = _CURSOR_PATTERN
        schema["description"] += " A UUID (any UUID is a position), or empty for none."
    if f.limit is not None:
        bound = getattr(limits, f.limit)
        words = f"At most {bound} UTF-8 bytes (maxLength counts characters: fewer fit"
        words += " if not ASCII)."
        if f.kind == "string_list":
            schema["items"] = {"type": "string", "maxLength": bound, "description": words}
        else:
            schema["maxLength"] = bound
            schema["description"] += " " + words
    if name is not None and name != f.name:
        schema["description"] = f"m3o's final edition's name for {f.name}: give one of them."
    if not f.required:
        _nullable(schema)
    if f.extension:
        schema["x-chatctl-extension"] = True
    return schema


def _nullable(schema: dict[str, Any]) -> None:
    """An optional field may be null: m3o's proto-JSON, and this server, read it as the
    default."""
    if "anyOf" in schema:
        schema["anyOf"] = [*schema["anyOf"], {"type": "null"}]
    else:
        schema["type"] = [schema["type"], "null"]


def _request_schema(endpoint: Endpoint, limits: Limits) -> dict[str, Any]:
    properties: dict[str, Any] = {}
    either: list[dict[str, Any]] = []
    for f in endpoint.request:
        properties[f.name] = _field_schema(f, limits)
        if f.alias is not None:
            properties[f.alias] = _field_schema(f, limits, f.alias)
            either = [{"required": [f.name]}, {"required": [f.alias]}]
    schema: dict[str, Any] = {
        # An empty body, or null, means {}: a body of its own only where nothing is required.
        "type": "object" if any(f.required for f in endpoint.request) else ["object", "null"],
        "properties": properties,
        "required": [f.name for f in endpoint.request if f.required and f.alias is None],
    }
    if either:
        schema["oneOf"] = either  # one of room_id and group_id, not both
    for (name, field), rule in NEW_NAMES.items():
        # The characters the server refuses in a new user id or room name (schema.INVISIBLE).
        if name == endpoint.name:
            where = properties[field]
            where.get("items", where)["pattern"] = _VISIBLE[rule]  # a list: each item
    return schema


def _error_responses(endpoint: Endpoint) -> dict[str, Any]:
    codes = {
        "400": "Invalid request (e.g. missing room id, user is not in the room).",
        "401": "Missing or unknown token (id v1).",
        "403": "Membership, privacy or a quota refused (a quota's detail starts quota:).",
        "404": "Room not found (or, with id v1, no such API).",
        "409": "Idempotency-Key reused with a different request.",
        "413": "Body over the limit (id v1).",
        "429": "Over the token's rate limit (id v1); Retry-After says when to retry.",
        "503": "Storage unavailable; retry (with the same Idempotency-Key).",
    }
    if not endpoint.mutating:
        del codes["409"]
    return {
        code: {
            "description": text,
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
        }
        for code, text in codes.items()
    }


def _links(edition: str) -> dict[str, Any]:
    """Create's answer names the room the other calls take (OpenAPI links, which tools
    such as schemathesis follow), at its key in the server's edition."""
    key = "group" if edition == "group" else "room"
    return {
        f"{e.name}WithTheNewRoom": {
            "operationId": e.name,
            "requestBody": {"room_id": f"$response.body#/{key}/id"},
            "description": f"{e.name} in the room just made.",
        }
        for e in ENDPOINTS.values()
        if e.field("room_id") is not None and e.name != "Join"
    }


def _operation(endpoint: Endpoint, limits: Limits, edition: str) -> dict[str, Any]:
    name = endpoint.name
    op: dict[str, Any] = {
        "operationId": name,
        "summary": endpoint.summary,
        "requestBody": {
            # An empty body means {}: fine where no field is required.
            "required": any(f.required for f in endpoint.request),
            "description": "An empty body means {}.",
            "content": {
                "application/json": {"schema": {"$ref": f"#/components/schemas/{name}Request"}}
            },
        },
    }
    if endpoint.mutating:
        op["parameters"] = [{"$ref": "#/components/parameters/IdempotencyKey"}]
    if name == "Join":
        op["description"] = (
            "A WebSocket at this path (token in Authorization or Sec-WebSocket-Protocol): send "
            "the JoinRequest as the first text frame, then receive one JoinResponse per text "
            "frame. An error ends the stream with one error frame and close code 4000 + HTTP "
            "code (4403 kicked or left, 4404 room deleted); 4008 means the reader was too slow "
            "and should resume with since. A plain POST (no upgrade) streams the same "
            "JoinResponses as newline-delimited JSON."
        )
        op["responses"] = {
            "200": {
                "description": "One JoinResponse per line.",
                "content": {
                    "application/x-ndjson": {
                        "schema": {"$ref": "#/components/schemas/JoinResponse"}
                    }
                },
            },
            **_error_responses(endpoint),
        }
        return op
    op["responses"] = {
        "200": {
            "description": "OK; every field is present, defaults included.",
            "content": {
                "application/json": {"schema": {"$ref": f"#/components/schemas/{name}Response"}}
            },
        },
        **_error_responses(endpoint),
    }
    if name == "Create":
        op["responses"]["200"]["links"] = _links(edition)
    if name == "Send":
        _bulk_send(op)
    return op


def _bulk_send(op: dict[str, Any]) -> None:
    """The bulk Send (contract part 3, ``bulk``): NDJSON in, one answer line per line out."""
    line = {"$ref": "#/components/schemas/SendRequest"}
    op["requestBody"]["content"]["application/x-ndjson"] = {
        "schema": line,
        "x-chatctl-extension": True,
    }
    op["description"] = (
        "A bulk Send (extension bulk-send): with Content-Type application/x-ndjson the body "
        "is one SendRequest per line; the answer is one line per request line, in order, "
        "written as they are stored: its SendResponse or its m3o error object. "
        "Idempotency-Key is then the batch's key (line n is kept as KEY/n), "
        "Chat-First-Line numbers the first line (default 1), and Chat-On-Error: stop ends "
        "the answer after the first refused line."
    )
    op["responses"]["200"]["content"]["application/x-ndjson"] = {
        "schema": {
            "oneOf": [
                {"$ref": "#/components/schemas/SendResponse"},
                {"$ref": "#/components/schemas/Error"},
            ]
        },
        "x-chatctl-extension": True,
    }


def openapi_document(limits: Limits | None = None, edition: str = "both") -> dict[str, Any]:
    """The whole API as an OpenAPI 3.1 document, of a server whose Create and List answer
    in ``edition``."""
    limits = limits or Limits()
    schemas: dict[str, Any] = {
        "Room": {
            "type": "object",
            "required": ["id", "name", "description", "created_at", "user_ids", "private"],
            "properties": {
                "id": {"type": "string", "format": "uuid"},
                "name": {"type": "string"},
                "description": {"type": "string"},
                "created_at": _TIME,
                "user_ids": {"type": "array", "items": {"type": "string"}},
                "private": {"type": "boolean"},
            },
        },
        "Message": {
            "type": "object",
            "required": ["id", "client", "user_id", "sent_at", "subject", "text"],
            "oneOf": _ROOM_OR_GROUP,
            "properties": {
                "id": {"type": "string", "format": "uuid", "description": "A UUIDv7."},
                "client": {"type": "string"},
                "room_id": {"type": "string"},
                "group_id": _GROUP_ID,
                "user_id": {"type": "string"},
                "sent_at": _TIME,
                "subject": {"type": "string"},
                "text": {"type": "string"},
            },
        },
        "Event": {
            "type": "object",
            "x-chatctl-extension": True,
            "required": ["type", "user_id", "at"],
            "oneOf": _ROOM_OR_GROUP,
            "properties": {
                "type": {"type": "string", "enum": list(EVENT_TYPES)},
                "room_id": {"type": "string"},
                "group_id": _GROUP_ID,
                "user_id": {"type": "string"},
                "at": _TIME,
            },
        },
        "JoinResponse": {
            "oneOf": [
                {
                    "type": "object",
                    "required": ["message"],
                    "properties": {"message": {"$ref": "#/components/schemas/Message"}},
                },
                {
                    "type": "object",
                    "required": ["event"],
                    "properties": {"event": {"$ref": "#/components/schemas/Event"}},
                },
            ]
        },
        "Error": {
            "type": "object",
            "required": ["id", "code", "detail", "status"],
            "properties": {
                "id": {"type": "string", "examples": ["chat.send", "v1"]},
                "code": {"type": "integer"},
                "detail": {"type": "string"},
                "status": {"type": "string", "examples": ["Bad Request"]},
            },
        },
    }
    paths: dict[str, Any] = {}
    for name, endpoint in ENDPOINTS.items():
        schemas[f"{name}Request"] = _request_schema(endpoint, limits)
        if name != "Join":
            keys = _RESPONSES[endpoint.response]
            schemas[f"{name}Response"] = {
                "type": "object",
                "properties": keys,
                "anyOf": [{"required": [key]} for key in keys],
            }
        paths[f"/v1/chat/{name}"] = {"post": _operation(endpoint, limits, edition)}
    paths["/health"] = {
        "get": {
            "operationId": "Health",
            "summary": "Liveness",
            "security": [],
            "responses": {
                "200": {
                    "description": "The server is up.",
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "properties": {"status": {"type": "string", "const": "ok"}},
                            }
                        }
                    },
                }
            },
        }
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Chat API (m3o-compatible, chatctl server)",
            "version": __version__,
            "description": (
                "The m3o Chat API, plus chatctl's extensions (x-chatctl-extension). Paths "
                "are matched case-insensitively; an empty body means {}. Both of m3o's "
                "editions: a request naming group_id (m3o's final edition) is answered "
                "with group, groups and group_id; one naming room_id (the seed's) with "
                "room, rooms and room_id; Create and List with the server's edition "
                "(by default both keys)."
            ),
        },
        "servers": [{"url": "/"}],
        "security": [{"bearer": []}],
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "parameters": {
                "IdempotencyKey": {
                    "name": "Idempotency-Key",
                    "in": "header",
                    "required": False,
                    "description": (
                        "Makes the call safe to repeat: the same key within 24 h gets the "
                        "first answer back and changes nothing; with another body, 409."
                    ),
                    "schema": {"type": "string", "minLength": 1, "maxLength": 255},
                    "x-chatctl-extension": True,
                }
            },
        },
    }
