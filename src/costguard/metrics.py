"""Prometheus metrics for a guard: `registry.register(costguard.metrics.collector(guard))`.

Needs the `prometheus` extra: `pip install "costguard-ai[prometheus]"`. The collector counts this
process's guarded calls (calls, refusals, store errors, alerts; time in the guard and in the store)
and, at each scrape, reads every USD ceiling's spend, limit and reserve from the store — one read
per `cache_s`, with per-customer (any `"*"` label) series only for the `top_n` by spend and the rest
summed into `scope="__other__"`. docs/metrics.md lists every series.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Iterator
from typing import TYPE_CHECKING

try:
    from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
    from prometheus_client.registry import Collector
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError('costguard.metrics needs prometheus-client: pip install "costguard-ai[prometheus]"') from exc

from costguard.decision import Decision
from costguard.observe import call_outcome
from costguard.telemetry import DEFAULT_CACHE_S, DEFAULT_TOP_N, SERIES_LABELS, Snapshots

if TYPE_CHECKING:
    from costguard.guard import Guard

__all__ = ["CostGuardCollector", "PrometheusObserver", "collector", "exposition", "registry_for"]

# Seconds: a guard's own work is sub-millisecond, a remote store's round trip a few ms, a deadline 2 s.
_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class PrometheusObserver:
    """Counters and histograms fed by a guard's call path (not registered anywhere: a collector yields them)."""

    def __init__(self) -> None:
        self.calls = Counter("costguard_calls", "Guarded calls by outcome.", ["feature", "decision"], registry=None)
        self.blocked = Counter(
            "costguard_blocked", "Guarded calls refused, by why.", ["feature", "reason"], registry=None
        )
        self.store_errors = Counter(
            "costguard_store_errors", "Failed store calls, by backend and kind.", ["store", "kind"], registry=None
        )
        self.alerts = Counter("costguard_alerts", "Events sent to the notifiers, by kind.", ["kind"], registry=None)
        self.overhead = Histogram(
            "costguard_overhead_seconds",
            "Time a guarded call spends in costguard (store calls included), by phase: reserve, settle.",
            ["phase"],
            buckets=_BUCKETS,
            registry=None,
        )
        self.store_seconds = Histogram(
            "costguard_store_seconds",
            "Time of a guarded call's store calls (retries within the deadline included), by operation.",
            ["op"],
            buckets=_BUCKETS,
            registry=None,
        )
        # Children by label values: a dict read per call instead of `labels()`'s lock and checks.
        self._counted: dict[tuple[object, ...], Counter] = {}
        self._timed: dict[str, Histogram] = {}
        self._reserve = self.overhead.labels("reserve")
        self._settle = self.overhead.labels("settle")

    def _count(self, metric: Counter, *values: str) -> None:
        key = (id(metric), *values)
        child = self._counted.get(key)
        if child is None:
            child = self._counted.setdefault(key, metric.labels(*values))
        child.inc()

    def decided(self, decision: Decision, estimate_usd: float | None, seconds: float) -> None:
        """Count the call, and its refusal's reason; time the reserve."""
        feature = decision.labels.get("feature", "")
        self._count(self.calls, feature, call_outcome(decision))
        if not decision.allowed:
            self._count(self.blocked, feature, decision.reason)
        self._reserve.observe(seconds)

    def settled(self, decision: Decision, estimate_usd: float, actual_usd: float | None, seconds: float) -> None:
        """Time the settle."""
        self._settle.observe(seconds)

    def store_call(self, op: str, seconds: float) -> None:
        """Time a store call."""
        child = self._timed.get(op)
        if child is None:
            child = self._timed.setdefault(op, self.store_seconds.labels(op))
        child.observe(seconds)

    def store_error(self, store: str, kind: str) -> None:
        """Count a store error."""
        self._count(self.store_errors, store, kind)

    def alert(self, kind: str) -> None:
        """Count an event."""
        self._count(self.alerts, kind)

    def collect(self) -> Iterator[Metric]:
        """The counters' and histograms' families."""
        for metric in (self.calls, self.blocked, self.store_errors, self.alerts, self.overhead, self.store_seconds):
            yield from metric.collect()


_observers: weakref.WeakKeyDictionary[Guard, PrometheusObserver] = weakref.WeakKeyDictionary()
_observers_lock = threading.Lock()


