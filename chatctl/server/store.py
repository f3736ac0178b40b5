"""The storage interface the rules are written against, and how a server opens one.

Every operation is awaitable, on either backend:

- ``read(work)`` / ``write(work)``: run ``work(session)`` (a ``sql.Session``) and return
  what it returns; ``write`` is one transaction, delivering what the session published
  to the live streams only once it committed. The rules pass their work in, rather than
  holding a transaction open around it, so that a store can bound the whole of it in
  time (PostgreSQL) or hand it to its writer thread (SQLite). ``work`` may await nothing
  but its session's methods: SQLite runs it to its end in one step on the writer's thread
  (``run_to_end``), where nothing else could ever wake it, and PostgreSQL checks each of
  its waits (``session_only``), so a rule that awaits anything else (a ``read``, a sleep,
  a lock) fails with ``AwaitedOutside`` on both backends, in the first test that runs it.
- ``send``: a whole Send (the Idempotency-Key, the room, the membership, the room's
  next seq, the message and its fan-out) as one operation, because it is the call that
  matters most and each backend does it its own fastest way; ``send_many``: several in
  one transaction (bulk sends).
- ``purge_step``: remove part of what deleted rooms left behind; True while more remains.
- ``start`` / ``close``: on the running event loop (pools, listeners, threads).

Errors: ``domain.Unavailable`` when the storage fails (nothing half-done); ``domain``
refusals from ``send``. ``app.open_store`` picks the backend by the ``--db`` value:
``store_sqlite.SQLiteStore`` for a path, ``store_pg.PostgresStore`` for a
``postgresql://`` URL (imported only then: psycopg is an optional extra). The backends
import this module, never the other way round.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Generator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from chatctl.server.domain import Key, NewMessage, Refused
from chatctl.server.sql import Session

__all__ = [
    "AwaitedOutside",
    "SendResult",
    "Store",
    "is_postgres_url",
    "run_to_end",
    "session_only",
]

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class SendResult:
    """What a Send came to: its answer (the message, or the first answer of its key), or
    nothing stored, and then whether the room exists and is private, or (``send_many``
    only) the refusal of its key (Conflict: the key was used with another request)."""

    answer: str | None
    room_found: bool = True
    private: bool = False
    refusal: Refused | None = None
    #: the answer is a key's first answer: this call stored nothing.
    replayed: bool = False

    @property
    def refused(self) -> bool:
        return self.answer is None

    @property
    def stored(self) -> bool:
        """This call stored a message (its bytes count: ``quotas``)."""
        return self.answer is not None and not self.replayed


class Store(Protocol):
    async def start(self) -> None: ...
    async def close(self) -> None: ...

    async def read(self, work: Callable[[Session], Awaitable[T]]) -> T: ...
    async def write(self, work: Callable[[Session], Awaitable[T]]) -> T: ...

    async def send(self, tenant: str, message: NewMessage, key: Key | None) -> SendResult:
        """Add ``message`` to its room under the room's next seq, if its user is a member,
        giving it its id and time; answer its frame (``wire.message_frame``), which is also
        what the room's streams get. With ``key``: a key already kept answers with its
        first answer instead and changes nothing; a new one is kept with this answer, in
        the same transaction."""
        ...

    async def send_many(
        self,
        tenant: str,
        messages: Sequence[tuple[NewMessage, Key | None]],
        *,
        stop: bool = False,
    ) -> list[SendResult]:
        """Several Sends, each as ``send`` would do it, in one transaction, in order: their
        outcomes in the same order. A refused one (or a key's replay) stores nothing and
        the others go on, or, with ``stop``, none after it is done (the outcomes then end
        with the refused one's); a storage failure keeps none of them. Bulk sends
        (``bulk``)."""
        ...

    async def purge_step(self) -> bool: ...


def is_postgres_url(db: str) -> bool:
    return db.startswith(("postgresql://", "postgres://"))


# -- what a write's work may await --------------------------------------------------------


class AwaitedOutside(RuntimeError):
    """A write's work awaited something other than its session (``Store.write``)."""

    def __init__(self) -> None:
        super().__init__(
            "a store write awaited something outside its session: a write's work may await"
            " only its session's methods (store.Store.write)"
        )


def run_to_end(work: Awaitable[T]) -> T:
    """The result of a write's ``work`` on a session whose methods never wait (SQLite's
    writer): run to its end in one step, or ``AwaitedOutside`` if it waits on anything."""
    steps = work.__await__()
    try:
        steps.send(None)
    except StopIteration as finished:
        result: T = finished.value
        return result
    except RuntimeError as exc:
        # What asyncio says off the event loop (a sleep, a task): the same mistake.
        if "no running event loop" not in str(exc):
            raise
        raise AwaitedOutside() from exc
    steps.close()
    raise AwaitedOutside()


def session_only(session: Session, work: Awaitable[T]) -> Awaitable[T]:
    """``work``, failing with ``AwaitedOutside`` (its transaction then rolls back) the
    first time it waits while none of ``session``'s statements is running (PostgreSQL)."""
    return _SessionOnly(session, work)


class _SessionOnly(Awaitable[T]):
    def __init__(self, session: Session, work: Awaitable[T]) -> None:
        self._session = session
        self._work = work

    def __await__(self) -> Generator[Any, Any, T]:
        steps = self._work.__await__()
        sent: Any = None
        thrown: BaseException | None = None
        while True:
            try:
                waits_on = steps.send(sent) if thrown is None else steps.throw(thrown)
            except StopIteration as finished:
                result: T = finished.value
                return result
            if not self._session.in_statement:
                steps.close()
                raise AwaitedOutside()
            try:
                sent, thrown = (yield waits_on), None
            except BaseException as exc:  # a cancellation, say: handed on to the work
                sent, thrown = None, exc
