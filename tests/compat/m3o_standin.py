"""Stand-ins for m3o's own chat servers, to test chatctl (and the test harnesses) against
something other than chatctl's own server.

``M3OStandIn("group")`` is m3o's final edition (micro/services ``chat/``, from the commit
"change room to group in chat", 2022-07-20, to the last commit, whose handler is the same);
``M3OStandIn("room")`` is the same handler before the rename: the seed's names. Both are
*plain* m3o servers: no paging, no resume, no events, no Idempotency-Key, no NDJSON, no
``include_own``; fields they do not know are ignored on unary calls, as m3o's were.

What is copied from the source, so that a client meeting these meets m3o:
- the handler (chat/handler/handler.go): each endpoint's validation in its order and with
  its error ids and details (Join's two "missing" errors carry the id ``chat.send``, as
  m3o's did), 400 ``<noun> not found``, Create validating nothing, Kick and Leave not
  checking membership, History and List answering every record in *key* order (the store
  reads a prefix ``ORDER BY key``, and a message's key ends in its random UUIDv4, so
  History is not in time order), Join adding the joiner to ``user_ids`` and streaming only
  other users' messages, from the moment it joined; all streams of one user in one group
  share one queue (``events.Consume(..., WithGroup(user_id))``), so each message reaches
  only one of them; Kick, Leave and Delete end no stream.
- micro v3's server codec: answers carry every field, defaults included, snake_case; a
  unary request that strict proto-JSON decoding refuses (an unknown field, a wrong type) is
  decoded again field by field, ignoring unknown keys, where a value of the wrong JSON
  type panics (500 ``panic recovered: …``, id ``chat``); a Join request is decoded
  strictly, so an unknown field there fails the stream (500, id ``go.micro.client``).
- micro v3's gateway (service/api/handler/rpc, service/api/auth, service/api/server/http):
  unary answers re-encoded with sorted keys and the request's own Content-Type; errors as
  ``{"id","code","detail","status"}`` with the HTTP status = code; a missing or unknown
  token is refused before the handler (401 ``unauthorized request``, plain text, and before
  the upgrade for a WebSocket); CORS as ``--enable_cors`` did it (every Origin echoed,
  credentials allowed, OPTIONS answered 200 empty); a Join WebSocket accepts every offered
  subprotocol (m3o took the token from it, for browsers), reads the JoinRequest from the
  first client frame (at most 512 bytes, else close 1009), sends each JoinResponse as one
  text frame, and after an error sends the error object as a frame and drops the
  connection without a close frame (the client sees 1006); ``POST /v1/chat/Join`` without
  an upgrade streams the JoinResponses back to back with no delimiter.

Where the source is silent or out of reach (the hosted gateway's own 404), the stand-in
answers as the contract's part 1 says (404 ``No such API``, id ``v1``).

Every request is recorded (``.requests``) so a test can assert the exact bodies a client
sent. Run one with :func:`start_standin`; it serves on a real socket from a thread.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

import httpx
import uvicorn
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send
from starlette.websockets import WebSocket

from tests.helpers import free_port, wait_for

Edition = Literal["group", "room"]

#: micro's gateway (--enable_cors) sent these on every answer.
CORS_METHODS = "POST, PATCH, GET, OPTIONS, PUT, DELETE"
CORS_HEADERS = (
    "Accept, Content-Type, Content-Length, Accept-Encoding, X-CSRF-Token, Authorization, "
    "Micro-Namespace"
)
#: gorilla/websocket read limit of m3o's gateway for frames from the client.
MAX_CLIENT_FRAME = 512

_STATUS = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found"}
_STATUS[500] = "Internal Server Error"

# Proto field kinds: "s" string, "b" bool, "l" repeated string.
_Kinds = dict[str, str]


def _requests(noun: str) -> dict[str, _Kinds]:
    """Each endpoint's request message, as chat.proto declares it (field order kept)."""
    nid = f"{noun}_id"
    return {
        "Create": {"name": "s", "description": "s", "user_ids": "l", "private": "b"},
        "Delete": {nid: "s"},
        "History": {nid: "s"},
        "Invite": {nid: "s", "user_id": "s"},
        "Join": {nid: "s", "user_id": "s"},
        "Kick": {nid: "s", "user_id": "s"},
        "Leave": {nid: "s", "user_id": "s"},
        "List": {"user_id": "s"},
        "Send": {"client": "s", nid: "s", "user_id": "s", "subject": "s", "text": "s"},
    }


