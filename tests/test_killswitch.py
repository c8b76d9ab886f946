"""Kill switch: scopes, exemptions, the per-process cache, fail-closed from known-active, history."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import pytest

import costguard
from costguard import Blocked, KillSwitchActive
from costguard.stores.base import Control
from costguard.testing import FakeClock, RecordingNotifier
from helpers import FlakyStore, make_guard, usd_ceiling

CAP = usd_ceiling({"feature": "f"}, month=100.0)


def allowed(guard: costguard.Guard, feature: str = "f", **labels: str) -> bool:
    try:
        with guard.reserve(feature, estimate_usd=0.01, **labels):
            return True
    except KillSwitchActive:
        return False


def test_global_feature_and_customer_scopes() -> None:
    guard = make_guard(CAP)
    guard.killswitch.activate(reason="incident", scope="feature:f")
    assert not allowed(guard, "f")
    assert allowed(guard, "g")
    guard.killswitch.deactivate(scope={"feature": "f"})
    guard.killswitch.activate(reason="abuse", scope={"customer": "mallory"})
    assert not allowed(guard, "f", customer="mallory")
    assert allowed(guard, "f", customer="alice")
    guard.killswitch.deactivate(scope="customer:mallory")
    guard.killswitch.activate(reason="everything off")
    assert not allowed(guard, "g", customer="alice")
    guard.killswitch.deactivate()
    assert allowed(guard, "g")


def test_blocked_call_says_why() -> None:
    guard = make_guard(CAP)
    guard.killswitch.activate(reason="incident #123", actor="ops", scope="feature:f")
    with pytest.raises(KillSwitchActive) as caught:
        guard.reserve("f")
    assert isinstance(caught.value, Blocked)
    assert caught.value.scope == {"feature": "f"}
    assert caught.value.decision.reason == "kill_switch"
    assert "incident #123" in str(caught.value)
    guard.flush()
    assert guard.audit(decision="blocked")[0].data["reason"] == "kill_switch"


def test_exempt_features_escape_broad_switches_but_not_their_own() -> None:
    guard = make_guard(CAP, exempt_features=["budget_assistant"])
    guard.killswitch.activate(reason="incident")
    assert allowed(guard, "budget_assistant")
    assert not allowed(guard, "f")
    guard.killswitch.activate(reason="this one too", scope="feature:budget_assistant")
    assert not allowed(guard, "budget_assistant")


def test_exempt_features_still_obey_their_ceilings() -> None:
    guard = make_guard(usd_ceiling({"feature": "budget_assistant"}, day=0.01), exempt_features=["budget_assistant"])
    guard.killswitch.activate(reason="incident")
    assert allowed(guard, "budget_assistant")
    with pytest.raises(costguard.BudgetExceeded):
        guard.reserve("budget_assistant", estimate_usd=0.01)


def test_other_processes_follow_within_the_cache_ttl(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'ks.db'}"
    clock = FakeClock()
    operator = make_guard(CAP, store=url, clock=clock)
    worker = make_guard(CAP, store=url, clock=clock)
    assert allowed(worker)  # loads and caches "no switch"
    operator.killswitch.activate(reason="incident")
    clock.advance(0.499)
    assert allowed(worker)  # still within the 500 ms cache
    clock.advance(0.002)
    assert not allowed(worker)
    operator.killswitch.deactivate()
    clock.advance(0.501)
    assert allowed(worker)


def test_cache_means_no_store_read_per_call() -> None:
    store = FlakyStore()
    guard = make_guard(CAP, store=store)
    allowed(guard)
    reads = store.calls
    allowed(guard)
    assert store.calls == reads + 2  # reserve + settle; no control read


def test_known_active_stays_blocking_through_an_outage() -> None:
    store = FlakyStore()
    clock = FakeClock()
    guard = make_guard(CAP, store=store, clock=clock)
    guard.killswitch.activate(reason="incident")
    assert not allowed(guard)
    store.down = True
    for _ in range(3):
        clock.advance(1)
        assert not allowed(guard)  # fail-closed from known-active, whatever on_store_error says


def test_fresh_process_follows_on_store_error() -> None:
    store = FlakyStore()
    store.down = True
    assert allowed(make_guard(CAP, store=store))
    with pytest.raises(Blocked) as caught:
        make_guard(CAP, store=store, on_store_error="closed").reserve("f")
    assert caught.value.decision.reason == "store_error"


def test_activation_needs_a_reason_and_status_has_history() -> None:
    notifier = RecordingNotifier()
    clock = FakeClock()
    guard = make_guard(CAP, clock=clock, notifier=notifier)
    with pytest.raises(ValueError, match="reason"):
        guard.killswitch.activate(reason="")
    with pytest.raises(ValueError, match="scope"):
        guard.killswitch.activate(reason="x", scope="nonsense")
    assert guard.killswitch.activate(reason="incident #1", actor="alice")
    assert not guard.killswitch.activate(reason="again", actor="alice")
    clock.advance(60)
    assert guard.killswitch.deactivate(actor="bob")
    assert not guard.killswitch.deactivate(actor="bob")
    status = guard.killswitch.status()
    assert not status.any_active
    assert [(r.decision, r.data["actor"]) for r in status.history][:2] == [
        ("killswitch_deactivated", "bob"),
        ("killswitch_activated", "alice"),
    ]
    guard.killswitch.activate(reason="incident #2", scope="feature:f")
    status = guard.killswitch.status()
    assert status.switches == status.active
    assert not status.stops()  # one feature is stopped, not everything
    data = status.to_dict()
    assert data["active"] is False  # the shape of GET /v1/killswitch/status
    assert data["switches"][0]["scope"] == {"feature": "f"}
    assert data["switches"][0]["reason"] == "incident #2"
    guard.flush()
    assert notifier.kinds() == ["killswitch_activated", "killswitch_deactivated", "killswitch_activated"]


def test_status_says_whether_a_switch_stops_a_whole_scope() -> None:
    guard = make_guard(CAP, labels=["tenant"])
    guard.killswitch.activate(reason="one feature", scope={"feature": "f"})
    guard.killswitch.activate(reason="acme, one feature", scope={"customer": "acme", "feature": "f"})
    guard.killswitch.activate(reason="globex", scope={"customer": "globex"})
    guard.killswitch.activate(reason="initech", scope={"tenant": "initech"})
    status = guard.killswitch.status()
    assert [status.stops(t) for t in (None, "acme", "globex", "initech")] == [False, False, True, True]
    assert status.to_dict()["active"] is False  # no tenant: only the global switch counts
    guard.killswitch.activate(reason="everything")
    everything = guard.killswitch.status()
    assert [everything.stops(t) for t in (None, "acme")] == [True, True]
    assert everything.to_dict()["active"] is True
    assert len(everything.to_dict()["switches"]) == 5


def test_a_scope_with_a_label_nothing_knows_is_refused_not_a_silent_no_op() -> None:
    guard = make_guard(CAP, labels=["plan"])
    with pytest.raises(ValueError, match=r"unknown label 'featur' in the scope of a kill switch.*Known labels: agent"):
        guard.killswitch.activate(reason="typo", actor="ops", scope={"featur": "f"})
    with pytest.raises(ValueError, match="unknown label 'featur' in the scope of a limit"):
        guard.set_limit({"featur": "f"}, usd=1, reason="typo")
    assert guard.killswitch.status().active == ()
    assert guard.store.control().overrides == ()
    guard.killswitch.activate(reason="declared", actor="ops", scope={"plan": "free"})  # a declared label
    guard.killswitch.activate(reason="standard", actor="ops", scope={"team": "search"})  # a standard one
    guard.set_limit({"vendor": "twilio"}, usd=1, reason="a new scope on a standard label")
    assert "vendor" in guard.known_labels()


def test_activated_by_names_who_turned_exactly_that_switch_on() -> None:
    guard = make_guard(usd_ceiling({"feature": "f"}, day=1.0))
    assert guard.killswitch.activated_by({"feature": "f"}) is None
    guard.killswitch.activate(reason="incident", actor="ops", scope={"feature": "f"})
    assert guard.killswitch.activated_by({"feature": "f"}) == "ops"
    assert guard.killswitch.activated_by("feature:f") == "ops"
    assert guard.killswitch.activated_by(None) is None  # the global switch is another one
    guard.close()


class SlowControl(FlakyStore):
    """Its control read takes 50 ms (a round trip on a busy server) and is counted; it fails while `down`."""

    def __init__(self) -> None:
        super().__init__()
        self.control_reads = 0

    def control(self) -> Control:
        self.control_reads += 1
        time.sleep(0.05)
        return super().control()


def test_a_burst_of_threads_reads_the_control_state_once() -> None:
    """32 threads find the copy stale together: one reads, the others wait for its reading (32 reads
    would queue on the process's connections and spend the calls' deadlines there)."""
    store = SlowControl()
    clock = FakeClock()
    guard = make_guard(CAP, store=store, clock=clock)
    guard.killswitch.activate(reason="incident", scope="feature:f")
    for expected in (False, True):  # a cold process, then a stale copy after the switch went off
        clock.advance(1)
        store.control_reads = 0
        start = threading.Barrier(32)
        results: list[bool] = []

        def call(start: threading.Barrier, results: list[bool]) -> None:
            start.wait()
            results.append(allowed(guard))

        threads = [threading.Thread(target=call, args=(start, results)) for _ in range(32)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert results == [expected] * 32  # every caller saw the state in force
        assert store.control_reads == 1
        guard.killswitch.deactivate(scope="feature:f", reason="over")


def test_a_burst_of_tasks_reads_the_control_state_once() -> None:
    store = SlowControl()
    guard = make_guard(CAP, store=store)

    async def burst() -> list[bool]:
        async def one() -> bool:
            try:
                async with guard.areserve("f", estimate_usd=0.01):
                    return True
            except KillSwitchActive:
                return False

        return await asyncio.gather(*(one() for _ in range(32)))

    assert asyncio.run(burst()) == [True] * 32
    assert store.control_reads == 1


def test_callers_waiting_on_a_failed_read_go_on_with_the_last_state() -> None:
    """The read they waited for failed: the last known state stays in force (a switch seen on keeps
    blocking), and nobody waits past the deadline for it."""
    store = SlowControl()
    clock = FakeClock()
    guard = make_guard(CAP, store=store, clock=clock, store_deadline_ms=300)
    guard.killswitch.activate(reason="incident", scope="feature:f")
    assert not allowed(guard)
    store.down = True
    clock.advance(1)
    results: list[bool] = []
    threads = [threading.Thread(target=lambda: results.append(allowed(guard))) for _ in range(8)]
    began = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == [False] * 8
    assert time.monotonic() - began < 2.0


def test_a_read_abandoned_mid_way_is_taken_over_after_the_deadline() -> None:
    """A read whose caller never came back (forked away, or its generator dropped) doesn't keep the
    others waiting: past the deadline the next caller reads for itself."""
    store = SlowControl()
    clock = FakeClock()
    guard = make_guard(CAP, store=store, clock=clock, store_deadline_ms=200)
    view = guard.control
    clock.advance(1)
    stalled = view.refresh(clock(), None)
    next(stalled)  # the read is asked for, and its answer never comes
    time.sleep(0.25)
    guard.killswitch.activate(reason="incident", scope="feature:f")
    clock.advance(1)
    reads = store.control_reads
    assert not allowed(guard)
    assert store.control_reads == reads + 1
