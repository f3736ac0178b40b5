"""The cluster checker (tests/faults/checker.py) on hand-made histories: a clean one passes
with every invariant counted, and each kind of fault (a loss, a duplicate, a reorder, a
skip or a repeat across a resume, a late or missing delivery, a stale read) is caught and
shown with the few operations around it, not the whole history."""

from __future__ import annotations

from dataclasses import replace

from tests.faults.checker import (
    DELETE,
    END,
    FAULT,
    FRAME,
    HISTORY,
    INFO,
    INVARIANTS,
    JOIN,
    KICK,
    LIVE,
    MEMBER,
    OK,
    SEND,
    STOPPED,
    Op,
    check,
)

BOUND = 2.0


def send(key: str, t: float, outcome: str = OK, mid: str = "", process: str = "w0") -> Op:
    return Op(
        SEND, process, t, start=t - 0.01, room="r", key=key, text=f"text-{key}",
        outcome=outcome, id=mid if outcome == OK else "", replica="a",
    )  # fmt: skip


def read(t: float, *keys: str, replica: str = "a", detail: str = "") -> Op:
    return Op(
        HISTORY, "reader", t, start=t - 0.01, room="r", ids=tuple(f"m{k}" for k in keys),
        texts=tuple(f"text-{k}" for k in keys), replica=replica, detail=detail,
    )  # fmt: skip


def frame(process: str, key: str, t: float) -> Op:
    return Op(FRAME, process, t, room="r", id=f"m{key}", text=f"text-{key}", replica="b")


def join(process: str, t: float, since: str = "") -> Op:
    return Op(JOIN, process, t, start=t - 0.01, room="r", replica="b", since=since)


#: the final reads of clean(): on a (the reference) and on b.
FINAL_A = read(6.0, "1", "2", "3", detail="final")
FINAL_B = read(5.0, "1", "2", "3", replica="b", detail="final")
TAIL_STOPPED = Op(END, "tail", 5.5, room="r", replica="b", detail=STOPPED)


def swap(history: list[Op], old: Op, new: Op | None) -> list[Op]:
    """``history`` with ``old`` replaced by ``new`` (or dropped)."""
    i = history.index(old)
    return history[:i] + ([new] if new is not None else []) + history[i + 1 :]


def clean() -> list[Op]:
    """Three acknowledged Sends (one retried after a timeout), a stream that resumes once,
    a fault, reads along the way and the final reads on two replicas; a guest's live
    stream ended by a kick, and the room deleted under a second stream at the end."""
    return [
        join("tail", 0.5),
        join("tail2", 0.6),
        send("1", 1.0, mid="m1"),
        frame("tail", "1", 1.1),
        frame("tail2", "1", 1.12),
        replace(join("g1", 1.5), detail=LIVE),
        send("2", 2.0, INFO),  # timed out: stored after all, and retried with its key
        Op(FAULT, "nemesis", 2.5, start=1.9, detail="pause PostgreSQL"),
        send("2", 2.6, mid="m2"),
        read(2.7, "1", "2"),
        Op(END, "tail", 2.8, room="r", replica="b", detail="1001"),
        join("tail", 3.0, since="m1"),
        frame("tail", "2", 3.1),
        frame("tail2", "2", 3.12),
        frame("g1", "2", 3.15),
        Op(MEMBER, "kicker", 3.5, start=3.45, room="r", key="g1", outcome=OK, detail=KICK),
        Op(END, "g1", 3.6, room="r", replica="b", detail="4403"),
        send("3", 4.0, mid="m3", process="bulk"),
        frame("tail", "3", 4.2),
        frame("tail2", "3", 4.22),
        FINAL_B,
        TAIL_STOPPED,
        FINAL_A,
        Op(MEMBER, "final", 6.2, start=6.1, room="r", outcome=OK, detail=DELETE),
        Op(END, "tail2", 6.3, room="r", replica="b", detail="4404"),
    ]


def test_a_clean_history_passes_with_every_invariant_counted() -> None:
    result = check(clean(), bound=BOUND)
    assert result.valid, result.report()
    assert result.checked == {
        "acknowledged is stored": 3,
        "stored once": 3,
        "one order": 3,
        "reads see acknowledgements": 2 + 3 + 3,
        "streams exact": 3 + 3 + 1,
        "seen within the bound": 3 + 3,
        "streams ended exactly": 2,
    }
    assert "longest from an acknowledgement to a stream: 0.52 s" in result.report()


