"""`guard.status()`: spend against every ceiling in its current period."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from costguard.model import Ceiling, Limit, Unit, micros_to_usd
from costguard.stores.base import KillSwitchState

__all__ = ["CeilingStatus", "Status"]


@dataclass(frozen=True)
class CeilingStatus:
    """One counter: a ceiling's bound labels in one period, in its unit (USD as floats).

    `spent` counts everything in flight, as enforcement does; `reserved` is what is in flight (the calls'
    estimates and the slices processes hold), `leased` the part of it slices hold (`leases: on`).
    """

    ceiling: str
    labels: Mapping[str, str]
    period: str
    unit: str
    spent: float
    reserved: float
    limit: float
    remaining: float
    ratio: float
    resets_at: datetime | None
    enforcement: str
    leased: float = 0.0

    @classmethod
    def build(
        cls,
        ceiling: Ceiling,
        labels: Mapping[str, str],
        limit: Limit,
        committed: int,
        reserved: int,
        resets: float | None,
        leased: int = 0,
    ) -> CeilingStatus:
        """A row from raw counter values (`spent` counts in-flight reservations, as enforcement does;
        `leased` is the part of `reserved` live slices hold)."""

        def shown(value: int) -> float:
            return micros_to_usd(value) if limit.unit is Unit.USD else float(value)

        total = committed + reserved
        return cls(
            ceiling=ceiling.id,
            labels=dict(labels),
            period=limit.period.value,
            unit=limit.unit.value,
            spent=shown(total),
            reserved=shown(reserved),
            limit=shown(limit.amount),
            remaining=shown(max(0, limit.amount - total)),
            ratio=round(total / limit.amount, 6) if limit.amount else (1.0 if total else 0.0),
            resets_at=None if resets is None else datetime.fromtimestamp(resets, timezone.utc),
            enforcement=ceiling.enforcement,
            leased=shown(leased),
        )

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready view; USD rows say spent_usd / reserved_usd / leased_usd / limit_usd / remaining_usd."""
        names = (
            ("spent_usd", "reserved_usd", "limit_usd", "remaining_usd", "leased_usd")
            if self.unit == "usd"
            else ("spent", "reserved", "limit", "remaining", "leased")
        )
        return {
            "ceiling": self.ceiling,
            "labels": dict(self.labels),
            "period": self.period,
            "unit": self.unit,
            names[0]: self.spent,
            names[1]: self.reserved,
            names[4]: self.leased,
            names[2]: self.limit,
            names[3]: self.remaining,
            "ratio": self.ratio,
            "resets_at": self.resets_at.isoformat() if self.resets_at else None,
            "enforcement": self.enforcement,
        }


@dataclass(frozen=True)
class Status:
    """Every ceiling's spend now, the active kill switches, and (for this process) what was admitted
    while the store could not be reached and is not recorded yet (`unrecorded_usd`) and how many
    calls' writes wait in the spool (`spooled`)."""

    at: datetime
    ceilings: tuple[CeilingStatus, ...]
    killswitches: tuple[KillSwitchState, ...] = ()
    unrecorded_usd: float = 0.0
    spooled: int = 0

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready view."""
        return {
            "at": self.at.isoformat(),
            "unrecorded_usd": self.unrecorded_usd,
            "spooled": self.spooled,
            "ceilings": [c.to_dict() for c in self.ceilings],
            "killswitches": [s.to_dict() for s in self.killswitches],
        }
