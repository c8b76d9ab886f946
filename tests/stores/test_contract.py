"""The store contract: every backend passes the same suite (memory, SQLite, PostgreSQL)."""

from __future__ import annotations

import multiprocessing
import threading
import uuid
from collections.abc import Sequence
from dataclasses import replace
from zoneinfo import ZoneInfo

import pytest
import race_worker

from conftest import open_test_store
from costguard import engine
from costguard.engine import LimitOverride, ReservePlan
from costguard.events import AuditQuery, AuditRecord
from costguard.model import Ceiling, Limit, Period, Unit, make_match
from costguard.stores import KillSwitchState, MemoryStore, Store, open_store
from costguard.stores.redis import RedisStore
from costguard.stores.sql import SQLStore

NOW = 1_780_000_000.0  # 2026-05-28T20:26:40Z
UTC = ZoneInfo("UTC")


def ceiling(match: dict[str, str], *limits: Limit, enforcement: str = "hard", expire: float | None = None) -> Ceiling:
    return Ceiling(make_match(match), tuple(limits), enforcement=enforcement, expire_after_s=expire)  # type: ignore[arg-type]


def usd(period: Period, dollars: float) -> Limit:
    return Limit(period, Unit.USD, round(dollars * 1_000_000))


FEATURE = ceiling({"feature": "f"}, usd(Period.MONTH, 1.0), usd(Period.DAY, 0.5))
CUSTOMER = ceiling({"customer": "*"}, usd(Period.MONTH, 0.3))


def plan(
    ceilings: Sequence[Ceiling],
    *,
    estimate: int = 10_000,
    now: float = NOW,
    force: bool = False,
    thresholds: Sequence[float] = (0.8, 1.0),
    history: bool = False,
    **labels: str,
) -> ReservePlan:
    return engine.plan_reservation(
        reservation_id=uuid.uuid4().hex,
        ceilings=ceilings,
        overrides={},
        labels={"feature": "f", **labels},
        amounts={Unit.USD: estimate, Unit.CALLS: 1, Unit.TOKENS: 0},
        now=now,
        tz=UTC,
        thresholds=thresholds,
        force=force,
        history=history,
    )


def test_reserve_increments_every_counter(store: Store) -> None:
    p = plan([FEATURE, CUSTOMER], customer="acme")
    outcome = store.reserve(p, None)
    assert outcome.allowed
    assert len(p.counters) == 3
    assert store.totals([op.key for op in p.counters]) == [10_000, 10_000, 10_000]


def test_a_remote_store_notes_when_it_answered(store: Store) -> None:
    """`answered_at` is what tells an overloaded store (it answers others) from an unreachable one."""
    import time

    before = time.monotonic()
    p = plan([FEATURE])
    store.reserve(p, None)
    store.settle(p.reservation_id, {Unit.USD: 5_000}, NOW, None)
    store.totals([p.counters[0].key])
    if store.remote:
        assert store.answered_since(before) and store.answered_at <= time.monotonic()
        probed = time.monotonic()
        assert store.ping(1.0) is (not isinstance(store, RedisStore) or store._probe is not None)
        assert store.answered_since(probed) or (isinstance(store, RedisStore) and store._probe is None)
    else:  # in-process: it never times out, so it never needs the evidence
        assert not store.answered_since(before)


def test_history_counters_ride_along_and_never_block(store: Store) -> None:
    cap = ceiling({"feature": "f"}, usd(Period.DAY, 0.05))
    first = plan([cap], estimate=30_000, history=True)
    (history,) = [op for op in first.counters if op.key.startswith(engine.HISTORY_PREFIX)]
    assert store.reserve(first, None).allowed
    assert not store.reserve(plan([cap], estimate=30_000, history=True), None).allowed  # the cap blocks
    store.settle(first.reservation_id, {Unit.USD: 20_000}, NOW, None)
    assert store.totals([history.key]) == [20_000]  # only what was committed, none of the denial
    later = plan([cap], estimate=10_000, now=NOW + 3600, history=True)
    assert store.reserve(later, None).allowed
    (next_hour,) = [op for op in later.counters if op.key.startswith(engine.HISTORY_PREFIX)]
    assert next_hour.key != history.key
    assert store.totals([history.key, next_hour.key]) == [20_000, 10_000]


def test_all_or_nothing_when_one_ceiling_is_full(store: Store) -> None:
    # The customer ceiling ($0.30) fills first; the feature ceilings must not move on the denial.
    allowed = 0
    while store.reserve(plan([FEATURE, CUSTOMER], estimate=100_000, customer="acme"), None).allowed:
        allowed += 1
    assert allowed == 3
    denied = plan([FEATURE, CUSTOMER], estimate=100_000, customer="acme")
    outcome = store.reserve(denied, None)
    assert not outcome.allowed
    blocking = denied.counters[outcome.blocked or 0]
    assert dict(blocking.scope) == {"customer": "acme"}
    assert sorted(store.totals([op.key for op in denied.counters])) == [300_000, 300_000, 300_000]
    # Another customer still fits: counters are per customer.
    assert store.reserve(plan([FEATURE, CUSTOMER], estimate=100_000, customer="bob"), None).allowed


def test_commit_adjusts_by_actual_and_is_idempotent(store: Store) -> None:
    p = plan([FEATURE], estimate=20_000)
    store.reserve(p, None)
    first = store.settle(p.reservation_id, {Unit.USD: 13_000, Unit.CALLS: 1}, NOW, None)
    again = store.settle(p.reservation_id, {Unit.USD: 13_000, Unit.CALLS: 1}, NOW, None)
    assert first.applied
    assert not again.applied
    assert store.totals([op.key for op in p.counters]) == [13_000, 13_000]


def test_release_gives_the_estimate_back_once(store: Store) -> None:
    p = plan([FEATURE], estimate=20_000)
    store.reserve(p, None)
    assert store.settle(p.reservation_id, None, NOW, None).applied
    assert not store.settle(p.reservation_id, None, NOW, None).applied
    assert not store.settle(p.reservation_id, {Unit.USD: 5}, NOW, None).applied
    assert store.totals([op.key for op in p.counters]) == [0, 0]


