"""A LangChain completion model's batch: one request for several prompts, its usage on one run.

`BaseLLM.generate` sends a batch's prompts in one request and reports the request's usage on the first
prompt's run; every other run gets `token_usage: {}` (`LLMResult.flatten`), whether or not the provider
reported any. So an empty usage says nothing by itself: it is $0 when the batch's first run reported
usage (counted there), and the run's own estimate when it reported none. Async runs end in no fixed order
(LangChain runs sync handlers in its executor), so a first run leaves its batch's other prompts their
settlement, taken first come, first served; another run that ends before any is left waits for the next
first run — and past `WAIT_S` keeps its estimate: never $0 on a guess, never a reservation left held.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable

from costguard.reservation import Reservation

__all__ = ["Batches"]

WAIT_S = 5.0

Settle = Callable[[Reservation, bool], None]  # (reservation, counted on the first run: $0, else its estimate)


class Batches:
    """Settlements of a handler's batched runs (see the module)."""

    def __init__(self, settle: Settle) -> None:
        self._settle = settle
        self._lock = threading.Lock()
        # Settlements first runs left (until when; True $0, False the estimate), and runs waiting for one.
        self._left: deque[tuple[float, bool]] = deque()
        self._waiting: deque[tuple[float, Reservation]] = deque()

    def first(self, batch: int, counted: bool) -> None:
        """A batch's first run ended (`counted`: it reported the request's usage); its `batch - 1` others
        are settled as they end, or now if they ended already."""
        due: list[Reservation] = []
        until = time.monotonic() + WAIT_S
        with self._lock:
            for _ in range(batch - 1):
                if self._waiting:
                    due.append(self._waiting.popleft()[1])
                else:
                    self._left.append((until, counted))
        for reservation in due:
            self._settle(reservation, counted)

    def other(self, reservation: Reservation) -> None:
        """Another run of a batch ended (its usage `{}`): settled as its first run said, or when it says."""
        now = time.monotonic()
        with self._lock:
            while self._left and self._left[0][0] < now:  # left for runs that ended long ago (kept estimates)
                self._left.popleft()
            counted = self._left.popleft()[1] if self._left else None
            if counted is None:
                self._waiting.append((now + WAIT_S, reservation))
                if len(self._waiting) == 1:
                    self._timer(WAIT_S)
        if counted is not None:
            self._settle(reservation, counted)

    def _expire(self) -> None:
        """Runs that waited `WAIT_S` for their first run keep their estimates."""
        now = time.monotonic()
        with self._lock:
            due = []
            while self._waiting and self._waiting[0][0] <= now:
                due.append(self._waiting.popleft()[1])
            if self._waiting:
                self._timer(max(0.0, self._waiting[0][0] - now))
        for reservation in due:
            self._settle(reservation, False)

    def _timer(self, seconds: float) -> None:
        timer = threading.Timer(seconds, self._expire)
        timer.daemon = True
        timer.start()
