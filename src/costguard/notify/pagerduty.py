"""`pagerduty`: Events API v2 — trigger on a kill, resolve when it clears."""

from __future__ import annotations

import hashlib
import json
from typing import TYPE_CHECKING, Any

from costguard.events import NEW_PERIOD, Event
from costguard.notify.format import headline, money, next_step, scope_text
from costguard.notify.http import DeliveryOptions, HttpNotifier, check_url, post

if TYPE_CHECKING:
    from typing_extensions import Unpack

__all__ = ["EVENTS_URL", "PagerDutyNotifier"]

EVENTS_URL = "https://events.pagerduty.com/v2/enqueue"
DEFAULT_ON = ("kill", "kill_cleared", "killswitch_activated", "killswitch_deactivated")
_RESOLVES = {"kill_cleared", "killswitch_deactivated"}
_SEVERITY = {"kill": "critical", "killswitch_activated": "critical", "warn": "warning", "store_error": "error"}


def dedup_key(event: Event) -> str:
    """Pairs a trigger with its resolve; warn alerts get their own key per threshold (never auto-resolved).

    A per-instance ceiling's alerts (`event.instances` set) share one key per ceiling and period
    bucket: 200 customers over their cap are one incident, resolved by the first call of the next
    period (a kill cleared there names the bucket that ended)."""
    key = event.dedup_key
    if event.kind == "warn":
        key += f"/warn-{event.threshold:g}"
    elif event.kind in ("limit_changed", "store_error"):
        key += f"/{event.kind}"
    if len(key) > 255:  # PagerDuty's limit
        key = "costguard/" + hashlib.sha256(key.encode()).hexdigest()
    return key


class PagerDutyNotifier(HttpNotifier):
    """Send `trigger` for `kill` and `killswitch_activated`, `resolve` for `kill_cleared` and
    `killswitch_deactivated`, with a dedup key stable across processes and periods.

    `on` defaults to those four kinds; `warn` and `store_error` may be added (warning and error
    severity, each with its own key, not resolved automatically). The other delivery options
    (`timeout_s`, `attempts`, ...) are `HttpNotifier`'s.
    """

    name = "pagerduty"
    default_on = frozenset(DEFAULT_ON)
    on: frozenset[str]  # never None: `default_on` is set

    def __init__(
        self,
        routing_key: str,
        *,
        events_url: str = EVENTS_URL,
        source: str = "costguard",
        **delivery: Unpack[DeliveryOptions],
    ) -> None:
        if not routing_key:
            raise ValueError("routing_key is required (the integration key of a PagerDuty Events API v2 service)")
        self.routing_key = routing_key
        self.events_url = check_url(events_url, "events_url")
        self.source = source
        super().__init__(**delivery)

    def message(self, event: Event) -> dict[str, Any]:
        """The Events API v2 body for `event`."""
        body: dict[str, Any] = {
            "routing_key": self.routing_key,
            "event_action": "resolve" if event.kind in _RESOLVES else "trigger",
            "dedup_key": dedup_key(event),
        }
        if body["event_action"] == "trigger":
            details = {k: v for k, v in event.to_dict().items() if v is not None}
            details["next"] = next_step(event)
            if event.spent is not None:
                details["spent"] = money(event.spent, event.unit)
                details["limit"] = money(event.limit, event.unit)
            body["payload"] = {
                "summary": f"costguard: {headline(event)}"[:1024],
                "source": self.source,
                "severity": _SEVERITY.get(event.kind, "info"),
                "timestamp": event.at.isoformat(),
                "component": event.labels.get("feature", scope_text(event.labels)),
                "group": "costguard",
                "class": event.kind,
                "custom_details": details,
            }
        return body

    def __call__(self, event: Event) -> None:
        if event.kind == "kill_cleared" and event.instances is not None and event.reason != NEW_PERIOD:
            # One instance of a per-instance ceiling opened by a raised limit: others may still be
            # blocked, so the ceiling's incident stays; it resolves when its period ends.
            return
        body = json.dumps(self.message(event)).encode()
        post(self.events_url, body, {"Content-Type": "application/json"}, self.timeout_s)

    def __repr__(self) -> str:
        return f"PagerDutyNotifier(events_url={self.events_url!r}, on={sorted(self.on)})"