def test_settle_many_equals_settling_one_by_one(store: Store) -> None:
    """A batch (as `commit: background` sends it) gives the outcomes, totals, crossings and audit lines
    of the same settles made in order — duplicates and unknown ids included."""
    reference = MemoryStore()
    cap = ceiling({"feature": "f"}, usd(Period.DAY, 0.1))
    plans = [plan([cap, CUSTOMER], estimate=20_000, history=True, customer=f"c{i % 2}") for i in range(4)]
    for p in plans:
        assert store.reserve(p, None).allowed
        assert reference.reserve(p, None).allowed
    actuals: list[dict[Unit, int] | None] = [{Unit.USD: 45_000}, None, {Unit.USD: 40_000}, {Unit.USD: 1}]
    items = [
        (p.reservation_id, actual, NOW + i, AuditRecord(NOW + i, "commit", {"feature": "f"}, p.reservation_id))
        for i, (p, actual) in enumerate(zip(plans, actuals, strict=True))
    ]
    items.insert(2, items[0])  # settled twice in one batch: once
    items.append(("unknown", {Unit.USD: 5}, NOW, None))
    got = store.settle_many(items)
    want = [reference.settle(*item) for item in items]
    assert [o.applied for o in got] == [True, True, False, True, True, False]
    for mine, theirs in zip(got, want, strict=True):
        assert not isinstance(mine, Exception)
        assert (mine.applied, mine.totals) == (theirs.applied, theirs.totals)
        assert [(c.threshold, c.counter.key, c.total) for c in mine.crossings] == [
            (c.threshold, c.counter.key, c.total) for c in theirs.crossings
        ]
    keys = sorted({op.key for p in plans for op in p.counters})
    assert store.totals(keys) == reference.totals(keys)
    assert [r.at for r in store.audit(AuditQuery(decision="commit"))] == [NOW + 3, NOW + 2, NOW + 1, NOW]
    assert store.settle_many([items[1]])[0].applied is False  # a retried batch changes nothing


def test_unknown_reservation_is_a_no_op(store: Store) -> None:
    assert not store.settle("no-such-id", {Unit.USD: 1}, NOW, None).applied


def test_a_reserve_asked_again_returns_the_first_outcome(store: Store) -> None:
    """A reply that timed out has an unknown outcome: the guard asks again with the same id, and the
    store must neither reserve twice nor refuse what it already granted."""
    cap = ceiling({"feature": "f"}, usd(Period.DAY, 0.05))
    p = plan([cap, CUSTOMER], estimate=30_000, customer="acme")
    first = store.reserve(p, AuditRecord(NOW, "reserve", {"feature": "f"}, p.reservation_id))
    again = store.reserve(p, AuditRecord(NOW, "reserve", {"feature": "f"}, p.reservation_id))
    assert first.allowed
    assert again.allowed  # 30 000 more would not fit the $0.05 cap: it was not evaluated again
    assert again.totals == first.totals == (30_000, 30_000)
    assert store.totals([op.key for op in p.counters]) == [30_000, 30_000]
    assert len(store.audit(AuditQuery(decision="reserve"))) == 1  # nor audited twice
    store.settle(p.reservation_id, {Unit.USD: 10_000, Unit.CALLS: 1}, NOW, None)
    assert store.reserve(p, None).allowed  # still the first outcome after the commit
    assert store.totals([op.key for op in p.counters]) == [10_000, 10_000]


def test_a_release_before_its_reserve_arrives_leaves_nothing_counted(store: Store) -> None:
    """A guard that gave up on a reserve (deadline passed, outcome unknown) releases it by id; the
    reserve arriving afterwards must not count."""
    p = plan([FEATURE], estimate=20_000)
    assert not store.settle(p.reservation_id, None, NOW, None).applied
    store.reserve(p, None)
    store.reserve(engine.force(p), None)
    assert store.totals([op.key for op in p.counters]) == [0, 0]
    assert not store.settle(p.reservation_id, {Unit.USD: 20_000}, NOW, None).applied


def test_denied_reservation_cannot_be_committed(store: Store) -> None:
    tiny = ceiling({"feature": "f"}, usd(Period.DAY, 0.01))
    p = plan([tiny], estimate=20_000)
    assert not store.reserve(p, None).allowed
    assert not store.settle(p.reservation_id, {Unit.USD: 20_000}, NOW, None).applied
    assert store.totals([p.counters[0].key]) == [0]


def test_soft_ceilings_never_block(store: Store) -> None:
    soft = ceiling({"feature": "f"}, usd(Period.DAY, 0.01), enforcement="soft")
    for _ in range(5):
        assert store.reserve(plan([soft], estimate=10_000), None).allowed
    assert store.totals([plan([soft]).counters[0].key]) == [50_000]


def test_full_counter_blocks_even_a_zero_estimate(store: Store) -> None:
    cap = ceiling({"feature": "f"}, usd(Period.DAY, 0.02))
    assert store.reserve(plan([cap], estimate=20_000), None).allowed
    assert not store.reserve(plan([cap], estimate=0), None).allowed


def test_thresholds_fire_once_per_counter_and_period(store: Store) -> None:
    cap = ceiling({"feature": "f"}, usd(Period.DAY, 0.10))
    fired: list[float] = []
    for _ in range(12):
        outcome = store.reserve(plan([cap], estimate=10_000), None)
        fired.extend(c.threshold for c in outcome.crossings)
    assert fired == [0.8, 1.0]
    # The next day is a new period: its first call clears the kill once, and thresholds re-arm.
    next_day = store.reserve(plan([cap], estimate=90_000, now=NOW + 86_400), None)
    assert [(c.threshold, c.cleared) for c in next_day.crossings] == [(1.0, True), (0.8, False)]
    assert next_day.crossings[0].total == 100_000  # the spend the old period ended on
    later = store.reserve(plan([cap], estimate=1, now=NOW + 86_400), None)
    assert later.crossings == ()


