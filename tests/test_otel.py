"""OpenTelemetry (`costguard.otel`): the instruments in an in-memory reader, span events in an in-memory exporter."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import costguard
from costguard import Blocked, BudgetExceeded, FeatureSettings, Guard, Period
from costguard.otel import EVENT, instrument
from costguard.stores import CounterRow, MemoryStore
from costguard.testing import FakeClock
from helpers import SwitchableRedis, make_guard, usd_ceiling

FEATURE = usd_ceiling({"feature": "chat"}, day=1.0)
PER_CUSTOMER = usd_ceiling({"feature": "chat", "customer": "*"}, day=0.05)
WHOLE = {"ceiling": FEATURE.id, "period": "day", "feature": "chat", "customer": "", "scope": "feature=chat"}

Points = dict[str, list[tuple[dict[str, Any], Any]]]


@pytest.fixture(name="reader")
def reader_fixture() -> InMemoryMetricReader:
    return InMemoryMetricReader()


@pytest.fixture(name="tracing")
def tracing_fixture() -> tuple[TracerProvider, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider, exporter


def points(reader: InMemoryMetricReader) -> Points:
    """Every data point of one collection, by instrument name: (attributes, point)."""
    data = reader.get_metrics_data()
    out: Points = {}
    assert data is not None
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                out[metric.name] = [(dict(p.attributes or {}), p) for p in metric.data.data_points]
    return out


def number(found: Points, name: str, **attributes: str) -> float:
    matches = [p for attrs, p in found[name] if attrs == attributes]
    assert len(matches) == 1, (name, attributes, found.get(name))
    return float(matches[0].value)


def spend(guard: Guard, customer: str, estimate: float, actual: float) -> None:
    with guard.reserve("chat", customer=customer, estimate_usd=estimate) as r:
        r.commit(actual)


def test_the_instruments_count_calls_refusals_alerts_and_read_the_spend(reader: InMemoryMetricReader) -> None:
    guard = make_guard(FEATURE, PER_CUSTOMER)
    instrument(guard, meter_provider=MeterProvider(metric_readers=[reader]), cache_s=0)
    for _ in range(4):
        spend(guard, "acme", 0.01, 0.012)
    with pytest.raises(BudgetExceeded):
        spend(guard, "acme", 0.01, 0.01)
    found = points(reader)
    assert number(found, "costguard_calls", feature="chat", decision="allowed") == 4
    assert number(found, "costguard_calls", feature="chat", decision="blocked") == 1
    assert number(found, "costguard_blocked", feature="chat", reason="budget_exceeded") == 1
    assert number(found, "costguard_alerts", kind="warn") == 1
    assert number(found, "costguard_alerts", kind="kill") == 1
    acme = {"ceiling": PER_CUSTOMER.id, "period": "day", "feature": "chat", "customer": "acme"}
    assert number(found, "costguard_spent_usd", **acme, scope="customer=acme,feature=chat") == pytest.approx(0.048)
    assert number(found, "costguard_limit_usd", **acme, scope="customer=acme,feature=chat") == pytest.approx(0.05)
    assert number(found, "costguard_store_up") == 1
    overhead = {attrs["phase"]: p.count for attrs, p in found["costguard_overhead_seconds"]}
    assert overhead == {"reserve": 5, "settle": 4}
    assert {attrs["op"] for attrs, _ in found["costguard_store_seconds"]} >= {"reserve", "settle"}


def test_each_guarded_call_leaves_a_span_event_saying_why(
    reader: InMemoryMetricReader, tracing: tuple[TracerProvider, InMemorySpanExporter]
) -> None:
    provider, exporter = tracing
    tracer = provider.get_tracer("test")
    guard = make_guard(FEATURE, PER_CUSTOMER, features={"chat": FeatureSettings(degrade_at=0.5)})
    instrument(guard, meter_provider=MeterProvider(metric_readers=[reader]))

    @guard.with_kill_switch("chat", estimate=0.02, cost=0.03, fallback="busy", degrade=lambda: "cheap")
    def answer() -> str:
        return "full"

    with tracer.start_as_current_span("request"):
        results = [_with_customer(answer, "acme") for _ in range(3)]
    assert results == ["full", "cheap", "busy"]  # $0.03, then past 50 % of $0.05: degraded, then refused
    spans = {span.name: span for span in exporter.get_finished_spans()}
    events = [dict(e.attributes or {}) for e in spans["request"].events if e.name == EVENT]
    assert [e["costguard.decision"] for e in events] == ["allowed", "degraded", "blocked"]
    assert events[0]["costguard.estimate_usd"] == pytest.approx(0.02)
    assert events[0]["costguard.actual_usd"] == pytest.approx(0.03)
    assert events[1]["costguard.actual_usd"] == pytest.approx(0.03)
    assert events[2]["costguard.reason"] == "budget_exceeded"
    assert events[2]["costguard.scope"] == "customer=acme,feature=chat"
    assert events[2]["costguard.limit_usd"] == pytest.approx(0.05)
    assert "costguard.actual_usd" not in events[2]


def _with_customer(fn: Any, customer: str) -> Any:
    with costguard.context(customer=customer):
        return fn()


def test_a_released_call_says_so_and_async_calls_get_events_too(
    reader: InMemoryMetricReader, tracing: tuple[TracerProvider, InMemorySpanExporter]
) -> None:
    provider, exporter = tracing
    tracer = provider.get_tracer("test")
    guard = make_guard(FEATURE)
    instrument(guard, meter_provider=MeterProvider(metric_readers=[reader]))

    @guard.with_kill_switch("chat", estimate=0.01)
    async def fails() -> str:
        raise RuntimeError("vendor down")

    async def main() -> None:
        with tracer.start_as_current_span("async"):
            with pytest.raises(RuntimeError):
                await fails()

    asyncio.run(main())
    (span,) = exporter.get_finished_spans()
    (event,) = [dict(e.attributes or {}) for e in span.events if e.name == EVENT]
    assert event["costguard.decision"] == "allowed"
    assert event["costguard.released"] is True
    assert "costguard.actual_usd" not in event


def test_instrument_is_once_per_guard_and_no_span_means_no_event(reader: InMemoryMetricReader) -> None:
    guard = make_guard(FEATURE)
    provider = MeterProvider(metric_readers=[reader])
    first = instrument(guard, meter_provider=provider)
    assert instrument(guard, meter_provider=provider) is first
    spend(guard, "acme", 0.01, 0.01)  # no current span: nothing to add to, nothing raised
    assert number(points(reader), "costguard_calls", feature="chat", decision="allowed") == 1


class _CountingReads(MemoryStore):
    def __init__(self) -> None:
        super().__init__()
        self.reads = 0

    def list_counters(self, buckets: Mapping[Period, str]) -> list[CounterRow]:
        self.reads += 1
        return super().list_counters(buckets)


def test_one_collection_reads_the_store_once_for_every_gauge(reader: InMemoryMetricReader) -> None:
    store = _CountingReads()
    guard = make_guard(FEATURE, store=store)
    instrument(guard, meter_provider=MeterProvider(metric_readers=[reader]), cache_s=0)
    spend(guard, "acme", 0.01, 0.01)
    found = points(reader)
    assert number(
        found,
        "costguard_spent_usd",
        ceiling=FEATURE.id,
        period="day",
        feature="chat",
        customer="",
        scope="feature=chat",
    ) == pytest.approx(0.01)
    assert number(found, "costguard_commit_queue") == 0
    assert store.reads == 1


def instrumented(guard: Guard, reader: InMemoryMetricReader) -> FakeClock:
    """`instrument(guard)` with a reader; the clock of its store reads, moved past the (at least one
    second) cache to make the next collection read the store again."""
    observer = instrument(guard, meter_provider=MeterProvider(metric_readers=[reader]), cache_s=0)
    clock = FakeClock(0.0)
    observer.snapshots.clock = clock
    return clock


def test_reserved_usd_is_what_is_in_flight_at_the_collection(reader: InMemoryMetricReader) -> None:
    guard = make_guard(FEATURE)
    clock = instrumented(guard, reader)
    with guard.reserve("chat", estimate_usd=0.25) as r:
        during = points(reader)
        r.commit(0.2)
    clock.advance(1.0)
    after = points(reader)
    assert number(during, "costguard_reserved_usd", **WHOLE) == pytest.approx(0.25)
    assert number(during, "costguard_spent_usd", **WHOLE) == pytest.approx(0.25)
    assert number(after, "costguard_reserved_usd", **WHOLE) == 0
    assert number(after, "costguard_spent_usd", **WHOLE) == pytest.approx(0.2)


def outage_guard(redis: SwitchableRedis, spool: Path, **options: Any) -> Guard:
    """A guard on `redis` spooling in `spool`, up to $1 admitted unreserved; the kill switch read (and
    cached: the clock is fake) while the store answered. No leased slices: their marks are spool entries too."""
    guard = make_guard(FEATURE, store=redis.store, leases=False, outage_allowance_usd=1.0, spool_dir=spool, **options)
    spend(guard, "acme", 0.001, 0.001)
    return guard


def test_an_outage_shows_in_store_errors_unrecorded_usd_and_spool_items(
    reader: InMemoryMetricReader, tmp_path: Path
) -> None:
    redis = SwitchableRedis()
    guard = outage_guard(redis, tmp_path)
    clock = instrumented(guard, reader)
    redis.down = True
    for cost in (0.01, 0.02, 0.03):
        spend(guard, "acme", cost, cost)  # admitted without a reservation (on_store_error: open), spooled
    assert not guard.flush(0.1)  # the writer tried: one more failure
    found = points(reader)
    assert number(found, "costguard_calls", feature="chat", decision="unreserved") == 3
    # Each call's reserve (a refused connection is tried twice, and counted once) and the writer's first try.
    assert number(found, "costguard_store_errors", store="redis", kind="unavailable") == 4
    assert number(found, "costguard_unrecorded_usd") == pytest.approx(0.06)
    assert number(found, "costguard_spool_items") == 6  # per call, its forced reserve and its commit
    assert number(found, "costguard_commit_queue") == 3
    assert number(found, "costguard_dropped_records") == 0
    assert number(found, "costguard_store_up") == 0
    assert found.get("costguard_spent_usd", []) == []  # no stale numbers when the store did not answer

    redis.down = False
    assert guard.flush(5.0)
    clock.advance(1.0)
    found = points(reader)
    assert number(found, "costguard_unrecorded_usd") == 0
    assert number(found, "costguard_spool_items") == 0
    assert number(found, "costguard_commit_queue") == 0
    assert number(found, "costguard_store_up") == 1
    assert number(found, "costguard_spent_usd", **WHOLE) == pytest.approx(0.061)  # every cost, once
    assert number(found, "costguard_reserved_usd", **WHOLE) == 0
    assert number(found, "costguard_store_errors", store="redis", kind="unavailable") == 4
    guard.close()


def test_a_full_spool_shows_in_dropped_records_and_spool_store_errors(
    reader: InMemoryMetricReader, tmp_path: Path
) -> None:
    """Room for 4 writes: two admissions fit (a forced reserve and a commit each), the next two are refused."""
    redis = SwitchableRedis()
    guard = outage_guard(redis, tmp_path, buffer_size=4)
    instrumented(guard, reader)
    redis.down = True
    spend(guard, "acme", 0.01, 0.01)
    spend(guard, "acme", 0.02, 0.02)
    for cost in (0.03, 0.04):
        with pytest.raises(Blocked, match="the outage spool could not keep the call"):
            spend(guard, "acme", cost, cost)
    found = points(reader)
    assert number(found, "costguard_dropped_records") == 2
    assert number(found, "costguard_store_errors", store="redis", kind="spool") == 2
    assert number(found, "costguard_blocked", feature="chat", reason="store_error") == 2
    assert number(found, "costguard_spool_items") == 4
    assert number(found, "costguard_unrecorded_usd") == pytest.approx(0.03)
    redis.down = False
    assert guard.flush(5.0)
    guard.close()
