"""Helpers for testing code that uses costguard: a fake clock and a recording notifier."""

from __future__ import annotations

import threading
from datetime import datetime, timezone

from costguard.events import Event

__all__ = ["FakeClock", "RecordingNotifier"]


class FakeClock:
    """A clock you move by hand: `Guard(..., clock=FakeClock("2026-01-31T23:59:59Z"))`."""

    def __init__(self, start: float | str | datetime = 1_767_225_600.0) -> None:
        self.now = self._epoch(start)

    @staticmethod
    def _epoch(value: float | str | datetime) -> float:
        if isinstance(value, str):
            value = datetime.fromisoformat(value.replace("Z", "+00:00"))
        if isinstance(value, datetime):
            if value.tzinfo is None:
                value = value.replace(tzinfo=timezone.utc)
            return value.timestamp()
        return float(value)

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        """Move time forward."""
        self.now += seconds

    def set(self, value: float | str | datetime) -> None:
        """Jump to an instant (epoch seconds, ISO text or datetime)."""
        self.now = self._epoch(value)


class RecordingNotifier:
    """A notifier that keeps every event it receives (no rate limit: `max_per_minute` None)."""

    max_per_minute: float | None = None

    def __init__(self) -> None:
        self.events: list[Event] = []
        self._lock = threading.Lock()

    def __call__(self, event: Event) -> None:
        with self._lock:
            self.events.append(event)

    def kinds(self) -> list[str]:
        """The kinds received, in order."""
        with self._lock:
            return [e.kind for e in self.events]