ENDPOINT_NAMES = ("Create", "Delete", "History", "Invite", "Join", "Kick", "Leave", "List", "Send")


class M3OError(Exception):
    def __init__(self, id: str, code: int, detail: str) -> None:
        super().__init__(detail)
        self.id, self.code, self.detail = id, code, detail

    def body(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "code": self.code,
            "detail": self.detail,
            "status": _STATUS[self.code],
        }

    def encoded(self) -> bytes:
        # micro's errors.Error marshalled by encoding/json: id, code, detail, status.
        return json.dumps(self.body(), separators=(",", ":")).encode()


def _bad(id: str, detail: str) -> M3OError:
    return M3OError(id, 400, detail)


def rfc3339nano(ns: int | None = None) -> str:
    """Go's ``time.Now().Format(time.RFC3339Nano)`` in UTC: trailing zeros of the fraction
    dropped (``…43.9425Z``), no fraction at all on a whole second."""
    ns = time.time_ns() if ns is None else ns
    secs, frac = divmod(ns, 1_000_000_000)
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(secs))
    digits = f"{frac:09d}".rstrip("0")
    return f"{stamp}.{digits}Z" if digits else f"{stamp}Z"


def _go_type(value: Any) -> str:
    if value is None:
        return "<nil>"
    return {
        bool: "bool",
        str: "string",
        float: "float64",
        int: "float64",
        list: "[]interface {}",
    }.get(type(value), "map[string]interface {}")


_GO_KIND = {"s": "string", "b": "bool", "l": "[]string"}
_PARSE_BOOL = {"1": True, "t": True, "T": True, "TRUE": True, "true": True, "True": True}
_PARSE_BOOL |= {"0": False, "f": False, "F": False, "FALSE": False, "false": False, "False": False}


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)


def _strict(raw: Any, kinds: _Kinds, message: str) -> dict[str, Any]:
    """golang/protobuf's jsonpb.Unmarshal (AllowUnknownFields false): every key known (by
    its proto name or its lowerCamel JSON name), every value of its type or null."""
    if not isinstance(raw, dict):
        raise ValueError("json: cannot unmarshal into " + message)
    out: dict[str, Any] = {}
    names = {n: n for n in kinds} | {_camel(n): n for n in kinds}
    for key, value in raw.items():
        name = names.get(key)
        if name is None:
            raise ValueError(f'unknown field "{key}" in {message}')
        kind = kinds[name]
        ok = (
            value is None
            or (kind == "s" and isinstance(value, str))
            or (kind == "b" and isinstance(value, bool))
            or (kind == "l" and isinstance(value, list) and all(isinstance(v, str) for v in value))
        )
        if not ok:
            raise ValueError(f"bad value for field {key} in {message}")
        if value is not None:
            out[name] = value
    return out


