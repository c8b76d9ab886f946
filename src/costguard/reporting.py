"""Reporting: what a guard tells the world besides its answer — alerts, audit records, store errors.

Everything here runs beside the call and never raises into it: events go to the notifier lanes,
audit records of refused calls and cache writes to a background worker, and store errors are
logged and alerted at most once a minute per topic.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import replace
from datetime import datetime, timezone
from typing import Any
from urllib.parse import urlsplit

from costguard import engine
from costguard.errors import StoreError
from costguard.events import NEW_PERIOD, AuditRecord, Event, EventKind
from costguard.model import encode_scope, micros_to_usd
from costguard.notify.dispatcher import Background, Dispatcher, LaneStats, Notifier
from costguard.observe import Fanout, error_kind
from costguard.stores.base import Store

__all__ = ["Reporter"]

log = logging.getLogger("costguard")

_STORE_ERROR_EVENT_EVERY_S = 60.0
_AUDIT_BATCH = 1000  # records per store append
_AUDIT_LINGER_S = 0.1  # how long the first record of a batch waits for others
_AUDIT_BACKLOG = 20_000  # records waiting at most; past it the caller writes a batch itself


def _bucket_of(crossing: engine.Crossing) -> str:
    """The period bucket a crossing is about: for a kill cleared by a new period, the one that ended."""
    op = crossing.counter
    if crossing.cleared and crossing.reason == NEW_PERIOD and op.previous_key:
        return op.previous_key.rpartition("|")[2]
    return op.bucket


class Reporter:
    """Alerts, background audit writes and throttled store-error reports of one guard."""

    def __init__(
        self,
        store: Store,
        notifiers: Iterable[Notifier],
        *,
        clock: Callable[[], float],
        queue_size: int,
        group_s: float | None,
    ) -> None:
        self.store = store
        self.clock = clock
        self.notifiers: list[Notifier] = list(notifiers)
        self.alerts = Dispatcher(self.notifiers, queue_size=queue_size, group_s=group_s)
        self.background = Background()
        self.unrecorded: Callable[[], int] = lambda: 0  # set by the guard: USD admitted, not yet recorded
        self._error_lock = threading.Lock()
        self._error_reports: dict[str, tuple[float, int]] = {}  # topic -> (last report, reports held back)
        self._outage_logged = False
        self._audit_lock = threading.Lock()
        self._audit_write_lock = threading.Lock()
        self._audit_pending: list[AuditRecord | _Incomplete] = []
        self._audit_scheduled = False
        self._audit_hurry = threading.Event()  # set while someone waits for the background work
        self.audit_dropped = 0  # records the store did not take (it was down)
        self.observer: Fanout | None = None  # metrics and traces (`Guard.observe`)
        # The backend's name for metrics: the URL's scheme only (the URL may hold a password).
        self.store_kind = urlsplit(store.url).scheme.partition("+")[0] or type(store).__name__

    # ----------------------------------------------------------------- events
    def notify(self, event: Event) -> None:
        """Hand an event to every notifier's lane (never blocks, never raises)."""
        if self.observer is not None:
            self.observer.alert(event.kind)
        self.alerts.dispatch(event)

    def crossings(self, crossings: Sequence[engine.Crossing], now: float) -> None:
        """Alert on the thresholds a reserve or commit crossed (warn, kill, kill cleared)."""
        if not crossings:
            return
        at = datetime.fromtimestamp(now, timezone.utc)
        for crossing in crossings:
            op = crossing.counter
            kind: EventKind
            if crossing.cleared:
                if not op.hard:
                    continue  # a soft ceiling never killed anything
                kind = "kill_cleared"
            else:
                kind = "kill" if crossing.threshold >= 1.0 and op.hard else "warn"
            self.notify(
                Event(
                    kind=kind,
                    labels=dict(op.scope),
                    at=at,
                    threshold=crossing.threshold,
                    period=op.period.value,
                    unit=op.unit.value,
                    spent=op.display(crossing.total),
                    limit=op.display(op.limit),
                    reason=crossing.reason or None,
                    ceiling=op.ceiling_id,
                    resets_at=None if op.resets_at is None else datetime.fromtimestamp(op.resets_at, timezone.utc),
                    enforcement="hard" if op.hard else "soft",
                    bucket=_bucket_of(crossing),
                )
            )

    def settled(self, outcome: engine.CommitOutcome, at: float, forced: bool) -> None:
        """A settle the store applied: its crossings, and a warning for every hard ceiling left over its limit."""
        self.crossings(outcome.crossings, at)
        for op, total in zip(outcome.counters, outcome.totals, strict=True):
            if op.hard and total > op.limit:
                log.warning(
                    "costguard: %s %s ceiling %s is over its limit after commit: %g of %g (%s)",
                    op.period.value,
                    op.unit.value,
                    encode_scope(dict(op.scope)) or "(all)",
                    op.display(total),
                    op.display(op.limit),
                    "a call admitted while the store could not be reached, now recorded"
                    if forced
                    else "the actual cost exceeded the estimate",
                )

    # ----------------------------------------------------------------- background writes
    def audit_later(self, record: AuditRecord, complete: Callable[[], Mapping[str, Any]] | None = None) -> None:
        """Append an audit record from the background worker, in batches. When `_AUDIT_BACKLOG` records
        wait already, the caller writes a batch itself: the log slows a flood down, it never drops it.
        `complete` gives more `data` entries, computed when the record is written, not on the caller's
        thread (a call served from slices: its ceilings' totals)."""
        overflow: list[AuditRecord | _Incomplete] = []
        with self._audit_lock:
            pending = self._audit_pending
            pending.append(record if complete is None else _Incomplete(record, complete))
            if len(pending) > _AUDIT_BACKLOG:
                overflow = pending[:_AUDIT_BATCH]
                del pending[:_AUDIT_BATCH]
            schedule = not self._audit_scheduled
            self._audit_scheduled = True
        if schedule:
            self.background.submit(self._write_audit)
        if overflow:
            with self._audit_write_lock:
                self._append_audit(overflow)

    def _write_audit(self) -> None:
        self._audit_hurry.wait(_AUDIT_LINGER_S)  # let a batch gather: one append for many calls
        self._drain_audit(scheduled=True)

    def _drain_audit(self, *, scheduled: bool) -> None:
        while True:
            with self._audit_write_lock:  # taken and written in one go: close() waits for a batch in flight
                with self._audit_lock:
                    batch = self._audit_pending[:_AUDIT_BATCH]
                    del self._audit_pending[:_AUDIT_BATCH]
                    if not batch:
                        if scheduled:
                            self._audit_scheduled = False
                        return
                self._append_audit(batch)

    def _append_audit(self, pending: list[AuditRecord | _Incomplete]) -> None:
        batch = [item.record() if isinstance(item, _Incomplete) else item for item in pending]
        try:
            self.store.append(batch)
        except StoreError as exc:
            with self._audit_lock:
                self.audit_dropped += len(batch)
            self.store_error(exc, f"audit write ({len(batch)} records not written)", topic="audit")
        except Exception:  # a bug must not stop every later write
            with self._audit_lock:
                self.audit_dropped += len(batch)
            log.exception("costguard: %d audit records not written", len(batch))

    def later(self, task: Callable[[], object]) -> None:
        """Run `task` on the background worker (cache writes, purges)."""
        self.background.submit(task)

    # ----------------------------------------------------------------- store errors
    def store_error(self, exc: StoreError, during: str, *, topic: str = "store") -> None:
        """Log and alert, at most once a minute per topic (an outage fails every call: one report, with
        a count of the rest, is what an operator can use)."""
        if self.observer is not None:  # every error counts; only the log and the event are throttled
            self.observer.store_error(self.store_kind, error_kind(exc, topic))
        now = self.clock()
        with self._error_lock:
            last, suppressed = self._error_reports.get(topic, (float("-inf"), 0))
            if now - last < _STORE_ERROR_EVENT_EVERY_S:
                self._error_reports[topic] = (last, suppressed + 1)
                log.debug("costguard: store error during %s: %s", during, exc)
                return
            self._error_reports[topic] = (now, 0)
        unrecorded = self.unrecorded()
        more = f" ({suppressed} more since the last report)" if suppressed else ""
        admitted = (
            f"; ${micros_to_usd(unrecorded):g} admitted without a reservation, not yet recorded" if unrecorded else ""
        )
        log.warning("costguard: store error during %s: %s%s%s", during, exc, more, admitted)
        self.notify(
            Event(
                kind="store_error",
                labels={},
                at=datetime.fromtimestamp(now, timezone.utc),
                reason=f"{during}: {exc}{more}",
                unrecorded_usd=micros_to_usd(unrecorded),
            )
        )

    def write_error(self, exc: Exception, during: str) -> None:
        """A background write failed (settlement's writer, the spool)."""
        if during.startswith("spool"):  # the spool itself is full or the disk refused: its own report
            error = exc if isinstance(exc, StoreError) else StoreError(f"{type(exc).__name__}: {exc}")
            self.store_error(error, during, topic="spool")
        elif isinstance(exc, StoreError):
            self.store_error(exc, during)

    def outage(self, feature: str, allowance: int) -> None:
        """Say once per process that calls are being admitted without a reservation."""
        if not self._outage_logged:
            self._outage_logged = True
            log.warning(
                "costguard: the store can't be reached; admitting calls without a reservation "
                "(on_store_error: open), at most $%g per feature in this process (%s), spooled until the "
                "store answers",
                micros_to_usd(allowance),
                feature,
            )

    # ----------------------------------------------------------------- lifecycle
    def stats(self) -> list[LaneStats]:
        """Per notifier: delivered, failed, dropped, queued, rate-limited."""
        return self.alerts.stats()

    def flush(self, timeout: float) -> bool:
        """Wait for background work, then for alert delivery, within `timeout` in all."""
        deadline = time.monotonic() + timeout
        self._audit_hurry.set()
        try:
            done = self.background.flush(timeout)
        finally:
            self._audit_hurry.clear()
        delivered = self.alerts.flush(max(0.0, deadline - time.monotonic()))
        return done and delivered

    def close(self, timeout: float) -> None:
        """Finish background work and deliver queued alerts (each waits up to `timeout`)."""
        self._audit_hurry.set()
        self.background.close(timeout)
        self._drain_audit(scheduled=False)  # what the worker had no time for: written here, not lost
        self.alerts.close(timeout)


class _Incomplete:
    """An audit record waiting for the rest of its `data` (computed by the writer, off the call's thread)."""

    __slots__ = ("_complete", "_record")

    def __init__(self, record: AuditRecord, complete: Callable[[], Mapping[str, Any]]) -> None:
        self._record = record
        self._complete = complete

    def record(self) -> AuditRecord:
        record = self._record
        return replace(record, data={**record.data, **self._complete()})
