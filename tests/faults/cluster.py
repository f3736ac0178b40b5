"""The cluster drill's machinery (issue 27): three replicas on one PostgreSQL, clients that
record every operation they do, and a nemesis that injects faults in turn.

Each replica reaches the database through its own ``DelayProxy``, so the nemesis can stop
PostgreSQL answering everyone (``pause``) or cut one replica's connections, its LISTEN
included (``drop``), without touching the machine's PostgreSQL, which other tests share.
Terminating the drill database's backends (``pg_terminate_backend``) is what a restart of
PostgreSQL is to its clients.

The clients, each a thread, record ``checker.Op``s on one clock (``Recorder``):

- writers: keyed Sends, each retried with its key on the next replica after a timeout, a
  503 or a dropped connection, until answered; now and then an attempt is abandoned
  mid-call (the request written, the socket closed at once);
- a bulk writer: bulk Sends of ``BULK_LINES`` lines with a batch key, every line an op,
  resent from the first line not answered 200;
- tails: a WebSocket Join per room on each replica, from the room's start, resumed with
  ``since`` (on the next replica when its own is down) after every close, and now and
  then closed by the client itself;
- a reader: the whole History of a room from one replica after another;
- a kicker: a guest joins a room live on one replica and is kicked, or leaves, through
  another; and at the end every room is deleted under its tails.

``tests/faults/test_cluster.py`` runs it and hands the history to ``checker.check``.
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import httpx
import psycopg
from websockets.exceptions import ConnectionClosed, WebSocketException
from websockets.sync.client import connect

from chatctl.ids import START
from tests import postgres
from tests.bench.delay_proxy import DelayProxy
from tests.faults.checker import (
    CLOSES,
    DELETE,
    END,
    FAIL,
    FAULT,
    FRAME,
    HISTORY,
    INFO,
    JOIN,
    KICK,
    LEAVE,
    LIVE,
    MEMBER,
    OK,
    SEND,
    STOPPED,
    Op,
)
from tests.faults.drill import messages
from tests.helpers import ServerProcess

NAMES = ("a", "b", "c")
#: each replica's ``--notify``: a and b hear only the rooms they have streams in; c is a
#: replica in the middle of a rolling upgrade (it also publishes on and listens to the
#: shared channel, dropping the twins), so the drill checks both at once.
NOTIFY = ("rooms", "rooms", "both")
#: the replicas' database timeout (``--db-timeout``); the pause lasts longer.
DB_TIMEOUT = 1.0
#: a client's timeout for one call: an attempt not answered by then is retried elsewhere.
CALL_TIMEOUT = 3.0
#: how long PostgreSQL stops answering, and a replica stays SIGSTOPped.
PAUSE = 2.5
#: the share of Send attempts a writer abandons mid-call.
ABANDON = 0.04
#: the share of frames after which a tail closes its own connection (and resumes).
TAIL_QUITS = 0.01
BULK_LINES = 10


class Recorder:
    """Every op of the drill, on one clock (seconds since the drill began)."""

    def __init__(self) -> None:
        self.t0 = time.monotonic()
        self.ops: list[Op] = []
        self.lock = threading.Lock()
        self.errors: list[BaseException] = []

    def now(self) -> float:
        return time.monotonic() - self.t0

    def add(self, op: Op) -> None:
        with self.lock:
            self.ops.append(op)

    def snapshot(self) -> list[Op]:
        with self.lock:
            return list(self.ops)

    def summary(self) -> str:
        ops = self.snapshot()
        kinds = Counter(o.kind for o in ops)
        sends = Counter(o.outcome for o in ops if o.kind == SEND)
        bulk = sum(1 for o in ops if o.kind == SEND and o.process == "bulk")
        keys = len({o.key for o in ops if o.kind == SEND})
        members = Counter(o.detail for o in ops if o.kind == MEMBER and o.outcome == OK)
        return (
            f"operations={len(ops)} send attempts={kinds[SEND]} (ok {sends[OK]}, unknown "
            f"{sends[INFO]}, refused {sends[FAIL]}; {keys} keys, {bulk} as bulk lines) "
            f"joins={kinds[JOIN]} frames={kinds[FRAME]} stream ends={kinds[END]} "
            f"history reads={kinds[HISTORY]} kicks={members[KICK]} leaves={members[LEAVE]} "
            f"deletes={members[DELETE]} faults={kinds[FAULT]}"
        )


class Cluster:
    """Three replicas, each through its own proxy, on one fresh database."""

    def __init__(self, url: str, replicas: list[ServerProcess], proxies: list[DelayProxy]):
        self.url = url
        self.replicas = replicas
        self.proxies = proxies

    def port(self, i: int) -> int:
        port = self.replicas[i].port
        assert port is not None
        return port


@contextmanager
def cluster(tmp_path: Path, extra: tuple[str, ...] = ()) -> Iterator[Cluster]:
    postgres.require()
    with ExitStack() as stack:
        url = stack.enter_context(postgres.fresh_database())
        proxies, replicas = [], []
        for name, notify in zip(NAMES, NOTIFY, strict=True):
            proxy = stack.enter_context(DelayProxy.to(url))
            (tmp_path / name).mkdir()
            server = ServerProcess(
                tmp_path / name,
                tcp=True,
                db=proxy.url_for(url),
                extra=["--db-timeout", str(DB_TIMEOUT), "--notify", notify, *extra],
            )
            proxies.append(proxy)
            replicas.append(stack.enter_context(server))
        yield Cluster(url, replicas, proxies)


def create_rooms(c: Cluster, count: int) -> list[str]:
    rooms = []
    with httpx.Client(base_url=f"http://127.0.0.1:{c.port(0)}", timeout=10) as http:
        for n in range(count):
            body = {"name": f"room{n}", "description": "", "user_ids": ["w0", "w1", "w2", "bulk"]}
            r = http.post("/v1/chat/Create", json=body)
            assert r.status_code == 200, r.text
            rooms.append(str(r.json()["room"]["id"]))
    return rooms


def guarded(rec: Recorder, run: Callable[[], None]) -> threading.Thread:
    def guard() -> None:
        try:
            run()
        except BaseException as exc:  # a client's bug: the drill fails with it
            rec.errors.append(exc)

    thread = threading.Thread(target=guard, daemon=True)
    thread.start()
    return thread


def _status_outcome(status: int) -> str:
    if status == 200:
        return OK
    return INFO if status in (502, 503, 504) else FAIL


def _abandon(port: int, body: bytes, key: str) -> str:
    """Write a Send and close the connection at once, before any answer."""
    head = (
        "POST /v1/chat/Send HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Idempotency-Key: {key}\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
            s.sendall(head.encode() + body)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    except OSError as exc:
        return type(exc).__name__
    return "client disconnected"


class Writer:
    """Keyed Sends, one at a time, alternating rooms; each retried until answered."""

    def __init__(self, c: Cluster, rec: Recorder, rooms: list[str], index: int) -> None:
        self.c, self.rec, self.rooms, self.index = c, rec, rooms, index
        self.name = f"w{index}"
        self.stop = threading.Event()
        #: after ``stop``, a Send not yet answered is given up at this time.
        self.give_up = float("inf")
        self.rng = random.Random(index)

    #: seconds between one write and the next.
    pause = 0.03

    def run(self) -> None:
        clients: dict[int, httpx.Client] = {}
        try:
            n = 0
            while not self.stop.is_set():
                self._write(clients, self.rooms[n % len(self.rooms)], f"{self.name}-{n}")
                n += 1
                time.sleep(self.pause)
        finally:
            for http in clients.values():
                http.close()

    def _write(self, clients: dict[int, httpx.Client], room: str, key: str) -> None:
        """One keyed Send of ``key`` to ``room``, retried until answered."""
        body = {"room_id": room, "user_id": self.name, "text": key}
        raw = json.dumps(body).encode()
        attempt = 0
        while time.monotonic() < self.give_up:
            i = (self.index + attempt) % len(NAMES)
            start = self.rec.now()
            op = Op(SEND, self.name, 0, start=start, room=room, key=key, text=key, replica=NAMES[i])
            if self.rng.random() < ABANDON:
                detail = _abandon(self.c.port(i), raw, key)
                self.rec.add(_done(op, self.rec.now(), INFO, detail=detail))
            else:
                http = clients.get(i) or clients.setdefault(i, self._client(i))
                try:
                    r = http.post("/v1/chat/Send", content=raw, headers={
                        "Content-Type": "application/json", "Idempotency-Key": key})  # fmt: skip
                except httpx.HTTPError as exc:
                    http.close()
                    clients.pop(i, None)
                    self.rec.add(_done(op, self.rec.now(), INFO, detail=type(exc).__name__))
                else:
                    outcome = _status_outcome(r.status_code)
                    mid = r.json()["message"]["id"] if outcome == OK else ""
                    self.rec.add(_done(op, self.rec.now(), outcome, mid, str(r.status_code)))
                    if outcome != INFO:
                        return
            attempt += 1
            time.sleep(0.05)

    def _client(self, i: int) -> httpx.Client:
        return httpx.Client(base_url=f"http://127.0.0.1:{self.c.port(i)}", timeout=CALL_TIMEOUT)


def _done(op: Op, t: float, outcome: str, mid: str = "", detail: str = "") -> Op:
    return Op(**{**op.__dict__, "t": t, "outcome": outcome, "id": mid, "detail": detail})


class BulkWriter(Writer):
    """Bulk Sends of BULK_LINES lines with a batch key, resent from the first line not
    answered 200 (with ``Chat-First-Line``), on the next replica."""

    def __init__(self, c: Cluster, rec: Recorder, rooms: list[str]) -> None:
        super().__init__(c, rec, rooms, 0)
        self.name = "bulk"

    pause = 0.2

    def _write(self, clients: dict[int, httpx.Client], room: str, batch: str) -> None:
        """One batch, keyed ``batch``, resent from its first line not answered."""
        first, attempt = 1, 0
        while first <= BULK_LINES and time.monotonic() < self.give_up:
            i = attempt % len(NAMES)
            lines = [
                {"room_id": room, "user_id": self.name, "text": f"{batch}/{line}"}
                for line in range(first, BULK_LINES + 1)
            ]
            body = "".join(json.dumps(line) + "\n" for line in lines).encode()
            headers = {
                "Content-Type": "application/x-ndjson",
                "Idempotency-Key": batch,
                "Chat-First-Line": str(first),
            }
            start = self.rec.now()
            answered, ok, detail = 0, 0, ""
            http = clients.get(i) or clients.setdefault(i, self._client(i))
            try:
                with http.stream("POST", "/v1/chat/Send", content=body, headers=headers) as r:
                    detail = str(r.status_code)
                    if r.status_code == 200:
                        for text in r.iter_lines():
                            if not text:
                                continue
                            answer = json.loads(text)
                            if "message" in answer:
                                outcome, mid, status = OK, answer["message"]["id"], "200"
                            else:
                                code = int(answer.get("code", 0))
                                outcome, mid, status = _status_outcome(code), "", str(code)
                            self._line(
                                room, batch, first + answered, start, i, outcome, mid, status
                            )
                            answered += 1
                            if outcome == OK and ok == answered - 1:
                                ok += 1
                            elif outcome == FAIL and ok == answered - 1:
                                ok += 1  # refused for good: not resent
            except httpx.HTTPError as exc:
                http.close()
                clients.pop(i, None)
                detail = type(exc).__name__
            # Lines left without an answer may or may not be stored: unknown, resent.
            for line in range(first + answered, BULK_LINES + 1):
                self._line(room, batch, line, start, i, INFO, "", f"no answer ({detail})")
            first += ok
            attempt += 1
            if first <= BULK_LINES:
                time.sleep(0.05)

    def _line(
        self, room: str, batch: str, line: int, start: float, i: int, outcome: str,
        mid: str, detail: str,
    ) -> None:  # fmt: skip
        key = f"{batch}/{line}"
        self.rec.add(
            Op(SEND, self.name, self.rec.now(), start=start, room=room, key=key, text=key,
               outcome=outcome, id=mid, replica=NAMES[i], detail=detail)
        )  # fmt: skip


class Tail:
    """A Join of one room that prefers replica ``index``, resumed after every close."""

    def __init__(self, c: Cluster, rec: Recorder, room: str, room_no: int, index: int) -> None:
        self.c, self.rec, self.room, self.index = c, rec, room, index
        self.name = f"tail{room_no}{NAMES[index]}"
        self.stop = threading.Event()
        self.last_id = ""
        self.count = 0
        self.joined = threading.Event()
        self.rng = random.Random(hash(self.name))

    def run(self) -> None:
        failures = 0
        while not self.stop.is_set():
            i = (self.index + failures) % len(NAMES)
            url = f"ws://127.0.0.1:{self.c.port(i)}/v1/chat/Join"
            request = {"room_id": self.room, "user_id": self.name, "since": self.last_id or START}
            self.rec.add(
                Op(JOIN, self.name, self.rec.now(), room=self.room, replica=NAMES[i],
                   since=self.last_id)
            )  # fmt: skip
            detail = ""
            try:
                with connect(url, open_timeout=CALL_TIMEOUT, close_timeout=1) as ws:
                    failures = 0
                    ws.send(json.dumps(request))
                    self.joined.set()
                    for message in messages(ws, self.stop):
                        self.rec.add(
                            Op(FRAME, self.name, self.rec.now(), room=self.room,
                               id=message["id"], text=message["text"], replica=NAMES[i])
                        )  # fmt: skip
                        self.last_id = message["id"]
                        self.count += 1
                        if self.rng.random() < TAIL_QUITS:
                            detail = "client closed"
                            break
                    if self.stop.is_set():
                        detail = STOPPED
            except ConnectionClosed as exc:
                detail = str(exc.rcvd.code) if exc.rcvd else "closed without a code"
            except (OSError, TimeoutError, WebSocketException) as exc:
                detail = type(exc).__name__
                failures += 1
            self.rec.add(Op(END, self.name, self.rec.now(), room=self.room, replica=NAMES[i],
                            detail=detail))  # fmt: skip
            if detail in CLOSES.values():
                return  # the room was deleted: nothing to resume
            if not self.stop.is_set():
                time.sleep(0.1)


class Guest:
    """A user's live Join (no replay) on one replica, not resumed: it ends when kicked,
    when it leaves, or when something else closes it."""

    def __init__(self, c: Cluster, rec: Recorder, room: str, user: str, i: int) -> None:
        self.c, self.rec, self.room, self.name, self.i = c, rec, room, user, i
        self.live = threading.Event()
        self.stop = threading.Event()

    def run(self) -> None:
        url = f"ws://127.0.0.1:{self.c.port(self.i)}/v1/chat/Join"
        room, replica = self.room, NAMES[self.i]
        self.rec.add(Op(JOIN, self.name, self.rec.now(), room=room, replica=replica, detail=LIVE))
        detail = STOPPED
        try:
            with connect(url, open_timeout=CALL_TIMEOUT, close_timeout=1) as ws:
                ws.send(json.dumps({"room_id": self.room, "user_id": self.name}))
                for message in messages(ws, self.stop):
                    self.rec.add(Op(FRAME, self.name, self.rec.now(), room=room,
                                    replica=replica, id=message["id"],
                                    text=message["text"]))  # fmt: skip
                    self.live.set()
        except ConnectionClosed as exc:
            detail = str(exc.rcvd.code) if exc.rcvd else "closed without a code"
        except (OSError, TimeoutError, WebSocketException) as exc:
            detail = type(exc).__name__
        self.rec.add(Op(END, self.name, self.rec.now(), room=room, replica=replica, detail=detail))


class Kicker:
    """Guests in turn, each on one replica, kicked or leaving through another."""

    def __init__(self, c: Cluster, rec: Recorder, rooms: list[str], bound: float) -> None:
        self.c, self.rec, self.rooms, self.bound = c, rec, rooms, bound
        self.stop = threading.Event()

    def run(self) -> None:
        k = 0
        while not self.stop.is_set():
            room = self.rooms[k % len(self.rooms)]
            guest = Guest(self.c, self.rec, room, f"guest{k}", k % len(NAMES))
            thread = guarded(self.rec, guest.run)
            if guest.live.wait(5):
                what = KICK if k % 2 == 0 else LEAVE
                member_call(self.c, self.rec, what, room, guest.name, (k + 1) % len(NAMES))
                thread.join(self.bound + 5)  # it ends by itself (the checker says when)
            guest.stop.set()
            thread.join(10)
            k += 1
            time.sleep(0.3)


def member_call(c: Cluster, rec: Recorder, what: str, room: str, user: str, i: int) -> None:
    """Kick, Leave or Delete, retried on the next replica until answered (for 20 s)."""
    endpoint = {KICK: "Kick", LEAVE: "Leave", DELETE: "Delete"}[what]
    body = {"room_id": room} if what == DELETE else {"room_id": room, "user_id": user}
    deadline = time.monotonic() + 20
    attempt = 0
    while time.monotonic() < deadline:
        j = (i + attempt) % len(NAMES)
        start = rec.now()
        try:
            with httpx.Client(base_url=f"http://127.0.0.1:{c.port(j)}", timeout=CALL_TIMEOUT) as h:
                status = h.post(f"/v1/chat/{endpoint}", json=body).status_code
        except httpx.HTTPError as exc:
            outcome, detail = INFO, type(exc).__name__
        else:
            outcome, detail = _status_outcome(status), str(status)
        rec.add(
            Op(MEMBER, "kicker" if what != DELETE else "final", rec.now(), start=start,
               room=room, key=user, outcome=outcome, replica=NAMES[j],
               detail=what if outcome == OK else f"{what} {detail}")
        )  # fmt: skip
        if outcome != INFO:
            return
        attempt += 1
        time.sleep(0.05)


class Reader:
    """The whole History of each room, from one replica after another."""

    def __init__(self, c: Cluster, rec: Recorder, rooms: list[str]) -> None:
        self.c, self.rec, self.rooms = c, rec, rooms
        self.stop = threading.Event()

    def run(self) -> None:
        n = 0
        while not self.stop.is_set():
            read_history(self.c, self.rec, self.rooms[n % len(self.rooms)], n % len(NAMES))
            n += 1
            time.sleep(0.3)


def read_history(c: Cluster, rec: Recorder, room: str, i: int, detail: str = "") -> bool:
    """One History read of the whole room on replica ``i``, recorded when answered."""
    start = rec.now()
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{c.port(i)}", timeout=CALL_TIMEOUT) as h:
            r = h.post("/v1/chat/History", json={"room_id": room})
    except httpx.HTTPError:
        return False
    if r.status_code != 200:
        return False
    messages = r.json()["messages"]
    rec.add(
        Op(HISTORY, "reader" if not detail else "final", rec.now(), start=start, room=room,
           ids=tuple(m["id"] for m in messages), texts=tuple(m["text"] for m in messages),
           replica=NAMES[i], detail=detail)
    )  # fmt: skip
    return True


class Nemesis:
    """The faults, in turn, each recorded from its injection to its heal."""

    def __init__(self, c: Cluster, rec: Recorder) -> None:
        self.c, self.rec = c, rec

    def fault(self, what: str, inject: Callable[[], object], heal: Callable[[], object]) -> None:
        start = self.rec.now()
        inject()
        heal()
        self.rec.add(Op(FAULT, "nemesis", self.rec.now(), start=start, detail=what))

    def restart_postgres(self) -> None:
        """Every backend of the drill's database terminated: a restart, to its clients."""

        def terminate() -> None:
            with psycopg.connect(self.c.url, autocommit=True) as conn:
                conn.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                    " WHERE datname = current_database() AND pid <> pg_backend_pid()"
                )

        self.fault("PostgreSQL restarted (every backend terminated)", terminate, lambda: None)

    def pause_postgres(self) -> None:
        def pause() -> None:
            for p in self.c.proxies:
                p.pause()
            time.sleep(PAUSE)  # the fault's duration

        def resume() -> None:
            for p in self.c.proxies:
                p.resume()

        self.fault(f"PostgreSQL paused {PAUSE:g} s", pause, resume)

    def cut(self, i: int) -> None:
        self.fault(f"replica {NAMES[i]}'s connections cut (LISTEN too)",
                   self.c.proxies[i].drop, lambda: None)  # fmt: skip

    def kill(self, i: int) -> None:
        server = self.c.replicas[i]
        self.fault(f"replica {NAMES[i]} kill -9ed and restarted",
                   lambda: server.stop(signal.SIGKILL), server.start)  # fmt: skip

    def freeze(self, i: int) -> None:
        server = self.c.replicas[i]
        assert server.proc is not None
        pid = server.proc.pid

        def stop() -> None:
            os.kill(pid, signal.SIGSTOP)
            time.sleep(PAUSE)  # the fault's duration

        self.fault(f"replica {NAMES[i]} SIGSTOPped {PAUSE:g} s", stop,
                   lambda: os.kill(pid, signal.SIGCONT))  # fmt: skip

    def cycle(self, n: int) -> list[Callable[[], None]]:
        """The faults of one turn; the ``n``th turn picks other replicas."""
        k = n % len(NAMES)
        return [
            self.restart_postgres,
            self.pause_postgres,
            lambda: self.cut((k + 1) % 3),
            lambda: self.kill((k + 2) % 3),
            lambda: self.freeze(k),
        ]