def decode_unary(body: bytes, kinds: _Kinds, message: str) -> dict[str, Any]:
    """A unary request as micro v3's gRPC server decoded it: strict first, then key by key
    (known proto names only, unknown keys ignored), where Go's reflection panics on a value
    of another JSON type."""
    text = body.decode("utf-8", "replace")
    try:
        raw = json.loads(text) if text.strip() else {}
    except ValueError as exc:
        raise M3OError("go.micro.client", 500, f"invalid character in request: {exc}") from None
    with contextlib.suppress(ValueError):
        return _strict(raw, kinds, message)
    if not isinstance(raw, dict):
        raise M3OError(
            "go.micro.client",
            500,
            f"json: cannot unmarshal {_go_type(raw)} into Go value of type"
            " map[string]interface {}",
        )
    out: dict[str, Any] = {}
    for name, kind in kinds.items():
        if name not in raw:
            continue
        value = raw[name]
        go_kind = _GO_KIND[kind]
        if isinstance(value, str):
            if kind == "s":
                out[name] = value
            elif kind == "b":
                if value not in _PARSE_BOOL:
                    raise M3OError(
                        "go.micro.client",
                        500,
                        f'strconv.ParseBool: parsing "{value}": invalid syntax',
                    )
                out[name] = _PARSE_BOOL[value]
            else:  # a string for a repeated field: base64, then SetBytes on []string panics
                with contextlib.suppress(ValueError):
                    base64.b64decode(value, validate=True)
                raise M3OError(
                    "chat",
                    500,
                    "panic recovered: reflect: call of reflect.Value.SetBytes on slice Value",
                )
        elif kind == "b" and isinstance(value, bool):
            out[name] = value
        elif value is None:
            raise M3OError(
                "chat", 500, "panic recovered: reflect: call of reflect.Value.Set on zero Value"
            )
        else:
            raise M3OError(
                "chat",
                500,
                f"panic recovered: reflect.Set: value of type {_go_type(value)} "
                f"is not assignable to type {go_kind}",
            )
    return out


@dataclass
class Recorded:
    """One request as the stand-in received it."""

    transport: Literal["http", "ws"]
    method: str
    path: str
    #: the endpoint the path names (case-insensitively), or None for another path.
    endpoint: str | None
    #: header names lowercased; Authorization included (this is a test server).
    headers: dict[str, str]
    #: the body (the first frame of a WebSocket) decoded as JSON, else the raw text.
    body: Any
    raw: bytes
    status: int = 0
    #: the accepted token it came with (None when refused): which tenant, so which test.
    token: str | None = None


@dataclass
class _Subscriber:
    user_id: str
    #: frames to send; None ends the stream (``M3OStandIn.drop_streams``).
    queue: asyncio.Queue[str | None] = field(default_factory=asyncio.Queue)


@dataclass
class _Tenant:
    groups: dict[str, dict[str, Any]] = field(default_factory=dict)
    messages: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    #: (group id, user id) -> that user's streams, which share one queue: round robin.
    consumers: dict[tuple[str, str], list[_Subscriber]] = field(default_factory=dict)
    turn: dict[tuple[str, str], int] = field(default_factory=dict)


def _message_frame(msg: dict[str, Any], noun: str) -> str:
    # jsonpb (EmitDefaults, OrigName): proto field order, compact.
    order = ("id", "client", f"{noun}_id", "user_id", "sent_at", "subject", "text")
    return json.dumps({"message": {k: msg[k] for k in order}}, separators=(",", ":"))


