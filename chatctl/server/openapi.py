"""The OpenAPI 3.1 document of the Chat API, generated from ``schema.ENDPOINTS``.

Served at ``GET /openapi.json``. Made from the same declarations the server validates
with, so the document cannot drift from what the server accepts; chatctl's extensions are
marked with ``x-chatctl-extension: true``. It says what the server does, exactly enough
for a fuzzer (tests/compat/test_openapi_fuzz.py) to find no request the two disagree on:

- a required string has ``minLength: 1`` (the server takes ``""`` as missing), a bounded
  one ``maxLength``: the server's limit, which counts characters (code points) as
  ``maxLength`` does, so a string of that many characters is never refused for its size;
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
from chatctl.wire import DURATION_PATTERN, UUID_PATTERN

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
    "message_list": {"type": "array", "items": {"$ref": "#/components/schemas/Message"}},
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
    "identity": {"identity": {"$ref": "#/components/schemas/Identity"}},
    "retention": {"retention": {"$ref": "#/components/schemas/Retention"}},
    "imported": {"imported": {"$ref": "#/components/schemas/Imported"}},
}

_TIME = {"type": "string", "format": "date-time", "description": "RFC 3339, UTC, nanoseconds."}
#: keys an answer may carry besides its own: History's gap (contract part 3, "Retention").
_ALSO: dict[str, dict[str, Any]] = {
    "messages": {
        "gap": {
            "type": "object",
            "x-chatctl-extension": True,
            "description": "The cursor is older than what the room keeps: messages up to"
            " `through` (sent at `at`) were removed by its retention.",
            "required": ["type", "through", "at"],
            "properties": {
                "type": {"const": "gap"},
                "room_id": {"type": "string"},
                "group_id": {"type": "string"},
                "through": {"type": "string"},
                "at": {"type": "string"},
            },
        }
    }
}
_GROUP_ID = {"type": "string", "description": "room_id, in m3o's final (group) edition."}
#: a message or event names its room in the edition of the request it answers.
_ROOM_OR_GROUP = [{"required": ["room_id"]}, {"required": ["group_id"]}]

#: a Join's frames: a message, or an event (JoinRooms' are these and its own).
_JOIN_FRAMES = [
    {"type": "object", "required": ["message"], "properties": {"message": _MESSAGE}},
    {
        "type": "object",
        "required": ["event"],
        "properties": {"event": {"$ref": "#/components/schemas/Event"}},
    },
]


#: the endpoints that answer with a stream of frames (a WebSocket, or NDJSON to a POST).
_STREAMS = ("Join", "JoinRooms")


def _field_schema(f: Field, limits: Limits, name: str | None = None) -> dict[str, Any]:
    schema = dict(_KIND_SCHEMAS[f.kind])
    schema["description"] = f.description
    if f.kind == "string" and f.required:
        schema["minLength"] = 1  # "" is missing: m3o's "missing room id"
    if f.name == "retain":
        schema["pattern"] = DURATION_PATTERN
    if f.kind == "message_list":
        schema["items"] = _imported_message(limits)
        schema["maxItems"] = 1000  # importer.MAX_IMPORT
    if f.name in _CURSORS:
        schema["pattern"] = _CURSOR_PATTERN
        schema["description"] += " A UUID (any UUID is a position), or empty for none."
    if f.name == "message_id":
        schema["pattern"] = f"^{UUID_PATTERN}$"
    if f.limit is not None:
        bound = getattr(limits, f.limit)
        words = f"At most {bound} characters (Unicode code points, as maxLength counts)."
        if f.kind == "string_list":
            # "" is refused in a list as it is in a required string (schema.validate_request)
            schema["items"] = {
                "type": "string",
                "minLength": 1,
                "maxLength": bound,
                "description": words,
            }
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


def _imported_message(limits: Limits) -> dict[str, Any]:
    """An Import's message (``importer``): what it checks, as far as a schema can say."""

    def text(limit: str, least: int = 0) -> dict[str, Any]:
        return {"type": "string", "minLength": least, "maxLength": getattr(limits, limit)}

    return {
        "type": "object",
        "required": ["id", "user_id", "sent_at"],
        "properties": {
            "id": {"type": "string", "pattern": f"^{UUID_PATTERN}$"},
            "user_id": text("max_user_id_chars", 1),
            "sent_at": {"type": "string", "format": "date-time", "maxLength": 64},
            "text": _nullable_copy(text("max_text_chars")),
            "subject": _nullable_copy(text("max_subject_chars")),
            "client": _nullable_copy(text("max_client_chars")),
        },
    }