def run_load(
    c: Cluster, rec: Recorder, rooms: list[str], nemesis: Callable[[], None], bound: float
) -> list[str]:
    """Clients on, the nemesis's faults, clients off; the history is in ``rec``. Returns
    what the drill's own steps noticed (a tail that never caught up...)."""
    notes: list[str] = []
    tails = [Tail(c, rec, room, n, i) for n, room in enumerate(rooms) for i in range(len(NAMES))]
    tail_threads = [guarded(rec, t.run) for t in tails]
    for t in tails:
        if not t.joined.wait(15):
            notes.append(f"{t.name} never joined")
    writers: list[Writer] = [Writer(c, rec, rooms, i) for i in range(3)]
    writers.append(BulkWriter(c, rec, rooms))
    reader = Reader(c, rec, rooms)
    kicker = Kicker(c, rec, rooms, bound)
    threads = [guarded(rec, w.run) for w in writers]
    threads += [guarded(rec, reader.run), guarded(rec, kicker.run)]
    try:
        nemesis()
    finally:
        for w in writers:
            w.give_up = time.monotonic() + 20
            w.stop.set()
        reader.stop.set()
        kicker.stop.set()
        for th in threads:
            th.join(40)
    # The reference: the rooms' History once every Send is answered or given up.
    final: dict[str, tuple[str, ...]] = {}
    for room in rooms:
        deadline = time.monotonic() + 20
        while room not in final and time.monotonic() < deadline:
            if read_history(c, rec, room, 0, "reference"):
                final[room] = rec.snapshot()[-1].ids
    # Every tail catches up with its room, or the checker says which did not.
    deadline = time.monotonic() + bound + 5
    for t in tails:
        want = final.get(t.room, ())
        while want and t.last_id != want[-1] and time.monotonic() < deadline:
            time.sleep(0.05)
    # The final reads, on every replica: each must be the same.
    for room in rooms:
        for i in (1, 2, 0):
            if not read_history(c, rec, room, i, "final"):
                notes.append(f"final History of {room} on {NAMES[i]} not answered")
    # Every room deleted: each of its tails ends with 4404 (the checker says when).
    for room in rooms:
        member_call(c, rec, DELETE, room, "", 1)
    for th in tail_threads:
        th.join(bound + 5)
    for tail in tails:
        tail.stop.set()
    for th in tail_threads:
        th.join(10)
    return notes


def describe_faults(ops: list[Op]) -> str:
    faults = [o for o in ops if o.kind == FAULT]
    return "\n".join(f"  {o.began:7.2f}..{o.t:7.2f} s  {o.detail}" for o in faults)


def as_dicts(ops: list[Op]) -> list[dict[str, Any]]:
    return [dict(o.__dict__) for o in ops]
