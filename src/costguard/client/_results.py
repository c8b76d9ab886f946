"""What the client's calls return: frozen dataclasses read from the admin API's JSON."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

__all__ = [
    "BudgetStatus",
    "CeilingRow",
    "Forecast",
    "ForecastRow",
    "KillSwitchChange",
    "KillSwitchStatus",
    "LimitChange",
    "LimitsUpdated",
    "PeriodBudget",
    "Switch",
]


def _time(value: Any) -> datetime | None:
    return None if value is None else datetime.fromisoformat(str(value))


def _optional(value: Any) -> float | None:
    return None if value is None else float(value)


def _labels(value: Any) -> dict[str, str]:
    return {str(k): str(v) for k, v in (value or {}).items()}


@dataclass(frozen=True)
class PeriodBudget:
    """A day or a month of the caller's scope in USD; all None when no USD ceiling has exactly that scope."""

    spent_usd: float | None
    limit_usd: float | None
    remaining_usd: float | None

    @classmethod
    def from_json(cls, data: Any) -> PeriodBudget:
        """From the API's `{spent_usd, limit_usd, remaining_usd}`."""
        return cls(_optional(data["spent_usd"]), _optional(data["limit_usd"]), _optional(data["remaining_usd"]))


@dataclass(frozen=True)
class CeilingRow:
    """One ceiling's counter in its current period, in its `unit` (USD in dollars): `spent` counts what is
    in flight, `reserved`, and `leased` the part of that live slices hold."""

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
    def from_json(cls, data: Any) -> CeilingRow:
        """From a status row (USD rows name their amounts `spent_usd`, `limit_usd`, …)."""
        suffix = "_usd" if data["unit"] == "usd" else ""
        return cls(
            ceiling=str(data["ceiling"]),
            labels=_labels(data["labels"]),
            period=str(data["period"]),
            unit=str(data["unit"]),
            spent=float(data["spent" + suffix]),
            reserved=float(data["reserved" + suffix]),
            limit=float(data["limit" + suffix]),
            remaining=float(data["remaining" + suffix]),
            ratio=float(data["ratio"]),
            resets_at=_time(data["resets_at"]),
            enforcement=str(data["enforcement"]),
            leased=float(data.get("leased" + suffix, 0.0)),  # absent from a server of an earlier version
        )


@dataclass(frozen=True)
class Switch:
    """An active kill switch: its scope (empty: everything), why, who and since when."""

    scope: Mapping[str, str]
    reason: str
    actor: str | None
    since: datetime

    @classmethod
    def from_json(cls, data: Any) -> Switch:
        """From the API's `{scope, reason, actor, since}`."""
        actor = data["actor"]
        since = datetime.fromisoformat(str(data["since"]))
        return cls(_labels(data["scope"]), str(data["reason"]), None if actor is None else str(actor), since)


@dataclass(frozen=True)
class BudgetStatus:
    """`GET /v1/budget/status`: the caller's scope's `daily` and `monthly`, and every ceiling it may see."""

    scope: Mapping[str, str]
    daily: PeriodBudget
    monthly: PeriodBudget
    at: datetime
    ceilings: tuple[CeilingRow, ...]
    killswitches: tuple[Switch, ...]
    unrecorded_usd: float
    spooled: int

    @classmethod
    def from_json(cls, data: Any) -> BudgetStatus:
        """From the API's answer."""
        return cls(
            scope=_labels(data["scope"]),
            daily=PeriodBudget.from_json(data["daily"]),
            monthly=PeriodBudget.from_json(data["monthly"]),
            at=datetime.fromisoformat(str(data["at"])),
            ceilings=tuple(CeilingRow.from_json(row) for row in data["ceilings"]),
            killswitches=tuple(Switch.from_json(s) for s in data["killswitches"]),
            unrecorded_usd=float(data["unrecorded_usd"]),
            spooled=int(data["spooled"]),
        )