class M3OChat:
    """m3o's chat handler (one edition's names), over an in-memory store."""

    def __init__(self, edition: Edition) -> None:
        self.noun = edition
        self.kinds = _requests(edition)
        self.tenants: dict[str, _Tenant] = {}

    def tenant(self, key: str) -> _Tenant:
        return self.tenants.setdefault(key, _Tenant())

    def _group(self, t: _Tenant, gid: str, endpoint_id: str) -> dict[str, Any]:
        group = t.groups.get(gid)
        if group is None:
            raise _bad(endpoint_id, f"{self.noun} not found")
        return group

    def _need(self, req: dict[str, Any], id: str, *names: str) -> None:
        for name in names:
            if not req.get(name):
                raise _bad(id, f"missing {name.replace('_id', ' id')}")

    def call(self, tenant: str, endpoint: str, req: dict[str, Any]) -> dict[str, Any]:
        t = self.tenant(tenant)
        nid = f"{self.noun}_id"
        eid = f"chat.{endpoint.lower()}"
        if endpoint == "Create":
            group = {
                "id": str(uuid.uuid4()),
                "name": req.get("name", ""),
                "description": req.get("description", ""),
                "created_at": rfc3339nano(),
                "user_ids": list(req.get("user_ids") or []),
                "private": bool(req.get("private", False)),
            }
            t.groups[group["id"]] = group
            t.messages[group["id"]] = {}
            return {self.noun: dict(group)}
        if endpoint == "List":
            user = req.get("user_id", "")
            found = [
                dict(g) for _, g in sorted(t.groups.items()) if not user or user in g["user_ids"]
            ]
            return {f"{self.noun}s": found}
        if endpoint in ("Delete", "History"):
            self._need(req, eid, nid)
            group = self._group(t, req[nid], eid)
            if endpoint == "History":
                msgs = t.messages[group["id"]]
                return {"messages": [dict(msgs[k]) for k in sorted(msgs)]}
            del t.groups[group["id"]]
            del t.messages[group["id"]]
            return {self.noun: dict(group)}
        if endpoint in ("Invite", "Kick", "Leave"):
            self._need(req, eid, nid, "user_id")
            group = self._group(t, req[nid], eid)
            user = req["user_id"]
            if endpoint == "Invite":
                if user not in group["user_ids"]:
                    group["user_ids"].append(user)
            else:
                group["user_ids"] = [u for u in group["user_ids"] if u != user]
            return {self.noun: dict(group, user_ids=list(group["user_ids"]))}
        if endpoint == "Send":
            self._need(req, eid, nid, "user_id", "text")
            group = self._group(t, req[nid], eid)
            if req["user_id"] not in group["user_ids"]:
                raise _bad(eid, f"user is not in the {self.noun}")
            msg = {
                "id": str(uuid.uuid4()),
                "client": req.get("client") or str(uuid.uuid4()),
                nid: group["id"],
                "user_id": req["user_id"],
                "sent_at": rfc3339nano(),
                "subject": req.get("subject", ""),
                "text": req["text"],
            }
            self._publish(t, group["id"], msg)
            t.messages[group["id"]][msg["id"]] = msg
            return {"message": dict(msg)}
        raise AssertionError(endpoint)

    def join(self, tenant: str, req: dict[str, Any]) -> _Subscriber:
        """Validate, add the joiner, and subscribe it (one step: nothing sent meanwhile)."""
        t = self.tenant(tenant)
        nid = f"{self.noun}_id"
        # m3o's Join reported its two validation errors with Send's id.
        self._need(req, "chat.send", nid, "user_id")
        group = self._group(t, req[nid], "chat.join")
        if req["user_id"] not in group["user_ids"]:
            group["user_ids"].append(req["user_id"])
        sub = _Subscriber(req["user_id"])
        t.consumers.setdefault((group["id"], sub.user_id), []).append(sub)
        return sub

    def leave_stream(self, tenant: str, gid: str, sub: _Subscriber) -> None:
        subs = self.tenant(tenant).consumers.get((gid, sub.user_id), [])
        if sub in subs:
            subs.remove(sub)

    def _publish(self, t: _Tenant, gid: str, msg: dict[str, Any]) -> None:
        frame = _message_frame(msg, self.noun)
        for (group_id, user), subs in t.consumers.items():
            if group_id != gid or not subs or user == msg["user_id"]:
                continue
            turn = t.turn.get((group_id, user), 0)
            subs[turn % len(subs)].queue.put_nowait(frame)
            t.turn[(group_id, user)] = turn + 1


