"""Off the request path: a background worker for audit writes, and delivery lanes for notifiers.

Every notifier gets its own bounded queue and worker thread (a lane), so a receiver that hangs
delays only its own deliveries. Failed deliveries are retried with tenacity — exponential backoff
with jitter, bounded by attempts *and* total delay, never sooner than a receiver's `Retry-After` —
and nothing here ever raises into the caller. Events are dropped only when a queue is full (or the
guard is closed); drops are counted and logged.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    stop_before_delay,
    wait_random_exponential,
)
from tenacity.stop import stop_base

from costguard.events import Event

__all__ = ["Background", "DeliveryError", "Dispatcher", "LaneStats", "Notifier"]

log = logging.getLogger("costguard")

Notifier = Callable[[Event], object]

DEFAULT_ATTEMPTS = 5
DEFAULT_MAX_DELAY_S = 60.0
DEFAULT_BACKOFF_S = 0.5
DEFAULT_QUEUE_SIZE = 1000


class DeliveryError(Exception):
    """A delivery a notifier could not make.

    `retryable=False` for answers a retry can't change (a 4xx other than 408/429, bad credentials);
    `retry_after` (seconds) when the receiver said how long to wait.
    """

    def __init__(self, message: str, *, retryable: bool = True, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.retry_after = retry_after


def retry_after_seconds(value: str | None) -> float | None:
    """A `Retry-After` header in seconds (delta-seconds or an HTTP date); None when absent or unreadable."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    from email.utils import parsedate_to_datetime

    try:
        moment = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, moment.timestamp() - time.time())


