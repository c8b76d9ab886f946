"""Notifiers by name: the built-in ones and those registered in the `costguard.notifiers` entry-point group."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from importlib.metadata import entry_points
from typing import Any

from costguard.events import Event
from costguard.notify.dispatcher import (
    DEFAULT_ATTEMPTS,
    DEFAULT_BACKOFF_S,
    DEFAULT_MAX_DELAY_S,
    DEFAULT_MAX_PER_MINUTE,
    Notifier,
    rate_per_minute,
)

__all__ = ["BUILTIN", "ENTRY_POINT_GROUP", "build_notifier", "entry_point", "installed"]

ENTRY_POINT_GROUP = "costguard.notifiers"
BUILTIN = ("slack", "pagerduty", "webhook", "log")


def installed() -> dict[str, Any]:
    """Third-party notifiers: entry-point name → entry point."""
    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def entry_point(kind: str) -> Any:
    """The installed entry point named `kind`; `ValueError` listing every known notifier when there is none."""
    plugins = installed()
    if kind not in plugins:
        known = ", ".join([*BUILTIN, *sorted(plugins)])
        raise ValueError(
            f"unknown notifier {kind!r}; expected one of {known} "
            f"(third-party notifiers register in the {ENTRY_POINT_GROUP!r} entry-point group)"
        )
    return plugins[kind]


class _Plugin:
    """A third-party notifier with the common options (`on`, `attempts`, `max_delay_s`) kept here."""

    def __init__(
        self, name: str, notifier: Notifier, on: Iterable[str] | None, attempts: int, max_delay_s: float
    ) -> None:
        self.name = name
        self.notifier = notifier
        self.on = frozenset(on) if on else getattr(notifier, "on", None)
        self.attempts = attempts
        self.max_delay_s = max_delay_s
        self.backoff_s = float(getattr(notifier, "backoff_s", DEFAULT_BACKOFF_S))
        self.max_per_minute: float | None = DEFAULT_MAX_PER_MINUTE

    def __call__(self, event: Event) -> object:
        return self.notifier(event)


def build_notifier(kind: str, options: Mapping[str, Any]) -> Notifier:
    """A notifier from its config entry; raises ValueError/TypeError/ImportError with what was wrong."""
    options = dict(options)
    if kind == "slack":
        from costguard.notify.slack import SlackNotifier

        return SlackNotifier(**options)
    if kind == "pagerduty":
        from costguard.notify.pagerduty import PagerDutyNotifier

        return PagerDutyNotifier(**options)
    if kind == "webhook":
        from costguard.notify.webhook import WebhookNotifier

        return WebhookNotifier(**options)
    if kind == "log":
        from costguard.notify.log import LogNotifier

        return LogNotifier(**options)
    factory = entry_point(kind).load()
    on = options.pop("on", None)
    attempts = int(options.pop("attempts", DEFAULT_ATTEMPTS))
    max_delay_s = float(options.pop("max_delay_s", DEFAULT_MAX_DELAY_S))
    backoff_s = options.pop("backoff_s", None)
    max_per_minute = options.pop("max_per_minute", DEFAULT_MAX_PER_MINUTE)
    notifier = factory(**options)
    if not callable(notifier):
        raise TypeError(f"the {kind!r} entry point built {notifier!r}, which is not callable with an Event")
    plugin = _Plugin(kind, notifier, on, attempts, max_delay_s)
    if backoff_s is not None:
        plugin.backoff_s = float(backoff_s)
    plugin.max_per_minute = rate_per_minute(max_per_minute)
    return plugin
