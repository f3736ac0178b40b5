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
before the upgrade, its body m3o's error object naming the ``--cors-origin`` to give. A
Join offering subprotocols gets one back even when none is a token the server accepts
(the first offered), so a browser completes the handshake and reads the 401 frame.

A JoinRequest naming ``group_id`` is a stream of m3o's group edition (``editions``): its
frames carry ``group_id`` (renamed once per frame by the hub, per frame of a replay here),
and its refusals and final frames are worded in it.

A stream of many rooms (``JoinRooms``, the ``join-rooms`` extension) is one connection
for all of them, counted once against the token's cap: a ``{"room_added": ...}`` frame
for each room (with the cursor a resume of it starts from until a message of it came),
then that room's replay; then the live frames of every room, a room let into meanwhile
(``all``) announced the same way and a room that ends for the user (kicked, left,
deleted, or refused at the start) said with ``{"room_ended": ...}`` while the others go
on. A full queue ends the whole stream with 4008, like a Join's; the client resumes every
room with its own cursor (``since_ids``).

Tokens: a Join is decoded as every request is (``decode.decode``: a user token's request
is bound to its user before it is validated); each stream counts against its token's cap
(``--max-streams-per-token``: one more is 429, close 4429 on a WebSocket) until it ends;
a subscriber's ``owner`` is its token's id, so a revoked token's streams can be ended
(``hub.Hub.end_tokens``, close 4401).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.responses import Response
from starlette.types import Receive, Scope, Send
from starlette.websockets import WebSocket, WebSocketDisconnect

from chatctl.ids import time_ns
from chatctl.schema import Endpoint
from chatctl.server.decode import Refusal, decode, no_such_api
from chatctl.server.domain import REFUSALS, Refused, Unavailable
from chatctl.server.edge import CHAT_PREFIX, JOIN, JOIN_ROOMS, Edge, bearer, origin_refused
from chatctl.server.editions import GROUP, ROOM, Edition, end_frame_in, worded_in
from chatctl.server.hub import ADDED, ENDED, RoomsSubscriber, StreamEnded, Subscriber
from chatctl.server.logline import PRINCIPAL, stream_opened
from chatctl.server.ratelimit import StreamCounter, over_stream_cap, share
from chatctl.server.rules import Admission, RoomsAdmission
from chatctl.server.tokens import Principal
from chatctl.wire import encode, in_group_edition, uuid7_floor

__all__ = ["RAW_SEND", "REVOKED", "JoinStreams"]

#: scope key under which the access log leaves the server's own send for the Join writer.
RAW_SEND = "chatctl.raw_send"

Write = Callable[[str], Awaitable[None]]
#: a stream admitted: what writes it out until it ends, and what lets it go.
Runner = Callable[[Write], Awaitable[None]]

JSON = "application/json"

#: how a revoked token's streams end: a final error frame, then close 4401.
REVOKED = "token revoked"