def test_a_new_period_without_a_kill_clears_nothing(store: Store) -> None:
    cap = ceiling({"feature": "f"}, usd(Period.DAY, 1.0))
    store.reserve(plan([cap], estimate=850_000), None)  # warn only
    assert store.reserve(plan([cap], estimate=1, now=NOW + 86_400), None).crossings == ()


def test_raising_the_limit_rearms_thresholds_now_below_it(store: Store) -> None:
    small = ceiling({"feature": "f"}, usd(Period.DAY, 0.10))
    for _ in range(11):
        store.reserve(plan([small], estimate=10_000), None)  # 0.8 and 1.0 claimed, then blocked
    raised = ceiling({"feature": "f"}, usd(Period.DAY, 0.20))  # same ceiling, higher limit
    outcome = store.reserve(plan([raised], estimate=10_000), None)
    assert outcome.allowed
    # The kill is over (cleared once); 0.8 is re-armed silently and fires again at $0.16.
    assert [(c.threshold, c.cleared) for c in outcome.crossings] == [(1.0, True)]
    fired = []
    for _ in range(12):
        fired.extend((c.threshold, c.cleared) for c in store.reserve(plan([raised], estimate=10_000), None).crossings)
    assert fired == [(0.8, False), (1.0, False)]


def test_raising_the_limit_still_below_spend_rearms_nothing(store: Store) -> None:
    small = ceiling({"feature": "f"}, usd(Period.DAY, 0.10))
    for _ in range(11):
        store.reserve(plan([small], estimate=10_000), None)
    # 0.8 of $0.12 = $0.096 ≤ $0.10 spent: 0.8 stays claimed; 1.0 (level $0.12) is re-armed and clears.
    slightly = ceiling({"feature": "f"}, usd(Period.DAY, 0.12))
    outcome = store.reserve(plan([slightly], estimate=10_000), None)
    assert [(c.threshold, c.cleared) for c in outcome.crossings] == [(1.0, True)]
    # Lowered below the spend again: the next call is blocked and claims the kill anew, once.
    lower = ceiling({"feature": "f"}, usd(Period.DAY, 0.05))
    blocked = store.reserve(plan([lower], estimate=10_000), None)
    assert not blocked.allowed
    assert [(c.threshold, c.cleared) for c in blocked.crossings] == [(1.0, False)]
    assert store.reserve(plan([lower], estimate=10_000), None).crossings == ()


def test_one_call_can_cross_warn_and_kill_together(store: Store) -> None:
    cap = ceiling({"feature": "f"}, usd(Period.DAY, 1.0))
    store.reserve(plan([cap], estimate=700_000), None)
    p = plan([cap], estimate=50_000)  # 75 %: nothing crossed yet
    assert store.reserve(p, None).crossings == ()
    settled = store.settle(p.reservation_id, {Unit.USD: 350_000}, NOW, None)
    assert sorted(c.threshold for c in settled.crossings) == [0.8, 1.0]
    assert settled.totals == (1_050_000,)


def test_first_block_claims_the_kill_threshold(store: Store) -> None:
    cap = ceiling({"feature": "f"}, usd(Period.DAY, 0.05))
    outcome = store.reserve(plan([cap], estimate=60_000), None)
    assert not outcome.allowed
    assert [c.threshold for c in outcome.crossings] == [1.0]
    assert store.reserve(plan([cap], estimate=60_000), None).crossings == ()


def test_forced_record_is_counted_once(store: Store) -> None:
    cap = ceiling({"feature": "f"}, usd(Period.DAY, 0.01))
    p = plan([cap], estimate=50_000, force=True)
    assert store.reserve(p, None).allowed  # recorded past the limit: it already happened
    assert store.reserve(p, None).allowed  # a retried buffered write is not counted twice
    store.settle(p.reservation_id, {Unit.USD: 40_000}, NOW, None)
    assert store.totals([p.counters[0].key]) == [40_000]


def test_total_period_counter_never_resets(store: Store) -> None:
    run = ceiling({"run": "*"}, usd(Period.TOTAL, 0.02), expire=7 * 86_400)
    assert store.reserve(plan([run], estimate=20_000, run="r1"), None).allowed
    assert not store.reserve(plan([run], estimate=1, run="r1", now=NOW + 40 * 86_400), None).allowed
    assert store.reserve(plan([run], estimate=20_000, run="r2"), None).allowed


def test_purge_drops_expired_counters(store: Store) -> None:
    run = ceiling({"run": "*"}, usd(Period.TOTAL, 0.02), expire=3600)
    p = plan([run], estimate=20_000, run="r1")
    store.reserve(p, None)
    store.settle(p.reservation_id, {Unit.USD: 20_000}, NOW, None)
    assert store.purge(NOW + 60) == 0 or store.totals([p.counters[0].key]) == [20_000]
    store.purge(NOW + 7200)
    assert store.totals([p.counters[0].key]) == [0]


def test_special_label_values_never_share_a_counter(store: Store) -> None:
    pair = ceiling({"a": "*", "b": "*"}, usd(Period.DAY, 0.02))
    first = plan([pair], estimate=20_000, a="x:y", b="z")
    second = plan([pair], estimate=20_000, a="x", b="y:z")
    weird = plan([pair], estimate=20_000, a="{\n}|*", b="é" * 10_000)
    for p in (first, second, weird):
        assert store.reserve(p, None).allowed
    keys = {p.counters[0].key for p in (first, second, weird)}
    assert len(keys) == 3
    assert store.totals(sorted(keys)) == [20_000, 20_000, 20_000]


