"""Calendar buckets in non-UTC timezones: month ends, leap days, DST days and hours, ISO weeks."""

from __future__ import annotations

from datetime import datetime, timezone
from zoneinfo import ZoneInfo

import pytest

from costguard.model import Period
from costguard.periods import Bucket, bucket_for

NEW_YORK = ZoneInfo("America/New_York")
KOLKATA = ZoneInfo("Asia/Kolkata")
SYDNEY = ZoneInfo("Australia/Sydney")
ZONES = [pytest.param(NEW_YORK, id="new_york"), pytest.param(KOLKATA, id="kolkata"), pytest.param(SYDNEY, id="sydney")]
CALENDAR = [Period.HOUR, Period.DAY, Period.WEEK, Period.MONTH]
UTC = timezone.utc


def epoch(tz: ZoneInfo, *args: int, fold: int = 0) -> float:
    """Epoch seconds of a local wall-clock time (year, month, day, hour, minute, second, microsecond)."""
    return datetime(*args, tzinfo=tz, fold=fold).timestamp()  # type: ignore[misc]


def local(tz: ZoneInfo, seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, tz)


def assert_bucket_invariants(bucket: Bucket, now: float, tz: ZoneInfo) -> None:
    assert bucket.start is not None
    assert bucket.end is not None
    assert bucket.start <= now < bucket.end
    # resets_at is the start of the next bucket, and the last instant before it is still this bucket.
    following = bucket_for(bucket.period, bucket.end, tz)
    assert following.start == bucket.end
    assert following.id != bucket.id
    assert bucket_for(bucket.period, bucket.end - 0.001, tz).id == bucket.id
    assert bucket_for(bucket.period, bucket.start, tz).id == bucket.id
    before = bucket_for(bucket.period, bucket.start - 0.001, tz)
    assert before.end == bucket.start
    assert before.id != bucket.id


# --------------------------------------------------------------------------- every period, every zone


@pytest.mark.parametrize("tz", ZONES)
@pytest.mark.parametrize("period", CALENDAR)
def test_month_end_splits_buckets(tz: ZoneInfo, period: Period) -> None:
    last = epoch(tz, 2026, 1, 31, 23, 59, 59, 900_000)
    first = epoch(tz, 2026, 2, 1, 0, 0, 0, 500_000)
    a = bucket_for(period, last, tz)
    b = bucket_for(period, first, tz)
    assert_bucket_invariants(a, last, tz)
    assert_bucket_invariants(b, first, tz)
    assert a.period is b.period is period
    if period is Period.WEEK:
        # Sat 31 Jan and Sun 1 Feb 2026 are in the same ISO week (Mon 26 Jan - Sun 1 Feb).
        assert a == b
    else:
        assert a.id != b.id
        assert a.end == b.start == epoch(tz, 2026, 2, 1)


@pytest.mark.parametrize("tz", ZONES)
def test_month_and_day_bucket_ids_and_bounds(tz: ZoneInfo) -> None:
    last = epoch(tz, 2026, 1, 31, 23, 59, 59, 900_000)
    first = epoch(tz, 2026, 2, 1, 0, 0, 0, 500_000)
    month_a, month_b = bucket_for(Period.MONTH, last, tz), bucket_for(Period.MONTH, first, tz)
    assert (month_a.id, month_b.id) == ("2026-01", "2026-02")
    assert month_a.start == epoch(tz, 2026, 1, 1)
    assert month_a.end == epoch(tz, 2026, 2, 1)
    assert month_b.end == epoch(tz, 2026, 3, 1)
    day_a, day_b = bucket_for(Period.DAY, last, tz), bucket_for(Period.DAY, first, tz)
    assert (day_a.id, day_b.id) == ("2026-01-31", "2026-02-01")
    assert day_a.start == epoch(tz, 2026, 1, 31)
    assert day_a.end == day_b.start == epoch(tz, 2026, 2, 1)
    assert day_b.end == epoch(tz, 2026, 2, 2)


@pytest.mark.parametrize("tz", ZONES)
def test_buckets_follow_local_not_utc_calendar(tz: ZoneInfo) -> None:
    # 2026-01-31 20:00 in New York is already Feb 1 in UTC; 05:00 in Kolkata/Sydney is still Jan 30/31 UTC.
    moment = epoch(tz, 2026, 1, 31, 20, 0) if tz is NEW_YORK else epoch(tz, 2026, 2, 1, 5, 0)
    wall = local(tz, moment)
    utc = datetime.fromtimestamp(moment, UTC)
    assert wall.date() != utc.date()
    assert bucket_for(Period.DAY, moment, tz).id == wall.date().isoformat()
    assert bucket_for(Period.MONTH, moment, tz).id == wall.strftime("%Y-%m")


