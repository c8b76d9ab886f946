"""OpenTelemetry (`costguard.otel`): the instruments in an in-memory reader, span events in an in-memory exporter."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import costguard
from costguard import BudgetExceeded, FeatureSettings, Guard, Period
from costguard.otel import EVENT, instrument
from costguard.stores import CounterRow, MemoryStore
from helpers import make_guard, usd_ceiling

FEATURE = usd_ceiling({"feature": "chat"}, day=1.0)
PER_CUSTOMER = usd_ceiling({"feature": "chat", "customer": "*"}, day=0.05)

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