class M3OStandIn:
    """The ASGI app: micro's gateway in front of :class:`M3OChat`."""

    def __init__(self, edition: Edition, *, cors: bool = True) -> None:
        self.edition = edition
        self.chat = M3OChat(edition)
        #: accepted tokens, each its own tenant; added by ``StandInServer.tenant()``.
        self.tokens: set[str] = set()
        self.cors = cors
        self.requests: list[Recorded] = []
        #: Test control: while cleared, a Join WebSocket that sent its request waits
        #: before it is subscribed, as m3o's gateway and service may take a while to.
        self.join_gate = threading.Event()
        self.join_gate.set()
        self._loop: asyncio.AbstractEventLoop | None = None

    def drop_streams(self, token: str) -> int:
        """Test control: end every live Join WebSocket of a token's tenant, as a gateway
        going away would (close 1001); the number ended."""
        t = self.chat.tenant(token)
        subs = [sub for subs in t.consumers.values() for sub in subs]
        loop = self._loop
        if loop is not None:
            for sub in subs:
                loop.call_soon_threadsafe(sub.queue.put_nowait, None)
        return len(subs)

    # -- the gateway's parts ------------------------------------------------------------

    def _tenant(self, authorization: str | None, offered: list[str]) -> str | None:
        token = None
        if authorization and authorization.startswith("Bearer "):
            token = authorization[len("Bearer ") :]
        for candidate in offered:
            if token is None and candidate in self.tokens:
                token = candidate
        return token if token in self.tokens else None

    def _cors(self, headers: dict[str, str]) -> list[tuple[bytes, bytes]]:
        if not self.cors:
            return []
        origin = headers.get("origin") or "*"
        return [
            (b"access-control-allow-origin", origin.encode("latin-1")),
            (b"access-control-allow-credentials", b"true"),
            (b"access-control-allow-methods", CORS_METHODS.encode()),
            (b"access-control-allow-headers", CORS_HEADERS.encode()),
        ]

    @staticmethod
    def _endpoint(path: str) -> str | None:
        lowered = path.lower()
        if not lowered.startswith("/v1/chat/"):
            return None
        name = lowered[len("/v1/chat/") :]
        return next((e for e in ENDPOINT_NAMES if e.lower() == name), None)

    def _record(
        self,
        transport: Literal["http", "ws"],
        method: str,
        path: str,
        headers: dict[str, str],
        raw: bytes,
        token: str | None = None,
    ) -> Recorded:
        try:
            body: Any = json.loads(raw) if raw.strip() else None
        except ValueError:
            body = raw.decode("utf-8", "replace")
        endpoint = self._endpoint(path)
        rec = Recorded(transport, method, path, endpoint, headers, body, raw, token=token)
        self.requests.append(rec)
        return rec

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self._loop = asyncio.get_running_loop()
        if scope["type"] == "http":
            await self._http(scope, receive, send)
        elif scope["type"] == "websocket":
            await self._websocket(WebSocket(scope, receive, send))

    # -- unary calls (and Join without an upgrade) --------------------------------------

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive)
        headers = {k.lower(): v for k, v in request.headers.items()}
        try:
            raw = await request.body()
        except ClientDisconnect:
            return
        tenant = self._tenant(headers.get("authorization"), [])
        rec = self._record("http", request.method, scope["path"], headers, raw, tenant)
        cors = self._cors(headers)

        async def answer(status: int, body: bytes, content_type: str | None) -> None:
            rec.status = status
            extra = (
                [] if content_type is None else [(b"content-type", content_type.encode("latin-1"))]
            )
            await Response(body, status)(scope, receive, _with_headers(send, cors + extra))

        if request.method == "OPTIONS" and self.cors:
            await answer(200, b"", None)
            return
        if tenant is None:
            await answer(401, b"unauthorized request\n", "text/plain; charset=utf-8")
            return
        endpoint = rec.endpoint
        if endpoint is None:
            no_api = M3OError("v1", 404, "No such API")
            await answer(404, no_api.encoded(), "application/json")
            return
        message = f"chat.{endpoint}Request"
        try:
            if endpoint == "Join":
                req = _strict_or_500(raw, self.chat.kinds["Join"], message)
                sub = self.chat.join(tenant, req)
            else:
                req = decode_unary(raw, self.chat.kinds[endpoint], message)
                result = self.chat.call(tenant, endpoint, req)
        except M3OError as err:
            await answer(err.code, err.encoded(), "application/json")
            return
        if endpoint == "Join":
            await self._join_http(scope, receive, send, tenant, req, sub, cors, rec)
            return
        # The gateway decoded the service's answer into a Go map and encoded it again:
        # keys sorted, no HTML escaping, the request's Content-Type echoed.
        body = json.dumps(result, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        await answer(200, body.encode(), headers.get("content-type", ""))

    async def _join_http(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        tenant: str,
        req: dict[str, Any],
        sub: _Subscriber,
        cors: list[tuple[bytes, bytes]],
        rec: Recorded,
    ) -> None:
        """Join over plain HTTP: the frames back to back, no delimiter, until the client goes."""
        rec.status = 200
        gid = req[f"{self.edition}_id"]
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [*cors, (b"content-type", b"application/json")],
            }
        )
        gone = asyncio.ensure_future(_wait_disconnect(receive))
        try:
            while not gone.done():
                getter = asyncio.ensure_future(sub.queue.get())
                await asyncio.wait({getter, gone}, return_when=asyncio.FIRST_COMPLETED)
                if not getter.done():
                    getter.cancel()
                    break
                frame = getter.result()
                if frame is None:
                    break
                chunk = {"type": "http.response.body", "body": frame.encode(), "more_body": True}
                await send(chunk)
        except OSError:
            pass
        finally:
            gone.cancel()
            self.chat.leave_stream(tenant, gid, sub)
        with contextlib.suppress(Exception):
            await send({"type": "http.response.body", "body": b"", "more_body": False})

    # -- Join over WebSocket ------------------------------------------------------------

    async def _websocket(self, ws: WebSocket) -> None:
        headers = {k.lower(): v for k, v in ws.headers.items()}
        offered = list(ws.scope.get("subprotocols") or [])
        tenant = self._tenant(headers.get("authorization"), offered)
        path = ws.scope["path"]
        if tenant is None or self._endpoint(path) != "Join":
            self._record("ws", "GET", path, headers, b"", tenant)
            status = 401 if tenant is None else 404
            body = (
                b"unauthorized request\n"
                if tenant is None
                else M3OError("v1", 404, "No such API").encoded()
            )
            await ws.send_denial_response(
                Response(body, status, headers=_header_dict(self._cors(headers)))
            )
            return
        # The gateway echoed what was offered (one value here: ASGI takes one).
        await ws.accept(subprotocol=offered[0] if offered else None)
        first = await ws.receive()
        if first["type"] == "websocket.disconnect":
            self._record("ws", "GET", path, headers, b"", tenant)
            return
        raw = first.get("bytes") or (first.get("text") or "").encode()
        rec = self._record("ws", "GET", path, headers, raw, tenant)
        rec.status = 101
        if len(raw) > MAX_CLIENT_FRAME:
            await ws.close(1009)
            return
        while not self.join_gate.is_set():
            await asyncio.sleep(0.01)
        try:
            req = _strict_or_500(raw, self.chat.kinds["Join"], "chat.JoinRequest")
            sub = self.chat.join(tenant, req)
        except M3OError as err:
            await ws.send_text(err.encoded().decode())
            return  # no close frame: uvicorn drops the connection, as m3o's gateway did
        gid = req[f"{self.edition}_id"]

        dropped = False

        async def pump() -> None:
            nonlocal dropped
            while (frame := await sub.queue.get()) is not None:
                await ws.send_text(frame)
            dropped = True

        async def drain() -> None:
            # Later frames went to the service's stream, which Join never read.
            while (await ws.receive())["type"] != "websocket.disconnect":
                pass

        tasks = {asyncio.ensure_future(pump()), asyncio.ensure_future(drain())}
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            self.chat.leave_stream(tenant, gid, sub)
        with contextlib.suppress(Exception):
            await ws.close(1001 if dropped else 1000)


