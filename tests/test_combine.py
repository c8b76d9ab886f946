"""The combiner (stores/_combine.py): what waits in a lane goes out together, in order; a failed send
fails every item of its batch; a caller that never got a turn is told it was never sent."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence

import pytest

from costguard.errors import StoreBusy, StoreTimeout
from costguard.stores._combine import Combiner


def test_callers_waiting_in_one_lane_go_in_one_batch_in_order() -> None:
    batches: list[list[int]] = []
    first_in = threading.Event()
    release = threading.Event()

    def send(items: Sequence[int]) -> list[int]:
        batches.append(list(items))
        first_in.set()
        release.wait(5)
        return [item * 10 for item in items]

    combiner: Combiner[int, int] = Combiner(send)
    replies: dict[int, int] = {}

    def call(item: int) -> None:
        replies[item] = combiner.run("hot", item, 5.0)

    leader = threading.Thread(target=call, args=(0,))
    leader.start()
    assert first_in.wait(5)
    followers = [threading.Thread(target=call, args=(i,)) for i in range(1, 9)]
    for thread in followers:
        thread.start()
    deadline = time.monotonic() + 5
    while len(combiner._lanes["hot"].waiting) < 8:  # all eight queued behind the batch in flight
        assert time.monotonic() < deadline
        time.sleep(0.001)
    release.set()
    for thread in [leader, *followers]:
        thread.join(5)
    assert batches[0] == [0]
    assert sorted(batches[1]) == list(range(1, 9)) and len(batches) == 2  # the eight went as one
    assert replies == {i: i * 10 for i in range(9)}
    assert not combiner._lanes  # an idle lane is dropped


def test_callers_whose_replies_came_return_while_the_next_batch_is_in_flight() -> None:
    """A batch's callers are woken at once when its replies come, and the first caller still waiting
    sends the next batch: none of them waits out the next batch's round trip (as a caller woken only by
    taking the lane's turn could, behind a slow batch, with its reply already in hand)."""
    gates = [threading.Event(), threading.Event(), threading.Event()]
    sent: list[list[int]] = []
    in_flight = threading.Semaphore(0)

    def send(items: Sequence[int]) -> list[int]:
        sent.append(list(items))
        in_flight.release()
        gates[len(sent) - 1].wait(5)
        return [item * 10 for item in items]

    combiner: Combiner[int, int] = Combiner(send)
    done: set[int] = set()

    def call(item: int) -> None:
        combiner.run("hot", item, 5.0)
        done.add(item)

    def start(items: range) -> list[threading.Thread]:
        threads = [threading.Thread(target=call, args=(i,)) for i in items]
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + 5
        while len(combiner._lanes["hot"].waiting) < len(items):
            assert time.monotonic() < deadline
            time.sleep(0.001)
        return threads

    threads = [threading.Thread(target=call, args=(0,))]
    threads[0].start()
    assert in_flight.acquire(timeout=5)  # batch 1: [0]
    threads += start(range(1, 25))
    gates[0].set()
    assert in_flight.acquire(timeout=5)  # batch 2: 1..24
    threads += start(range(25, 49))
    gates[1].set()
    assert in_flight.acquire(timeout=5)  # batch 3: 25..48, held in flight
    deadline = time.monotonic() + 5
    while done != set(range(25)):  # every caller of batches 1 and 2 is back while batch 3 is out
        assert time.monotonic() < deadline, sorted(done)
        time.sleep(0.005)
    gates[2].set()
    for thread in threads:
        thread.join(5)
    assert done == set(range(49))
    assert [sorted(batch) for batch in sent] == [[0], list(range(1, 25)), list(range(25, 49))]


def test_other_lanes_are_not_held_up() -> None:
    gate = threading.Event()

    def send(items: Sequence[str]) -> list[str]:
        if items[0] == "slow":
            gate.wait(5)
        return list(items)

    combiner: Combiner[str, str] = Combiner(send)
    slow = threading.Thread(target=combiner.run, args=("a", "slow", 5.0))
    slow.start()
    time.sleep(0.05)
    assert combiner.run("b", "quick", 1.0) == "quick"
    gate.set()
    slow.join(5)


def test_a_failed_send_fails_its_whole_batch_and_no_other() -> None:
    calls = 0
    in_flight = threading.Event()
    release = threading.Event()

    def send(items: Sequence[int]) -> list[int]:
        nonlocal calls
        calls += 1
        if calls == 1:
            in_flight.set()
            release.wait(5)
            return list(items)
        raise ConnectionError("lost")

    combiner: Combiner[int, int] = Combiner(send)
    outcomes: dict[int, object] = {}

    def call(item: int) -> None:
        try:
            outcomes[item] = combiner.run("hot", item, 5.0)
        except ConnectionError as exc:
            outcomes[item] = exc

    first = threading.Thread(target=call, args=(0,))
    first.start()
    assert in_flight.wait(5)
    rest = [threading.Thread(target=call, args=(i,)) for i in (1, 2, 3)]
    for thread in rest:
        thread.start()
    while len(combiner._lanes["hot"].waiting) < 3:
        time.sleep(0.001)
    release.set()
    for thread in [first, *rest]:
        thread.join(5)
    assert outcomes[0] == 0
    assert all(isinstance(outcomes[i], ConnectionError) for i in (1, 2, 3))


def test_no_turn_in_time_is_busy_and_a_batch_not_answered_in_time_is_unknown() -> None:
    release = threading.Event()
    started = threading.Event()

    def send(items: Sequence[int]) -> list[int]:
        started.set()
        release.wait(5)
        return list(items)

    combiner: Combiner[int, int] = Combiner(send, max_batch=1)
    holder = threading.Thread(target=combiner.run, args=("hot", 0, 5.0))
    holder.start()
    assert started.wait(5)
    # Never sent (the one batch in flight takes one item at most): nothing reached the store.
    with pytest.raises(StoreBusy):
        combiner.run("hot", 1, 0.05)
    assert list(combiner._lanes["hot"].waiting) == []
    release.set()
    holder.join(5)

    # Sent in another caller's batch, whose reply hasn't come in time: the outcome is unknown.
    first_done = threading.Event()
    second_sent = threading.Event()
    second_release = threading.Event()
    sends = 0

    def two_sends(items: Sequence[int]) -> list[int]:
        nonlocal sends
        sends += 1
        if sends == 1:
            first_done.wait(5)
        else:
            second_sent.set()
            second_release.wait(5)
        return list(items)

    wide: Combiner[int, int] = Combiner(two_sends)
    leader = threading.Thread(target=wide.run, args=("hot", 0, 5.0))
    leader.start()
    while sends < 1:
        time.sleep(0.001)
    outcomes: dict[int, object] = {}

    def follower(item: int) -> None:
        try:
            outcomes[item] = wide.run("hot", item, 2.0)
        except (StoreTimeout, StoreBusy) as exc:
            outcomes[item] = exc

    followers = [threading.Thread(target=follower, args=(i,)) for i in (1, 2)]
    for thread in followers:
        thread.start()
    while len(wide._lanes["hot"].waiting) < 2:
        time.sleep(0.001)
    first_done.set()  # one follower leads the next batch (both items) and hangs in it
    assert second_sent.wait(5)
    followers_done = time.monotonic() + 5
    while len(outcomes) < 1:
        assert time.monotonic() < followers_done
        time.sleep(0.01)
    second_release.set()
    for thread in [leader, *followers]:
        thread.join(5)
    kinds = sorted(type(outcome).__name__ for outcome in outcomes.values())
    assert kinds == ["StoreTimeout", "int"], outcomes
