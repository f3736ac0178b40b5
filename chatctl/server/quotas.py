"""Quotas inside a tenant: what one user token may take of what its tenant may hold.

A server with tokens bounds each tenant (``schema.Limits``: rooms, a room's members, and
the message bytes it may store per UTC day) and, inside it, each user token's user, so
that one member acting in bad faith cannot exhaust the tenant for the others. Contract
part 3, "Quotas". Admin tokens are bound by the tenant's figures only; an open server
(loopback, one user) has no quotas, as it has no rate limits.

- Rooms (``max_rooms_per_user``): the rooms the user's tokens created and have not
  deleted; counted in the store (``rooms.creator``) in Create's own transaction.
- Invites (``max_invites_per_user``): the members a user token added to one room it did
  not create (``members.invited_by``), counted in Invite's own transaction. The room's
  creator is bound only by the room's size: the room is theirs, and they can kick.
- Bytes (``max_bytes_per_user_day``, ``max_bytes_per_tenant_day``): the UTF-8 bytes of
  the text and subject of each message stored, per UTC day (the client label, at most
  ``max_client_bytes``, is left out: the server makes one up when none is given). Per day, not
  in total: a total would have to be given back when a room is deleted (its messages
  are purged in steps, long after) and a member at their cap would stay stuck until an
  operator stepped in; a day's cap renews itself and bounds how fast the database grows,
  which is what a greedy member threatens. ``ByteMeter`` keeps the count.

Every refusal is ``domain.Forbidden`` (403, m3o's error object) with a detail that says
``quota:``, the figure and the flag that sets it: a quota is a "no" to this caller, which
retrying does not change (a 429 means "slow down", and clients retry it by themselves).
Each is counted in ``domain.REFUSALS["quota"]`` (``/metrics``) as it is made.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import NamedTuple, TypeVar

from chatctl.schema import Limits
from chatctl.server.domain import REFUSALS, Forbidden
from chatctl.server.sql import Session

__all__ = [
    "SYNC_INTERVAL",
    "ByteMeter",
    "Charge",
    "invites_refusal",
    "message_bytes",
    "rooms_refusal",
    "utc_day",
]

T = TypeVar("T")

#: seconds between two syncs of a replica's byte counts with the database.
SYNC_INTERVAL = 1.0
#: seconds a tenant's counts stay in memory, refreshed at each sync, after its last Send.
_KEEP = 60.0
_DAY = 86_400


def utc_day(now: float | None = None) -> str:
    """The UTC day of ``now`` (seconds since the epoch), as ``YYYY-MM-DD``."""
    return time.strftime("%Y-%m-%d", time.gmtime(time.time() if now is None else now))


def message_bytes(text: str, subject: str) -> int:
    """What a message costs of a byte quota: the UTF-8 bytes of its text and subject."""
    return sum(
        len(s) if s.isascii() else len(s.encode("utf-8", "surrogatepass")) for s in (text, subject)
    )


def rooms_refusal(limits: Limits, user: str) -> Forbidden:
    REFUSALS["quota"] += 1
    return Forbidden(
        f"quota: user {user} may have created at most {limits.rooms_per_user} rooms of this"
        " tenant (max_rooms_per_user); delete one first"
    )


def invites_refusal(limits: Limits, user: str) -> Forbidden:
    REFUSALS["quota"] += 1
    return Forbidden(
        f"quota: user {user} may add at most {limits.invites_per_user} users to a room it did"
        " not create (max_invites_per_user); its creator may invite more"
    )


class Charge(NamedTuple):
    """Bytes counted for a Send, to give back if it stores nothing (a tuple: made on
    every Send, three times faster than a frozen dataclass)."""

    tenant: str
    day: str
    payer: str
    size: int


@dataclass
class _Tally:
    """A tenant's bytes on one day: every replica's, as the database had them at the last
    sync, and this replica's since (not yet in the database), by payer."""

    synced: dict[str, int]
    pending: dict[str, int] = field(default_factory=dict)
    #: the sum of both, kept as they change (a tenant may have many users).
    total: int = 0
    #: ``time.monotonic()`` of its last charge.
    used: float = 0.0

    def __post_init__(self) -> None:
        self.total = sum(self.synced.values()) + sum(self.pending.values())

    def of(self, payer: str) -> int:
        return self.synced.get(payer, 0) + self.pending.get(payer, 0)

    def add(self, payer: str, size: int) -> None:
        self.pending[payer] = self.pending.get(payer, 0) + size
        self.total += size


