"""Prometheus metrics (`costguard.metrics`): a scripted run scraped, store errors, bounded series, the observer hook."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from costguard import Blocked, BudgetExceeded, FeatureSettings, Guard, Period, Unit
from costguard.decision import Decision
from costguard.metrics import collector, exposition, registry_for
from costguard.stores import CounterRow, MemoryStore
from costguard.telemetry import OTHER
from costguard.testing import RecordingNotifier
from helpers import FlakyStore, SwitchableRedis, make_guard, usd_ceiling

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]

FEATURE = usd_ceiling({"feature": "chat"}, day=1.0)
PER_CUSTOMER = usd_ceiling({"feature": "chat", "customer": "*"}, day=0.05)


def scrape(registry: CollectorRegistry) -> Samples:
    """Every sample of a scrape, parsed back from the text format as Prometheus reads it."""
    text = exposition(registry)[0].decode()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


def named(samples: Samples, name: str) -> list[dict[str, str]]:
    return [dict(labels) for (n, labels) in samples if n == name]


def spend(guard: Guard, customer: str, estimate: float, actual: float) -> None:
    with guard.reserve("chat", customer=customer, estimate_usd=estimate) as r:
        r.commit(actual)


def scripted_run(guard: Guard) -> None:
    """acme spends $0.048 in four calls (past 80 % of its $0.05), globex $0.012, then acme is refused."""
    for _ in range(4):
        spend(guard, "acme", 0.01, 0.012)
    spend(guard, "globex", 0.01, 0.012)
    with pytest.raises(BudgetExceeded):
        spend(guard, "acme", 0.01, 0.01)


def test_a_scrape_after_a_scripted_run_has_the_calls_the_spend_and_the_alerts() -> None:
    guard = make_guard(FEATURE, PER_CUSTOMER)
    registry = CollectorRegistry()
    registry.register(collector(guard, cache_s=0))
    scripted_run(guard)
    samples = scrape(registry)

    assert value(samples, "costguard_calls_total", feature="chat", decision="allowed") == 5
    assert value(samples, "costguard_calls_total", feature="chat", decision="blocked") == 1
    assert value(samples, "costguard_blocked_total", feature="chat", reason="budget_exceeded") == 1
    assert value(samples, "costguard_alerts_total", kind="warn") == 1  # acme past 80 %
    assert value(samples, "costguard_alerts_total", kind="kill") == 1  # acme refused

    acme = {"ceiling": PER_CUSTOMER.id, "period": "day", "feature": "chat", "customer": "acme"}
    acme["scope"] = "customer=acme,feature=chat"
    assert value(samples, "costguard_spent_usd", **acme) == pytest.approx(0.048)
    assert value(samples, "costguard_limit_usd", **acme) == pytest.approx(0.05)
    assert value(samples, "costguard_reserved_usd", **acme) == 0
    globex = {**acme, "customer": "globex", "scope": "customer=globex,feature=chat"}
    assert value(samples, "costguard_spent_usd", **globex) == pytest.approx(0.012)
    whole = {"ceiling": FEATURE.id, "period": "day", "feature": "chat", "customer": "", "scope": "feature=chat"}
    assert value(samples, "costguard_spent_usd", **whole) == pytest.approx(0.06)
    assert value(samples, "costguard_limit_usd", **whole) == pytest.approx(1.0)
    assert value(samples, "costguard_counters", ceiling=PER_CUSTOMER.id, period="day") == 2

    assert value(samples, "costguard_overhead_seconds_count", phase="reserve") == 6
    assert value(samples, "costguard_overhead_seconds_count", phase="settle") == 5
    assert value(samples, "costguard_store_seconds_count", op="reserve") == 6
    assert value(samples, "costguard_store_seconds_count", op="settle") == 5
    assert value(samples, "costguard_store_up") == 1
    assert value(samples, "costguard_commit_queue") == 0
    assert value(samples, "costguard_unrecorded_usd") == 0


def test_reserved_is_what_is_in_flight_at_the_scrape() -> None:
    guard = make_guard(FEATURE)
    registry = registry_for(guard, cache_s=0)
    with guard.reserve("chat", estimate_usd=0.25):
        during = scrape(registry)
    after = scrape(registry)
    labels = {"ceiling": FEATURE.id, "period": "day", "feature": "chat", "customer": "", "scope": "feature=chat"}
    assert value(during, "costguard_reserved_usd", **labels) == pytest.approx(0.25)
    assert value(during, "costguard_spent_usd", **labels) == pytest.approx(0.25)
    assert value(after, "costguard_reserved_usd", **labels) == 0


def test_a_leased_slice_is_shown_apart_from_what_is_reserved(fleet_store_url: str) -> None:
    """A hot feature on a store that leases: the slice the process holds is in reserved and in leased;
    given back at close, both are 0."""
    roomy = usd_ceiling({"feature": "chat"}, day=100.0)  # far from the cap: worth a slice
    guard = Guard(fleet_store_url, ceilings=[roomy])
    registry = registry_for(guard, cache_s=0)
    for _ in range(30):
        with guard.reserve("chat", estimate_usd=0.001) as r:
            r.commit(0.001)
    labels = {"ceiling": roomy.id, "period": "day", "feature": "chat", "customer": "", "scope": "feature=chat"}
    held = scrape(registry)
    assert value(held, "costguard_leased_usd", **labels) > 0
    assert value(held, "costguard_leased_usd", **labels) == pytest.approx(
        value(held, "costguard_reserved_usd", **labels)
    )
    guard.close()
    check = Guard(fleet_store_url, ceilings=[roomy], leases=False)
    after = scrape(registry_for(check, cache_s=0))
    assert value(after, "costguard_leased_usd", **labels) == 0
    assert value(after, "costguard_spent_usd", **labels) == pytest.approx(0.03)
    check.close()


def test_degraded_calls_and_kill_switch_refusals_have_their_own_labels() -> None:
    guard = make_guard(FEATURE, features={"chat": FeatureSettings(degrade_at=0.5)})
    registry = registry_for(guard, cache_s=0)
    spend(guard, "acme", 0.3, 0.3)
    spend(guard, "acme", 0.3, 0.3)  # reaching 50 %: degraded
    guard.killswitch.activate(reason="drill", actor="test")
    with pytest.raises(Exception, match="drill"):
        spend(guard, "acme", 0.1, 0.1)
    samples = scrape(registry)
    assert value(samples, "costguard_calls_total", feature="chat", decision="allowed") == 1
    assert value(samples, "costguard_calls_total", feature="chat", decision="degraded") == 1
    assert value(samples, "costguard_blocked_total", feature="chat", reason="kill_switch") == 1


class _FlakyReads(FlakyStore):
    """Down for the scrape's read too."""

    def list_counters(self, buckets: Mapping[Period, str]) -> list[CounterRow]:
        self._check()
        return super().list_counters(buckets)