class _Worker:
    """A bounded queue drained by one daemon thread, started on first use."""

    def __init__(self, maxsize: int, name: str) -> None:
        self._queue: queue.Queue[Any] = queue.Queue(maxsize)
        self._name = name
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._closed = False
        self.dropped = 0

    def _put(self, item: object) -> bool:
        if self._closed:
            self._count_drop()
            return False
        self._ensure_thread()
        try:
            self._queue.put_nowait(item)
            return True
        except queue.Full:
            self._count_drop()
            return False

    def _count_drop(self) -> None:
        self.dropped += 1
        if self.dropped == 1 or self.dropped % 1000 == 0:
            log.warning("costguard: %s queue full or closed: %d dropped so far", self._name, self.dropped)

    def _ensure_thread(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            return
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
                self._thread.start()

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            try:
                if item is None:
                    return
                if isinstance(item, threading.Event):
                    item.set()
                else:
                    self._handle(item)
            except Exception:  # nothing may kill the worker
                log.exception("costguard: %s task failed", self._name)
            finally:
                self._queue.task_done()

    def _handle(self, item: Any) -> None:
        raise NotImplementedError

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until everything queued so far has been handled; False on timeout."""
        if self._thread is None or not self._thread.is_alive():
            return self._queue.empty()
        done = threading.Event()
        try:
            self._queue.put(done, timeout=timeout)
        except queue.Full:
            return False
        return done.wait(timeout)

    def close(self, timeout: float = 5.0) -> bool:
        """Handle what is queued (up to `timeout`), then stop the worker; False if work was left."""
        if self._closed:
            return True
        done = self.flush(timeout)
        self._closed = True
        if self._thread is not None and self._thread.is_alive():
            try:
                self._queue.put_nowait(None)
            except queue.Full:
                return False
            self._thread.join(timeout if done else 0.0)
        return done


class Background(_Worker):
    """Audit writes, cache writes and purges for one guard; never raises into the caller."""

    def __init__(self, maxsize: int = 10_000, name: str = "costguard-background") -> None:
        super().__init__(maxsize, name)

    def submit(self, task: Callable[[], object]) -> bool:
        """Queue a task; returns False (and counts it) when the queue is full or closed."""
        return self._put(task)

    def _handle(self, item: Any) -> None:
        item()


@dataclass
class LaneStats:
    """Counts of one notifier's deliveries in this process."""

    notifier: str
    delivered: int = 0
    failed: int = 0
    dropped: int = 0
    attempts: int = 0
    queued: int = 0


def _name_of(notifier: Notifier) -> str:
    name = getattr(notifier, "name", None)
    if isinstance(name, str) and name:
        return name
    return getattr(notifier, "__qualname__", None) or type(notifier).__name__


class _StopWhenSet(stop_base):
    """Stop retrying once the lane is closing."""

    def __init__(self, flag: threading.Event) -> None:
        self.flag = flag

    def __call__(self, retry_state: RetryCallState) -> bool:
        return self.flag.is_set()


class _Lane(_Worker):
    def __init__(self, notifier: Notifier, maxsize: int) -> None:
        self.notifier = notifier
        self.label = _name_of(notifier)
        super().__init__(maxsize, f"costguard-notify-{self.label}")
        on = getattr(notifier, "on", None)
        self.kinds: frozenset[str] | None = frozenset(on) if on else None
        self.attempts = int(getattr(notifier, "attempts", DEFAULT_ATTEMPTS))
        self.max_delay_s = float(getattr(notifier, "max_delay_s", DEFAULT_MAX_DELAY_S))
        self.backoff_s = float(getattr(notifier, "backoff_s", DEFAULT_BACKOFF_S))
        self.delivered = 0
        self.failed = 0
        self.tries = 0
        self._closing = threading.Event()

    def wants(self, event: Event) -> bool:
        return self.kinds is None or event.kind in self.kinds

    def _wait(self, state: RetryCallState) -> float:
        delay = wait_random_exponential(multiplier=self.backoff_s, max=30.0)(state)
        exc = state.outcome.exception() if state.outcome is not None else None
        after = getattr(exc, "retry_after", None)
        return max(delay, float(after)) if after else delay

    def _sleep(self, seconds: float) -> None:
        self._closing.wait(seconds)

    def _handle(self, item: Any) -> None:
        event: Event = item
        retrying = Retrying(
            stop=stop_after_attempt(self.attempts) | stop_before_delay(self.max_delay_s) | _StopWhenSet(self._closing),
            wait=self._wait,
            retry=retry_if_exception(lambda exc: getattr(exc, "retryable", True)),
            sleep=self._sleep,
            reraise=True,
        )
        try:
            for attempt in retrying:
                with attempt:
                    self.tries += 1
                    self.notifier(event)
        except Exception as exc:  # noqa: BLE001 - a failing notifier never raises into anything
            self.failed += 1
            # A receiver that is down for an hour must not flood the log: the first give-up and
            # every 100th are warnings, the rest debug lines.
            level = logging.WARNING if self.failed == 1 or self.failed % 100 == 0 else logging.DEBUG
            log.log(
                level,
                "costguard: the %s notifier gave up on a %s event after %d attempt(s): %s (%d given up so far)",
                self.label,
                event.kind,
                retrying.statistics.get("attempt_number", 1),
                exc,
                self.failed,
            )
        else:
            self.delivered += 1

    def close(self, timeout: float = 5.0) -> bool:
        done = self.flush(timeout)
        if not done:
            self._closing.set()  # stop retrying, and drop what is still queued
            left = 0
            while True:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                self._queue.task_done()
                if isinstance(item, threading.Event):
                    item.set()
                else:
                    left += 1
            if left:
                self.dropped += left
                log.warning("costguard: the %s notifier closed with %d event(s) undelivered", self.label, left)
        return super().close(0.5) and done


class Dispatcher:
    """Delivers events to every notifier that wants them, each in its own lane."""

    def __init__(self, notifiers: Iterable[Notifier], *, queue_size: int = DEFAULT_QUEUE_SIZE) -> None:
        self._lanes = [_Lane(n, queue_size) for n in notifiers]

    def dispatch(self, event: Event) -> None:
        """Queue `event` for each interested notifier; never blocks, never raises."""
        for lane in self._lanes:
            if lane.wants(event):
                lane._put(event)

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait (up to `timeout` in all) until every queued event was delivered or given up on."""
        deadline = time.monotonic() + timeout
        flushed = [lane.flush(max(0.0, deadline - time.monotonic())) for lane in self._lanes]  # every lane
        return all(flushed)

    def close(self, timeout: float = 5.0) -> bool:
        """Deliver what is queued (up to `timeout` in all), then stop the lanes."""
        deadline = time.monotonic() + timeout
        closed = [lane.close(max(0.0, deadline - time.monotonic())) for lane in self._lanes]  # every lane
        return all(closed)

    @property
    def dropped(self) -> int:
        """Events dropped because a queue was full or the guard closed."""
        return sum(lane.dropped for lane in self._lanes)

    def stats(self) -> list[LaneStats]:
        """Per notifier: delivered, failed (gave up after retries), dropped, attempts, still queued."""
        return [
            LaneStats(lane.label, lane.delivered, lane.failed, lane.dropped, lane.tries, lane._queue.qsize())
            for lane in self._lanes
        ]
