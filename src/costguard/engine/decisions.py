"""A store's reserve outcome turned into what the caller and the audit log see: a `Decision`
(allowed, degraded, or why not) and the reserve's audit record."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from costguard.decision import Decision
from costguard.engine.counters import CounterOp, ReservePlan
from costguard.engine.evaluate import ReserveOutcome
from costguard.engine.keys import HISTORY_PREFIX, INSTANCES_PREFIX
from costguard.events import AuditRecord
from costguard.model import Unit, duration_text, encode_scope

__all__ = ["ceilings_data", "decide", "reported", "reserve_record"]


def _ratio(total: int, limit: int) -> float:
    if limit <= 0:
        return math.inf if total > 0 else 1.0
    return total / limit


def decide(plan: ReservePlan, outcome: ReserveOutcome, *, now: float, degrade_at: float | None) -> Decision:
    """Turn a store's outcome into the decision the caller, the fallback and the audit log see."""
    labels = dict(plan.labels)
    if not outcome.allowed:
        assert outcome.blocked is not None
        op = plan.counters[outcome.blocked]
        total = outcome.totals[outcome.blocked]
        if op.counts_new >= 0:
            return _too_many_instances(plan, op, total, labels, now)
        if outcome.expired:
            return _expired(op, total, labels)
        scope = dict(op.scope)
        retry = max(0.0, op.resets_at - now) if op.resets_at is not None else None
        unit = "USD" if op.unit is Unit.USD else op.unit.value
        return Decision(
            allowed=False,
            reason="budget_exceeded",
            labels=labels,
            scope=scope,
            period=op.period.value,
            unit=op.unit.value,
            spent=op.display(total),
            limit=op.display(op.limit),
            retry_after_s=round(retry, 3) if retry is not None else None,
            ratio=_ratio(total, op.limit),
            reservation_id=None,
            message=(
                f"{op.period.value} {unit} ceiling of {encode_scope(scope) or 'everything'} is "
                f"exhausted: {op.display(total):g} of {op.display(op.limit):g} spent, this call needs "
                f"{op.display(op.amount):g}"
            ),
        )
    ratio = 0.0
    soft_over = False
    for op, total in zip(plan.counters, outcome.totals, strict=True):
        limit = op.limit
        value = total / limit if limit > 0 else _ratio(total, limit)  # inline: every allowed call, every counter
        if op.hard:
            ratio = max(ratio, value)
        elif value >= 1.0:
            soft_over = True
    degraded = soft_over or (degrade_at is not None and ratio >= degrade_at)
    return Decision(
        allowed=True,
        reason="allowed",
        labels=labels,
        ratio=ratio,
        degraded=degraded,
        reservation_id=plan.reservation_id,
        message="allowed (degraded)" if degraded else "allowed",
    )


def _too_many_instances(plan: ReservePlan, op: CounterOp, total: int, labels: dict[str, str], now: float) -> Decision:
    instance = plan.counters[op.counts_new]
    ceiling = op.ceiling_id.removeprefix(INSTANCES_PREFIX)
    retry = max(0.0, op.resets_at - now) if op.resets_at is not None else None
    return Decision(
        allowed=False,
        reason="max_instances",
        labels=labels,
        scope=dict(instance.scope),
        period=op.period.value,
        unit=Unit.CALLS.value,
        spent=float(total),
        limit=float(op.limit),
        retry_after_s=round(retry, 3) if retry is not None else None,
        ratio=_ratio(total, op.limit),
        message=(
            f"ceiling {ceiling} already has {total} distinct instances this {op.period.value} (max_instances "
            f"{op.limit}); new ones are refused (overflow: refuse)"
        ),
    )


def reported(op: CounterOp) -> bool:
    """Whether an allowed reserve's audit record shows this counter: a ceiling's limit — not a spend
    history counter (no limit) nor a `max_instances` registry (it counts instances, not spend)."""
    return op.counts_new < 0 and not op.ceiling_id.startswith(HISTORY_PREFIX)


def ceilings_data(plan: ReservePlan, totals: Sequence[int]) -> list[dict[str, Any]]:
    """Each reported counter of an allowed reserve with its total right after it (committed + reserved,
    this call's amount included) and its limit, in the plan's (key) order."""
    return [
        {
            "scope": dict(op.scope),
            "period": op.period.value,
            "unit": op.unit.value,
            "spent": op.display(total),
            "limit": op.display(op.limit),
        }
        for op, total in zip(plan.counters, totals, strict=True)
        if reported(op)
    ]


def _expired(op: CounterOp, total: int, labels: dict[str, str]) -> Decision:
    scope = dict(op.scope)
    unit = "USD" if op.unit is Unit.USD else op.unit.value
    return Decision(
        allowed=False,
        reason="expired",
        labels=labels,
        scope=scope,
        period=op.period.value,
        unit=op.unit.value,
        spent=op.display(total),
        limit=op.display(op.limit),
        retry_after_s=None,  # not before the counter is dropped (`expire_after`), if ever
        ratio=_ratio(total, op.limit),
        message=(
            f"{encode_scope(scope) or 'everything'} has expired: the ttl of {duration_text(op.ttl_s or 0)} from its "
            f"first call ran out, so its calls are refused ({op.display(total):g} of {op.display(op.limit):g} {unit} "
            f"of its {op.period.value} ceiling spent)"
        ),
    )


def reserve_record(plan: ReservePlan, outcome: ReserveOutcome, record: AuditRecord) -> AuditRecord:
    """The audit line of a reserve: a refusal is written as `blocked` with the ceiling that refused it (reason
    `budget_exceeded`, or `expired` when its ttl ran out); an allowed one carries every ceiling's spend and
    limit as the store saw them (`ceilings`)."""
    if outcome.allowed:
        return replace(record, data={**dict(record.data), "ceilings": ceilings_data(plan, outcome.totals)})
    if outcome.blocked is None:
        return record
    op = plan.counters[outcome.blocked]
    data = {
        **dict(record.data),
        "reason": "expired" if outcome.expired else "budget_exceeded",
        "scope": dict(op.scope),
        "period": op.period.value,
        "unit": op.unit.value,
        "spent": op.display(outcome.totals[outcome.blocked]),
        "limit": op.display(op.limit),
    }
    return replace(record, decision="blocked", data=data)
