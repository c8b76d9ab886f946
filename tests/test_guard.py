"""Guard: reservations, commits, checks, status, limits, units, periods and store failures."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from pathlib import Path

import pytest

import costguard
from costguard import Blocked, BudgetExceeded, Ceiling, FeatureSettings, Guard, Limit, Period, Unit
from costguard.engine import CommitOutcome, ReserveOutcome, ReservePlan
from costguard.errors import StoreTimeout, StoreUnavailable
from costguard.events import AuditRecord
from costguard.model import make_match
from costguard.stores import MemoryStore
from costguard.testing import FakeClock, RecordingNotifier
from helpers import FlakyStore, make_guard, usd_ceiling


def test_one_dollar_cap_admits_exactly_250_calls_at_0_004() -> None:
    guard = make_guard(usd_ceiling({"feature": "f"}, month=1.0))
    allowed = 0
    with pytest.raises(BudgetExceeded):
        while True:
            with guard.reserve("f", estimate_usd=0.004):
                allowed += 1
    assert allowed == 250
    assert guard.status().ceilings[0].spent == 1.0


def test_blocked_carries_scope_period_spend_limit_and_retry_after() -> None:
    clock = FakeClock("2026-05-31T23:00:00Z")
    guard = make_guard(usd_ceiling({"feature": "f", "customer": "*"}, day=0.02), clock=clock)
    with guard.reserve("f", customer="acme", estimate_usd=0.02):
        pass
    with pytest.raises(BudgetExceeded) as caught:
        guard.reserve("f", customer="acme", estimate_usd=0.01)
    err = caught.value
    assert isinstance(err, Blocked)
    assert err.scope == {"feature": "f", "customer": "acme"}
    assert (err.period, err.spent_usd, err.limit_usd) == ("day", 0.02, 0.02)
    assert err.retry_after_s == 3600.0
    assert "acme" in str(err)
    assert err.decision.reason == "budget_exceeded"


def test_commit_records_actual_and_charges() -> None:
    guard = make_guard(usd_ceiling({"feature": "f"}, month=10.0))
    with guard.reserve("f", estimate_usd=0.05) as r:
        costguard.charge(0.002, "search API")
        r.commit(0.013)
    assert guard.status().ceilings[0].spent == 0.015
    with guard.reserve("f", estimate_usd=0.05):
        pass  # no actual given: the estimate stands
    assert guard.status().ceilings[0].spent == 0.065


def test_exception_releases_but_keeps_charges() -> None:
    guard = make_guard(usd_ceiling({"feature": "f"}, month=10.0))
    with pytest.raises(RuntimeError), guard.reserve("f", estimate_usd=0.05):
        raise RuntimeError("model timed out")
    assert guard.status().ceilings[0].spent == 0.0
    with pytest.raises(RuntimeError), guard.reserve("f", estimate_usd=0.05):
        costguard.charge(0.01)
        raise RuntimeError("failed after a paid tool call")
    assert guard.status().ceilings[0].spent == 0.01


def test_on_call_error_keep_counts_the_estimate() -> None:
    guard = make_guard(usd_ceiling({"feature": "f"}, month=10.0), on_call_error="keep")
    with pytest.raises(RuntimeError), guard.reserve("f", estimate_usd=0.05):
        raise RuntimeError
    assert guard.status().ceilings[0].spent == 0.05


def test_charge_outside_a_guarded_call_is_an_error() -> None:
    with pytest.raises(RuntimeError, match="outside a guarded call"):
        costguard.charge(0.01)


def test_bad_amounts_are_rejected() -> None:
    guard = make_guard(usd_ceiling({"feature": "f"}, month=1.0))
    for bad in (-0.01, float("nan"), float("inf"), "abc", True):
        with pytest.raises(ValueError):
            guard.reserve("f", estimate_usd=bad)
    assert guard.status().ceilings[0].spent == 0.0


def test_commit_and_release_by_id_are_idempotent() -> None:
    guard = make_guard(usd_ceiling({"feature": "f"}, month=1.0))
    r = guard.reserve("f", estimate_usd=0.1)
    assert guard.commit(r.id, 0.05)
    assert not guard.commit(r.id, 0.05)
    assert not guard.release(r.id)
    assert guard.status().ceilings[0].spent == 0.05
    r2 = guard.reserve("f", estimate_usd=0.1)
    assert guard.release(r2.id)
    assert guard.status().ceilings[0].spent == 0.05


def test_reservation_is_charged_to_the_day_it_was_made() -> None:
    clock = FakeClock("2026-05-12T23:59:59.900Z")
    guard = make_guard(usd_ceiling({"feature": "f"}, day=1.0), clock=clock)
    r = guard.reserve("f", estimate_usd=0.2)
    clock.set("2026-05-13T00:00:00.500Z")
    r.commit(0.3)
    assert guard.status().ceilings[0].spent == 0.0  # today is untouched
    clock.set("2026-05-12T23:59:59.950Z")
    assert guard.status().ceilings[0].spent == 0.3


def test_month_boundary_in_a_non_utc_timezone() -> None:
    # 2026-02-01 00:30 in Tokyo is still January 31 in UTC.
    clock = FakeClock("2026-01-31T15:20:00Z")  # 00:20 on Feb 1 in Tokyo
    guard = make_guard(usd_ceiling({"feature": "f"}, month=1.0), clock=clock, timezone="Asia/Tokyo")
    with guard.reserve("f", estimate_usd=0.4):
        pass
    clock.set("2026-01-31T14:50:00Z")  # 23:50 on Jan 31 in Tokyo
    assert guard.status().ceilings[0].spent == 0.0
    clock.set("2026-02-27T14:59:59Z")  # 23:59:59 on Feb 27 in Tokyo
    assert guard.status().ceilings[0].spent == 0.4
    assert guard.status().ceilings[0].resets_at is not None
    assert guard.status().ceilings[0].resets_at.isoformat() == "2026-02-28T15:00:00+00:00"


def test_every_matching_ceiling_must_fit_hierarchy() -> None:
    guard = make_guard(
        usd_ceiling({"feature": "search"}, month=5.0),
        usd_ceiling({"team": "*", "feature": "search"}, month=0.05),
        usd_ceiling({"vendor": "twilio"}, month=0.03),
    )
    with costguard.context(team="growth"):
        for _ in range(5):
            with guard.reserve("search", estimate_usd=0.01):
                pass
        with pytest.raises(BudgetExceeded) as caught:
            guard.reserve("search", estimate_usd=0.01)
    assert caught.value.scope == {"team": "growth", "feature": "search"}
    with costguard.context(team="infra"):
        with guard.reserve("search", estimate_usd=0.01):
            pass
    # The vendor ceiling aggregates across features.
    for feature in ("sms", "voice", "alerts"):
        with guard.reserve(feature, vendor="twilio", estimate_usd=0.01):
            pass
    with pytest.raises(BudgetExceeded):
        guard.reserve("other", vendor="twilio", estimate_usd=0.01)


def test_context_labels_nest_and_reset() -> None:
    guard = make_guard(usd_ceiling({"customer": "*"}, month=0.01))
    with costguard.context(customer="acme"), costguard.context(team="x"):
        with guard.reserve("f", estimate_usd=0.01) as r:
            assert dict(r.plan.labels) == {"customer": "acme", "feature": "f", "team": "x"}
    assert costguard.current.current_labels() == {}
    with guard.reserve("f", estimate_usd=0.01):  # no customer: the per-customer ceiling doesn't apply
        pass


def test_soft_ceiling_never_blocks_and_marks_degraded() -> None:
    notifier = RecordingNotifier()
    guard = make_guard(usd_ceiling({"feature": "f"}, enforcement="soft", day=0.02), notifier=notifier)
    decisions = []
    for _ in range(4):
        with guard.reserve("f", estimate_usd=0.01) as r:
            decisions.append(r.decision.degraded)
    assert decisions == [False, True, True, True]
    guard.flush()
    assert [(e.kind, e.threshold) for e in notifier.events] == [("warn", 0.8), ("warn", 1.0)]


def test_calls_and_tokens_are_units_of_their_own() -> None:
    guard = make_guard(
        Ceiling(make_match({"feature": "f"}), (Limit(Period.DAY, Unit.CALLS, 3), Limit(Period.DAY, Unit.TOKENS, 1000))),
        features={"f": FeatureSettings(estimate_tokens=300)},
    )
    with guard.reserve("f") as r:
        r.commit(tokens=100)
    with guard.reserve("f"):
        pass  # the estimate of 300 tokens stands
    rows = {row.unit: row for row in guard.status().ceilings}
    assert (rows["calls"].spent, rows["tokens"].spent) == (2.0, 400.0)
    with guard.reserve("f", estimate_tokens=600):
        pass
    with pytest.raises(BudgetExceeded) as caught:
        guard.reserve("f", estimate_tokens=0)  # three calls used: the call ceiling is full
    assert caught.value.decision.unit == "calls"
    assert caught.value.spent_usd is None


def test_check_is_read_only() -> None:
    guard = make_guard(usd_ceiling({"feature": "f"}, day=0.02))
    assert guard.check("f", estimate_usd=0.02).allowed
    assert guard.check("f", estimate_usd=0.03).reason == "budget_exceeded"
    assert guard.status().ceilings[0].spent == 0.0


def test_status_lists_every_ceiling_and_filters() -> None:
    guard = make_guard(
        usd_ceiling({"feature": "f"}, month=1.0, day=0.5),
        usd_ceiling({"feature": "f", "customer": "*"}, month=0.2),
    )
    for customer in ("acme", "bob"):
        with guard.reserve("f", customer=customer, estimate_usd=0.05):
            pass
    status = guard.status()
    assert len(status.ceilings) == 4
    acme = guard.status(customer="acme").ceilings
    assert [(c.labels["customer"], c.spent, c.limit) for c in acme] == [("acme", 0.05, 0.2)]
    row = guard.status(feature="f").to_dict()["ceilings"][0]
    assert {"spent_usd", "limit_usd", "remaining_usd", "resets_at", "ratio"} <= set(row)


def test_set_limit_persists_with_reason_and_reaches_other_processes(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'cg.db'}"
    clock = FakeClock()
    ceiling = usd_ceiling({"feature": "f"}, month=0.02)
    first = make_guard(ceiling, store=url, clock=clock)
    second = make_guard(ceiling, store=url, clock=clock)  # another process on the same store
    with first.reserve("f", estimate_usd=0.02):
        pass
    assert not second.check("f", estimate_usd=0.01).allowed
    with pytest.raises(ValueError, match="reason"):
        first.set_limit({"feature": "f"}, period="month", usd=1.0, reason=" ")
    first.set_limit({"feature": "f"}, period="month", usd=1.0, reason="launch week", actor="ops")
    assert first.check("f", estimate_usd=0.01).allowed  # at once in this process
    assert not second.check("f", estimate_usd=0.01).allowed  # the other process' cache is fresh...
    clock.advance(0.5)
    assert second.check("f", estimate_usd=0.01).allowed  # ...for at most cache_ms
    record = first.audit(decision="limit_changed")[0]
    assert record.data["reason"] == "launch week"
    assert (record.data["old"], record.data["new"], record.data["actor"]) == (0.02, 1.0, "ops")
    third = make_guard(ceiling, store=url, clock=clock)  # a restart keeps the override
    assert third.status().ceilings[0].limit == 1.0
    first.clear_limit({"feature": "f"}, period="month", reason="launch over")
    assert first.status().ceilings[0].limit == 0.02


def test_set_limit_on_one_customer_of_a_wildcard_ceiling() -> None:
    guard = make_guard(usd_ceiling({"customer": "*"}, month=0.01))
    guard.set_limit({"customer": "acme"}, usd=0.05, reason="enterprise plan")
    for _ in range(5):
        with guard.reserve("f", customer="acme", estimate_usd=0.01):
            pass
    with pytest.raises(BudgetExceeded):
        guard.reserve("f", customer="acme", estimate_usd=0.01)
    with guard.reserve("f", customer="bob", estimate_usd=0.01):
        pass
    with pytest.raises(BudgetExceeded):
        guard.reserve("f", customer="bob", estimate_usd=0.01)


def test_set_limit_on_an_unconfigured_scope_adds_a_ceiling() -> None:
    guard = make_guard()
    guard.set_limit({"team": "growth"}, period="day", usd=0.01, reason="runaway agent")
    with costguard.context(team="growth"):
        with guard.reserve("f", estimate_usd=0.01):
            pass
        with pytest.raises(BudgetExceeded):
            guard.reserve("g", estimate_usd=0.01)
    with guard.reserve("f", estimate_usd=0.5):
        pass


def test_set_limit_validates_input() -> None:
    guard = make_guard()
    with pytest.raises(ValueError, match="exactly one"):
        guard.set_limit({"feature": "f"}, usd=1, calls=2, reason="x")
    with pytest.raises(ValueError, match="period"):
        guard.set_limit({"feature": "f"}, period="fortnight", usd=1, reason="x")
    with pytest.raises(ValueError):
        guard.set_limit({"feature": "f"}, usd=-1, reason="x")
    assert guard.store.control().overrides == ()


def test_thresholds_alert_once_and_one_jump_sends_both() -> None:
    notifier = RecordingNotifier()
    guard = make_guard(usd_ceiling({"feature": "f"}, day=1.0), notifier=notifier)
    with guard.reserve("f", estimate_usd=0.7):
        pass
    with guard.reserve("f", estimate_usd=0.01) as r:
        r.commit(0.35)  # 70 % → 105 %
    with pytest.raises(BudgetExceeded):
        guard.reserve("f", estimate_usd=0.01)
    guard.flush()
    assert [(e.kind, e.threshold) for e in notifier.events] == [("warn", 0.8), ("kill", 1.0)]
    kill = notifier.events[1]
    assert (kill.period, kill.spent_usd, kill.limit_usd, kill.labels) == ("day", 1.05, 1.0, {"feature": "f"})


def test_store_down_open_allows_and_buffers_costs() -> None:
    store = FlakyStore()
    guard = make_guard(usd_ceiling({"feature": "f"}, month=1.0), store=store, outage_allowance_usd=0.05)
    with guard.reserve("f", estimate_usd=0.01):
        pass
    store.down = True
    for _ in range(3):
        with guard.reserve("f", estimate_usd=0.01) as r:
            assert r.decision.reason == "store_error"
            r.commit(0.02)
    assert guard.pending == 3
    store.down = False
    assert guard.flush()
    assert guard.pending == 0
    assert guard.status().ceilings[0].spent == 0.07  # nothing lost, nothing double counted
    assert guard.flush()
    assert guard.status().ceilings[0].spent == 0.07


def test_store_down_closed_serves_blocked() -> None:
    store = FlakyStore()
    guard = make_guard(usd_ceiling({"feature": "f"}, month=1.0), store=store, on_store_error="closed")
    store.down = True
    with pytest.raises(Blocked) as caught:
        guard.reserve("f", estimate_usd=0.01)
    assert caught.value.decision.reason == "store_error"
    assert not isinstance(caught.value, BudgetExceeded)


def test_per_feature_store_policy_overrides_the_guard() -> None:
    store = FlakyStore()
    guard = make_guard(
        usd_ceiling({"feature": "f"}, month=1.0),
        store=store,
        features={"payments": FeatureSettings(on_store_error="closed")},
    )
    store.down = True
    with guard.reserve("f", estimate_usd=0.01):
        pass
    with pytest.raises(Blocked):
        guard.reserve("payments", estimate_usd=0.01)


def test_a_full_spool_refuses_admissions_instead_of_dropping_costs() -> None:
    """Each admission while the store is down is kept (its forced reserve, then its commit): with room
    for 4 writes, two calls fit; the third is refused as `closed` would, with an error event."""
    store = FlakyStore()
    notifier = RecordingNotifier()
    guard = make_guard(
        usd_ceiling({"feature": "f"}, month=1.0),
        store=store,
        buffer_size=4,
        outage_allowance_usd=1.0,
        notifier=notifier,
    )
    store.down = True
    for _ in range(2):
        with guard.reserve("f", estimate_usd=0.01):
            pass
    with pytest.raises(Blocked) as refused:
        guard.reserve("f", estimate_usd=0.01)
    assert refused.value.decision.reason == "store_error"
    assert (guard.pending, guard.dropped_records) == (2, 1)
    guard.flush(0.1)
    assert any("spool is full" in (e.reason or "") for e in notifier.events)
    store.down = False
    assert guard.flush()
    assert guard.status().ceilings[0].spent == 0.02  # the two admitted calls, nothing dropped


def test_label_values_are_validated() -> None:
    guard = make_guard(usd_ceiling({"customer": "*"}, month=1.0))
    with pytest.raises(costguard.LabelError, match="customer"):
        guard.reserve("f", customer="x" * 300)
    with pytest.raises(costguard.LabelError):
        guard.reserve("f", customer=3.5)
    long_ok = make_guard(usd_ceiling({"customer": "*"}, month=1.0), max_label_length=20_000)
    with long_ok.reserve("f", customer="é\n{:}" * 2000, estimate_usd=0.01):
        pass


def test_async_reserve_commits_without_blocking_the_loop() -> None:
    guard = make_guard(usd_ceiling({"feature": "f"}, month=1.0))

    async def main() -> None:
        async with guard.areserve("f", estimate_usd=0.05) as r:
            costguard.charge(0.001)
            await r.acommit(0.02)
        with pytest.raises(BudgetExceeded):
            async with guard.areserve("f", estimate_usd=5):
                pass
        with pytest.raises(RuntimeError):
            async with guard.areserve("f", estimate_usd=0.5):
                raise RuntimeError
        reservation = await guard.areserve("f", estimate_usd=0.1)
        await reservation.arelease()

    asyncio.run(main())
    assert guard.status().ceilings[0].spent == 0.021


def test_guard_closes_cleanly_and_flushes_alerts() -> None:
    notifier = RecordingNotifier()
    with make_guard(usd_ceiling({"feature": "f"}, day=0.01), notifier=notifier) as guard:
        with guard.reserve("f", estimate_usd=0.01):
            pass
    assert notifier.kinds() == ["warn", "kill"]


def test_duplicate_ceilings_are_rejected() -> None:
    with pytest.raises(ValueError, match="same match"):
        Guard("memory://", ceilings=[usd_ceiling({"feature": "f"}, day=1), usd_ceiling({"feature": "f"}, month=1)])


def test_budget_refusals_are_audited_as_blocked() -> None:
    guard = make_guard(usd_ceiling({"feature": "f"}, day=0.01))
    with guard.reserve("f", estimate_usd=0.01):
        pass
    with pytest.raises(BudgetExceeded):
        guard.reserve("f", estimate_usd=0.01)
    record = guard.audit(decision="blocked")[0]
    assert record.data["reason"] == "budget_exceeded"
    assert (record.data["scope"], record.data["spent"], record.data["limit"]) == ({"feature": "f"}, 0.01, 0.01)


def test_current_limit_reads_overrides_fresh_from_the_store() -> None:
    store = MemoryStore()
    first = make_guard(usd_ceiling({"feature": "f"}, month=5.0), store=store)
    second = make_guard(usd_ceiling({"feature": "f"}, month=5.0), store=store)
    assert second.current_limit({"feature": "f"}, "month") == 5.0
    first.set_limit({"feature": "f"}, period="month", usd=7.5, reason="raise")
    assert second.current_limit({"feature": "f"}, "month") == 7.5  # not the other guard's cached view
    assert second.current_limit({"feature": "f"}, "day") is None
    assert second.current_limit({"feature": "g"}, "month") is None


def test_a_guard_from_yaml_keeps_its_admin_block(tmp_path: Path) -> None:
    path = tmp_path / "costguard.yaml"
    path.write_text("store: memory://\nadmin:\n  tokens:\n    - {name: ops, token: s3cr3t-token-value, role: admin}\n")
    guard = Guard.from_yaml(path)
    assert [t.name for t in guard.admin.tokens] == ["ops"]
    guard.close()


# --------------------------------------------------------------------------- outages: bounded open, spool


def test_open_admits_at_most_the_allowance_of_the_tightest_hard_ceiling() -> None:
    """$5/day for the customer is the tightest hard USD ceiling: 1 % of it, $0.05, may be admitted
    unreserved per process and feature; the soft $1 ceiling doesn't count."""
    store = FlakyStore()
    notifier = RecordingNotifier()
    guard = make_guard(
        usd_ceiling({"feature": "f"}, month=50.0),
        usd_ceiling({"customer": "*"}, day=5.0),
        usd_ceiling({"customer": "acme"}, "soft", day=1.0),
        store=store,
        notifier=notifier,
    )
    store.down = True
    for _ in range(5):
        with guard.reserve("f", estimate_usd=0.01, customer="acme") as r:
            assert r.decision.reason == "store_error"
    assert guard.unrecorded_usd == 0.05
    with pytest.raises(Blocked, match=r"f's outage allowance \(\$0.05 per process\) is used up") as refused:
        guard.reserve("f", estimate_usd=0.01, customer="acme")
    assert refused.value.decision.reason == "store_error"
    guard.flush(0.1)
    (event,) = [e for e in notifier.events if e.kind == "store_error"]
    assert event.to_dict()["unrecorded_usd"] == 0.0  # reported at the first failure, before any admission
    store.down = False
    assert guard.flush()
    assert guard.unrecorded_usd == 0.0  # recorded: the allowance is free again
    status = guard.status()
    assert (status.unrecorded_usd, status.spooled) == (0.0, 0)
    assert [row.spent for row in status.ceilings] == [0.05, 0.05, 0.05]  # every ceiling, once