def _observer_of(guard: Guard) -> PrometheusObserver:
    """One observer per guard, however many collectors read it (each call counted once)."""
    with _observers_lock:
        observer = _observers.get(guard)
        if observer is None:
            observer = _observers[guard] = PrometheusObserver()
            guard.observe(observer)
        return observer


class CostGuardCollector(Collector):
    """A prometheus-client collector of one guard: its call counters and, per scrape, the store's spend."""

    def __init__(self, guard: Guard, *, top_n: int = DEFAULT_TOP_N, cache_s: float = DEFAULT_CACHE_S) -> None:
        self.snapshots = Snapshots(guard, top_n=top_n, cache_s=cache_s)
        self.observer = _observer_of(guard)

    def describe(self) -> Iterator[Metric]:
        """The families, without samples (registering reads no store)."""
        yield from self._gauges(None)
        yield from self.observer.collect()

    def collect(self) -> Iterator[Metric]:
        """Every family with its samples; the spend gauges from one (cached) store read."""
        yield from self.observer.collect()
        yield from self._gauges(self.snapshots)

    @staticmethod
    def _gauges(snapshots: Snapshots | None) -> list[Metric]:
        labels = list(SERIES_LABELS)
        spent = GaugeMetricFamily(
            "costguard_spent_usd", "Spend in the current period, reservations in flight included.", labels=labels
        )
        limit = GaugeMetricFamily("costguard_limit_usd", "The limit in force for the period.", labels=labels)
        reserved = GaugeMetricFamily("costguard_reserved_usd", "Reservations in flight.", labels=labels)
        leased = GaugeMetricFamily(
            "costguard_leased_usd", "The part of the reservations held by leased slices.", labels=labels
        )
        counters = GaugeMetricFamily(
            "costguard_counters",
            "Counters a ceiling has in its current period (the top N of them have their own series).",
            labels=["ceiling", "period"],
        )
        up = GaugeMetricFamily("costguard_store_up", "Whether the store answered the last scrape's read.")
        unrecorded = GaugeMetricFamily(
            "costguard_unrecorded_usd", "USD admitted while the store was unreachable, not yet recorded (this process)."
        )
        pending = GaugeMetricFamily(
            "costguard_commit_queue", "Calls whose cost the store does not have yet: queued or spooled (this process)."
        )
        spool = GaugeMetricFamily("costguard_spool_items", "Entries in this process's outage spool on disk.")
        dropped = CounterMetricFamily("costguard_dropped_records", "Writes the spool had no room for (this process).")
        families: list[Metric] = [spent, limit, reserved, leased, counters, up, unrecorded, pending, spool, dropped]
        if snapshots is None:
            return families
        snap = snapshots.get()
        for series in snap.series:
            values = list(series.labels)
            spent.add_metric(values, series.spent_usd)
            limit.add_metric(values, series.limit_usd)
            reserved.add_metric(values, series.reserved_usd)
            leased.add_metric(values, series.leased_usd)
        for (ceiling, period), count in snap.counters.items():
            counters.add_metric([ceiling, period], count)
        up.add_metric([], 1.0 if snap.store_up else 0.0)
        unrecorded.add_metric([], snap.unrecorded_usd)
        pending.add_metric([], snap.pending)
        spool.add_metric([], snap.spool_items)
        dropped.add_metric([], snap.dropped_records)
        return families


def collector(guard: Guard, *, top_n: int = DEFAULT_TOP_N, cache_s: float = DEFAULT_CACHE_S) -> CostGuardCollector:
    """A collector for your registry: `prometheus_client.REGISTRY.register(costguard.metrics.collector(guard))`.

    `top_n`: per ceiling with a `"*"` label, how many of its counters (the most spent) get their own
    series; the rest are summed into one. `cache_s`: how long one store read serves scrapes."""
    return CostGuardCollector(guard, top_n=top_n, cache_s=cache_s)


def registry_for(guard: Guard, *, top_n: int = DEFAULT_TOP_N, cache_s: float = DEFAULT_CACHE_S) -> CollectorRegistry:
    """A registry of its own holding only `guard`'s collector (what `costguard serve` exposes at `/metrics`)."""
    registry = CollectorRegistry(auto_describe=True)
    registry.register(collector(guard, top_n=top_n, cache_s=cache_s))
    return registry


def exposition(registry: CollectorRegistry) -> tuple[bytes, str]:
    """The registry in the Prometheus text format, and its content type."""
    from prometheus_client import CONTENT_TYPE_LATEST

    return generate_latest(registry), CONTENT_TYPE_LATEST
