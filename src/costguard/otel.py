"""OpenTelemetry for a guard: `costguard.otel.instrument(guard)`.

Needs the `otel` extra: `pip install "costguard-ai[otel]"` (the API only; your app brings the SDK and
exporters). The same instruments as `costguard.metrics`, through the global meter provider (or the
one given), and a `costguard.decision` span event on the current span for each guarded call: when
it is refused, or when it settles (decision, estimate, actual) — so a trace shows why a call was
degraded or refused. docs/metrics.md lists every instrument and attribute.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

try:
    from opentelemetry import metrics, trace
    from opentelemetry.metrics import CallbackOptions, MeterProvider, Observation
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError('costguard.otel needs opentelemetry-api: pip install "costguard-ai[otel]"') from exc

from costguard._version import __version__
from costguard.decision import Decision
from costguard.model import encode_scope
from costguard.observe import call_outcome
from costguard.telemetry import DEFAULT_CACHE_S, DEFAULT_TOP_N, SERIES_LABELS, Snapshot, Snapshots

if TYPE_CHECKING:
    from costguard.guard import Guard

__all__ = ["EVENT", "OtelObserver", "instrument"]

EVENT = "costguard.decision"
_SHARED_READ_S = 1.0

_Attributes = dict[str, str | float | bool]


class OtelObserver:
    """OpenTelemetry instruments of one guard, and the span event of each guarded call."""

    def __init__(self, guard: Guard, meter_provider: MeterProvider | None, top_n: int, cache_s: float) -> None:
        meter = metrics.get_meter("costguard", __version__, meter_provider=meter_provider)
        # A reader calls the gauges' callbacks one by one: a floor of one second makes them share a read.
        self.snapshots = Snapshots(guard, top_n=top_n, cache_s=max(cache_s, _SHARED_READ_S))
        self.calls = meter.create_counter("costguard_calls", "1", "Guarded calls by outcome.")
        self.blocked = meter.create_counter("costguard_blocked", "1", "Guarded calls refused, by why.")
        self.store_errors = meter.create_counter("costguard_store_errors", "1", "Failed store calls.")
        self.alerts = meter.create_counter("costguard_alerts", "1", "Events sent to the notifiers, by kind.")
        self.overhead = meter.create_histogram(
            "costguard_overhead_seconds", "s", "Time a guarded call spends in costguard, by phase."
        )
        self.store_seconds = meter.create_histogram(
            "costguard_store_seconds", "s", "Time of a guarded call's store calls, by operation."
        )
        series: Iterable[tuple[str, str, Callable[[Snapshot], Iterable[Observation]]]] = (
            ("costguard_spent_usd", "Spend in the current period, in flight included.", _series("spent_usd")),
            ("costguard_limit_usd", "The limit in force for the period.", _series("limit_usd")),
            ("costguard_reserved_usd", "Reservations in flight.", _series("reserved_usd")),
            ("costguard_leased_usd", "The part of the reservations held by leased slices.", _series("leased_usd")),
            ("costguard_counters", "Counters a ceiling has in its current period.", _counters),
            ("costguard_store_up", "Whether the store answered the last read.", _one("store_up")),
            ("costguard_unrecorded_usd", "USD admitted while the store was unreachable.", _one("unrecorded_usd")),
            ("costguard_commit_queue", "Calls whose cost the store does not have yet.", _one("pending")),
            ("costguard_spool_items", "Entries in this process's outage spool.", _one("spool_items")),
            ("costguard_dropped_records", "Writes the spool had no room for.", _one("dropped_records")),
        )
        for name, description, read in series:
            meter.create_observable_gauge(name, [self._callback(read)], description=description)

    def _callback(
        self, read: Callable[[Snapshot], Iterable[Observation]]
    ) -> Callable[[CallbackOptions], Iterable[Observation]]:
        def callback(_options: CallbackOptions) -> Iterable[Observation]:
            return list(read(self.snapshots.get()))  # one store read per `cache_s`, shared by every gauge

        return callback

    # ----------------------------------------------------------------- the guard's reports
    def decided(self, decision: Decision, estimate_usd: float | None, seconds: float) -> None:
        """Count the call; a refused one gets its span event now (an admitted one when it settles)."""
        feature = decision.labels.get("feature", "")
        outcome = call_outcome(decision)
        self.calls.add(1, {"feature": feature, "decision": outcome})
        self.overhead.record(seconds, {"phase": "reserve"})
        if not decision.allowed:
            self.blocked.add(1, {"feature": feature, "reason": decision.reason})
            _event(decision, outcome, estimate_usd, None)

    def settled(self, decision: Decision, estimate_usd: float, actual_usd: float | None, seconds: float) -> None:
        """Time the settle; the call's span event (decision, estimate, actual)."""
        self.overhead.record(seconds, {"phase": "settle"})
        _event(decision, call_outcome(decision), estimate_usd, actual_usd, released=actual_usd is None)

    def store_call(self, op: str, seconds: float) -> None:
        """Time a store call."""
        self.store_seconds.record(seconds, {"op": op})

    def store_error(self, store: str, kind: str) -> None:
        """Count a store error."""
        self.store_errors.add(1, {"store": store, "kind": kind})

    def alert(self, kind: str) -> None:
        """Count an event."""
        self.alerts.add(1, {"kind": kind})