@dataclass(frozen=True)
class ForecastRow:
    """One USD ceiling's forecast: where spend is heading by its period's end and when it runs out
    (`depletion_hour`: `depletion_at` truncated to the hour)."""

    ceiling: str
    labels: Mapping[str, str]
    period: str
    spent_usd: float
    limit_usd: float
    velocity_usd_per_hour: float
    projected_usd: float | None
    on_track: bool
    exhausted: bool
    depletion_at: datetime | None
    depletion_hour: datetime | None
    resets_at: datetime | None
    history_hours: int
    confidence: float
    reserved_usd: float = 0.0
    leased_usd: float = 0.0

    @classmethod
    def from_json(cls, data: Any) -> ForecastRow:
        """From a forecast row."""
        return cls(
            ceiling=str(data["ceiling"]),
            labels=_labels(data["labels"]),
            period=str(data["period"]),
            spent_usd=float(data["spent_usd"]),
            limit_usd=float(data["limit_usd"]),
            velocity_usd_per_hour=float(data["velocity_usd_per_hour"]),
            projected_usd=_optional(data["projected_usd"]),
            on_track=bool(data["on_track"]),
            exhausted=bool(data["exhausted"]),
            depletion_at=_time(data["depletion_at"]),
            depletion_hour=_time(data["depletion_hour"]),
            resets_at=_time(data["resets_at"]),
            history_hours=int(data["history_hours"]),
            confidence=float(data["confidence"]),
            # absent from a server of an earlier version
            reserved_usd=float(data.get("reserved_usd", 0.0)),
            leased_usd=float(data.get("leased_usd", 0.0)),
        )


@dataclass(frozen=True)
class Forecast:
    """`GET /v1/budget/forecast`."""

    at: datetime
    ceilings: tuple[ForecastRow, ...]

    @classmethod
    def from_json(cls, data: Any) -> Forecast:
        """From the API's answer."""
        rows = tuple(ForecastRow.from_json(row) for row in data["ceilings"])
        return cls(at=datetime.fromisoformat(str(data["at"])), ceilings=rows)


@dataclass(frozen=True)
class LimitChange:
    """One limit set or cleared (`old`, `new`: None means no limit)."""

    scope: Mapping[str, str]
    period: str
    unit: str
    old: float | None
    new: float | None
    cleared: bool
    actor: str

    @classmethod
    def from_json(cls, data: Any) -> LimitChange:
        """From the API's `{scope, period, unit, old, new, cleared, actor}`."""
        return cls(
            scope=_labels(data["scope"]),
            period=str(data["period"]),
            unit=str(data["unit"]),
            old=_optional(data["old"]),
            new=_optional(data["new"]),
            cleared=bool(data["cleared"]),
            actor=str(data["actor"]),
        )


@dataclass(frozen=True)
class LimitsUpdated:
    """`PUT /v1/budget/limits` with day and month limits: the limits in force now, and what changed."""

    scope: Mapping[str, str]
    daily_limit_usd: float | None
    monthly_limit_usd: float | None
    changes: tuple[LimitChange, ...]
    actor: str

    @classmethod
    def from_json(cls, data: Any) -> LimitsUpdated:
        """From the API's answer."""
        return cls(
            scope=_labels(data["scope"]),
            daily_limit_usd=_optional(data["daily_limit_usd"]),
            monthly_limit_usd=_optional(data["monthly_limit_usd"]),
            changes=tuple(LimitChange.from_json(c) for c in data["changes"]),
            actor=str(data["actor"]),
        )


@dataclass(frozen=True)
class KillSwitchChange:
    """The result of activating (with `activated_by`) or deactivating (`activated_by` None) a switch."""

    scope: Mapping[str, str]
    active: bool
    changed: bool
    actor: str
    activated_by: str | None = None

    @classmethod
    def from_json(cls, data: Any) -> KillSwitchChange:
        """From the API's answer."""
        by = data.get("activated_by")
        return cls(
            scope=_labels(data["scope"]),
            active=bool(data["active"]),
            changed=bool(data["changed"]),
            actor=str(data["actor"]),
            activated_by=None if by is None else str(by),
        )


@dataclass(frozen=True)
class KillSwitchStatus:
    """`active`: whether a switch stops the caller's scope; `switches`: the active ones it may see;
    `history`: the latest activations and deactivations (audit records), newest first."""

    active: bool
    switches: tuple[Switch, ...]
    history: tuple[Mapping[str, Any], ...]

    @classmethod
    def from_json(cls, data: Any) -> KillSwitchStatus:
        """From the API's answer."""
        return cls(
            active=bool(data["active"]),
            switches=tuple(Switch.from_json(s) for s in data["switches"]),
            history=tuple(dict(record) for record in data["history"]),
        )
