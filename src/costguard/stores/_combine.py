"""Combining: calls of this process's threads that would queue on the same hot rows go to the server
together, as one statement.

A hot feature's calls all lock the same counter rows, one transaction after another, each waiting for
the one before it to commit (and flush its WAL). Under a burst, 32 threads of a process would take 32
turns at those rows, and the slowest waits behind every other process's turns too. Here the first
caller of a lane (its rows: the same counter keys, so one batch locks them in the same order as one
call would, and two batches can't deadlock) sends everything waiting in the lane as one statement;
the others wait for its reply. Every item is still its own atomic step, applied in order, so the
outcomes are exactly those of the same calls made one after another.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Hashable, Sequence
from typing import Any, Generic, TypeVar

from costguard.errors import StoreBusy, StoreTimeout

__all__ = ["Combiner"]

T = TypeVar("T")
R = TypeVar("R")

_WAITING, _SENT, _DONE = 0, 1, 2


class _Ticket(Generic[T]):
    __slots__ = ("error", "item", "reply", "state")

    def __init__(self, item: T) -> None:
        self.item = item
        self.state = _WAITING
        self.reply: Any = None
        self.error: BaseException | None = None


class _Lane:
    __slots__ = ("sending", "users", "waiting")

    def __init__(self) -> None:
        self.sending = threading.Lock()  # one batch of the lane in flight at a time
        self.waiting: deque[_Ticket[Any]] = deque()
        self.users = 0


class Combiner(Generic[T, R]):
    """Items of a lane sent together by `send` (a list of items in, a list of replies out, in order)."""

    def __init__(self, send: Callable[[Sequence[T]], Sequence[R]], *, max_batch: int = 64) -> None:
        self._send = send
        self._max = max_batch
        self._lock = threading.Lock()
        self._lanes: dict[Hashable, _Lane] = {}

    def run(self, lane_key: Hashable, item: T, timeout: float) -> R:
        """`item`'s reply, sent alone or with others of its lane. Raises what the send raised (for every
        item of that batch); `StoreBusy` when no turn came within `timeout` and the item was never sent;
        `StoreTimeout` when it was sent in another caller's batch that hasn't answered within `timeout`."""
        ticket: _Ticket[T] = _Ticket(item)
        with self._lock:
            lane = self._lanes.get(lane_key)
            if lane is None:
                lane = self._lanes[lane_key] = _Lane()
            lane.waiting.append(ticket)
            lane.users += 1
        try:
            if not lane.sending.acquire(timeout=max(timeout, 0.0)):
                return self._gave_up(lane, ticket, timeout)
            try:
                if ticket.state == _WAITING:
                    self._send_batch(lane)
            finally:
                lane.sending.release()
        finally:
            with self._lock:
                lane.users -= 1
                if lane.users == 0 and not lane.waiting:
                    self._lanes.pop(lane_key, None)
        return self._outcome(ticket)

    def _send_batch(self, lane: _Lane) -> None:
        with self._lock:
            batch = [lane.waiting.popleft() for _ in range(min(self._max, len(lane.waiting)))]
            for ticket in batch:
                ticket.state = _SENT
        try:
            replies = self._send([ticket.item for ticket in batch])
        except BaseException as exc:  # noqa: BLE001 - every caller of the batch raises it
            for ticket in batch:
                ticket.error = exc
                ticket.state = _DONE
            return
        for ticket, reply in zip(batch, replies, strict=True):
            ticket.reply = reply
            ticket.state = _DONE

    def _gave_up(self, lane: _Lane, ticket: _Ticket[T], timeout: float) -> R:
        with self._lock:
            if ticket.state == _WAITING:
                lane.waiting.remove(ticket)
                raise StoreBusy(f"SQL store busy: no turn on its rows within {timeout * 1000:.0f} ms")
        if ticket.state == _DONE:
            return self._outcome(ticket)
        # Sent with another caller's batch, whose reply hasn't come: the outcome is unknown.
        raise StoreTimeout(f"SQL store timed out: no answer within {timeout * 1000:.0f} ms")

    @staticmethod
    def _outcome(ticket: _Ticket[T]) -> R:
        if ticket.error is not None:
            raise ticket.error
        reply: R = ticket.reply
        return reply