def test_the_allowance_is_capped_at_one_dollar_and_can_be_set_per_feature() -> None:
    store = FlakyStore()
    guard = make_guard(
        usd_ceiling({"feature": "f"}, month=1000.0),
        usd_ceiling({"feature": "g"}, month=1000.0),
        store=store,
        features={"g": FeatureSettings(outage_allowance_usd=300_000)},
    )
    store.down = True
    admitted = {"f": 0, "g": 0}
    for feature in admitted:
        for _ in range(200):
            try:
                with guard.reserve(feature, estimate_usd=0.1):
                    admitted[feature] += 1
            except Blocked:
                break
    assert admitted == {"f": 10, "g": 3}  # $1 (not 1 % of $1000), and g's own $0.30
    assert guard.unrecorded_usd == 1.3
    explicit = make_guard(usd_ceiling({"feature": "f"}, month=1.0), store=store, outage_allowance_usd=0.5)
    with explicit.reserve("f", estimate_usd=0.4):
        pass
    with pytest.raises(Blocked):
        explicit.reserve("f", estimate_usd=0.2)  # 0.4 + 0.2 would pass $0.50
    store.down = False
    assert guard.flush()
    assert explicit.flush()


class AppliedThenLost(MemoryStore):
    """A store that applies each reserve but never gets the reply back while `lose` is set."""

    remote = True  # stands in for a server: the guard bounds its calls by the deadline and asks again

    def __init__(self) -> None:
        super().__init__()
        self.lose = True

    def reserve(self, plan: ReservePlan, record: AuditRecord | None) -> ReserveOutcome:
        outcome = super().reserve(plan, record)
        if self.lose:
            raise StoreTimeout("no reply (test)")
        return outcome

    def settle(
        self, reservation_id: str, actual: Mapping[Unit, int] | None, at: float, record: AuditRecord | None
    ) -> CommitOutcome:
        if self.lose:
            raise StoreUnavailable("down (test)")
        return super().settle(reservation_id, actual, at, record)


