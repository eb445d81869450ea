"""Fair admission, as bookkeeping: per-client queues taken round-robin, a per-client cap, and a
client within its share getting in when another floods (tunerd.daemon.admission)."""
from __future__ import annotations

import pytest

from tunerd.daemon.admission import Admission


def feed(adm: Admission, client: str, seqs) -> list:
    return [adm.admit(client, s, f"frame{s}") for s in seqs]


def take(adm: Admission, n: int) -> list:
    out = []
    for _ in range(n):
        item = adm.next()
        if item is None:
            break
        out.append(item[:2])
    return out


def test_clients_take_turns_into_the_pipeline():
    adm = Admission(queue_depth=64, client_cap=32)
    feed(adm, "flood", range(1, 21))          # 20 frames queued before the polite client's one
    feed(adm, "polite", [100])
    feed(adm, "other", [200, 201])
    order = take(adm, 6)
    assert order == [("flood", 1), ("polite", 100), ("other", 200), ("flood", 2), ("other", 201), ("flood", 3)]
    assert adm.queued == 23 - 6 and adm.total == 23       # taken frames stay admitted until answered


def test_a_frame_the_pipeline_refused_goes_first_again():
    adm = Admission(queue_depth=8, client_cap=8)
    feed(adm, "a", [1, 2])
    feed(adm, "b", [3])
    client, seq, frame = adm.next()
    adm.put_back(client, seq, frame)
    assert take(adm, 3) == [("a", 1), ("b", 3), ("a", 2)]


def test_a_client_at_its_cap_is_refused_whoever_else_is_there():
    adm = Admission(queue_depth=64, client_cap=4)
    decisions = feed(adm, "a", range(6))
    assert [d.admitted for d in decisions] == [True] * 4 + [False] * 2
    assert "max_client_frames 4" in decisions[-1].reason
    adm.done("a")                              # one answered: room for one more
    assert adm.admit("a", 9, None).admitted and not adm.admit("a", 10, None).admitted


def test_a_client_within_its_share_gets_in_when_another_floods():
    adm = Admission(queue_depth=8, client_cap=8)
    assert all(d.admitted for d in feed(adm, "flood", range(8)))
    assert not adm.admit("flood", 8, None).admitted                  # full, and over its share
    d = adm.admit("polite", 100, None)
    assert d.admitted and d.preempted == [("flood", 7)]             # the flooder's newest waiting frame
    assert adm.total == 8 and adm.outstanding("flood") == 7 and adm.outstanding("polite") == 1
    # the share is queue_depth over the clients in: 4 each; the polite client may reach it
    for s in (101, 102, 103):
        assert adm.admit("polite", s, None).admitted
    d = adm.admit("polite", 104, None)
    assert not d.admitted and "queue full" in d.reason               # beyond its share: its turn to wait
    assert adm.outstanding("flood") == 4


def test_frames_in_the_pipeline_are_never_taken_back():
    adm = Admission(queue_depth=4, client_cap=4)
    feed(adm, "flood", range(4))
    take(adm, 4)                               # all four inside the pipeline, none waiting
    d = adm.admit("polite", 100, None)
    assert not d.admitted and d.preempted == []


def test_books_are_empty_once_everything_is_answered():
    adm = Admission(queue_depth=16, client_cap=8)
    for c in "abcd":
        feed(adm, c, range(3))
    answered = [client for client, _ in take(adm, 6)]
    for client in answered:
        adm.done(client)
    drained = list(adm.drain())
    assert len(drained) == 6 and adm.queued == 0 and adm.total == 0 and adm.clients == 0
    assert adm._waiting == {} and not adm._turns and adm._admitted == {}


def test_bad_limits_are_refused():
    with pytest.raises(ValueError):
        Admission(0, 1)
    with pytest.raises(ValueError):
        Admission(1, 0)
