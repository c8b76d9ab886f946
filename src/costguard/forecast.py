"""`guard.forecast()`: where each USD ceiling's spend is heading by the end of its period.

Velocity comes from the hourly history counters every reservation keeps (per ceiling instance,
per UTC hour, 8 days): an exponentially weighted mean of the last 72 hours (half-life 12 h, so
recent hours count more), the current hour pro-rated once 15 minutes of it have passed. The
projection is spend so far + velocity * hours left; `depletion_at` is when the limit is reached
at that velocity (None if not within the period); `confidence` is how much history it rests on
(hours with spend history / 24, at most 1).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

__all__ = ["CeilingForecast", "Forecast", "project", "velocity"]

HALF_LIFE_H = 12.0
LOOKBACK_H = 72
FULL_CONFIDENCE_H = 24.0
MIN_CURRENT_HOUR_S = 900.0


def velocity(hourly: Sequence[float], elapsed_in_hour_s: float) -> tuple[float, int]:
    """(spend per hour, hours of history) from hourly spend, newest first (index 0 = current hour).

    History starts at the oldest hour with any spend; hours before it are unknown, not zero.
    """
    oldest = max((i for i, value in enumerate(hourly) if value > 0), default=-1)
    if oldest < 0:
        return 0.0, 0
    samples: list[tuple[float, float]] = []
    if elapsed_in_hour_s >= MIN_CURRENT_HOUR_S:
        samples.append((0.0, hourly[0] * 3600.0 / elapsed_in_hour_s))
    for age in range(1, oldest + 1):
        samples.append((float(age), hourly[age]))
    if not samples:  # only the first minutes of the only hour with spend
        return hourly[0] * 3600.0 / max(elapsed_in_hour_s, 1.0), 0
    weights = [0.5 ** (age / HALF_LIFE_H) for age, _ in samples]
    rate = sum(w * value for w, (_, value) in zip(weights, samples, strict=True)) / sum(weights)
    return rate, oldest


@dataclass(frozen=True)
class CeilingForecast:
    """One USD ceiling instance in its current period (`spent_usd` counts what is in flight, `reserved_usd`,
    and the part of it live slices hold, `leased_usd`, as the status row does)."""

    ceiling: str
    labels: Mapping[str, str]
    period: str
    spent_usd: float
    limit_usd: float
    velocity_usd_per_hour: float
    projected_usd: float | None
    on_track: bool
    depletion_at: datetime | None
    resets_at: datetime | None
    history_hours: int
    confidence: float
    exhausted: bool = False  # spent has reached the limit: it ran out already, `depletion_at` is when we looked
    reserved_usd: float = 0.0
    leased_usd: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready view."""
        return {
            "exhausted": self.exhausted,
            "ceiling": self.ceiling,
            "labels": dict(self.labels),
            "period": self.period,
            "spent_usd": self.spent_usd,
            "reserved_usd": self.reserved_usd,
            "leased_usd": self.leased_usd,
            "limit_usd": self.limit_usd,
            "velocity_usd_per_hour": self.velocity_usd_per_hour,
            "projected_usd": self.projected_usd,
            "on_track": self.on_track,
            "depletion_at": self.depletion_at.isoformat() if self.depletion_at else None,
            "resets_at": self.resets_at.isoformat() if self.resets_at else None,
            "history_hours": self.history_hours,
            "confidence": self.confidence,
        }


def project(
    spent: float, limit: float, rate: float, now: float, resets_at: float | None
) -> tuple[float | None, bool, float | None]:
    """(projected spend at the period's end, on track, epoch when the limit is reached or None)."""
    projected = None if resets_at is None else spent + rate * max(0.0, resets_at - now) / 3600.0
    if spent >= limit:
        return projected, False, now
    depletion = now + (limit - spent) / rate * 3600.0 if rate > 0 else None
    if depletion is not None and resets_at is not None and depletion > resets_at:
        depletion = None
    on_track = projected <= limit + 1e-9 if projected is not None else depletion is None
    return projected, on_track, depletion


def build(
    ceiling: str,
    labels: Mapping[str, str],
    period: str,
    spent: float,
    limit: float,
    hourly: Sequence[float],
    now: float,
    resets_at: float | None,
    *,
    reserved: float = 0.0,
    leased: float = 0.0,
) -> CeilingForecast:
    """A row from a status row's numbers and its hourly history (USD, newest first)."""
    elapsed = now - math.floor(now / 3600.0) * 3600.0
    rate, hours = velocity(hourly, elapsed)
    projected, on_track, depletion = project(spent, limit, rate, now, resets_at)

    def when(epoch: float | None) -> datetime | None:
        return None if epoch is None else datetime.fromtimestamp(epoch, timezone.utc)

    return CeilingForecast(
        ceiling=ceiling,
        labels=dict(labels),
        period=period,
        spent_usd=round(spent, 6),
        limit_usd=round(limit, 6),
        velocity_usd_per_hour=round(rate, 6),
        projected_usd=None if projected is None else round(projected, 6),
        on_track=on_track,
        depletion_at=when(depletion),
        resets_at=when(resets_at),
        history_hours=hours,
        confidence=round(min(1.0, hours / FULL_CONFIDENCE_H), 3),
        exhausted=spent >= limit,
        reserved_usd=round(reserved, 6),
        leased_usd=round(leased, 6),
    )


@dataclass(frozen=True)
class Forecast:
    """Every USD ceiling's forecast."""

    at: datetime
    ceilings: tuple[CeilingForecast, ...]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready view."""
        return {"at": self.at.isoformat(), "ceilings": [c.to_dict() for c in self.ceilings]}
