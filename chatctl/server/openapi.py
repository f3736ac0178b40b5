"""The OpenAPI 3.1 document of the Chat API, generated from ``schema.ENDPOINTS``.

Served at ``GET /openapi.json``. Made from the same declarations the server validates
with, so the document cannot drift from what the server accepts; chatctl's extensions are
marked with ``x-chatctl-extension: true``.
"""

from __future__ import annotations

from typing import Any

from chatctl import __version__
from chatctl.schema import ENDPOINTS, EVENT_TYPES, Endpoint, Field, Limits

__all__ = ["openapi_document"]

_KIND_SCHEMAS: dict[str, dict[str, Any]] = {
    "string": {"type": "string"},
    "boolean": {"type": "boolean"},
    "integer": {"type": "integer", "minimum": 0},
    "string_list": {"type": "array", "items": {"type": "string"}},
}

_RESPONSES: dict[str, dict[str, Any]] = {
    "room": {"$ref": "#/components/schemas/Room"},
    "rooms": {"type": "array", "items": {"$ref": "#/components/schemas/Room"}},
    "message": {"$ref": "#/components/schemas/Message"},
    "messages": {"type": "array", "items": {"$ref": "#/components/schemas/Message"}},
}

_TIME = {"type": "string", "format": "date-time", "description": "RFC 3339, UTC, nanoseconds."}


def _field_schema(f: Field, limits: Limits) -> dict[str, Any]:
    schema = dict(_KIND_SCHEMAS[f.kind])
    schema["description"] = f.description
    if f.limit is not None:
        bound = getattr(limits, f.limit)
        if f.kind == "string_list":
            schema["items"] = {"type": "string", "description": f"At most {bound} UTF-8 bytes."}
        else:
            schema["description"] += f" At most {bound} UTF-8 bytes."
    if f.extension:
        schema["x-chatctl-extension"] = True
    return schema


def _request_schema(endpoint: Endpoint, limits: Limits) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {f.name: _field_schema(f, limits) for f in endpoint.request},
        "required": [f.name for f in endpoint.request if f.required],
    }


def _error_responses(endpoint: Endpoint) -> dict[str, Any]:
    codes = {
        "400": "Invalid request (e.g. missing room id, user is not in the room).",
        "401": "Missing or unknown token (id v1).",
        "403": "Membership or privacy refused.",
        "404": "Room not found (or, with id v1, no such API).",
        "409": "Idempotency-Key reused with a different request.",
        "413": "Body over the limit (id v1).",
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


def _operation(endpoint: Endpoint, limits: Limits) -> dict[str, Any]:
    name = endpoint.name
    op: dict[str, Any] = {
        "operationId": name,
        "summary": endpoint.summary,
        "requestBody": {
            "required": False,
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
    return op


def openapi_document(limits: Limits | None = None) -> dict[str, Any]:
    """The whole API as an OpenAPI 3.1 document."""
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
            "required": ["id", "client", "room_id", "user_id", "sent_at", "subject", "text"],
            "properties": {
                "id": {"type": "string", "format": "uuid", "description": "A UUIDv7."},
                "client": {"type": "string"},
                "room_id": {"type": "string"},
                "user_id": {"type": "string"},
                "sent_at": _TIME,
                "subject": {"type": "string"},
                "text": {"type": "string"},
            },
        },
        "Event": {
            "type": "object",
            "x-chatctl-extension": True,
            "required": ["type", "room_id", "user_id", "at"],
            "properties": {
                "type": {"type": "string", "enum": list(EVENT_TYPES)},
                "room_id": {"type": "string"},
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
            schemas[f"{name}Response"] = {
                "type": "object",
                "required": [endpoint.response],
                "properties": {endpoint.response: _RESPONSES[endpoint.response]},
            }
        paths[f"/v1/chat/{name}"] = {"post": _operation(endpoint, limits)}
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
                "are matched case-insensitively; an empty body means {}."
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
                    "schema": {"type": "string", "maxLength": 255},
                    "x-chatctl-extension": True,
                }
            },
        },
    }