def _nullable_copy(schema: dict[str, Any]) -> dict[str, Any]:
    _nullable(schema)
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
        "404": "Room not found, or DeleteMessage's message (or, with id v1, no such API).",
        "409": "Idempotency-Key reused with a different request.",
        "413": "Body over the limit (id v1).",
        "429": "Over the token's rate limit (id v1); Retry-After says when to retry.",
        "503": "Storage unavailable; retry (with the same Idempotency-Key).",
    }
    if not endpoint.mutating:
        del codes["409"]
    if endpoint.name == "Join":  # a stream has no key: it is resumed (also as close 4503)
        codes["503"] = "Storage unavailable; join again, resuming with since."
    return {
        code: {
            "description": text,
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
        }
        for code, text in codes.items()
    }


#: the text of the message a link sends (a link's body is a whole SendRequest).
_LINKED_TEXT = "hello"


def _links(edition: str) -> dict[str, Any]:
    """Create's answer names the room the other calls take (OpenAPI links, which tools
    such as schemathesis follow), at its key in the server's edition. Not Send's: only a
    member may Send (anyone else is m3o's 400 ``user is not in the room``), and a room
    may be made with none; Invite's answer leads to Send, with the user it invited, and
    Send's to DeleteMessage, by the message's author."""
    key = "group" if edition == "group" else "room"
    links: dict[str, Any] = {
        f"{e.name}WithTheNewRoom": {
            "operationId": e.name,
            "requestBody": {"room_id": f"$response.body#/{key}/id"},
            "description": f"{e.name} in the room just made.",
        }
        for e in ENDPOINTS.values()
        if e.field("room_id") is not None and e.name not in (*_STREAMS, "Send")
    }
    return links


def _invite_links() -> dict[str, Any]:
    """Invite's answer names the room, of which the invited user is now a member: a
    whole SendRequest by that member. Its room and user go together or not at all
    (``merge_body: false``, schemathesis' extension: it would otherwise take each field
    by itself, and a room with a user of its own making is a Send the server refuses)."""
    return {
        "SendAsTheInvitedUser": {
            "operationId": "Send",
            "requestBody": {
                "room_id": "$response.body#/room/id",
                "user_id": "$request.body#/user_id",
                "text": _LINKED_TEXT,
            },
            "description": "Send to the room as the user just invited.",
            "x-schemathesis": {"merge_body": False},
        }
    }


