"""The cluster drill's checker (issue 27): a pure function over a recorded history.

A history is every operation the drill's clients and its nemesis did, each an ``Op`` with
its times: a Send attempt (a single Send or one line of a bulk Send) and how it ended, a
Join stream's joins and resumes, each message frame it received and how each connection
ended, each History read (the whole room, oldest first) and each fault, from its injection
to its heal. ``check`` reads nothing else: no server, no clock. It is what Jepsen's queue
checkers (``jepsen/tests/kafka.clj``) check, for chatctl's rooms:

- **acknowledged is stored**: every key a Send was answered 200 for is in the room's final
  History, under the id it was answered with (no acknowledged message lost);
- **stored once**: no message twice in the final History (a key retried after a timeout,
  a 503 or a dropped connection, on any replica, is stored once), every answer for one key
  the same message, and nothing stored that no client sent;
- **one order**: each room has one order: every History read, on any replica, is a prefix
  of the room's final History, and the final reads of every replica are the same;
- **reads see acknowledgements**: a History read begun after a Send was acknowledged has
  that message;
- **streams exact**: a stream (one client's Join, resumed with ``since`` after each close)
  receives the room's messages in that order, each once: no skip, no repeat, no reorder,
  across all its resumes;
- **seen within the bound**: every acknowledged message reaches every stream of its room
  within ``bound`` seconds of its acknowledgement, or of the heal of the faults under way
  when it was acknowledged (unless the stream ended for good first);
- **streams ended exactly**: a Kick or Leave acknowledged ends the user's stream, and a
  Delete every stream of the room, with its close code (4403, 4404), within the same
  bound; and no stream ends so before any of them was asked.

A violation comes with the smallest history that shows it: the operations of the
processes involved in the window where it happened, and the faults overlapping that
window, not the whole log (``Violation.show``). ``tests/faults/test_checker.py`` feeds it
hand-made histories with each kind of fault in them; ``tests/faults/test_cluster.py``
records real ones.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

__all__ = ["INVARIANTS", "Op", "Result", "Violation", "check"]

#: the invariants, in the order they are reported.
INVARIANTS = (
    "acknowledged is stored",
    "stored once",
    "one order",
    "reads see acknowledgements",
    "streams exact",
    "seen within the bound",
    "streams ended exactly",
)

#: Op kinds. A ``member`` op is a Kick, Leave or Delete (``detail``) of the user ``key``.
SEND, JOIN, FRAME, END, HISTORY, FAULT = "send", "join", "frame", "end", "history", "fault"
MEMBER = "member"
KICK, LEAVE, DELETE = "kick", "leave", "delete"
#: the close code each membership change ends a stream with.
CLOSES = {KICK: "4403", LEAVE: "4403", DELETE: "4404"}
#: a Send's outcomes: answered 200, refused for good (a 4xx), unknown (a timeout, a 503,
#: a dropped connection, a line of a bulk Send left unanswered: it may or may not be stored).
OK, FAIL, INFO = "ok", "fail", "info"
#: an ``end`` whose detail is this ends its stream for good (the drill stopped it).
STOPPED = "stopped"
#: a ``join`` whose detail is this asked for no replay: its stream starts where it joined.
LIVE = "live"


@dataclass(frozen=True)
class Op:
    """One operation. ``start`` is when it began (a call's request, a fault's injection),
    ``t`` when it ended (the answer, a frame's arrival, the heal); both on one clock."""

    kind: str
    process: str
    t: float
    start: float | None = None
    room: str = ""
    #: a Send's Idempotency-Key (a bulk line's: ``K/n``); its text is unique to the key.
    key: str = ""
    text: str = ""
    outcome: str = ""
    #: the message id a Send was answered with, or a frame carried.
    id: str = ""
    #: a History read: the ids, oldest first.
    ids: tuple[str, ...] = ()
    #: the texts of ``ids``, in the same order.
    texts: tuple[str, ...] = ()
    replica: str = ""
    #: a stream's join: the ``since`` it resumed from ("" from the start).
    since: str = ""
    #: a status, a close code, what a fault did; ``final`` on the drill's last History reads.
    detail: str = ""

    @property
    def began(self) -> float:
        return self.t if self.start is None else self.start

    def show(self) -> str:
        parts = [f"{self.began:9.3f}"]
        parts.append(f"..{self.t:9.3f}" if self.start is not None else " " * 11)
        parts += [self.process, self.kind]
        for name in ("room", "replica", "key", "text", "outcome", "id", "since", "detail"):
            value = getattr(self, name)
            if value:
                parts.append(f"{name}={value}")
        if self.kind == HISTORY:
            parts.append(f"messages={len(self.ids)}")
        return " ".join(parts)


@dataclass
class Violation:
    invariant: str
    message: str
    #: the smallest history showing it, in time order.
    ops: list[Op] = field(default_factory=list)

    def show(self) -> str:
        lines = [f"{self.invariant}: {self.message}"]
        lines += ["    " + op.show() for op in sorted(self.ops, key=lambda o: (o.began, o.t))]
        return "\n".join(lines)


@dataclass
class Result:
    """How many cases each invariant checked, and what broke."""

    checked: dict[str, int] = field(default_factory=lambda: dict.fromkeys(INVARIANTS, 0))
    violations: list[Violation] = field(default_factory=list)
    #: the longest a stream took to receive an acknowledged message after its
    #: acknowledgement (seconds), faults or not.
    lag_max: float = 0.0

    @property
    def valid(self) -> bool:
        return not self.violations

    def broken(self, invariant: str) -> list[Violation]:
        return [v for v in self.violations if v.invariant == invariant]

    def report(self, limit: int = 5) -> str:
        """Each invariant with its count and verdict; the first violations, each with its
        smallest history."""
        lines = []
        for name in INVARIANTS:
            bad = len(self.broken(name))
            verdict = "ok" if not bad else f"{bad} VIOLATED"
            lines.append(f"  {name}: {self.checked[name]} checked, {verdict}")
        lines.append(f"  (longest from an acknowledgement to a stream: {self.lag_max:.2f} s)")
        for v in self.violations[:limit]:
            lines.append(v.show())
        if len(self.violations) > limit:
            lines.append(f"... and {len(self.violations) - limit} more violations")
        return "\n".join(lines)


def check(history: Sequence[Op], *, bound: float) -> Result:
    """Check a recorded history against every invariant (see the module's doc)."""
    ops = sorted(history, key=lambda o: o.t)
    result = Result()
    context = _Context(ops)
    _acknowledged_stored(context, result)
    _stored_once(context, result)
    _one_order(context, result)
    _reads_see_acks(context, result)
    _streams_exact(context, result)
    _seen_within(context, result, bound)
    _ended_exactly(context, result, bound)
    return result


class _Context:
    """What the checks share: the ops grouped, each room's final order."""

    def __init__(self, ops: list[Op]) -> None:
        self.ops = ops
        self.faults = [o for o in ops if o.kind == FAULT]
        self.sends: dict[str, list[Op]] = defaultdict(list)  # key -> attempts
        self.key_of_text: dict[str, str] = {}
        self.reads: dict[str, list[Op]] = defaultdict(list)  # room -> History reads
        self.streams: dict[str, list[Op]] = defaultdict(list)  # process -> its ops
        for o in ops:
            if o.kind == SEND:
                self.sends[o.key].append(o)
                self.key_of_text[o.text] = o.key
            elif o.kind == HISTORY:
                self.reads[o.room].append(o)
            elif o.kind in (JOIN, FRAME, END):
                self.streams[o.process].append(o)
        self.members = [o for o in ops if o.kind == MEMBER and o.outcome == OK]
        #: each room's final History (its last read), the reference order.
        self.final: dict[str, Op] = {room: reads[-1] for room, reads in self.reads.items()}
        self.position: dict[str, dict[str, int]] = {
            room: {mid: i for i, mid in enumerate(read.ids)} for room, read in self.final.items()
        }
        #: the acknowledgement of each key: its first attempt answered 200.
        self.acked: dict[str, Op] = {}
        for key, attempts in self.sends.items():
            ok = [a for a in attempts if a.outcome == OK]
            if ok:
                self.acked[key] = ok[0]

    def window(self, t0: float, t1: float, processes: Iterable[str]) -> list[Op]:
        """The ops of ``processes`` that overlap [t0, t1], and the faults that do."""
        wanted = set(processes)
        return [
            o
            for o in self.ops
            if (o.process in wanted or o.kind == FAULT) and o.began <= t1 and o.t >= t0
        ]

    def final_around(self, room: str, index: int) -> str:
        """A few ids of the final History around ``index``, for a message."""
        read = self.final[room]
        lo, hi = max(0, index - 2), min(len(read.ids), index + 3)
        shown = [
            f"#{i}={read.ids[i]}({read.texts[i] if read.texts else ''})" for i in range(lo, hi)
        ]
        return " ".join(shown)


def _acknowledged_stored(c: _Context, r: Result) -> None:
    name = INVARIANTS[0]
    for key, ack in c.acked.items():
        r.checked[name] += 1
        final = c.final.get(ack.room)
        if final is None:
            r.violations.append(Violation(name, f"room {ack.room} never read", [ack]))
            continue
        if ack.id not in c.position[ack.room]:
            attempts = c.sends[key]
            t0 = min(a.began for a in attempts)
            r.violations.append(
                Violation(
                    name,
                    f"{ack.text!r} (key {key}) acknowledged as {ack.id}, "
                    f"not in the final History of {ack.room} ({len(final.ids)} messages)",
                    [*c.window(t0, ack.t, {ack.process}), final],
                )
            )


def _stored_once(c: _Context, r: Result) -> None:
    name = INVARIANTS[1]
    for key, attempts in c.sends.items():
        ids = {a.id for a in attempts if a.outcome == OK}
        if len(ids) > 1:
            r.violations.append(
                Violation(name, f"key {key} answered with {len(ids)} messages: {sorted(ids)}",
                          list(attempts))
            )  # fmt: skip
    for room, final in c.final.items():
        seen: dict[str, int] = {}
        seen_ids: set[str] = set()
        for i, (mid, text) in enumerate(zip(final.ids, final.texts, strict=True)):
            r.checked[name] += 1
            sent_key = c.key_of_text.get(text)
            if text in seen:
                attempts = c.sends.get(sent_key or "", [])
                r.violations.append(
                    Violation(
                        name,
                        f"{text!r} stored twice in {room}: #{seen[text]} "
                        f"{final.ids[seen[text]]} and #{i} {mid}",
                        [*attempts, final],
                    )
                )
            elif sent_key is None:
                r.violations.append(
                    Violation(name, f"{mid} ({text!r}) in {room} was never sent", [final])
                )
            seen.setdefault(text, i)
            if mid in seen_ids:
                r.violations.append(Violation(name, f"id {mid} twice in {room}", [final]))
            seen_ids.add(mid)


def _one_order(c: _Context, r: Result) -> None:
    name = INVARIANTS[2]
    for room, reads in c.reads.items():
        final = c.final[room]
        for read in reads:
            r.checked[name] += 1
            n = len(read.ids)
            if read.ids != final.ids[:n]:
                pairs = enumerate(zip(read.ids, final.ids, strict=False))
                i = next(
                    (i for i, (a, b) in pairs if a != b),
                    min(n, len(final.ids)),
                )
                got = read.ids[i] if i < n else "(nothing)"
                r.violations.append(
                    Violation(
                        name,
                        f"History of {room} read on {read.replica or '?'} differs from the "
                        f"final order at #{i}: {got}; final: {c.final_around(room, i)}",
                        [read, final],
                    )
                )
            elif read.detail == "final" and n != len(final.ids):
                r.violations.append(
                    Violation(
                        name,
                        f"final History of {room} on {read.replica} has {n} messages, "
                        f"on {final.replica} {len(final.ids)}",
                        [read, final],
                    )
                )


def _reads_see_acks(c: _Context, r: Result) -> None:
    name = INVARIANTS[3]
    acks_by_room: dict[str, list[Op]] = defaultdict(list)
    for ack in c.acked.values():
        acks_by_room[ack.room].append(ack)
    for room, reads in c.reads.items():
        acks = sorted(acks_by_room.get(room, ()), key=lambda a: a.t)
        for read in reads:
            ids = set(read.ids)
            for ack in acks:
                if ack.t >= read.began:
                    break
                r.checked[name] += 1
                if ack.id not in ids:
                    r.violations.append(
                        Violation(
                            name,
                            f"History of {room} on {read.replica or '?'} begun at "
                            f"{read.began:.3f} lacks {ack.id} ({ack.text!r}), "
                            f"acknowledged at {ack.t:.3f}",
                            [ack, read],
                        )
                    )


def _streams_exact(c: _Context, r: Result) -> None:
    """Each stream's frames, across its resumes, are the start of its room's order."""
    name = INVARIANTS[4]
    for process, ops in c.streams.items():
        joins = [o for o in ops if o.kind == JOIN]
        if not joins:
            continue
        room = joins[0].room
        order = c.final[room].ids if room in c.final else ()
        position = c.position.get(room, {})
        since = joins[0].since
        expected = position[since] + 1 if since else 0
        if joins[0].detail == LIVE:  # from its first frame on, whichever that is
            first = next((o for o in ops if o.kind == FRAME), None)
            expected = position.get(first.id, 0) if first is not None else 0
        delivered: dict[str, Op] = {}
        previous: Op | None = None
        broken = False
        for o in ops:
            if o.kind != FRAME or broken:
                continue
            r.checked[name] += 1
            want = order[expected] if expected < len(order) else None
            if o.id == want:
                delivered[o.id] = o
                previous = o
                expected += 1
                continue
            broken = True  # one violation a stream: after it every frame would be off
            t0 = previous.t if previous is not None else joins[0].began
            shown = c.window(t0, o.t, {process})
            if o.id in delivered:
                what = f"repeated {o.id} ({o.text!r}), first received at {delivered[o.id].t:.3f}"
            elif o.id not in position:
                what = f"received {o.id} ({o.text!r}), not in the final History"
            elif position[o.id] < expected:
                what = f"received {o.id} ({o.text!r}) out of order (#{position[o.id]})"
            else:
                what = f"skipped #{expected} {want}: received #{position[o.id]} {o.id} next"
                key = _key_of(c, room, expected)
                shown += c.sends.get(key, [])
            after = f" after {previous.id}" if previous is not None else " first"
            r.violations.append(
                Violation(
                    name,
                    f"stream {process} of {room}{after}: {what}; "
                    f"final: {c.final_around(room, expected)}",
                    shown,
                )
            )


def _key_of(c: _Context, room: str, index: int) -> str:
    final = c.final[room]
    if index >= len(final.texts):
        return ""
    return c.key_of_text.get(final.texts[index], "")


def _heal_after(c: _Context, t: float) -> float:
    """When the faults under way at ``t`` had all healed (``t`` when none was)."""
    healed = t
    for f in c.faults:
        if f.began <= healed and f.t >= healed:
            healed = f.t
    return healed


def _seen_within(c: _Context, r: Result, bound: float) -> None:
    name = INVARIANTS[5]
    for process, ops in c.streams.items():
        joins = [o for o in ops if o.kind == JOIN]
        if not joins or joins[0].detail == LIVE:
            continue  # a live-only stream is checked for its order and its end
        room = joins[0].room
        first = joins[0].began
        stopped = next((o.t for o in ops if o.kind == END and o.detail == STOPPED), None)
        got = {o.id: o.t for o in ops if o.kind == FRAME}
        late: list[tuple[Op, float, float | None]] = []
        for ack in c.acked.values():
            if ack.room != room:
                continue
            deadline = _heal_after(c, max(ack.t, first)) + bound
            if stopped is not None and stopped < deadline and ack.id not in got:
                continue  # the stream ended for good before it was due
            r.checked[name] += 1
            seen = got.get(ack.id)
            if seen is not None:
                r.lag_max = max(r.lag_max, seen - ack.t)
            if seen is None or seen > deadline:
                late.append((ack, deadline, seen))
        for ack, deadline, seen in late[:3]:
            when = "never" if seen is None else f"at {seen:.3f}"
            shown = [ack, *c.window(ack.t, deadline, {process})]
            if len(shown) > 40:  # a stream's frames over a long window: its joins and ends
                shown = [o for o in shown if o.kind != FRAME or o.t > deadline - 0.5][:40]
            r.violations.append(
                Violation(
                    name,
                    f"stream {process} of {room} received {ack.id} ({ack.text!r}) {when}, "
                    f"due by {deadline:.3f} (acknowledged at {ack.t:.3f}, bound {bound:g} s)"
                    + (f"; {len(late) - 3} more late" if len(late) > 3 else ""),
                    shown,
                )
            )


def _ended_exactly(c: _Context, r: Result, bound: float) -> None:
    """A Kick, Leave or Delete ends its streams within the bound (with its close code, or
    by whatever else closed them first, such as their replica dying; a stream that joins
    again must be refused with the code), and they receive no message sent after it."""
    name = INVARIANTS[6]
    asked: dict[str, float] = {}  # stream process -> when its end was first asked for
    for change in c.members:
        code = CLOSES[change.detail]
        if change.detail == DELETE:
            targets = [
                p
                for p, ops in c.streams.items()
                if ops[0].room == change.room
                and ops[0].began < change.t
                and not any(o.kind == END and o.detail == STOPPED and o.t < change.t for o in ops)
            ]
        else:
            targets = [change.key] if change.key in c.streams else []
        deadline = _heal_after(c, change.t) + bound
        for process in targets:
            asked[process] = min(asked.get(process, change.began), change.began)
            ops = c.streams[process]
            before = [o for o in ops if o.kind == END and o.t < change.began]
            if before and not any(o.kind == JOIN and o.began > before[-1].t for o in ops):
                continue  # it had ended for good already (a fault ended it, say)
            r.checked[name] += 1
            after = [o for o in ops if o.t >= change.began]
            last = after[-1] if after else None
            rejoined = any(o.kind == JOIN for o in after)
            if last is None or last.kind != END or last.t > deadline:
                ended = last is not None and last.kind == END
                what = f"ended only at {last.t:.3f}" if ended and last else "never ended"
            elif rejoined and last.detail != code:
                what = f"rejoined, and its last end was {last.detail}, not {code}"
            else:
                late = [
                    o
                    for o in after
                    if o.kind == FRAME and o.t > change.t and _sent_after(c, o, change.t)
                ]
                if not late:
                    continue
                what = f"received {late[0].id} ({late[0].text!r}), sent after it"
            shown = [change, *c.window(change.began, deadline, {process})][:40]
            r.violations.append(
                Violation(
                    name,
                    f"{change.detail} of {change.key or change.room} acknowledged at "
                    f"{change.t:.3f}, due by {deadline:.3f}: stream {process} {what}",
                    shown,
                )
            )
    for process, ops in c.streams.items():
        for o in ops:
            if o.kind == END and o.detail in CLOSES.values() and o.t < asked.get(process, o.t + 1):
                r.checked[name] += 1
                r.violations.append(
                    Violation(name, f"stream {process} ended with {o.detail} before any "
                              "Kick, Leave or Delete of it was asked", [o])
                )  # fmt: skip


def _sent_after(c: _Context, frame: Op, t: float) -> bool:
    """True when the frame's message was first sent after ``t``."""
    attempts = c.sends.get(c.key_of_text.get(frame.text, ""), [])
    return bool(attempts) and min(a.began for a in attempts) > t