def _strict_or_500(raw: bytes, kinds: _Kinds, message: str) -> dict[str, Any]:
    """A stream's request: jsonpb strictly, through gRPC's codec error and micro's client."""
    text = raw.decode("utf-8", "replace")
    try:
        return _strict(json.loads(text) if text.strip() else {}, kinds, message)
    except ValueError as exc:
        raise M3OError(
            "go.micro.client",
            500,
            "rpc error: code = Internal desc = grpc: failed to unmarshal the received message "
            + str(exc),
        ) from None


async def _wait_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


def _header_dict(pairs: list[tuple[bytes, bytes]]) -> dict[str, str]:
    return {k.decode(): v.decode("latin-1") for k, v in pairs}


def _with_headers(send: Send, extra: list[tuple[bytes, bytes]]) -> Send:
    async def wrapped(message: Any) -> None:
        if message["type"] == "http.response.start":
            kept = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"content-type"]
            message = dict(message, headers=kept + extra)
        await send(message)

    return wrapped


# -- running one ------------------------------------------------------------------------


@dataclass
class StandInServer:
    """A stand-in on a real socket, serving from a thread; tests each get a tenant of it."""

    edition: Edition
    url: str
    app: M3OStandIn
    server: uvicorn.Server
    thread: threading.Thread

    def tenant(self, token: str | None = None) -> RunningStandIn:
        """A fresh token, so a tenant of its own: other tests' rooms, streams and requests
        are invisible to it, even when they come late."""
        token = token or f"m3o-{self.edition}-{uuid.uuid4().hex[:12]}"
        self.app.tokens.add(token)
        return RunningStandIn(self, token, len(self.app.requests))

    def stop(self) -> None:
        # force_exit: drop what is still open (streams, kept-alive connections) at once
        # instead of waiting for it, as a server that goes away would.
        self.server.should_exit = self.server.force_exit = True
        self.thread.join(10)