@pytest.mark.parametrize("tz", ZONES)
def test_year_end_month(tz: ZoneInfo) -> None:
    moment = epoch(tz, 2026, 12, 31, 23, 59, 59)
    bucket = bucket_for(Period.MONTH, moment, tz)
    assert bucket.id == "2026-12"
    assert bucket.end == epoch(tz, 2027, 1, 1)
    assert bucket_for(Period.MONTH, bucket.end, tz).id == "2027-01"
    assert_bucket_invariants(bucket, moment, tz)


@pytest.mark.parametrize("tz", ZONES)
def test_every_month_of_a_year_chains(tz: ZoneInfo) -> None:
    moment = epoch(tz, 2026, 1, 15, 12)
    ids = []
    bucket = bucket_for(Period.MONTH, moment, tz)
    for _ in range(13):
        ids.append(bucket.id)
        assert bucket.end is not None
        bucket = bucket_for(Period.MONTH, bucket.end, tz)
    assert ids == [f"2026-{m:02d}" for m in range(1, 13)] + ["2027-01"]


# --------------------------------------------------------------------------- leap day


@pytest.mark.parametrize("tz", ZONES)
def test_leap_day_is_its_own_day_and_month_ends_at_march_1(tz: ZoneInfo) -> None:
    leap = epoch(tz, 2028, 2, 29, 12, 30)
    day = bucket_for(Period.DAY, leap, tz)
    assert day.id == "2028-02-29"
    assert day.start == epoch(tz, 2028, 2, 29)
    assert day.end == epoch(tz, 2028, 3, 1)
    assert bucket_for(Period.DAY, epoch(tz, 2028, 2, 28, 23, 59, 59), tz).id == "2028-02-28"
    assert bucket_for(Period.DAY, epoch(tz, 2028, 3, 1, 0, 0, 0, 1), tz).id == "2028-03-01"
    month = bucket_for(Period.MONTH, leap, tz)
    assert month.id == "2028-02"
    assert month.start == epoch(tz, 2028, 2, 1)
    assert month.end == epoch(tz, 2028, 3, 1)
    assert_bucket_invariants(day, leap, tz)
    assert_bucket_invariants(month, leap, tz)


# --------------------------------------------------------------------------- DST in New York


def test_spring_forward_day_is_23_hours() -> None:
    moment = epoch(NEW_YORK, 2026, 3, 8, 12)
    day = bucket_for(Period.DAY, moment, NEW_YORK)
    assert day.id == "2026-03-08"
    assert day.start is not None
    assert day.end is not None
    assert day.end - day.start == 23 * 3600
    assert day.start == datetime(2026, 3, 8, 5, tzinfo=UTC).timestamp()  # midnight EST
    assert day.end == datetime(2026, 3, 9, 4, tzinfo=UTC).timestamp()  # midnight EDT
    assert_bucket_invariants(day, moment, NEW_YORK)


def test_fall_back_day_is_25_hours() -> None:
    moment = epoch(NEW_YORK, 2026, 11, 1, 12)
    day = bucket_for(Period.DAY, moment, NEW_YORK)
    assert day.id == "2026-11-01"
    assert day.start is not None
    assert day.end is not None
    assert day.end - day.start == 25 * 3600
    assert day.start == datetime(2026, 11, 1, 4, tzinfo=UTC).timestamp()  # midnight EDT
    assert day.end == datetime(2026, 11, 2, 5, tzinfo=UTC).timestamp()  # midnight EST
    assert_bucket_invariants(day, moment, NEW_YORK)


def test_dst_weeks_and_months_are_short_or_long() -> None:
    spring_week = bucket_for(Period.WEEK, epoch(NEW_YORK, 2026, 3, 8, 12), NEW_YORK)
    assert spring_week.start == epoch(NEW_YORK, 2026, 3, 2)
    assert spring_week.end == epoch(NEW_YORK, 2026, 3, 9)
    assert spring_week.end - spring_week.start == 7 * 86400 - 3600  # type: ignore[operator]
    fall_month = bucket_for(Period.MONTH, epoch(NEW_YORK, 2026, 11, 15), NEW_YORK)
    assert fall_month.end - fall_month.start == 30 * 86400 + 3600  # type: ignore[operator]