def test_store_errors_unrecorded_admissions_and_the_commit_queue_are_reported() -> None:
    store = _FlakyReads()
    guard = make_guard(FEATURE, store=store, store_deadline_ms=50, spool_dir=False)
    registry = registry_for(guard, cache_s=0)
    store.down = True
    spend(guard, "acme", 0.01, 0.01)  # admitted without a reservation (on_store_error: open)
    samples = scrape(registry)
    assert value(samples, "costguard_calls_total", feature="chat", decision="unreserved") == 1
    errors = {
        labels["kind"]: v
        for (n, labels_), v in samples.items()
        if n == "costguard_store_errors_total"
        for labels in [dict(labels_)]
    }
    assert errors["unavailable"] >= 2  # the control read and the reserve, at least
    assert named(samples, "costguard_store_errors_total")[0]["store"] == "memory"
    assert value(samples, "costguard_unrecorded_usd") == pytest.approx(0.01)
    assert value(samples, "costguard_commit_queue") >= 1
    assert value(samples, "costguard_store_up") == 0
    assert named(samples, "costguard_spent_usd") == []  # no stale numbers when the store did not answer
    store.down = False
    assert guard.flush(5.0)
    samples = scrape(registry)
    assert value(samples, "costguard_unrecorded_usd") == 0
    assert value(samples, "costguard_commit_queue") == 0
    assert value(samples, "costguard_store_up") == 1


