"""One source for sync and async: a step is written once as a generator; two small drivers run it.

A step function is a generator that yields `Io` requests (what to call, blocking and awaitable, and
the deadline it runs under) and gets each result sent back, or its exception thrown in. `run`
drives it with blocking calls, `arun` with awaits. The decisions live in the generator, the drivers
only do I/O — the way tenacity's `Retrying` and `AsyncRetrying` share one `BaseRetrying`.

    def fetch(key):                       # the one source
        value = yield Io(lambda: store.get(key), lambda: store.aget(key), deadline)
        return decide(value)

    run(fetch("k"))                       # sync
    await arun(fetch("k"))                # async
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Generator
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from costguard import deadline as dl

__all__ = ["Io", "Steps", "arun", "run"]

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Io(Generic[T]):
    """One I/O request of a step: `sync()` for the blocking driver, `async_()` for the async one.

    With a `deadline` the call is retried within it as `costguard.deadline.call` rules (a store call);
    without, it runs once (in-process stores, the guarded function itself, fallbacks).
    """

    sync: Callable[[], T]
    async_: Callable[[], Awaitable[T]]
    deadline: dl.Deadline | None = None


Steps = Generator[Io[Any], Any, T]


def run(steps: Steps[T]) -> T:
    """Drive `steps` with blocking calls; returns its result, raises what it raises."""
    try:
        io = next(steps)
        while True:
            try:
                result = io.sync() if io.deadline is None else dl.call(io.sync, io.deadline)
            except BaseException as exc:  # noqa: BLE001 - thrown into the step: it handles it or lets it through
                io = steps.throw(exc)
            else:
                io = steps.send(result)
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]


async def arun(steps: Steps[T]) -> T:
    """Drive `steps` with awaits (backoff sleeps and store calls never block the event loop)."""
    try:
        io = next(steps)
        while True:
            try:
                result = await (io.async_() if io.deadline is None else dl.acall(io.async_, io.deadline))
            except BaseException as exc:  # noqa: BLE001 - as in `run`
                io = steps.throw(exc)
            else:
                io = steps.send(result)
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]