@dataclass
class RunningStandIn:
    """What the fixtures yield: one tenant (token) of a running stand-in."""

    host: StandInServer
    token: str
    #: requests recorded before this index are not this view's (see ``forget_requests``).
    start: int = 0

    @property
    def edition(self) -> Edition:
        return self.host.edition

    @property
    def url(self) -> str:
        return self.host.url

    @property
    def ws_url(self) -> str:
        return "ws" + self.url[len("http") :]

    @property
    def app(self) -> M3OStandIn:
        return self.host.app

    @property
    def requests(self) -> list[Recorded]:
        """Every request that came with this view's token, in order."""
        return [r for r in self.host.app.requests[self.start :] if r.token == self.token]

    def forget_requests(self) -> None:
        """From now on, ``requests`` starts empty (after a test's own set-up calls)."""
        self.start = len(self.host.app.requests)

    def sent(self, endpoint: str) -> list[Any]:
        """The bodies of every request that reached ``endpoint``, in order."""
        return [r.body for r in self.requests if r.endpoint == endpoint]

    def call(self, endpoint: str, body: dict[str, Any]) -> dict[str, Any]:
        """Set-up helper: one call with the token; raises on an error answer."""
        with httpx.Client(timeout=10) as c:
            r = c.post(
                f"{self.url}/v1/chat/{endpoint}",
                json=body,
                headers={"Authorization": f"Bearer {self.token}"},
            )
        r.raise_for_status()
        data: dict[str, Any] = r.json()
        return data


def start_standin(edition: Edition, *, cors: bool = True) -> StandInServer:
    app = M3OStandIn(edition, cors=cors)
    port = free_port()
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=port,
        log_level="warning",
        loop="asyncio",
        lifespan="off",
        ws="websockets-sansio",
        ws_per_message_deflate=False,
        ws_ping_interval=15.0,
        ws_ping_timeout=60.0,
        # A plain-HTTP Join streams until the client goes: do not wait for it on stop.
        timeout_graceful_shutdown=1,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_for(lambda: server.started or not thread.is_alive(), 10, "the m3o stand-in to start")
    assert server.started, "the m3o stand-in did not start"
    return StandInServer(edition, f"http://127.0.0.1:{port}", app, server, thread)


@contextlib.contextmanager
def running_standin(edition: Edition, **options: Any) -> Iterator[RunningStandIn]:
    """A stand-in of its own (e.g. ``cors=False``), stopped after; yields one tenant."""
    host = start_standin(edition, **options)
    try:
        yield host.tenant()
    finally:
        host.stop()