def _send_links() -> dict[str, Any]:
    """Send's answer is a message its author may delete: a whole DeleteMessageRequest by
    that author, all or nothing (``merge_body: false``, as Invite's link: a message id
    with another room or user is a refusal, not a deletion)."""
    return {
        "DeleteMessageAsItsAuthor": {
            "operationId": "DeleteMessage",
            "requestBody": {
                "room_id": "$response.body#/message/room_id",
                "message_id": "$response.body#/message/id",
                "user_id": "$response.body#/message/user_id",
            },
            "description": "Delete the message just sent, as its author.",
            "x-schemathesis": {"merge_body": False},
        }
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
    if endpoint.extension:
        op["x-chatctl-extension"] = True
    if name == "Join":
        op["description"] = (
            "A WebSocket at this path (token in Authorization or Sec-WebSocket-Protocol): send "
            "the JoinRequest as the first text frame, then receive one JoinResponse per text "
            "frame. An error ends the stream with one error frame and close code 4000 + HTTP "
            "code (4403 kicked or left, 4404 room deleted); 4008 means the reader was too slow "
            "and should resume with since. A plain POST (no upgrade) streams the same "
            "JoinResponses as newline-delimited JSON."
        )
    if name == "JoinRooms":
        op["description"] = (
            "Many rooms (room_ids, each resumed after its own cursor in since_ids) or every "
            "room of the user (all, with the rooms they are let into while it lasts) on one "
            "stream, a WebSocket or an NDJSON POST as Join's: a room_added frame before "
            "anything of each room, a room_ended frame when one ends for the user (the "
            "others go on); 4008 ends all of it, to be resumed room by room."
        )
    if name in _STREAMS:
        op["responses"] = {
            "200": {
                "description": f"One {name}Response per line.",
                "content": {
                    "application/x-ndjson": {
                        "schema": {"$ref": f"#/components/schemas/{name}Response"}
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
    if name == "Invite":
        op["responses"]["200"]["links"] = _invite_links()
    if name == "Send":
        op["responses"]["200"]["links"] = _send_links()
        _bulk_send(op)
    if name == "DeleteMessage":
        op["description"] = (
            "Delete a message (extension delete-message): its author, the room's creator "
            "or an admin token may. Its text and subject are erased from storage; History "
            "and Join replays leave it out, and streams that asked for events get a "
            "message_deleted event. Deleting it again answers the same and changes nothing."
        )
    if name == "Whoami":
        op["description"] = (
            "Who the token acts as (extension whoami), answered from the token alone: the "
            "tenant's name, the user a user token acts as, whether it is an admin token "
            "(which acts as any user), and whether the server is open (no tokens)."
        )
    return op


def _bulk_send(op: dict[str, Any]) -> None:
    """The bulk Send (contract part 3, ``bulk``): NDJSON in, one answer line per line out."""
    # Not a second media type of the request body: a tool then cannot tell which one a
    # body it is given (a link's, an example's) is in (schemathesis stops there), and
    # none can write NDJSON. The extension says it instead.
    op["x-chatctl-bulk-send"] = {
        "media-type": "application/x-ndjson",
        "line": {"$ref": "#/components/schemas/SendRequest"},
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
                "user_id": {
                    "type": "string",
                    "description": "The member, or (message_deleted) the message's author.",
                },
                "at": _TIME,
                "message_id": {
                    "type": "string",
                    "format": "uuid",
                    "description": "message_deleted only: the message deleted.",
                },
            },
        },
        "JoinResponse": {"oneOf": _JOIN_FRAMES},
        "JoinRoomsResponse": {
            "x-chatctl-extension": True,
            "oneOf": [
                *_JOIN_FRAMES,
                {
                    "type": "object",
                    "required": ["room_added"],
                    "properties": {
                        "room_added": {
                            "type": "object",
                            "required": ["room_id", "name", "since"],
                            "properties": {
                                "room_id": {"type": "string"},
                                "name": {"type": "string"},
                                "since": {
                                    "type": "string",
                                    "description": "Where a resume of the room starts until "
                                    "a message of it came.",
                                },
                                "new": {
                                    "type": "boolean",
                                    "description": "The user was let into it meanwhile.",
                                },
                            },
                        }
                    },
                },
                {
                    "type": "object",
                    "required": ["room_ended"],
                    "properties": {
                        "room_ended": {
                            "type": "object",
                            "required": ["room_id", "code", "detail"],
                            "properties": {
                                "room_id": {"type": "string"},
                                "code": {"type": "integer"},
                                "detail": {"type": "string"},
                            },
                        }
                    },
                },
            ],
        },
        "Identity": {
            "type": "object",
            "x-chatctl-extension": True,
            "required": ["tenant", "user_id", "admin", "open"],
            "properties": {
                "tenant": {
                    "type": "string",
                    "description": "The tenant's name (tenant=NAME); empty for a token that "
                    "is its own tenant, and on an open server.",
                },
                "user_id": {
                    "type": "string",
                    "description": "The user a user token acts as; empty for an admin token.",
                },
                "admin": {
                    "type": "boolean",
                    "description": "An admin token: acts as any user of its tenant.",
                },
                "open": {
                    "type": "boolean",
                    "description": "The server has no tokens (loopback only; one admin).",
                },
            },
        },
        "Imported": {
            "type": "object",
            "x-chatctl-extension": True,
            "required": ["room_id", "stored", "skipped"],
            "properties": {
                "room_id": {"type": "string"},
                "stored": {"type": "integer", "description": "Messages stored by this call."},
                "skipped": {
                    "type": "integer",
                    "description": "Messages already in the room, the same: not stored again.",
                },
            },
        },
        "Retention": {
            "type": "object",
            "x-chatctl-extension": True,
            "required": ["room_id", "retain", "server_retain", "effective"],
            "properties": {
                "room_id": {"type": "string"},
                "retain": {
                    "type": "string",
                    "description": "The room's own retention (30d); empty: none of its own.",
                },
                "server_retain": {
                    "type": "string",
                    "description": "The server's --retain; empty: none.",
                },
                "effective": {
                    "type": "string",
                    "description": "The shorter of the two; empty: messages are kept forever.",
                },
                "expired_through": {
                    "type": "string",
                    "description": "The last message retention removed; empty: none yet.",
                },
                "expired_at": {"type": "string", "description": "When it was sent."},
            },
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
        if name not in _STREAMS:
            keys = _RESPONSES[endpoint.response]
            schemas[f"{name}Response"] = {
                "type": "object",
                "properties": {**keys, **_ALSO.get(endpoint.response, {})},
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
    paths["/ready"] = {
        "get": {
            "operationId": "Ready",
            "summary": "Readiness",
            "description": (
                "Whether this server should get traffic: its database answered within its"
                " timeout, a PostgreSQL replica hears the others, it is not shutting down."
                " /health says only that the process serves."
            ),
            "security": [],
            "responses": {
                "200": {
                    "description": "Ready for traffic.",
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "properties": {"status": {"type": "string", "const": "ready"}},
                            }
                        }
                    },
                },
                "503": {
                    "description": "Not ready: take it out of rotation; why, in reasons.",
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "properties": {
                                    "status": {"type": "string", "const": "not ready"},
                                    "reasons": {"type": "array", "items": {"type": "string"}},
                                },
                            }
                        }
                    },
                },
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
