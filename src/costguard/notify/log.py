"""`log`: events to stdlib logging, one line each."""

from __future__ import annotations

import logging
from collections.abc import Iterable

from costguard.events import Event
from costguard.notify.dispatcher import DEFAULT_MAX_PER_MINUTE, rate_per_minute
from costguard.notify.format import details, headline

__all__ = ["LogNotifier"]


class LogNotifier:
    """Log each event on `logger` (default `costguard.alerts`) at `level` (default WARNING).

    The record carries the event as `extra={"costguard_event": event.to_dict()}` for structured
    log handlers.
    """

    name = "log"
    attempts = 1

    def __init__(
        self,
        logger: str = "costguard.alerts",
        level: str | int = "WARNING",
        on: Iterable[str] | None = None,
        max_per_minute: float | None = DEFAULT_MAX_PER_MINUTE,
    ) -> None:
        self.logger = logging.getLogger(logger)
        resolved = logging.getLevelName(level.upper()) if isinstance(level, str) else int(level)
        if not isinstance(resolved, int):
            raise ValueError(f"unknown log level {level!r}; use DEBUG, INFO, WARNING, ERROR or CRITICAL")
        self.level = resolved
        self.on = frozenset(on) if on else None
        self.max_per_minute = rate_per_minute(max_per_minute)

    def __call__(self, event: Event) -> None:
        if self.on is not None and event.kind not in self.on:
            return
        line = " — ".join([headline(event), *details(event)])
        self.logger.log(self.level, "costguard %s: %s", event.kind, line, extra={"costguard_event": event.to_dict()})
