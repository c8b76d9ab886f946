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
from _thread import allocate_lock as _allocate_lock
from collections import deque
from collections.abc import Callable, Hashable, Sequence
from typing import Any, Generic, TypeVar

from costguard.errors import StoreBusy, StoreTimeout

__all__ = ["Combiner"]

T = TypeVar("T")
R = TypeVar("R")

_WAITING, _SENT, _DONE = 0, 1, 2


class _Ticket(Generic[T]):
    __slots__ = ("error", "item", "lead", "reply", "state", "wake")

    def __init__(self, item: T) -> None:
        self.item = item
        self.state = _WAITING
        self.lead = False  # handed the lane: send what waits, this ticket included
        self.reply: Any = None
        self.error: BaseException | None = None
        self.wake = _allocate_lock()
        self.wake.acquire()  # released once: its reply came, or the lane is its to lead


class _Lane:
    __slots__ = ("busy", "users", "waiting")

    def __init__(self) -> None:
        self.busy = False  # a batch of the lane is in flight, or about to be (one at a time)
        self.waiting: deque[_Ticket[Any]] = deque()
        self.users = 0


class Combiner(Generic[T, R]):
    """Items of a lane sent together by `send` (a list of items in, a list of replies out, in order).

    The caller that finds the lane idle sends; the others wait on their own ticket. When a batch's
    replies come, the sender wakes each of its callers at once and hands the lane to the first caller
    still waiting, who sends the next batch — no caller whose reply is here waits for another's turn.
    """

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
            if not lane.busy:
                lane.busy = ticket.lead = True
        try:
            if not ticket.lead and not ticket.wake.acquire(timeout=max(timeout, 0.0)):
                return self._gave_up(lane, ticket, timeout)
            if ticket.lead:
                self._send_batch(lane)
        finally:
            with self._lock:
                lane.users -= 1
                if lane.users == 0 and not lane.waiting and not lane.busy:
                    self._lanes.pop(lane_key, None)
        return self._outcome(ticket)

    def _send_batch(self, lane: _Lane) -> None:
        """Send what waits in the lane (the leader's own ticket first among them), wake its callers, and
        hand the lane on."""
        with self._lock:
            batch = [lane.waiting.popleft() for _ in range(min(self._max, len(lane.waiting)))]
            for ticket in batch:
                ticket.state = _SENT
        try:
            replies = self._send([ticket.item for ticket in batch])
        except BaseException as exc:  # noqa: BLE001 - every caller of the batch raises it
            for ticket in batch:
                ticket.error = exc
            replies = None
        with self._lock:
            for i, ticket in enumerate(batch):
                if replies is not None:
                    ticket.reply = replies[i]
                ticket.state = _DONE
                if not ticket.lead:
                    ticket.wake.release()
            self._hand_on(lane)

    def _hand_on(self, lane: _Lane) -> None:
        """Under the lock: the lane to the first caller still waiting, or idle."""
        if lane.waiting:
            successor = lane.waiting[0]
            successor.lead = True
            successor.wake.release()
        else:
            lane.busy = False

    def _gave_up(self, lane: _Lane, ticket: _Ticket[T], timeout: float) -> R:
        with self._lock:
            if ticket.state == _WAITING:
                lane.waiting.remove(ticket)
                if ticket.lead:  # handed the lane just as the wait ended: pass it on
                    self._hand_on(lane)
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
