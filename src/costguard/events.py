"""Alert events (`costguard.Event`) and audit records (the append-only decision log)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Literal, get_args

from costguard.decision import UsdView

__all__ = [
    "AUDIT_DECISIONS",
    "EVENT_KINDS",
    "NEW_PERIOD",
    "AuditDecision",
    "AuditQuery",
    "AuditRecord",
    "Event",
    "EventKind",
]

# The reason of a kill cleared because its period ended (the first call of the next one claims it).
NEW_PERIOD = "new period"

EventKind = Literal[
    "warn",
    "kill",
    "kill_cleared",
    "killswitch_activated",
    "killswitch_deactivated",
    "limit_changed",
    "store_error",
]
EVENT_KINDS: tuple[str, ...] = get_args(EventKind)

# What an audit record says happened (`AuditRecord.decision`).
AuditDecision = Literal[
    "reserve",
    "commit",
    "release",
    "blocked",
    "limit_changed",
    "killswitch_activated",
    "killswitch_deactivated",
    "key_issued",
    "key_revoked",
    "key_purged",
]
AUDIT_DECISIONS: tuple[str, ...] = get_args(AuditDecision)


@dataclass(frozen=True)
class Event(UsdView):
    """Something an operator should hear about; delivered to notifiers off the request path."""

    kind: EventKind
    labels: Mapping[str, str]
    at: datetime
    threshold: float | None = None
    period: str | None = None
    unit: str | None = None
    spent: float | None = None
    limit: float | None = None
    reason: str | None = None
    actor: str | None = None
    ceiling: str | None = None
    resets_at: datetime | None = None
    enforcement: str | None = None
    unrecorded_usd: float | None = None
    # The counter's period bucket (`2026-05-12`); for a kill cleared by a new period, the bucket it ended.
    bucket: str | None = None
    # An alert for a per-instance ceiling (one with a '*' label) stands for `instances` of them: its
    # labels are the ceiling's (`customer=*`), `top` the instances with the most spend, each
    # `{"labels": {...}, "spent": ...}`. None: an alert about one scope.
    instances: int | None = None
    top: tuple[Mapping[str, Any], ...] = ()
    id: str = field(default_factory=lambda: uuid.uuid4().hex)

    @property
    def dedup_key(self) -> str:
        """Stable across processes and periods for one ceiling instance (or kill switch scope).

        A `kill` and the `kill_cleared` that ends it share it, as do a kill switch's activation and
        deactivation; PagerDuty uses it to pair trigger and resolve.
        """
        scope = ",".join(f"{k}={v}" for k, v in sorted(self.labels.items()))
        if self.kind.startswith("killswitch"):
            return f"costguard/killswitch/{scope or 'global'}"
        if self.instances is not None:  # one incident per ceiling and period bucket, whichever instances
            return f"costguard/{self.ceiling or scope}/{scope}/{self.period}/{self.unit}/{self.bucket}"
        return f"costguard/{self.ceiling or scope}/{scope}/{self.period}/{self.unit}"

    def to_dict(self) -> dict[str, Any]:
        """The JSON body notifiers send."""
        return {
            "kind": self.kind,
            "threshold": self.threshold,
            "labels": dict(self.labels),
            "period": self.period,
            "unit": self.unit,
            "spent": self.spent,
            "limit": self.limit,
            "spent_usd": self.spent_usd,
            "limit_usd": self.limit_usd,
            "reason": self.reason,
            "actor": self.actor,
            "ceiling": self.ceiling,
            "enforcement": self.enforcement,
            "unrecorded_usd": self.unrecorded_usd,
            "bucket": self.bucket,
            "instances": self.instances,
            "top": [{"labels": dict(item["labels"]), "spent": item["spent"]} for item in self.top],
            "resets_at": self.resets_at.isoformat() if self.resets_at else None,
            "dedup_key": self.dedup_key,
            "id": self.id,
            "at": self.at.isoformat(),
        }


@dataclass(frozen=True)
class AuditRecord:
    """One line of the audit log: a decision about a call or a change an operator made."""

    at: float
    decision: str
    labels: Mapping[str, str] = field(default_factory=dict)
    reservation_id: str | None = None
    data: Mapping[str, Any] = field(default_factory=dict)
    id: int | None = None

    @classmethod
    def from_stored(
        cls,
        record_id: int,
        at: float,
        decision: str,
        labels: str | Mapping[str, str],
        reservation_id: str | None,
        data: str | Mapping[str, Any],
    ) -> AuditRecord:
        """A record read back from a store's audit log: `labels` and `data` as the store keeps them,
        JSON text (SQL columns) or already decoded (a Redis stream entry)."""
        return cls(
            at=float(at),
            decision=decision,
            labels=json.loads(labels) if isinstance(labels, str) else labels,
            reservation_id=reservation_id,
            data=json.loads(data) if isinstance(data, str) else data,
            id=int(record_id),
        )

    @property
    def when(self) -> datetime:
        """`at` as an aware UTC datetime."""
        return datetime.fromtimestamp(self.at, timezone.utc)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready view."""
        return {
            "id": self.id,
            "at": self.when.isoformat(),
            "decision": self.decision,
            "labels": dict(self.labels),
            "reservation_id": self.reservation_id,
            **dict(self.data),
        }


@dataclass(frozen=True)
class AuditQuery:
    """Filters for reading the audit log, newest first."""

    since: float | None = None
    until: float | None = None
    feature: str | None = None
    customer: str | None = None
    decision: str | None = None
    limit: int = 100
    before_id: int | None = None

    def matches(self, record: AuditRecord) -> bool:
        """Whether a record passes every filter (used by stores that filter in Python)."""
        return (
            (self.since is None or record.at >= self.since)
            and (self.until is None or record.at < self.until)
            and (self.feature is None or record.labels.get("feature") == self.feature)
            and (self.customer is None or record.labels.get("customer") == self.customer)
            and (self.decision is None or record.decision == self.decision)
            and (self.before_id is None or (record.id is not None and record.id < self.before_id))
        )
