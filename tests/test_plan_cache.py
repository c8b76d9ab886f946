"""The plan cache gives exactly what planning from scratch gives, across every kind of rollover."""

from __future__ import annotations

from zoneinfo import ZoneInfo

import pytest

from costguard import engine
from costguard.model import Ceiling, Limit, Period, Unit, make_match

TZ = ZoneInfo("Europe/Berlin")
CEILINGS = (
    Ceiling(make_match({"feature": "f"}), (Limit(Period.MONTH, Unit.USD, 10**9), Limit(Period.HOUR, Unit.CALLS, 50))),
    Ceiling(make_match({"feature": "f", "customer": "*"}), (Limit(Period.DAY, Unit.USD, 10**7),)),
    Ceiling(make_match({"run": "*"}), (Limit(Period.TOTAL, Unit.USD, 5 * 10**6),), expire_after_s=7 * 86400),
)
START = 1_793_484_000.0  # 2026-10-31T21:20Z: the month, the day (23:00 in Berlin after DST) and hours roll


def fresh(labels: dict[str, str], amounts: dict[Unit, int], now: float, ceilings=CEILINGS) -> engine.ReservePlan:  # type: ignore[no-untyped-def]
    return engine.plan_reservation(
        reservation_id="x",
        ceilings=ceilings,
        overrides={},
        labels=labels,
        amounts=amounts,
        now=now,
        tz=TZ,
        thresholds=(0.8, 1.0),
    )


def cached(cache: engine.PlanCache, labels: dict[str, str], amounts: dict[Unit, int], now: float) -> engine.ReservePlan:
    return cache.plan(
        reservation_id="x",
        ceilings=CEILINGS,
        overrides={},
        labels=labels,
        amounts=amounts,
        now=now,
        tz=TZ,
        thresholds=(0.8, 1.0),
    )


@pytest.mark.parametrize("step", [61.0, 599.0, 3599.0])
def test_cached_plans_equal_fresh_ones_over_two_days(step: float) -> None:
    cache = engine.PlanCache()
    labels = {"feature": "f", "customer": "acme", "run": "r-1"}
    now = START
    for index in range(int(2 * 86400 / step)):
        amounts = {Unit.USD: 1000 + index, Unit.CALLS: 1, Unit.TOKENS: 0}
        assert cached(cache, labels, amounts, now) == fresh(labels, amounts, now), now
        now += step


def test_counters_reused_per_amount_carry_each_calls_own_amounts() -> None:
    # No `run` label: no sliding expiry, so the counters built for an amount are reused for it; more
    # distinct amounts than the entry keeps, repeated out of order, must each still come back exact.
    cache = engine.PlanCache()
    labels = {"feature": "f", "customer": "acme"}
    for index in range(200):
        now = START + index * 7.0
        amounts = {Unit.USD: 1000 + (index * 7) % 23, Unit.CALLS: 1, Unit.TOKENS: index % 3}
        assert cached(cache, labels, amounts, now) == fresh(labels, amounts, now), (index, amounts)


def test_a_new_control_view_replans() -> None:
    cache = engine.PlanCache()
    labels = {"feature": "f"}
    amounts = {Unit.USD: 5, Unit.CALLS: 1}
    first = cache.plan(
        reservation_id="a",
        ceilings=CEILINGS,
        overrides={},
        labels=labels,
        amounts=amounts,
        now=START,
        tz=TZ,
        thresholds=(0.8,),
    )
    raised = (Ceiling(make_match({"feature": "f"}), (Limit(Period.MONTH, Unit.USD, 2 * 10**9),)),)
    second = cache.plan(
        reservation_id="b",
        ceilings=raised,
        overrides={},
        labels=labels,
        amounts=amounts,
        now=START,
        tz=TZ,
        thresholds=(0.8,),
    )
    assert {op.limit for op in first.counters if op.period is Period.MONTH} == {10**9}
    assert {op.limit for op in second.counters if op.period is Period.MONTH} == {2 * 10**9}
    assert second.reservation_id == "b"


def test_the_clock_going_back_replans() -> None:
    cache = engine.PlanCache()
    labels = {"feature": "f", "customer": "acme"}
    amounts = {Unit.USD: 5, Unit.CALLS: 1}
    for now in (START + 86400, START):
        assert cached(cache, labels, amounts, now) == fresh(labels, amounts, now)