def test_the_store_url_never_reaches_a_label() -> None:
    store = FlakyStore()
    store.url = "memory://user:hunter2@example/secret"
    guard = make_guard(FEATURE, store=store, store_deadline_ms=50, spool_dir=False)
    registry = registry_for(guard, cache_s=0)
    store.down = True
    spend(guard, "acme", 0.01, 0.01)
    text = exposition(registry)[0].decode()
    assert "hunter2" not in text
    assert 'store="memory"' in text


WHOLE = {"ceiling": FEATURE.id, "period": "day", "feature": "chat", "customer": "", "scope": "feature=chat"}


def outage_guard(redis: SwitchableRedis, spool: Path, **options: Any) -> Guard:
    """A guard on `redis` spooling in `spool`, up to $1 admitted unreserved; the kill switch read (and
    cached: the clock is fake) while the store answered. No leased slices: their marks are spool entries too."""
    guard = make_guard(FEATURE, store=redis.store, leases=False, outage_allowance_usd=1.0, spool_dir=spool, **options)
    spend(guard, "acme", 0.001, 0.001)
    return guard


def test_an_outage_shows_the_spooled_entries_and_the_unrecorded_usd_until_the_store_has_them(tmp_path: Path) -> None:
    redis = SwitchableRedis()
    guard = outage_guard(redis, tmp_path)
    registry = registry_for(guard, cache_s=0)
    redis.down = True
    for cost in (0.01, 0.02, 0.03):
        spend(guard, "acme", cost, cost)  # admitted without a reservation (on_store_error: open), spooled
    assert not guard.flush(0.1)  # the writer tried: one more failure
    samples = scrape(registry)
    assert value(samples, "costguard_calls_total", feature="chat", decision="unreserved") == 3
    assert value(samples, "costguard_spool_items") == 6  # per call, its forced reserve and its commit
    assert value(samples, "costguard_commit_queue") == 3
    assert value(samples, "costguard_unrecorded_usd") == pytest.approx(0.06)
    assert value(samples, "costguard_dropped_records_total") == 0
    # Each call's reserve (a refused connection is tried twice, and counted once) and the writer's first try.
    assert value(samples, "costguard_store_errors_total", store="redis", kind="unavailable") == 4
    assert value(samples, "costguard_store_up") == 0
    (segment,) = tmp_path.glob("*.jsonl")  # on disk, where spool_dir says: one line per entry
    assert len(segment.read_text(encoding="utf-8").splitlines()) == 6

    redis.down = False
    assert guard.flush(5.0)
    samples = scrape(registry)
    assert value(samples, "costguard_spool_items") == 0
    assert value(samples, "costguard_commit_queue") == 0
    assert value(samples, "costguard_unrecorded_usd") == 0
    assert value(samples, "costguard_store_up") == 1
    assert value(samples, "costguard_spent_usd", **WHOLE) == pytest.approx(0.061)  # every cost, once
    assert value(samples, "costguard_reserved_usd", **WHOLE) == 0
    assert value(samples, "costguard_store_errors_total", store="redis", kind="unavailable") == 4
    guard.close()


