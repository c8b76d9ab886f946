"""`log`: events to stdlib logging."""

from __future__ import annotations

import logging

from costguard.events import Event

__all__ = ["LogNotifier"]


class LogNotifier:
    """Log each event (`warn` at WARNING, everything else at the level given)."""

    def __init__(self, logger: str = "costguard.alerts", level: str = "WARNING", on: list[str] | None = None) -> None:
        self.logger = logging.getLogger(logger)
        self.level = logging.getLevelName(level.upper()) if isinstance(level, str) else int(level)
        if not isinstance(self.level, int):
            raise TypeError(f"unknown log level {level!r}")
        self.on = set(on) if on else None

    def __call__(self, event: Event) -> None:
        if self.on is not None and event.kind not in self.on:
            return
        scope = ",".join(f"{k}={v}" for k, v in sorted(event.labels.items())) or "global"
        if event.spent is not None and event.limit is not None:
            self.logger.log(
                self.level,
                "costguard %s %s %s: %g of %g (%s)",
                event.kind,
                scope,
                event.period,
                event.spent,
                event.limit,
                event.unit,
            )
        else:
            self.logger.log(self.level, "costguard %s %s: %s", event.kind, scope, event.reason or "")
