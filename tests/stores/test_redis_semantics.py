"""The Redis scripts against MemoryStore, the reference: random runs must agree on every outcome."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_contract import UTC, ceiling, usd

from costguard import engine
from costguard.engine import CommitOutcome, Crossing, ReserveOutcome, ReservePlan
from costguard.events import AuditQuery, AuditRecord
from costguard.model import Limit, Period, Unit
from costguard.periods import bucket_for
from costguard.stores import MemoryStore, Store

START = 1_780_000_000.0  # 2026-05-28T20:26:40Z: a day and a month boundary are a few steps away
CEILINGS = (
    ceiling({"feature": "f"}, usd(Period.DAY, 0.10), usd(Period.MONTH, 0.30), Limit(Period.DAY, Unit.CALLS, 25)),
    ceiling({"customer": "*"}, usd(Period.DAY, 0.05), usd(Period.HOUR, 0.04)),
    ceiling({"run": "*"}, usd(Period.TOTAL, 0.08), enforcement="soft"),
    ceiling({"team": "*"}, usd(Period.TOTAL, 0.06), expire=2 * 86_400),
)
# Run-time limit overrides the steps switch between: none, raised, lowered, zero.
OVERRIDES: tuple[dict[str, dict[tuple[Period, Unit], int]], ...] = (
    {},
    {"feature=f": {(Period.DAY, Unit.USD): 200_000}},
    {"feature=f": {(Period.DAY, Unit.USD): 30_000}},
    {"customer=*": {(Period.DAY, Unit.USD): 120_000}},
    {"feature=f": {(Period.DAY, Unit.USD): 120_000}},
    {"customer=*": {(Period.HOUR, Unit.USD): 0}},
    {"run=*": {(Period.TOTAL, Unit.USD): 0}},
)
NONE, RAISED, LOWERED, CUSTOMER_RAISED, SLIGHTLY_RAISED, ZERO, SOFT_ZERO = range(len(OVERRIDES))

reserve_step = st.tuples(
    st.just("reserve"),
    st.sampled_from(["a", "b:{x}\n", "a+run", "a+team", "b:{x}\n+run+team"]),  # customer and labels
    st.sampled_from([0, 0, 10_000, 10_000, 20_000, 50_000, 60_000]),  # estimate: exact fills are common
    st.sampled_from([NONE, NONE, NONE, RAISED, LOWERED, CUSTOMER_RAISED, SLIGHTLY_RAISED, ZERO, SOFT_ZERO]),
    st.sampled_from(["", "", "", "force", "force-twice"]),
)
settle_step = st.tuples(
    st.just("settle"),
    st.integers(0, 50),  # which reservation (modulo those made)
    st.sampled_from([None, 0, 8_000, 30_000]),  # None: release
    st.booleans(),  # repeat it
)
time_step = st.tuples(st.just("advance"), st.sampled_from([600.0, 3_600.0, 4 * 3_600.0, 86_400.0]))
purge_step = st.tuples(st.just("purge"))
STEPS = st.lists(st.one_of(reserve_step, reserve_step, settle_step, settle_step, time_step, purge_step), max_size=40)


def crossing_view(crossings: tuple[Crossing, ...]) -> list[tuple[object, ...]]:
    return [(c.threshold, c.counter.key, c.total, c.cleared, c.reason) for c in crossings]


def reserve_view(outcome: ReserveOutcome) -> tuple[object, ...]:
    return (outcome.allowed, outcome.totals, outcome.blocked, crossing_view(outcome.crossings))


def settle_view(outcome: CommitOutcome) -> tuple[object, ...]:
    return (outcome.applied, [op.key for op in outcome.counters], outcome.totals, crossing_view(outcome.crossings))


@dataclass
class Run:
    """The same steps on both stores, compared as they go."""

    stores: tuple[Store, Store]
    now: float = START
    plans: list[ReservePlan] = field(default_factory=list)
    keys: set[str] = field(default_factory=set)

    def reserve(self, who: str, estimate: int, overrides: int, force: str) -> None:
        """`who`: the customer, with `+run` / `+team` for those labels (and their ceilings)."""
        customer, *extra = who.split("+")
        labels = {"feature": "f", "customer": customer, **dict.fromkeys(extra, "x")}
        p = engine.plan_reservation(
            reservation_id=uuid.uuid4().hex,
            ceilings=CEILINGS,
            overrides=OVERRIDES[overrides],
            labels=labels,
            amounts={Unit.USD: estimate, Unit.CALLS: 1, Unit.TOKENS: 0},
            now=self.now,
            tz=UTC,
            thresholds=(0.5, 0.8, 1.0),
            force=bool(force),
        )
        self.plans.append(p)
        self.keys.update(op.key for op in p.counters)
        record = AuditRecord(self.now, "reserve", dict(p.labels), p.reservation_id, {"estimate_usd": estimate / 1e6})
        for _ in range(2 if force == "force-twice" else 1):
            memory, redis = (store.reserve(p, record) for store in self.stores)
            assert reserve_view(redis) == reserve_view(memory)

    def settle(self, which: int, actual: int | None, repeat: bool) -> None:
        if not self.plans:
            return
        p = self.plans[which % len(self.plans)]
        amounts = None if actual is None else {Unit.USD: actual, Unit.CALLS: 1}
        record = AuditRecord(self.now, "release" if actual is None else "commit", dict(p.labels), p.reservation_id)
        for _ in range(2 if repeat else 1):
            memory, redis = (store.settle(p.reservation_id, amounts, self.now, record) for store in self.stores)
            assert settle_view(redis) == settle_view(memory)

    def purge(self) -> None:
        for store in self.stores:
            store.purge(self.now)

    def check_state(self) -> None:
        memory, redis = self.stores
        keys = sorted(self.keys)
        assert redis.totals(keys) == memory.totals(keys)
        buckets = {period: bucket_for(period, self.now, UTC).id for period in Period}
        assert sorted(redis.list_counters(buckets), key=repr) == sorted(memory.list_counters(buckets), key=repr)
        assert redis.audit(AuditQuery(limit=10_000)) == memory.audit(AuditQuery(limit=10_000))


def run_steps(redis: Store, steps: list[tuple[object, ...]]) -> None:
    run = Run((MemoryStore(), redis))
    try:
        for step in steps:
            kind, *args = step
            if kind == "advance":
                run.now += float(args[0])  # type: ignore[arg-type]
            else:
                getattr(run, str(kind))(*args)
        run.check_state()
    finally:
        redis.close()


@pytest.fixture(params=["fakeredis", pytest.param("redis", marks=pytest.mark.redis)])
def new_redis(request: pytest.FixtureRequest, redis_urls: Any) -> Callable[[], Store]:
    """Opens a store in a fresh namespace of fakeredis, then of the real Redis, each call."""
    return lambda: redis_urls.open(redis_urls.new(request.param))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=STEPS)
def test_redis_agrees_with_memory(new_redis: Callable[[], Store], steps: list[tuple[object, ...]]) -> None:
    run_steps(new_redis(), steps)


def _fill(customer: str, amount: int, times: int) -> list[tuple[object, ...]]:
    return [("reserve", customer, amount, NONE, "")] * times


def _each(customers: str, amount: int) -> list[tuple[object, ...]]:
    return [("reserve", customer, amount, NONE, "") for customer in customers]


SCENARIOS = {
    # A full counter admits nothing, not even a zero estimate.
    "zero estimate at a full counter": [*_each("abcdefghij", 10_000), ("reserve", "k", 0, NONE, "")],
    # A zero limit blocks at once and claims the kill; thresholds below it are not reached by 0, and a
    # soft zero limit admits a zero estimate without claiming anything.
    "zero limits": [
        ("reserve", "a+run", 0, ZERO, ""),
        ("reserve", "a", 10_000, ZERO, ""),
        ("reserve", "b+run", 0, SOFT_ZERO, ""),
        ("reserve", "b+run", 10_000, SOFT_ZERO, ""),
    ],
    # Raised above the spend, then blocked by a big call: the kill stays claimed, nothing is cleared;
    # a call landing exactly on the raised limit doesn't re-arm it either; raised further, it clears.
    "raised, then blocked": [
        *_each("abcdefghij", 10_000),
        ("reserve", "k", 10_000, NONE, ""),
        ("reserve", "k", 30_000, SLIGHTLY_RAISED, ""),
        ("reserve", "k", 20_000, SLIGHTLY_RAISED, ""),
        ("reserve", "k", 10_000, SLIGHTLY_RAISED, ""),
        ("reserve", "l", 10_000, RAISED, ""),
        ("reserve", "l", 10_000, RAISED, ""),
    ],
    # Lowered below the spend: blocked, the kill claimed anew at the lower limit, then raised again.
    "lowered and raised": [
        *_each("abcd", 10_000),
        ("reserve", "e", 10_000, LOWERED, ""),
        ("reserve", "e", 10_000, LOWERED, ""),
        ("reserve", "e", 10_000, RAISED, ""),
        ("reserve", "f", 50_000, RAISED, ""),
    ],
    # A kill in the last hour of a day is cleared by the first call of the next day, once.
    "new period": [
        ("advance", 3 * 3_600.0),
        *_each("abcdefghij", 10_000),
        ("reserve", "k", 10_000, NONE, ""),
        ("advance", 3_600.0),
        ("reserve", "k", 10_000, NONE, ""),
        ("reserve", "l", 10_000, NONE, ""),
    ],
    # A commit late in the period crosses the kill in the old bucket after the new one exists.
    "late commit into the old period": [
        ("advance", 3 * 3_600.0),
        *_each("abcdefgh", 10_000),
        ("reserve", "i", 10_000, NONE, ""),
        ("advance", 3_600.0),
        ("reserve", "j", 10_000, NONE, ""),
        ("settle", 8, 30_000, False),
        ("reserve", "j", 10_000, NONE, ""),
        ("advance", 86_400.0),
        ("reserve", "j", 10_000, NONE, ""),
    ],
    # Settled, purged, settled again; a counter purged under an open reservation starts again.
    "purge under open reservations": [
        ("reserve", "a", 10_000, NONE, ""),
        ("reserve", "a", 10_000, NONE, ""),
        ("settle", 0, 5_000, False),
        ("advance", 4 * 86_400.0),
        ("purge",),
        ("settle", 0, 5_000, False),
        ("settle", 1, 20_000, False),
        ("reserve", "a", 10_000, NONE, "force-twice"),
    ],
}


@pytest.mark.parametrize("steps", list(SCENARIOS.values()), ids=list(SCENARIOS))
def test_edge_cases_agree_with_memory(new_redis: Callable[[], Store], steps: list[tuple[object, ...]]) -> None:
    run_steps(new_redis(), steps)


def test_a_long_run_across_days_agrees_with_memory(new_redis: Callable[[], Store]) -> None:
    """Fill, block, raise and lower limits, cross a day and a month, purge: the same answers throughout."""
    steps: list[tuple[object, ...]] = []
    for day in range(4):
        for i in range(14):
            steps.append(("reserve", "ab"[i % 2], [10_000, 25_000, 60_000][i % 3], (i + day) % len(OVERRIDES), ""))
            if i % 3 == 0:
                steps.append(("settle", i + day * 14, [None, 30_000, 8_000][i % 3], i % 2 == 0))
            if i % 5 == 4:
                steps.append(("reserve", "a", 10_000, 0, "force-twice"))
        steps += [("advance", 86_400.0 / 3)] * 3 + [("purge",)]
    run_steps(new_redis(), steps)
