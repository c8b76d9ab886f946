"""Crash, first use, two scopes, actual above estimate, idempotent retries, kill switch reach.

Run against every store several processes can share (SQLite, PostgreSQL, Redis) unless noted.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Mapping
from pathlib import Path

import pytest
import workers

from costguard import Blocked, BudgetExceeded, FeatureSettings, Guard
from costguard.engine import CommitOutcome
from costguard.errors import StoreTimeout
from costguard.events import AuditRecord
from costguard.model import Unit
from costguard.stores import MemoryStore
from costguard.testing import FakeClock, RecordingNotifier
from helpers import FlakyStore, make_guard, usd_ceiling

SPAWN = multiprocessing.get_context("spawn")


def spent(guard: Guard, **labels: str) -> dict[tuple[str, str], float]:
    return {(str(sorted(c.labels.items())), c.period): c.spent for c in guard.status(**labels).ceilings}


def feature_spend(guard: Guard) -> float:
    return next(c.spent for c in guard.status().ceilings if c.labels == {"feature": "f"})


@pytest.mark.slow
def test_sigkill_between_reserve_and_commit_leaves_the_estimate(shared_store_url: str, tmp_path: Path) -> None:
    ready = tmp_path / "ready"
    victim = SPAWN.Process(target=workers.reserve_and_die, args=(shared_store_url, 10_000_000, str(ready)))
    victim.start()
    deadline = time.monotonic() + 60
    while not ready.exists():
        assert time.monotonic() < deadline, "the victim never reserved"
        assert victim.is_alive(), "the victim died before reserving"
        time.sleep(0.05)
    with SPAWN.Pool(2) as pool:
        pending = pool.starmap_async(workers.steady, [(shared_store_url, 10_000_000, 40, f"c{i}") for i in range(2)])
        time.sleep(0.2)
        assert victim.pid is not None
        os.kill(victim.pid, signal.SIGKILL)  # mid-flight: its reservation is never settled
        victim.join(30)
        allowed = pending.get(120)
    assert victim.exitcode == -signal.SIGKILL
    assert allowed == [40, 40]  # the others carried on
    guard = workers.guard_for(shared_store_url, 10_000_000)
    assert feature_spend(guard) == pytest.approx(0.05 + 0.80)  # the dead call's estimate is still counted
    victim_row = next(c for c in guard.status(customer="victim").ceilings)
    assert victim_row.spent == pytest.approx(0.05)
    guard.close()


@pytest.mark.slow
def test_first_use_of_a_customer_under_64_concurrent_calls(shared_store_url: str) -> None:
    allowed = workers.threads_racing(shared_store_url, 50_000, 64, 0.01, "brand-new")
    assert allowed == 5
    guard = workers.guard_for(shared_store_url, 50_000)
    assert {c.spent for c in guard.status(customer="brand-new").ceilings} == {0.05}
    guard.close()


def test_two_scopes_neither_exceeded_and_denials_leave_nothing(
    store_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    shared = MemoryStore() if store_url == "memory://" else store_url  # two guards, one store
    customer_cap = usd_ceiling({"customer": "acme"}, month=8.0)
    guard = make_guard(usd_ceiling({"feature": "f"}, month=5.0), customer_cap, store=shared)
    other = make_guard(usd_ceiling({"feature": "g"}, month=100.0), customer_cap, store=shared)
    barrier = threading.Barrier(16)
    outcomes: list[str] = []
    lock = threading.Lock()

    def caller(index: int) -> None:
        g, feature = (guard, "f") if index % 2 else (other, "g")
        barrier.wait()
        for _ in range(60):
            try:
                with g.reserve(feature, estimate_usd=0.1, customer="acme") as r:
                    r.commit(0.1)
                with lock:
                    outcomes.append(feature)
            except BudgetExceeded as exc:
                with lock:
                    outcomes.append(f"blocked:{exc.decision.scope}")

    threads = [threading.Thread(target=caller, args=(i,)) for i in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    rows = {str(sorted(c.labels.items())): c for c in guard.status().ceilings}
    feature_f = rows[str([("feature", "f")])]
    customer = rows[str([("customer", "acme")])]
    assert feature_f.spent <= 5.0 + 1e-9
    assert customer.spent == pytest.approx(8.0)  # the customer's cap filled exactly
    assert feature_f.spent == pytest.approx(outcomes.count("f") * 0.1)  # nothing partial left by denials
    assert customer.spent == pytest.approx((outcomes.count("f") + outcomes.count("g")) * 0.1)
    assert feature_f.reserved == customer.reserved == 0
    assert "store error" not in caplog.text  # no call slipped through on on_store_error: open
    guard.close()
    other.close()


def test_actual_above_estimate_is_bounded_reported_and_alerted(
    store_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    notifier = RecordingNotifier()
    guard = make_guard(usd_ceiling({"feature": "f"}, day=1.0), store=store_url, notifier=notifier)
    with guard.reserve("f", estimate_usd=0.98) as r:  # headroom left: $0.02
        r.commit(0.98)
    with caplog.at_level(logging.WARNING, logger="costguard"):
        with guard.reserve("f", estimate_usd=0.01) as r:
            r.commit(0.05)  # $0.04 more than it reserved
    (row,) = guard.status().ceilings
    assert row.spent == pytest.approx(1.03)  # over by exactly the excess the limit could not see
    commit = guard.audit(decision="commit")[0]
    assert commit.data["actual_usd"] - commit.data["estimate_usd"] == pytest.approx(0.04)
    assert "over its limit after commit: 1.03 of 1" in caplog.text
    with pytest.raises(BudgetExceeded):
        guard.reserve("f", estimate_usd=0.0)
    guard.flush()
    assert [e.kind for e in notifier.events] == ["warn", "kill"]
    guard.close()


class AppliedThenTimedOut(MemoryStore):
    """A store whose first settle is applied but answers with a timeout (the reply was lost)."""

    remote = True  # stands in for a server: the guard bounds its calls by the deadline and asks again

    def __init__(self) -> None:
        super().__init__()
        self.lost = 0
        self.settles = 0

    def settle(
        self, reservation_id: str, actual: Mapping[Unit, int] | None, at: float, record: AuditRecord | None
    ) -> CommitOutcome:
        self.settles += 1
        outcome = super().settle(reservation_id, actual, at, record)
        if self.lost == 0:
            self.lost += 1
            raise StoreTimeout("timed out waiting for the reply (test)")
        return outcome


def test_a_commit_retried_after_a_timeout_counts_once() -> None:
    store = AppliedThenTimedOut()
    guard = make_guard(usd_ceiling({"feature": "f"}, day=10.0), store=store)
    with guard.reserve("f", estimate_usd=0.5) as r:
        r.commit(0.3)
    assert store.settles == 2  # asked again within the deadline: the outcome of the first was unknown
    assert guard.pending == 0  # the second answer (already settled) ended it
    (row,) = guard.status().ceilings
    assert row.spent == pytest.approx(0.3)  # the retry was a no-op, not a second $0.30
    guard.close()


@pytest.mark.slow
def test_kill_switch_reaches_eight_processes_within_the_cache_ttl(shared_store_url: str) -> None:
    cache_ms = 300.0
    guard = workers.guard_for(shared_store_url, 10**12)
    ready = SPAWN.Barrier(9)
    results = SPAWN.Queue()
    watchers = [
        SPAWN.Process(target=workers.watch_killswitch, args=(shared_store_url, cache_ms, ready, results, 30.0))
        for _ in range(8)
    ]
    for watcher in watchers:
        watcher.start()
    ready.wait(120)  # every watcher is up and polling
    time.sleep(0.5)
    activated = time.time()
    guard.killswitch.activate(reason="drill", actor="test")
    seen = [results.get(timeout=60) for _ in watchers]
    for watcher in watchers:
        watcher.join(30)
    guard.close()
    assert all(s is not None for s in seen), seen
    lags = sorted(s - activated for s in seen if s is not None)
    # The cache TTL plus one round trip, plus polling and scheduling slack on a small machine.
    assert lags[-1] <= cache_ms / 1000 + 0.5, lags


def test_a_process_that_saw_the_switch_keeps_blocking_through_an_outage() -> None:
    store = FlakyStore()
    clock = FakeClock("2026-05-12T10:00:00Z")
    saw = make_guard(usd_ceiling({"feature": "f"}, day=10.0), store=store, clock=clock)
    fresh_open = make_guard(usd_ceiling({"feature": "f"}, day=10.0), store=store, clock=clock)
    fresh_closed = make_guard(
        usd_ceiling({"feature": "f"}, day=10.0),
        store=store,
        clock=clock,
        features={"f": FeatureSettings(on_store_error="closed")},
    )
    saw.killswitch.activate(reason="incident", actor="ops")
    with pytest.raises(Blocked):
        saw.reserve("f", estimate_usd=0.01)
    store.down = True
    clock.advance(5)  # every cache is stale: each guard must ask the store, which is down
    for _ in range(3):
        with pytest.raises(Blocked) as info:
            saw.reserve("f", estimate_usd=0.01)
        assert info.value.decision.reason == "kill_switch"
    with fresh_open.reserve("f", estimate_usd=0.01) as r:  # never saw it: on_store_error open
        assert r.decision.reason == "store_error"
    with pytest.raises(Blocked) as closed:
        fresh_closed.reserve("f", estimate_usd=0.01)
    assert closed.value.decision.reason == "store_error"
    for g in (saw, fresh_open, fresh_closed):
        g.close(timeout=0.1)
