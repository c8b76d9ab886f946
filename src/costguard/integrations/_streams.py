"""Streams of a guarded call: usage read off every chunk, the reservation settled when the stream ends.

The reservation is settled once, when the stream is read to its end, closed, left to the garbage
collector, or broken by an exception. It commits what is known for sure: the usage the vendor reported
in its final event (OpenAI chat's usage chunk, `response.completed`, Anthropic's `message_delta`); or,
when only the input side was reported (an Anthropic stream cut after `message_start`), that input plus
the request's whole output cap; with nothing reported, the estimate stands. A stream is never recorded
below what it may have cost. Streams dropped without being closed are settled from a worker thread
(`flush_abandoned()` waits for it).
"""

from __future__ import annotations

import dataclasses
import inspect
import logging
import queue
import threading
from collections.abc import AsyncIterator, Iterator
from decimal import Decimal
from types import TracebackType
from typing import Any

from costguard.integrations._request import Provider
from costguard.pricing import Pricing, UsageAccumulator, _get
from costguard.reservation import Reservation

__all__ = ["AsyncGuardedStream", "GuardedStream", "Meter", "flush_abandoned"]

log = logging.getLogger("costguard")

# Events after which a stream's usage is complete (Anthropic's message_delta carries the final output count).
_FINAL_EVENTS = frozenset({"message_delta", "response.completed", "response.incomplete", "response.failed"})


class Meter:
    """The usage one stream has reported so far, and the reservation it settles exactly once."""

    def __init__(
        self,
        reservation: Reservation,
        pricing: Pricing,
        provider: Provider,
        max_output_tokens: int | None,
        *,
        hide_usage_chunk: bool = False,
    ) -> None:
        self.reservation = reservation
        self.pricing = pricing
        self.max_output_tokens = max_output_tokens
        self.hide_usage_chunk = hide_usage_chunk
        self.accumulator = UsageAccumulator(provider)
        self.final = False
        self._claimed = False
        self._lock = threading.Lock()

    @property
    def settled(self) -> bool:
        """Whether the reservation has been (or is being) settled."""
        return self._claimed

    def see(self, chunk: Any) -> bool:
        """Feed one chunk or event; False when the caller should not get it (a usage-only chunk that
        costguard asked for and the caller did not)."""
        self.accumulator.feed(chunk)
        kind = _get(chunk, "type")
        if kind in _FINAL_EVENTS:
            self.final = True
        elif kind is None and _get(chunk, "usage") is not None:  # OpenAI chat: the usage chunk is the last
            self.final = True
            if self.hide_usage_chunk and not _get(chunk, "choices"):
                return False
        return True

    def claim(self) -> bool:
        """True exactly once: the caller that gets it settles the reservation."""
        with self._lock:
            if self._claimed:
                return False
            self._claimed = True
            return True

    def outcome(self) -> tuple[Decimal | None, int | None]:
        """The USD and tokens to commit (None: keep the estimate)."""
        usage = self.accumulator.usage
        if usage is None:
            return None, None
        if not self.final:
            if self.max_output_tokens is None:
                return None, None
            # Input is known; output may have run on after the cut, up to the request's cap.
            usage = dataclasses.replace(usage, output_tokens=max(usage.output_tokens, self.max_output_tokens))
        micros = self.pricing.micros(usage)
        return (None if micros is None else Decimal(micros).scaleb(-6)), usage.total_tokens

    def settle(self) -> None:
        """Commit now (sync)."""
        if self.claim():
            usd, tokens = self.outcome()
            self.reservation.commit(usd, tokens=tokens)

    async def asettle(self) -> None:
        """Commit now (async)."""
        if self.claim():
            usd, tokens = self.outcome()
            await self.reservation.acommit(usd, tokens=tokens)

    def settle_later(self) -> None:
        """Commit from a worker thread: called from `__del__` or a cancelled task, where neither store
        I/O nor taking a lock is safe. `SimpleQueue.put` is reentrant, so a finalizer may call it."""
        if self.claim():
            _abandoned.put(self)


