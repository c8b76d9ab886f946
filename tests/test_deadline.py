"""The store deadline: which failures are asked again, how often, and that nothing runs past it."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable

import pytest

from costguard import deadline as dl
from costguard.errors import StoreBusy, StoreError, StoreTimeout, StoreUnavailable


def failing(*errors: StoreError, result: str = "ok") -> tuple[Callable[[], str], list[float]]:
    """A call that raises `errors` in turn, then returns; records when each attempt started."""
    attempts: list[float] = []
    queue = list(errors)

    def call() -> str:
        attempts.append(time.monotonic())
        if queue:
            raise queue.pop(0)
        return result

    return call, attempts


def test_a_first_success_is_returned_as_is() -> None:
    call, attempts = failing()
    assert dl.call(call, dl.Deadline(1.0)) == "ok"
    assert len(attempts) == 1


def test_a_busy_store_is_asked_again_after_a_growing_backoff() -> None:
    call, attempts = failing(StoreBusy("busy"), StoreBusy("busy"), StoreBusy("busy"))
    deadline = dl.Deadline(2.0)
    assert dl.call(call, deadline) == "ok"
    gaps = [b - a for a, b in itertools.pairwise(attempts)]
    assert len(attempts) == 4
    assert 0.004 <= gaps[0] < gaps[2]  # 5 ms, 10 ms, 20 ms (plus up to 5 ms of jitter)
    assert not deadline.unknown


def test_a_busy_store_is_given_up_on_at_the_deadline() -> None:
    attempts: list[float] = []

    def call() -> str:
        attempts.append(time.monotonic())
        raise StoreBusy("busy")

    started = time.monotonic()
    with pytest.raises(StoreBusy):
        dl.call(call, dl.Deadline(0.3))
    took = time.monotonic() - started
    assert 0.1 < took <= 0.5  # no attempt starts past the deadline, and none waits beyond it
    assert len(attempts) > 3


def test_a_timed_out_reply_is_asked_again_and_marked_unknown() -> None:
    call, attempts = failing(StoreTimeout("no reply"))
    deadline = dl.Deadline(1.0)
    assert dl.call(call, deadline) == "ok"
    assert len(attempts) == 2
    assert deadline.unknown  # the first may have been applied: the caller must not assume it wasn't


def test_an_unreachable_store_gets_one_fresh_attempt_then_the_policy() -> None:
    call, attempts = failing(StoreUnavailable("refused"), StoreUnavailable("refused"), StoreUnavailable("refused"))
    with pytest.raises(StoreUnavailable, match="refused"):
        dl.call(call, dl.Deadline(5.0))
    assert len(attempts) == 2
    recovering, tried = failing(StoreUnavailable("reset"))
    assert dl.call(recovering, dl.Deadline(5.0)) == "ok"  # a pooled connection the server had dropped
    assert len(tried) == 2


def test_an_error_the_store_answered_with_is_not_retried() -> None:
    call, attempts = failing(StoreError("script error"))
    with pytest.raises(StoreError, match="script error"):
        dl.call(call, dl.Deadline(5.0))
    assert len(attempts) == 1


def test_a_passed_deadline_stops_at_once() -> None:
    call, attempts = failing(StoreTimeout("slow"), StoreTimeout("slow"))
    deadline = dl.Deadline(0.0)
    with pytest.raises(StoreTimeout):
        dl.call(call, deadline)
    assert len(attempts) == 1
    assert deadline.unknown


def test_stores_see_what_is_left_of_the_deadline() -> None:
    assert dl.remaining_s(2.0) == 2.0  # no call running: the store's own timeout
    seen: list[float] = []
    dl.call(lambda: seen.append(dl.remaining_s(2.0)), dl.Deadline(0.5))
    assert 0.4 < seen[0] <= 0.5
    assert dl.current() is None  # and only while the call runs


def test_the_async_driver_follows_the_same_rule() -> None:
    async def main() -> tuple[str, int, bool]:
        attempts = 0

        async def call() -> str:
            nonlocal attempts
            attempts += 1
            if attempts == 1:
                raise StoreTimeout("no reply")
            if attempts == 2:
                raise StoreBusy("busy")
            return "ok"

        deadline = dl.Deadline(1.0)
        return await dl.acall(call, deadline), attempts, deadline.unknown

    assert asyncio.run(main()) == ("ok", 3, True)

    async def unreachable() -> str:
        raise StoreUnavailable("refused")

    with pytest.raises(StoreUnavailable):
        asyncio.run(dl.acall(unreachable, dl.Deadline(1.0)))
