"""One background worker per guard: notifier deliveries and audit writes off the request path."""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable

from costguard.events import Event

__all__ = ["Background", "Notifier"]

log = logging.getLogger("costguard")

Notifier = Callable[[Event], object]


class Background:
    """A bounded queue drained by one daemon thread; never raises into the caller."""

    def __init__(self, maxsize: int = 10_000, name: str = "costguard-background") -> None:
        self._queue: queue.Queue[Callable[[], object] | None] = queue.Queue(maxsize)
        self._name = name
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._closed = False
        self.dropped = 0

    def submit(self, task: Callable[[], object]) -> bool:
        """Queue a task; returns False (and counts it) when the queue is full or closed."""
        if self._closed:
            self._count_drop()
            return False
        self._ensure_thread()
        try:
            self._queue.put_nowait(task)
            return True
        except queue.Full:
            self._count_drop()
            return False

    def _count_drop(self) -> None:
        self.dropped += 1
        if self.dropped == 1 or self.dropped % 1000 == 0:
            log.warning("costguard background queue full or closed: %d tasks dropped so far", self.dropped)

    def _ensure_thread(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            return
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
                self._thread.start()

    def _run(self) -> None:
        while True:
            task = self._queue.get()
            try:
                if task is None:
                    return
                task()
            except Exception:  # a failing notifier or write must never kill the worker
                log.exception("costguard background task failed")
            finally:
                self._queue.task_done()

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until every queued task has run; returns False on timeout."""
        if self._thread is None:
            return True
        done = threading.Event()

        def mark() -> None:
            done.set()

        try:
            self._queue.put(mark, timeout=timeout)
        except queue.Full:
            return False
        return done.wait(timeout)

    def close(self, timeout: float = 5.0) -> None:
        """Run what is queued, then stop the worker."""
        if self._closed:
            return
        self.flush(timeout)
        self._closed = True
        if self._thread is not None and self._thread.is_alive():
            try:
                self._queue.put(None, timeout=timeout)
            except queue.Full:
                return
            self._thread.join(timeout)