class JoinStreams:
    """The Join streams of one server: admitted by its rules, fed by its hub."""

    def __init__(self, edge: Edge) -> None:
        self.edge = edge
        self.config = edge.config
        self.service = edge.service
        self.hub = edge.hub
        #: open streams per token, capped at ``--max-streams-per-token`` (this replica's
        #: share of it: ``ratelimit.share``).
        cap = self.config.max_streams_per_token
        self.counter = StreamCounter(None if cap is None else share(cap, self.config.replicas))
        #: the subscribers counted in ``counter`` (each released once).
        self._counted: set[Subscriber | RoomsSubscriber] = set()
        #: when each stream not yet running was admitted, as a cursor (``run``).
        self._admitted_at: dict[Subscriber, str] = {}

    async def admit(
        self, principal: Principal, req: dict[str, str], edition: Edition = ROOM
    ) -> tuple[Admission, Subscriber]:
        """Admit a Join (counted against its token's cap) and subscribe it; raises
        Refusal (nothing counted, worded in ``edition``) when it is refused."""
        token_id = principal.token_id
        if not self.counter.open(token_id):
            REFUSALS["stream_cap"] += 1
            cap = self.config.max_streams_per_token or 0
            raise Refusal("v1", 429, over_stream_cap(cap), edition=edition)
        admitted_at = uuid7_floor(time.time_ns() // 1_000_000)
        try:
            admission = await self.service.join(principal.tenant, req)
        except (Refused, Unavailable) as exc:
            self.counter.close(token_id)
            raise Refusal.of(JOIN.id, exc, edition, stream=True) from None
        except BaseException:
            self.counter.close(token_id)
            raise
        # Subscribe before anything is replayed (and before any await), so a message
        # stored meanwhile is in the live queue, at worst twice, never missing.
        sub = self.hub.subscribe(
            principal.tenant,
            admission.room.id,
            admission.user_id,
            admission.events,
            admission.include_own,
            owner=token_id,
            group=edition == GROUP,
        )
        self._counted.add(sub)
        self._admitted_at[sub] = admitted_at
        if not self.edge.still_accepted(principal):
            # Revoked while the Join was being admitted: the reload ended the token's
            # streams before this one was among them, so it is refused here, before it
            # replays anything.
            self.release(sub)
            raise Refusal("v1", 401, "Unauthorized", edition=edition)
        return admission, sub

    def release(self, sub: Subscriber | RoomsSubscriber) -> None:
        """The stream ended: off the hub, and no longer counted against its token."""
        if isinstance(sub, RoomsSubscriber):
            sub.release()
        else:
            self.hub.unsubscribe(sub)
            self._admitted_at.pop(sub, None)
        if sub in self._counted:
            self._counted.discard(sub)
            self.counter.close(sub.owner)

    async def run(self, admission: Admission, sub: Subscriber, write: Write) -> None:
        """Replay, then go live, until the stream ends; raises StreamEnded at the end."""
        last = 0
        try:
            # Heard before the replay is read: what is stored after its read comes live.
            admitted_at = self._admitted_at.pop(sub, "")
            if await self.hub.hearing(sub) and not _replays(admission) and admitted_at:
                # Live from the Join: what was stored while the room was not yet heard.
                admission = await self.service.from_cursor(admission, admitted_at)
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
            self.release(sub)

    # -- many rooms -----------------------------------------------------------------------

    async def admit_rooms(
        self, principal: Principal, req: dict[str, Any], edition: Edition = ROOM
    ) -> tuple[RoomsAdmission, RoomsSubscriber]:
        """Admit a stream of many rooms (counted once against its token's cap): its user's
        new rooms watched first (with ``all``), then each room admitted and tapped."""
        token_id = principal.token_id
        if not self.counter.open(token_id):
            cap = self.config.max_streams_per_token or 0
            raise Refusal("v1", 429, over_stream_cap(cap), edition=edition)
        stream = self.hub.subscribe_rooms(
            principal.tenant,
            req["user_id"],
            bool(req["events"]),
            bool(req["include_own"]),
            owner=token_id,
            group=edition == GROUP,
            every_room=bool(req["all"]),
            max_rooms=self.config.limits.max_rooms_per_tenant,
        )
        self._counted.add(stream)
        #: a room without a cursor resumes from here (before it was tapped).
        stream.since = uuid7_floor(time.time_ns() // 1_000_000)
        try:
            # The rooms the user is let into from here on are heard before the rooms
            # they are in are read.
            await self.hub.hearing_user(stream)
            admission = await self.service.join_rooms(principal.tenant, req)
        except (Refused, Unavailable) as exc:
            self.release(stream)
            raise Refusal.of(JOIN_ROOMS.id, exc, edition, stream=True) from None
        except BaseException:
            self.release(stream)
            raise
        for room in admission.rooms:  # no await since the admission: nothing missed
            stream.tap(room.room.id)
        if not self.edge.still_accepted(principal):
            self.release(stream)
            raise Refusal("v1", 401, "Unauthorized", edition=edition)
        return admission, stream

    async def run_rooms(
        self, admission: RoomsAdmission, stream: RoomsSubscriber, write: Write
    ) -> None:
        """Each room announced and replayed, then the live frames of all of them, until
        the stream ends; raises StreamEnded at the end."""
        last: dict[str, int] = {}
        announced: set[str] = set()

        def news(frame: dict[str, Any]) -> str:
            text = encode(frame)
            return in_group_edition(text) if stream.group else text

        def over() -> None:
            if not stream.taps and not stream.every_room:
                raise StreamEnded(1000, reason="no rooms left")

        try:
            for room_id, refused in admission.refused:
                refusal = Refusal.of(JOIN.id, refused)
                await write(news(_room_ended(room_id, refusal.close_code, refusal.detail)))
            for room in admission.rooms:
                row = room.room
                if row.id not in stream.taps or row.id in announced:
                    continue  # ended meanwhile
                announced.add(row.id)
                await write(news(_room_added(row.id, row.name, room.since or stream.since)))
                # Heard before its replay is read (as a Join's): what is stored after
                # comes live; what was stored before, while it was not, is replayed.
                if await self.hub.hearing(stream.taps[row.id]) and not _replays(room):
                    room = await self.service.from_cursor(room, stream.since)
                async for chunk in self.service.replay(room):
                    for _seq, frame in chunk:
                        await write(in_group_edition(frame) if stream.group else frame)
                    last[row.id] = chunk[-1][0]
                    if stream.ended:
                        break
                if stream.ended:
                    break
            over()
            while True:
                for room_id, seq, frame in await stream.next_batch():
                    if seq == ADDED:
                        if room_id in announced:
                            continue
                        new = await self.service.room(stream.tenant, room_id)
                        if new is None:
                            continue  # deleted meanwhile: its end comes next
                        announced.add(room_id)
                        at = uuid7_floor((time_ns(frame) or time.time_ns()) // 1_000_000)
                        await write(news(_room_added(new.id, new.name, at, new=True)))
                        tap = stream.taps.get(room_id)
                        if tap is not None and await self.hub.hearing(tap):
                            # Tapped when the user was let in, heard only now: what was
                            # stored since then reached it by no notification.
                            added = Admission(new, stream.user_id, stream.events, None, 0)
                            added = await self.service.from_cursor(added, at)
                            async for chunk in self.service.replay(added):
                                for seq, message in chunk:
                                    if seq > last.get(room_id, 0):
                                        await write(
                                            in_group_edition(message) if stream.group else message
                                        )
                                last[room_id] = max(last.get(room_id, 0), chunk[-1][0])
                    elif seq == ENDED:
                        announced.discard(room_id)
                        last.pop(room_id, None)
                        code, _, reason = frame.partition(" ")
                        await write(news(_room_ended(room_id, int(code), reason)))
                        over()
                    elif not seq or seq > last.get(room_id, 0):
                        await write(frame)  # seq 0 is an event; a replayed one is skipped
        finally:
            self.release(stream)

    # -- NDJSON -------------------------------------------------------------------------

    async def ndjson(
        self, principal: Principal, req: dict[str, Any], edition: Edition, endpoint: Endpoint
    ) -> Response:
        if endpoint is JOIN_ROOMS:
            rooms, many = await self.admit_rooms(principal, req, edition)
            return _NDJSONStream(self, many, lambda write: self.run_rooms(rooms, many, write))
        admission, sub = await self.admit(principal, req, edition)
        return _NDJSONStream(self, sub, lambda write: self.run(admission, sub, write))

    # -- WebSocket ----------------------------------------------------------------------

    async def websocket(self, ws: WebSocket) -> None:
        edge = self.edge
        origin = ws.headers.get("origin")
        open_server = self.config.open
        if not edge.origins.origin_allowed(
            origin, ws.scope, open_server=open_server, websocket=True
        ):
            # Before the upgrade: a 403 with m3o's error object saying which --cors-origin
            # would allow it; the page's WebSocket fails without ever opening.
            detail = origin_refused(origin or "", open_server)
            if "websocket.http.response" in ws.scope.get("extensions", {}):
                body = encode(Refusal("v1", 403, detail).body())
                await ws.send_denial_response(Response(body, 403, media_type=JSON))
            else:  # a server without the denial extension: a bare 403
                await ws.close(1008, detail[:120])
            return
        principal = edge.authenticate(bearer(ws.headers.get("authorization")))
        offered: list[str] = list(ws.scope.get("subprotocols") or [])
        subprotocol = None
        if offered:
            if principal is None:
                for candidate in offered:
                    principal = edge.authenticate(candidate)
                    if principal is not None:
                        subprotocol = candidate
                        break
            # A browser fails the handshake unless one offered protocol is chosen: with
            # none that authenticates (or no token needed), the first, so that a page
            # refused its token reads the 401 frame and close 4401 below, not a bare 1006.
            subprotocol = subprotocol or offered[0]
        if principal is not None:
            ws.scope[PRINCIPAL] = principal
        await ws.accept(subprotocol=subprotocol)
        try:
            path = ws.scope["path"].lower()
            endpoint = {CHAT_PREFIX + "join": JOIN, CHAT_PREFIX + "joinrooms": JOIN_ROOMS}.get(path)
            if endpoint is None:
                raise no_such_api()
            if principal is None:
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
            req, edition = decode(endpoint, raw, principal, self.config, edge.edition)
            sub: Subscriber | RoomsSubscriber
            runner: Runner
            if endpoint is JOIN_ROOMS:
                rooms, many = await self.admit_rooms(principal, req, edition)
                sub = many

                def runner(write: Write) -> Awaitable[None]:
                    return self.run_rooms(rooms, many, write)
            else:
                admission, one = await self.admit(principal, req, edition)
                sub = one

                def runner(write: Write) -> Awaitable[None]:
                    return self.run(admission, one, write)

            stream_opened(ws.scope, stream_label(sub))
        except Refusal as refusal:
            with contextlib.suppress(WebSocketDisconnect, RuntimeError):
                await ws.send_text(encode(refusal.body()))
                await ws.close(refusal.close_code, refusal.detail[:120])
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
            await runner(write)
        except StreamEnded as end:
            if end.code is not None:
                with contextlib.suppress(WebSocketDisconnect, RuntimeError):
                    if end.frame:
                        await ws.send_text(end_frame_in(_edition_of(sub), end.frame))
                    reason = worded_in(_edition_of(sub), end.reason)
                    await ws.close(end.code, reason[:120])
        except Unavailable as exc:
            await _end_unavailable(ws, exc)
        except (WebSocketDisconnect, OSError):
            pass  # the client went away (uvicorn's ClientDisconnected is an OSError)
        finally:
            watcher.cancel()


def _replays(admission: Admission) -> bool:
    """True when the stream replays what was stored until it went live (``since`` or
    ``history``)."""
    return admission.since_seq is not None or admission.history > 0


def revoked() -> StreamEnded:
    """How a revoked token's stream ends: 401's error frame, then close 4401."""
    refusal = Refusal("v1", 401, REVOKED)
    return StreamEnded(refusal.close_code, encode(refusal.body()), REVOKED)


def stream_label(sub: Subscriber | RoomsSubscriber) -> str:
    """What a stream's log lines name: its room, or how many rooms a JoinRooms began with."""
    if isinstance(sub, RoomsSubscriber):
        return f"{'every room' if sub.every_room else 'rooms'} ({len(sub.taps)})"
    return sub.room_id


def _edition_of(sub: Subscriber | RoomsSubscriber) -> Edition:
    return GROUP if sub.group else ROOM


def _room_added(room_id: str, name: str, since: str, *, new: bool = False) -> dict[str, Any]:
    """A room the stream follows from now on: its name, the cursor a resume of it starts
    from until a message of it came, and ``new`` when its user was let in meanwhile."""
    added: dict[str, Any] = {"room_id": room_id, "name": name, "since": since}
    if new:
        added["new"] = True
    return {"room_added": added}


def _room_ended(room_id: str, code: int, detail: str) -> dict[str, Any]:
    return {"room_ended": {"room_id": room_id, "code": code, "detail": detail}}


async def _end_unavailable(ws: WebSocket, exc: Unavailable) -> None:
    """The replay could not be read: the stream ends as a call would have (503), and the
    client resumes with ``since``."""
    refusal = Refusal.of(JOIN.id, exc, stream=True)
    with contextlib.suppress(WebSocketDisconnect, RuntimeError, OSError):
        await ws.send_text(encode(refusal.body()))
        await ws.close(refusal.close_code, refusal.detail[:120])


async def _watch_disconnect(ws: WebSocket, sub: Subscriber | RoomsSubscriber) -> None:
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

    def __init__(
        self, streams: JoinStreams, sub: Subscriber | RoomsSubscriber, runner: Runner
    ) -> None:
        super().__init__(status_code=200, media_type=self.media_type)
        # Streamed: no Content-Length; and ask proxies not to buffer lines.
        self.raw_headers = [
            (b"content-type", b"application/x-ndjson"),
            (b"cache-control", b"no-cache"),
            (b"x-accel-buffering", b"no"),
        ]
        self.streams = streams
        self.sub = sub
        self.runner = runner

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
        stream_opened(scope, stream_label(sub))
        try:
            await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
            try:
                await self.runner(write)
            except StreamEnded as end:
                if end.code is not None and end.frame:
                    await write(end_frame_in(_edition_of(sub), end.frame))
            except Unavailable as exc:
                await write(encode(Refusal.of(JOIN.id, exc, stream=True).body()))
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except OSError:
            pass  # the client went away mid-write
        finally:
            watcher.cancel()
            self.streams.release(sub)