# Streams settled off the caller's thread, in order; an Event marks a point `flush_abandoned` waits for.
_abandoned: queue.SimpleQueue[Meter | threading.Event] = queue.SimpleQueue()
_worker: threading.Thread | None = None
_worker_lock = threading.Lock()


def _ensure_worker() -> None:
    """Start the settling thread (from a stream's constructor: never from a finalizer)."""
    global _worker
    if _worker is not None and _worker.is_alive():
        return
    with _worker_lock:
        if _worker is None or not _worker.is_alive():
            _worker = threading.Thread(target=_settle_abandoned, name="costguard-streams", daemon=True)
            _worker.start()


def _settle_abandoned() -> None:
    while True:
        item = _abandoned.get()
        if isinstance(item, threading.Event):
            item.set()
            continue
        try:
            usd, tokens = item.outcome()
            item.reservation.commit(usd, tokens=tokens)
        except Exception:  # the worker must outlive any one commit
            log.exception("costguard: committing an abandoned stream failed")


def flush_abandoned(timeout: float = 5.0) -> bool:
    """Wait until every stream abandoned so far (garbage collected, or broken in a cancelled task) is
    committed; False if that took longer than `timeout` seconds."""
    _ensure_worker()
    done = threading.Event()
    _abandoned.put(done)
    return done.wait(timeout)


class _Base:
    _meter: Meter
    _stream: Any

    def __getattr__(self, name: str) -> Any:
        # Everything else (`response`, helpers) is the SDK stream's own.
        stream = self.__dict__.get("_stream")
        if stream is None:
            raise AttributeError(name)
        return getattr(stream, name)

    def __del__(self) -> None:
        meter: Meter | None = self.__dict__.get("_meter")
        if meter is not None and not meter.settled:
            meter.settle_later()

    def __repr__(self) -> str:
        return f"<costguard guarded {self.__dict__.get('_stream')!r}>"


class GuardedStream(_Base):
    """A guarded SDK `Stream`: iterate it, use it as a context manager, or `close()` it."""

    def __init__(self, stream: Any, meter: Meter) -> None:
        _ensure_worker()
        self._stream = stream
        self._meter = meter
        self._iterator: Iterator[Any] = iter(stream)

    def __iter__(self) -> GuardedStream:
        return self

    def __next__(self) -> Any:
        while True:
            try:
                chunk = next(self._iterator)
            except StopIteration:
                self._meter.settle()
                raise
            except BaseException:
                self._meter.settle()
                raise
            if self._meter.see(chunk):
                return chunk

    def close(self) -> None:
        """Close the SDK stream and settle the reservation (if the stream's end did not already)."""
        try:
            self._stream.close()
        finally:
            self._meter.settle()

    def __enter__(self) -> GuardedStream:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class AsyncGuardedStream(_Base):
    """A guarded SDK `AsyncStream`: `async for`, `async with`, or `await close()`."""

    def __init__(self, stream: Any, meter: Meter) -> None:
        _ensure_worker()
        self._stream = stream
        self._meter = meter
        self._iterator: AsyncIterator[Any] = stream.__aiter__()

    def __aiter__(self) -> AsyncGuardedStream:
        return self

    async def __anext__(self) -> Any:
        while True:
            try:
                chunk = await self._iterator.__anext__()
            except StopAsyncIteration:
                await self._meter.asettle()
                raise
            except BaseException:
                # Possibly a cancelled task: no awaiting here, the settling thread commits.
                self._meter.settle_later()
                raise
            if self._meter.see(chunk):
                return chunk

    async def close(self) -> None:
        """Close the SDK stream and settle the reservation (if the stream's end did not already)."""
        try:
            result = self._stream.close()
            if inspect.isawaitable(result):
                await result
        finally:
            await self._meter.asettle()

    async def aclose(self) -> None:
        """`close` under the name async generators and LiteLLM's streams use (it would otherwise reach the
        SDK stream itself, closing it without settling)."""
        closer = getattr(self._stream, "aclose", None)
        try:
            result = closer() if closer is not None else self._stream.close()
            if inspect.isawaitable(result):
                await result
        finally:
            await self._meter.asettle()

    async def __aenter__(self) -> AsyncGuardedStream:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()
