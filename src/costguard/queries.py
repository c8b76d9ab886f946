"""Queries: status, forecast and audit — what operators read, never on a guarded call's path."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone, tzinfo

from costguard import deadline as dl
from costguard import engine
from costguard import forecast as fc
from costguard.control import ControlView
from costguard.events import AUDIT_DECISIONS, AuditQuery, AuditRecord
from costguard.model import Ceiling, Period, Unit, micros_to_usd, normalize_labels
from costguard.periods import bucket_for
from costguard.reporting import Reporter
from costguard.settlement import Settlement
from costguard.status import CeilingStatus, Status
from costguard.steps import run
from costguard.stores.base import Store

__all__ = ["Queries"]

_Seen = set[tuple[str, tuple[tuple[str, str], ...], Period, Unit]]


@dataclass(eq=False, kw_only=True, repr=False)
class Queries:
    """Read-only views of one guard's store."""

    store: Store
    control: ControlView
    settlement: Settlement
    reporter: Reporter
    tz: tzinfo
    clock: Callable[[], float]
    deadline_s: float

    def status(self, wanted_labels: dict[str, str | None]) -> Status:
        """Spend against every ceiling in its current period whose labels match `wanted_labels`."""
        now = self.clock()
        wanted = normalize_labels(wanted_labels, max_length=10_000)
        state = run(self.control.refresh(now))
        buckets = {p: bucket_for(p, now, self.tz) for p in Period}
        ids = {p: b.id for p, b in buckets.items()}
        rows = dl.call(lambda: self.store.list_counters(ids), dl.Deadline(self.deadline_s))
        by_id = {c.id: c for c in state.ceilings}
        seen: _Seen = set()
        out: list[CeilingStatus] = []

        def add(
            ceiling: Ceiling,
            scope: tuple[tuple[str, str], ...],
            committed: int,
            reserved: int,
            period: Period,
            unit: Unit,
            leased: int = 0,
        ) -> None:
            bound = dict(scope)
            if any(bound.get(k) != v for k, v in wanted.items()):
                return
            for limit in engine.effective_limits(ceiling, bound, state.overrides):
                if limit.period is period and limit.unit is unit:
                    seen.add((ceiling.id, scope, period, unit))
                    end = buckets[period].end
                    out.append(CeilingStatus.build(ceiling, bound, limit, committed, reserved, end, leased))

        for row in rows:
            ceiling = by_id.get(row.ceiling_id)
            if ceiling is not None:
                add(ceiling, row.scope, row.committed, row.reserved, row.period, row.unit, row.leased)
        for ceiling in state.ceilings:
            if "*" in ceiling.match_dict.values():
                continue
            for limit in engine.effective_limits(ceiling, ceiling.match_dict, state.overrides):
                if (ceiling.id, ceiling.match, limit.period, limit.unit) not in seen:
                    add(ceiling, ceiling.match, 0, 0, limit.period, limit.unit)
        out.sort(key=lambda s: (s.ceiling, sorted(s.labels.items()), s.unit, list(Period).index(Period(s.period))))
        return Status(
            at=datetime.fromtimestamp(now, timezone.utc),
            ceilings=tuple(out),
            killswitches=state.killswitches,
            unrecorded_usd=micros_to_usd(self.settlement.unrecorded()),
            spooled=self.settlement.pending,
        )

    def forecast(self, status: Status) -> fc.Forecast:
        """Projected spend at each USD ceiling's period end, from the last hours' history."""
        now = self.clock()
        rows = [row for row in status.ceilings if row.unit == "usd"]
        hours = [bucket_for(Period.HOUR, now - i * 3600, timezone.utc).id for i in range(fc.LOOKBACK_H)]
        keys = [engine.history_key(row.ceiling, row.labels, hour) for row in rows for hour in hours]
        totals = dl.call(lambda: self.store.totals(keys), dl.Deadline(self.deadline_s)) if keys else []
        out = []
        for index, row in enumerate(rows):
            hourly = [micros_to_usd(v) for v in totals[index * len(hours) : (index + 1) * len(hours)]]
            resets = row.resets_at.timestamp() if row.resets_at else None
            out.append(
                fc.build(
                    row.ceiling,
                    row.labels,
                    row.period,
                    row.spent,
                    row.limit,
                    hourly,
                    now,
                    resets,
                    reserved=row.reserved,
                    leased=row.leased,
                )
            )
        return fc.Forecast(status.at, tuple(out))

    def audit(
        self,
        since: datetime | float | None,
        until: datetime | float | None,
        feature: str | None,
        customer: str | None,
        decision: str | None,
        limit: int,
        before_id: int | None,
    ) -> list[AuditRecord]:
        """Audit records, newest first (after the background audit writes of this process)."""
        if limit < 1:
            raise ValueError(f"limit must be at least 1, got {limit!r}")
        if decision is not None and decision not in AUDIT_DECISIONS:
            raise ValueError(f"unknown decision {decision!r}: the audit log has {', '.join(AUDIT_DECISIONS)}")
        start, end = (v.timestamp() if isinstance(v, datetime) else v for v in (since, until))
        query = AuditQuery(start, end, feature, customer, decision, limit, before_id=before_id)
        self.reporter.background.flush()
        return dl.call(lambda: self.store.audit(query), dl.Deadline(self.deadline_s))