def test_list_counters_reports_current_buckets(store: Store) -> None:
    p = plan([FEATURE, CUSTOMER], estimate=10_000, customer="acme")
    store.reserve(p, None)
    buckets = {op.period: op.bucket for op in p.counters}
    rows = store.list_counters(buckets)
    assert {(r.ceiling_id, r.scope, r.period) for r in rows} == {
        (op.ceiling_id, op.scope, op.period) for op in p.counters
    }
    assert all(r.reserved == 10_000 and r.committed == 0 for r in rows)
    assert store.list_counters({Period.DAY: "1999-01-01"}) == []


def lease(p: ReservePlan) -> ReservePlan:
    """`p` as a slice's reservation (its id marks it: `engine.leases.LEASE_PREFIX`)."""
    return replace(p, reservation_id=engine.leases.LEASE_PREFIX + p.reservation_id)


def leased(store: Store, p: ReservePlan) -> dict[str, tuple[int, int, int]]:
    """(reserved, leased, holders) of each of `p`'s counters, as status reads them."""
    rows = store.list_counters({op.period: op.bucket for op in p.counters})
    wanted = {op.key for op in p.counters}
    return {r.key: (r.reserved, r.leased, r.holders) for r in rows if r.key in wanted}


def test_a_slice_counts_as_leased_until_it_is_settled(store: Store) -> None:
    """A slice's reserve raises every counter's `leased` (by the slice) and `holders` (by one) in the same
    atomic step; its settle lowers them back whatever its calls spent. `reserved` keeps counting it."""
    first, second = lease(plan([FEATURE], estimate=40_000)), lease(plan([FEATURE], estimate=25_000))
    one = store.reserve(first, None)
    assert one.allowed
    assert one.holders == (1, 1)
    assert leased(store, first) == dict.fromkeys((op.key for op in first.counters), (40_000, 40_000, 1))
    assert store.reserve(second, None).holders == (2, 2)
    ordinary = plan([FEATURE], estimate=10_000)
    assert store.reserve(ordinary, None).holders == ()  # an ordinary reserve never reads them
    assert leased(store, first) == dict.fromkeys((op.key for op in first.counters), (75_000, 65_000, 2))
    assert store.totals([op.key for op in first.counters]) == [75_000, 75_000]  # enforcement: leased included
    assert store.settle(first.reservation_id, {Unit.USD: 12_000}, NOW, None).applied  # spent part of it
    assert leased(store, first) == dict.fromkeys((op.key for op in first.counters), (35_000, 25_000, 1))
    assert not store.settle(first.reservation_id, {Unit.USD: 12_000}, NOW, None).applied  # once
    store.settle_many([(second.reservation_id, None, NOW, None), (ordinary.reservation_id, {Unit.USD: 1}, NOW, None)])
    assert leased(store, first) == dict.fromkeys((op.key for op in first.counters), (0, 0, 0))
    assert store.totals([op.key for op in first.counters]) == [12_001, 12_001]


def test_a_settled_slice_committed_again_at_its_mark_changes_nothing(store: Store) -> None:
    """A holder settled its slice and died before its spool mark was marked done: the process that adopts
    the spool commits the slice at the mark (in a batch), and that second commit is a no-op."""
    held = lease(plan([FEATURE], estimate=40_000))
    assert store.reserve(held, None).allowed
    assert store.settle(held.reservation_id, {Unit.USD: 12_000, Unit.CALLS: 2}, NOW, None).applied
    mark = {Unit.USD: 25_000, Unit.CALLS: 3, Unit.TOKENS: 0}
    (again,) = store.settle_many([(held.reservation_id, mark, NOW, None)])
    assert isinstance(again, engine.CommitOutcome) and not again.applied
    assert leased(store, held) == dict.fromkeys((op.key for op in held.counters), (0, 0, 0))
    assert store.totals([op.key for op in held.counters]) == [12_000, 12_000]


def test_ordinary_reservations_never_touch_leased(store: Store) -> None:
    p = plan([FEATURE, CUSTOMER], estimate=30_000, customer="acme")
    store.reserve(p, None)
    assert set(leased(store, p).values()) == {(30_000, 0, 0)}
    store.settle(p.reservation_id, None, NOW, None)
    assert set(leased(store, p).values()) == {(0, 0, 0)}


def test_a_refused_slice_leases_nothing(store: Store) -> None:
    cap = ceiling({"feature": "f"}, usd(Period.DAY, 0.05))
    held = lease(plan([cap], estimate=30_000))
    assert store.reserve(held, None).allowed
    refused = lease(plan([cap], estimate=30_000))
    assert not store.reserve(refused, None).allowed
    assert list(leased(store, held).values()) == [(30_000, 30_000, 1)]
    assert not store.settle(refused.reservation_id, None, NOW, None).applied
    assert list(leased(store, held).values()) == [(30_000, 30_000, 1)]


def test_an_abandoned_slice_goes_with_its_counter(store: Store) -> None:
    """A slice whose holder died stays leased (and reserved) until its counter expires; the next period
    starts with nothing leased, and the slice settled late never drives a count below 0."""
    day = ceiling({"feature": "f"}, usd(Period.DAY, 1.0))
    old = lease(plan([day], estimate=50_000))
    assert store.reserve(old, None).allowed
    assert list(leased(store, old).values()) == [(50_000, 50_000, 1)]
    store.purge(NOW + 3 * 86_400)  # its day is long over: the counter is dropped
    assert leased(store, old) == {}
    new = lease(plan([day], estimate=20_000, now=NOW + 3 * 86_400))
    assert store.reserve(new, None).holders == (1,)
    store.settle(old.reservation_id, {Unit.USD: 10_000}, NOW + 3 * 86_400, None)  # its holder's spool, late
    assert all(late[1:] == (0, 0) for late in leased(store, old).values())  # recreated by the settle, or gone
    assert list(leased(store, new).values()) == [(20_000, 20_000, 1)]


