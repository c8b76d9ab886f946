"""Leased budget: hot counters served from slices reserved in the store, the cap still exact.

The books (`engine.leases`) are tested on their own; the guard is tested on the stores that lease
(PostgreSQL and Redis), where a slice is an ordinary reservation every process sees.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import threading
import time
from datetime import timezone
from pathlib import Path

import pytest

from conftest import RedisURLs
from costguard import BudgetExceeded, BudgetExpired, Guard, KillSwitchActive
from costguard.config import load_config
from costguard.engine import Grant, PlanCache, ReserveOutcome
from costguard.engine.leases import HEADROOM_SHARE, HOT_CALLS, MIN_SLICE_CALLS, LeaseBook, is_lease
from costguard.errors import ConfigError
from costguard.model import Period, Unit
from costguard.periods import bucket_for
from helpers import FakeClock, usd_ceiling

NOW = 1_780_000_000.0
CAP = usd_ceiling({"feature": "f"}, day=100.0)
CENT = {Unit.USD: 10_000, Unit.CALLS: 1}


def _plan(ceilings: tuple[object, ...] = (CAP,), now: float = NOW, rid: str = "r", **labels: str):  # type: ignore[no-untyped-def]
    return PlanCache().plan(
        reservation_id=rid,
        ceilings=ceilings,  # type: ignore[arg-type]
        overrides={},
        labels={"feature": "f", **labels},
        amounts=CENT,
        now=now,
        tz=timezone.utc,
        thresholds=(0.8, 1.0),
    )


def _warm(book: LeaseBook, plan, total: int = 0):  # type: ignore[no-untyped-def]
    """Calls one by one until the group is hot; the store said each counter stands at `total`."""
    for _ in range(HOT_CALLS - 1):
        take, grants = book.take(plan, CENT, NOW)
        assert take is None and grants == []
        book.observe(plan.counters, [total] * len(plan.counters))
    take, grants = book.take(plan, CENT, NOW)
    assert take is None
    return grants


# ----------------------------------------------------------------------------- the books
def test_a_group_is_leased_once_hot_and_sized_to_use_and_headroom() -> None:
    book = LeaseBook(period_s=1.0)
    plan = _plan()
    (grant,) = _warm(book, plan)
    # 8 calls in no time: a period's pace is far more than the headroom share allows... or MAX
    usd = [op for op in grant.plan.counters if op.unit is Unit.USD]
    assert is_lease(grant.plan.reservation_id)
    assert {op.amount for op in usd} == {grant.calls * 10_000}
    assert grant.calls <= 100_000_000 // (10_000 * HEADROOM_SHARE)
    # Only one grant at a time per group.
    assert book.take(plan, CENT, NOW) == (None, [])


def test_no_slice_near_the_cap() -> None:
    book = LeaseBook(period_s=1.0)
    plan = _plan()
    near = 100_000_000 - 10_000 * HEADROOM_SHARE * MIN_SLICE_CALLS + 1  # less than 4 calls' share left
    assert _warm(book, plan, total=near) == []


def test_calls_are_served_from_the_slice_then_settled_at_their_actual_cost() -> None:
    book = LeaseBook(period_s=1.0)
    plan = _plan()
    (grant,) = _warm(book, plan)
    totals = tuple(op.amount for op in grant.plan.counters)
    assert book.install(grant, ReserveOutcome(True, totals), NOW)
    takes, renewals = [], []
    for _ in range(grant.calls):
        take, grants = book.take(plan, CENT, NOW)
        assert take is not None and take.cold == ()
        takes.append(take)
        renewals.extend(grants)
    # The next slice was asked for once, when three quarters were used (while this one still served).
    assert len(renewals) == 1
    take, _ = book.take(plan, CENT, NOW)  # used up: retired (calls still in flight), one by one again
    assert take is None
    assert book.done() == []  # not settled while its calls run
    for take in takes:
        book.finish(take, {Unit.USD: 4_000, Unit.CALLS: 1})
    (done,) = book.done()
    assert done.settlement() == {Unit.USD: 4_000 * grant.calls, Unit.CALLS: grant.calls, Unit.TOKENS: 0}


def test_a_released_call_gives_its_estimate_back_to_the_slice() -> None:
    book = LeaseBook(period_s=1.0)
    plan = _plan()
    (grant,) = _warm(book, plan)
    book.install(grant, ReserveOutcome(True, tuple(op.amount for op in grant.plan.counters)), NOW)
    (slice_,) = book.slices()
    take, _ = book.take(plan, CENT, NOW)
    assert take is not None and slice_.used[0] == 10_000
    book.finish(take, None)
    assert slice_.used == [0, 0, 0] and slice_.spent == [0, 0, 0]


def test_a_call_the_store_took_after_the_slice_counts_in_what_its_calls_see() -> None:
    """The slice was reserved (by the background thread) while a call went to the store on its own: the
    store's answer to that call holds the whole slice and the call, so the slice's calls count it too."""
    book = LeaseBook(period_s=1.0)
    plan = _plan()
    (grant,) = _warm(book, plan, total=70_000)
    with_slice = tuple(70_000 + op.amount for op in grant.plan.counters)
    book.install(grant, ReserveOutcome(True, with_slice), NOW)
    (slice_,) = book.slices()
    usd = next(op for op in slice_.ops if op.unit is Unit.USD)
    assert slice_.total(usd) == 70_000
    book.observe(plan.counters, [70_000] * len(plan.counters))  # an answer from before the slice: no change
    assert slice_.total(usd) == 70_000
    book.observe(plan.counters, [t + 10_000 for t in with_slice])  # the lone call, applied after the slice
    take, _ = book.take(plan, CENT, NOW)
    assert take is not None and slice_.total(usd) == 70_000 + 10_000 + 10_000


def test_a_control_change_or_an_old_slice_retires_it() -> None:
    book = LeaseBook(period_s=1.0)
    plan = _plan()
    (grant,) = _warm(book, plan)
    book.revoke_if_changed(("switches", ()))
    book.install(grant, ReserveOutcome(True, tuple(op.amount for op in grant.plan.counters)), NOW)
    book.revoke_if_changed(("switches", ()))  # equal: nothing happens
    assert len(book.slices()) == 1
    book.revoke_if_changed(("switches", ("feature=f",)))
    assert book.slices() == [] and len(book.done()) == 1
    (grant,) = book.take(plan, CENT, NOW)[1]
    book.install(grant, ReserveOutcome(True, tuple(op.amount for op in grant.plan.counters)), NOW)
    book.expire(NOW + 1.0)
    assert book.slices() == [] and len(book.done()) == 1


def test_a_refused_slice_means_calls_one_by_one_for_a_period() -> None:
    book = LeaseBook(period_s=1.0)
    plan = _plan()
    (grant,) = _warm(book, plan)
    assert not book.install(grant, ReserveOutcome(False, (0,) * len(plan.counters), blocked=0), NOW)
    assert book.take(plan, CENT, NOW + 0.5) == (None, [])
    assert book.take(plan, CENT, NOW + 1.0)[1] != []


def _renewal(holders: int) -> tuple[int, int, list[Grant]]:
    """A first slice whose reserve the store answered with `holders` slices on its counters (this one
    included), spent until the next one is due: (the first slice's calls, the headroom left, the grants)."""
    book = LeaseBook(period_s=1.0)
    plan = _plan()
    (grant,) = _warm(book, plan)
    amounts = tuple(op.amount for op in grant.plan.counters)
    assert book.install(grant, ReserveOutcome(True, amounts, holders=(holders,) * len(amounts)), NOW)
    for _ in range(grant.calls):
        take, grants = book.take(plan, CENT, NOW)
        assert take is not None
        if grants:
            break
    return grant.calls, 100_000_000 - grant.calls * 10_000, grants


def test_a_slice_is_at_most_a_fair_share_among_the_slices_holding_its_counter() -> None:
    """headroom / (holders + 1), the holders the store counted less this process's own live slice — and
    never more than 1/HEADROOM_SHARE, however few hold it."""
    first, left, (few,) = _renewal(holders=2)
    assert first == 100_000_000 // (10_000 * HEADROOM_SHARE)  # nobody had said how many hold it yet
    assert few.calls == left // (10_000 * HEADROOM_SHARE)  # 1 other + this one: 1/64 binds
    _, left, (many,) = _renewal(holders=201)
    assert many.calls == left // (10_000 * 201) < few.calls  # 200 others + this one
    assert {op.amount for op in many.plan.counters if op.unit is Unit.USD} == {many.calls * 10_000}


def test_no_slice_when_a_fair_share_is_under_the_smallest_slice() -> None:
    """With so many holders that a fair share is under MIN_SLICE_CALLS, the calls go one by one."""
    _, left, grants = _renewal(holders=_most_holders_for_a_min_slice() + 1)
    assert left // (10_000 * (_most_holders_for_a_min_slice() + 1)) < MIN_SLICE_CALLS
    assert grants == []


def _most_holders_for_a_min_slice() -> int:
    """The most holders for which the headroom left after a first slice still gives MIN_SLICE_CALLS each."""
    left = 100_000_000 - (100_000_000 // (10_000 * HEADROOM_SHARE)) * 10_000
    return left // (10_000 * MIN_SLICE_CALLS)


# ----------------------------------------------------------------------------- the guard, on stores that lease
def _spend(guard: Guard) -> tuple[float, float]:
    (row,) = guard.status(feature="f").ceilings
    return row.spent, row.reserved


def test_threads_spend_exactly_the_cap_and_close_gives_the_slices_back(fleet_store_url: str) -> None:
    # $15 at $0.01: slices while 1 024 calls' worth or more is left, then one by one to the cap.
    guard = Guard(fleet_store_url, ceilings=[usd_ceiling({"feature": "f"}, day=15.0)])
    granted: list[str] = []
    reserve = guard.store.reserve

    def counting(plan, record):  # type: ignore[no-untyped-def]
        if is_lease(plan.reservation_id):
            granted.append(plan.reservation_id)
        return reserve(plan, record)

    guard.store.reserve = counting  # type: ignore[method-assign]
    allowed: list[int] = []
    lock = threading.Lock()

    def loop() -> None:
        mine = 0
        refused_since = None
        while True:  # keep calling until refused for longer than a lease period: traffic goes on
            try:
                with guard.reserve("f", estimate_usd=0.01) as r:
                    r.commit(0.01)
                mine += 1
                refused_since = None
            except BudgetExceeded:
                refused_since = refused_since or time.monotonic()
                if time.monotonic() - refused_since > 1.5:
                    break
                time.sleep(0.01)
        with lock:
            allowed.append(mine)

    threads = [threading.Thread(target=loop) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert guard.calls.leases is not None and guard.calls.leases.book.slices() == []  # all used or returned
    guard.close()
    check = Guard(fleet_store_url, ceilings=[usd_ceiling({"feature": "f"}, day=15.0)], leases=False)
    assert granted, "no slice was ever granted"
    assert sum(allowed) == 1500
    assert _spend(check) == (15.0, 0.0)
    # Every slice granted on the way left the counters' leased part and holders as it was settled.
    buckets = {period: bucket_for(period, time.time(), timezone.utc).id for period in Period}
    assert {(row.leased, row.holders) for row in check.store.list_counters(buckets)} == {(0, 0)}
    records = check.audit(feature="f", decision="commit", limit=1000) + check.audit(
        feature="f",
        decision="commit",
        limit=1000,
        before_id=check.audit(feature="f", decision="commit", limit=1000)[-1].id,
    )
    assert len(records) == 1500 and not any(is_lease(r.reservation_id or "") for r in records)
    check.close()


def test_a_hot_feature_is_served_from_a_slice(fleet_store_url: str) -> None:
    guard = Guard(fleet_store_url, ceilings=[usd_ceiling({"feature": "f"}, day=100.0)])
    for _ in range(50):
        with guard.reserve("f", estimate_usd=0.01) as r:
            r.commit(0.005)
    leases = guard.calls.leases
    assert leases is not None
    assert len(leases.book.slices()) == 1
    spent, reserved = _spend(guard)
    assert reserved > 0  # the slice counts in the store while it is held
    assert spent >= 50 * 0.005  # spent counts what is reserved, the slice included: never under-counted
    guard.close()
    check = Guard(fleet_store_url, ceilings=[usd_ceiling({"feature": "f"}, day=100.0)], leases=False)
    assert _spend(check) == (0.25, 0.0)
    check.close()


def test_status_shows_the_slice_as_leased_apart_from_an_ordinary_reservation(fleet_store_url: str) -> None:
    """`leased` is the part of `reserved` held by slices: a call in flight elsewhere is reserved, not leased."""
    ceilings = [usd_ceiling({"feature": "f"}, day=100.0)]
    clock = FakeClock(NOW)  # standing still: the one slice neither expires nor is renewed
    guard = Guard(fleet_store_url, ceilings=ceilings, clock=clock)
    other = Guard(fleet_store_url, ceilings=ceilings, leases=False, clock=clock)
    for _ in range(50):
        with guard.reserve("f", estimate_usd=0.01) as r:
            r.commit(0.005)
    leases = guard.calls.leases
    assert leases is not None
    (slice_,) = leases.book.slices()
    held = other.reserve("f", estimate_usd=0.03)  # in flight, one by one
    (row,) = other.status(feature="f").ceilings
    assert row.leased == slice_.granted[0] / 1_000_000 > 0
    assert row.reserved == pytest.approx(row.leased + 0.03)
    data = row.to_dict()
    assert (data["reserved_usd"], data["leased_usd"]) == (row.reserved, row.leased)
    (forecast,) = other.forecast(feature="f").ceilings
    assert (forecast.reserved_usd, forecast.leased_usd) == (row.reserved, row.leased)
    held.release()
    guard.close()  # the slice goes back
    (row,) = other.status(feature="f").ceilings
    assert (row.reserved, row.leased) == (0.0, 0.0)
    other.close()


def test_leases_off_reserves_call_by_call(fleet_store_url: str) -> None:
    guard = Guard(fleet_store_url, ceilings=[usd_ceiling({"feature": "f"}, day=100.0)], leases=False)
    for _ in range(50):
        with guard.reserve("f", estimate_usd=0.01) as r:
            r.commit(0.005)
        assert _spend(guard)[1] == 0.0
    assert guard.calls.leases is None
    guard.close()


def test_an_idle_process_gives_its_slice_back(fleet_store_url: str) -> None:
    clock = FakeClock(NOW)
    cap = usd_ceiling({"feature": "f"}, day=100.0)
    guard = Guard(fleet_store_url, ceilings=[cap], lease_period_ms=200, clock=clock)
    for _ in range(50):
        with guard.reserve("f", estimate_usd=0.01) as r:
            r.commit(0.005)
    assert _spend(guard)[1] > 0  # held: the clock stands still
    clock.advance(0.2)  # a lease period later, with no call: the sweeper gives it back
    deadline = time.monotonic() + 5
    while _spend(guard)[1] > 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _spend(guard) == (0.25, 0.0)
    guard.close()


def test_a_kill_switch_revokes_the_slices_at_the_next_refresh(fleet_store_url: str) -> None:
    guard = Guard(fleet_store_url, ceilings=[usd_ceiling({"feature": "f"}, day=100.0)], killswitch_cache_ms=100)
    operator = Guard(fleet_store_url, ceilings=[usd_ceiling({"feature": "f"}, day=100.0)], leases=False)
    for _ in range(50):
        with guard.reserve("f", estimate_usd=0.01):
            pass
    assert _spend(operator)[1] > 0
    operator.killswitch.activate(reason="incident", actor="ops", scope={"feature": "f"})
    time.sleep(0.15)
    with pytest.raises(KillSwitchActive):
        guard.reserve("f", estimate_usd=0.01)
    deadline = time.monotonic() + 5
    while _spend(operator)[1] > 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _spend(operator) == (0.5, 0.0)
    guard.close()
    operator.close()


def test_a_lowered_limit_revokes_the_slices_and_holds(fleet_store_url: str) -> None:
    guard = Guard(fleet_store_url, ceilings=[usd_ceiling({"feature": "f"}, day=100.0)], killswitch_cache_ms=100)
    operator = Guard(fleet_store_url, ceilings=[usd_ceiling({"feature": "f"}, day=100.0)], leases=False)
    for _ in range(50):
        with guard.reserve("f", estimate_usd=0.01):
            pass
    operator.set_limit({"feature": "f"}, period="day", usd=0.6, reason="tighter", actor="ops")
    time.sleep(0.15)
    ran = 0
    for _ in range(40):
        try:
            with guard.reserve("f", estimate_usd=0.01):
                ran += 1
        except BudgetExceeded:
            time.sleep(0.02)
    guard.close()
    assert ran == 10  # $0.50 spent, $0.60 the new limit: ten more, exactly
    assert _spend(operator) == (0.6, 0.0)
    operator.close()


def test_async_calls_lease_too(fleet_store_url: str) -> None:
    guard = Guard(fleet_store_url, ceilings=[usd_ceiling({"feature": "f"}, day=20.0)])

    async def main() -> int:
        ran = 0

        async def one() -> None:
            nonlocal ran
            for _ in range(20):
                try:
                    async with guard.areserve("f", estimate_usd=0.01) as r:
                        await r.acommit(0.01)
                    ran += 1
                except BudgetExceeded:
                    await asyncio.sleep(0.05)

        await asyncio.gather(*(one() for _ in range(10)))
        aclose = getattr(guard.store, "aclose", None)
        if aclose is not None:
            await aclose()  # its async connections belong to this loop
        return ran

    ran = asyncio.run(main())
    guard.close()
    check = Guard(fleet_store_url, ceilings=[usd_ceiling({"feature": "f"}, day=20.0)], leases=False)
    assert ran == 200
    assert _spend(check) == (2.0, 0.0)
    check.close()


# ----------------------------------------------------------------------------- config
def test_leases_in_the_config(tmp_path: Path) -> None:
    path = tmp_path / "costguard.yaml"
    path.write_text("store: memory://\nleases: off\nlease_period_ms: 250\n")
    guard = load_config(path).build()
    assert guard.lease_period_s is None
    guard.close()
    path.write_text("store: memory://\nleases: on\nlease_period_ms: 250\n")
    guard = load_config(path).build()
    assert guard.lease_period_s == 0.25
    guard.close()
    path.write_text("store: memory://\nlease_period_ms: 5\n")
    with pytest.raises(ConfigError, match="lease_period_ms"):
        load_config(path)


def test_a_lease_period_out_of_range_is_refused() -> None:
    with pytest.raises(ValueError, match="lease_period_ms must be between 10 and 60000"):
        Guard("memory://", lease_period_ms=0)


def _until_refused(guard: Guard) -> int:
    """Call until refused for longer than a lease period (other processes' slices go back meanwhile)."""
    ran, refused_since = 0, None
    while True:
        try:
            with guard.reserve("f", estimate_usd=0.01) as r:
                r.commit(0.01)
            ran, refused_since = ran + 1, None
        except BudgetExceeded:
            refused_since = refused_since or time.monotonic()
            if time.monotonic() - refused_since > 1.5:
                return ran
            time.sleep(0.01)


@pytest.mark.redis
def test_a_forked_child_never_spends_the_parents_slice(redis_urls: RedisURLs) -> None:
    """A worker forked while its parent holds a slice (a pre-loading server) starts with no slice: the
    slice is the parent's to spend, so the two together admit exactly the cap (a real Redis: the child
    is another process)."""
    redis_url = redis_urls.new("redis")
    guard = Guard(redis_url, ceilings=[usd_ceiling({"feature": "f"}, day=20.0)])
    for _ in range(20):
        with guard.reserve("f", estimate_usd=0.01) as r:
            r.commit(0.01)
    leases = guard.calls.leases
    assert leases is not None and leases.book.slices()
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child
        try:
            held = len(leases.book.slices())
            ran = _until_refused(guard)
            guard.close()
            os.write(write, f"{held} {ran}".encode())
        finally:
            os._exit(0)
    os.close(write)
    parent_ran = _until_refused(guard)
    guard.close()
    held, child_ran = map(int, os.read(read, 100).split())
    os.waitpid(pid, 0)
    assert held == 0
    assert 20 + parent_ran + child_ran == 2000
    check = Guard(redis_url, ceilings=[usd_ceiling({"feature": "f"}, day=20.0)], leases=False)
    assert _spend(check) == (20.0, 0.0)
    check.close()


def test_a_run_with_a_ttl_is_never_leased_so_it_ends_on_time(fleet_store_url: str) -> None:
    """A hot run under a `ttl` is reserved call by call: the first call after the ttl is refused as
    expired at once, never served from a slice that outlives it."""
    clock = FakeClock(NOW)
    run_cap = dataclasses.replace(usd_ceiling({"run": "*"}, total=100.0), ttl_s=60.0)
    guard = Guard(fleet_store_url, ceilings=[run_cap], clock=clock)
    for _ in range(50):
        with guard.reserve("f", run="r1", estimate_usd=0.01):
            pass
    assert guard.calls.leases is not None and guard.calls.leases.book.slices() == []
    clock.advance(61)
    with pytest.raises(BudgetExpired):
        guard.reserve("f", run="r1", estimate_usd=0.01)
    guard.close()


def test_calls_served_from_slices_are_audited_with_their_ceilings(fleet_store_url: str) -> None:
    """Every call keeps its reserve and commit lines; one served from a slice says so, with each covered
    counter's spend as this process saw it — rising call by call, never past the limit."""
    guard = Guard(fleet_store_url, ceilings=[usd_ceiling({"feature": "f"}, day=100.0)])
    ids = []
    for _ in range(60):
        with guard.reserve("f", estimate_usd=0.01) as r:
            r.commit(0.01)
        ids.append(r.id)
    guard.flush()
    reserves = {r.reservation_id: r for r in guard.audit(feature="f", decision="reserve", limit=1000)}
    assert len(reserves) == 60 and len(guard.audit(feature="f", decision="commit", limit=1000)) == 60
    leased = [(n, reserves[rid]) for n, rid in enumerate(ids, 1) if reserves[rid].data.get("leased")]
    assert leased, "60 calls of one feature: some were served from a slice"
    assert all(row["limit"] == 100.0 and row["period"] == "day" for _, r in leased for row in r.data["leased_ceilings"])
    # The n-th call counted $0.01 x n, as the store would have said: each line has its own call's view
    # (written later, in a batch, from what its slice stood at when the call was admitted).
    assert [r.data["leased_ceilings"][0]["spent"] for _, r in leased] == [pytest.approx(n / 100) for n, _ in leased]
    guard.close()


def test_a_slice_planned_before_a_control_change_is_given_back_not_used() -> None:
    """A renewal reserved in the background under limits that changed meanwhile is never spent from."""
    book = LeaseBook(period_s=1.0)
    plan = _plan()
    book.revoke_if_changed(("limits", 1))
    (grant,) = _warm(book, plan)
    book.revoke_if_changed(("limits", 2))  # e.g. a lowered limit, seen at the control refresh
    assert not book.install(grant, ReserveOutcome(True, tuple(op.amount for op in grant.plan.counters)), NOW)
    assert book.slices() == []
    (returned,) = book.done()
    assert returned.lease_id == grant.plan.reservation_id and returned.settlement()[Unit.USD] == 0
