"""What costguard decided about one call, as shown to fallbacks, exceptions and the audit log."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = ["Decision", "Reason", "UsdView"]

Reason = Literal[
    "allowed", "budget_exceeded", "expired", "max_call_usd", "max_instances", "kill_switch", "store_error", "store_busy"
]


class UsdView:
    """`spent_usd` and `limit_usd` for a record of one ceiling's `unit`, `spent` and `limit` (decisions, events)."""

    unit: str | None
    spent: float | None
    limit: float | None

    @property
    def spent_usd(self) -> float | None:
        """Spend in USD (None when the ceiling counts calls or tokens)."""
        return self.spent if self.unit == "usd" else None

    @property
    def limit_usd(self) -> float | None:
        """Limit in USD (None when the ceiling counts calls or tokens)."""
        return self.limit if self.unit == "usd" else None


@dataclass(frozen=True)
class Decision(UsdView):
    """The outcome of checking or reserving one call against every ceiling that applies."""

    allowed: bool
    reason: Reason
    labels: Mapping[str, str]
    scope: Mapping[str, str] = field(default_factory=dict)
    period: str | None = None
    unit: str | None = None
    spent: float | None = None
    limit: float | None = None
    retry_after_s: float | None = None
    ratio: float = 0.0
    degraded: bool = False
    reservation_id: str | None = None
    message: str = ""

    @property
    def feature(self) -> str:
        """The guarded feature's name."""
        return self.labels.get("feature", "")

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready view."""
        return {
            "allowed": self.allowed,
            "reason": self.reason,
            "labels": dict(self.labels),
            "scope": dict(self.scope),
            "period": self.period,
            "unit": self.unit,
            "spent": self.spent,
            "limit": self.limit,
            "spent_usd": self.spent_usd,
            "limit_usd": self.limit_usd,
            "retry_after_s": self.retry_after_s,
            "ratio": self.ratio,
            "degraded": self.degraded,
            "reservation_id": self.reservation_id,
            "message": self.message,
        }