def test_spring_forward_hours_skip_the_missing_hour() -> None:
    # 01:59:59 EST is followed by 03:00:00 EDT; there is no 02:00 hour.
    before = datetime(2026, 3, 8, 6, 59, 59, tzinfo=UTC).timestamp()
    after = datetime(2026, 3, 8, 7, 0, 0, tzinfo=UTC).timestamp()
    one, three = bucket_for(Period.HOUR, before, NEW_YORK), bucket_for(Period.HOUR, after, NEW_YORK)
    assert local(NEW_YORK, one.start).hour == 1  # type: ignore[arg-type]
    assert local(NEW_YORK, three.start).hour == 3  # type: ignore[arg-type]
    assert one.end == three.start == after
    assert one.id != three.id
    assert_bucket_invariants(one, before, NEW_YORK)
    assert_bucket_invariants(three, after, NEW_YORK)


def test_fall_back_repeated_1am_hour_is_two_buckets() -> None:
    first = epoch(NEW_YORK, 2026, 11, 1, 1, 30, fold=0)  # 01:30 EDT
    second = epoch(NEW_YORK, 2026, 11, 1, 1, 30, fold=1)  # 01:30 EST, an hour later
    assert second - first == 3600
    a = bucket_for(Period.HOUR, first, NEW_YORK)
    b = bucket_for(Period.HOUR, second, NEW_YORK)
    assert a.id != b.id
    assert a.start == datetime(2026, 11, 1, 5, tzinfo=UTC).timestamp()
    assert a.end == b.start == datetime(2026, 11, 1, 6, tzinfo=UTC).timestamp()
    assert b.end == datetime(2026, 11, 1, 7, tzinfo=UTC).timestamp()
    assert_bucket_invariants(a, first, NEW_YORK)
    assert_bucket_invariants(b, second, NEW_YORK)
    # The whole fall-back day has 25 distinct hour buckets, each an hour long.
    day = bucket_for(Period.DAY, first, NEW_YORK)
    assert day.start is not None
    assert day.end is not None
    ids = set()
    moment = day.start
    while moment < day.end:
        hour = bucket_for(Period.HOUR, moment, NEW_YORK)
        assert hour.start == moment
        assert hour.end == moment + 3600
        ids.add(hour.id)
        moment += 3600
    assert len(ids) == 25


def test_sydney_dst_days() -> None:
    # Sydney leaves DST on 2026-04-05 (25 h) and enters it on 2026-10-04 (23 h).
    long_day = bucket_for(Period.DAY, epoch(SYDNEY, 2026, 4, 5, 12), SYDNEY)
    short_day = bucket_for(Period.DAY, epoch(SYDNEY, 2026, 10, 4, 12), SYDNEY)
    assert long_day.end - long_day.start == 25 * 3600  # type: ignore[operator]
    assert short_day.end - short_day.start == 23 * 3600  # type: ignore[operator]
    first = epoch(SYDNEY, 2026, 4, 5, 2, 30, fold=0)
    second = epoch(SYDNEY, 2026, 4, 5, 2, 30, fold=1)
    assert bucket_for(Period.HOUR, first, SYDNEY).id != bucket_for(Period.HOUR, second, SYDNEY).id


# --------------------------------------------------------------------------- ISO weeks


@pytest.mark.parametrize("tz", ZONES)
def test_weeks_start_on_monday(tz: ZoneInfo) -> None:
    sunday_night = epoch(tz, 2026, 3, 22, 23, 59, 59)
    monday_morning = epoch(tz, 2026, 3, 23, 0, 0, 0, 1)
    a, b = bucket_for(Period.WEEK, sunday_night, tz), bucket_for(Period.WEEK, monday_morning, tz)
    assert a.id == "2026-W12"
    assert b.id == "2026-W13"
    assert a.end == b.start == epoch(tz, 2026, 3, 23)
    assert a.start == epoch(tz, 2026, 3, 16)
    assert local(tz, b.start).weekday() == 0  # type: ignore[arg-type]
    for day in range(23, 30):  # Monday 23rd to Sunday 29th
        assert bucket_for(Period.WEEK, epoch(tz, 2026, 3, day, 12), tz).id == "2026-W13"
    assert_bucket_invariants(a, sunday_night, tz)
    assert_bucket_invariants(b, monday_morning, tz)


