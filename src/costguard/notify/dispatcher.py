"""Off the request path: a background worker for audit writes, and delivery lanes for notifiers.

Every notifier gets its own bounded queue and worker thread (a lane), so a receiver that hangs
delays only its own deliveries. Failed deliveries are retried with tenacity — exponential backoff
with jitter, bounded by attempts *and* total delay, never sooner than a receiver's `Retry-After` —
and nothing here ever raises into the caller. Events are dropped only when a queue is full (or the
guard is closed) or past a notifier's rate limit (`max_per_minute`); drops are counted and logged.
Alerts of per-instance ceilings are aggregated first (`notify.group`), once for every notifier.
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
from costguard.notify.group import Grouper

__all__ = ["Background", "DeliveryError", "Dispatcher", "LaneStats", "Notifier"]

log = logging.getLogger("costguard")

Notifier = Callable[[Event], object]

DEFAULT_ATTEMPTS = 5
DEFAULT_MAX_DELAY_S = 60.0
DEFAULT_BACKOFF_S = 0.5
DEFAULT_QUEUE_SIZE = 1000
DEFAULT_MAX_PER_MINUTE = 30  # per notifier; a burst of as many, then one per 2 s
DEFAULT_GROUP_S = 60.0  # alert aggregation window of per-instance ceilings


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


def rate_per_minute(value: object) -> float | None:
    """A notifier's `max_per_minute`: a number more than 0, or None for no rate limit."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise ValueError(f"max_per_minute must be a number more than 0 (or null: no limit), got {value!r}")
    return float(value)


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
    rate_limited: int = 0


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
        self.per_minute = rate_per_minute(getattr(notifier, "max_per_minute", DEFAULT_MAX_PER_MINUTE))
        self._tokens = self.per_minute or 0.0
        self._filled = time.monotonic()
        self._bucket_lock = threading.Lock()
        self.rate_limited = 0

    def wants(self, event: Event) -> bool:
        return self.kinds is None or event.kind in self.kinds

    def offer(self, event: Event) -> None:
        """Queue `event` unless this notifier is over its rate (a token bucket of `max_per_minute`)."""
        if self.per_minute is not None:
            with self._bucket_lock:
                now = time.monotonic()
                self._tokens = min(self.per_minute, self._tokens + (now - self._filled) * self.per_minute / 60.0)
                self._filled = now
                allowed = self._tokens >= 1.0
                if allowed:
                    self._tokens -= 1.0
                else:
                    self.rate_limited += 1
                    limited = self.rate_limited
            if not allowed:
                level = logging.WARNING if limited == 1 or limited % 100 == 0 else logging.DEBUG
                log.log(
                    level,
                    "costguard: the %s notifier is over its rate limit (%g a minute): a %s event was dropped "
                    "(%d so far)",
                    self.label,
                    self.per_minute,
                    event.kind,
                    limited,
                )
                return
        self._put(event)

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
    """Delivers events to every notifier that wants them, each in its own lane; alerts of per-instance
    ceilings are aggregated over `group_s` seconds first (None: each goes out on its own)."""

    def __init__(
        self,
        notifiers: Iterable[Notifier],
        *,
        queue_size: int = DEFAULT_QUEUE_SIZE,
        group_s: float | None = DEFAULT_GROUP_S,
    ) -> None:
        self._lanes = [_Lane(n, queue_size) for n in notifiers]
        self._groups = Grouper(self._send, group_s) if group_s is not None and self._lanes else None

    def dispatch(self, event: Event) -> None:
        """Queue `event` for each interested notifier; never blocks, never raises."""
        if self._groups is not None and self._groups.add(event):
            return
        self._send(event)

    def _send(self, event: Event) -> None:
        for lane in self._lanes:
            if lane.wants(event):
                lane.offer(event)

    def flush(self, timeout: float = 5.0) -> bool:
        """Deliver held alert summaries now, then wait (up to `timeout` in all) until every queued event
        was delivered or given up on."""
        if self._groups is not None:
            self._groups.flush()
        deadline = time.monotonic() + timeout
        flushed = [lane.flush(max(0.0, deadline - time.monotonic())) for lane in self._lanes]  # every lane
        return all(flushed)

    def close(self, timeout: float = 5.0) -> bool:
        """Deliver held summaries and what is queued (up to `timeout` in all), then stop the lanes."""
        if self._groups is not None:
            self._groups.close()
        deadline = time.monotonic() + timeout
        closed = [lane.close(max(0.0, deadline - time.monotonic())) for lane in self._lanes]  # every lane
        return all(closed)

    @property
    def dropped(self) -> int:
        """Events dropped because a queue was full or the guard closed."""
        return sum(lane.dropped for lane in self._lanes)

    @property
    def grouped(self) -> int:
        """Per-instance alerts folded into summaries instead of going out one by one."""
        return 0 if self._groups is None else self._groups.grouped

    def stats(self) -> list[LaneStats]:
        """Per notifier: delivered, failed (gave up after retries), dropped, attempts, still queued, and
        dropped over its rate limit."""
        return [
            LaneStats(
                lane.label,
                lane.delivered,
                lane.failed,
                lane.dropped,
                lane.tries,
                lane._queue.qsize(),
                lane.rate_limited,
            )
            for lane in self._lanes
        ]
