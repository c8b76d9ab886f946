"""Calendar period buckets in a timezone: which bucket an instant falls in and when it resets."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, timezone, tzinfo

from costguard.model import Period

__all__ = ["Bucket", "bucket_for"]


@dataclass(frozen=True)
class Bucket:
    """One period instance: its id (part of the counter key), start and end as epoch seconds."""

    period: Period
    id: str
    start: float | None
    end: float | None


def _local_midnight(day: date, tz: tzinfo) -> datetime:
    return datetime.combine(day, time(0), tzinfo=tz)


def _epoch(moment: datetime) -> float:
    return moment.astimezone(timezone.utc).timestamp()


def bucket_for(period: Period, now: float, tz: tzinfo) -> Bucket:
    """The bucket of `period` that contains the instant `now` (epoch seconds) in timezone `tz`."""
    if period is Period.TOTAL:
        return Bucket(period, "total", None, None)
    local = datetime.fromtimestamp(now, tz)
    if period is Period.HOUR:
        # The offset is part of the id so the repeated hour of a DST fall-back stays two buckets.
        start = local.replace(minute=0, second=0, microsecond=0)
        return Bucket(period, start.strftime("%Y-%m-%dT%H%z"), _epoch(start), _epoch(start) + 3600)
    if period is Period.DAY:
        day = local.date()
        return Bucket(
            period,
            day.isoformat(),
            _epoch(_local_midnight(day, tz)),
            _epoch(_local_midnight(day + timedelta(days=1), tz)),
        )
    if period is Period.WEEK:
        monday = local.date() - timedelta(days=local.weekday())
        year, week, _ = monday.isocalendar()
        return Bucket(
            period,
            f"{year}-W{week:02d}",
            _epoch(_local_midnight(monday, tz)),
            _epoch(_local_midnight(monday + timedelta(days=7), tz)),
        )
    first = local.date().replace(day=1)
    following = (first + timedelta(days=32)).replace(day=1)
    return Bucket(
        period,
        first.strftime("%Y-%m"),
        _epoch(_local_midnight(first, tz)),
        _epoch(_local_midnight(following, tz)),
    )