def test_killswitch_and_overrides_round_trip(store: Store) -> None:
    switch = KillSwitchState((("feature", "f"),), "incident #1", "ops", NOW)
    record = AuditRecord(NOW, "killswitch_activated", {"feature": "f"})
    assert store.set_killswitch(switch, True, record)
    assert not store.set_killswitch(switch, True, record)
    override = LimitOverride((("feature", "f"),), Period.MONTH, Unit.USD, 750_000_000, "launch", "ops", NOW)
    store.set_override(override, False, AuditRecord(NOW, "limit_changed", {"feature": "f"}))
    control = store.control()
    assert control.killswitches == (switch,)
    assert control.overrides == (override,)
    assert store.set_killswitch(switch, False, AuditRecord(NOW, "killswitch_deactivated", {}))
    store.set_override(override, True, AuditRecord(NOW, "limit_changed", {"feature": "f"}))
    assert store.control().killswitches == ()
    assert store.control().overrides == ()


def test_run_keys_round_trip_in_the_control_state(store: Store) -> None:
    from costguard.stores.base import RunKeyState

    key = RunKeyState(
        "k1", "ab" * 32, (("agent", "billing"), ("run", "r-42")), ("openai",), (("total_usd", 1.5),), NOW, NOW + 60
    )
    store.set_run_key(key, AuditRecord(NOW, "key_issued", dict(key.labels), data={"key_id": "k1"}))
    assert store.control().keys == (key,)
    revoked = RunKeyState(**{**key.__dict__, "revoked_at": NOW + 1})
    store.set_run_key(revoked, AuditRecord(NOW + 1, "key_revoked", dict(key.labels), data={"key_id": "k1"}))
    control = store.control()
    assert control.keys == (revoked,)
    assert control.killswitches == () and control.overrides == ()
    assert [r.decision for r in store.audit(AuditQuery(decision="key_revoked"))] == ["key_revoked"]
    other = RunKeyState("k2", "cd" * 32, (("run", "r-43"),), (), (), NOW, None)
    store.set_run_key(other, AuditRecord(NOW + 2, "key_issued", dict(other.labels), data={"key_id": "k2"}))
    store.set_run_key(revoked, AuditRecord(NOW + 3, "key_purged", dict(key.labels), data={"key_id": "k1"}), remove=True)
    assert store.control().keys == (other,)  # purged: gone from the control state, the other kept
    assert [r.data["key_id"] for r in store.audit(AuditQuery(decision="key_purged"))] == ["k1"]


def test_audit_is_append_only_and_filterable(store: Store) -> None:
    p = plan([FEATURE], estimate=10_000, customer="acme")
    store.reserve(p, AuditRecord(NOW, "reserve", dict(p.labels), p.reservation_id, {"estimate_usd": 0.01}))
    store.settle(
        p.reservation_id, {Unit.USD: 9_000}, NOW + 1, AuditRecord(NOW + 1, "commit", dict(p.labels), p.reservation_id)
    )
    store.append([AuditRecord(NOW + 2, "blocked", {"feature": "g"}, None, {"reason": "kill_switch"})])
    records = store.audit(AuditQuery())
    assert [r.decision for r in records] == ["blocked", "commit", "reserve"]
    assert records[2].data["estimate_usd"] == 0.01
    assert [r.decision for r in store.audit(AuditQuery(feature="f"))] == ["commit", "reserve"]
    assert [r.decision for r in store.audit(AuditQuery(customer="acme", decision="reserve"))] == ["reserve"]
    assert [r.decision for r in store.audit(AuditQuery(since=NOW + 1, until=NOW + 2))] == ["commit"]
    first_page = store.audit(AuditQuery(limit=2))
    rest = store.audit(AuditQuery(before_id=first_page[-1].id))
    assert [r.decision for r in first_page + rest] == ["blocked", "commit", "reserve"]


def test_cache_round_trip_with_expiry(store: Store) -> None:
    store.cache_set("k", b"\x00value", NOW + 10)
    assert store.cache_get("k", NOW) == b"\x00value"
    store.cache_set("k", b"newer", NOW + 10)
    assert store.cache_get("k", NOW) == b"newer"
    assert store.cache_get("k", NOW + 11) is None
    assert store.cache_get("missing", NOW) is None


def test_threads_never_overshoot(store_url: str) -> None:
    """64 threads racing a $1.00 cap at $0.004 a call: exactly 250 allowed."""
    guard = race_worker.race_guard(store_url, 1_000_000)
    allowed = []
    lock = threading.Lock()
    barrier = threading.Barrier(64)

    def loop() -> None:
        barrier.wait()
        mine = 0
        while True:
            try:
                with guard.reserve("race", estimate_usd=0.004):
                    pass
            except Exception:
                break
            mine += 1
        with lock:
            allowed.append(mine)

    threads = [threading.Thread(target=loop) for _ in range(64)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(allowed) == 250
    spent = guard.status(feature="race").ceilings[0]
    assert spent.spent == 1.0
    assert spent.reserved == 0.0
    guard.close()


@pytest.mark.slow
def test_processes_never_overshoot(shared_store_url: str) -> None:
    """4 processes x 16 threads racing a $10.00 cap at $0.01: exactly 1000 calls and exactly $10.00."""
    context = multiprocessing.get_context("spawn")
    with context.Pool(4) as pool:
        counts = pool.starmap(race_worker.run, [(shared_store_url, 10_000_000, 16, 0.01, None)] * 4)
    assert sum(counts) == 1000
    guard = race_worker.race_guard(shared_store_url, 10_000_000)
    row = guard.status(feature="race").ceilings[0]
    assert (row.spent, row.reserved, row.limit) == (10.0, 0.0, 10.0)
    guard.close()


@pytest.mark.slow
def test_processes_overshoot_is_bounded_when_actual_exceeds_estimate(shared_store_url: str) -> None:
    """Estimate $0.01, actual $0.015: overshoot is at most the in-flight calls' excess."""
    context = multiprocessing.get_context("spawn")
    with context.Pool(4) as pool:
        counts = pool.starmap(race_worker.run, [(shared_store_url, 1_000_000, 8, 0.01, 0.015)] * 4)
    guard = race_worker.race_guard(shared_store_url, 1_000_000)
    row = guard.status(feature="race").ceilings[0]
    in_flight = 4 * 8
    assert row.spent == round(sum(counts) * 0.015, 6)
    assert 1.0 <= row.spent <= 1.0 + in_flight * 0.005 + 0.015
    guard.close()


def test_schema_is_created_once_by_concurrent_openers(shared_store_url: str) -> None:
    stores: list[Store] = []
    errors: list[BaseException] = []

    def open_one() -> None:
        try:
            stores.append(open_store(shared_store_url))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=open_one) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    for opened in stores:
        opened.close()


