"""Unary calls: one request, one answer, retried within one budget (``Calls``).

``Calls.call("Send", body)`` POSTs ``{url}/v1/chat/Send`` with the bearer token over one
kept-alive connection and returns the decoded response object, in the server's edition
and as the user the token acts as (``facts``).

Retries (``retry.Retry``): a call that changes something carries an ``Idempotency-Key``,
fresh per logical call and the same on each retry, so retrying after a lost answer never
doubles it. Connection errors and 502/503/504 are retried with capped, jittered backoff,
and a 429 after the ``Retry-After`` it names, all inside the call's budget. When the
budget ends, the last answer is reported (a 503 ``storage unavailable``), not silence.

Retries of a change rest on the ``Idempotency-Key``, which only chatctl's server honours:
on any other, a change is retried only when it provably never reached the server (no
connection, or a 429); a connection lost mid-call or a gateway's 502/503/504 is reported
with ``outcome_unknown``, never sent twice. When that happens to the first call, before
anything is known of the server, a List (a read) asks it first, so chatctl's own server
still gets its safe retry.

Which server (``facts.Server``): a request using an extension the server does not have is
never sent (UnsupportedError); when nothing is known yet, one seed-shaped ``List``
(filtered by the user, so small) asks first (``probe``).

Who the token acts as: a request whose acting user is the CLI's default (a
``config.LoginName``: no user was configured) is sent as the token's own user where the
server says who that is (``whoami``, asked once). Where the server was not known yet, the
request goes as it would to any m3o server, and a 403 to it (a refusal changes nothing)
is answered by asking and sending it once more as the token's user; servers without
``whoami`` get exactly the requests they always did.
"""

from __future__ import annotations

import contextlib
import json
import time
import uuid
from typing import Any

from chatctl.client.facts import Server
from chatctl.client.transport import RETRY_STATUSES, Transport, _outcome_unknown, _Retryable
from chatctl.config import LoginName
from chatctl.errors import APIError, ChatctlError, NoAnswerError, UnsupportedError, unsettled
from chatctl.schema import (
    ENDPOINTS,
    IDEMPOTENCY,
    WHOAMI,
    Edition,
    Endpoint,
    extensions_of,
    in_edition,
)

__all__ = ["Calls"]