def test_a_refused_call_whose_reserve_may_have_been_applied_is_released() -> None:
    store = AppliedThenLost()
    guard = make_guard(
        usd_ceiling({"feature": "f"}, day=1.0), store=store, on_store_error="closed", store_deadline_ms=50
    )
    with pytest.raises(Blocked) as refused:
        guard.reserve("f", estimate_usd=0.3)
    assert refused.value.decision.reason == "store_error"
    assert store.totals(list(store._counters))[0] == 300_000  # the store did apply it
    assert guard.pending == 1  # its release waits for the store
    store.lose = False
    assert guard.flush()
    assert guard.status().ceilings[0].spent == 0.0  # released: a refused call costs nothing


def test_an_async_call_is_admitted_unreserved_and_recorded_later() -> None:
    store = FlakyStore()
    guard = make_guard(usd_ceiling({"feature": "f"}, month=100.0), store=store)
    store.down = True

    async def main() -> str:
        async with guard.areserve("f", estimate_usd=0.02) as r:
            assert r.decision.reason == "store_error"
            await r.acommit(0.015)
        return "done"

    assert asyncio.run(main()) == "done"
    assert (guard.pending, guard.unrecorded_usd) == (1, 0.02)
    store.down = False
    assert guard.flush()
    assert guard.status().ceilings[0].spent == 0.015


def test_the_log_says_what_happened_when_outage_admissions_pass_a_cap(caplog: pytest.LogCaptureFixture) -> None:
    store = FlakyStore()
    guard = make_guard(usd_ceiling({"feature": "f"}, day=0.05), store=store, outage_allowance_usd=1.0)
    with guard.reserve("f", estimate_usd=0.04):
        pass
    store.down = True
    with caplog.at_level(logging.WARNING, logger="costguard"):
        for _ in range(3):
            with guard.reserve("f", estimate_usd=0.01):
                pass
        store.down = False
        assert guard.flush()
    assert "admitting calls without a reservation (on_store_error: open), at most $1 per feature" in caplog.text
    assert "over its limit after commit: 0.07 of 0.05 (a call admitted while the store could not be reached" in (
        caplog.text
    )
    assert "actual cost exceeded the estimate" not in caplog.text
    assert guard.status().ceilings[0].spent == 0.07