def _event(
    decision: Decision, outcome: str, estimate_usd: float | None, actual_usd: float | None, *, released: bool = False
) -> None:
    span = trace.get_current_span()
    if not span.is_recording():
        return
    attributes: _Attributes = {
        "costguard.feature": decision.labels.get("feature", ""),
        "costguard.decision": outcome,
        "costguard.reason": decision.reason,
    }
    if estimate_usd is not None:
        attributes["costguard.estimate_usd"] = estimate_usd
    if actual_usd is not None:
        attributes["costguard.actual_usd"] = actual_usd
    if released:
        attributes["costguard.released"] = True
    if decision.scope:
        attributes["costguard.scope"] = encode_scope(decision.scope)
    if decision.period is not None:
        attributes["costguard.period"] = decision.period
    if decision.unit == "usd" and decision.spent is not None and decision.limit is not None:
        attributes["costguard.spent_usd"] = decision.spent
        attributes["costguard.limit_usd"] = decision.limit
    span.add_event(EVENT, attributes)


def _series(field: str) -> Callable[[Snapshot], Iterable[Observation]]:
    def read(snapshot: Snapshot) -> Iterable[Observation]:
        for series in snapshot.series:
            yield Observation(getattr(series, field), dict(zip(SERIES_LABELS, series.labels, strict=True)))

    return read


def _counters(snapshot: Snapshot) -> Iterable[Observation]:
    for (ceiling, period), count in snapshot.counters.items():
        yield Observation(count, {"ceiling": ceiling, "period": period})


def _one(field: str) -> Callable[[Snapshot], Iterable[Observation]]:
    def read(snapshot: Snapshot) -> Iterable[Observation]:
        yield Observation(float(getattr(snapshot, field)))

    return read


_instrumented: weakref.WeakKeyDictionary[Guard, OtelObserver] = weakref.WeakKeyDictionary()
_lock = threading.Lock()


def instrument(
    guard: Guard,
    *,
    meter_provider: MeterProvider | None = None,
    top_n: int = DEFAULT_TOP_N,
    cache_s: float = DEFAULT_CACHE_S,
) -> OtelObserver:
    """Report `guard` through OpenTelemetry: its instruments on `meter_provider` (default: the global one)
    and a span event per guarded call. Once per guard: a second call returns the first observer."""
    with _lock:
        observer = _instrumented.get(guard)
        if observer is None:
            observer = _instrumented[guard] = OtelObserver(guard, meter_provider, top_n, cache_s)
            guard.observe(observer)
        return observer