def test_a_batched_release_before_its_reserve_arrives_leaves_nothing_counted(store: Store) -> None:
    """The same through `settle_many`, as a spool replays releases."""
    p = plan([FEATURE], estimate=20_000)
    (outcome,) = store.settle_many([(p.reservation_id, None, NOW, None)])
    assert not isinstance(outcome, Exception)
    assert not outcome.applied
    store.reserve(p, None)
    assert store.totals([op.key for op in p.counters]) == [0, 0]


# --------------------------------------------------------------------------- max_instances


def capped(max_instances: int, overflow: str = "refuse") -> Ceiling:
    return Ceiling(
        make_match({"customer": "*"}),
        (usd(Period.DAY, 1.0),),
        max_instances=max_instances,
        overflow=overflow,  # type: ignore[arg-type]
    )


def test_a_slice_never_leases_a_registry(store: Store) -> None:
    """The guard never leases a `max_instances` ceiling; a slice reserved with a registry anyway counts
    only its spend counters as leased, and answers holders for every counter in plan order."""
    p = lease(plan([capped(2), FEATURE], customer="a"))
    outcome = store.reserve(p, None)
    assert outcome.allowed
    registry = [op.counts_new >= 0 for op in p.counters]
    assert [0 if kept else 1 for kept in registry] == list(outcome.holders)
    rows = {r.key: (r.leased, r.holders) for r in store.list_counters({op.period: op.bucket for op in p.counters})}
    assert [rows[op.key] for op in p.counters] == [
        (0, 0) if kept else (op.amount, 1) for op, kept in zip(p.counters, registry, strict=True)
    ]


def test_a_ceiling_counts_distinct_instances_and_refuses_past_max(store: Store) -> None:
    cap = capped(2)
    first = {name: plan([cap], customer=name) for name in ("a", "b", "c")}
    assert store.reserve(first["a"], None).allowed
    assert store.reserve(first["b"], None).allowed
    refused = store.reserve(first["c"], AuditRecord(NOW, "reserve", {"customer": "c"}))
    assert not refused.allowed
    assert refused.blocked is not None
    assert first["c"].counters[refused.blocked].key.startswith(engine.INSTANCES_PREFIX)
    decision = engine.decide(first["c"], refused, now=NOW, degrade_at=None)
    assert (decision.reason, decision.limit) == ("max_instances", 2.0)
    again = plan([cap], customer="a")
    assert store.reserve(again, None).allowed  # a known instance never counts again
    instance = [op.key for op in first["c"].counters if not op.key.startswith(engine.INSTANCES_PREFIX)]
    assert store.totals(instance) == [0]
    rows = store.list_counters({Period.DAY: first["a"].counters[0].bucket})
    assert sorted(dict(r.scope).get("customer", "") for r in rows) == ["", "a", "b"]  # nothing left for c


def test_the_instance_registry_is_never_given_back(store: Store) -> None:
    cap = capped(2)
    a = plan([cap], customer="a")
    store.reserve(a, None)
    store.settle(a.reservation_id, None, NOW, None)  # released: a's counter stays, and so does its count
    registry = next(op.key for op in a.counters if op.key.startswith(engine.INSTANCES_PREFIX))
    assert store.totals([registry]) == [1]
    store.reserve(plan([cap], customer="a"), None)
    assert store.totals([registry]) == [1]
    assert store.reserve(plan([cap], customer="b"), None).allowed
    assert not store.reserve(plan([cap], customer="c"), None).allowed


def test_racing_new_instances_get_exactly_max_of_them(store: Store) -> None:
    cap = capped(5)
    outcomes: list[bool] = []
    lock = threading.Lock()
    start = threading.Barrier(24)

    def one(index: int) -> None:
        start.wait()
        outcome = store.reserve(plan([cap], customer=f"c{index}"), None)
        with lock:
            outcomes.append(outcome.allowed)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(24)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert outcomes.count(True) == 5


# --------------------------------------------------------------------------- the audit of an allowed reserve


def reserve_audit(p: ReservePlan) -> AuditRecord:
    """The record the guard hands a reserve (callpath.CallPath.reserve)."""
    return AuditRecord(p.at, "reserve", dict(p.labels), p.reservation_id, {"estimate_usd": p.estimate_usd / 1e6})


def _by_scope(entries: Sequence[dict[str, object]]) -> list[dict[str, object]]:
    return sorted(entries, key=lambda e: (sorted(e["scope"].items()), e["period"], e["unit"]))  # type: ignore[attr-defined]


