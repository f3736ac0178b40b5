"""The app factory and its lifecycle: ``create_app(config)`` builds the Starlette app.

It wires the parts together (module map in ``chatctl/server/__init__.py``): the store
for ``config.db`` (opened and its schema checked here, so a database that cannot be reached stops
``serve`` before it listens), the hub it delivers to, the rules over the store, the HTTP
edge and the Join streams, under the access log.

Lifespan: at start-up the store starts (PostgreSQL opens its pool and listens to the other
replicas) and the housekeeping tasks begin (purging deleted rooms' messages in steps,
forgetting expired Idempotency-Keys hourly, removing messages past their retention every
``--retain-check`` seconds). At shutdown (after ``protocol.ChatServer`` ended the streams)
any stream still open is ended, the streams get a moment to write their close frames,
and the store closes.

``app.state`` holds ``config``, ``store``, ``hub``, ``service``, ``metrics`` (None unless
``--metrics``); ``app.state.hub.active``
and ``idle_for()`` serve the idle-exit watchdog. A server with tokens also has
``app.state.tokens_reloaded(reload)``, which ``serve`` calls after the tokens file is
re-read (SIGHUP, or a change seen by its watcher): it ends the revoked tokens' streams.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.routing import Route, WebSocketRoute

from chatctl.errors import ChatctlError
from chatctl.server.accesslog import AccessLog, crash, gateway_error
from chatctl.server.answers import App
from chatctl.server.config import ServerConfig
from chatctl.server.cors import Cors
from chatctl.server.domain import Fanout, Unavailable
from chatctl.server.edge import Edge
from chatctl.server.hub import Hub
from chatctl.server.quotas import SYNC_INTERVAL
from chatctl.server.rules import ChatService
from chatctl.server.store import Store, is_postgres_url
from chatctl.server.store_sqlite import SQLiteStore
from chatctl.server.streams import JoinStreams, revoked
from chatctl.server.tokens import Reload

__all__ = ["create_app"]

log = logging.getLogger("chatctl.server")

#: seconds between looks for a deleted room's messages to remove.
PURGE_INTERVAL = 0.5
#: seconds between sweeps of expired Idempotency-Keys.
KEY_SWEEP_INTERVAL = 3600.0


def open_store(
    db: str,
    fanout: Fanout,
    timeout: float,
    application_name: str | None = None,
    sync: str = "full",
    notify: str = "both",
) -> Store:
    """The store for ``--db``, opened and its schema checked (before the event loop runs);
    a database it cannot open or reach is a ChatctlError naming it, with a hint.

    Schema (``migrations``): a SQLite file is migrated here (one machine's); a shared
    PostgreSQL database only set up when empty, and refused when older (``chatctl serve
    migrate`` upgrades it while the previous release's replicas keep serving). ``sync``:
    SQLite's ``--sync``; ``notify``: PostgreSQL's ``--notify``."""
    if is_postgres_url(db):
        try:
            from chatctl.server.store_pg import PostgresStore
        except ImportError as exc:
            raise ChatctlError(
                f"serving from PostgreSQL needs psycopg ({exc}): pip install 'chatctl[postgres]'"
            ) from None
        return PostgresStore.open(
            db,
            fanout,
            timeout=timeout,
            migrate="new",
            application_name=application_name,
            notify=notify,
        )
    return SQLiteStore.open(db, fanout, timeout=timeout, sync=sync)


def create_app(config: ServerConfig) -> Starlette:
    """The chat server as an ASGI app; ``app.state`` holds ``config``, ``store``, ``hub``,
    ``service``."""
    hub = Hub(config.stream_queue)
    store = open_store(
        config.db, hub, config.db_timeout, config.application_name, config.sync, config.notify
    )
    metrics = None
    if config.metrics:
        from chatctl.server.metrics import MeteredStore, Metrics

        on_postgres = hasattr(store, "notification_lag")
        metrics = Metrics(hub, (lambda: not hub.interrupted) if on_postgres else None)
        if on_postgres:
            store.notification_lag = metrics.observe_lag  # type: ignore[attr-defined]
        store = MeteredStore(store, metrics)
    service = ChatService(store, config.limits)
    service.retain = config.retain
    edge = Edge(config, service, hub)
    edge.metrics = metrics
    streams = JoinStreams(edge)
    edge.join_ndjson = streams.ndjson

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await store.start()
        housekeeping = asyncio.create_task(_housekeeping(store, service))
        quotas = asyncio.create_task(_sync_quotas(service))
        expiry = asyncio.create_task(_expire(store, config))
        try:
            yield
        finally:
            housekeeping.cancel()
            quotas.cancel()
            expiry.cancel()
            hub.end_all()
            # Let stream handlers write their close frames before the store goes away.
            await hub.until_quiet(1.0)
            with contextlib.suppress(Unavailable):  # the last second's byte counts
                await service.sync_quotas()
            await store.close()

    app = App(
        routes=[
            # An ASGI app as endpoint: every method reaches it (unknown ones get 404).
            # Only for whoever calls the router itself: App sends HTTP to the edge.
            Route("/{path:path}", edge),
            WebSocketRoute("/{path:path}", streams.websocket),
        ],
        middleware=[Middleware(AccessLog, hub=hub, metrics=metrics)],
        exception_handlers={HTTPException: gateway_error, Exception: crash},
        lifespan=lifespan,
    )
    app.http = AccessLog(edge, hub, crash=True, metrics=metrics)
    if edge.origins:
        # Outermost, so that every answer has the CORS headers, the access log's 500 too.
        app.http = Cors(app.http, edge.origins)
    app.state.config = config
    app.state.store = store
    app.state.hub = hub
    app.state.service = service
    app.state.metrics = metrics
    if config.registry is not None:
        app.state.tokens_reloaded = _ender_of_revoked_streams(hub)
    return app


def _ender_of_revoked_streams(hub: Hub) -> Callable[[Reload], None]:
    """What a tokens file reload does to the streams here: the revoked tokens' end at once
    with 401's frame and close 4401; their next calls are 401 already (the registry was
    swapped). Each replica watches its own copy of the file and ends its own streams."""

    def tokens_reloaded(reload: Reload) -> None:
        ended = hub.end_tokens(reload.revoked, revoked())
        if ended:
            log.info("ended %d streams of revoked tokens", ended)

    return tokens_reloaded


async def _sync_quotas(service: ChatService) -> None:
    """Keep the byte quotas' counts in the store, every ``quotas.SYNC_INTERVAL``."""
    while True:
        await asyncio.sleep(SYNC_INTERVAL)
        try:
            await service.sync_quotas()
        except Unavailable as exc:  # counted here still: the next round adds them
            log.warning("syncing the byte quotas failed: %s", exc)
        except Exception:
            log.exception("syncing the byte quotas failed")


async def _housekeeping(store: Store, service: ChatService) -> None:
    """Remove what deleted rooms left behind, a chunk at a time, letting requests and
    streams run between chunks; and forget expired Idempotency-Keys now and then."""
    next_sweep = 0.0
    while True:
        try:
            while await store.purge_step():
                await asyncio.sleep(0)
            if time.monotonic() >= next_sweep:
                next_sweep = time.monotonic() + KEY_SWEEP_INTERVAL
                await service.forget_expired_keys()
        except Unavailable as exc:  # full, locked or unreachable: the next round tries again
            log.warning("housekeeping failed: %s", exc)
        except Exception:  # a bug here must not end the housekeeping for good, nor go unseen
            log.exception("housekeeping failed")
        await asyncio.sleep(PURGE_INTERVAL)


async def _expire(store: Store, config: ServerConfig) -> None:
    """Remove the messages past their room's retention, every ``--retain-check`` seconds,
    a chunk at a time (``retention.expire_step``); the first look at start-up."""
    from chatctl.server.retention import expire_step

    while True:
        try:
            await expire_step(store, config.retain)
        except Unavailable as exc:  # the next round tries again
            log.warning("removing messages past their retention failed: %s", exc)
        except Exception:
            log.exception("removing messages past their retention failed")
        await asyncio.sleep(config.retain_check)
