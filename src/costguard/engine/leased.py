"""A call served (partly) from slices: the plan left for the store, the outcome over the whole plan, and
its audit line's view of the leased counters (`engine.leases` keeps the books)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from costguard.engine.counters import CounterOp, ReservePlan
from costguard.engine.decisions import ceilings_data
from costguard.engine.evaluate import ReserveOutcome
from costguard.engine.leases import Take

__all__ = ["cold_plan", "leased_ceilings", "local_outcome"]


def cold_plan(plan: ReservePlan, take: Take) -> ReservePlan:
    """`plan` with only the counters the store reserves for this call (registry indexes re-pointed)."""
    cold = take.cold
    if not any(op.counts_new >= 0 for op in cold):
        return replace(plan, counters=cold)
    index = {op.key: i for i, op in enumerate(cold)}
    ops = tuple(
        replace(op, counts_new=index[plan.counters[op.counts_new].key]) if op.counts_new >= 0 else op for op in cold
    )
    return replace(plan, counters=ops)


def local_outcome(
    plan: ReservePlan, take: Take, cold_counters: Sequence[CounterOp] = (), cold: ReserveOutcome | None = None
) -> ReserveOutcome:
    """The outcome of a call served (partly) from slices, over the whole plan: the store's totals for
    its counters, this process's view (before the slice plus what it used) for the leased ones."""
    totals: dict[str, int] = {}
    for slice_, _ in take.parts:
        for op in slice_.ops:
            totals[op.key] = slice_.total(op)
    if cold is not None:
        totals.update(zip((op.key for op in cold_counters), cold.totals, strict=True))
    return ReserveOutcome(
        True,
        tuple(totals.get(op.key, 0) for op in plan.counters),
        crossings=() if cold is None else cold.crossings,
    )


def leased_ceilings(take: Take) -> list[dict[str, object]]:
    """The audit `leased_ceilings` of a call served (partly) from slices: each covered counter with its
    total as this process sees it (the store's before the slice, plus what it used, this call included)."""
    out: list[dict[str, object]] = []
    for slice_, _ in take.parts:
        holder = ReservePlan(reservation_id="", at=0.0, labels=(), counters=slice_.ops, estimate_usd=0)
        out.extend(ceilings_data(holder, [slice_.total(op) for op in slice_.ops]))
    return out