def test_writes_a_full_spool_has_no_room_for_are_counted_and_stay_counted(tmp_path: Path) -> None:
    """Room for 4 writes: two admissions fit (a forced reserve and a commit each), the next two are refused."""
    redis = SwitchableRedis()
    notifier = RecordingNotifier()
    guard = outage_guard(redis, tmp_path, buffer_size=4, notifier=notifier)
    registry = registry_for(guard, cache_s=0)
    redis.down = True
    spend(guard, "acme", 0.01, 0.01)
    spend(guard, "acme", 0.02, 0.02)
    for cost in (0.03, 0.04):
        with pytest.raises(Blocked, match=r"the outage spool could not keep the call \(full at buffer_size=4"):
            spend(guard, "acme", cost, cost)
    assert not guard.flush(0.1)
    full = [e for e in notifier.events if e.kind == "store_error" and "spool is full" in (e.reason or "")]
    assert len(full) == 1  # the event is held back for a minute; the counters count each one
    samples = scrape(registry)
    assert value(samples, "costguard_dropped_records_total") == 2
    assert value(samples, "costguard_store_errors_total", store="redis", kind="spool") == 2
    assert value(samples, "costguard_blocked_total", feature="chat", reason="store_error") == 2
    assert value(samples, "costguard_spool_items") == 4
    assert value(samples, "costguard_unrecorded_usd") == pytest.approx(0.03)

    redis.down = False
    assert guard.flush(5.0)
    samples = scrape(registry)
    assert value(samples, "costguard_dropped_records_total") == 2  # a counter: what was refused stays counted
    assert value(samples, "costguard_spool_items") == 0
    assert value(samples, "costguard_unrecorded_usd") == 0
    assert value(samples, "costguard_spent_usd", **WHOLE) == pytest.approx(0.031)  # the admitted calls only
    guard.close()


class _ManyCustomers(MemoryStore):
    """A memory store holding one day counter per customer for `customers` customers (built at read time:
    a hundred thousand real calls would take minutes on a shared CI machine; what is scraped is the same)."""

    def __init__(self, customers: int) -> None:
        super().__init__()
        self.customers = customers

    def list_counters(self, buckets: Mapping[Period, str]) -> list[CounterRow]:
        day = buckets[Period.DAY]
        rows = super().list_counters(buckets)
        for i in range(self.customers):
            scope = (("customer", f"c{i:06d}"), ("feature", "chat"))
            # Customer i spent i micro-dollars: the top ones are known.
            rows.append(CounterRow(f"k{i}", PER_CUSTOMER.id, scope, Period.DAY, Unit.USD, day, i, 0))
        return rows


def test_with_100_000_customers_the_scrape_has_top_n_series_per_ceiling_and_one_for_the_rest() -> None:
    customers, top_n = 100_000, 20
    guard = make_guard(FEATURE, PER_CUSTOMER, store=_ManyCustomers(customers))
    registry = registry_for(guard, top_n=top_n, cache_s=60)
    samples = scrape(registry)
    series = named(samples, "costguard_spent_usd")
    per_customer = [s for s in series if s["ceiling"] == PER_CUSTOMER.id]
    assert len(per_customer) == top_n + 1
    assert len(series) == top_n + 2  # and the feature's own counter
    assert len(samples) < 300  # everything a scrape has, histograms' buckets included
    top = sorted((s["customer"] for s in per_customer if s["scope"] != OTHER), reverse=True)
    assert top == [f"c{i:06d}" for i in range(customers - 1, customers - 1 - top_n, -1)]
    rest = {"ceiling": PER_CUSTOMER.id, "period": "day", "feature": "chat", "customer": OTHER, "scope": OTHER}
    spent_rest = sum(range(customers - top_n)) / 1_000_000
    assert value(samples, "costguard_spent_usd", **rest) == pytest.approx(spent_rest)
    assert value(samples, "costguard_limit_usd", **rest) == pytest.approx(0.05 * (customers - top_n))
    assert value(samples, "costguard_counters", ceiling=PER_CUSTOMER.id, period="day") == customers


def test_one_store_read_serves_scrapes_within_cache_s() -> None:
    guard = make_guard(FEATURE)
    registry = registry_for(guard, cache_s=60)
    first = scrape(registry)
    spend(guard, "acme", 0.1, 0.1)
    cached = scrape(registry)
    labels = {"ceiling": FEATURE.id, "period": "day", "feature": "chat", "customer": "", "scope": "feature=chat"}
    assert value(first, "costguard_spent_usd", **labels) == value(cached, "costguard_spent_usd", **labels) == 0
    assert value(cached, "costguard_calls_total", feature="chat", decision="allowed") == 1  # counters are live