class Calls(Transport):
    """The unary calls, and what they learn of the server."""

    def call(
        self, endpoint: str, body: dict[str, Any], *, key: str | None = None
    ) -> dict[str, Any]:
        """POST one request (built with the seed's names) in the server's edition and
        return the decoded response object, as the server sent it, within the budget. A
        change carries ``key`` as its Idempotency-Key (a fresh one when None)."""
        spec = ENDPOINTS[endpoint]
        self.require(spec, body)
        self.bound(spec, body)
        sent_as = self.server.edition
        try:
            return self._call(spec, in_edition(body, sent_as), key=key)
        except APIError as e:
            other = _other_edition(e, sent_as, body)
            if other is not None:
                # The other edition's server refused the id's name before doing anything.
                self.server.edition = other
            elif not self._rebound(spec, body, e):
                raise
        return self._call(spec, in_edition(body, self.server.edition), key=key)

    def whoami(self, user: str | None = None) -> dict[str, Any]:
        """The server's Whoami answer (``{"identity": {...}}``: who the token acts as),
        asked at most once per process; UnsupportedError from a server without
        ``whoami`` (after one List, filtered by ``user``, when nothing is known of it)."""
        if self.server.identity is None:
            self.facts(user)
            self.server.identity = self.call("Whoami", {})
        return self.server.identity

    def token_user(self) -> str | None:
        """The user the token acts as, from the Whoami answer already had (None: not
        asked, or an admin token, which acts as any user)."""
        return self.server.token_user()

    def acting(self, user: str) -> str:
        """``user``, or in place of the CLI's default (a ``LoginName``: none was given)
        the token's own user, where the server says who that is (one Whoami, the first
        time). Only a token can be bound to a user; an admin token acts as anyone."""
        if isinstance(user, LoginName) and self.token and self.server.has(WHOAMI):
            self.whoami()
            return self.token_user() or user
        return user

    def bound(self, spec: Endpoint, body: dict[str, Any]) -> dict[str, Any]:
        """The request with its acting user ``acting``, changed in place, so the caller
        sees whom it acted as."""
        user = body.get("user_id")
        if spec.actor and isinstance(user, str):
            body["user_id"] = self.acting(user)
        return body

    def _rebound(self, spec: Endpoint, body: dict[str, Any], refused: APIError) -> bool:
        """After a 403 to a request sent as the CLI's default user before the server was
        known: True (and the request bound to the token's user) when the server says the
        token acts as someone else. A refusal changed nothing, so it may go again."""
        if refused.code != 403 or self.server.identity is not None:
            return False
        before = body.get("user_id")
        return self.bound(spec, body).get("user_id") != before

    def require(self, spec: Endpoint, body: dict[str, Any]) -> None:
        """Refuse (UnsupportedError) a request using extensions the server lacks; ask it
        first (``facts``) when nothing is known of it yet."""
        needed = extensions_of(spec, body)
        if not needed:
            return
        user = body.get("user_id")
        missing = needed - (self.facts(user if isinstance(user, str) else None).extensions or set())
        if missing:
            feature = sorted(missing)[0]
            raise UnsupportedError(
                f"{self.where} does not support {feature} ({spec.name} request)",
                feature,
                self.where,
            )

    def facts(self, user: str | None = None) -> Server:
        """What the server is, asking it when nothing is known yet: one seed-shaped List
        (read only, and filtered by ``user`` so that it stays small)."""
        if not self.server.known:
            self.probe(user)
        return self.server

    def probe(self, user: str | None = None, deadline: float | None = None) -> None:
        """Ask the server what it is (its extensions, its edition): one seed-shaped List,
        a read, filtered by ``user`` so that it stays small, within ``deadline``."""
        self._call(ENDPOINTS["List"], {"user_id": user} if user else {}, deadline)

    def _call(
        self,
        spec: Endpoint,
        body: dict[str, Any],
        deadline: float | None = None,
        *,
        key: str | None = None,
    ) -> dict[str, Any]:
        path = f"/v1/chat/{spec.name}"
        content = json.dumps(body).encode()
        headers = {"Idempotency-Key": key or uuid.uuid4().hex} if spec.mutating else {}
        retry = self.retry(deadline)
        sent = False  # an attempt of a change may have reached the server unanswered
        try:
            while True:
                started = time.perf_counter()
                asked: float | None = None  # the server's Retry-After
                try:
                    status, answer = self._attempt(path, content, headers, retry.deadline)
                except NoAnswerError as silence:
                    # The budget ended waiting: an answer that came before says more than
                    # silence (a 503 "storage unavailable" on every attempt is not a timeout).
                    sent = sent or silence.asked
                    raise retry.last(silence) from None
                except _Retryable as e:
                    self.log("POST", path, e.label, started)
                    error: ChatctlError = e.error
                    sent = sent or e.delivered
                    if e.delivered and not self._retry_safe(spec, body, retry.deadline):
                        raise _outcome_unknown(error) from None
                else:
                    self.log("POST", path, status, started)
                    self._reached = True
                    if status < 300:
                        data = self._decode(status, answer)
                        self.server.learn(answer.extensions, data)
                        return data
                    error = retry.heard(self.api_error(status, answer))
                    if answer.m3o_error():
                        self.server.learn(answer.extensions)
                    if status != 429 and status not in RETRY_STATUSES:
                        raise error
                    sent = True
                    if status != 429 and not self._retry_safe(spec, body, retry.deadline):
                        raise _outcome_unknown(error) from None
                    asked = error.retry_after if isinstance(error, APIError) else None
                retry.pause(error, asked=asked, quick=not self._reached)
        except ChatctlError as e:
            if spec.mutating and sent and unsettled(e):
                e.maybe_stored = True
            raise

    def _retry_safe(self, spec: Endpoint, body: dict[str, Any], deadline: float) -> bool:
        """May a failed attempt that could have reached the server be made again? A read,
        always; a change only where the Idempotency-Key is honoured. When nothing is known
        of the server yet (a first call), a List (a read: always safe) asks, within the
        call's budget; if that fails too, the change is not retried."""
        if not spec.mutating or self.server.has(IDEMPOTENCY):
            return True
        if not self.server.known:
            user = body.get("user_id")
            with contextlib.suppress(ChatctlError):
                self.probe(user if isinstance(user, str) else None, deadline)
        return self.server.has(IDEMPOTENCY)


def _other_edition(e: APIError, sent_as: Edition | None, body: dict[str, Any]) -> Edition | None:
    """The edition to send a request in again, when the server refused its id's name:
    m3o checks the id first, so nothing was done."""
    if e.code != 400 or "room_id" not in body:
        return None
    if e.detail == "missing group id" and sent_as != "group":
        return "group"
    if e.detail == "missing room id" and sent_as == "group":
        return "room"
    return None