Read = Callable[[Callable[[Session], Awaitable[T]]], Awaitable[T]]


class ByteMeter:
    """The message bytes each tenant and each user in it stored today, for the byte quotas.

    The counts live in the database (``daily_bytes``, one row per tenant, day and payer:
    a user, or ``''`` for admin tokens), so that replicas sharing a PostgreSQL database
    share them and a restart keeps them. A Send does not touch that table: it is checked
    and counted here, in memory (``charge``; ``refund`` if it stored nothing), and
    ``sync`` adds what this replica counted to the database and reads everyone's back,
    every ``SYNC_INTERVAL`` and at shutdown. A tenant's counts are read from the
    database on its first Send of the day (or after a minute without one).

    So a Send costs a few dictionary look-ups, and takes no lock a Send to another room
    would wait for (a counter row updated by every Send of a tenant would make them all
    take turns on PostgreSQL). The price: replicas see each other's bytes up to a second
    late, so a tenant or user sending through several replicas at once may pass a cap by
    what the others accept in that second; a replica killed with ``kill -9`` forgets the
    last second's count.
    """

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self._tenant_cap = limits.max_bytes_per_tenant_day
        self._user_cap = limits.bytes_per_user_day
        self._tallies: dict[tuple[str, str], _Tally] = {}
        self._day = ""
        self._day_ends = 0.0

    def _today(self) -> str:
        """``utc_day()``, worked out once a day (it is a tenth of a Send's checks)."""
        now = time.time()
        if now >= self._day_ends:
            self._day, self._day_ends = utc_day(now), (now // _DAY + 1) * _DAY
        return self._day

    async def charge(
        self, read: Read[dict[str, int]], tenant: str, payer: str, size: int
    ) -> Charge:
        """Count ``size`` bytes for ``payer`` (a user token's user; ``''``: an admin token)
        of ``tenant`` today; Forbidden, counting nothing, when it passes a quota."""
        day = self._today()
        tally = self._tallies.get((tenant, day))
        if tally is None:

            async def seed(db: Session) -> dict[str, int]:
                return await db.daily_bytes(tenant, day)

            synced = await read(seed)
            tally = self._tallies.setdefault((tenant, day), _Tally(synced))
        if tally.total + size > self._tenant_cap:
            REFUSALS["quota"] += 1
            raise Forbidden(
                f"quota: this tenant may store at most {self._tenant_cap} message bytes a"
                " day (max_bytes_per_tenant_day); it renews at 00:00 UTC"
            )
        if payer and tally.of(payer) + size > self._user_cap:
            REFUSALS["quota"] += 1
            raise Forbidden(
                f"quota: user {payer} may store at most {self._user_cap} message bytes a"
                " day in this tenant (max_bytes_per_user_day); it renews at 00:00 UTC"
            )
        tally.add(payer, size)
        tally.used = time.monotonic()
        return Charge(tenant, day, payer, size)

    def refund(self, charge: Charge) -> None:
        """Give back a charge whose Send stored nothing."""
        tally = self._tallies.get((charge.tenant, charge.day))
        if tally is not None:
            tally.add(charge.payer, -charge.size)

    async def sync(self, write: Read[dict[tuple[str, str], dict[str, int]]]) -> None:
        """Add the bytes counted here to the database and read back every replica's, for
        the tenants with a Send in the last minute (the others are forgotten, and read
        again at their next Send). Raises what ``write`` raises, changing nothing."""
        if not self._tallies:
            return
        now = time.monotonic()
        taken = {key: dict(t.pending) for key, t in self._tallies.items()}
        wanted = [key for key, t in self._tallies.items() if now - t.used < _KEEP]

        async def work(db: Session) -> dict[tuple[str, str], dict[str, int]]:
            for (tenant, day), pending in taken.items():
                for payer, size in pending.items():
                    if size:
                        await db.add_daily_bytes(tenant, day, payer, size)
            return {key: await db.daily_bytes(*key) for key in wanted}

        synced = await write(work)
        for key, pending in taken.items():
            tally = self._tallies[key]
            for payer, size in pending.items():
                left = tally.pending[payer] - size
                if left:
                    tally.pending[payer] = left
                else:
                    del tally.pending[payer]
            if key in synced:
                tally.synced = synced[key]
                tally.__post_init__()
            elif not tally.pending:
                del self._tallies[key]

    @staticmethod
    def oldest_kept(now: float | None = None) -> str:
        """The first day whose counts the database keeps: yesterday (a Send made just
        before midnight may be synced just after)."""
        return utc_day((time.time() if now is None else now) - _DAY)
