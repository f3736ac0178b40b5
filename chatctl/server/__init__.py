"""chatctl's chat server: the m3o Chat API over HTTP and WebSocket.

A request goes ``serve`` (the process) → ``protocol`` (uvicorn, as this server runs it) →
``app`` (wiring, lifecycle) → ``accesslog`` → ``edge`` (HTTP) or ``streams`` (Join), both
through ``decode`` (parse, edition, bind, validate; every refusal's status) →
``rules`` (what each endpoint does) → ``store`` (the interface) → ``store_sqlite`` or
``store_pg`` (sharing ``sql``) → back through ``hub`` (and ``hub_pg`` across replicas) to
the live streams. ``domain`` holds the types they share; ``chatctl.wire`` what travels.
Who a token is comes from ``tokens`` (the tokens file, its reloads), what it may do from
``access`` (asked by ``edge`` and ``rules``), its limits from ``ratelimit``, and a user
token's share of its tenant from ``quotas`` (asked by ``rules``). What leans on Starlette
internals (the app's HTTP shortcut, the answers that send themselves) is ``answers``.
docs/architecture.md ("How it is built") has one line per module. Nothing here is imported
on the CLI's client path.
"""
