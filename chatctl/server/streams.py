"""The Join stream, over a WebSocket (m3o's) and over NDJSON (a plain ``POST``).

Both do the same: admit the Join (``rules.ChatService.join``), subscribe to the hub before
awaiting anything else (so a message stored meanwhile is in the live queue, at worst
twice, never missing), replay what was asked (``since``, ``history``), then write each
live frame until the stream ends: kicked, room deleted, too slow, shutdown (a final frame
and a close code, ``hub.StreamEnded``) or the client gone.

WebSocket specifics: the token may come as the ``Authorization`` header or as an offered
subprotocol (browsers cannot set headers); the request is the first frame, within
``ServerConfig.join_request_timeout`` (else close 4408); a refusal is one error frame and a
close with 4000 + its status. Keep-alive pings are uvicorn's (``protocol.uvicorn_config``).
A WebSocket from a browser origin the server does not allow (``cors``) is refused with 403
before the upgrade.

A JoinRequest naming ``group_id`` is a stream of m3o's group edition (``editions``): its
frames carry ``group_id`` (renamed once per frame by the hub, per frame of a replay here),
and its refusals and final frames are worded in it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

from starlette.responses import Response
from starlette.types import Receive, Scope, Send
from starlette.websockets import WebSocket, WebSocketDisconnect

from chatctl.server.domain import Refused, Unavailable
from chatctl.server.edge import (
    CHAT_PREFIX,
    EDITION,
    JOIN,
    Edge,
    Refusal,
    bearer,
    no_such_api,
    origin_refused,
    parse_json,
    worded_for,
)
from chatctl.server.edge import validate as validate_request
from chatctl.server.editions import GROUP, ROOM, Edition, end_frame_in, request_edition
from chatctl.server.hub import StreamEnded, Subscriber
from chatctl.server.rules import Admission
from chatctl.wire import close_code_for, encode, group_wording, in_group_edition

__all__ = ["RAW_SEND", "JoinStreams"]

#: scope key under which the access log leaves the server's own send for the Join writer.
RAW_SEND = "chatctl.raw_send"

Write = Callable[[str], Awaitable[None]]


class JoinStreams:
    """The Join streams of one server: admitted by its rules, fed by its hub."""

    def __init__(self, edge: Edge) -> None:
        self.edge = edge
        self.config = edge.config
        self.service = edge.service
        self.hub = edge.hub

    async def admit(
        self, identity: str, req: dict[str, str], edition: Edition = ROOM
    ) -> tuple[Admission, Subscriber]:
        try:
            admission = await self.service.join(identity, req)
        except (Refused, Unavailable) as exc:
            raise Refusal.of(JOIN.id, exc) from None
        # Subscribe before anything is replayed (and before any await), so a message
        # stored meanwhile is in the live queue, at worst twice, never missing.
        sub = self.hub.subscribe(
            identity,
            admission.room.id,
            admission.user_id,
            admission.events,
            admission.include_own,
            owner=identity,
            group=edition == GROUP,
        )
        return admission, sub

    async def run(self, admission: Admission, sub: Subscriber, write: Write) -> None:
        """Replay, then go live, until the stream ends; raises StreamEnded at the end."""
        last = 0
        try:
            async for chunk in self.service.replay(admission):
                for _seq, frame in chunk:
                    await write(in_group_edition(frame) if sub.group else frame)
                last = chunk[-1][0]
                if sub.ended:
                    break  # kicked, deleted or too slow meanwhile: stop replaying
            while True:
                for seq, frame in await sub.next_batch():
                    # seq 0 is an event; a message at or before `last` was replayed.
                    if seq and seq <= last:
                        continue
                    await write(frame)
        finally:
            self.hub.unsubscribe(sub)

    # -- NDJSON -------------------------------------------------------------------------

    async def ndjson(self, identity: str, req: dict[str, str], edition: Edition) -> Response:
        admission, sub = await self.admit(identity, req, edition)
        return _NDJSONStream(self, admission, sub)

    # -- WebSocket ----------------------------------------------------------------------

    async def websocket(self, ws: WebSocket) -> None:
        edge = self.edge
        origin = ws.headers.get("origin")
        if not edge.origins.origin_allowed(origin, open_server=self.config.open, websocket=True):
            # Before the upgrade: uvicorn answers the handshake 403, and the page's
            # WebSocket fails without ever opening.
            await ws.close(1008, origin_refused(origin or ""))
            return
        identity = edge.authenticate(bearer(ws.headers.get("authorization")))
        offered: list[str] = list(ws.scope.get("subprotocols") or [])
        subprotocol = None
        if offered:
            if self.config.open:
                # A browser fails the handshake unless one offered protocol is chosen.
                subprotocol = offered[0]
            elif identity is None:
                for candidate in offered:
                    identity = edge.authenticate(candidate)
                    if identity is not None:
                        subprotocol = candidate
                        break
        await ws.accept(subprotocol=subprotocol)
        try:
            if ws.scope["path"].lower() != CHAT_PREFIX + "join":
                raise no_such_api()
            if identity is None:
                raise Refusal("v1", 401, "Unauthorized")
            try:
                first = await asyncio.wait_for(ws.receive(), self.config.join_request_timeout)
            except TimeoutError:
                raise Refusal(
                    "v1",
                    408,
                    f"no Join request within {self.config.join_request_timeout:g} seconds;"
                    " send the JoinRequest as the first frame",
                ) from None
            if first["type"] == "websocket.disconnect":
                return
            raw = first.get("text")
            if raw is None:
                raw = first.get("bytes") or b""
            body = parse_json(raw, self.config.limits.max_body_bytes)
            edition = request_edition(JOIN, body, edge.edition)
            ws.scope[EDITION] = edition
            req = validate_request(JOIN, body, self.config, raw)
            admission, sub = await self.admit(identity, req, edition)
        except Refusal as refusal:
            refusal = worded_for(refusal, ws.scope)
            with contextlib.suppress(WebSocketDisconnect, RuntimeError):
                await ws.send_text(encode(refusal.body()))
                await ws.close(close_code_for(refusal.code), refusal.detail[:120])
            return
        except WebSocketDisconnect:
            return
        raw_send: Send | None = ws.scope.get(RAW_SEND)
        write: Write = ws.send_text
        if raw_send is not None:
            # Frames go straight to the server's send: Starlette's WebSocket and exception
            # wrappers add a few calls per frame, and a fan-out multiplies them by every
            # stream of the room. accept() and close() still go through Starlette.
            async def write(frame: str) -> None:
                await raw_send({"type": "websocket.send", "text": frame})

        watcher = asyncio.create_task(_watch_disconnect(ws, sub))
        try:
            await self.run(admission, sub, write)
        except StreamEnded as end:
            if end.code is not None:
                with contextlib.suppress(WebSocketDisconnect, RuntimeError):
                    if end.frame:
                        await ws.send_text(end_frame_in(_edition_of(sub), end.frame))
                    reason = group_wording(end.reason) if sub.group else end.reason
                    await ws.close(end.code, reason[:120])
        except Unavailable as exc:
            await _end_unavailable(ws, exc)
        except (WebSocketDisconnect, OSError):
            pass  # the client went away (uvicorn's ClientDisconnected is an OSError)
        finally:
            watcher.cancel()


def _edition_of(sub: Subscriber) -> Edition:
    return GROUP if sub.group else ROOM


async def _end_unavailable(ws: WebSocket, exc: Unavailable) -> None:
    """The replay could not be read: the stream ends as a call would have (503), and the
    client resumes with ``since``."""
    refusal = Refusal.of(JOIN.id, exc)
    with contextlib.suppress(WebSocketDisconnect, RuntimeError, OSError):
        await ws.send_text(encode(refusal.body()))
        await ws.close(close_code_for(refusal.code), refusal.detail[:120])


async def _watch_disconnect(ws: WebSocket, sub: Subscriber) -> None:
    """Read (and ignore) what the client sends, to learn at once when it goes away."""
    with contextlib.suppress(Exception):
        while True:
            message = await ws.receive()
            if message["type"] == "websocket.disconnect":
                break
    sub.end(StreamEnded(None))


class _NDJSONStream(Response):
    """A Join stream as newline-delimited JSON: one JoinResponse per line, sent as it comes."""

    media_type = "application/x-ndjson"

    def __init__(self, streams: JoinStreams, admission: Admission, sub: Subscriber) -> None:
        super().__init__(status_code=200, media_type=self.media_type)
        # Streamed: no Content-Length; and ask proxies not to buffer lines.
        self.raw_headers = [
            (b"content-type", b"application/x-ndjson"),
            (b"cache-control", b"no-cache"),
            (b"x-accel-buffering", b"no"),
        ]
        self.streams = streams
        self.admission = admission
        self.sub = sub

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        sub = self.sub

        async def watch() -> None:
            with contextlib.suppress(Exception):
                while (await receive())["type"] != "http.disconnect":
                    pass
            sub.end(StreamEnded(None))

        async def write(frame: str) -> None:
            await send(
                {"type": "http.response.body", "body": (frame + "\n").encode(), "more_body": True}
            )

        watcher = asyncio.create_task(watch())
        try:
            await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
            try:
                await self.streams.run(self.admission, sub, write)
            except StreamEnded as end:
                if end.code is not None and end.frame:
                    await write(end_frame_in(_edition_of(sub), end.frame))
            except Unavailable as exc:
                await write(encode(Refusal.of(JOIN.id, exc).body()))
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except OSError:
            pass  # the client went away mid-write
        finally:
            watcher.cancel()
            self.streams.hub.unsubscribe(sub)