def test_an_allowed_reserve_is_audited_with_each_ceilings_spend_and_limit(store: Store) -> None:
    """Spend is reconstructible from the log alone: an allowed reserve's record has, per ceiling it
    touched, committed + reserved right after it (its own estimate included) and the limit — not
    the spend history counters nor a max_instances registry, which limit no spend."""
    calls = ceiling({"team": "*"}, Limit(Period.DAY, Unit.CALLS, 10), enforcement="soft")
    ceilings = [FEATURE, calls, capped(5)]
    first = plan(ceilings, estimate=10_000, history=True, customer="acme", team="t")
    assert store.reserve(first, reserve_audit(first)).allowed
    store.settle(first.reservation_id, {Unit.USD: 5_000, Unit.CALLS: 1}, NOW, None)
    second = plan(ceilings, estimate=20_000, history=True, customer="acme", team="t")
    assert store.reserve(second, reserve_audit(second)).allowed
    latest, earliest = store.audit(AuditQuery(decision="reserve"))
    assert latest.data["estimate_usd"] == 0.02
    assert _by_scope(latest.data["ceilings"]) == [
        {"scope": {"customer": "acme"}, "period": "day", "unit": "usd", "spent": 0.025, "limit": 1.0},
        {"scope": {"feature": "f"}, "period": "day", "unit": "usd", "spent": 0.025, "limit": 0.5},
        {"scope": {"feature": "f"}, "period": "month", "unit": "usd", "spent": 0.025, "limit": 1.0},
        {"scope": {"team": "t"}, "period": "day", "unit": "calls", "spent": 2.0, "limit": 10.0},
    ]
    assert [e["spent"] for e in _by_scope(earliest.data["ceilings"])] == [0.01, 0.01, 0.01, 1.0]
    blocked = plan([ceiling({"feature": "f"}, usd(Period.DAY, 0.01))], estimate=20_000)
    store.reserve(blocked, reserve_audit(blocked))
    assert "ceilings" not in store.audit(AuditQuery(decision="blocked"))[0].data  # it has its own spent/limit


