"""Forecasts on synthetic spend curves with a fake clock: flat, ramping, a spike, no history."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from costguard import Guard
from costguard.cli import main
from costguard.forecast import HALF_LIFE_H, project, velocity
from costguard.testing import FakeClock
from helpers import make_guard, usd_ceiling

START = "2026-06-01T00:00:00Z"  # a month with 30 days: 720 hours


def spend(guard: Guard, clock: FakeClock, per_hour: list[float]) -> None:
    """One call per hour at minute 30, costing the given amounts, then the clock at the next hour."""
    for amount in per_hour:
        clock.advance(1800)
        if amount:
            with guard.reserve("f", estimate_usd=amount) as r:
                r.commit(amount)
        clock.advance(1800)


def monthly(guard: Guard) -> dict:  # type: ignore[type-arg]
    (row,) = [c for c in guard.forecast(feature="f").ceilings if c.period == "month"]
    return row.to_dict()


def test_flat_spend_projects_linearly() -> None:
    clock = FakeClock(START)
    guard = make_guard(usd_ceiling({"feature": "f"}, month=1000.0), clock=clock)
    spend(guard, clock, [1.0] * 48)  # $1 an hour for two days
    row = monthly(guard)
    assert row["spent_usd"] == 48.0
    assert row["velocity_usd_per_hour"] == pytest.approx(1.0)
    assert row["projected_usd"] == pytest.approx(48 + 672)  # 720 h in June, 48 gone
    assert row["on_track"] is True
    assert row["depletion_at"] is None  # $1000 is not reached before July
    assert row["confidence"] == 1.0
    assert row["history_hours"] == 48


def test_flat_spend_over_the_limit_depletes_before_the_reset() -> None:
    clock = FakeClock(START)
    guard = make_guard(usd_ceiling({"feature": "f"}, month=100.0), clock=clock)
    spend(guard, clock, [2.0] * 24)
    row = monthly(guard)
    assert row["on_track"] is False
    assert row["projected_usd"] == pytest.approx(48 + 2 * 696)
    # $52 left at $2 an hour: 26 hours from now (2026-06-02T00:00 + 26 h).
    assert row["depletion_at"] == "2026-06-03T02:00:00+00:00"
    assert row["confidence"] == 1.0  # 24 hours of history


def test_a_few_hours_of_history_mean_low_confidence() -> None:
    clock = FakeClock(START)
    guard = make_guard(usd_ceiling({"feature": "f"}, month=100.0), clock=clock)
    spend(guard, clock, [2.0] * 6)
    row = monthly(guard)
    assert (row["history_hours"], row["confidence"]) == (6, 0.25)


def test_recent_hours_weigh_more() -> None:
    ramp = [float(amount) for amount in range(24, 0, -1)]  # newest first: spend rose to $24 an hour
    rate, hours = velocity([0.0, *ramp], 0)  # index 0: the current hour, just begun
    plain_mean = sum(ramp) / len(ramp)
    assert hours == 24
    assert rate > plain_mean  # the newest (largest) hours count most


def test_a_spike_moves_the_forecast_and_then_decays() -> None:
    clock = FakeClock(START)
    guard = make_guard(usd_ceiling({"feature": "f"}, month=2000.0), clock=clock)
    spend(guard, clock, [1.0] * 24)
    before = monthly(guard)
    spend(guard, clock, [100.0])  # one runaway hour
    during = monthly(guard)
    spend(guard, clock, [1.0] * 36)  # back to normal for a day and a half
    after = monthly(guard)
    assert before["on_track"] is True
    assert during["on_track"] is False
    assert during["velocity_usd_per_hour"] > 5 * before["velocity_usd_per_hour"]
    # 36 hours later the spike weighs 2^-3 as much as it did: velocity is back near normal.
    assert after["velocity_usd_per_hour"] < during["velocity_usd_per_hour"] / 4
    assert after["on_track"] is True


def test_no_history_means_no_velocity_and_zero_confidence() -> None:
    clock = FakeClock(START)
    guard = make_guard(usd_ceiling({"feature": "f"}, month=10.0, day=1.0), clock=clock)
    rows = {c.period: c for c in guard.forecast(feature="f").ceilings}
    assert set(rows) == {"day", "month"}
    assert rows["month"].velocity_usd_per_hour == 0
    assert rows["month"].confidence == 0
    assert rows["month"].projected_usd == 0
    assert rows["month"].on_track is True


def test_exhausted_ceiling_depletes_now() -> None:
    assert project(10.0, 10.0, 0.0, 1000.0, 5000.0) == (10.0, False, 1000.0)


def test_the_current_hour_counts_once_fifteen_minutes_have_passed() -> None:
    assert velocity([5.0, 0.0], 600) == (5.0 * 3600 / 600, 0)  # the only data: pro-rated anyway
    rate, _ = velocity([5.0, 2.0], 1800)  # $5 in half an hour = $10/h now, $2 the hour before
    weight = 0.5 ** (1 / HALF_LIFE_H)
    assert rate == pytest.approx((10.0 + 2.0 * weight) / (1 + weight))


def test_forecast_filters_and_customer_ceilings() -> None:
    clock = FakeClock(START)
    guard = make_guard(
        usd_ceiling({"feature": "f"}, month=1000.0), usd_ceiling({"customer": "*"}, day=5.0), clock=clock
    )
    for _ in range(3):
        clock.advance(3600)
        for customer, amount in (("acme", 1.0), ("bob", 0.1)):
            with guard.reserve("f", estimate_usd=amount, customer=customer) as r:
                r.commit(amount)
    acme = guard.forecast(customer="acme").ceilings
    assert [(c.labels, c.period) for c in acme] == [({"customer": "acme"}, "day")]
    assert acme[0].velocity_usd_per_hour == pytest.approx(1.0)
    assert acme[0].on_track is False  # $3 spent by 03:00, $1 an hour: $5 at 05:00
    assert acme[0].depletion_at is not None
    assert acme[0].depletion_at.isoformat() == "2026-06-01T05:00:00+00:00"
    assert guard.forecast(customer="bob").ceilings[0].on_track is True


def test_an_exhausted_counter_says_exhausted_not_a_time_to_come() -> None:
    clock = FakeClock("2026-05-12T10:00:00Z")
    guard = make_guard(usd_ceiling({"feature": "f"}, day=0.05), clock=clock)
    guard.reserve("f", estimate_usd=0.05).commit()
    (row,) = guard.forecast("f").ceilings
    assert row.exhausted is True and row.to_dict()["exhausted"] is True
    guard.set_limit({"feature": "f"}, period="day", usd=1.0, reason="more room")
    (row,) = guard.forecast("f").ceilings
    assert row.exhausted is False


def test_the_cli_forecast_shows_exhausted(tmp_path: Path) -> None:
    config = tmp_path / "costguard.yaml"
    config.write_text(
        f"store: sqlite:///{(tmp_path / 'spend.db').as_posix()}\nfeatures:\n  f:\n    daily_usd: 0.05\n",
        encoding="utf-8",
    )
    with Guard.from_yaml(config) as guard:
        guard.reserve("f", estimate_usd=0.05).commit()
    result = CliRunner().invoke(main, ["forecast", "--config", str(config)], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "exhausted" in result.output
