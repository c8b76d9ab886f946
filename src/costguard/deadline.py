"""A guarded call's time on the store (`store_deadline_ms`) and the rule for asking again within it.

Overload is not an outage. A slow reply is waited for, a busy store is asked again after a short
backoff, and a reply that never came (its outcome unknown) is asked again with the same
reservation id, which every store answers with the first outcome. Only a store that can't be
reached at all, or the deadline passing, makes the guard follow `on_store_error`.

The rule is `should_stop` / `wait_for`, evaluated by tenacity; `call` and `acall` drive it for sync
and async code alike, and cost nothing beyond one `try` while the first attempt succeeds.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import TypeVar

from tenacity import AsyncRetrying, RetryCallState, Retrying, retry_if_exception_type, wait_exponential, wait_random

from costguard.errors import StoreBusy, StoreTimeout, StoreUnavailable

__all__ = ["DEFAULT_DEADLINE_MS", "Deadline", "acall", "bounded", "call", "current", "remaining_s"]

T = TypeVar("T")

DEFAULT_DEADLINE_MS = 2000.0

# Backoff while the store is busy: 5 ms doubling to 200 ms, with up to 5 ms of jitter so the
# callers a burst refused together don't come back together.
_busy_wait = wait_exponential(multiplier=0.005, max=0.2) + wait_random(0, 0.005)


class Deadline:
    """A point in monotonic time after which no new store attempt starts; `unknown` once an attempt
    timed out (the store may have applied it)."""

    __slots__ = ("end", "seconds", "unknown")

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.end = time.monotonic() + seconds
        self.unknown = False

    def remaining(self) -> float:
        """Seconds left (negative once passed)."""
        return self.end - time.monotonic()

    def __repr__(self) -> str:
        return f"Deadline({self.seconds * 1000:g} ms, {self.remaining() * 1000:.0f} ms left)"


_current: ContextVar[Deadline | None] = ContextVar("costguard_deadline", default=None)


def current() -> Deadline | None:
    """The deadline of the store call running in this context, if any."""
    return _current.get()


def remaining_s(default: float) -> float:
    """Seconds a store attempt may take now: what is left of the current deadline, else `default`."""
    deadline = _current.get()
    if deadline is None:
        return default
    return max(0.001, min(default, deadline.remaining()))


@contextmanager
def bounded(deadline: Deadline) -> Iterator[Deadline]:
    """Make `deadline` current, so stores bound each attempt (statement timeout, watchdog) by what is left."""
    token = _current.set(deadline)
    try:
        yield deadline
    finally:
        _current.reset(token)


def wait_for(state: RetryCallState) -> float:
    """How long to wait before asking again: a busy store gets a backoff, anything else none."""
    assert state.outcome is not None
    if isinstance(state.outcome.exception(), StoreBusy):
        return float(_busy_wait(state))
    return 0.0


def _stopper(deadline: Deadline) -> Callable[[RetryCallState], bool]:
    def should_stop(state: RetryCallState) -> bool:
        """Give up when the deadline can't fit another attempt, or the store is plainly unreachable."""
        assert state.outcome is not None
        exc = state.outcome.exception()
        if deadline.remaining() <= state.upcoming_sleep:
            return True
        if isinstance(exc, (StoreBusy, StoreTimeout)):
            return False
        # Refused or reset: one fresh connection may cure a pooled one the server dropped; a second
        # failure means the store is down.
        return state.attempt_number >= 2

    return should_stop


def _retrying_options(deadline: Deadline) -> dict[str, object]:
    return {
        "retry": retry_if_exception_type(StoreUnavailable),
        "wait": wait_for,
        "stop": _stopper(deadline),
        "reraise": True,
    }


class _Marking:
    """Inside it, an attempt that times out marks the deadline's outcome unknown."""

    __slots__ = ("deadline",)

    def __init__(self, deadline: Deadline) -> None:
        self.deadline = deadline

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        if kind is not None and issubclass(kind, StoreTimeout):
            self.deadline.unknown = True


def _first_failed(exc: StoreUnavailable, deadline: Deadline) -> StoreUnavailable:
    """The first attempt failed: raise it when no time is left, else hand it to the rule."""
    if deadline.remaining() <= 0:
        raise exc
    return exc


@contextmanager
def _replayed(first: StoreUnavailable, number: int) -> Iterator[None]:
    """Attempt 1 is the one already made: raise its error again so the rule judges it."""
    if number == 1:
        raise first
    yield


def call(fn: Callable[[], T], deadline: Deadline) -> T:
    """`fn()` within `deadline`, asking again as the rule says; raises the last `StoreError`."""
    try:
        with bounded(deadline), _Marking(deadline):
            return fn()  # the common case: one attempt, no retry machinery at all
    except StoreUnavailable as exc:
        first = _first_failed(exc, deadline)
    with bounded(deadline):
        for attempt in Retrying(**_retrying_options(deadline)):  # type: ignore[arg-type]
            with attempt, _replayed(first, attempt.retry_state.attempt_number), _Marking(deadline):
                return fn()
    raise AssertionError("unreachable")  # pragma: no cover - tenacity returns or raises


async def acall(fn: Callable[[], Awaitable[T]], deadline: Deadline) -> T:
    """Async `call`: backoff sleeps never block the event loop."""
    try:
        with bounded(deadline), _Marking(deadline):
            return await fn()
    except StoreUnavailable as exc:
        first = _first_failed(exc, deadline)
    with bounded(deadline):
        async for attempt in AsyncRetrying(**_retrying_options(deadline)):  # type: ignore[arg-type]
            with attempt, _replayed(first, attempt.retry_state.attempt_number), _Marking(deadline):
                return await fn()
    raise AssertionError("unreachable")  # pragma: no cover
