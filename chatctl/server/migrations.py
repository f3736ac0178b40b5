"""Schema versions on both stores, and the rule that keeps upgrades reversible: expand,
then contract.

Each store lists its migrations in ``MIGRATIONS`` (append-only). A database records two
numbers:

- **applied**: how many of them it has had applied (SQLite: the table
  ``chatctl_schema``; PostgreSQL: ``chatctl_schema.applied``);
- **floor**: how many a release must know to use it. It is where releases before 0.2.0
  read their one number (SQLite's ``PRAGMA user_version``, PostgreSQL's
  ``chatctl_schema.version``), and it stays at the count those releases knew
  (``LEGACY``) until a *contract* migration is applied; then it is that migration's
  number. So an older release whose migrations are all applied reads exactly its own
  count, applies nothing and serves, however many expand migrations came after.

A migration is an **expand** one unless wrapped in ``contract(...)``: it only adds
(tables, nullable columns or ones with defaults, indexes), so the previous release's
replicas keep working on the migrated database until they are replaced, and a rollback
is running that release again. A **contract** migration (dropping or renaming what an
older release still uses) raises the floor: releases that do not know it refuse the
database. docs/development.md has the rule for migration authors;
tests/faults/test_upgrade.py runs the previous release against the migrated schema.

What a release that knows ``known`` migrations does with a database (``judge``):

- applied == known: current; it serves.
- applied > known, floor <= known: a newer release migrated it, compatibly; it serves.
- floor > known: ``SchemaTooNew`` (exit status 6, for systemd's RestartPreventExitStatus).
- applied < known: older. ``chatctl serve migrate`` applies the rest. ``serve`` does it
  itself for an empty database (a new one) and for a SQLite file (one machine's; the
  quick start keeps working across upgrades); an older shared PostgreSQL database is
  refused with ``SchemaTooOld`` (run ``chatctl serve migrate``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from chatctl import __version__
from chatctl.errors import ChatctlError, ExitStatus

__all__ = [
    "Contract",
    "Policy",
    "SchemaState",
    "SchemaTooNew",
    "SchemaTooOld",
    "contract",
    "floor",
    "judge",
    "too_old",
]

#: what ``serve`` may apply by itself: "all" (SQLite, and stores built in tests) or
#: "new" (only the whole schema on an empty database: shared PostgreSQL).
Policy = Literal["all", "new"]


class Contract(str):
    """A migration that older releases cannot run on: see ``contract``."""


def contract(statements: str) -> str:
    """Mark a migration as a contract one: once applied, releases that do not know it
    refuse the database (``SchemaTooNew``). Only for removing what no release still
    running uses; ship it a release after the one that stopped using it."""
    return Contract(statements)


@dataclass(frozen=True)
class SchemaState:
    applied: int
    floor: int

    @property
    def empty(self) -> bool:
        return self.applied == 0


def floor(migrations: Sequence[str], applied: int, legacy: int) -> int:
    """The floor of a database with the first ``applied`` of ``migrations`` applied: the
    number of the last contract among them, or ``legacy`` (never above ``applied``)."""
    if applied <= legacy:
        return applied
    contracts = [n + 1 for n in range(applied) if isinstance(migrations[n], Contract)]
    return max([legacy, *contracts])


class SchemaTooOld(ChatctlError):
    """The database needs ``chatctl serve migrate`` before this release serves it."""


class SchemaTooNew(ChatctlError):
    """A newer, incompatible release migrated the database."""

    exit_status = ExitStatus.SCHEMA_TOO_NEW


def judge(state: SchemaState, known: int, where: str) -> Literal["current", "newer", "older"]:
    """How a release knowing ``known`` migrations stands to ``state``; SchemaTooNew when
    it cannot use the database at all."""
    if state.floor > known:
        raise SchemaTooNew(
            f"database {where} has schema {state.applied}, newer than this chatctl"
            f" {__version__} knows ({known}) and not usable by it (it needs a chatctl that"
            f" knows schema {state.floor}): run the newer release that migrated it (see"
            " docs/deployment.md, Upgrades)"
        )
    if state.applied > known:
        return "newer"
    if state.applied < known:
        return "older"
    return "current"


def too_old(state: SchemaState, known: int, where: str) -> SchemaTooOld:
    return SchemaTooOld(
        f"database {where} has schema {state.applied}, older than this chatctl {__version__}"
        f" needs ({known}): run chatctl serve migrate --db {where}"
    )