def test_registering_reads_no_store_and_two_collectors_count_each_call_once() -> None:
    store = FlakyStore()
    store.down = True
    guard = make_guard(FEATURE, store=store, store_deadline_ms=50, spool_dir=False)
    before = store.calls
    registry = CollectorRegistry(auto_describe=True)
    registry.register(collector(guard))  # describes its families without a store read
    assert store.calls == before
    other = registry_for(guard, cache_s=0)
    store.down = False
    spend(guard, "acme", 0.01, 0.01)
    assert value(scrape(other), "costguard_calls_total", feature="chat", decision="allowed") == 1
    assert value(scrape(registry), "costguard_calls_total", feature="chat", decision="allowed") == 1


def test_without_metrics_the_call_path_has_no_observer() -> None:
    guard = make_guard(FEATURE)
    assert guard.calls.observer is None
    assert guard.settler.observer is None
    registry_for(guard)
    assert guard.calls.observer is not None
    assert guard.settler.observer is guard.calls.observer


class _Broken:
    def decided(self, decision: Decision, estimate_usd: float | None, seconds: float) -> None:
        raise RuntimeError("observer bug")

    def settled(self, decision: Decision, estimate_usd: float, actual_usd: float | None, seconds: float) -> None:
        raise RuntimeError("observer bug")

    def store_call(self, op: str, seconds: float) -> None:
        raise RuntimeError("observer bug")

    def store_error(self, store: str, kind: str) -> None:
        raise RuntimeError("observer bug")

    def alert(self, kind: str) -> None:
        raise RuntimeError("observer bug")


def test_an_observer_that_raises_never_reaches_the_call_and_others_still_hear(
    caplog: pytest.LogCaptureFixture,
) -> None:
    guard = make_guard(FEATURE)
    guard.observe(_Broken())
    registry = registry_for(guard, cache_s=0)
    spend(guard, "acme", 0.5, 0.5)
    assert value(scrape(registry), "costguard_calls_total", feature="chat", decision="allowed") == 1
    assert guard.status(feature="chat").ceilings[0].spent == pytest.approx(0.5)
    assert "observer bug" in caplog.text


def test_async_calls_are_counted_and_timed() -> None:
    guard = make_guard(FEATURE)
    registry = registry_for(guard, cache_s=0)

    @guard.with_kill_switch("chat", estimate=0.01, cost=0.02)
    async def answer() -> str:
        return "ok"

    assert asyncio.run(answer()) == "ok"
    samples = scrape(registry)
    assert value(samples, "costguard_calls_total", feature="chat", decision="allowed") == 1
    assert value(samples, "costguard_overhead_seconds_count", phase="settle") == 1
    assert value(
        samples,
        "costguard_spent_usd",
        ceiling=FEATURE.id,
        period="day",
        feature="chat",
        customer="",
        scope="feature=chat",
    ) == pytest.approx(0.02)


def test_the_grafana_dashboard_reads_only_series_the_collector_exposes() -> None:
    import json
    import re
    from pathlib import Path

    dashboard = json.loads((Path(__file__).parents[1] / "docs" / "grafana-dashboard.json").read_text(encoding="utf-8"))
    exprs = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    used = {name for expr in exprs for name in re.findall(r"\bcostguard_[a-z_]+", expr)}
    guard = make_guard(FEATURE, PER_CUSTOMER)
    registry = registry_for(guard, cache_s=0)
    scripted_run(guard)
    text = exposition(registry)[0].decode()
    # Series with samples, and families declared without one yet (no store error so far).
    exposed = {name for name, _ in scrape(registry)} | set(re.findall(r"^# TYPE (\S+)", text, re.MULTILINE))
    assert used
    assert used <= exposed, used - exposed


def test_label_values_with_quotes_newlines_and_unicode_come_back_exactly() -> None:
    guard = make_guard(FEATURE, PER_CUSTOMER)
    registry = registry_for(guard, cache_s=0)
    customer = 'ac"me\\\n{x}=ü,y'
    spend(guard, customer, 0.01, 0.01)
    spent = {s["customer"] for s in named(scrape(registry), "costguard_spent_usd") if s["ceiling"] == PER_CUSTOMER.id}
    assert spent == {customer}