def test_a_lost_acknowledged_message_is_caught() -> None:
    history = swap(clean(), FINAL_A, read(6.0, "1", "3", detail="final"))  # m2 gone
    history = swap(history, FINAL_B, read(5.0, "1", "3", replica="b", detail="final"))
    result = check(history, bound=BOUND)
    [lost] = result.broken("acknowledged is stored")
    assert "'text-2' (key 2) acknowledged as m2" in lost.message
    # The smallest history: both attempts of key 2, the fault between them, the final
    # read; not key 1's or key 3's Sends, not the stream.
    shown = lost.show()
    assert "key=2" in shown and "pause PostgreSQL" in shown and "messages=2" in shown
    assert "key=1 " not in shown and "key=3 " not in shown and " tail " not in shown
    assert result.broken("reads see acknowledgements")  # the later reads lack it too


def test_a_message_stored_twice_is_caught() -> None:
    # The retried key 2 stored a second time, under another id.
    history = swap(clean(), FINAL_A, replace(
        FINAL_A,
        ids=("m1", "m2", "m2b", "m3"),
        texts=("text-1", "text-2", "text-2", "text-3"),
    ))  # fmt: skip
    result = check(history, bound=BOUND)
    [twice] = result.broken("stored once")
    assert "'text-2' stored twice in r: #1 m2 and #2 m2b" in twice.message
    assert twice.show().count(" send ") == 2  # key 2's two attempts


def test_two_answers_for_one_key_are_caught() -> None:
    history = [*clean(), send("2", 6.5, mid="m9")]
    result = check(history, bound=BOUND)
    [twice] = result.broken("stored once")
    assert "key 2 answered with 2 messages: ['m2', 'm9']" in twice.message


def test_a_message_nobody_sent_is_caught() -> None:
    more = replace(FINAL_A, ids=(*FINAL_A.ids, "mx"), texts=(*FINAL_A.texts, "x"))
    history = swap(clean(), FINAL_A, more)
    result = check(history, bound=BOUND)
    assert any("never sent" in v.message for v in result.broken("stored once"))


def test_a_reordered_history_on_one_replica_is_caught() -> None:
    history = swap(clean(), FINAL_B, read(5.0, "2", "1", "3", replica="b", detail="final"))
    result = check(history, bound=BOUND)
    [order] = result.broken("one order")
    assert "read on b differs from the final order at #0: m2" in order.message


def test_a_replica_whose_final_history_falls_short_is_caught() -> None:
    history = swap(clean(), FINAL_B, read(5.0, "1", "2", replica="b", detail="final"))
    result = check(history, bound=BOUND)
    [order] = result.broken("one order")
    assert "final History of r on b has 2 messages, on a 3" in order.message


def test_a_stream_that_skips_a_message_across_a_resume_is_caught() -> None:
    history = swap(clean(), frame("tail", "2", 3.1), None)
    result = check(history, bound=BOUND)
    [skip] = result.broken("streams exact")
    assert "stream tail of r after m1: skipped #1 m2: received #2 m3 next" in skip.message
    shown = skip.show()
    # The resume that lost it (the close, the join since m1), key 2's Sends, the fault.
    assert "detail=1001" in shown and "since=m1" in shown and "key=2" in shown
    assert "pause PostgreSQL" in shown
    # and it never arrived at all
    assert any("m2" in v.message and "never" in v.message for v in result.broken(INVARIANTS[5]))


def test_a_stream_that_repeats_a_message_after_a_resume_is_caught() -> None:
    history = [*clean(), frame("tail", "1", 3.05)]  # resumed since m1, and got m1 again
    result = check(history, bound=BOUND)
    [repeat] = result.broken("streams exact")
    assert "repeated m1 ('text-1'), first received at 1.100" in repeat.message


def test_a_stream_that_gets_messages_out_of_order_is_caught() -> None:
    history = swap(clean(), frame("tail", "2", 3.1), frame("tail", "3", 3.1))
    history = swap(history, frame("tail", "3", 4.2), frame("tail", "2", 4.2))
    result = check(history, bound=BOUND)
    [reorder] = result.broken("streams exact")
    assert "skipped #1 m2: received #2 m3 next" in reorder.message


def test_a_delivery_later_than_the_bound_after_the_heal_is_caught() -> None:
    # m3 acknowledged at 4.0 with no fault under way: due by 6.0.
    history = swap(clean(), frame("tail", "3", 4.2), frame("tail", "3", 6.5))
    history = swap(history, TAIL_STOPPED, replace(TAIL_STOPPED, t=6.05))
    result = check(history, bound=BOUND)
    [late] = result.broken("seen within the bound")
    assert "received m3 ('text-3') at 6.500, due by 6.000" in late.message
    # m2, acknowledged during the fault (healed at 2.5)... at 2.6, after the heal: due 4.6.
    assert result.checked["seen within the bound"] == 6