@pytest.mark.parametrize("tz", ZONES)
def test_week_spanning_a_year_boundary(tz: ZoneInfo) -> None:
    # ISO week 1 of 2026 runs Monday 2025-12-29 to Sunday 2026-01-04.
    moments = [epoch(tz, 2025, 12, 29, 0, 0, 0, 1), epoch(tz, 2025, 12, 31, 23, 59), epoch(tz, 2026, 1, 4, 23, 59)]
    buckets = {bucket_for(Period.WEEK, m, tz) for m in moments}
    assert len(buckets) == 1
    (week,) = buckets
    assert week.id == "2026-W01"
    assert week.start == epoch(tz, 2025, 12, 29)
    assert week.end == epoch(tz, 2026, 1, 5)
    assert bucket_for(Period.WEEK, epoch(tz, 2025, 12, 28, 23, 59), tz).id == "2025-W52"
    # And the other way round: 2027-01-01 (a Friday) belongs to 2026-W53.
    assert bucket_for(Period.WEEK, epoch(tz, 2027, 1, 1, 12), tz).id == "2026-W53"
    assert bucket_for(Period.WEEK, epoch(tz, 2027, 1, 4, 12), tz).id == "2027-W01"
    for moment in moments:
        assert_bucket_invariants(week, moment, tz)


# --------------------------------------------------------------------------- hours


def test_kolkata_hours_start_at_local_not_utc_hour() -> None:
    moment = epoch(KOLKATA, 2026, 6, 15, 10, 45, 12)
    hour = bucket_for(Period.HOUR, moment, KOLKATA)
    assert hour.start == epoch(KOLKATA, 2026, 6, 15, 10)
    assert hour.end == epoch(KOLKATA, 2026, 6, 15, 11)
    utc_start = datetime.fromtimestamp(hour.start, UTC)  # type: ignore[arg-type]
    assert (utc_start.hour, utc_start.minute) == (4, 30)
    # 10:15 and 10:45 local are one bucket though they straddle the UTC hour at 10:30 local.
    assert bucket_for(Period.HOUR, epoch(KOLKATA, 2026, 6, 15, 10, 15), KOLKATA).id == hour.id
    assert bucket_for(Period.HOUR, epoch(KOLKATA, 2026, 6, 15, 9, 59, 59), KOLKATA).id != hour.id
    assert_bucket_invariants(hour, moment, KOLKATA)


@pytest.mark.parametrize("tz", ZONES)
def test_hour_buckets_are_an_hour_long_and_chain(tz: ZoneInfo) -> None:
    moment = epoch(tz, 2026, 1, 31, 22, 10)
    bucket = bucket_for(Period.HOUR, moment, tz)
    for _ in range(30):
        assert bucket.end - bucket.start == 3600  # type: ignore[operator]
        assert local(tz, bucket.start).minute == 0  # type: ignore[arg-type]
        assert local(tz, bucket.start).second == 0  # type: ignore[arg-type]
        nxt = bucket_for(Period.HOUR, bucket.end, tz)  # type: ignore[arg-type]
        assert nxt.start == bucket.end
        assert nxt.id != bucket.id
        bucket = nxt


# --------------------------------------------------------------------------- total


@pytest.mark.parametrize("tz", [*ZONES, pytest.param(UTC, id="utc")])
def test_total_has_no_start_or_end(tz: ZoneInfo) -> None:
    for moment in (0.0, epoch(NEW_YORK, 2026, 11, 1, 1, 30), epoch(NEW_YORK, 2099, 12, 31, 23, 59)):
        bucket = bucket_for(Period.TOTAL, moment, tz)
        assert bucket.period is Period.TOTAL
        assert bucket.start is None
        assert bucket.end is None
        assert bucket.id == "total"


@pytest.mark.parametrize("tz", ZONES)
@pytest.mark.parametrize("period", CALENDAR)
def test_bucket_ids_fit_the_store_column(tz: ZoneInfo, period: Period) -> None:
    bucket = bucket_for(period, epoch(tz, 2026, 11, 1, 1, 30, fold=1), tz)
    assert len(bucket.id) <= 40
    assert "|" not in bucket.id


@pytest.mark.parametrize("tz", ZONES)
def test_day_buckets_chain_across_a_year(tz: ZoneInfo) -> None:
    bucket = bucket_for(Period.DAY, epoch(tz, 2028, 1, 1, 0, 0, 1), tz)
    seen = []
    while bucket.id.startswith("2028"):
        seen.append(bucket.id)
        start = local(tz, bucket.start)  # type: ignore[arg-type]
        assert (start.hour, start.minute) == (0, 0)
        bucket = bucket_for(Period.DAY, bucket.end, tz)  # type: ignore[arg-type]
    assert len(seen) == 366
    assert seen[59] == "2028-02-29"
    assert seen[-1] == "2028-12-31"
