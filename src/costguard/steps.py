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

import asyncio
from collections.abc import Awaitable, Callable, Generator
from typing import Any, Generic, TypeVar

from costguard import deadline as dl

__all__ = ["Io", "Steps", "arun", "nothing", "run"]

T = TypeVar("T")


class Io(Generic[T]):
    """One I/O request of a step: `sync(*args, **kwargs)` for the blocking driver, `async_(...)` (awaited)
    for the async one (None: `sync` in a worker thread).

    With a `deadline` the call is retried within it as `costguard.deadline.call` rules (a store call);
    without, it runs once (in-process stores, the guarded function itself, fallbacks).
    """

    __slots__ = ("args", "async_", "deadline", "kwargs", "sync")

    def __init__(
        self,
        sync: Callable[..., T],
        async_: Callable[..., Awaitable[T]] | None,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
        deadline: dl.Deadline | None = None,
    ) -> None:
        self.sync = sync
        self.async_ = async_
        self.args = args
        self.kwargs = kwargs
        self.deadline = deadline

    def call(self) -> T:
        """The blocking call, once."""
        return self.sync(*self.args, **self.kwargs) if self.kwargs else self.sync(*self.args)

    def acall(self) -> Awaitable[T]:
        """The awaitable, once (with no `async_`, the blocking call in a worker thread)."""
        if self.async_ is None:
            return asyncio.to_thread(self.call)
        return self.async_(*self.args, **self.kwargs) if self.kwargs else self.async_(*self.args)


Steps = Generator[Io[Any], Any, T]


def run(steps: Steps[T]) -> T:
    """Drive `steps` with blocking calls; returns its result, raises what it raises."""
    try:
        io = next(steps)
        while True:
            try:
                if io.deadline is not None:
                    result = dl.call(io.call, io.deadline)
                else:  # inline: this is every guarded call's path
                    result = io.sync(*io.args, **io.kwargs) if io.kwargs else io.sync(*io.args)
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
                result = await (io.acall() if io.deadline is None else dl.acall(io.acall, io.deadline))
            except BaseException as exc:  # noqa: BLE001 - as in `run`
                io = steps.throw(exc)
            else:
                io = steps.send(result)
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]


def nothing() -> Steps[None]:
    """Steps that do nothing (a reservation settled already, a call settled in-process)."""
    return
    yield  # pragma: no cover - makes this a generator