def test_the_bound_runs_from_the_heal_of_the_faults_under_way() -> None:
    fault = next(o for o in clean() if o.kind == FAULT)
    history = swap(clean(), fault, Op(FAULT, "nemesis", 5.0, start=1.9, detail="SIGSTOP b"))
    # m3, acknowledged at 4.0 in the fault: due by 7.0
    history = swap(history, frame("tail", "3", 4.2), frame("tail", "3", 6.5))
    history = swap(history, TAIL_STOPPED, replace(TAIL_STOPPED, t=6.05))
    result = check(history, bound=BOUND)
    assert result.valid, result.report()


def test_a_stream_stopped_before_a_message_was_due_is_not_blamed() -> None:
    history = swap(clean(), frame("tail", "3", 4.2), None)  # m3 never reached the tail...
    history = swap(history, TAIL_STOPPED, replace(TAIL_STOPPED, t=4.1))  # ...stopped first
    result = check(history, bound=BOUND)
    assert result.valid, result.report()


def test_a_read_that_misses_an_acknowledged_message_is_caught() -> None:
    history = swap(clean(), read(2.7, "1", "2"), read(2.7, "1"))  # after m2's ack, without it
    result = check(history, bound=BOUND)
    [stale] = result.broken("reads see acknowledgements")
    assert "lacks m2 ('text-2'), acknowledged at 2.600" in stale.message
    assert not result.broken("one order")  # a prefix: in order, only stale


def test_the_report_names_each_invariant_with_its_count() -> None:
    history = swap(clean(), FINAL_A, read(6.0, "1", "3", detail="final"))
    report = check(history, bound=BOUND).report()
    assert "  acknowledged is stored: 3 checked, 1 VIOLATED" in report
    assert "  streams exact: " in report and "  seen within the bound: " in report


def test_a_kick_that_does_not_end_the_stream_is_caught() -> None:
    history = [o for o in clean() if not (o.process == "g1" and o.kind == END)]
    result = check(history, bound=BOUND)
    # and the delete at the end did not end it either
    kept, _ = result.broken("streams ended exactly")
    assert "kick of g1 acknowledged at 3.500, due by 5.500: stream g1 never ended" in kept.message
    assert "kicker member" in kept.show()


def test_a_kick_that_ends_the_stream_late_is_caught() -> None:
    kicked = Op(END, "g1", 3.6, room="r", replica="b", detail="4403")
    history = swap(clean(), kicked, replace(kicked, t=5.7))
    result = check(history, bound=BOUND)
    [late] = result.broken("streams ended exactly")
    assert "due by 5.500: stream g1 ended only at 5.700" in late.message


def test_a_delete_that_leaves_a_stream_open_is_caught() -> None:
    history = [o for o in clean() if not (o.process == "tail2" and o.kind == END)]
    result = check(history, bound=BOUND)
    [kept] = result.broken("streams ended exactly")
    assert "delete of r acknowledged at 6.200, due by 8.200: stream tail2 never" in kept.message


def test_a_stream_ended_as_kicked_with_no_kick_is_caught() -> None:
    history = [o for o in clean() if o.kind != MEMBER]
    result = check(history, bound=BOUND)
    assert len(result.broken("streams ended exactly")) == 2
    assert "stream g1 ended with 4403 before any Kick" in result.report()


def test_a_kicked_stream_ended_by_its_replica_dying_is_ended() -> None:
    kicked = Op(END, "g1", 3.6, room="r", replica="b", detail="4403")
    history = swap(clean(), kicked, replace(kicked, detail="closed without a code"))
    assert check(history, bound=BOUND).valid


def test_a_kicked_stream_that_gets_a_message_sent_after_the_kick_is_caught() -> None:
    kicked = Op(END, "g1", 3.6, room="r", replica="b", detail="4403")
    history = swap(clean(), kicked, replace(kicked, t=4.3))
    history.append(frame("g1", "3", 4.25))  # m3, sent at 3.99, after the kick's 3.5
    result = check(history, bound=BOUND)
    [leak] = result.broken("streams ended exactly")
    assert "stream g1 received m3 ('text-3'), sent after it" in leak.message


def test_a_stream_that_rejoins_a_deleted_room_must_be_refused_with_4404() -> None:
    history = clean()[:-1]
    history += [
        Op(END, "tail2", 6.3, room="r", replica="b", detail="1001"),
        join("tail2", 6.5),
        Op(END, "tail2", 6.6, room="r", replica="b", detail="1001"),
    ]
    result = check(history, bound=BOUND)
    [kept] = result.broken("streams ended exactly")
    assert "stream tail2 rejoined, and its last end was 1001, not 4404" in kept.message