def test_concurrent_reserves_audit_every_cumulative_spend_once(store: Store) -> None:
    """The spend a record shows is the one its own atomic reserve produced, not a separate read: 24
    racing reserves of $0.01 on one counter show $0.01, $0.02, … $0.24, each exactly once."""
    cap = ceiling({"feature": "f"}, usd(Period.DAY, 1.0))
    racers = 24
    start = threading.Barrier(racers)
    allowed: list[bool] = []
    lock = threading.Lock()

    def one() -> None:
        p = plan([cap], estimate=10_000)
        start.wait()
        outcome = store.reserve(p, reserve_audit(p))
        with lock:
            allowed.append(outcome.allowed)

    threads = [threading.Thread(target=one) for _ in range(racers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert allowed == [True] * racers
    records = store.audit(AuditQuery(decision="reserve", limit=1000))
    spent = sorted(round(entry["spent"] * 1_000_000) for r in records for entry in r.data["ceilings"])
    assert spent == [10_000 * k for k in range(1, racers + 1)]


# --------------------------------------------------------------------------- ttl: a run's lifetime


def run_ceiling(ttl: float = 3600, expire: float | None = 7 * 86_400) -> Ceiling:
    return Ceiling(make_match({"run": "*"}), (usd(Period.TOTAL, 1.0),), expire_after_s=expire, ttl_s=ttl)


def test_a_slice_starts_a_ttl_like_any_reservation(store: Store) -> None:
    """The guard never leases a run with a ttl; a slice reserved on one anyway starts its ttl, as the
    store's every other admitted reserve does."""
    first = lease(plan([run_ceiling()], run="r1"))
    assert store.reserve(first, None).allowed
    assert store.reserve(plan([run_ceiling()], run="r1", now=NOW + 3600), None).expired


def test_a_ttl_refuses_a_run_from_its_first_call_until_its_counter_is_dropped(store: Store) -> None:
    run = run_ceiling()
    first = plan([FEATURE, run], run="r1")
    assert store.reserve(first, None).allowed
    store.settle(first.reservation_id, {Unit.USD: 10_000}, NOW, None)
    assert store.reserve(plan([FEATURE, run], run="r1", now=NOW + 3599), None).allowed  # later calls don't move it
    late = plan([FEATURE, run], run="r1", now=NOW + 3600)
    keys = [op.key for op in late.counters]
    before = store.totals(keys)
    outcome = store.reserve(late, reserve_audit(late))
    assert (outcome.allowed, outcome.expired, outcome.crossings) == (False, True, ())  # money is left: no kill
    assert outcome.blocked is not None
    assert late.counters[outcome.blocked].ceiling_id == run.id
    assert store.totals(keys) == before  # nothing counted
    decision = engine.decide(late, outcome, now=NOW + 3600, degrade_at=None)
    assert (decision.reason, decision.scope, decision.spent, decision.limit) == ("expired", {"run": "r1"}, 0.02, 1.0)
    assert "ttl of 1h" in decision.message
    (record,) = store.audit(AuditQuery(decision="blocked"))
    assert record.data["reason"] == "expired"
    assert (record.data["scope"], record.data["period"], record.data["spent"]) == ({"run": "r1"}, "total", 0.02)
    assert store.reserve(plan([FEATURE, run], run="r2", now=NOW + 3600), None).allowed  # another run: its own ttl
    assert store.reserve(engine.force(plan([run], run="r1", now=NOW + 3600)), None).allowed  # a cost already made
    # Refused until expire_after drops the counter, expire_after after its last admitted call …
    june = plan([FEATURE, run], run="r1", now=NOW + 6 * 86_400)  # new day and month counters: no snapshot refusal
    assert store.reserve(june, None).expired
    assert store.totals([op.key for op in june.counters]) == [0, 0, 30_000]  # and none of them kept
    store.purge(NOW + 3600 + 7 * 86_400 + 1)
    # … and a reused id then starts over, with a fresh ttl.
    again = NOW + 8 * 86_400
    assert store.reserve(plan([run], run="r1", now=again), None).allowed
    assert store.reserve(plan([run], run="r1", now=again + 3599), None).allowed
    assert store.reserve(plan([run], run="r1", now=again + 3600), None).expired


def test_a_ttl_runs_from_the_first_call_admitted_under_it(store: Store) -> None:
    """A call refused by another ceiling doesn't start a run's ttl, nor does one made before the ceiling
    had a ttl: the clock starts at the first call admitted with it."""
    tiny = ceiling({"feature": "f"}, usd(Period.DAY, 0.01))
    assert not store.reserve(plan([tiny, run_ceiling()], estimate=20_000, run="r1"), None).allowed
    without = Ceiling(make_match({"run": "*"}), (usd(Period.TOTAL, 1.0),), expire_after_s=7 * 86_400)
    assert store.reserve(plan([without], run="r1", now=NOW + 60), None).allowed
    start = NOW + 7200
    assert store.reserve(plan([run_ceiling()], run="r1", now=start), None).allowed
    assert store.reserve(plan([run_ceiling()], run="r1", now=start + 3599), None).allowed
    assert store.reserve(plan([run_ceiling()], run="r1", now=start + 3600), None).expired


def test_every_process_counts_a_ttl_from_the_same_first_call(store_url: str) -> None:
    """The first call's time is kept in the store, not in the process that made it."""
    if store_url == "memory://":
        pytest.skip("a memory store lives in one process")
    one, other = open_test_store(store_url), open_test_store(store_url)
    try:
        assert one.reserve(plan([run_ceiling()], run="r1"), None).allowed
        assert other.reserve(plan([run_ceiling()], run="r1", now=NOW + 3599), None).allowed
        assert other.reserve(plan([run_ceiling()], run="r1", now=NOW + 3600), None).expired
        assert one.reserve(plan([run_ceiling()], run="r1", now=NOW + 3600), None).expired
    finally:
        one.close()
        other.close()


# --------------------------------------------------------------------------- a limit set mid-period


def test_a_counter_started_with_spend_is_created_once(store: Store) -> None:
    """A limit set at run time starts its new counter from what the scope spent: atomically, and never on
    top of a counter that exists (it already counts)."""
    op = plan([ceiling({"feature": "f"}, usd(Period.DAY, 1.0))]).counters[0]
    assert store.start_counter(op, 150_000, NOW)
    assert store.totals([op.key]) == [150_000]
    assert not store.start_counter(op, 999_999, NOW)  # it exists: nothing added
    assert store.totals([op.key]) == [150_000]
    p = plan([ceiling({"feature": "f"}, usd(Period.DAY, 0.2))], estimate=60_000)
    assert not store.reserve(p, None).allowed  # 0.15 + 0.06 > 0.20: the start counts against the limit
    assert store.reserve(plan([ceiling({"feature": "f"}, usd(Period.DAY, 0.2))], estimate=50_000), None).allowed
    (row,) = store.list_counters({Period.DAY: op.bucket})
    assert (row.key, row.committed, row.reserved) == (op.key, 150_000, 50_000)
    store.purge(NOW + 3 * 86_400)  # it expires like any counter of its period
    assert store.totals([op.key]) == [0]


def test_a_sql_store_sums_a_scopes_commits_from_its_audit_log(store: Store) -> None:
    """What a scope spent since a moment, by labels, from the audit log (SQL stores); stores without a log
    to sum say they can't tell (None)."""
    since = NOW - 3600
    calls = [
        (NOW - 7200, {"feature": "f", "customer": "a"}, 100_000, 10),  # before `since`
        (NOW, {"feature": "f", "customer": "a"}, 20_000, 11),
        (NOW + 1, {"feature": "f", "customer": "b", "team.x": "t-1"}, 30_000, 12),
        (NOW + 2, {"feature": "g", "customer": "a", "team.x": "t-1"}, 40_000, 13),
    ]
    for at, labels, usd_micros, tokens in calls:
        p = ReservePlan(uuid.uuid4().hex, at, tuple(sorted(labels.items())), (), 0)  # no ceiling: only the log
        store.reserve(p, None)
        record = AuditRecord(at, "commit", labels, p.reservation_id, {"actual_usd": usd_micros / 1e6, "tokens": tokens})
        store.settle(p.reservation_id, {Unit.USD: usd_micros}, at, record)
    store.settle("by-id", None, NOW, AuditRecord(NOW, "release", {"feature": "f"}, "by-id"))  # not a commit
    answers = {
        "f since": store.spent_since({"feature": "f"}, Unit.USD, since),
        "f ever": store.spent_since({"feature": "f"}, Unit.USD, None),
        "team": store.spent_since({"team.x": "t-1"}, Unit.USD, since),
        "a and team": store.spent_since({"customer": "a", "team.x": "t-1"}, Unit.USD, since),
        "f calls": store.spent_since({"feature": "f"}, Unit.CALLS, since),
        "f tokens": store.spent_since({"feature": "f"}, Unit.TOKENS, since),
        "nobody": store.spent_since({"feature": "nobody"}, Unit.USD, since),
    }
    if not isinstance(store, SQLStore):
        assert set(answers.values()) == {None}
        return
    assert answers == {
        "f since": 50_000,
        "f ever": 150_000,
        "team": 70_000,
        "a and team": 40_000,
        "f calls": 2,
        "f tokens": 23,
        "nobody": 0,
    }


def test_the_memory_store_keeps_only_the_newest_settled_reservations() -> None:
    """In process no reply is lost, so a settled reservation is kept only for a commit asked again soon
    after: the newest `max_settled` of them. Open ones are never dropped; the totals never change."""
    store = MemoryStore(max_settled=3)
    held = plan([FEATURE])
    assert store.reserve(held, None).allowed
    plans = [plan([FEATURE]) for _ in range(5)]
    for p in plans:
        assert store.reserve(p, None).allowed
        assert store.settle(p.reservation_id, {Unit.USD: 4_000}, NOW, None).applied
    store.settle("never-seen", None, NOW, None)  # a release's tombstone is one of them too
    kept = set(store._reservations)
    assert kept == {held.reservation_id, plans[3].reservation_id, plans[4].reservation_id, "never-seen"}
    assert not store.settle(plans[4].reservation_id, {Unit.USD: 9_000}, NOW, None).applied  # asked again
    key = held.counters[0].key
    assert store.totals([key]) == [10_000 + 5 * 4_000]
    assert store.settle(held.reservation_id, None, NOW, None).applied  # the open one: still there
    assert store.totals([key]) == [5 * 4_000]
